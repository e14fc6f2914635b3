"""fit's command line: Lightning's ``LightningCLI`` on jsonargparse, and the little they lack.

From the libraries: the rule and the data chosen by ``class_path``, dotted overrides,
``conf/base.yaml`` as a default config file, stacked ``--config``, the network's sizes copied
from the data by ``link_arguments``, the resolved config saved with the run. Hand-written:

* ``--config NAME`` for a shipped config (jsonargparse takes paths and YAML strings only).
* ``--print_config`` and the saved config with the sizes (jsonargparse leaves link targets out).
* a size given by hand that differs from the data's is refused (a link overwrites it silently).
* a class swapped in on the command line says which of the config's settings it drops
  (jsonargparse drops them silently).
* every error the user can fix is one line naming the option (:func:`user_error_line`), where
  jsonargparse dumps every Union subtype it tried with the whole configuration value.
"""
from __future__ import annotations

import argparse
import difflib
import inspect
import re
import sys
from pathlib import Path
from typing import Any, List, Optional

import pytorch_lightning as pl
import yaml
from jsonargparse import ActionConfigFile, DefaultHelpFormatter
from pytorch_lightning.cli import LightningCLI, SaveConfigCallback

from .configs import CONF_DIR, NET_KEY, SIZE_KEYS, config_names, data_size, find_config, import_class
from .configs import sizes_from_data, unknown_config_message
from .errors import UserError
from .rules import LocalLearningRule
from .runs import model_record, record_run, resume_in_the_runs_folder, run_folder
from .wandb_run import run_metadata, wandb_init_args

__all__ = ["PROG", "NamedConfigFile", "build_cli", "check_given_sizes", "dropped_settings", "dump_config",
           "user_error_line"]

#: how the command is run, for its usage line and messages
PROG = "python -m lightning_gait.fit"
#: where the network's size arguments sit
NET_ARGS = f"{NET_KEY}.init_args"


class NamedConfigFile(ActionConfigFile):
    """jsonargparse's ``--config``, also taking the name of a shipped config (:func:`~.configs.find_config`)."""

    def __call__(self, parser, cfg, values, option_string=None):
        found = find_config(values)
        if found is None and isinstance(values, str) and re.fullmatch(r"[\w./~+-]+", values):  # a name, not YAML
            raise argparse.ArgumentError(None, unknown_config_message(values))
        super().__call__(parser, cfg, str(found) if found else values, option_string)


def _file_value(path, key: str) -> Any:
    """The value at dotted ``key`` in the YAML file ``path`` (None if absent)."""
    try:
        node = yaml.safe_load(Path(str(path)).read_text())
    except (OSError, yaml.YAMLError):
        return None
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _given(config, args: List[str], key: str) -> Any:
    """The value of dotted ``key`` given by hand: on the command line, else in the last ``--config`` file."""
    flag = f"--{key}"
    on_line = [following if arg == flag else arg.split("=", 1)[1]
               for arg, following in zip(args, [*args[1:], None]) if arg == flag or str(arg).startswith(f"{flag}=")]
    if on_line:
        return yaml.safe_load(str(on_line[-1]))
    in_files = [_file_value(path, key) for path in config.get("config") or []]
    return next((value for value in reversed(in_files) if value is not None), None)


def check_given_sizes(config, args: List[str]) -> None:
    """Refuse a network size given by hand that differs from the data's (:class:`~.configs.SizeError`);
    keep it where the data class does not give that size (the link then gives None)."""
    net, data = config.get(NET_ARGS), config.get("data.class_path")
    if net is None or not data:
        return
    for key in [key for key in SIZE_KEYS if key in net]:
        given = _given(config, args, f"{NET_ARGS}.{key}")
        if given is not None:
            sizes_from_data(import_class(data), {key: given}, where=NET_ARGS)
            if net[key] is None:
                net[key] = given


def dropped_settings(config, args: List[str]) -> List[str]:
    """Notes on the settings of the ``--config`` files that a class given on the command line for
    the rule (``--model.class_path``) or the network (``--model.init_args.net``) does not take."""
    notes = []
    for key in ("model", NET_KEY):
        chosen = config.get(f"{key}.class_path")
        if not chosen or not any(str(a).split("=", 1)[0] in (f"--{key}", f"--{key}.class_path") for a in args):
            continue
        source = next((p for p in reversed(config.get("config") or []) if _file_value(p, f"{key}.class_path")), None)
        theirs = _file_value(source, key) if source else None
        if not theirs or theirs["class_path"] == chosen:
            continue
        ours = config.get(f"{key}.init_args") or {}
        dropped = [f"{k}={v}" for k, v in (theirs.get("init_args") or {}).items() if k not in ours and k != "net"]
        if dropped:
            notes.append(f"note: {chosen} replaces {theirs['class_path']} of {Path(str(source)).name} and takes none "
                         f"of its settings {', '.join(dropped)}: give {chosen.rsplit('.', 1)[-1]}'s own as "
                         f"--{key}.init_args.NAME")
    return notes


def dump_config(parser, config, **kwargs) -> str:
    """``parser.dump(config)`` with the network's sizes, which jsonargparse leaves out (link targets
    nested in a subclass, even with ``skip_link_targets=False``), at the head of its arguments."""
    text = parser.dump(config, skip_link_targets=False, **kwargs)
    sizes = {k: v for k, v in (config.get(NET_ARGS) or {}).items() if k in SIZE_KEYS}
    if not sizes:
        return text
    dumped = yaml.safe_load(text)
    net = dumped["model"]["init_args"]["net"]
    net["init_args"] = {**sizes, **(net.get("init_args") or {})}
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    return header + yaml.safe_dump(dumped, sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------------- errors in one line
def _accepted(class_path: str) -> List[str]:
    """The arguments of ``class_path``'s ``__init__`` along its bases (for "did you mean")."""
    try:
        cls = import_class(class_path)
        return [p for k in cls.__mro__ if "__init__" in vars(k) for p in inspect.signature(k.__init__).parameters]
    except (ImportError, AttributeError, ValueError, TypeError):
        return []


def _did_you_mean(given: str, known: List[str], prefix: str = "", cutoff: float = 0.6) -> str:
    close = difflib.get_close_matches(given, known, n=1, cutoff=cutoff)
    return f"; did you mean {prefix}{close[0]}?" if close else ""


_STRUCTURE = re.compile(r"Parser key \"|Problem with given class_path|Does not validate against|Subtypes: |Errors:|"
                        r"Given value|Expected a <class 'NoneType'>")


def user_error_line(err: BaseException) -> str:
    """One line for an error in the command line or the configuration: the option and the problem
    (``err.parser``, ``err.config``: set by :class:`GaitCLI`, for the names of the options)."""
    message = str(err).strip()
    if isinstance(err, UserError) or message.startswith("--config "):  # ours (sizes, data) or NamedConfigFile's
        return f"error: {message}"
    keys = re.findall(r'Parser key "([^"]+)"', message)
    classes = re.findall(r"Problem with given class_path '([^']+)'", message)
    lines = [line.strip().removeprefix("- ") for line in message.splitlines()]
    problem = next((line for line in lines if line and not _STRUCTURE.match(line)), message)
    expected = re.findall(r"^\s*- Expected a <class '([\w.]+)'>$", message, re.M)
    if len(expected) > 1 and problem.startswith("Expected a "):  # a Union: each of its types
        given = re.search(r"Given value: (.*)$", message, re.M)
        types = " or ".join(t.replace("NoneType", "null") for t in expected)
        problem = f"expected {types}" + (f", got {given[1]}" if given else "")
    problem = re.sub(r"<class '([\w.]+)'>", r"\1", problem).replace("Expected a ", "expected ").replace(
        ". Got value: ", ", got ")
    unknown = re.match(r"(?:Key|Option) '([\w.]+)' is not accepted", problem)
    if unknown and classes:
        option = "--" + ".init_args.".join([*keys, unknown[1]])
        hint = _did_you_mean(unknown[1], _accepted(classes[-1]), option.rsplit(".", 1)[0] + ".")
        return f"error: {option}: {classes[-1].rsplit('.', 1)[-1]} has no such argument{hint} ({PROG} --help)"
    if unknown or message.startswith("unrecognized arguments"):  # a key of a config file, or an option
        given = [f"--{unknown[1]}"] if unknown else [word for word in message.split() if word.startswith("--")]
        known = [o for action in getattr(getattr(err, "parser", None), "_actions", []) for o in action.option_strings]
        parts = [f"{o}: no such option{_did_you_mean(o.split('=', 1)[0], known, cutoff=0.75)}" for o in given]
        return f"error: {'; '.join(parts)} ({PROG} --help lists the options)"
    if classes and re.search(r"Import path|has no attribute|No module named", problem):
        return f"error: --{keys[0] if keys else 'model'}.class_path {classes[-1]}: cannot import it ({problem})"
    if keys:
        return f"error: --{'.init_args.'.join(keys)}: {problem}"
    config = getattr(err, "config", None)
    if config is None:  # the parser's own message
        return f"error: {problem}"
    # a constructor's message, which names the argument by its first word
    section, word = ("data" if "LightningDataModule" in message else "model"), re.match(r"\w+", problem)
    for prefix in [f"{section}.init_args"] + [NET_ARGS] * (section == "model"):
        if word and word[0] in (config.get(prefix) or {}):
            shown = f"--{prefix.replace('data.init_args', 'data')}.{word[0]}"
            return f"error: {shown}: {problem[word.end():].lstrip(' :=') or problem}"
    return f"error: --{section}: {problem}"


# ---------------------------------------------------------------------- the CLI
def config_listing() -> str:
    """The configs, for ``--help``: each regime with its config's first comment line."""
    regimes, stacked = config_names()
    width = max(map(len, regimes), default=0)
    lines = [f"Configs: --config NAME (shipped in {CONF_DIR}; each gives what differs from base.yaml):"]
    for name in regimes:
        comments = [line for line in (CONF_DIR / f"{name}.yaml").read_text().splitlines() if line.startswith("#")]
        lines.append(f"  {name:<{width}}  {comments[0].lstrip('# ').split(' (')[0].strip() if comments else ''}")
    for folder in sorted({name.split("/")[0] for name in stacked}):
        names = ", ".join(name for name in stacked if name.startswith(f"{folder}/"))
        lines.append(f"{folder.capitalize()} settings, as a further --config: {names}")
    return "\n".join(lines + [f"Example: {PROG} --config gait_norm --trainer.max_epochs 1"])


class _RunConfig(SaveConfigCallback):
    """Saves the resolved config (sizes included) into the run's folder, logs it with the
    package's version to the logger, and records the run in every checkpoint."""

    def setup(self, trainer, pl_module, stage) -> None:
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
        record_run(trainer, checkpoint, model_record(self.config.get("model")))

    def save_config(self, trainer, pl_module, stage) -> None:
        if trainer.logger is not None:
            config = yaml.safe_load(dump_config(self.parser, self.config, skip_unset=False))
            trainer.logger.log_hyperparams({"config": config, "lightning_gait": run_metadata()})


class GaitCLI(LightningCLI):
    def init_parser(self, **kwargs):
        parser = self.parser_class(dump_header=[f"pytorch_lightning=={pl.__version__}"], **kwargs)
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
            parser.link_arguments("data.class_path", f"{NET_ARGS}.{key}", compute_fn=data_size(key), apply_on="parse")

    def parse_arguments(self, parser, args) -> None:
        """Parse; check the sizes; say what a swap drops; with ``--print_config``, print with the sizes and exit."""
        printing = [a for a in args if str(a).split("=", 1)[0] == "--print_config"]
        args = [a for a in args if a not in printing]
        try:
            self.config = parser.parse_args(args)
        except argparse.ArgumentError as err:
            err.parser = parser  # for the option names of the message
            raise
        check_given_sizes(self.config, args)
        for note in dropped_settings(self.config, args):
            print(note, file=sys.stderr)
        resume_in_the_runs_folder(self.config, args)
        if printing:
            flags = printing[-1].partition("=")[2].split(",")
            print(dump_config(parser, self.config, skip_unset="skip_null" in flags,
                              skip_default="skip_default" in flags), end="")
            raise SystemExit(0)

    def _dump_config(self) -> None:
        """The config LightningCLI saves the modules' hyperparameters from, with the network's
        sizes (:func:`dump_config`), so that ``load_from_checkpoint(path)`` rebuilds the network."""
        if not hasattr(self, "config_dump"):
            self.config_dump = yaml.safe_load(dump_config(self.parser, self.config, skip_none=False))

    def before_instantiate_classes(self) -> None:
        """A W&B logger gets the regime as group and tag, quiet console output and, on resume,
        the id of the checkpoint's run (its documented ``id``)."""
        logger = self.config.get("trainer.logger")
        if getattr(logger, "class_path", "").rsplit(".", 1)[-1] == "WandbLogger":
            for key, value in wandb_init_args(self.config, logger.init_args).items():
                logger.init_args[key] = value

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            err.config = self.config  # to name the option of a constructor's message
            raise


class _HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the config listing's line breaks."""


def build_cli(args: List[str]) -> GaitCLI:
    """fit's ``LightningCLI`` (``run=False``) for the command-line ``args``."""
    return GaitCLI(LocalLearningRule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                   run=False, auto_configure_optimizers=False, seed_everything_default=0, args=args,
                   save_config_callback=_RunConfig, save_config_kwargs={"overwrite": True}, parser_kwargs={
                       "prog": PROG, "default_config_files": [str(CONF_DIR / "base.yaml")],
                       "exit_on_error": False,  # fit prints one line instead of the usage
                       "allow_abbrev": False,  # a misspelt option is an error, not silently expanded
                       "description": "Train a lightning-gait learning rule (on CIFAR-10 unless --data.class_path "
                                      "says otherwise).",
                       "epilog": config_listing(), "formatter_class": _HelpFormatter})
