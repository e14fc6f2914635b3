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


# ---------------------------------------------------------------- settings on resume
@pytest.fixture(scope="module")
def one_epoch(tiny_cifar_root, tmp_path_factory):
    """One epoch of the small GAIT-N (lr 1.9e-5, its config's): its last.ckpt."""
    root = tmp_path_factory.mktemp("one_epoch")
    assert fit.main(args(tiny_cifar_root, root, "--trainer.max_epochs", "1")) == 0
    return root / "checkpoints" / "last.ckpt"


def test_a_new_lr_on_resume_takes_effect_and_is_said(tiny_cifar_root, tmp_path, one_epoch, straight, caplog):
    """The optimizer used to keep the checkpoint's rate while config.yaml recorded the new one."""
    same = tmp_path / "same"
    assert fit.main(args(tiny_cifar_root, same, "--trainer.max_epochs", "2", "--ckpt_path", str(one_epoch))) == 0
    assert_same_weights(straight, checkpoint(same / "checkpoints" / "last.ckpt"))
    assert "settings other than the checkpoint's" not in caplog.text

    lower = tmp_path / "lower"
    assert fit.main(args(tiny_cifar_root, lower, "--trainer.max_epochs", "2", "--model.init_args.lr", "1e-3",
                         "--ckpt_path", str(one_epoch))) == 0
    assert ("Resumed with settings other than the checkpoint's run: lr 1.9e-05 -> 0.001; they apply from "
            f"global step {STEPS_PER_EPOCH}") in caplog.text
    resumed = checkpoint(lower / "checkpoints" / "last.ckpt")
    assert [group["lr"] for group in resumed["optimizer_states"][0]["param_groups"]] == [1e-3]
    moved = resumed["state_dict"]["net.layers.1.weight"] - straight["state_dict"]["net.layers.1.weight"]
    assert moved.abs().max() > 1e-6  # trained with the new rate, not the checkpoint's


@pytest.mark.parametrize("first, then, said", [
    ("tp", "gait_norm", "was written by a run of lightning_gait.TargetProp, and this configuration builds "
                        "lightning_gait.GAITProp"),
    ("bp", "bp_smooth", "was written with the network lightning_gait.InvertibleMLP(activation=leaky_relu), and "
                        "this configuration builds lightning_gait.InvertibleMLP(activation=smooth_leaky_relu)"),
])
def test_a_checkpoint_of_another_rule_or_network_is_refused(first, then, said, tiny_cifar_root, tmp_path, capsys):
    """Same shapes, another rule or activation: it resumed silently and config.yaml took the new rule."""
    root = tmp_path / "run"
    assert fit.main(["--config", first, *args(tiny_cifar_root, root, "--trainer.max_epochs", "1")[2:]]) == 0
    config = (root / "config.yaml").read_text()
    last = root / "checkpoints" / "last.ckpt"
    code = fit.main(["--config", then, *args(tiny_cifar_root, root, "--trainer.max_epochs", "2",
                                              "--ckpt_path", str(last))[2:]])
    err = capsys.readouterr().err
    assert code == 2 and f"error: --ckpt_path {last} {said}" in err and "config.yaml" in err
    assert (root / "config.yaml").read_text() == config
    assert checkpoint(last)["global_step"] == STEPS_PER_EPOCH


def test_another_rule_setting_on_resume_is_said(tiny_cifar_root, tmp_path, caplog):
    """GAIT -> GAIT-N (the same class, normalize switched on) resumes, and says so."""
    root = tmp_path / "run"
    assert fit.main(["--config", "gait", *args(tiny_cifar_root, root, "--trainer.max_epochs", "1")[2:]]) == 0
    assert fit.main(args(tiny_cifar_root, root, "--trainer.max_epochs", "2",
                         "--ckpt_path", str(root / "checkpoints" / "last.ckpt"))) == 0
    assert "Resumed with settings other than the checkpoint's run: " in caplog.text
    assert "normalize False -> True" in caplog.text
