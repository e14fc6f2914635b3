"""Resume that does what it says (issue 23): a run cut mid-epoch by ``max_steps`` resumes to
the full step count on the batches of an uninterrupted run; without a logger, a resume
continues in its checkpoint's folder."""
from __future__ import annotations

import pytest

from lightning_gait import fit

from _fit_helpers import STEPS_PER_EPOCH, args, assert_same_weights, checkpoint


@pytest.fixture(scope="module")
def straight(tiny_cifar_root, tmp_path_factory):
    """Two uninterrupted epochs (8 steps): the checkpoint a resumed run must end with."""
    root = tmp_path_factory.mktemp("straight")
    assert fit.main(args(tiny_cifar_root, root, "--trainer.max_epochs", "2")) == 0
    return checkpoint(root / "checkpoints" / "last.ckpt")


def test_a_run_cut_mid_epoch_by_max_steps_resumes_to_the_full_step_count(tiny_cifar_root, tmp_path, straight,
                                                                         monkeypatch):
    """max_steps 6 stops 2 batches into epoch 1; resumed for 2 epochs it trains the other 2
    (8 steps, the uninterrupted run's weights), for 3 epochs 12 steps."""
    monkeypatch.chdir(tmp_path)
    cut = tmp_path / "cut"
    assert fit.main(args(tiny_cifar_root, cut, "--trainer.max_epochs", "2", "--trainer.max_steps", "6")) == 0
    last = cut / "checkpoints" / "last.ckpt"
    assert checkpoint(last)["global_step"] == 6
    (tmp_path / "cut.ckpt").write_bytes(last.read_bytes())
    # resumed with the logger off and no --trainer.default_root_dir: in the checkpoint's own folder
    assert fit.main(args(tiny_cifar_root, None, "--trainer.max_epochs", "2", "--ckpt_path", str(last))) == 0
    resumed = checkpoint(last)
    assert resumed["global_step"] == 2 * STEPS_PER_EPOCH
    assert_same_weights(straight, resumed)

    longer = tmp_path / "longer"
    assert fit.main(args(tiny_cifar_root, longer, "--trainer.max_epochs", "3",
                         "--ckpt_path", str(tmp_path / "cut.ckpt"))) == 0
    assert checkpoint(longer / "checkpoints" / "last.ckpt")["global_step"] == 3 * STEPS_PER_EPOCH


def test_resume_without_a_logger_continues_in_the_checkpoints_folder(tiny_cifar_root, tmp_path, monkeypatch):
    """Logger off and no --trainer.default_root_dir: the continuation is written beside the
    checkpoint it continues, not into ./outputs (base.yaml's default_root_dir)."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert fit.main(args(tiny_cifar_root, run, "--trainer.max_epochs", "1")) == 0
    assert fit.main(args(tiny_cifar_root, None, "--trainer.max_epochs", "2",
                         "--ckpt_path", str(run / "checkpoints" / "last.ckpt"))) == 0
    assert not (tmp_path / "outputs").exists()
    assert checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 2 * STEPS_PER_EPOCH
