"""``python -m lightning_gait.fit --config NAME``: train any rule on CIFAR-10 (or other data).

The command line is Lightning's ``LightningCLI`` (:mod:`lightning_gait.cli`): the rule and
the data chosen by ``class_path``, the network nested in the rule's arguments with its
sizes taken from the data, dotted overrides (``--trainer.max_epochs 2``,
``--data.data_dir ../shared/data``), ``conf/base.yaml`` read first and ``--config`` stacked
on it (``--config gait_norm --config variants/f32``; a name of a shipped config, listed by
``--help``, or a path), ``--print_config`` for the resolved configuration.

After training it tests the best checkpoint (``--test_after_fit false`` to skip) and
prints a summary. ``--ckpt_path PATH`` resumes a run exactly (weights, optimizer state,
step count, rule buffers such as feedback matrices, the data order, also from the middle
of an epoch), in the run's own folder and W&B run (:mod:`lightning_gait.runs`), with the
optimizer settings given now. A run holds its folder for its whole life and refuses one
holding another run's checkpoints. Checkpoints are written whole or not at all; SIGTERM
saves ``last.ckpt`` first (:mod:`lightning_gait.checkpointing`).

Exit codes: 0 done; 2 an error the user can fix (configuration, data, checkpoint, output
folder, precision, a full or read-only disk), printed as one line without a traceback; 3
training produced NaN or infinite values (no checkpoint holds them); 143 stopped by
SIGTERM.

The command, not the package, quiets third-party output (:mod:`lightning_gait._quiet`).
Weights & Biases: when the run logs to W&B, ``WANDB_MODE`` is unset and no API key is found
(``WANDB_API_KEY`` or a ``wandb login`` entry in ``~/.netrc``), the run is logged offline,
never waiting for a login prompt, with one line saying so, and the ``wandb sync`` command is
printed at the end. The run's group and a tag name the regime, its config holds the package
version and git commit, and its summary the best validation accuracy
(:mod:`lightning_gait.wandb_run`).
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path
from typing import List, Optional

from .checkpointing import install_run_ends
from .cli import PROG, build_cli, dump_config, user_error_line
from .configs import CONF_DIR, SizeError
from .wandb_run import configure_wandb_mode, wandb_credentials_present  # noqa: F401  (fit's API)

__all__ = ["CONF_DIR", "PROG", "main"]

#: fit's exit code after SIGTERM (128 + the signal's number, as a shell reports a process it ended)
EXIT_SIGTERM = 128 + 15
#: the errors of a write that the user fixes with space or another folder
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def _save_config_callback():
    from pytorch_lightning.cli import SaveConfigCallback

    class RunConfig(SaveConfigCallback):
        """Saves the resolved config (sizes included) into the run's folder, logs it with the
        package's version to the logger, and records the run in every checkpoint."""

        def setup(self, trainer, pl_module, stage) -> None:
            from .runs import run_folder

            if self.already_saved:
                return
            if trainer.is_global_zero:
                self.save_config(trainer, pl_module, stage)  # starts the logger's run, which names the folder
                folder = run_folder(trainer)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / self.config_filename).write_text(dump_config(self.parser, self.config, skip_unset=False))
                self.already_saved = True
            self.already_saved = trainer.strategy.broadcast(self.already_saved)

        def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
            from .runs import model_record, record_run

            record_run(trainer, checkpoint, model_record(self.config.get("model")))

        def save_config(self, trainer, pl_module, stage) -> None:
            import yaml

            from .wandb_run import run_metadata

            if trainer.logger is not None:
                config = yaml.safe_load(dump_config(self.parser, self.config, skip_unset=False))
                trainer.logger.log_hyperparams({"config": config, "lightning_gait": run_metadata()})

    return RunConfig


def _name_the_wandb_run(cli) -> None:
    """Before the classes are built: a W&B logger gets the regime as group and tag, quiet
    console output and, on resume, the id of the checkpoint's run (its documented ``id``)."""
    from .wandb_run import wandb_init_args

    logger = cli.config.get("trainer.logger")
    if getattr(logger, "class_path", "").rsplit(".", 1)[-1] == "WandbLogger":
        for key, value in wandb_init_args(cli.config, logger.init_args).items():
            logger.init_args[key] = value


def _build_cli(args):
    """fit's LightningCLI (``run=False``) for the command-line ``args``."""
    return build_cli(args, save_config_callback=_save_config_callback(), before_instantiate=_name_the_wandb_run)


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


def _fit_summary(trainer) -> List[str]:
    from .timing import EpochTimer

    lines = [f"epochs: {trainer.current_epoch}, steps: {trainer.global_step}"]
    metrics = trainer.callback_metrics
    for key in ("val/acc", "val/acc_best", "val/loss", "train/loss_epoch", "train/acc_epoch"):
        if key in metrics:
            lines.append(f"{key} = {float(metrics[key]):.4f}")
    for cb in trainer.callbacks:
        if isinstance(cb, EpochTimer) and cb.last_epoch_s is not None:
            lines.append(f"last training epoch: {cb.last_epoch_s:.1f} s")
    ckpt = getattr(trainer.checkpoint_callback, "best_model_path", "")
    if ckpt:
        lines.append(f"best checkpoint: {ckpt}")
    return lines


def _wandb_sync_hint(trainer) -> Optional[str]:
    from pytorch_lightning.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and os.environ.get("WANDB_MODE") == "offline":
            run_dir = Path(logger.experiment.dir).parent
            return f"W&B run saved offline; upload it with:  wandb sync {run_dir}"
    return None


def _close_process_group() -> None:
    """Shut a DDP process group down before the interpreter exits.

    Left open, gloo's worker threads can be torn down mid-flight at exit, aborting the
    process ("terminate called without an active exception") after a successful run.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(args=None) -> int:
    """Entry point; returns the process exit code."""
    from ._quiet import quiet_third_party_output

    quiet_third_party_output()
    code = 1  # an exception escaping _main
    wandb = sys.modules.get("wandb")
    caller_run = getattr(wandb, "run", None) if wandb is not None else None  # e.g. a sweep agent's
    try:
        code = _main(args)
        return code
    finally:
        _finish_wandb(code, keep=caller_run)
        _close_process_group()


def _finish_wandb(exit_code: int, keep=None) -> None:
    """Finish the W&B run this call started (if any) with ``exit_code``, while the process
    group still exists, so that an offline run file is complete when ``fit`` returns
    instead of after interpreter exit, and a failed run is recorded as failed. A run that
    was open before the call (``keep``, e.g. a sweep agent's function) is left open."""
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    if run is not None and run is not keep:
        wandb.finish(exit_code=exit_code)


def _main(args=None) -> int:
    from pytorch_lightning.loggers import WandbLogger
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from ._quiet import FitStopMessage
    from .checkpointing import remove_stale_temporaries
    from .errors import NonFiniteError, UserError
    from .runs import RunClaim, check_resume_checkpoint, checkpoint_folders, model_record, refuse_another_runs_folder
    from .runs import run_folders
    from .wandb_run import quiet_wandb_console, record_summary

    argv = sys.argv[1:] if args is None else args
    try:
        cli = _build_cli(argv)
    except argparse.ArgumentError as err:
        print(user_error_line(err, None, getattr(err, "parser", None)), file=sys.stderr)
        return 2
    except (SizeError, UserError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as err:  # a constructor's message, inside jsonargparse's report
        print(user_error_line(err, getattr(err, "config", None)), file=sys.stderr)
        return 2
    config = cli.config
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    sigterm = install_run_ends(trainer)
    try:
        _check_precision_first(model, trainer)
        if any(isinstance(logger, WandbLogger) for logger in trainer.loggers):
            configure_wandb_mode()
            if trainer.is_global_zero:
                quiet_wandb_console(getattr(config.get("trainer.logger"), "init_args", None))
            for logger in trainer.loggers:  # W&B warns when it looks for a git root in a missing folder
                if isinstance(logger, WandbLogger) and logger.save_dir:
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
            summary = _fit_summary(trainer)
            if stop.reason:
                summary.insert(0, f"stopped: {stop.reason.replace('`', '').rstrip('.')}")
            test_results = None
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
        for key, value in (test_results[0] if test_results else {}).items():
            summary.append(f"{key} = {value:.4f}")
        print("\n".join(["", "lightning-gait summary:"] + ["  " + line for line in summary]))
        hint = _wandb_sync_hint(trainer)
        if hint:
            print(hint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
