"""``python -m lightning_gait.fit --config NAME``: train any rule on CIFAR-10 (or other data).

Built on Lightning's ``LightningCLI``: the model is chosen by ``class_path`` (any
:class:`~lightning_gait.rules.LocalLearningRule`, with the network nested in its
arguments), so is the data (any ``LightningDataModule``, CIFAR-10 by default), every
option can be overridden with a dotted flag (``--trainer.max_epochs 2``,
``--data.data_dir ../shared/data``), ``--print_config`` prints the resolved configuration,
and ``seed_everything`` seeds the run.

``--config`` takes a name of a config shipped with the package (``gait_norm``,
``conv/gait_norm``, listed by ``--help``) or a path (``conf/gait_norm.yaml`` works from any
folder: see :func:`lightning_gait.configs.find_config`).
A regime config names its shared settings with ``base: base.yaml`` and gives only what
differs; the network's input size and number of classes come from the data class
(:mod:`lightning_gait.configs`).

After training it tests the best checkpoint (``--test_after_fit false`` to skip) and
prints a summary. ``--ckpt_path PATH`` resumes a run exactly (weights, optimizer state,
step count, rule buffers such as feedback matrices, and the epoch's data order), in the
run's own folder and W&B run (:mod:`lightning_gait.runs`). A run refuses to start in a
folder holding another run's checkpoints.

Errors the user can fix (configuration, data, checkpoint, output folder, precision) are
printed as one message without a traceback, exit code 2; training that produced NaN or
infinite values stops with exit code 3 (and writes no checkpoint holding them).

A misspelt option or a bad value stops it with a short message (the closest option
names, if any, and the command that lists them), exit code 2.

Weights & Biases: when the run logs to W&B, ``WANDB_MODE`` is unset and no API key is found
(``WANDB_API_KEY`` or a ``wandb login`` entry in ``~/.netrc``), the run is logged offline,
never waiting for a login prompt, with one line saying so, and the ``wandb sync`` command is
printed at the end. The run's group and a
tag name the regime, its config holds the package version and git commit, and its summary
the best validation accuracy (:mod:`lightning_gait.wandb_run`).
"""
from __future__ import annotations

import argparse
import errno
import json
import netrc
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .configs import CONF_DIR, DEFAULT_DATA, NET_KEY, SIZE_KEYS, ConfigError, SizeError, expand_config_args
from .configs import import_class, regime_groups, regime_names, sizes_from_data

__all__ = ["CONF_DIR", "main"]

#: how the command is run, for its usage line and messages
PROG = "python -m lightning_gait.fit"


def _summary_line(path: Path) -> str:
    """The config's first comment line, up to its first parenthesis."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").split(" (")[0].strip()
    return ""


def _config_listing() -> str:
    names = regime_names()
    groups = regime_groups()
    width = max((len(n) for n in names + [g for group in groups.values() for g in group]), default=0)
    lines = [f"Configs: --config NAME (shipped in {CONF_DIR}; each gives what differs from base.yaml):"]
    lines += [f"  {name:<{width}}  {_summary_line(CONF_DIR / f'{name}.yaml')}" for name in names]
    for group in groups.values():
        lines += [f"  {name:<{width}}  {_summary_line(CONF_DIR / f'{name}.yaml')}" for name in group]
    trainer = sorted(f"trainer/{p.stem}" for p in (CONF_DIR / "trainer").glob("*.yaml"))
    if trainer:
        lines.append("Trainer settings, as a second --config: " + ", ".join(trainer))
    lines.append(f"Example: {PROG} --config gait_norm --trainer.max_epochs 1")
    return "\n".join(lines)


def wandb_credentials_present() -> bool:
    """True when W&B could log in without asking: an API key in the environment or netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        auth = netrc.netrc(os.environ.get("NETRC") or None).authenticators(host)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def configure_wandb_mode(*, announce: bool = True) -> bool:
    """Switch W&B to offline when it would otherwise prompt for a login. Returns True if it did.

    ``announce`` prints one line saying so.
    """
    if "WANDB_MODE" in os.environ or wandb_credentials_present():
        return False
    os.environ["WANDB_MODE"] = "offline"
    if announce:
        print("W&B: no API key found (WANDB_API_KEY or `wandb login`); logging offline.", file=sys.stderr)
    return True


def _pop_print_config(args: List[str]) -> Tuple[List[str], Optional[str]]:
    """``args`` without ``--print_config[=flags]``, and that argument (None if absent)."""
    rest = [a for a in args if not (isinstance(a, str) and a.split("=", 1)[0] == "--print_config")]
    printing = [a for a in args if a not in rest]
    return rest, (printing[-1] if printing else None)


def fill_network_sizes(config) -> Dict[str, Any]:
    """Set the network's unset size arguments from the data class; returns ``{key: value}`` set.

    Raises :class:`~lightning_gait.configs.SizeError` for a set value that differs from the
    data's. The data class is imported from ``data.class_path``, not instantiated.
    """
    net = config.get(NET_KEY)
    init = getattr(net, "init_args", None)
    if init is None or not config.get("data.class_path"):
        return {}
    given = {key: init.get(key) for key in SIZE_KEYS if key in init}
    where = f"{NET_KEY}.init_args"
    updates = sizes_from_data(import_class(config["data.class_path"]), given, where=where)
    for key, value in updates.items():
        init[key] = value
    return {f"{where}.{key}": value for key, value in updates.items()}


def resume_in_the_runs_folder(config, args: List[str]) -> Optional[Path]:
    """Without a logger, a resumed run continues in the folder of its checkpoint.

    With ``--trainer.logger false`` the run folder is ``default_root_dir``; a resume that
    does not give one on the command line would write its continuation to the config's
    (``outputs``) instead of beside the checkpoint it continues. For a checkpoint in
    ``RUN/checkpoints/``, ``trainer.default_root_dir`` becomes ``RUN``; returns it (None
    when nothing changed).
    """
    ckpt = config.get("ckpt_path")
    if not ckpt or config.get("trainer.logger") is not False:
        return None
    if any(isinstance(a, str) and a.split("=", 1)[0] == "--trainer.default_root_dir" for a in args):
        return None
    path = Path(ckpt).expanduser().resolve()
    if path.parent.name != "checkpoints":
        return None
    folder = path.parent.parent
    if Path(str(config.get("trainer.default_root_dir") or ".")).resolve() == folder:
        return None
    config["trainer.default_root_dir"] = str(folder)
    return folder


def _build_cli(args):
    """fit's LightningCLI (``run=False``) for the command-line ``args``, configs expanded."""
    if isinstance(args, (list, tuple)):
        args = expand_config_args(list(args))
    from pytorch_lightning import LightningDataModule
    from pytorch_lightning.cli import LightningCLI, SaveConfigCallback

    from .rules import LocalLearningRule

    class LoggerSaveConfigCallback(SaveConfigCallback):
        """Saves the resolved config into the run's folder, uploads it to the logger (W&B
        config) and records the W&B run id in every checkpoint (for ``--ckpt_path``)."""

        def setup(self, trainer, pl_module, stage) -> None:
            from .runs import run_folder

            if self.already_saved:
                return
            if trainer.is_global_zero:
                self.save_config(trainer, pl_module, stage)  # starts the logger's run, which names the folder
                folder = run_folder(trainer)
                folder.mkdir(parents=True, exist_ok=True)
                self.parser.save(self.config, str(folder / self.config_filename), skip_none=False,
                                 overwrite=self.overwrite, multifile=self.multifile)
                self.already_saved = True
            self.already_saved = trainer.strategy.broadcast(self.already_saved)

        def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
            from .runs import model_record, record_run

            record_run(trainer, checkpoint, model_record(self.config.get("model")))

        def save_config(self, trainer, pl_module, stage) -> None:
            import yaml

            if trainer.logger is not None:
                config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
                trainer.logger.log_hyperparams({"config": config})

    class GaitCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument("--ckpt_path", type=Optional[str], default=None,
                                help="Checkpoint to resume from (exact continuation).")
            parser.add_argument("--test_after_fit", type=bool, default=True,
                                help="Test the best checkpoint on the test set after training.")
            parser.set_defaults({"data": {"class_path": DEFAULT_DATA}})
            for action in parser._actions:
                if "--config" in action.option_strings:
                    action.help = ("A config file (path, or a name listed below) or a YAML string; a file's "
                                   "`base:` is read first. Repeat to stack configs.")

        def parse_arguments(self, parser, args) -> None:
            """Parse, then fill the network's sizes from the data, before ``--print_config`` prints."""
            if not isinstance(args, list):
                return super().parse_arguments(parser, args)
            args, printing = _pop_print_config(args)
            try:
                self.config = parser.parse_args(args)
            except argparse.ArgumentError as err:
                err.parser = parser  # for the option names in _main's message
                raise
            filled = fill_network_sizes(self.config)
            resume_in_the_runs_folder(self.config, args)
            if printing is not None:  # parse again with the sizes given, to print (and exit)
                parser.parse_args([*args, *(f"--{k}={json.dumps(v)}" for k, v in filled.items()), printing])

    from jsonargparse import DefaultHelpFormatter

    class HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
        """Keeps the config listing's line breaks."""

    return GaitCLI(
        LocalLearningRule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        auto_configure_optimizers=False,
        seed_everything_default=0,
        save_config_callback=LoggerSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={
            "prog": PROG,
            "exit_on_error": False,  # _main prints a short message instead of the usage
            "allow_abbrev": False,  # a misspelt option is an error, not silently expanded
            "description": "Train a lightning-gait learning rule (on CIFAR-10 unless --data.class_path says otherwise).",
            "epilog": _config_listing(),
            "formatter_class": HelpFormatter,
        },
        args=args,
    )


def _argument_error(err: Exception, parser) -> str:
    """A short message for a command line that does not parse: the problem, close option names, help."""
    import difflib

    message = str(err).strip()
    lines = [f"error: {message}"]
    if parser is not None and "unrecognized arguments" in message:
        known = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
        for given in (w for w in message.split() if w.startswith("--")):
            close = difflib.get_close_matches(given.split("=", 1)[0], known, n=1, cutoff=0.75)
            if close:
                lines.append(f"  {given}: did you mean {close[0]}?")
    lines.append(f"Options and configs: {PROG} --help")
    return "\n".join(lines)


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


#: fit's exit code after SIGTERM (128 + the signal's number, as a shell reports a process it ended)
EXIT_SIGTERM = 128 + 15
#: the errors of a write that the user fixes with space or another folder
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def _install_run_ends(trainer):
    """Give ``trainer`` the checkpoint writer and callbacks of :mod:`lightning_gait.checkpointing`
    (unless it has its own writer); returns the :class:`SaveOnSigterm` callback."""
    from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

    from .checkpointing import AtomicCheckpointIO, ResumeCutEpoch, SaveOnSigterm

    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    sigterm = next((cb for cb in trainer.callbacks if isinstance(cb, SaveOnSigterm)), None)
    if sigterm is None:
        sigterm = SaveOnSigterm()
        trainer.callbacks.append(sigterm)
    if not any(isinstance(cb, ResumeCutEpoch) for cb in trainer.callbacks):
        trainer.callbacks.append(ResumeCutEpoch())
    return sigterm


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


def _main(args=None) -> int:
    from pytorch_lightning.loggers import WandbLogger

    from ._quiet import FitStopMessage
    from .errors import NonFiniteError, UserError
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from .checkpointing import remove_stale_temporaries
    from .runs import RunClaim, check_resume_checkpoint, checkpoint_folders, refuse_another_runs_folder
    from .runs import model_record, resume_wandb_run, run_folders
    from .wandb_run import label_wandb_loggers, record_summary, regime_of

    argv = sys.argv[1:] if args is None else args
    given = list(argv) if isinstance(argv, (list, tuple)) else []
    try:
        cli = _build_cli(argv)
    except argparse.ArgumentError as err:
        print(_argument_error(err, getattr(err, "parser", None)), file=sys.stderr)
        return 2
    except (ConfigError, SizeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as err:
        # constructors name the offending argument (e.g. activation='relu7')
        print(f"error: invalid configuration: {err}", file=sys.stderr)
        return 2
    config = cli.config
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    sigterm = _install_run_ends(trainer)
    try:
        _check_precision_first(model, trainer)
        # W&B: the regime as group and tag, the package version and git commit in the config
        if any(isinstance(logger, WandbLogger) for logger in trainer.loggers):
            configure_wandb_mode()
        label_wandb_loggers(trainer.loggers, regime_of(given, getattr(trainer.logger, "name", None)))
        ckpt_path = config.get("ckpt_path")
        if ckpt_path:
            checkpoint = check_resume_checkpoint(ckpt_path, model, str(trainer.precision),
                                                 model_record(config.get("model")))
            resume_wandb_run(trainer.loggers, checkpoint)
            del checkpoint
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
