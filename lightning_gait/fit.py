"""``python -m lightning_gait.fit --config NAME``: train any rule on CIFAR-10 (or other data).

The command line is Lightning's ``LightningCLI`` (:mod:`lightning_gait.cli`): ``--config``
names a shipped config (listed by ``--help``) or a path, stacked on ``conf/base.yaml``;
dotted overrides; ``--print_config``. After training it tests the best checkpoint
(``--test_after_fit false`` to skip) and prints a summary. ``--ckpt_path PATH`` resumes a
run exactly, in its own folder and W&B run; a run holds its folder for its whole life
(:mod:`lightning_gait.runs`). Checkpoints are written whole or not at all; SIGTERM saves
``last.ckpt`` first (:mod:`lightning_gait.checkpointing`).

Exit codes: 0 done; 2 an error the user can fix (configuration, data, checkpoint, output
folder, precision, a full or read-only disk), one line without a traceback; 3 training
produced NaN or infinite values; 143 stopped by SIGTERM.

A W&B run without ``WANDB_MODE`` or an API key is logged offline, with one line saying so
and the ``wandb sync`` command at the end (:mod:`lightning_gait.wandb_run`). The command,
not the package, quiets third-party output (:mod:`lightning_gait._quiet`) and keeps freed
memory in the process for the next step (:mod:`lightning_gait.malloc`).
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path
from typing import List

from .checkpointing import install_run_ends
from .cli import PROG, build_cli as _build_cli, user_error_line
from .configs import CONF_DIR
from .wandb_run import configure_wandb_mode, wandb_credentials_present  # noqa: F401  (fit's API)

__all__ = ["CONF_DIR", "PROG", "main"]

#: fit's exit code after SIGTERM (128 + the signal's number, as a shell reports a process it ended)
EXIT_SIGTERM = 128 + 15
#: the errors of a write that the user fixes with space or another folder
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def _check_precision_first(model, trainer) -> None:
    """The rule's precision check (:class:`~lightning_gait.errors.PrecisionError`) before
    anything is written: the W&B run, the folder and ``config.yaml`` come with ``fit``'s
    setup, where the rule checks it again (and warns, so its warnings are held back here)."""
    import warnings

    check = getattr(model, "check_precision", None)
    if check is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check(str(trainer.precision))


def _fit_summary(trainer, stop_reason) -> List[str]:
    from .timing import EpochTimer

    lines = [f"stopped: {stop_reason.replace('`', '').rstrip('.')}"] if stop_reason else []
    lines.append(f"epochs: {trainer.current_epoch}, steps: {trainer.global_step}")
    metrics = trainer.callback_metrics
    lines += [f"{key} = {float(metrics[key]):.4f}" for key in ("val/acc", "val/acc_best", "val/loss",
                                                               "train/loss_epoch", "train/acc_epoch") if key in metrics]
    lines += [f"last training epoch: {cb.last_epoch_s:.1f} s" for cb in trainer.callbacks
              if isinstance(cb, EpochTimer) and cb.last_epoch_s is not None]
    if getattr(trainer.checkpoint_callback, "best_model_path", ""):
        lines.append(f"best checkpoint: {trainer.checkpoint_callback.best_model_path}")
    return lines


def main(args=None) -> int:
    """Entry point; returns the process exit code."""
    import torch.distributed as dist

    from ._quiet import quiet_third_party_output
    from .malloc import keep_freed_memory

    keep_freed_memory()  # before the first large tensor (lightning_gait.malloc)
    quiet_third_party_output()
    code = 1  # an exception escaping _main
    caller_run = getattr(sys.modules.get("wandb"), "run", None)  # e.g. a sweep agent's
    try:
        code = _main(args)
        return code
    finally:
        _finish_wandb(code, keep=caller_run)
        if dist.is_available() and dist.is_initialized():  # left open, gloo's threads can abort the exit
            dist.destroy_process_group()


def _finish_wandb(exit_code: int, keep=None) -> None:
    """Finish the W&B run this call started (if any) with ``exit_code``, while the process
    group still exists, so that an offline run file is complete when ``fit`` returns
    and a failed run is recorded as failed. A run open before the call (``keep``) is left open."""
    run = getattr(sys.modules.get("wandb"), "run", None)
    if run is not None and run is not keep:
        sys.modules["wandb"].finish(exit_code=exit_code)


def _main(args=None) -> int:
    from pytorch_lightning.loggers import WandbLogger
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from ._quiet import FitStopMessage
    from .checkpointing import remove_stale_temporaries
    from .errors import NonFiniteError, UserError
    from .runs import RunClaim, check_resume_checkpoint, checkpoint_folders, model_record, refuse_another_runs_folder
    from .runs import run_folders
    from .wandb_run import quiet_wandb_console, record_summary

    try:
        cli = _build_cli(sys.argv[1:] if args is None else args)
    except (UserError, argparse.ArgumentError, ValueError, TypeError) as err:  # jsonargparse's, a constructor's
        print(user_error_line(err), file=sys.stderr)
        return 2
    config, trainer, model, datamodule = cli.config, cli.trainer, cli.model, cli.datamodule
    wandb_loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
    sigterm = install_run_ends(trainer)
    try:
        _check_precision_first(model, trainer)
        if wandb_loggers:
            configure_wandb_mode()
            if trainer.is_global_zero:
                quiet_wandb_console(getattr(config.get("trainer.logger"), "init_args", None))
            for logger in wandb_loggers:  # W&B warns when it looks for a git root in a missing folder
                if logger.save_dir:
                    Path(logger.save_dir).mkdir(parents=True, exist_ok=True)
        ckpt_path = config.get("ckpt_path")
        if ckpt_path:
            check_resume_checkpoint(ckpt_path, model, str(trainer.precision), model_record(config.get("model")))
        with RunClaim(run_folders(trainer) if trainer.is_global_zero else []):
            refuse_another_runs_folder(trainer, ckpt_path)
            for folder in checkpoint_folders(trainer) if trainer.is_global_zero else []:
                for temp in remove_stale_temporaries(folder):
                    print(f"removed {temp}: a checkpoint left half-written by a run that was killed", file=sys.stderr)
            with FitStopMessage() as stop:
                trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
            summary, test_results = _fit_summary(trainer, stop.reason), None
            if config.get("test_after_fit", True) and not trainer.interrupted:
                best = getattr(trainer.checkpoint_callback, "best_model_path", "")
                test_results = trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    except SIGTERMException:
        if trainer.is_global_zero:
            saved = (f"saved {sigterm.saved}: resume with --ckpt_path {sigterm.saved}" if sigterm.saved
                     else "nothing saved (no step trained yet, or checkpointing is off)")
            print(f"stopped by SIGTERM at global step {trainer.global_step}; {saved}", file=sys.stderr)
        return EXIT_SIGTERM
    except UserError as err:  # data, batch, split sizes, checkpoint, output folder, precision
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteError as err:
        print(f"error: training stopped: {err}", file=sys.stderr)
        return 3
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        where = f" {err.filename}" if err.filename else ""
        print(f"error: cannot write{where}: {err.strerror or err}; free space or give an output folder that can be "
              "written (--trainer.default_root_dir DIR)", file=sys.stderr)
        return 2
    if trainer.is_global_zero:
        record_summary(trainer)
        summary += [f"{key} = {value:.4f}" for key, value in (test_results[0] if test_results else {}).items()]
        print("\n".join(["", "lightning-gait summary:"] + ["  " + line for line in summary]))
        if wandb_loggers and os.environ.get("WANDB_MODE") == "offline":
            print(f"W&B run saved offline; upload it with:  wandb sync {Path(wandb_loggers[0].experiment.dir).parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
