"""Errors at the edges (issue 23): every error a user can fix reaches them as one line naming
the option and the problem; a network is checked against the contract when the rule is
built; a network may require the sizes the CLI takes from the data; a config's network
swapped for another class says which settings it drops; importing the package changes no
global state."""
from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import pytorch_lightning as pl
import torch
import yaml
from torch import nn

from lightning_gait import GAITProp, InvertibleMLP, fit
from lightning_gait.data.base import ImageDataModule
from lightning_gait.networks import InvertibleNetwork

NET = "model.init_args.net.init_args"


def one_line_error(args, capsys) -> str:
    """fit's stderr for ``args``, which must fail before training with exit code 2 and one line."""
    code = fit.main([*args, "--trainer.logger", "false"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [line for line in err.splitlines() if not line.startswith("note: ")]  # what a swap drops, said apart
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for dump in ("Union", "Namespace(", "Subtypes", "Traceback"):
        assert dump not in err, err
    return lines[0]


@pytest.mark.parametrize("args, option, problem", [
    (["--data.val_size", "-5"], "--data.val_size", "must be >= 0, got -5"),
    (["--data.batch_size", "0"], "--data.batch_size", "must be >= 1, got 0"),
    ([f"--{NET}.width", "wide"], f"--{NET}.width", "expected int, got wide"),
    (["--model.class_path", "lightning_gait.Nope"], "--model.class_path lightning_gait.Nope", "cannot import it"),
    (["--seed_everything", "x"], "--seed_everything", "expected bool or int, got x"),  # a Union: each type
    (["--trainer.max_epochs", "x"], "--trainer.max_epochs", "expected int or null, got x"),
])
def test_a_bad_value_is_one_line_naming_the_option(args, option, problem, capsys):
    """They came as jsonargparse's dump of every Union subtype, the useful line inside."""
    line = one_line_error(["--config", "gait_norm", *args], capsys)
    assert line.startswith(f"error: {option}") and problem in line, line


class Images30(pl.LightningDataModule):
    """3x30x30 images: a size the CNN's patch stages cannot take."""

    input_shape, input_size, num_classes = (3, 30, 30), 2700, 10


def test_an_input_the_cnn_cannot_take_is_one_line(capsys):
    """It dumped the whole configuration Namespace."""
    line = one_line_error(["--config", "conv/gait_norm", "--data.class_path", f"{__name__}.Images30"], capsys)
    assert line.startswith("error: --model.init_args.net") and "30" in line, line


def test_a_misspelt_nested_option_gets_a_did_you_mean(capsys):
    line = one_line_error(["--config", "gait_norm", "--model.init_args.etta", "3"], capsys)
    assert line.startswith("error: --model.init_args.etta: GAITProp has no such argument; "
                           "did you mean --model.init_args.eta?"), line


def test_a_misspelt_option_is_one_line_with_a_did_you_mean(capsys):
    line = one_line_error(["--config", "gait_norm", "--trainer.max_epohcs", "1"], capsys)
    assert line.startswith("error: --trainer.max_epohcs: no such option; did you mean --trainer.max_epochs?"), line


def test_a_misspelt_config_name_lists_the_names(capsys):
    """It said `File does not exist` about a path in the working folder."""
    line = one_line_error(["--config", "gait_nrom"], capsys)
    assert line.startswith("error: --config gait_nrom: no such file, nor a config of that name; did you mean "
                           "gait_norm?"), line
    assert all(name in line for name in ("bp", "gait_smooth_norm", "conv/gait_norm", "variants/*")), line


# ---------------------------------------------------------------- the network contract, at build time
class NoLayers(InvertibleNetwork):
    def __init__(self, in_features: int = 4, num_classes: int = 2):
        super().__init__()
        self.num_classes = num_classes


class PlainReLU(InvertibleMLP):
    """An MLP whose hidden activation is torch's ReLU, which has no inverse or derivative."""

    def __init__(self, in_features: int = 4, num_classes: int = 4):
        super().__init__(in_features, num_classes, 2, num_classes, square_output=True)
        self.activation = nn.ReLU()


@pytest.mark.parametrize("make, message", [
    (NoLayers, "net NoLayers sets no `layers`: set self.layers = nn.ModuleList"),
    (PlainReLU, "net PlainReLU: the activation after layer 1 is torch.nn.modules.activation.ReLU, not a "
                "lightning_gait.activations.InvertibleActivation"),
])
def test_a_network_that_breaks_the_contract_is_named_when_the_rule_is_built(make, message, capsys):
    """It failed at the first step (`'NoLayers' object has no attribute 'invertible'`) or when
    the layer was first inverted (`'ReLU' object has no attribute 'derivative'`)."""
    with pytest.raises(ValueError) as info:
        GAITProp(make())
    assert str(info.value).startswith(message), str(info.value)
    line = one_line_error(["--config", "gait_norm", "--model.init_args.net", f"{__name__}.{make.__name__}"], capsys)
    assert line.startswith("error: --model.init_args.net: ") and message.removeprefix("net ") in line, line


class RuleWithoutAnnotation(GAITProp):
    def __init__(self, net, extra: float = 1.0, **kwargs):
        super().__init__(net, **kwargs)


class RuleWithAnnotation(GAITProp):
    def __init__(self, net: InvertibleNetwork, extra: float = 1.0, **kwargs):
        super().__init__(net, **kwargs)


def test_a_rule_subclass_that_does_not_annotate_net_is_told_to(tiny_cifar_root, tmp_path, monkeypatch, capsys):
    """Without ``net: InvertibleNetwork`` the CLI cannot build the network a config gives it,
    which nothing said; with it, the rule trains."""
    monkeypatch.chdir(tmp_path)
    small = ["--data.data_dir", str(tiny_cifar_root), "--data.verify_checksums", "false", "--data.val_size", "64",
             f"--{NET}.width", "16", f"--{NET}.depth", "2", "--trainer.fast_dev_run", "true",
             "--trainer.default_root_dir", str(tmp_path)]
    line = one_line_error(["--config", "gait_norm", "--model.class_path", f"{__name__}.RuleWithoutAnnotation",
                           *small], capsys)
    assert line == ("error: --model.init_args.net: reached RuleWithoutAnnotation.__init__ as a config value, not a "
                    "network: annotate the argument `net: InvertibleNetwork` (from lightning_gait.networks) in "
                    "RuleWithoutAnnotation.__init__, so that the CLI builds it"), line
    assert fit.main(["--config", "gait_norm", "--model.class_path", f"{__name__}.RuleWithAnnotation", *small,
                     "--trainer.logger", "false"]) == 0


# ---------------------------------------------------------------- sizes from the data, settings dropped
class SizedByTheData(InvertibleMLP):
    """A network whose sizes have no default: the CLI fills them from the data."""

    def __init__(self, in_features: int, num_classes: int, width: int = 12):
        super().__init__(in_features, width, 2, num_classes, square_output=True)


def test_sizes_from_the_data_need_no_default(tiny_cifar_root, tmp_path, monkeypatch, capsys):
    """It failed with `the following arguments are required` though the CLI fills them."""
    monkeypatch.chdir(tmp_path)
    choice = ["--config", "gait_norm", "--model.init_args.net", f"{__name__}.SizedByTheData"]
    with pytest.raises(SystemExit) as stop:
        fit.main([*choice, "--print_config"])
    assert stop.value.code == 0
    net = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["net"]
    assert net["class_path"].endswith("SizedByTheData")
    assert (net["init_args"]["in_features"], net["init_args"]["num_classes"]) == (3072, 10)
    assert fit.main([*choice, "--data.data_dir", str(tiny_cifar_root), "--data.verify_checksums", "false",
                     "--data.val_size", "64", "--trainer.fast_dev_run", "true", "--trainer.logger", "false",
                     "--trainer.default_root_dir", str(tmp_path)]) == 0


def test_a_network_swap_that_drops_the_configs_settings_is_said(capsys):
    """`--config gait_smooth_norm --model.init_args.net OTHER` trained with OTHER's default activation
    under the label GAIT-SN, without a word."""
    with pytest.raises(SystemExit):
        fit.main(["--config", "gait_smooth_norm", "--model.init_args.net", f"{__name__}.SizedByTheData",
                  "--print_config"])
    err = capsys.readouterr().err
    assert f"note: {__name__}.SizedByTheData replaces lightning_gait.InvertibleMLP of gait_smooth_norm.yaml" in err
    assert "activation=smooth_leaky_relu" in err and "depth=6" in err
    assert "width=" not in err.split("settings", 1)[1]  # SizedByTheData takes width: kept, not dropped


# ---------------------------------------------------------------- quiet, and nothing global on import
@pytest.mark.e2e
def test_a_run_prints_no_deprecation(tiny_cifar_root, tmp_path):
    """Every run printed `skip_none parameter was deprecated` (fit's config save); in a process
    of its own, without pytest's warning filters."""
    result = subprocess.run(
        [sys.executable, "-m", "lightning_gait.fit", "--config", "gait_norm", "--data.data_dir", str(tiny_cifar_root),
         "--data.verify_checksums", "false", "--data.val_size", "64", f"--{NET}.width", "16", f"--{NET}.depth", "2",
         "--trainer.max_steps", "1", "--trainer.logger", "false", "--test_after_fit", "false",
         "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "was deprecated" not in result.stdout + result.stderr and "skip_none" not in result.stderr, result.stderr
    assert (tmp_path / "config.yaml").is_file()


IMPORT_CHANGES_NOTHING = """
import logging, warnings
import jsonargparse, pytorch_lightning, torch, torchmetrics, wandb, yaml
def logger_filters():
    return {name: list(logger.filters) for name, logger in logging.root.manager.loggerDict.items()
            if isinstance(logger, logging.Logger)}
warnings_before, loggers_before = list(warnings.filters), logger_filters()
import lightning_gait, lightning_gait.fit, lightning_gait.cli, lightning_gait.data, lightning_gait.callbacks
assert warnings.filters == warnings_before, [f for f in warnings.filters if f not in warnings_before]
changed = {n: f for n, f in logger_filters().items() if f != loggers_before.get(n, [])}
assert not changed, changed
"""


@pytest.mark.e2e
def test_importing_the_package_changes_no_filters():
    """It installed a warnings filter and filters on Lightning's loggers for the whole process."""
    result = subprocess.run([sys.executable, "-c", IMPORT_CHANGES_NOTHING], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


class SixThousand(ImageDataModule):
    """6,000 tiny images: base.yaml's 5,000 held out would leave 1,000 to train on."""

    name, input_shape, num_classes = "Six thousand", (1, 2, 2), 2
    files = ()

    def read_split(self, train):
        n = 6000 if train else 100
        return torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n) % 2


def test_a_validation_split_that_takes_most_of_the_data_is_said():
    data = SixThousand("unused", download=False)  # val_size 5000: base.yaml's and the class's default
    with pytest.warns(UserWarning, match=r"--data.val_size 5000 holds out 5000 of the 6000 training images of "
                                         r"Six thousand \(83%\)"):
        data.setup("fit")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SixThousand("unused", download=False, val_size=600).setup("fit")


def test_plot_draws_every_run_of_a_folder(tmp_path, capsys):
    """`plot outputs/...` with several runs drew the newest only, into the figures of the others."""
    import os
    import time

    from lightning_gait import plot

    for k, name in enumerate(["bp_s0", "gait_norm_s0"]):
        folder = tmp_path / "runs" / name / "part1"
        folder.mkdir(parents=True)
        rows = "".join(f"{step},0,{0.1 * (k + 1) + 0.01 * step}\n" for step in range(5))
        (folder / "metrics.csv").write_text("step,epoch,val/acc\n" + rows)
        os.utime(folder / "metrics.csv", (time.time() + k, time.time() + k))
    assert plot.main([str(tmp_path / "runs")]) == 0
    printed = capsys.readouterr().out.split()
    figures = sorted(str(p.relative_to(tmp_path / "runs" / "plots")) for p in (tmp_path / "runs" / "plots").rglob("*.png"))
    assert figures == ["bp_s0-part1/accuracy.png", "gait_norm_s0-part1/accuracy.png"]
    assert sorted(printed) == sorted(str(tmp_path / "runs" / "plots" / f) for f in figures)
