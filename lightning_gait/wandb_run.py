"""What ``fit`` records in a W&B run besides the logged metrics and the resolved config.

* The regime (``gait_norm``, ``bp``, ...) as the run's group and as a tag, so that the
  dashboard (:mod:`lightning_gait.dashboard`) groups runs by regime: the name of the first
  ``--config`` that is a regime (``conf/NAME.yaml``, or any config file with a ``base:``),
  else the logger's run name. A group given to the logger (``--trainer.logger.init_args.group``)
  or in ``WANDB_RUN_GROUP`` wins over it.
* ``lightning_gait.version`` (the package version) and ``lightning_gait.git_commit`` (the
  commit of the checkout the package is imported from, with ``git_dirty``; None when it
  is not a git checkout) in the run's config.
* ``val/acc_best`` in the run summary: the best validation accuracy of the run.
* W&B's own console output kept to what a user acts on: ``quiet`` (no history sparklines,
  no repeated ``wandb sync`` hint, which ``fit`` prints once), no ``anonymous`` argument
  (Lightning passes ``anonymous=None``, which W&B warns has no effect), and the run's
  ``save_dir`` created before the run starts (W&B warns when it looks for a git root in a
  folder that does not exist yet).

The group, tag and config go into the arguments of ``wandb.init``, before the run starts.
Lightning's ``WandbLogger`` starts the run on global rank 0 only (the other ranks get a
dummy experiment), so a data-parallel training is one W&B run.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Dict, Optional, Sequence

__all__ = ["regime_of", "git_commit", "run_metadata", "label_wandb_loggers", "record_summary"]

PACKAGE_DIR = Path(__file__).resolve().parent


def regime_of(args: Sequence[str], logger_name: Optional[str] = None) -> Optional[str]:
    """The regime named by ``args`` (a ``fit`` command line, before its configs are expanded)."""
    import yaml

    from .configs import BASE_KEY, CONF_DIR, config_values, find_config, regime_names

    for value in config_values(args):
        path = find_config(value) if isinstance(value, str) else None
        if path is None:
            continue
        if path.parent == CONF_DIR.resolve() and path.stem in regime_names():
            return path.stem
        try:
            if BASE_KEY in (yaml.safe_load(path.read_text()) or {}):
                return path.stem
        except (OSError, yaml.YAMLError, TypeError):
            continue
    return logger_name or None


def _git(*args: str) -> Optional[str]:
    try:
        done = subprocess.run(["git", "-C", str(PACKAGE_DIR), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit() -> Optional[str]:
    """The commit of the git checkout holding this package (None outside a checkout)."""
    return _git("rev-parse", "HEAD") or None


def run_metadata() -> Dict[str, object]:
    """``{"version", "git_commit", "git_dirty"}`` of the code that trains."""
    from . import __version__

    commit = git_commit()
    dirty = None
    if commit:
        status = _git("status", "--porcelain", "--untracked-files=no")
        dirty = None if status is None else bool(status)
    return {"version": __version__, "git_commit": commit, "git_dirty": dirty}


def label_wandb_loggers(loggers, regime: Optional[str]) -> None:
    """Give every not yet started W&B run of ``loggers`` the regime (group, tag) and the metadata."""
    from pytorch_lightning.loggers import WandbLogger

    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        metadata = {"lightning_gait": run_metadata()}
        if logger._experiment is not None:  # already started: tag and config only
            if regime:
                logger.experiment.tags = tuple(dict.fromkeys([*(logger.experiment.tags or ()), regime]))
            logger.experiment.config.update(metadata, allow_val_change=True)
            continue
        init = logger._wandb_init
        if regime:
            if not init.get("group") and not os.environ.get("WANDB_RUN_GROUP"):  # a given group wins
                init["group"] = regime
            env_tags = [t for t in os.environ.get("WANDB_TAGS", "").split(",") if t]
            init["tags"] = list(dict.fromkeys([*env_tags, *(init.get("tags") or []), regime]))
        init["config"] = {**(init.get("config") or {}), **metadata}
        if init.get("anonymous") is None:
            init.pop("anonymous", None)
        settings = init.get("settings")
        if settings is None or isinstance(settings, dict):
            init["settings"] = {"quiet": True, **(settings or {})}
        if init.get("dir"):
            Path(init["dir"]).mkdir(parents=True, exist_ok=True)


def record_summary(trainer) -> None:
    """Put the best validation accuracy in the summary of each W&B run (global rank 0)."""
    from pytorch_lightning.loggers import WandbLogger

    best = trainer.callback_metrics.get("val/acc_best")
    if best is None or not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary["val/acc_best"] = float(best)
