"""What the experiment commands share: the regime registry, the data folder, figures.

A *regime* is a config in ``conf/``: ``conf/{name}.yaml``, the file that
``python -m lightning_gait.fit --config conf/{name}.yaml`` trains. :func:`build_regime`
builds its rule through fit's own parser (the LightningCLI of
:func:`lightning_gait.fit._build_cli`, without running it), so that an experiment measures
exactly the rule, network and hyperparameters that training uses, and the network ``fit``
starts from for the same seed. A variant of a regime is the regime plus command-line
overrides, as ``fit`` takes them (:func:`model_args`, :func:`net_args`, :func:`data_args`
write them): ``build_regime("gait_norm", *model_args(target_mode="difference"))``.
"""
from __future__ import annotations

import argparse
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List

from lightning_gait.fit import CONF_DIR

__all__ = ["CONF_DIR", "DEFAULT_DATA_DIR", "REGIMES", "label", "model_args", "net_args", "data_args",
           "regime_cli", "build_regime", "stack_args", "stack_cli", "resolved_config", "check_data_dir",
           "close_figure"]

#: default data folder, as the CLI's ``--data.data_dir`` (relative to the working directory)
DEFAULT_DATA_DIR = "../shared/data"

#: regime (config ``conf/{regime}.yaml``) -> its label in the paper's figures (``conv/``: the invertible CNN)
REGIMES: Dict[str, str] = {
    "bp": "BP",
    "bp_smooth": "BP-S",
    "gait": "GAIT",
    "gait_norm": "GAIT-N",
    "gait_smooth": "GAIT-S",
    "gait_smooth_norm": "GAIT-SN",
    "fa": "FA",
    "tp": "TP",
    "conv/bp": "CNN BP",
    "conv/gait_norm": "CNN GAIT-N",
    "conv/gait_smooth_norm": "CNN GAIT-SN",
    "conv/fa": "CNN FA",
    "conv/tp": "CNN TP",
}


def label(regime: str) -> str:
    """The figure label of ``regime`` (``"gait_norm"`` -> ``"GAIT-N"``)."""
    return REGIMES[regime]


def _flags(prefix: str, values: Dict[str, object]) -> List[str]:
    out: List[str] = []
    for key, value in values.items():
        if value is None:
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        out += [f"{prefix}{key}", text]
    return out


def model_args(**values) -> List[str]:
    """``--model.init_args.KEY VALUE`` overrides of the rule's arguments (``None`` left out)."""
    return _flags("--model.init_args.", values)


def net_args(**values) -> List[str]:
    """``--model.init_args.net.init_args.KEY VALUE`` overrides of the network's arguments (``None`` left out)."""
    return _flags("--model.init_args.net.init_args.", values)


def data_args(**values) -> List[str]:
    """``--data.KEY VALUE`` overrides of the DataModule's arguments (``None`` left out)."""
    return _flags("--data.", values)


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Hide Lightning's info lines (seed, accelerator, tips) while a regime is built.

    Also its warning that the command's own ``sys.argv`` is not what the CLI parses: here
    the arguments are the regime's, by design.
    """
    loggers = [logging.getLogger(name) for name in ("lightning_fabric", "pytorch_lightning", "lightning")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def regime_cli(name: str, *overrides: str, seed: int | None = None):
    """fit's LightningCLI of regime ``name`` with ``overrides``, parsed and instantiated, not run.

    ``cli.model`` is the rule, ``cli.datamodule`` the data, ``cli.trainer`` a Trainer with
    the config's settings (precision, accelerator) but no logger, checkpoints or
    callbacks. ``seed`` is ``--seed_everything``: like ``fit``, the CLI seeds every
    generator with it before the network is drawn (the config's seed when ``None``).
    Raises ValueError for an unknown regime or an invalid override.
    """
    from lightning_gait.fit import _build_cli

    if name not in REGIMES:
        raise ValueError(f"regime must be one of {sorted(REGIMES)}, got {name!r}")
    path = Path(CONF_DIR) / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"config for regime {name!r} not found: {path}")
    args = ["--config", str(path), "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
            "--trainer.callbacks", "[]"]
    if seed is not None:
        args += ["--seed_everything", str(seed)]
    args += list(overrides)
    with _quiet_lightning():
        try:
            return _build_cli(args)
        except argparse.ArgumentError as err:  # fit's parser raises instead of exiting
            raise ValueError(f"regime {name!r}: invalid overrides {list(overrides)}: {err}") from None


def build_regime(name: str, *overrides: str, seed: int | None = None):
    """The rule (a :class:`~lightning_gait.rules.LocalLearningRule`) of regime ``name``.

    Built as ``fit --config conf/{name}.yaml [--seed_everything seed] OVERRIDES`` builds
    it: its network drawn under ``seed``, in PyTorch's default dtype (float32; ``fit``'s
    precision converts it later, here ``rule.to(dtype)`` does).
    """
    return regime_cli(name, *overrides, seed=seed).model


def stack_args(stack) -> List[str]:
    """``["gait_norm", "variants/f32"]`` -> ``["--config", "gait_norm", "--config", "variants/f32"]``: a config
    stack as ``fit`` takes it."""
    return [arg for config in stack for arg in ("--config", str(config))]


def stack_cli(stack, *overrides: str, seed: int | None = None):
    """fit's LightningCLI of a config stack (``["tp", "variants/output_step_5e-2"]``) with ``overrides``,
    parsed and instantiated, not run: as :func:`regime_cli`, for any stack of configs ``fit`` takes."""
    from lightning_gait.fit import _build_cli

    args = [*stack_args(stack), "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
            "--trainer.callbacks", "[]"]
    if seed is not None:
        args += ["--seed_everything", str(seed)]
    args += list(overrides)
    with _quiet_lightning():
        try:
            return _build_cli(args)
        except argparse.ArgumentError as err:
            raise ValueError(f"stack {list(stack)}: invalid overrides {list(overrides)}: {err}") from None


def resolved_config(args: List[str]) -> str:
    """What ``python -m lightning_gait.fit ARGS --print_config`` prints (the resolved configuration, as
    YAML), run in this process; ValueError with fit's message when fit does not accept ``args``."""
    import contextlib
    import io

    from lightning_gait import fit

    out, err = io.StringIO(), io.StringIO()
    with _quiet_lightning(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = fit.main([*args, "--print_config"])
        except SystemExit as stop:  # jsonargparse exits after printing
            code = stop.code
    if code not in (0, None):
        raise ValueError(f"fit {' '.join(args)} --print_config: exit {code}: {err.getvalue().strip()}")
    return out.getvalue()


def check_data_dir(data_dir: str | Path) -> Path:
    """``data_dir`` as a Path; ValueError when it holds no ``cifar-10-batches-py/``."""
    path = Path(data_dir).expanduser()
    if not (path / "cifar-10-batches-py").is_dir():
        raise ValueError(
            f"--data-dir {str(data_dir)!r} holds no cifar-10-batches-py/ folder "
            f"(resolved: {path.resolve()}); point it at the folder the CLI's --data.data_dir names"
        )
    return path


def close_figure(fig) -> None:
    """Free a figure that was only drawn to be saved (keeps notebooks from showing it twice)."""
    import matplotlib.pyplot as plt

    plt.close(fig)
