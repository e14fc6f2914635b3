"""fit's command line on jsonargparse's own machinery (issue 24): base.yaml as a default config
file, named and stacked ``--config`` in every spelling, the network's sizes linked from the
data (also for a network that requires them), ``--print_config`` and the saved config.yaml
with those sizes, the W&B logger named through its documented arguments."""
from __future__ import annotations

import contextlib
import io
import os

import pytest
import torch
import yaml

from lightning_gait import fit

from conftest import REPO_ROOT

NET = "model.init_args.net.init_args"


def printed(*args: str) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
        fit.main([*args, "--print_config"])
    assert stop.value.code == 0
    return yaml.safe_load(out.getvalue())


def test_a_config_is_named_in_every_spelling_of_the_flag(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # names and conf/ paths work from any folder
    want = printed("--config", str(REPO_ROOT / "conf" / "gait_norm.yaml"))
    for spelling in (["--config", "gait_norm"], ["--config=gait_norm"], ["-c", "gait_norm"], ["-cgait_norm"],
                     ["--config", "conf/gait_norm.yaml"], ["--config", "gait_norm.yaml"]):
        assert printed(*spelling) == want, spelling
    assert want["model"]["class_path"] == "lightning_gait.GAITProp"
    assert want["trainer"]["max_epochs"] == 200  # from base.yaml, read before any --config


def test_configs_stack_on_base_yaml():
    got = printed("--config", "gait_norm", "--config", "variants/f32", "--config", "variants/difference",
                  "--config", "trainer/ddp_cpu")
    assert got["trainer"]["precision"] == "32-true" and got["trainer"]["strategy"] == "ddp"
    assert got["model"]["init_args"]["target_mode"] == "difference"
    assert got["model"]["init_args"]["eta"] == 1e-7  # the regime's, kept under the variants
    callbacks = [c["class_path"].rsplit(".", 1)[-1] for c in got["trainer"]["callbacks"]]
    assert callbacks[-1] == "TargetNorms" and "BPCorrelation" in callbacks  # callbacks+: appends to base.yaml's
    assert got["trainer"]["logger"]["init_args"]["name"] == "gait_norm"
    # a YAML string stacks like a file
    assert printed("--config", "gait_norm", "--config", "{seed_everything: 5}")["seed_everything"] == 5


@pytest.mark.parametrize("config, data, sizes", [
    ("gait_norm", "lightning_gait.data.CIFAR10DataModule", {"in_features": 3072, "num_classes": 10}),
    ("bp", "lightning_gait.data.MNISTDataModule", {"in_features": 784, "num_classes": 10}),
    ("conv/bp", "lightning_gait.data.FashionMNISTDataModule", {"input_shape": [1, 28, 28], "num_classes": 10}),
])
def test_the_networks_sizes_are_linked_from_the_data(config, data, sizes):
    net = printed("--config", config, "--data.class_path", data)["model"]["init_args"]["net"]["init_args"]
    assert {key: net[key] for key in sizes} == sizes
    assert not {"in_features", "input_shape", "num_classes"} - set(sizes) & set(net)  # only what the network takes


def test_the_saved_config_holds_the_sizes_and_reruns(tiny_cifar_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small = ["--data.data_dir", str(tiny_cifar_root), "--data.verify_checksums", "false", "--data.val_size", "64",
             f"--{NET}.width", "16", f"--{NET}.depth", "2", "--trainer.logger", "false", "--test_after_fit", "false",
             "--trainer.enable_progress_bar", "false"]
    first = tmp_path / "first"
    assert fit.main(["--config", "gait_norm", *small, "--trainer.max_steps", "2",
                     "--trainer.default_root_dir", str(first)]) == 0
    saved = yaml.safe_load((first / "config.yaml").read_text())
    assert saved["model"]["init_args"]["net"]["init_args"]["in_features"] == 3072
    # the run's own config.yaml is a complete config: the same run again, in another folder
    again = tmp_path / "again"
    assert fit.main(["--config", str(first / "config.yaml"), "--trainer.default_root_dir", str(again)]) == 0
    a = torch.load(first / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    b = torch.load(again / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.e2e  # W&B starts a process of its own
def test_the_wandb_run_is_named_through_the_loggers_documented_arguments(tiny_cifar_root, tmp_path, monkeypatch):
    """Group, tags and quiet settings, and on resume the checkpoint's run id, are the logger's
    own arguments (wandb.init's), set in the configuration: nothing private is written."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    for key in ("WANDB_RUN_GROUP", "WANDB_TAGS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    args = ["--config", "gait_norm", "--data.data_dir", str(tiny_cifar_root), "--data.verify_checksums", "false",
            "--data.val_size", "64", f"--{NET}.width", "16", f"--{NET}.depth", "2", "--test_after_fit", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(tmp_path / "out")]
    assert fit.main([*args, "--trainer.max_epochs", "1"]) == 0
    (run,) = (tmp_path / "out" / "lightning-gait").iterdir()
    cli = fit._build_cli([*args, "--trainer.max_epochs", "2", "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    init = cli.config["trainer.logger.init_args"]
    assert (init["id"], init["group"], init["tags"]) == (run.name, "gait_norm", ["gait_norm"])
    assert init["settings"] == {"silent": True}
    assert cli.trainer.logger.version == run.name  # the logger's public view of the id it was given
    assert os.environ["WANDB_MODE"] == "offline"


def test_a_config_with_the_old_base_key_is_one_line_naming_it(tmp_path, capsys):
    """``base:`` is gone (conf/base.yaml is read before every --config): an unknown key like any other."""
    old = tmp_path / "mine.yaml"
    old.write_text("base: base.yaml\nseed_everything: 3\n")
    assert fit.main(["--config", str(old), "--trainer.logger", "false"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --base: no such option (python -m lightning_gait.fit --help lists the options)")
