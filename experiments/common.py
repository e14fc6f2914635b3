"""What the experiment commands share: regimes, their configs, and the data folder."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Dict

import yaml

#: folder of the per-regime configs (``conf/NAME.yaml``)
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
#: default data folder, as the CLI's ``--data.data_dir`` (relative to the working directory)
DEFAULT_DATA_DIR = "../shared/data"

#: regime name -> (config name in ``conf/``, label of the paper's figure)
REGIMES: Dict[str, tuple] = {
    "bp": ("bp", "BP"),
    "bp_smooth": ("bp_smooth", "BP-S"),
    "gait": ("gait", "GAIT"),
    "gait_norm": ("gait_norm", "GAIT-N"),
    "gait_smooth": ("gait_smooth", "GAIT-S"),
    "gait_smooth_norm": ("gait_smooth_norm", "GAIT-SN"),
    "fa": ("fa", "FA"),
    "tp": ("tp", "TP"),
}


def load_config(regime: str) -> Dict[str, Any]:
    """The parsed ``conf/{regime}.yaml`` (raises ValueError naming an unknown regime)."""
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {sorted(REGIMES)}, got {regime!r}")
    path = CONF_DIR / f"{REGIMES[regime][0]}.yaml"
    if not path.is_file():
        raise ValueError(f"config for regime {regime!r} not found: {path}")
    with open(path) as f:
        return yaml.safe_load(f)


def instantiate(spec: Any) -> Any:
    """Build ``{"class_path": ..., "init_args": {...}}`` recursively (nested specs included)."""
    if isinstance(spec, dict) and "class_path" in spec:
        module_name, _, class_name = spec["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module_name), class_name)
        kwargs = {key: instantiate(value) for key, value in (spec.get("init_args") or {}).items()}
        if "betas" in kwargs and isinstance(kwargs["betas"], list):
            kwargs["betas"] = tuple(kwargs["betas"])
        net = kwargs.pop("net", None)
        return cls(**kwargs) if net is None else cls(net, **kwargs)
    if isinstance(spec, dict):
        return {key: instantiate(value) for key, value in spec.items()}
    return spec


def build_rule(regime: str):
    """The learning rule of ``regime`` with exactly the hyperparameters of its config."""
    return instantiate(load_config(regime)["model"])


def label(regime: str) -> str:
    return REGIMES[regime][1]


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
