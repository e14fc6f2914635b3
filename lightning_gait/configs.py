"""Configs found by name, and the network's sizes taken from the data.

jsonargparse and LightningCLI compose the configs (:mod:`lightning_gait.cli`). What they lack:

* **names.** jsonargparse takes a path or a YAML string; ``--config gait_norm`` (or
  ``conv/gait_norm``, ``variants/f32``, ``conf/gait_norm.yaml`` from any folder) names a config
  shipped in :data:`CONF_DIR` (:func:`find_config`), and a name that matches none is answered
  with the closest names (:func:`unknown_config_message`).
* **sizes.** The network's sizes are class attributes of the DataModule (:data:`SIZE_KEYS`),
  read without building it; a link overwrites a value given by hand without a word, and
  :func:`sizes_from_data` refuses one that differs from the data's.
"""
from __future__ import annotations

import difflib
import importlib
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import yaml

from .errors import UserError

__all__ = ["CONF_DIR", "NET_KEY", "SIZE_KEYS", "SizeError", "config_names", "data_size", "find_config",
           "regime_groups", "regime_names", "sizes_from_data", "unknown_config_message"]

#: the configs that come with the package (a checkout's top-level ``conf`` is a link to it)
CONF_DIR = Path(__file__).resolve().parent / "conf"
#: network argument -> DataModule class attribute it takes
SIZE_KEYS = {"in_features": "input_size", "input_shape": "input_shape", "num_classes": "num_classes"}
#: where the network sits in the config (the rule's ``net`` argument)
NET_KEY = "model.init_args.net"
#: subfolders of :data:`CONF_DIR` that hold no ``fit`` configs (W&B sweep specifications)
NOT_FIT_CONFIGS = ("sweeps",)


class SizeError(UserError, ValueError):
    """A size set in the config differs from the data's, or the data does not give it."""


def find_config(value: str) -> Optional[Path]:
    """The file that a ``--config`` value names, or None: a path if that file exists, else a file
    in :data:`CONF_DIR` (a leading ``conf/`` dropped); ``.yaml`` may be left out."""
    if not isinstance(value, str) or not value or "\n" in value:
        return None
    given = Path(value).expanduser()
    places = [given, CONF_DIR / given]  # an absolute path stays itself
    if given.parts[:1] == ("conf",):
        places.append(CONF_DIR.joinpath(*given.parts[1:]))
    for candidate in (path for place in places for path in (place, Path(f"{place}.yaml"))):
        try:
            if candidate.is_file():
                return candidate.resolve()
        except OSError:  # a YAML string given as --config can be too long for a file name
            pass
    return None


def regime_names(folder: Path = CONF_DIR) -> List[str]:
    """The regime configs in ``folder`` (every ``*.yaml`` but the shared base)."""
    return sorted(p.stem for p in folder.glob("*.yaml") if p.stem != "base")


def regime_groups(folder: Path = CONF_DIR) -> Dict[str, List[str]]:
    """``{"conv": ["conv/bp", ...]}``: the configs in each subfolder of ``folder`` that choose a
    model (``model.class_path``); the others (``trainer/``, ``variants/``) are settings to stack."""
    groups: Dict[str, List[str]] = {}
    for path in sorted(folder.glob("*/*.yaml")):
        model = (yaml.safe_load(path.read_text()) or {}).get("model")
        if path.parent.name not in NOT_FIT_CONFIGS and isinstance(model, dict) and "class_path" in model:
            groups.setdefault(path.parent.name, []).append(f"{path.parent.name}/{path.stem}")
    return groups


def config_names(folder: Path = CONF_DIR) -> Tuple[List[str], List[str]]:
    """The names ``--config`` takes: the regimes (``bp``, ..., ``conv/bp``, ...) and the settings to
    stack (``trainer/ddp_cpu``, ..., ``variants/f32``, ...)."""
    regimes = regime_names(folder) + [name for names in regime_groups(folder).values() for name in names]
    others = [f"{p.parent.name}/{p.stem}" for p in sorted(folder.glob("*/*.yaml"))]
    return regimes, [name for name in others if name not in regimes and name.split("/")[0] not in NOT_FIT_CONFIGS]


def unknown_config_message(value: str) -> str:
    """One line for a ``--config`` value that is neither a file nor a config's name."""
    regimes, stacked = config_names()
    close = difflib.get_close_matches(value.removesuffix(".yaml").removeprefix("conf/"), regimes + stacked, n=1)
    folders = ", ".join(sorted({name.split("/")[0] + "/*" for name in stacked}))
    return (f"--config {value}: no such file, nor a config of that name;{f' did you mean {close[0]}?' if close else ''}"
            f" configs: {', '.join(regimes)}; to stack: {folders} ({len(regimes) + len(stacked)} names in all: --help)")


# ---------------------------------------------------------------------- sizes from the data
def import_class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _listed(value: Any) -> Any:
    return [int(n) for n in value] if isinstance(value, (list, tuple)) else value


def data_size(key: str):
    """The ``compute_fn`` of the link from ``data.class_path`` to the network's ``key``: the
    data class's attribute (:data:`SIZE_KEYS`), None when it has none."""
    def from_data(class_path: Optional[str]) -> Any:
        try:
            return _listed(getattr(import_class(class_path), SIZE_KEYS[key], None))
        except (ImportError, AttributeError, ValueError):
            return None  # jsonargparse reports the bad class_path itself
    return from_data


def sizes_from_data(data_cls: type, given: Mapping[str, Any], *, where: str) -> Dict[str, Any]:
    """The data's values for the size arguments in ``given`` (the network's, of :data:`SIZE_KEYS`)
    that are None. Raises :class:`SizeError` when a set value differs from the data's, or when
    an unset one is not given by ``data_cls``; ``where`` is their config key prefix, for messages."""
    def text(value):
        return "x".join(map(str, value)) if isinstance(value, list) else value

    data, shape, updates = data_cls.__name__, _listed(getattr(data_cls, "input_shape", None)), {}
    for key, value in given.items():
        wanted = _listed(getattr(data_cls, SIZE_KEYS[key], None))
        if value is None and wanted is None:
            raise SizeError(f"{where}.{key} is not set and the data ({data}) has no {SIZE_KEYS[key]}; set it")
        if value is None:
            updates[key] = wanted
        elif wanted is not None and _listed(value) != wanted:
            extra = f" (input_shape {text(shape)})" if key == "in_features" and shape is not None else ""
            raise SizeError(f"{where}.{key} is {text(_listed(value))} but the data ({data}) gives {text(wanted)}"
                            f"{extra}; remove the key to take it from the data")
    return updates
