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
    with pytest.raises(ValueError, match="subclass of Backprop"):
        lg.Backprop.load_from_checkpoint(checkpoints["gait_norm"], map_location="cpu")


def test_a_file_object_is_read_once_for_the_class_and_again_for_the_module(checkpoints):
    with open(checkpoints["gait_norm"], "rb") as f:
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
