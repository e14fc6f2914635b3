"""What ``fit`` records in a W&B run besides the logged metrics and the resolved config.

Everything goes through the W&B logger's documented arguments (``id``, and the
``wandb.init`` keywords it passes on: ``group``, ``tags``, ``settings``), set in the
configuration before the logger is built (:func:`wandb_init_args`), and through its public
``log_hyperparams`` and ``experiment``:

* The regime (``gait_norm``, ``bp``, ...) as the run's group and as a tag, so that the
  dashboard (:mod:`lightning_gait.dashboard`) groups runs by regime: the name of the first
  ``--config`` file that chooses a model (``model.class_path``), else the logger's run
  name. A group given to the logger (``--trainer.logger.init_args.group``) or in
  ``WANDB_RUN_GROUP`` wins over it.
* A resumed run continues the W&B run that wrote the checkpoint (its ``id``, recorded in
  every checkpoint by :func:`lightning_gait.runs.record_run`), and so its folder.
* ``lightning_gait.version`` (the package version) and ``lightning_gait.git_commit`` (the
  commit of the checkout the package is imported from, with ``git_dirty``; None when it
  is not a git checkout) in the run's config (logged with the resolved config).
* ``val/acc_best`` in the run summary: the best validation accuracy of the run.
* W&B's own console output off (``settings.silent``): ``fit`` prints the one line that
  matters, the ``wandb sync`` command of an offline run.

Lightning's ``WandbLogger`` starts the run on global rank 0 only (the other ranks get a
dummy experiment), so a data-parallel training is one W&B run.
"""
from __future__ import annotations

import netrc
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional

__all__ = ["configure_wandb_mode", "regime_of", "git_commit", "run_metadata", "wandb_credentials_present",
           "wandb_init_args", "quiet_wandb_console", "record_summary"]

PACKAGE_DIR = Path(__file__).resolve().parent


def regime_of(config, logger_name: Optional[str] = None) -> Optional[str]:
    """The regime of a parsed ``fit`` configuration: the name of its first ``--config`` file
    that chooses a model, else ``logger_name``."""
    import yaml

    for value in config.get("config") or []:
        try:
            content = yaml.safe_load(Path(str(value)).read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(content, dict) and isinstance(content.get("model"), dict) and "class_path" in content["model"]:
            return Path(str(value)).stem
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


def wandb_init_args(config, init_args) -> Dict[str, Any]:
    """The W&B logger arguments that ``fit`` adds to ``init_args`` (the logger's configured
    ones) for the parsed ``config``: ``group`` and ``tags`` naming the regime, quiet
    ``settings`` and, on resume, the ``id`` of the run that wrote ``--ckpt_path``."""
    from .runs import wandb_run_id

    extra: Dict[str, Any] = {}
    regime = regime_of(config, init_args.get("name"))
    if regime:
        if not init_args.get("group") and not os.environ.get("WANDB_RUN_GROUP"):  # a given group wins
            extra["group"] = regime
        env_tags = [t for t in os.environ.get("WANDB_TAGS", "").split(",") if t]
        extra["tags"] = list(dict.fromkeys([*env_tags, *(init_args.get("tags") or []), regime]))
    settings = init_args.get("settings")
    if settings is None or isinstance(settings, dict):
        extra["settings"] = {"silent": True, **(settings or {})}
    ckpt = config.get("ckpt_path")
    if ckpt and not init_args.get("id") and not init_args.get("version"):
        run_id = wandb_run_id(ckpt)
        if run_id:
            extra["id"] = run_id
    return extra


def quiet_wandb_console(init_args) -> None:
    """Switch W&B's console output off for this process before its run starts, when the
    logger's ``settings`` (``init_args``, as :func:`wandb_init_args` left them) ask for
    ``silent``. A run's own ``silent`` applies only once ``wandb.init`` has read its
    arguments, and W&B warns about one of them while reading it: ``anonymous``, which
    Lightning's ``WandbLogger`` always passes (``wandb: WARNING The anonymous setting has
    no effect``). ``wandb.setup`` applies the setting first."""
    settings = init_args.get("settings") if init_args is not None else None
    if isinstance(settings, dict) and settings.get("silent"):
        import wandb

        wandb.setup(wandb.Settings(silent=True))


def record_summary(trainer) -> None:
    """Put the best validation accuracy in the summary of each W&B run (global rank 0)."""
    from pytorch_lightning.loggers import WandbLogger

    best = trainer.callback_metrics.get("val/acc_best")
    if best is None or not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary["val/acc_best"] = float(best)


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
