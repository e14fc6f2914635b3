"""`python -m lightning_gait.fit`: every config runs, resume is exact, errors are clear."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightning_gait import fit

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO_ROOT / "conf").glob("*.yaml"))


def tiny_data_args(root: Path) -> list:
    return ["--data.data_dir", str(root), "--data.verify_checksums", "false", "--data.val_size", "64"]


def small_net_args() -> list:
    return [
        "--model.init_args.net.init_args.width", "24",
        "--model.init_args.net.init_args.depth", "2",
    ]


def run_cli(args, cwd: Path, env_extra=None, timeout=240):
    env = {k: v for k, v in os.environ.items()}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "lightning_gait.fit", *args],
        cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
    )


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
    for config in CONFIGS:
        assert f"conf/{config.name}" in result.stdout


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
    assert list(tmp_path.rglob("offline-run-*/run-*.wandb"))


def test_help_and_print_config_do_not_announce_offline_logging(monkeypatch, tmp_path, capsys):
    from lightning_gait import fit

    assert fit._only_prints(["--config", "conf/bp.yaml", "--print_config"])
    assert fit._only_prints(["--help"]) and fit._only_prints(["-h"])
    assert not fit._only_prints(["--config", "conf/bp.yaml", "--trainer.max_epochs", "1"])
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
