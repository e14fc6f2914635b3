"""Experiments as config stacks: names from stacks, a run trains, resumes in a new segment,
and syncs a curve with ``val/acc`` and ``test/acc`` and the config it trained with."""
from __future__ import annotations

import csv

import pytest
import yaml

from experiments import stacks
from experiments.common import resolved_config, stack_args


def test_run_name_derives_from_the_stack():
    assert stacks.run_name(["gait_norm", "variants/f32", "variants/difference"]) == "gait_norm+f32+difference"
    assert stacks.run_name(["conv/bp"]) == "conv-bp"


@pytest.mark.parametrize("every", [pytest.param(False, id="first"), pytest.param(True, id="every", marks=pytest.mark.e2e)])
@pytest.mark.parametrize("grid", stacks.grid_names())
def test_every_shipped_grid_parses_and_its_stacks_resolve(grid, every, repo_root, monkeypatch):
    """Every stack of every shipped experiment (and its ``probe`` stacks, where it has them) names
    configs that exist, and is a command line ``fit --print_config`` accepts, with the experiment's
    shared ``args`` (in this process; the first stack in the default suite, every one under ``-m e2e``)."""
    monkeypatch.chdir(repo_root)
    runs = stacks.load_grid(grid)
    assert runs
    spec = yaml.safe_load((stacks.GRIDS_DIR / f"{grid}.yaml").read_text())
    extra = [tuple(s) for s in spec.get("probe", [])]
    all_stacks = list(dict.fromkeys([r.stack for r in runs] + extra))
    for stack in all_stacks:
        for config in stack[1:]:
            assert (repo_root / "lightning_gait" / "conf" / f"{config}.yaml").is_file(), (grid, stack, config)
    for stack in all_stacks if every else all_stacks[:1]:
        printed = yaml.safe_load(resolved_config([*stack_args(stack), *runs[0].args]))
        assert printed["model"]["class_path"].startswith("lightning_gait."), (grid, stack)
    labels = spec.get("labels", {})
    assert set(labels) <= {r.name for r in runs}, "a label names no run of the experiment"
    for figure in spec.get("figures", {}).values():
        assert set(figure["runs"]) <= {r.name for r in runs}, "a figure names no run of the experiment"


def test_a_bad_grid_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(stacks, "GRIDS_DIR", tmp_path)
    (tmp_path / "bad.yaml").write_text("stacks: gait_norm\n")
    assert stacks.main(["list", "bad"]) == 2
    assert "'stacks' must be" in capsys.readouterr().err
    assert stacks.main(["list", "missing"]) == 2
    assert "experiments: bad" in capsys.readouterr().err


@pytest.mark.e2e
def test_a_run_resumes_in_a_new_segment_and_syncs_curve_and_config(tiny_cifar_root, tmp_path, monkeypatch):
    monkeypatch.setattr(stacks, "GRIDS_DIR", tmp_path)
    (tmp_path / "tiny.yaml").write_text(
        "stacks:\n  - [gait_norm, variants/f32, variants/difference]\nseeds: [3]\n"
        "args: [--model.init_args.net.init_args.width, '16', --model.init_args.net.init_args.depth, '2',"
        " --data.batch_size, '32', --data.val_size, '64', --data.verify_checksums, 'false']\n")
    outputs, results = tmp_path / "out", tmp_path / "res"
    common = ["--data-dir", str(tiny_cifar_root), "--outputs", str(outputs), "--results", str(results)]
    assert stacks.main(["run", "tiny", *common, "--fit-args", "--trainer.max_epochs", "1"]) == 0
    assert stacks.main(["run", "tiny", *common, "--fit-args", "--trainer.max_epochs", "2"]) == 0
    run_dir = outputs / "tiny" / "gait_norm+f32+difference_s3"
    assert [p.name for p in stacks.segments(run_dir)] == ["part1", "part2"]
    dest = results / "tiny" / "gait_norm+f32+difference_s3"
    with open(dest / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/acc")]
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert all(r["test/acc"] for r in rows)  # the test set evaluated with each validation
    config = yaml.safe_load((dest / "config.yaml").read_text())
    assert config["trainer"]["precision"] == "32-true"
    assert config["model"]["init_args"]["target_mode"] == "difference"
    assert config["seed_everything"] == 3 and config["data"]["init_args"]["shuffle_seed"] == 3


@pytest.mark.e2e  # five runs of an experiment, as processes
def test_runs_at_once_log_to_their_folders_and_a_failure_does_not_stop_the_others(tiny_cifar_root, tmp_path,
                                                                                  monkeypatch, capsys):
    monkeypatch.setattr(stacks, "GRIDS_DIR", tmp_path)
    (tmp_path / "pair.yaml").write_text(
        "stacks:\n  - [bp, variants/f32]\n  - [bp, variants/f32, variants/lr_1e-3]\nseeds: [0]\n"
        "args: [--model.init_args.net.init_args.width, '16', --model.init_args.net.init_args.depth, '2',"
        " --data.batch_size, '32', --data.val_size, '64', --data.verify_checksums, 'false']\n")
    outputs, results = tmp_path / "out", tmp_path / "res"
    common = ["--data-dir", str(tiny_cifar_root), "--outputs", str(outputs), "--results", str(results)]
    assert stacks.main(["run", "pair", *common, "--jobs", "0"]) == 2
    assert "--jobs 0" in capsys.readouterr().err
    # the second run's folder holds a log but no checkpoint: it is refused, the first still trains
    stuck = outputs / "pair" / "bp+f32+lr_1e-3_s0" / "part1"
    stuck.mkdir(parents=True)
    (stuck / "metrics.csv").write_text("epoch\n")
    code = stacks.main(["run", "pair", *common, "--jobs", "2", "--fit-args", "--trainer.max_epochs", "1"])
    assert code == 1
    assert "no last.ckpt to resume from" in capsys.readouterr().err
    log = outputs / "pair" / "bp+f32_s0" / "part1.log"
    assert "lightning-gait summary" in log.read_text()
    with open(results / "pair" / "bp+f32_s0" / "metrics.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f) if r.get("val/acc")] == [0]
    # with the folder cleared, both run at once and both are synced
    import shutil
    shutil.rmtree(stuck.parent)
    assert stacks.main(["run", "pair", *common, "--jobs", "2", "--fit-args", "--trainer.max_epochs", "2"]) == 0
    for run_id, parts in (("bp+f32_s0", ["part1", "part2"]), ("bp+f32+lr_1e-3_s0", ["part1"])):
        assert [p.name for p in stacks.segments(outputs / "pair" / run_id)] == parts
        with open(results / "pair" / run_id / "metrics.csv", newline="") as f:
            assert [int(r["epoch"]) for r in csv.DictReader(f) if r.get("val/acc")] == [0, 1]
