"""Faults a user meets, reproduced on small networks and generated data: each one stops
with a message naming the problem (no traceback from ``fit``, a non-zero exit code where
the run cannot go on), replaces no file of another run and writes no checkpoint holding
a NaN or an infinity."""
from __future__ import annotations

import hashlib
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_gait import Backprop, GAITProp, InvertibleMLP, NonFiniteError, TargetProp, fit
from lightning_gait.data import CIFAR10DataModule, DataFormatError, DataNotFoundError, DataSplitError
from lightning_gait.data.cifar import CIFAR10_MD5
from lightning_gait.errors import BatchError, PrecisionError, SingularLayerError
from lightning_gait.runs import CHECKPOINT_KEY
from _helpers import default_dtype

IN, WIDTH, DEPTH, CLASSES = 20, 16, 3, 4


def small_net(dtype=torch.float64, seed=0, square_output=True):
    torch.manual_seed(seed)
    with default_dtype(dtype):
        return InvertibleMLP(IN, WIDTH, DEPTH, CLASSES, square_output=square_output)


def data(n=256, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, IN, generator=g, dtype=dtype), torch.randint(0, CLASSES, (n,), generator=g)


def trainer(**kwargs):
    options = dict(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, precision="64-true")
    options.update(kwargs)
    return pl.Trainer(**options)


def loader(x, y, batch_size=64):
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def all_finite(checkpoint: dict) -> bool:
    tensors = [v for v in checkpoint["state_dict"].values() if v.is_floating_point()]
    for optimizer in checkpoint.get("optimizer_states", []):
        for state in optimizer["state"].values():
            tensors += [v for v in state.values() if torch.is_tensor(v) and v.is_floating_point()]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


# ---------------------------------------------------------------- the command line
def cli_args(data_root: Path, root: Path, *extra: str, logger: bool = False) -> list:
    return ["--config", "gait_norm", "--data.data_dir", str(data_root), "--data.verify_checksums", "false",
            "--data.val_size", "64", "--data.batch_size", "64",
            "--model.init_args.net.init_args.width", "24", "--model.init_args.net.init_args.depth", "2",
            *([] if logger else ["--trainer.logger", "false"]),
            "--test_after_fit", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(root), *extra]


def run_fit(args, capsys):
    code = fit.main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.fixture(scope="module")
def finished_run(tiny_cifar_root, tmp_path_factory):
    """One epoch of the small GAIT-N in float64, logger off: its folder."""
    root = tmp_path_factory.mktemp("finished_run")
    assert fit.main(cli_args(tiny_cifar_root, root, "--trainer.max_epochs", "1")) == 0
    assert (root / "checkpoints" / "last.ckpt").is_file()
    return root


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_second_run_in_a_used_folder_is_refused_and_resuming_it_continues(tiny_cifar_root, tmp_path, capsys):
    root = tmp_path / "run"
    assert fit.main(cli_args(tiny_cifar_root, root, "--trainer.max_epochs", "1")) == 0
    before = snapshot(root)
    assert {Path("config.yaml"), Path("checkpoints/last.ckpt")} <= set(before)

    code, err = run_fit(cli_args(tiny_cifar_root, root, "--trainer.max_epochs", "1", "--seed_everything", "1"), capsys)
    assert code == 2
    assert f"{root / 'checkpoints'} already holds another run's checkpoints" in err
    assert f"--ckpt_path {root / 'checkpoints' / 'last.ckpt'}" in err and "--trainer.default_root_dir" in err
    assert snapshot(root) == before  # nothing replaced, nothing added

    # resuming it is allowed, and continues in its folder
    code, _ = run_fit(cli_args(tiny_cifar_root, root, "--trainer.max_epochs", "2",
                               "--ckpt_path", str(root / "checkpoints" / "last.ckpt")), capsys)
    assert code == 0
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 8


@pytest.mark.e2e  # W&B starts a process of its own
def test_resumed_wandb_run_continues_its_run_and_its_folder(tiny_cifar_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    args = cli_args(tiny_cifar_root, tmp_path / "root", "--trainer.logger.init_args.save_dir", str(tmp_path / "out"),
                    logger=True)
    assert fit.main([*args, "--trainer.max_epochs", "1"]) == 0
    (first,) = list((tmp_path / "out" / "lightning-gait").iterdir())
    assert (first / "config.yaml").is_file()  # the resolved config in the run's own folder
    last = first / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)[CHECKPOINT_KEY]["wandb_run_id"] == first.name

    assert fit.main([*args, "--trainer.max_epochs", "2", "--ckpt_path", str(last)]) == 0
    assert [p.name for p in (tmp_path / "out" / "lightning-gait").iterdir()] == [first.name]
    assert torch.load(last, weights_only=False)["global_step"] == 8
    # one W&B run, resumed: two offline folders (W&B appends "-1" to the second's name when both start in the
    # same second), each holding the history file of the same run id
    history_files = sorted((tmp_path / "out" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert [p.name for p in history_files] == [f"run-{first.name}.wandb"] * 2


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_optimizer_step_overflow_stops_and_no_checkpoint_holds_it(tiny_cifar_root, tmp_path, capsys, policy):
    code, err = run_fit(cli_args(tiny_cifar_root, tmp_path, "--trainer.max_epochs", "2", "--model.init_args.lr",
                                 "1e308", "--model.init_args.on_nonfinite", policy), capsys)
    assert code == 3
    assert "non-finite values in the weight of layer 1" in err and "optimizer step of global step 0" in err
    assert "lr=1e+308" in err
    for path in tmp_path.rglob("*.ckpt"):
        assert all_finite(torch.load(path, weights_only=False)), path


def test_split_sizes_the_data_cannot_give(tiny_cifar_root, tmp_path, capsys):
    code, err = run_fit(cli_args(tiny_cifar_root, tmp_path, "--data.val_size", "50000"), capsys)
    assert code == 2
    assert "--data.val_size 50000 leaves no training data" in err and "has 320 images" in err
    with pytest.raises(DataSplitError, match="val_size"):
        CIFAR10DataModule(str(tiny_cifar_root), download=False, verify_checksums=False, val_size=320).setup("fit")


@pytest.mark.parametrize("damage", ["missing", "truncated", "folder", "weights_only"])
def test_a_checkpoint_that_cannot_be_resumed_is_named(damage, finished_run, tiny_cifar_root, tmp_path, capsys):
    last = finished_run / "checkpoints" / "last.ckpt"
    path = tmp_path / "resume.ckpt"
    if damage == "truncated":
        path.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    elif damage == "folder":
        path = finished_run
    elif damage == "weights_only":
        checkpoint = torch.load(last, weights_only=False)
        torch.save({"state_dict": checkpoint["state_dict"]}, path)
    code, err = run_fit(cli_args(tiny_cifar_root, tmp_path / "out", "--trainer.max_epochs", "2",
                                 "--ckpt_path", str(path)), capsys)
    assert code == 2
    assert f"--ckpt_path {path}" in err
    assert {"missing": "no such file", "truncated": "truncated or damaged", "folder": "is a folder",
            "weights_only": "weights only"}[damage] in err


@pytest.mark.parametrize("override, expected", [
    (["--model.init_args.net.init_args.width", "16"],  # another width: the parameter and both shapes
     ["does not fit the model: net.layers.0.weight has shape (24, 3072) in the checkpoint and (16, 3072)"]),
    (["--trainer.precision", "32-true"],  # another precision: how to resume
     ["holds float64 weights (precision 64-true) but this run uses --trainer.precision 32-true",
      "resume with --trainer.precision 64-true"]),
])
def test_a_checkpoint_that_does_not_fit_says_why(override, expected, finished_run, tiny_cifar_root, tmp_path, capsys):
    code, err = run_fit(cli_args(tiny_cifar_root, tmp_path, "--trainer.max_epochs", "2", *override,
                                 "--ckpt_path", str(finished_run / "checkpoints" / "last.ckpt")), capsys)
    assert code == 2
    assert all(text in err for text in expected), err


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-true"])
def test_fit_refuses_half_precision_for_gait_prop(precision, tiny_cifar_root, tmp_path, capsys):
    code, err = run_fit(cli_args(tiny_cifar_root, tmp_path, "--trainer.max_epochs", "1",
                                 "--trainer.precision", precision), capsys)
    assert code == 2
    assert f"precision '{precision}'" in err and "64-true" in err and "target_mode difference" in err


# ---------------------------------------------------------------- divergence, in the library
def test_skip_gives_up_when_every_batch_fails(tmp_path):
    """Weights that overflow the forward pass make every batch's targets non-finite."""
    net = small_net()
    with torch.no_grad():
        for layer in net.layers:  # the activations overflow from layer 2 on
            layer.weight.mul_(1e200)
    rule = GAITProp(net, normalize=True, lr=1e-3, on_nonfinite="skip", max_consecutive_skips=3)
    fitting = trainer(max_epochs=5)
    with pytest.warns(UserWarning, match="batch skipped"), pytest.raises(NonFiniteError) as info:
        fitting.fit(rule, loader(*data()))
    message = str(info.value)
    assert "3 batches skipped in a row (max_consecutive_skips=3)" in message
    assert "at layer" in message and "global step 0" in message
    assert fitting.global_step == 0 and rule.skipped_batches == 2


def test_a_checkpoint_keyword_asks_for_the_file(tmp_path):
    from lightning_gait.runs import CheckpointError, check_resume_checkpoint

    with pytest.raises(CheckpointError, match="--ckpt_path last: give the checkpoint file itself"):
        check_resume_checkpoint("last", None, "64-true")


def test_max_consecutive_skips_is_checked():
    with pytest.raises(ValueError, match="max_consecutive_skips"):
        GAITProp(small_net(), max_consecutive_skips=0)


def test_a_growing_training_loss_is_warned_with_its_step():
    x, y = data(512)
    rule = Backprop(small_net(square_output=False), lr=30.0)  # Adam at lr 30: the loss jumps by 1e5
    with pytest.warns(UserWarning, match=r"the training loss grew to \S+ per sample at global step 1 of Backprop"):
        trainer(max_epochs=1).fit(rule, loader(x, y))


def test_a_steady_training_loss_is_not_warned():
    rule = Backprop(small_net(square_output=False), lr=1e-3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(max_epochs=2).fit(rule, loader(*data(512)))
    assert not [w for w in caught if "loss grew" in str(w.message)]


@pytest.mark.parametrize("what", ["weights", "optimizer state"])
def test_a_checkpoint_holding_non_finite_values_is_refused(what, tmp_path):
    rule = GAITProp(small_net(), normalize=True, lr=1e-3)
    fitting = trainer(max_steps=2)
    fitting.fit(rule, loader(*data()))
    path = tmp_path / "good.ckpt"
    fitting.save_checkpoint(path)
    assert all_finite(torch.load(path, weights_only=False))
    with torch.no_grad():
        if what == "weights":
            rule.net.layers[1].weight[0, 0] = float("nan")
        else:
            p = rule.net.layers[2].weight
            fitting.optimizers[0].state[p]["exp_avg_sq"][0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="refusing to write a checkpoint") as info:
        fitting.save_checkpoint(tmp_path / "bad.ckpt")
    assert ("net.layers.1.weight" if what == "weights" else "exp_avg_sq of net.layers.2.weight") in str(info.value)
    assert not (tmp_path / "bad.ckpt").exists()


# ---------------------------------------------------------------- precision
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-true", "bf16-true"])
@pytest.mark.parametrize("make, advice", [
    (lambda net: GAITProp(net, normalize=True), "32-true with the difference form"),
    (lambda net: GAITProp(net, normalize=True, target_mode="difference"), "32-true with the difference form"),
    (lambda net: TargetProp(net), "64-true (or 32-true)"),
], ids=["gait_paper", "gait_difference", "tp"])
def test_rules_that_invert_layers_refuse_half_and_mixed_precision(precision, make, advice):
    rule = make(small_net(torch.float32))
    with pytest.raises(PrecisionError) as info:
        trainer(precision=precision, max_steps=1).fit(rule, loader(*data(dtype=torch.float32)))
    assert f"precision '{precision}'" in str(info.value) and advice in str(info.value)


def test_backprop_may_use_mixed_precision():
    rule = Backprop(small_net(torch.float32), lr=1e-3)
    trainer(precision="bf16-mixed", max_steps=2).fit(rule, loader(*data(dtype=torch.float32)))
    assert all(bool(torch.isfinite(p).all()) for p in rule.net.parameters())


@pytest.mark.parametrize("mode", ["absolute", "difference"])
def test_float32_paper_form_warns_that_targets_are_lost(mode):
    rule = GAITProp(small_net(torch.float32), normalize=True, target_mode=mode, lr=1e-3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(precision="32-true", max_steps=2).fit(rule, loader(*data(dtype=torch.float32)))
    lost = [w for w in caught if "lost to float32 round-off" in str(w.message)]
    assert len(lost) == (1 if mode == "absolute" else 0)
    if lost:
        assert "target_mode difference" in str(lost[0].message)


# ---------------------------------------------------------------- singular layers
def make_singular(net, index: int, gap: float) -> None:
    """Row 0 of layer ``index``'s weight = row 1 plus ``gap`` times noise."""
    with torch.no_grad():
        w = net.layers[index].weight
        w[0] = w[1] + gap * torch.randn(w.shape[1], dtype=w.dtype, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("gap", [0.0, 1e-16], ids=["singular", "near_singular"])
@pytest.mark.parametrize("make", [
    lambda net: GAITProp(net, normalize=True),
    lambda net: GAITProp(net, normalize=True, target_mode="difference"),
    lambda net: TargetProp(net),
], ids=["gait_paper", "gait_difference", "tp"])
def test_a_singular_layer_is_named(make, gap):
    net = small_net()
    make_singular(net, 2, gap)
    x, y = data(32)
    with pytest.raises(SingularLayerError, match=r"layer 3 \(counted from 1 at the input\) is singular to working "
                                                 r"precision at global step 0") as info:
        make(net).local_gradients(x, y)
    assert "smallest LU pivot" in str(info.value)


def test_the_cached_inverse_names_an_exactly_singular_layer():
    net = small_net()
    with torch.no_grad():
        net.layers[1].weight[3] = 0.0
    rule = GAITProp(net, normalize=True, target_mode="difference", inverse="cached")
    with pytest.raises(SingularLayerError, match="layer 2 .* zero pivot"):
        rule.local_gradients(*data(32))


def test_an_orthogonal_network_is_not_singular():
    net = small_net()
    for i in net.inverted_layer_indices:
        assert not bool(net.layer_inverse(i).singular)
    GAITProp(net, normalize=True).local_gradients(*data(32))


def test_a_singular_layer_is_skipped_under_skip():
    net = small_net()
    make_singular(net, 2, 0.0)
    rule = GAITProp(net, normalize=True, lr=1e-3, ortho_weight=0.0, on_nonfinite="skip", max_consecutive_skips=2)
    with pytest.warns(UserWarning, match="layer 3 .*singular to working precision.*batch skipped"), \
            pytest.raises(SingularLayerError, match="2 batches skipped in a row"):
        trainer(max_epochs=1).fit(rule, loader(*data()))


# ---------------------------------------------------------------- batches that do not fit
@pytest.mark.parametrize("case, message", [
    ("float32_inputs", "the inputs are torch.float32 but the network's weights are torch.float64"),
    ("label_too_large", "labels must be class indices in [0, 3] (the network has 4 classes); this batch holds "
                        "labels from 0 to 4"),
    ("negative_label", "this batch holds labels from -1 to"),
    ("empty", "the batch is empty"),
    ("int32_labels", "the labels are torch.int32"),
    ("label_shape", "the labels have shape (32, 1) for 32 inputs"),
])
def test_a_batch_that_does_not_fit_the_network_is_named(case, message):
    x, y = data(32)
    if case == "float32_inputs":
        x = x.float()
    elif case == "label_too_large":
        y[5] = CLASSES
    elif case == "negative_label":
        y[5] = -1
    elif case == "empty":
        x, y = x[:0], y[:0]
    elif case == "int32_labels":
        y = y.int()
    elif case == "label_shape":
        y = y[:, None]
    for rule in (GAITProp(small_net(), normalize=True), Backprop(small_net())):
        with pytest.raises(BatchError) as info:
            rule.local_gradients(x, y)
        assert message in str(info.value)


def test_training_on_labels_out_of_range_stops_with_the_labels_named():
    x, y = data(256)
    y[200] = 7
    rule = GAITProp(small_net(), normalize=True, lr=1e-3)
    fitting = trainer()
    with pytest.raises(BatchError, match="labels from 0 to 7"):
        fitting.fit(rule, loader(x, y))
    assert fitting.global_step == 3  # the batches before the bad one trained


def test_label_range_is_read_exactly_under_bfloat16():
    """bfloat16 rounds 259 to 260: the label bounds must not be read in the weights' dtype."""
    classes = 260
    torch.manual_seed(0)
    net = InvertibleMLP(IN, WIDTH, 2, classes, square_output=False).to(torch.bfloat16)
    x = torch.randn(64, IN, dtype=torch.bfloat16)
    y = torch.full((64,), classes - 1, dtype=torch.long)
    fitting = trainer(max_steps=2, precision="bf16-true")
    fitting.fit(Backprop(net, lr=1e-3), loader(x, y, batch_size=32))
    assert fitting.global_step == 2
    with pytest.raises(BatchError, match=f"labels from {classes} to {classes}"):
        trainer(max_steps=2, precision="bf16-true").fit(Backprop(net, lr=1e-3), loader(x, y + 1, batch_size=32))


# ---------------------------------------------------------------- damaged data
@pytest.fixture
def cifar_copy(tiny_cifar_root, tmp_path) -> Path:
    shutil.copytree(tiny_cifar_root / "cifar-10-batches-py", tmp_path / "cifar-10-batches-py")
    return tmp_path


def rewrite_batch(root: Path, name: str, change) -> Path:
    path = root / "cifar-10-batches-py" / name
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    change(entry)
    with open(path, "wb") as f:
        pickle.dump(entry, f)
    return path


@pytest.mark.parametrize("verify", [False, True])
def test_a_truncated_batch_file_is_named(cifar_copy, verify, monkeypatch):
    folder = cifar_copy / "cifar-10-batches-py"
    # with checksums on, the generated files stand in for the published ones
    monkeypatch.setattr("lightning_gait.data.cifar.CIFAR10_MD5",
                        {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()})
    path = folder / "data_batch_3"
    path.write_bytes(path.read_bytes()[:5000])
    dm = CIFAR10DataModule(str(cifar_copy), download=False, verify_checksums=verify)
    with pytest.raises(DataFormatError) as info:
        dm.setup("fit")
    assert str(path.resolve()) in str(info.value) and "truncated or damaged" in str(info.value)


@pytest.mark.parametrize("change, problem", [
    (lambda e: e["labels"].__setitem__(3, 10), "holds labels from 0 to 10, outside 0-9"),
    (lambda e: e.__setitem__("data", e["data"].astype(np.float64) / 255), "holds pixels of type float64, expected uint8"),
    (lambda e: e.__setitem__("data", e["data"][:, :3000]), "holds pixels of shape (64, 3000), expected (N, 3072)"),
    (lambda e: e.__setitem__("labels", e["labels"][:10]), "holds 10 labels for 64 images"),
    (lambda e: e.pop("labels"), "not a CIFAR-10 batch"),
], ids=["label_10", "float_pixels", "short_rows", "few_labels", "no_labels"])
def test_batch_contents_are_checked_without_checksums(cifar_copy, change, problem):
    path = rewrite_batch(cifar_copy, "data_batch_2", change)
    dm = CIFAR10DataModule(str(cifar_copy), download=False, verify_checksums=False)
    with pytest.raises(DataFormatError) as info:
        dm.setup("fit")
    assert str(path.resolve()) in str(info.value) and problem in str(info.value)


def test_a_missing_file_is_named_when_the_download_fails(cifar_copy, monkeypatch):
    (cifar_copy / "cifar-10-batches-py" / "test_batch").unlink()

    def offline(self):
        raise ConnectionError("no network")

    monkeypatch.setattr(CIFAR10DataModule, "download_files", offline)
    dm = CIFAR10DataModule(str(cifar_copy), download=True, verify_checksums=False)
    with pytest.raises(DataNotFoundError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert "test_batch missing, the other files present; the download failed: ConnectionError: no network" in message
    with pytest.raises(DataNotFoundError, match="test_batch missing"):
        CIFAR10DataModule(str(cifar_copy), download=False).setup("fit")


def test_a_data_dir_that_is_a_file_is_named(tmp_path):
    file = tmp_path / "cifar.tar.gz"
    file.write_bytes(b"not a folder")
    for step in ("prepare_data", "setup"):
        with pytest.raises(DataNotFoundError, match=r"--data.data_dir .*cifar.tar.gz is a file, not a folder"):
            getattr(CIFAR10DataModule(str(file)), step)()


def test_the_published_md5_sums_are_torchvisions():
    from torchvision.datasets import CIFAR10

    assert CIFAR10_MD5 == dict(CIFAR10.train_list + CIFAR10.test_list + [[CIFAR10.meta["filename"],
                                                                          CIFAR10.meta["md5"]]])


def test_an_experiment_run_resumes_in_its_own_folder(tiny_cifar_root, tmp_path, monkeypatch, capsys):
    """``experiments.stacks``'s layout (the run's folder as default_root_dir, one CSV-logger
    segment ``part{k}`` per start) resumes from its last.ckpt into a new segment, and a
    fresh start over a segment holding checkpoints is refused."""
    from experiments.stacks import Run, fit_command, last_checkpoint

    monkeypatch.chdir(tmp_path)
    small = ["--data.verify_checksums", "false", "--model.init_args.net.init_args.width", "16",
             "--model.init_args.net.init_args.depth", "2", "--data.batch_size", "64", "--data.val_size", "0"]
    run = Run("experiment", ("bp",), 0)
    run_dir = tmp_path / "experiment" / "bp_s0"

    def command(epochs, ckpt=None, segment="part1"):
        cmd = fit_command(run, data_dir=str(tiny_cifar_root), outputs=tmp_path, ckpt_path=ckpt, log_version=segment)
        return cmd[cmd.index("lightning_gait.fit") + 1:] + small + ["--trainer.max_epochs", str(epochs)]

    assert fit.main(command(1)) == 0
    last = last_checkpoint(run_dir)
    assert last == run_dir / "part1" / "checkpoints" / "last.ckpt"
    assert (run_dir / "part1" / "config.yaml").is_file()
    code, err = run_fit(command(2), capsys)
    assert code == 2 and "already holds another run's checkpoints" in err
    assert fit.main(command(2, last, segment="part2")) == 0
    resumed = last_checkpoint(run_dir)
    assert resumed.parent.parent.name == "part2"
    assert torch.load(resumed, weights_only=False)["global_step"] == 10  # 320 images, batch 64, 2 epochs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment"]
