"""`python -m lightning_gait.fit`: every config runs, resume is exact, errors are clear."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from lightning_gait import fit
from lightning_gait.configs import SizeError, regime_names, sizes_from_data

from conftest import REPO_ROOT
CONFIGS = [REPO_ROOT / "conf" / f"{name}.yaml" for name in regime_names(REPO_ROOT / "conf")]
RECORDED = yaml.safe_load((REPO_ROOT / "tests" / "fixtures" / "resolved_configs.yaml").read_text())
NET = "model.init_args.net.init_args"


def tiny_data_args(root: Path) -> list:
    return ["--data.data_dir", str(root), "--data.verify_checksums", "false", "--data.val_size", "64"]


def small_net_args() -> list:
    return [
        "--model.init_args.net.init_args.width", "24",
        "--model.init_args.net.init_args.depth", "2",
    ]


def run_cli(args, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m lightning_gait.fit ARGS`` run in this process from ``cwd``: its exit code and output.
    The runs that must be processes of their own (W&B's start, signals) start one."""
    import contextlib
    import io

    out, err, before = io.StringIO(), io.StringIO(), Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = fit.main(list(args))
            except SystemExit as stop:  # --help and --print_config exit after printing
                code = stop.code or 0
    finally:
        os.chdir(before)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def test_all_regimes_have_a_config():
    names = {p.stem for p in CONFIGS}
    assert {"bp", "bp_smooth", "gait", "gait_norm", "gait_smooth", "gait_smooth_norm", "tp", "fa"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_config_runs_fast_dev_run(config, tiny_cifar_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = fit.main([
        "--config", str(config), *tiny_data_args(tiny_cifar_root),
        "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path),
    ])
    assert code == 0


def test_help_lists_the_configs():
    result = run_cli(["--help"], REPO_ROOT)
    assert result.returncode == 0
    listing = result.stdout.split("Configs: --config NAME", 1)[1]
    for config in CONFIGS:
        assert f"\n  {config.stem} " in listing, config.stem
    assert "\n  base " not in listing  # the shared part is not a regime
    assert "trainer/ddp_cpu" in listing


def resolved(*args: str) -> dict:
    """The parsed ``--print_config`` output of ``fit`` with ``args`` (run in this process)."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        fit.main([*args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(out.getvalue())


def _callback_key(callback: dict) -> str:
    return yaml.safe_dump(callback, sort_keys=True)


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_composed_config_resolves_to_the_recorded_values(name, monkeypatch):
    """Every key of the regime resolves as the full single-file config did (tests/fixtures).

    Two differences are by design: the data section is a ``class_path`` with its
    ``init_args`` (any LightningDataModule can be chosen), and TargetNorms, which a regime
    appends to the base's callbacks, comes after Orthogonality. The diagnostics callbacks
    measure independently, so callbacks are compared in any order.
    """
    monkeypatch.setattr(sys, "argv", ["lightning-gait-fit"])
    want, got = copy.deepcopy(RECORDED[name]), resolved("--config", str(REPO_ROOT / "conf" / f"{name}.yaml"))
    assert got["data"]["class_path"] == "lightning_gait.data.CIFAR10DataModule"
    assert got["data"]["init_args"] == want["data"]
    assert sorted(map(_callback_key, got["trainer"]["callbacks"])) == \
        sorted(map(_callback_key, want["trainer"]["callbacks"]))
    for config in (want, got):
        config.pop("data")
        config["trainer"].pop("callbacks")
    assert got == want


def test_regime_files_hold_only_their_differences():
    base_lines = [line for line in (REPO_ROOT / "conf" / "base.yaml").read_text().splitlines()
                  if line.strip() and not line.lstrip().startswith("#")]
    for path in CONFIGS:
        lines = [line for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
        assert len(lines) <= 30 and len(lines) < 0.75 * len(base_lines), (path.name, len(lines))
        own = yaml.safe_load(path.read_text())
        assert set(own) <= {"trainer", "model"}, path.name  # base.yaml is read first, by default
        assert set(own["trainer"]) <= {"logger", "callbacks+"}, path.name
        assert set(own["trainer"]["logger"]) == {"init_args"} and set(own["trainer"]["logger"]["init_args"]) == {"name"}
        net = own["model"]["init_args"]["net"]["init_args"]
        assert not {"in_features", "num_classes"} & set(net), path.name


def test_print_config_takes_the_sizes_from_the_data(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-gait-fit"])
    net = resolved("--config", "gait_norm")["model"]["init_args"]["net"]["init_args"]
    assert (net["in_features"], net["num_classes"]) == (3072, 10)
    # a hand-set value that agrees with the data is accepted
    net = resolved("--config", "bp", f"--{NET}.in_features", "3072")["model"]["init_args"]["net"]["init_args"]
    assert net["in_features"] == 3072


@pytest.mark.parametrize("key, value, data_gives", [("in_features", "100", "3072 (input_shape 3x32x32)"),
                                                    ("num_classes", "7", "10")])
def test_a_size_that_differs_from_the_data_is_an_error(key, value, data_gives, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["lightning-gait-fit"])
    code = fit.main(["--config", "conf/gait_norm.yaml", f"--{NET}.{key}", value, "--trainer.logger", "false"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == (f"error: {NET}.{key} is {value} but the data (CIFAR10DataModule) gives {data_gives}; "
                           "remove the key to take it from the data")


def test_size_message_names_the_data_and_its_shape():
    class MNISTDataModule:
        input_shape, input_size, num_classes = (1, 28, 28), 784, 10

    given = {"in_features": 3072, "num_classes": None}
    with pytest.raises(SizeError) as info:
        sizes_from_data(MNISTDataModule, given, where=NET)
    assert str(info.value) == (f"{NET}.in_features is 3072 but the data (MNISTDataModule) gives 784 "
                               "(input_shape 1x28x28); remove the key to take it from the data")
    assert sizes_from_data(MNISTDataModule, {"in_features": None, "input_shape": None, "num_classes": None},
                           where=NET) == {"in_features": 784, "input_shape": [1, 28, 28], "num_classes": 10}
    assert sizes_from_data(MNISTDataModule, {"input_shape": [1, 28, 28]}, where=NET) == {}
    with pytest.raises(SizeError, match="input_shape is 3x32x32 but the data .* gives 1x28x28"):
        sizes_from_data(MNISTDataModule, {"input_shape": [3, 32, 32]}, where=NET)
    with pytest.raises(SizeError, match="has no input_size"):
        sizes_from_data(object, {"in_features": None}, where=NET)


def test_config_by_name_and_a_second_config(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-gait-fit"])
    by_path = resolved("--config", str(REPO_ROOT / "conf" / "gait_norm.yaml"),
                       "--config", str(REPO_ROOT / "conf" / "trainer" / "ddp_cpu.yaml"))
    by_name = resolved("--config", "gait_norm", "--config=trainer/ddp_cpu")
    assert by_name == by_path
    assert by_name["trainer"]["strategy"] == "ddp" and by_name["trainer"]["devices"] == 2
    assert by_name["model"]["class_path"] == "lightning_gait.GAITProp"
    # --data.X is short for --data.init_args.X
    data = resolved("--config", "gait_norm", "--data.data_dir", "/elsewhere", "--data.download", "false")["data"]
    assert data["init_args"]["data_dir"] == "/elsewhere" and data["init_args"]["download"] is False


@pytest.mark.e2e  # W&B starts a process of its own
def test_fit_leaves_a_w_and_b_run_it_did_not_start_open(tmp_path, monkeypatch):
    """A run opened around ``fit.main`` (a sweep agent's function) stays open; fit's own is finished."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    outer = wandb.init(project="outer", dir=str(tmp_path), settings=wandb.Settings(silent=True))
    try:
        with pytest.raises(SystemExit):  # --print_config prints and exits, through main's cleanup
            fit.main(["--config", "gait_norm", "--print_config"])
        assert wandb.run is outer
        fit._finish_wandb(0, keep=outer)
        assert wandb.run is outer
    finally:
        wandb.finish()
    assert wandb.run is None


class RandomImages(pl.LightningDataModule):
    """A DataModule with other sizes: 1x4x4 images, 3 classes, random pixels."""

    input_shape = (1, 4, 4)
    input_size = 16
    num_classes = 3

    def __init__(self, batch_size: int = 8, size: int = 32) -> None:
        super().__init__()
        self.batch_size, self.size = batch_size, size

    def _loader(self):
        g = torch.Generator().manual_seed(0)
        x = torch.rand(self.size, self.input_size, generator=g, dtype=torch.float64)
        y = torch.randint(0, self.num_classes, (self.size,), generator=g)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=self.batch_size)

    train_dataloader = val_dataloader = test_dataloader = _loader


def test_another_datamodule_sets_the_network_sizes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lightning-gait-fit"])
    choice = ["--config", "gait_norm", "--data.class_path", f"{__name__}.RandomImages", "--data.batch_size", "4"]
    net = resolved(*choice)["model"]["init_args"]["net"]["init_args"]
    assert (net["in_features"], net["num_classes"]) == (16, 3)
    assert fit.main([*choice, *small_net_args(), "--trainer.fast_dev_run", "true", "--trainer.logger", "false",
                     "--trainer.default_root_dir", str(tmp_path)]) == 0


def test_print_config_resolves_overrides():
    result = run_cli(["--config", "conf/gait_norm.yaml", "--trainer.max_epochs", "3", "--print_config"], REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert "max_epochs: 3" in result.stdout
    assert "lightning_gait.GAITProp" in result.stdout and "eta: 1.0e-07" in result.stdout


def _final_checkpoint(root: Path) -> dict:
    ckpts = sorted(root.rglob("last.ckpt"))
    assert ckpts, f"no last.ckpt under {root}"
    return torch.load(ckpts[0], map_location="cpu", weights_only=False)


@pytest.mark.parametrize("config", ["gait_norm", "fa"])
def test_resume_continues_exactly(config, tiny_cifar_root, tmp_path, monkeypatch):
    """Two epochs in one go == one epoch, stop, resume for the second (float64, 1e-12)."""
    monkeypatch.chdir(tmp_path)
    common = [
        "--config", str(REPO_ROOT / "conf" / f"{config}.yaml"), *tiny_data_args(tiny_cifar_root), *small_net_args(),
        "--data.batch_size", "64", "--trainer.logger", "false", "--test_after_fit", "false",
        "--model.init_args.lr", "1e-3",
    ]
    straight, first = tmp_path / "straight", tmp_path / "first"
    assert fit.main([*common, "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(straight)]) == 0
    assert fit.main([*common, "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(first)]) == 0
    halfway = _final_checkpoint(first)
    assert halfway["global_step"] == 4  # (320 - 64 validation images) / batch 64
    resumed_root = tmp_path / "resumed"
    assert fit.main([
        *common, "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(resumed_root),
        "--ckpt_path", str(sorted(first.rglob("last.ckpt"))[0]),
    ]) == 0
    a, b = _final_checkpoint(straight), _final_checkpoint(resumed_root)
    assert a["global_step"] == b["global_step"] == 8
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        if value.is_floating_point():
            assert value.dtype == torch.float64, key
            torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=1e-12, msg=key)
    # the weights did move, so equality is not trivial
    assert not torch.equal(halfway["state_dict"]["net.layers.1.weight"], a["state_dict"]["net.layers.1.weight"])
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for k in sa:
        torch.testing.assert_close(sb[k]["exp_avg_sq"], sa[k]["exp_avg_sq"], rtol=0, atol=1e-12)


def test_missing_data_gives_clear_message_and_nonzero_exit(tmp_path):
    missing = tmp_path / "no_cifar_here"
    result = run_cli([
        "--config", "conf/gait_norm.yaml", "--data.data_dir", str(missing), "--data.download", "false",
        "--trainer.logger", "false",
    ], REPO_ROOT)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert str(missing / "cifar-10-batches-py") in result.stderr
    assert "--data.data_dir" in result.stderr and "internet" in result.stderr


@pytest.mark.parametrize(
    "override, named",
    [
        (["--model.init_args.net.init_args.activation", "relu7"], "relu7"),
        (["--model.init_args.etaa", "1e-7"], "etaa"),
        (["--trainer.max_epochz", "3"], "max_epochz"),
        (["--model.init_args.target_mode", "exactish"], "target_mode"),
    ],
)
def test_bad_config_names_the_problem(override, named):
    result = run_cli(["--config", "conf/gait_norm.yaml", "--trainer.logger", "false", *override], REPO_ROOT)
    assert result.returncode != 0
    assert named in result.stderr
    assert "Traceback" not in result.stderr


def test_misspelt_key_in_a_yaml_file_is_named(tmp_path):
    text = (REPO_ROOT / "conf" / "gait_norm.yaml").read_text().replace("    normalize: true", "    normalise: true")
    assert "normalise" in text
    config = tmp_path / "typo.yaml"
    config.write_text(text)
    result = run_cli(["--config", str(config), "--trainer.logger", "false"], REPO_ROOT)
    assert result.returncode != 0
    assert "normalise" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.e2e
def test_wandb_without_login_goes_offline_and_starts(tiny_cifar_root, tmp_path):
    """No WANDB_MODE, no API key, no netrc, no stdin: training starts well within a minute."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({"HOME": str(tmp_path), "NETRC": str(tmp_path / "none"), "WANDB_DIR": str(tmp_path),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))})
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "lightning_gait.fit", "--config", str(REPO_ROOT / "conf/gait_norm.yaml"),
         *tiny_data_args(tiny_cifar_root), *small_net_args(), "--trainer.max_steps", "2",
         "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path)],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]
    assert elapsed < 60, f"took {elapsed:.0f} s"
    assert "logging offline" in result.stderr
    assert "wandb sync" in result.stdout
    assert (result.stdout + result.stderr).count("wandb sync") == 1  # W&B's own copy of the hint is off
    assert list(tmp_path.rglob("offline-run-*/run-*.wandb"))


def test_configure_wandb_mode_announces_only_when_asked(monkeypatch, tmp_path, capsys):
    from lightning_gait import fit

    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert fit.configure_wandb_mode(announce=False)
    assert os.environ["WANDB_MODE"] == "offline"  # still offline, only quiet
    assert "logging offline" not in capsys.readouterr().err
    monkeypatch.delenv("WANDB_MODE")
    assert fit.configure_wandb_mode()
    assert "logging offline" in capsys.readouterr().err
