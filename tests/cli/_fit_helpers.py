"""Helpers of the tests of ``fit`` runs that stop, resume or meet another run
(test_run_claim.py, test_resume_faults.py, test_run_ends.py).

The small run: GAIT-N of width 16, depth 2, on the generated CIFAR-10 of conftest.py (320
images, 64 held out: 4 steps an epoch at batch 64), logger off.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from lightning_gait import fit

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
STEPS_PER_EPOCH = 4


def args(data_root: Path, root, *extra: str, logger: bool = False) -> list:
    """A small GAIT-N run on the generated data; ``root`` None leaves ``--trainer.default_root_dir`` out."""
    return ["--config", "gait_norm", "--data.data_dir", str(data_root), "--data.verify_checksums", "false",
            "--data.val_size", "64", "--data.batch_size", "64",
            "--model.init_args.net.init_args.width", "16", "--model.init_args.net.init_args.depth", "2",
            *([] if logger else ["--trainer.logger", "false"]),
            "--test_after_fit", "false", "--trainer.enable_progress_bar", "false",
            *([] if root is None else ["--trainer.default_root_dir", str(root)]), *extra]


def hold(gate: Path) -> list:
    """Options that hold a run at the start of training until ``gate`` exists (:class:`HoldAtTrainStart`)."""
    callback = {"class_path": "_fit_helpers.HoldAtTrainStart", "init_args": {"gate": str(gate)}}
    return ["--trainer.callbacks+", json.dumps(callback)]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(HERE), os.environ.get("PYTHONPATH", "")])}


def start_fit(cli_args: list, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lightning_gait.fit", *cli_args], env=env(), text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the run ended before {path.name} appeared:\n{err[-3000:]}")
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def run_fit(cli_args, capsys):
    code = fit.main(cli_args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        if value.is_floating_point():
            torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=1e-12, msg=key)


class HoldAtTrainStart(pl.Callback):
    """Writes ``<gate>.started`` when training starts, then waits for ``gate`` to exist."""

    def __init__(self, gate: str, timeout: float = 120.0) -> None:
        self.gate, self.timeout = Path(gate), timeout

    def on_train_start(self, trainer, pl_module) -> None:
        Path(f"{self.gate}.started").write_text("started")
        deadline = time.monotonic() + self.timeout
        while not self.gate.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
