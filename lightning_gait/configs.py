"""Configs found by name, and the network's sizes taken from the data.

jsonargparse and LightningCLI do the composing (:mod:`lightning_gait.cli`): ``base.yaml`` is
a default config file, read before any ``--config``; ``--config`` repeats to stack files
(nested keys merge, a list given again replaces the earlier one, ``callbacks+:`` appends
to it); ``link_arguments`` copies the data's sizes into the network's arguments. What they
lack, and this module adds:

* **names.** jsonargparse takes a path or a YAML string. The configs ship inside the
  package, in :data:`CONF_DIR` (``lightning_gait/conf``; a checkout's top-level ``conf`` is
  a link to it), so ``--config gait_norm`` (or ``conv/gait_norm``, ``variants/f32``) names
  ``CONF_DIR/gait_norm.yaml`` (:func:`find_config`): a value that is not a file is looked
  up there, ``.yaml`` optional, a leading ``conf/`` dropped, so that ``--config
  conf/gait_norm.yaml`` works from any folder. A name that matches nothing is answered
  with the closest names and the list (:func:`unknown_config_message`).
* **sizes.** The network's ``in_features``, ``input_shape`` and ``num_classes`` are class
  attributes of the DataModule named by ``data.class_path`` (:data:`SIZE_KEYS`), read
  without building it. A link overwrites a value given by hand without a word;
  :func:`sizes_from_data` refuses one that differs from the data's.
"""
from __future__ import annotations

import difflib
import importlib
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import yaml

__all__ = ["CONF_DIR", "DEFAULT_DATA", "NET_KEY", "SIZE_KEYS", "SizeError", "config_names", "data_size",
           "find_config", "regime_groups", "regime_names", "sizes_from_data", "unknown_config_message"]

#: the configs that come with the package (package data, installed with it)
CONF_DIR = Path(__file__).resolve().parent / "conf"
#: the folder name of the configs in a checkout and in the documentation (``conf/gait_norm.yaml``)
CONF_PREFIX = "conf"
#: the shared file, read before every ``--config``: not a regime of its own
BASE_NAME = "base"
#: network argument -> DataModule class attribute it takes
SIZE_KEYS = {"in_features": "input_size", "input_shape": "input_shape", "num_classes": "num_classes"}
#: where the network sits in the config (the rule's ``net`` argument)
NET_KEY = "model.init_args.net"
#: the data when a config names no ``data.class_path`` (the CLI's default too)
DEFAULT_DATA = "lightning_gait.data.CIFAR10DataModule"
#: subfolders of :data:`CONF_DIR` that hold no ``fit`` configs (W&B sweep specifications)
NOT_FIT_CONFIGS = ("sweeps",)


class SizeError(ValueError):
    """A size set in the config differs from the data's, or the data does not give it."""


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a YAML string given as --config can be too long for a file name
        return False


def find_config(value: str, relative_to: Optional[Path] = None) -> Optional[Path]:
    """The file that a ``--config`` value names, or None: a path (relative to ``relative_to``,
    default the working directory) if that file exists, else a file in :data:`CONF_DIR`
    (a leading ``conf/`` dropped); ``.yaml`` may be left out."""
    if not isinstance(value, str) or not value or "\n" in value:
        return None
    given = Path(value).expanduser()
    places = [given if given.is_absolute() else (relative_to or Path.cwd()) / given]
    if not given.is_absolute():
        places.append(CONF_DIR / given)
        if len(given.parts) > 1 and given.parts[0] == CONF_PREFIX:
            places.append(CONF_DIR.joinpath(*given.parts[1:]))
    for place in places:
        for candidate in (place, place.with_name(place.name + ".yaml")):
            if _is_file(candidate):
                return candidate.resolve()
    return None


def regime_names(folder: Path = CONF_DIR) -> List[str]:
    """The regime configs in ``folder`` (every ``*.yaml`` but the shared base)."""
    return sorted(p.stem for p in folder.glob("*.yaml") if p.stem != BASE_NAME)


def _builds_a_model(path: Path) -> bool:
    content = yaml.safe_load(path.read_text())
    return isinstance(content, dict) and isinstance(content.get("model"), dict) and "class_path" in content["model"]


def regime_groups(folder: Path = CONF_DIR) -> Dict[str, List[str]]:
    """Regime configs in the subfolders of ``folder``, as names ``--config`` takes.

    ``{"conv": ["conv/bp", ...]}``: in each subfolder, the files that choose a model
    (``model.class_path``); the others (``trainer/``, ``variants/``) are settings to stack.
    """
    groups: Dict[str, List[str]] = {}
    if not folder.is_dir():
        return groups
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name not in NOT_FIT_CONFIGS):
        names = [f"{sub.name}/{path.stem}" for path in sorted(sub.glob("*.yaml")) if _builds_a_model(path)]
        if names:
            groups[sub.name] = names
    return groups


def config_names(folder: Path = CONF_DIR) -> List[str]:
    """Every name ``--config`` takes in ``folder``: ``bp``, ..., ``conv/bp``, ..., ``variants/f32``."""
    subs = sorted(p for p in folder.iterdir() if p.is_dir() and p.name not in NOT_FIT_CONFIGS) \
        if folder.is_dir() else []
    return regime_names(folder) + [f"{sub.name}/{p.stem}" for sub in subs for p in sorted(sub.glob("*.yaml"))]


def unknown_config_message(value: str) -> str:
    """One line for a ``--config`` value that is neither a file nor a config's name."""
    names = config_names()
    close = difflib.get_close_matches(value.removesuffix(".yaml").removeprefix(f"{CONF_PREFIX}/"), names, n=1,
                                      cutoff=0.6)
    hint = f" did you mean {close[0]}?" if close else ""
    regimes = regime_names() + [n for group in regime_groups().values() for n in group]
    return (f"--config {value}: no such file, nor a config of that name;{hint} configs: {', '.join(regimes)}; "
            f"to stack: trainer/*, variants/* ({len(names)} names in all: --help)")


# ---------------------------------------------------------------------- sizes from the data
def import_class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def data_size(key: str):
    """The ``compute_fn`` of the link from ``data.class_path`` to the network's ``key``: the
    data class's attribute (:data:`SIZE_KEYS`), None when it has none."""
    def from_data(class_path: Optional[str]) -> Any:
        try:
            value = getattr(import_class(class_path), SIZE_KEYS[key], None) if class_path else None
        except (ImportError, AttributeError, ValueError):
            return None  # jsonargparse reports the bad class_path itself
        return [int(n) for n in value] if key == "input_shape" and value is not None else value
    return from_data


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(int(n)) for n in shape)


def sizes_from_data(data_cls: type, given: Mapping[str, Any], *, where: str) -> Dict[str, Any]:
    """The values to set for the size arguments in ``given`` that are None.

    ``given`` maps the network's size arguments (those of :data:`SIZE_KEYS` it accepts) to
    their configured values; ``where`` is their config key prefix, for messages. Raises
    :class:`SizeError` when a set value differs from the data's, or when an unset one is not
    given by ``data_cls``.
    """
    data_name = data_cls.__name__
    shape = getattr(data_cls, "input_shape", None)
    updates: Dict[str, Any] = {}
    for key, value in given.items():
        attr = SIZE_KEYS[key]
        wanted = getattr(data_cls, attr, None)
        if wanted is None:
            if value is None:
                raise SizeError(f"{where}.{key} is not set and the data ({data_name}) has no {attr}; set it")
            continue
        if key == "input_shape":
            wanted = tuple(int(n) for n in wanted)
        if value is None:
            # a list: what a YAML config would hold (a tuple does not round-trip a config dump)
            updates[key] = list(wanted) if key == "input_shape" else wanted
            continue
        is_shape = key == "input_shape" and isinstance(value, (list, tuple))
        if (tuple(value) if is_shape else value) != wanted:
            shown = _shape_text(value) if is_shape else value
            gives = _shape_text(wanted) if key == "input_shape" else wanted
            extra = f" (input_shape {_shape_text(shape)})" if key == "in_features" and shape is not None else ""
            raise SizeError(f"{where}.{key} is {shown} but the data ({data_name}) gives {gives}{extra}; "
                            "remove the key to take it from the data")
    return updates
