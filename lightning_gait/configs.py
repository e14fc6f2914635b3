"""Configs that compose, found by name, with the network's sizes taken from the data.

* **base.** A config file may start with ``base: FILE``: the file it extends. ``base.yaml``
  holds what every regime shares (trainer, checkpoints, diagnostics, W&B logger, data) and
  each ``NAME.yaml`` gives only what differs. :func:`expand_config_args` rewrites
  ``--config conf/gait_norm.yaml`` into ``--config conf/base.yaml --config '<the regime's YAML
  without base>'`` before jsonargparse parses, so jsonargparse merges them as it merges any
  two ``--config``: nested keys merge (``trainer.logger.init_args.name`` alone keeps the
  base's logger and its other arguments), a list given again replaces the base's list, and
  ``callbacks+:`` appends to it. A base may have a base of its own.
* **names.** The configs ship inside the package, in :data:`CONF_DIR` (``lightning_gait/conf``;
  a checkout's top-level ``conf`` is a link to it). ``--config gait_norm`` (or
  ``conv/gait_norm``, ``trainer/ddp_cpu``) is ``CONF_DIR/gait_norm.yaml``: a value that is
  not a file is looked up in :data:`CONF_DIR`, ``.yaml`` optional, and a path that starts
  with ``conf/`` is looked up there without that prefix, so that ``--config
  conf/gait_norm.yaml`` works from any folder wherever the package is installed. A base is
  looked up next to the file that names it, then in :data:`CONF_DIR`.
* **sizes.** The network's ``in_features`` (the data's ``input_size``), ``input_shape`` and
  ``num_classes`` are class attributes of the DataModule named by ``data.class_path``.
  :func:`sizes_from_data` fills the ones a config leaves unset (None) and rejects hand-set
  ones that differ from the data's.

Code that builds a regime without the command line goes through the same parser
(``experiments.common.regime_cli``): there is no second reading of the configs.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import yaml

__all__ = ["CONF_DIR", "ConfigError", "SizeError", "expand_config_args", "find_config",
           "regime_groups", "regime_names", "sizes_from_data"]

#: the configs that come with the package (package data, installed with it)
CONF_DIR = Path(__file__).resolve().parent / "conf"
#: the folder name of the configs in a checkout and in the documentation (``conf/gait_norm.yaml``)
CONF_PREFIX = "conf"
#: top-level key naming the file a config extends
BASE_KEY = "base"
#: the shared file, which is not a regime of its own
BASE_NAME = "base"
#: network argument -> DataModule class attribute it takes
SIZE_KEYS = {"in_features": "input_size", "input_shape": "input_shape", "num_classes": "num_classes"}
#: where the network sits in the config (the rule's ``net`` argument)
NET_KEY = "model.init_args.net"
#: the data when a config names no ``data.class_path`` (the CLI's default too)
DEFAULT_DATA = "lightning_gait.data.CIFAR10DataModule"

_CONFIG_FLAGS = ("--config", "-c")


class ConfigError(ValueError):
    """A config's ``base`` cannot be found, bases form a cycle, or a file is not valid YAML."""


class SizeError(ValueError):
    """A size set in the config differs from the data's, or the data does not give it."""


# ---------------------------------------------------------------------- finding files
def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a YAML string given as --config can be too long for a file name
        return False


def find_config(value: str, relative_to: Optional[Path] = None) -> Optional[Path]:
    """The file that a ``--config`` value or a ``base`` names, or None.

    A path (relative to ``relative_to``, default the working directory) if that file
    exists, else a file in :data:`CONF_DIR` (a leading ``conf/`` dropped); ``.yaml`` may be
    left out.
    """
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


def regime_groups(folder: Path = CONF_DIR) -> Dict[str, List[str]]:
    """Regime configs in the subfolders of ``folder``, as names ``--config`` takes.

    ``{"conv": ["conv/bp", ...]}``: in each subfolder, the files with a ``base`` key (files
    without one, like ``trainer/*.yaml``, are settings to stack, not regimes).
    """
    groups: Dict[str, List[str]] = {}
    if not folder.is_dir():
        return groups
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        names = []
        for path in sorted(sub.glob("*.yaml")):
            content = yaml.safe_load(path.read_text())
            if isinstance(content, dict) and BASE_KEY in content:
                names.append(f"{sub.name}/{path.stem}")
        if names:
            groups[sub.name] = names
    return groups


# ---------------------------------------------------------------------- base expansion
def _layers(path: Path, seen: Tuple[Path, ...] = ()) -> List[Tuple[Path, Optional[dict]]]:
    """``path`` and its bases, the furthest base first, each with its content without ``base``.

    The content is None for a file without ``base``: it is used whole, as a path.
    """
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"config bases form a cycle: {chain}")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{at}: {problem}") from None
    if not isinstance(content, dict) or BASE_KEY not in content:
        return [(path, None)]
    content = dict(content)
    base = content.pop(BASE_KEY)
    found = find_config(base, relative_to=path.parent) if isinstance(base, str) else None
    if found is None:
        raise ConfigError(f"{path}: base {base!r} not found (looked next to the file and in {CONF_DIR})")
    return _layers(found, (*seen, path)) + [(path, content)]


def _config_flags(args: Sequence[str]) -> Iterator[Tuple[str, Optional[str], Optional[str]]]:
    """``(arg, flag, value)`` per argument of a command line: ``flag`` and ``value`` for a
    config option in any of its forms (``--config V``, ``-c V``, ``--config=V``, ``-cV``,
    ``-c=V``), else ``(arg, None, None)``."""
    args = list(args)
    i = 0
    while i < len(args):
        arg, flag, value = args[i], None, None
        if arg in _CONFIG_FLAGS and i + 1 < len(args):
            flag, value = arg, args[i + 1]
            i += 1
        elif isinstance(arg, str) and arg.startswith("--config="):
            flag, value = "--config", arg.split("=", 1)[1]
        elif isinstance(arg, str) and arg.startswith("-c") and len(arg) > 2 and not arg.startswith("--"):
            flag, value = "--config", arg[2:].removeprefix("=")  # -cNAME, -c=NAME
        i += 1
        yield arg, flag, value


def config_values(args: Sequence[str]) -> List[str]:
    """The values of every config option of a command line, in order (any form of the flag)."""
    return [value for _, flag, value in _config_flags(args) if flag is not None]


def expand_config_args(args: Sequence[str]) -> List[str]:
    """``args`` with every ``--config``/``-c`` value (also ``--config=V``, ``-cV``, ``-c=V``)
    that names a file replaced by its layers.

    A file without ``base`` stays a path (resolved, so that a name works); a file with one
    becomes its base's layers followed by its own content as a YAML string. Other values
    (YAML strings, missing files) are left to jsonargparse.
    """
    out: List[str] = []
    for arg, flag, value in _config_flags(args):
        found = None if flag is None else find_config(value)
        if found is None:
            out += [arg] if flag is None else [flag, value]
            continue
        for path, content in _layers(found):
            if content is None:
                out += [flag, str(path)]
            elif content:
                out += [flag, yaml.safe_dump(content, sort_keys=False)]
    return out


# ---------------------------------------------------------------------- sizes from the data
def import_class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


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
