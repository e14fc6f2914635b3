"""Runs that cannot collide: a run holds its folder from before it writes anything until it
ends, so a second run on that folder (started at once, or resuming it while it runs) is
refused with one line, and a lock left by a killed run does not block (issue 23)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lightning_gait import fit

from _fit_helpers import STEPS_PER_EPOCH, args, checkpoint, hold, run_fit, start_fit, wait_for


@pytest.mark.e2e
def test_two_runs_started_at_once_on_one_folder_leave_one_runs_files(tiny_cifar_root, tmp_path, capsys):
    """The first run holds its folder from before it writes anything until it ends; the second is refused."""
    root, gate = tmp_path / "run", tmp_path / "gate"
    first = start_fit(args(tiny_cifar_root, root, "--trainer.max_epochs", "1", "--seed_everything", "1", *hold(gate)))
    try:
        wait_for(Path(f"{gate}.started"), first)  # set up (config.yaml written), no checkpoint yet
        code, err = run_fit(args(tiny_cifar_root, root, "--trainer.max_epochs", "1"), capsys)
        assert code == 2
        assert f"{root} is in use by a run still going (pid {first.pid} " in err
        assert "--trainer.default_root_dir" in err and len(err.strip().splitlines()) == 1
    finally:
        gate.touch()
        _, first_err = first.communicate(timeout=240)
    assert first.returncode == 0, first_err[-3000:]
    # the folder holds the first run's config and checkpoint, and no lock once it ended
    assert yaml.safe_load((root / "config.yaml").read_text())["seed_everything"] == 1
    assert checkpoint(root / "checkpoints" / "last.ckpt")["global_step"] == STEPS_PER_EPOCH
    assert not (root / ".run.lock").exists()


@pytest.mark.e2e
def test_resuming_a_run_that_is_still_running_is_refused(tiny_cifar_root, tmp_path, capsys):
    root, gate = tmp_path / "run", tmp_path / "gate"
    assert fit.main(args(tiny_cifar_root, root, "--trainer.max_epochs", "1")) == 0
    last = root / "checkpoints" / "last.ckpt"
    resumed = start_fit(args(tiny_cifar_root, root, "--trainer.max_epochs", "2", "--ckpt_path", str(last), *hold(gate)))
    try:
        wait_for(Path(f"{gate}.started"), resumed)
        code, err = run_fit(args(tiny_cifar_root, root, "--trainer.max_epochs", "3", "--ckpt_path", str(last)), capsys)
        assert code == 2 and "is in use by a run still going" in err
    finally:
        gate.touch()
        _, resumed_err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, resumed_err[-3000:]
    assert checkpoint(last)["global_step"] == 2 * STEPS_PER_EPOCH


def test_a_lock_left_by_a_killed_run_does_not_block(tiny_cifar_root, tmp_path):
    """kill -9 leaves the lock file, not the lock: the next run takes the folder over."""
    root = tmp_path / "run"
    root.mkdir()
    (root / ".run.lock").write_text("pid 999999 on elsewhere, started long ago")
    assert fit.main(args(tiny_cifar_root, root, "--trainer.max_epochs", "1")) == 0
    assert not (root / ".run.lock").exists()
