"""fit's command line: Lightning's ``LightningCLI`` on jsonargparse, and the little they lack.

From the libraries, as they are: the rule and the data chosen by ``class_path`` (any
:class:`~lightning_gait.rules.LocalLearningRule`, any ``LightningDataModule``), dotted
overrides, ``conf/base.yaml`` as a *default config file* (read before any ``--config``),
stacked ``--config`` (nested keys merge, ``callbacks+:`` appends), the network's sizes
copied from the data by ``link_arguments`` (so a network may require them), the resolved
config saved with the run (``SaveConfigCallback``).

Hand-written, because the libraries lack it:

* ``--config NAME``: a name of a config shipped with the package (:class:`NamedConfigFile`;
  jsonargparse takes paths and YAML strings only), with the closest names when it
  matches none.
* ``--print_config`` with the sizes taken from the data (jsonargparse leaves link
  targets out of what it prints and saves).
* a size given by hand that differs from the data's is refused, where the link would
  overwrite it without a word (:func:`check_given_sizes`).
* a config's rule or network replaced by another class on the command line is said,
  with the settings of the config that the new class does not take (jsonargparse drops
  them without a word: :func:`dropped_settings`).
* every error the user can fix is one line naming the option (:func:`user_error_line`);
  jsonargparse reports a value that fails in a constructor as a dump of every subtype
  of the Union it tried, with the whole configuration value.
"""
from __future__ import annotations

import argparse
import difflib
import inspect
import re
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import yaml
from jsonargparse import ActionConfigFile

from .configs import CONF_DIR, NET_KEY, SIZE_KEYS, data_size, find_config, import_class, regime_groups
from .configs import regime_names, sizes_from_data, unknown_config_message
from .runs import resume_in_the_runs_folder

__all__ = ["BASE_CONFIG", "PROG", "NamedConfigFile", "build_cli", "check_given_sizes", "dropped_settings",
           "dump_config", "user_error_line"]

#: how the command is run, for its usage line and messages
PROG = "python -m lightning_gait.fit"
#: what every regime shares (trainer, checkpoints, diagnostics, W&B, data): read before any --config
BASE_CONFIG = CONF_DIR / "base.yaml"
#: where the network's size arguments sit
NET_ARGS = f"{NET_KEY}.init_args"


class NamedConfigFile(ActionConfigFile):
    """jsonargparse's ``--config`` action, taking the name of a shipped config as well as a
    path or a YAML string (:func:`~lightning_gait.configs.find_config`)."""

    def __call__(self, parser, cfg, values, option_string=None):
        found = find_config(values)
        if found is not None:
            content = yaml.safe_load(found.read_text()) if found.suffix in (".yaml", ".yml") else None
            if isinstance(content, dict) and "base" in content:
                raise argparse.ArgumentError(self, f"--config {values} starts with `base:`, which is gone: "
                                                   "conf/base.yaml is read before every --config (stack further "
                                                   "files with another --config); delete the line")
            values = str(found)
        elif isinstance(values, str) and re.fullmatch(r"[\w./~+-]+", values):  # a name or path, not YAML
            raise argparse.ArgumentError(self, unknown_config_message(values))
        super().__call__(parser, cfg, values, option_string)


def _pop_print_config(args: List[str]) -> Tuple[List[str], Optional[str]]:
    """``args`` without ``--print_config[=flags]``, and that argument (None if absent)."""
    rest = [a for a in args if not (isinstance(a, str) and a.split("=", 1)[0] == "--print_config")]
    printing = [a for a in args if a not in rest]
    return rest, (printing[-1] if printing else None)


def _config_files(config) -> List[Path]:
    """The files given with ``--config``, in order."""
    return [Path(str(p)) for p in (config.get("config") or []) if p is not None]


def _file_value(path: Path, key: str) -> Any:
    """The value at dotted ``key`` in the YAML file ``path`` (None if absent)."""
    try:
        node = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return None
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _command_line_value(args: Iterable[str], key: str) -> Tuple[bool, Any]:
    """``(given, value)`` of ``--KEY V`` or ``--KEY=V`` in ``args`` (the last one given)."""
    args, found = list(args), (False, None)
    for i, arg in enumerate(args):
        if not isinstance(arg, str):
            continue
        if arg == f"--{key}" and i + 1 < len(args):
            found = (True, yaml.safe_load(str(args[i + 1])))
        elif arg.startswith(f"--{key}="):
            found = (True, yaml.safe_load(arg.split("=", 1)[1]))
    return found


def check_given_sizes(config, args: List[str]) -> None:
    """Refuse a network size given by hand (in a ``--config`` file or on the command line)
    that differs from the data's (:class:`~lightning_gait.configs.SizeError`); keep it where
    the data class does not declare that size (the link then gives None)."""
    net = config.get(NET_ARGS)
    class_path = config.get("data.class_path")
    if net is None or not class_path:
        return
    given: Dict[str, Any] = {}
    for key in SIZE_KEYS:
        if key not in net:
            continue
        for path in _config_files(config):
            value = _file_value(path, f"{NET_ARGS}.{key}")
            if value is not None:
                given[key] = value
        on_line, value = _command_line_value(args, f"{NET_ARGS}.{key}")
        if on_line:
            given[key] = value
    if given:
        for key, value in sizes_from_data(import_class(class_path), given, where=NET_ARGS).items():
            net[key] = value
        for key, value in given.items():
            if net.get(key) is None:
                net[key] = value


def dropped_settings(config, args: List[str]) -> List[str]:
    """Lines saying which settings of the ``--config`` files a class given on the command line
    for the rule (``--model.class_path``) or the network (``--model.init_args.net``) drops."""
    notes = []
    for key, flags in (("model", ("--model", "--model.class_path")), (NET_KEY, (f"--{NET_KEY}", f"--{NET_KEY}.class_path"))):
        chosen = config.get(f"{key}.class_path")
        if not chosen or not any(isinstance(a, str) and a.split("=", 1)[0] in flags for a in args):
            continue
        source = next((p for p in reversed(_config_files(config)) if _file_value(p, f"{key}.class_path")), None)
        if source is None or _file_value(source, f"{key}.class_path") == chosen:
            continue
        theirs = _file_value(source, f"{key}.init_args") or {}
        ours = config.get(f"{key}.init_args") or {}
        dropped = [k for k in theirs if k not in ours and k != "net"]
        if dropped:
            shown = ", ".join(f"{k}={theirs[k]}" for k in dropped)
            notes.append(f"note: {chosen} replaces {_file_value(source, f'{key}.class_path')} of {source.name} and "
                         f"takes none of its settings {shown}: give {chosen.rsplit('.', 1)[-1]}'s own as "
                         f"--{key}.init_args.NAME")
    return notes


def dump_config(parser, config, **kwargs) -> str:
    """``parser.dump(config)`` with the network's sizes: jsonargparse leaves link targets out of
    a dump (nested in a subclass even with ``skip_link_targets=False``), so they are put back
    at the head of the network's arguments, as a config file would give them."""
    from jsonargparse._loaders_dumpers import yaml_dump

    text = parser.dump(config, skip_link_targets=False, **kwargs)
    net = config.get(NET_ARGS)
    sizes = {k: net[k] for k in SIZE_KEYS if net is not None and k in net}
    if not sizes:
        return text
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    dumped = yaml.safe_load(text)
    node = dumped
    for part in NET_ARGS.split("."):
        node = node.setdefault(part, {}) if isinstance(node, dict) else {}
    rest = {k: v for k, v in node.items() if k not in sizes}
    node.clear()
    node.update({k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()}, **rest)
    return header + yaml_dump(dumped)


# ---------------------------------------------------------------------- errors in one line
def _accepted(class_path: str) -> List[str]:
    """The keyword arguments of ``class_path``'s ``__init__`` along its bases (for "did you mean")."""
    try:
        cls = import_class(class_path)
    except (ImportError, AttributeError, ValueError):
        return []
    names: List[str] = []
    for klass in inspect.getmro(cls):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            names += [p for p in inspect.signature(init).parameters if p not in ("self", "args", "kwargs")]
        except (TypeError, ValueError):
            continue
    return list(dict.fromkeys(names))


_STRUCTURE = re.compile(r"^(Parser key \"(?P<key>[^\"]+)\":|Problem with given class_path '(?P<cls>[^']+)':|"
                        r"Does not validate against any of the Union subtypes|Subtypes: |Errors:|Given value)")


def _leaf(message: str) -> Tuple[List[str], List[str], str]:
    """From a jsonargparse error, the keys and class paths on the way down and the innermost problem."""
    keys: List[str] = []
    classes: List[str] = []
    problem = ""
    for raw in message.splitlines():
        line = raw.strip().lstrip("- ").strip()
        if not line or "Expected a <class 'NoneType'>" in line:
            continue
        match = _STRUCTURE.match(line)
        if match:
            if match.group("key"):
                keys.append(match.group("key"))
            if match.group("cls"):
                classes.append(match.group("cls"))
                rest = line.split("':", 1)[1].strip()
                problem = rest or problem
            continue
        if not problem or raw.startswith(" "):
            problem = line
    return keys, classes, problem


def _option_for(problem: str, section: str, config) -> Tuple[str, str]:
    """``(option, problem)``: the option a constructor's message names by its first word."""
    word = re.match(r"[A-Za-z_]\w*", problem)
    for prefix in (f"{section}.init_args", f"{NET_ARGS}" if section == "model" else None):
        if prefix and word and config is not None and config.get(prefix) is not None \
                and word.group(0) in config.get(prefix):
            short = problem[word.end():].lstrip(" :")
            shown = prefix.replace("data.init_args", "data")
            return f"--{shown}.{word.group(0)}", short or problem
    return f"--{section}", problem


def user_error_line(err: BaseException, config=None, parser=None) -> str:
    """One line for an error in the command line or the configuration: the option and the problem."""
    message = str(err).strip()
    if "unrecognized arguments" in message:
        return _unrecognized(message, parser)
    named = re.search(r"--config \S+: no such file, nor a config of that name.*", message)
    if named:
        return f"error: {named.group(0)}"
    old_base = re.search(r"--config \S+ starts with `base:`.*", message)
    if old_base:
        return f"error: {old_base.group(0)}"
    keys, classes, problem = _leaf(message)
    problem = re.sub(r"<class '([\w.]+)'>", r"\1", problem).replace("Expected a ", "expected ").replace(
        ". Got value: ", ", got ")
    section = keys[0] if keys else ("data" if "LightningDataModule" in message else "model")
    not_accepted = re.match(r"(?:Key|Option) '([\w.]+)' is not accepted", problem)
    if not_accepted and classes:
        key = not_accepted.group(1)
        path = ".init_args.".join(k for k in keys) if keys else section
        option = f"--{path}.init_args.{key}" if len(classes) == len(keys) or not keys else f"--{path}.{key}"
        close = difflib.get_close_matches(key, _accepted(classes[-1]), n=1, cutoff=0.6)
        hint = f"; did you mean {option.rsplit('.', 1)[0]}.{close[0]}?" if close else ""
        return f"error: {option}: {classes[-1].rsplit('.', 1)[-1]} has no such argument{hint} ({PROG} --help)"
    if "Import path" in problem or "has no attribute" in problem or "No module named" in problem:
        return f"error: --{section}.class_path {classes[-1] if classes else ''}: cannot import it ({problem})"
    if len(keys) > 1:
        return f"error: --{'.init_args.'.join(keys)}: {problem}"
    option, problem = _option_for(problem, section, config)
    return f"error: {option}: {problem}"


def _unrecognized(message: str, parser) -> str:
    given = [w for w in message.split() if w.startswith("--")]
    known = [o for action in (parser._actions if parser is not None else []) for o in action.option_strings
             if o.startswith("--")]
    parts = []
    for option in given:
        close = difflib.get_close_matches(option.split("=", 1)[0], known, n=1, cutoff=0.75)
        parts.append(f"{option}: no such option" + (f"; did you mean {close[0]}?" if close else ""))
    return f"error: {'; '.join(parts) or message} ({PROG} --help lists the options)"


# ---------------------------------------------------------------------- help
def _summary_line(path: Path) -> str:
    """The config's first comment line, up to its first parenthesis."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").split(" (")[0].strip()
    return ""


def config_listing() -> str:
    names = regime_names()
    grouped = [name for group in regime_groups().values() for name in group]
    width = max((len(n) for n in names + grouped), default=0)
    lines = [f"Configs: --config NAME (shipped in {CONF_DIR}; each gives what differs from base.yaml):"]
    lines += [f"  {name:<{width}}  {_summary_line(CONF_DIR / f'{name}.yaml')}" for name in names + grouped]
    for folder in ("trainer", "variants"):
        stackable = sorted(f"{folder}/{p.stem}" for p in (CONF_DIR / folder).glob("*.yaml"))
        if stackable:
            lines.append(f"{folder.capitalize()} settings, as a further --config: " + ", ".join(stackable))
    lines.append(f"Example: {PROG} --config gait_norm --trainer.max_epochs 1")
    return "\n".join(lines)


# ---------------------------------------------------------------------- the CLI
def build_cli(args, save_config_callback=None, before_instantiate=None):
    """fit's ``LightningCLI`` (``run=False``) for the command-line ``args``.

    ``save_config_callback``: the ``SaveConfigCallback`` class (``fit``'s saves into the run's
    folder); ``before_instantiate(cli)``: called with the parsed config, before the classes
    are built (``fit`` names the W&B run there). ``cli.notes`` holds lines to print.
    """
    from jsonargparse import DefaultHelpFormatter
    from pytorch_lightning import LightningDataModule
    from pytorch_lightning.cli import LightningCLI

    from .rules import LocalLearningRule

    class GaitCLI(LightningCLI):
        notes: List[str] = []

        def init_parser(self, **kwargs):
            kwargs.setdefault("dump_header", [f"pytorch_lightning=={__import__('pytorch_lightning').__version__}"])
            parser = self.parser_class(**kwargs)
            parser.add_argument("-c", "--config", action=NamedConfigFile,
                                help="A config file (a path, or a name listed below) or a YAML string; read after "
                                     "conf/base.yaml. Repeat to stack configs.")
            return parser

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument("--ckpt_path", type=Optional[str], default=None,
                                help="Checkpoint to resume from (exact continuation).")
            parser.add_argument("--test_after_fit", type=bool, default=True,
                                help="Test the best checkpoint on the test set after training.")
            for key in SIZE_KEYS:  # applied where the chosen network takes the argument
                parser.link_arguments("data.class_path", f"{NET_ARGS}.{key}", compute_fn=data_size(key),
                                      apply_on="parse")

        def parse_arguments(self, parser, args) -> None:
            """Parse; check the sizes; with ``--print_config``, print with the sizes and exit."""
            if not isinstance(args, list):
                return super().parse_arguments(parser, args)
            args, printing = _pop_print_config(args)
            try:
                self.config = parser.parse_args(args)
            except argparse.ArgumentError as err:
                err.parser = parser  # for the option names of the message
                raise
            check_given_sizes(self.config, args)
            self.notes = dropped_settings(self.config, args)
            for note in self.notes:
                print(note, file=sys.stderr)
            resume_in_the_runs_folder(self.config, args)
            if printing is not None:
                flags = printing.split("=", 1)[1].split(",") if "=" in printing else []
                print(dump_config(parser, self.config, skip_unset="skip_null" in flags,
                                  skip_default="skip_default" in flags), end="")
                raise SystemExit(0)

        def before_instantiate_classes(self) -> None:
            if before_instantiate is not None:
                before_instantiate(self)

        def instantiate_classes(self) -> None:
            try:
                super().instantiate_classes()
            except (ValueError, TypeError) as err:
                err.config = self.config  # to name the option of a constructor's message
                raise

    class HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
        """Keeps the config listing's line breaks."""

    options = {"save_config_callback": save_config_callback, "save_config_kwargs": {"overwrite": True}} \
        if save_config_callback is not None else {"save_config_callback": None}
    return GaitCLI(
        LocalLearningRule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        auto_configure_optimizers=False,
        seed_everything_default=0,
        parser_kwargs={
            "prog": PROG,
            "default_config_files": [str(BASE_CONFIG)],
            "exit_on_error": False,  # fit prints one line instead of the usage
            "allow_abbrev": False,  # a misspelt option is an error, not silently expanded
            "description": "Train a lightning-gait learning rule (on CIFAR-10 unless --data.class_path says otherwise).",
            "epilog": config_listing(),
            "formatter_class": HelpFormatter,
        },
        args=args,
        **options,
    )
