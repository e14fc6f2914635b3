"""The W&B dashboard, the sweep files and what a run records, all offline.

* every key that a short offline run of each regime (conf/*.yaml) logs is on a panel of the
  dashboard's dry-run specification, and every panel's key is logged by some regime;
* each sweep file's command, expanded as the W&B agent expands it, trains;
* a run's group and tag name its regime, its config holds the resolved config, the package
  version and git commit, its summary the best validation accuracy; a 2-process DDP run
  leaves one W&B run;
* ``--dry-run`` needs neither the network nor an API key; without them saving fails in one line.
"""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest
import yaml

from lightning_gait import __version__, dashboard, fit
from lightning_gait.configs import regime_names
from lightning_gait.wandb_history import find_run_file, history_keys, iter_records, read_history, wait_until_complete
from lightning_gait.wandb_run import git_commit, regime_of

from conftest import REPO_ROOT
SWEEPS = sorted((REPO_ROOT / "conf" / "sweeps").glob("*.yaml"))
TINY_LAYERS = 3  # width 16, depth 2: input -> 16 -> 16 -> output


def tiny_args(data_root: Path, out: Path):
    return [
        "--data.data_dir", str(data_root), "--data.verify_checksums", "false",
        "--data.val_size", "64", "--data.batch_size", "64",
        "--model.init_args.net.init_args.width", "16", "--model.init_args.net.init_args.depth", "2",
        "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
    ]


@pytest.fixture(scope="module")
def regime_runs(tiny_cifar_root, tmp_path_factory) -> Dict[str, Path]:
    """One offline run of every regime, one epoch (4 steps, every callback measures at step 0)."""
    import wandb

    runs = {}
    for name in regime_names():
        out = tmp_path_factory.mktemp(f"run_{name}")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("WANDB_MODE", "offline")
            mp.setenv("WANDB_SILENT", "true")
            mp.chdir(out)
            code = fit.main(["--config", name, *tiny_args(tiny_cifar_root, out), "--trainer.max_epochs", "1"])
            wandb.finish()
        assert code == 0, name
        path = find_run_file(out / "wandb")
        assert wait_until_complete(path, timeout_s=60), f"{name}: W&B did not finish writing"
        runs[name] = path
    return runs


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("spec") / "workspace.json"
    assert dashboard.main(["--dry-run", "--entity", "e", "--project", "p", "--layers", str(TINY_LAYERS),
                           "--out", str(out)]) == 0
    return json.loads(out.read_text())


def panel_keys(spec) -> set:
    return {key for section in spec["sections"] for panel in section["panels"] for key in panel["keys"]}


def logged_keys(path: Path) -> set:
    """The run's history keys; a logged chart ``charts/X`` is stored as the table ``charts/X_table.*``."""
    keys = set()
    for key in history_keys(read_history(path)):
        if key.startswith("_"):  # W&B's own (_step, _runtime, _timestamp)
            continue
        keys.add(key.split(".", 1)[0] if key.startswith("charts/") else key)
    return keys


@pytest.mark.e2e  # a whole experiment, or every regime
def test_every_logged_key_is_on_a_panel_and_every_panel_key_is_logged(regime_runs, spec):
    assert sorted(regime_runs) == ["bp", "bp_smooth", "fa", "gait", "gait_norm", "gait_smooth",
                                   "gait_smooth_norm", "tp"]
    shown = panel_keys(spec)
    axes = {panel["x"] for section in spec["sections"] for panel in section["panels"] if panel["x"]}
    assert axes == {dashboard.X_AXIS}
    logged = {}
    for name, path in regime_runs.items():
        logged[name] = logged_keys(path)
        missing = logged[name] - shown - axes
        assert not missing, (name, sorted(missing))
    every = set().union(*logged.values())
    never = shown - every - set(dashboard.CONDITIONAL_KEYS)
    assert not never, sorted(never)
    # the diagnostics of the tiny network, every layer, on their family's panel
    for family, first in (("bp_corr", 1), ("target_norm", 1), ("gamma", 2), ("cond", 2)):
        assert {f"{family}/layer_{k}" for k in range(first, TINY_LAYERS + 1)} <= every & shown
    assert "gamma/layer_1" not in shown and f"bp_corr/layer_{TINY_LAYERS + 1}" not in shown


def test_spec_sections_and_grouping(spec):
    names = [s["name"] for s in spec["sections"]]
    assert names[:5] == ["accuracy and loss", "alignment with backprop", "targets", "orthogonality", "speed"]
    alignment = spec["sections"][1]["panels"]
    bars = [p for p in alignment if p["type"] == "BarPlot"]
    assert len(bars) == 1 and bars[0]["keys"] == [f"bp_corr/layer_{k}" for k in range(1, TINY_LAYERS + 1)]
    lines = {p["title"]: p["keys"] for p in alignment if p["type"] == "LinePlot"}
    assert lines["bp_angle per layer"] == [f"bp_angle/layer_{k}" for k in range(1, TINY_LAYERS + 1)]
    view = spec["spec"]["section"]
    assert [g["name"] for g in view["runSets"][0]["grouping"]] == ["group"]
    saved_names = [s["name"] for s in view["panelBankConfig"]["sections"]]
    assert saved_names == names
    assert spec["view_name"] == dashboard.view_name("lightning-gait")


def _records(path: Path, kind: str):
    return [getattr(r, kind) for r in iter_records(path) if r.WhichOneof("record_type") == kind]


def _items(updates) -> dict:
    return {(".".join(i.nested_key) if i.nested_key else i.key): json.loads(i.value_json) for i in updates}


@pytest.mark.e2e  # a whole experiment, or every regime
def test_run_records_regime_config_version_and_best(regime_runs):
    path = regime_runs["gait_norm"]
    run = _records(path, "run")[0]
    assert run.run_group == "gait_norm" and "gait_norm" in list(run.tags)
    config = _items(run.config.update)
    for record in _records(path, "config"):
        config.update(_items(record.update))
    assert config["lightning_gait"] == {"version": __version__, "git_commit": git_commit(),
                                       "git_dirty": config["lightning_gait"]["git_dirty"]}
    assert config["lightning_gait"]["git_commit"] is None or len(config["lightning_gait"]["git_commit"]) == 40
    assert config["config"]["model"]["init_args"]["eta"] == 1e-7  # the resolved config, from fit's callback
    summary = {}
    for record in _records(path, "summary"):
        summary.update(_items(record.update))
    history = [r["val/acc"] for r in read_history(path) if "val/acc" in r]
    assert summary["val/acc_best"] == pytest.approx(max(history))
    assert _records(regime_runs["bp"], "run")[0].run_group == "bp"


def test_regime_of_command_lines(tmp_path):
    """The regime of a parsed fit configuration: its first --config file that chooses a model."""
    conf = REPO_ROOT / "conf"
    assert regime_of({"config": [conf / "gait_norm.yaml", conf / "trainer" / "ddp_cpu.yaml"]}) == "gait_norm"
    assert regime_of({"config": [conf / "trainer" / "ddp_cpu.yaml", conf / "bp.yaml"]}, "x") == "bp"
    own = tmp_path / "my_regime.yaml"
    own.write_text("model:\n  class_path: lightning_gait.GAITProp\n")
    assert regime_of({"config": [own]}) == "my_regime"
    assert regime_of({"config": []}, "from_logger") == "from_logger"


# ---------------------------------------------------------------------- sweeps
def _one_point(parameter: dict):
    """One value of a sweep parameter, as a sampler could draw it."""
    if "value" in parameter:
        return parameter["value"]
    if "values" in parameter:
        return parameter["values"][len(parameter["values"]) // 2]
    low, high = float(parameter["min"]), float(parameter["max"])
    if parameter.get("distribution", "").startswith("log_uniform"):
        return math.sqrt(low * high)
    return (low + high) / 2


def agent_command(sweep: dict, point: dict):
    """The command line the W&B agent runs for ``point`` (wandb/wandb_agent.py, ``_command_run``)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    command = {"args": {name: {"value": value} for name, value in point.items()}, "program": sweep["program"]}
    sweep_vars = sweep_utils.create_sweep_command_args(command)
    sweep_vars["interpreter"] = ["python"]
    sweep_vars["program"] = [command["program"]]
    sweep_vars["env"] = ["/usr/bin/env"]
    out = []
    for c in sweep_utils.create_sweep_command(sweep["command"]):
        c = str(c)
        if c.startswith("${") and c.endswith("}"):
            out += sweep_vars.get(c[2:-1]) or []
        else:
            out.append(c)
    return out


def test_sweep_files_exist():
    assert {p.stem for p in SWEEPS} == {"gait_norm_eta", "gait_norm_lr_ortho", "gait_gamma"}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_command_trains(path, tiny_cifar_root, tmp_path, monkeypatch):
    sweep = yaml.safe_load(path.read_text())
    assert sweep["metric"] == {"name": "val/acc", "goal": "maximize"}
    point = {name: _one_point(p) for name, p in sweep["parameters"].items()}
    cmd = agent_command(sweep, point)
    assert cmd[:4] == ["/usr/bin/env", "python", "-m", "lightning_gait.fit"]
    assert cmd[-len(point):] == [f"--{name}={value}" for name, value in point.items()]
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    code = fit.main([*cmd[4:], *tiny_args(tiny_cifar_root, out), "--trainer.max_steps", "2",
                     "--trainer.logger", "false", "--test_after_fit", "false"])
    assert code == 0
    saved = yaml.safe_load(next(out.rglob("config.yaml")).read_text())
    for name, value in point.items():
        node = saved
        for part in name.split("."):
            node = node[part]
        assert node == pytest.approx(value), name


# ---------------------------------------------------------------------- offline use
@pytest.fixture
def no_network_no_key(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("")
    monkeypatch.setenv("NETRC", str(netrc))


def test_dry_run_needs_no_network_or_key(no_network_no_key, tmp_path, capsys):
    assert dashboard.main(["--dry-run", "--entity", "e", "--project", "p"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec["layers"] == 7 and spec["entity"] == "e" and spec["project"] == "p"
    assert "bp_corr/layer_7" in panel_keys(spec) and "bp_corr/layer_8" not in panel_keys(spec)


def test_without_key_or_network_saving_fails_in_one_line(no_network_no_key, monkeypatch, capsys):
    assert dashboard.main(["--entity", "e", "--project", "p"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no W&B API key" in err
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert dashboard.main(["--entity", "e", "--project", "p"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot reach the W&B server" in err


def test_layers_from_a_config():
    assert dashboard.layers_of("gait_norm") == 7


# ---------------------------------------------------------------------- DDP
@pytest.mark.e2e  # two processes
def test_two_process_ddp_run_is_one_wandb_run(tiny_cifar_root, tmp_path):
    drop = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
            "LOCAL_WORLD_SIZE", "PL_GLOBAL_SEED", "PL_TRAINER_GPUS")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo",
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lightning_gait.fit", "--config", "gait_norm", "--config", "trainer/ddp_cpu",
           *tiny_args(tiny_cifar_root, out), "--trainer.max_steps", "3"]
    log = tmp_path / "fit.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            code = proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"DDP run did not finish; log:\n{log.read_text()[-4000:]}")
    text = log.read_text()
    assert code == 0, text[-6000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in text
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs  # rank 1 started none
    path = find_run_file(runs[0])
    # the W&B service finishes the file after the process exits: minutes on a loaded machine
    assert wait_until_complete(path, timeout_s=300), "W&B did not finish writing"
    run = _records(path, "run")[0]
    assert run.run_group == "gait_norm" and "gait_norm" in list(run.tags)
    rows = read_history(path)
    # one row per step, from rank 0 only (the callbacks measure at step 0 with their every_n_steps)
    assert [r["trainer/global_step"] for r in rows if "train/loss_step" in r] == [0, 1, 2]
    assert [r["trainer/global_step"] for r in rows if "bp_corr/layer_1" in r] == [0]


def test_a_run_that_stops_on_non_finite_targets_is_recorded_as_failed(tiny_cifar_root, tmp_path, monkeypatch):
    """fit finishes its W&B run with its own exit code (3: training stopped), not 0."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    code = fit.main(["--config", "gait_norm", *tiny_args(tiny_cifar_root, out), "--trainer.max_steps", "3",
                     "--model.init_args.eta", "1e300"])
    assert code == 3
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    path = find_run_file(runs[0])
    assert wait_until_complete(path, timeout_s=60)
    assert [r.exit_code for r in _records(path, "exit")] == [3]
