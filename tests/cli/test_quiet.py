"""What `fit` prints: one line per fact, no third-party tips, deprecations or repeated hints."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

#: lines that told a user nothing (each was printed by some run before it was switched off)
NOISE = [
    "litlogger",                       # Lightning's promotional tip
    "💡",
    "anonymous setting has no effect",  # W&B, for Lightning's anonymous=None
    "git root",                         # W&B, looking for a git root in a folder not yet made
    "LeafSpec",                         # PyTorch's deprecation, raised inside Lightning
    "no API key",                       # the offline W&B line, with no W&B logger in use
    "logging offline",
    "wandb sync",
    "`Trainer.fit` stopped",            # Lightning's line, glued to the progress bar
    "JsonargparseDeprecationWarning",
    "Traceback",
]


def fit_env(tmp_path: Path) -> dict:
    """No W&B mode, key or netrc: the situation in which the offline line used to be printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({"HOME": str(tmp_path), "NETRC": str(tmp_path / "none"),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))})
    return env


def run_fit(args, tmp_path: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lightning_gait.fit", *args], cwd=tmp_path, env=fit_env(tmp_path),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


@pytest.mark.e2e
def test_a_short_fit_without_logger_prints_no_noise(tiny_cifar_root, tmp_path):
    result = run_fit([
        "--config", "gait_norm", "--trainer.logger", "false", "--trainer.max_epochs", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1",
        "--data.data_dir", str(tiny_cifar_root), "--data.verify_checksums", "false", "--data.val_size", "64",
        "--model.init_args.net.init_args.width", "24", "--model.init_args.net.init_args.depth", "2",
    ], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    for noise in NOISE:
        assert noise not in output, f"{noise!r} printed:\n{output}"
    # the facts are still there: the stop reason (in the summary) and the test accuracy
    summary = result.stdout.split("lightning-gait summary:", 1)[1]
    assert "stopped: max_epochs=1 reached" in summary and "test/acc = " in summary


@pytest.mark.e2e
def test_a_short_fit_logged_to_wandb_prints_no_wandb_lines(tiny_cifar_root, tmp_path):
    """W&B's own console lines (``wandb: ...``; the last was Lightning's ``anonymous=None``
    warned about by W&B before the run's ``silent`` setting applies) are off: fit prints its
    own lines, that it logs offline and the ``wandb sync`` command."""
    result = run_fit([
        "--config", "gait_norm", "--trainer.max_epochs", "1", "--test_after_fit", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "run"),
        "--trainer.logger.init_args.save_dir", str(tmp_path / "run"),
        "--data.data_dir", str(tiny_cifar_root), "--data.verify_checksums", "false", "--data.val_size", "64",
        "--model.init_args.net.init_args.width", "16", "--model.init_args.net.init_args.depth", "2",
    ], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert not [line for line in output.splitlines() if line.lower().startswith("wandb:")], output
    assert "anonymous setting has no effect" not in output and "Traceback" not in output, output
    assert "logging offline" in result.stderr and "wandb sync " in result.stdout, output


@pytest.fixture
def new_user(monkeypatch, tmp_path):
    """This process as a new user's: no W&B mode, key or netrc, in an empty folder."""
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lightning-gait-fit"])


def fit_in_process(args) -> int:
    from lightning_gait import fit

    try:
        return fit.main(args)
    except SystemExit as stop:  # --help and --print_config exit
        return stop.code or 0


def test_a_misspelt_option_gets_a_short_error_with_the_real_help_command(new_user, capfd):
    assert fit_in_process(["--config", "gait_norm", "--trainer.max_epohcs", "1"]) == 2
    printed = capfd.readouterr()
    assert printed.err.strip().splitlines() == [
        "error: --trainer.max_epohcs: no such option; did you mean --trainer.max_epochs? "
        "(python -m lightning_gait.fit --help lists the options)"], printed.err
    assert printed.out == ""


def test_an_abbreviated_option_is_an_error_not_a_guess(new_user, capfd):
    assert fit_in_process(["--config", "gait_norm", "--trainer.max_epoch", "1", "--print_config"]) == 2
    err = capfd.readouterr().err
    assert "did you mean --trainer.max_epochs?" in err and "Deprecat" not in err


def test_print_config_says_nothing_about_wandb(new_user, capfd):
    assert fit_in_process(["--config", "bp", "--print_config"]) == 0
    printed = capfd.readouterr()
    assert printed.err == "" and "logging offline" not in printed.out
    assert "WANDB_MODE" not in os.environ


def test_help_names_the_command_lists_config_names_and_says_nothing_about_wandb(new_user, capfd):
    assert fit_in_process(["--help"]) == 0
    printed = capfd.readouterr()
    assert printed.err == ""
    assert printed.out.startswith("usage: python -m lightning_gait.fit ")
    listing = printed.out.split("Configs: --config NAME", 1)[1]
    assert "\n  gait_norm " in listing and "\n  conv/gait_norm " in listing
    assert "conf/" not in listing.replace(str(REPO_ROOT / "lightning_gait" / "conf"), "")


def test_lightning_tips_are_dropped_and_other_lightning_lines_kept(caplog):
    import logging

    from lightning_gait._quiet import quiet_third_party_output

    quiet_third_party_output()  # what the fit command installs (importing the package installs nothing)

    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger="pytorch_lightning.utilities.rank_zero"):
        logger.info("💡 Tip: For seamless cloud logging, try installing [litlogger](https://pypi.org/project/litlogger/)")
        logger.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]


def test_fit_stop_message_keeps_the_reason_and_holds_the_line(caplog):
    import logging

    from lightning_gait._quiet import FitStopMessage

    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger="pytorch_lightning.utilities.rank_zero"):
        with FitStopMessage() as stop:
            logger.info("`Trainer.fit` stopped: `max_steps=3` reached.")
        logger.info("`Trainer.fit` stopped: `max_epochs=1` reached.")  # after the block: passes again
    assert stop.reason == "`max_steps=3` reached."
    assert [r.getMessage() for r in caplog.records] == ["`Trainer.fit` stopped: `max_epochs=1` reached."]


def test_the_leafspec_deprecation_is_ignored_only_inside_lightning():
    import warnings

    import lightning_gait  # noqa: F401

    message = "`isinstance(treespec, LeafSpec)` is deprecated, use something else"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        import lightning_gait._quiet as quiet

        quiet.quiet_third_party_output()  # the filter goes in front of the "default" just set
        warnings.warn_explicit(message, FutureWarning, "_pytree.py", 21, module="pytorch_lightning.utilities._pytree")
        warnings.warn_explicit(message, FutureWarning, "mine.py", 1, module="mine")
    assert [str(w.message) for w in caught] == [message]
    assert caught[0].filename == "mine.py"
