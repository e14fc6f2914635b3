"""A module trained by ``fit`` loads from its checkpoint with ``load_from_checkpoint(path)`` alone."""
import pytest
import torch

import lightning_gait as lg
from lightning_gait import fit

from _fit_helpers import args


@pytest.fixture(scope="module")
def checkpoints(tiny_cifar_root, tmp_path_factory):
    """``{config: last.ckpt}`` of one small epoch of GAIT-N and of BP."""
    out = {}
    for config in ("gait_norm", "bp"):
        root = tmp_path_factory.mktemp(config)
        cli = args(tiny_cifar_root, root, "--trainer.max_epochs", "1")
        cli[cli.index("gait_norm")] = config
        assert fit.main(cli) == 0
        (out[config],) = root.glob("**/last.ckpt")
    return out


@pytest.mark.parametrize("config, cls", [("gait_norm", lg.GAITProp), ("bp", lg.Backprop)])
def test_a_trained_module_loads_from_its_checkpoint(config, cls, checkpoints):
    path = checkpoints[config]
    saved = torch.load(path, map_location="cpu", weights_only=False)
    model = cls.load_from_checkpoint(path, map_location="cpu")
    assert type(model) is cls and type(model.net) is lg.InvertibleMLP
    assert (model.net.width, model.net.depth) == (16, 2)
    assert model.hparams.lr == saved["hyper_parameters"]["lr"]
    assert model.state_dict().keys() == saved["state_dict"].keys()
    for key, value in saved["state_dict"].items():
        assert torch.equal(model.state_dict()[key], value), key
    x = torch.rand(3, model.net.in_features, dtype=next(model.parameters()).dtype)
    with torch.no_grad():
        assert model.net(x).shape == (3, model.net.num_classes) == (3, 10)


def test_the_base_class_loads_the_rule_the_checkpoint_names(checkpoints):
    assert type(lg.LocalLearningRule.load_from_checkpoint(checkpoints["gait_norm"], map_location="cpu")) is lg.GAITProp
    assert type(lg.LocalLearningRule.load_from_checkpoint(checkpoints["bp"], map_location="cpu")) is lg.Backprop
    with pytest.raises(ValueError, match="subclass of Backprop"):  # Lightning's own check
        lg.Backprop.load_from_checkpoint(checkpoints["gait_norm"], map_location="cpu")


def test_a_file_object_is_read_once_for_the_class_and_again_for_the_module(checkpoints):
    import io

    data = checkpoints["gait_norm"].read_bytes()
    f = io.BytesIO(b"xyz" + data)
    f.seek(3)  # read from where the caller left it, both times
    assert type(lg.LocalLearningRule.load_from_checkpoint(f, map_location="cpu")) is lg.GAITProp


def test_a_network_built_in_python_is_passed_back(tmp_path):
    net = lg.InvertibleMLP(in_features=12, num_classes=3, width=12, depth=2)
    model = lg.GAITProp(net, lr=1e-3)
    assert "net" not in model.hparams  # its weights are in the state dict, its class is the user's
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": "2.6.6"}, path)
    loaded = lg.GAITProp.load_from_checkpoint(path, net=lg.InvertibleMLP(in_features=12, num_classes=3, width=12, depth=2))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.hparams.lr == 1e-3


def test_a_changed_network_setting_is_named_by_its_path():
    from lightning_gait.rules.optim import changed_settings

    before = {"lr": 1e-3, "betas": [0.9, 0.999],
              "net": {"class_path": "lightning_gait.InvertibleCNN", "init_args": {"alpha": 0.1, "keep": None}}}
    now = {"lr": 1e-3, "betas": (0.9, 0.999), "eta": 1e-7,
           "net": {"class_path": "lightning_gait.InvertibleCNN", "init_args": {"alpha": 0.2, "keep": None}}}
    assert changed_settings(before, now) == {"net.init_args.alpha": (0.1, 0.2)}
    assert changed_settings(None, now) == {} and changed_settings({"lr": 1e-4}, now) == {"lr": (1e-4, 1e-3)}


def test_a_loaded_module_saves_checkpoints_that_load_by_path(checkpoints, tmp_path):
    import pytorch_lightning as pl

    model = lg.LocalLearningRule.load_from_checkpoint(checkpoints["gait_norm"], map_location="cpu")
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    again = tmp_path / "again.ckpt"
    trainer.save_checkpoint(again)
    reloaded = lg.LocalLearningRule.load_from_checkpoint(again, map_location="cpu")
    assert type(reloaded) is lg.GAITProp and (reloaded.net.width, reloaded.net.depth) == (16, 2)


def _edited(path, tmp_path, edit):
    saved = torch.load(path, map_location="cpu", weights_only=False)
    edit(saved["hyper_parameters"])
    out = tmp_path / "edited.ckpt"
    torch.save(saved, out)
    return out


def test_a_checkpoint_without_network_settings_asks_for_the_network(checkpoints, tmp_path):
    old = _edited(checkpoints["gait_norm"], tmp_path, lambda hp: hp.pop("net"))
    with pytest.raises(ValueError, match=r"holds no network settings .*load_from_checkpoint\(path, net=\.\.\.\)"):
        lg.GAITProp.load_from_checkpoint(old, map_location="cpu")


def test_a_network_class_that_is_not_imported_is_refused(checkpoints, tmp_path):
    odd = _edited(checkpoints["gait_norm"], tmp_path, lambda hp: hp["net"].update(class_path="not_imported_mod.Net"))
    with pytest.raises(ValueError, match="'not_imported_mod.Net' the checkpoint names is not imported"):
        lg.LocalLearningRule.load_from_checkpoint(odd, map_location="cpu")
    import sys
    assert "not_imported_mod" not in sys.modules


def test_the_base_class_refuses_a_checkpoint_that_names_no_rule(checkpoints, tmp_path):
    bare = _edited(checkpoints["gait_norm"], tmp_path, lambda hp: hp.pop("_class_path"))
    with pytest.raises(ValueError, match="names no imported rule class"):
        lg.LocalLearningRule.load_from_checkpoint(bare, map_location="cpu")
