"""Runs that stop lose nothing (issue 23): SIGTERM saves a resumable ``last.ckpt`` and exits
non-zero; checkpoints are written beside their target and renamed, so a kill during a save
keeps the previous one; a full disk or a read-only folder ends with one line and leaves no
truncated checkpoint; a refused precision writes nothing."""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lightning_gait import fit

from _fit_helpers import (STEPS_PER_EPOCH, args, assert_same_weights, checkpoint, env, hold, run_fit, start_fit,
                          wait_for)


@pytest.fixture(scope="module")
def straight(tiny_cifar_root, tmp_path_factory):
    """Two uninterrupted epochs (8 steps): the checkpoint a resumed run must end with."""
    root = tmp_path_factory.mktemp("straight")
    assert fit.main(args(tiny_cifar_root, root, "--trainer.max_epochs", "2")) == 0
    return checkpoint(root / "checkpoints" / "last.ckpt")


@pytest.mark.e2e
def test_sigterm_saves_a_resumable_last_ckpt_and_exits_non_zero(tiny_cifar_root, tmp_path, straight, capsys):
    root, gate = tmp_path / "run", tmp_path / "gate"
    run = start_fit(args(tiny_cifar_root, root, "--trainer.max_epochs", "2", *hold(gate)))
    try:
        wait_for(Path(f"{gate}.started"), run)
        run.send_signal(signal.SIGTERM)  # noticed after the batch under way: global step 1
        time.sleep(0.5)
    finally:
        gate.touch()
        _, err = run.communicate(timeout=240)
    last = root / "checkpoints" / "last.ckpt"
    assert run.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert f"stopped by SIGTERM at global step 1; saved {last}: resume with --ckpt_path {last}" in err
    assert "Traceback" not in err
    assert checkpoint(last)["global_step"] == 1
    # the resume trains the other 7 steps on the batches of the uninterrupted run
    code, _ = run_fit(args(tiny_cifar_root, root, "--trainer.max_epochs", "2", "--ckpt_path", str(last)), capsys)
    assert code == 0
    resumed = checkpoint(last)
    assert resumed["global_step"] == 2 * STEPS_PER_EPOCH
    assert_same_weights(straight, resumed)


# ---------------------------------------------------------------- atomic checkpoints, full and read-only disks
def test_checkpoints_are_written_beside_their_target_and_renamed(tiny_cifar_root, tmp_path, monkeypatch):
    """Never written in place, nor through the system's temporary folder (another filesystem
    turns that move into a copy, which a kill truncates): a file in the same folder, renamed."""
    import tempfile

    elsewhere = tmp_path / "system_tmp"
    elsewhere.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))
    renames = []
    real_replace = os.replace

    def replace(src, dst, *a, **k):
        renames.append((Path(src), Path(dst)))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    root = tmp_path / "run"
    assert fit.main(args(tiny_cifar_root, root, "--trainer.max_epochs", "1")) == 0
    written = sorted((root / "checkpoints").glob("*.ckpt"))
    assert written and {dst for _, dst in renames} >= set(written)
    for src, dst in renames:
        assert src.parent == dst.parent and src.name.startswith(f".{dst.name}.") and src.suffix == ".tmp"
    assert list(elsewhere.iterdir()) == []
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == [p.name for p in written]


KILL_DURING_SECOND_SAVE = """
import os, signal, stat, sys
real_fsync, files = os.fsync, []
def fsync(fd):
    if stat.S_ISREG(os.fstat(fd).st_mode):
        files.append(fd)
        if len(files) == 3:  # epoch 0 wrote best-*.ckpt and last.ckpt; die while writing the next
            os.kill(os.getpid(), signal.SIGKILL)
    return real_fsync(fd)
os.fsync = fsync
from lightning_gait import fit
sys.exit(fit.main(sys.argv[1:]))
"""


@pytest.mark.e2e
def test_a_kill_during_a_save_keeps_the_previous_checkpoint(tiny_cifar_root, tmp_path, capsys):
    root = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_SECOND_SAVE,
                             *args(tiny_cifar_root, root, "--trainer.max_epochs", "2")],
                            env=env(), capture_output=True, text=True, timeout=240)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = root / "checkpoints" / "last.ckpt"
    assert checkpoint(last)["global_step"] == STEPS_PER_EPOCH  # epoch 0's, complete
    left = list((root / "checkpoints").glob(".*.tmp"))
    assert len(left) == 1  # the unfinished file, beside it
    # the next run (here the resume) removes it, saying so
    code, err = run_fit(args(tiny_cifar_root, root, "--trainer.max_epochs", "2", "--ckpt_path", str(last)), capsys)
    assert code == 0 and f"removed {left[0]}" in err
    assert not list((root / "checkpoints").glob(".*.tmp"))


def _limit_file_size(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.e2e
def test_a_full_disk_gives_one_line_and_no_truncated_checkpoint(tiny_cifar_root, tmp_path):
    """A file size limit (``ulimit -f``) below a checkpoint's size: writes fail as on a full disk."""
    root = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "lightning_gait.fit",
                             *args(tiny_cifar_root, root, "--trainer.max_epochs", "1")],
                            env=env(), capture_output=True, text=True, timeout=240,
                            preexec_fn=_limit_file_size(200_000))
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: cannot write the checkpoint {root / 'checkpoints'}/") and \
        "File too large" in lines[-1], result.stderr[-3000:]
    assert "Traceback" not in result.stderr and len([line for line in lines if "error" in line]) == 1
    assert not list(root.rglob("*.ckpt")) and not list(root.rglob("*.tmp"))


SMALL_DISK = """
mount -t tmpfs -o size=$2 tmpfs "$1" || exit 99
mnt=$1; copy=$3; shift 3
"$@"; code=$?
cp -a "$mnt/out" "$copy"
exit $code
"""


@pytest.mark.e2e
def test_a_disk_that_fills_keeps_the_earlier_checkpoints(tiny_cifar_root, tmp_path):
    """A small tmpfs: epoch 0's best-*.ckpt and last.ckpt fit, a third checkpoint does not.
    The failed write ends with one line (No space left on device) and leaves epoch 0's two
    files complete, the best one loadable as the README's fallback, and no temporary file."""
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("no user and mount namespaces here (unshare) to make a small disk")
    mnt, copy = tmp_path / "mnt", tmp_path / "copy"
    mnt.mkdir()
    size = 1_300_000  # bytes of one checkpoint of the small run, about (checked below)
    limit = 3 * size - size // 2  # room for two checkpoints and config.yaml, not for a third
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", SMALL_DISK, "sh",
                             str(mnt), str(limit), str(copy), sys.executable, "-m", "lightning_gait.fit",
                             *args(tiny_cifar_root, mnt / "out", "--trainer.max_epochs", "3")],
                            cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.strip().splitlines() if line.startswith("error")]
    assert line.startswith(f"error: cannot write the checkpoint {mnt / 'out' / 'checkpoints'}/") and \
        "No space left on device" in line and "earlier checkpoints are kept" in line, line
    folder = tmp_path / "copy" / "checkpoints"
    saved = sorted(p.name for p in folder.iterdir())
    assert not [name for name in saved if name.endswith(".tmp")], saved
    (best,) = [name for name in saved if name.startswith("best-")]
    assert best.startswith("best-epoch000") and "last.ckpt" in saved, saved
    for name in (best, "last.ckpt"):
        assert (folder / name).stat().st_size < size, (name, (folder / name).stat().st_size)
        assert checkpoint(folder / name)["global_step"] == STEPS_PER_EPOCH  # complete: it loads


READ_ONLY = """
set -e
mount -t tmpfs -o size=1m tmpfs "$1"
mkdir "$1/out"
mount -o remount,ro "$1"
shift
exec "$@"
"""


@pytest.mark.e2e
def test_a_read_only_output_folder_gives_one_line(tiny_cifar_root, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("no user and mount namespaces here (unshare) to make a read-only folder")
    root = mnt / "out"
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", READ_ONLY, "sh", str(mnt),
                             sys.executable, "-m", "lightning_gait.fit",
                             *args(tiny_cifar_root, root, "--trainer.max_epochs", "1")],
                            env=env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.strip().splitlines() if line.startswith("error")]
    assert str(root) in line and "Read-only file system" in line


def test_a_refused_precision_writes_nothing(tiny_cifar_root, tmp_path, monkeypatch, capsys):
    """The rule refuses bf16 before a W&B run, a folder or a config.yaml is made."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "out"
    code, err = run_fit(args(tiny_cifar_root, out / "root", "--trainer.max_epochs", "1", "--trainer.precision",
                             "bf16-mixed", "--trainer.logger.init_args.save_dir", str(out), logger=True), capsys)
    assert code == 2 and "precision 'bf16-mixed'" in err
    assert not out.exists(), sorted(str(p) for p in out.rglob("*"))
