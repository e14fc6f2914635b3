"""Data-parallel training (issue 5): two CPU processes (gloo) train exactly like one.

``tests/ddp_worker.py`` trains small rules (``InvertibleMLP(20, 16, 3)``, float64,
``precision="64-true"``) for one epoch of 4 steps under Lightning's ``ddp`` strategy with
``accelerator="cpu", devices=2`` in a subprocess (Lightning's launcher starts rank 1),
and every rank saves what it saw. The same scenarios run here in this process on one
device, each batch being the union of the two ranks' batches. The ranks build their
networks (and FA's feedback matrices) from different seeds, so agreement needs DDP.

Checked, per scenario:

* after every step the weights (and buffers, FA's feedback matrices) are bitwise equal
  on both ranks, and the all-reduced gradients too;
* they equal the one-process run on the union to 1e-10 (weights, absolute) and 1e-10
  (gradients, relative to their largest entry) for Backprop, FA and the exact form of
  GAIT-N (``target_mode="difference"``, also with ``inverse="cached"``: per-rank state
  outside the parameters, which rank 0's diagnostics touch), with ``loss_reduction``
  "sum" and "mean"; and the exact form of GAIT-N on a small ``InvertibleCNN``
  (convolutions, auxiliary channels; the 20 features read as 5 x 2 x 2 images).
  The paper's form of GAIT-N (``"absolute"``, eta 1e-7) recovers ``t - a`` by
  subtracting two numbers that agree to ~7 digits, so different batch shapes (8 rows vs
  16) already change its updates at the 1e-8 level (relative) in float64; it gets 1e-9
  on the weights (lr 1e-3 times 1e-6) and 1e-6 on the gradients;
* exactly one gradient all-reduce per step, inside the backward, on both ranks: the
  diagnostics callbacks (which call ``torch.autograd.grad`` on rank 0 only, every step)
  trigger none;
* epoch metrics (``train/loss``, ``val/loss``, ``val/acc``) are reduced over the ranks;
* a NaN in one rank's batch makes every rank skip (``on_nonfinite="skip"``) or raise,
  instead of a hang;
* ``CIFAR10DataModule`` splits its own per-epoch order (``shuffle_seed``) over the ranks:
  their k-th batches together are the k-th batch of a one-process run.

Plus ``python -m lightning_gait.fit`` with ``--trainer.devices 2 --trainer.strategy ddp``
on the tiny generated CIFAR-10 with the diagnostics callbacks on (and, marked slow, the
issue's command on the real CIFAR-10).
"""
from __future__ import annotations

import csv
import importlib.util
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO_ROOT, TESTS_DIR
WORKER_PATH = TESTS_DIR / "ddp_worker.py"
DDP_TIMEOUT_S = 240

_spec = importlib.util.spec_from_file_location("ddp_worker", WORKER_PATH)
worker = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("ddp_worker", worker)
_spec.loader.exec_module(worker)

CLEAN = [name for name, sc in worker.SCENARIOS.items() if sc.on_nonfinite is None]
PAPER_FORM = {name for name, sc in worker.SCENARIOS.items() if sc.rule == "gait"}


def launch_env() -> dict:
    """This environment without anything that would make Lightning think it is already a rank."""
    drop = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
            "LOCAL_WORLD_SIZE", "PL_GLOBAL_SEED", "PL_TRAINER_GPUS")
    env = {k: v for k, v in os.environ.items()
           if k not in drop and not k.startswith(("SLURM_", "TORCHELASTIC_", "OMPI_", "PMI_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("WANDB_MODE", "offline")
    env["OMP_NUM_THREADS"] = "1"  # two ranks on a small machine
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback: no need to resolve the host name
    return env


def run_to_end(cmd, *, cwd: Path, log: Path, timeout: float) -> int:
    """Run ``cmd`` in its own session; on timeout kill the whole group (both ranks) and fail."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=launch_env(), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"{cmd} did not finish in {timeout} s (deadlock?); log:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def records(tmp_path_factory, tiny_cifar_root):
    """Run the 2-process worker (subprocess) and the one-process references (here, meanwhile)."""
    root = tmp_path_factory.mktemp("ddp")
    log = root / "worker.log"
    cmd = [sys.executable, str(WORKER_PATH), str(root / "ddp"), "--cifar-dir", str(tiny_cifar_root)]
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=launch_env(), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    seed_env = os.environ.get("PL_GLOBAL_SEED")
    python_rng, numpy_rng = random.getstate(), np.random.get_state()  # seed_everything reseeds them
    try:
        with torch.random.fork_rng(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*batch skipped.*")
            for name in worker.SCENARIOS:
                worker.run_scenario(name, root / "ref", devices=1, strategy="auto")
    finally:
        random.setstate(python_rng)
        np.random.set_state(numpy_rng)
        if seed_env is None:
            os.environ.pop("PL_GLOBAL_SEED", None)
        else:
            os.environ["PL_GLOBAL_SEED"] = seed_env
    try:
        code = proc.wait(timeout=max(1.0, DDP_TIMEOUT_S - (time.perf_counter() - start)))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"the DDP worker did not finish in {DDP_TIMEOUT_S} s (deadlock?); log:\n{log.read_text()[-4000:]}")
    assert code == 0, f"DDP worker failed ({code}); log:\n{log.read_text()[-6000:]}"

    def load(folder: str, name: str, rank: int):
        return torch.load(root / folder / f"{name}_rank{rank}.pt", map_location="cpu", weights_only=False)

    data = {name: {"ddp": [load("ddp", name, r) for r in range(worker.WORLD)], "ref": load("ref", name, 0)}
            for name in worker.SCENARIOS}
    data["datamodule"] = {"ddp": [load("ddp", "datamodule", r) for r in range(worker.WORLD)]}
    return data


def max_abs_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def max_rel_diff(a, b) -> float:
    return max(float((x - y).abs().max() / y.abs().max()) for x, y in zip(a, b))


def tolerances(name: str):
    """(weights, absolute; gradients, relative to the largest entry)."""
    return (1e-9, 1e-6) if name in PAPER_FORM else (1e-10, 1e-10)


# ---------------------------------------------------------------------- ranks agree
@pytest.mark.e2e
@pytest.mark.parametrize("name", CLEAN)
def test_ranks_identical_after_every_step(records, name):
    r0, r1 = records[name]["ddp"]
    assert (r0["world_size"], r0["rank"], r1["rank"]) == (2, 0, 1)
    assert r0["model_wrapper"] == "DistributedDataParallel"
    # rank 1 built other weights; DDP's broadcast from rank 0 replaced them before training
    sc = worker.SCENARIOS[name]
    own = worker.make_rule(sc.rule, sc.loss_reduction, seed=1100)
    assert not torch.equal(own.net.layers[0].weight.double(), r1["initial_weights"][0])
    assert all(torch.equal(a, b) for a, b in zip(r0["initial_weights"], r1["initial_weights"]))
    assert len(r0["weights"]) == len(r1["weights"]) == worker.STEPS
    for k in range(worker.STEPS):
        assert all(torch.equal(a, b) for a, b in zip(r0["grads"][k], r1["grads"][k])), f"gradients differ at step {k}"
        assert all(torch.equal(a, b) for a, b in zip(r0["weights"][k], r1["weights"][k])), f"weights differ at step {k}"
        assert r0["weights"][k][0].dtype == torch.float64
        assert r0["buffers"][k].keys() == r1["buffers"][k].keys()
        for buf, value in r0["buffers"][k].items():
            assert torch.equal(value, r1["buffers"][k][buf]), f"buffer {buf} differs at step {k}"


@pytest.mark.e2e
def test_feedback_matrices_broadcast_and_stay_equal(records):
    r0, r1 = records["fa_sum"]["ddp"]
    ref = records["fa_sum"]["ref"]
    names = sorted(r0["initial_buffers"])
    assert names == ["feedback_1", "feedback_2", "feedback_3"]
    # rank 1 drew its own (feedback_seed=1100); it trains with rank 0's
    own = worker.make_rule("fa", "sum", seed=1100)
    assert not torch.equal(own.feedback_1.double(), r1["initial_buffers"]["feedback_1"])
    for k in range(worker.STEPS):
        for buf in names:
            assert torch.equal(r0["buffers"][k][buf], r1["buffers"][k][buf])
            assert torch.equal(r0["buffers"][k][buf], ref["buffers"][k][buf])


# ---------------------------------------------------------------------- DDP == one process on the union
@pytest.mark.e2e
@pytest.mark.parametrize("name", CLEAN)
def test_ddp_equals_one_process_on_the_union(records, name):
    r0, r1 = records[name]["ddp"]
    ref = records[name]["ref"]
    tol_w, tol_g = tolerances(name)
    assert max_abs_diff(r0["initial_weights"], ref["initial_weights"]) == 0.0
    b = worker.PER_RANK_BATCH
    x, y = worker.make_data()
    order = worker.distributed_order()
    for k in range(worker.STEPS):
        # the reference's batch k is order[2kb:2(k+1)b]; rank r's is order[r::2][kb:(k+1)b],
        # i.e. every other sample of it, starting at r
        union = order[k * 2 * b:(k + 1) * 2 * b]
        assert torch.equal(ref["batches"][k][0], x[union]) and torch.equal(ref["batches"][k][1], y[union])
        for r, rec in enumerate((r0, r1)):
            assert torch.equal(rec["batches"][k][0], x[union[r::2]])
            assert torch.equal(rec["batches"][k][1], y[union[r::2]])
        g = max_rel_diff(r0["grads"][k], ref["grads"][k])
        w = max_abs_diff(r0["weights"][k], ref["weights"][k])
        assert g <= tol_g, f"step {k}: all-reduced gradient differs from the union's by {g:.2e} (relative)"
        assert w <= tol_w, f"step {k}: weights differ from the one-process run by {w:.2e}"


# ---------------------------------------------------------------------- communication
@pytest.mark.e2e
@pytest.mark.parametrize("name", CLEAN)
def test_one_allreduce_per_step_inside_the_backward(records, name):
    """DDP's gradient hook fires in the backward only: never around the rank-0 diagnostics."""
    r0, r1 = records[name]["ddp"]
    for rec in (r0, r1):
        starts, before, ends = rec["allreduce_at_start"], rec["allreduce_before_step"], rec["allreduce_at_end"]
        previous_end = [rec["allreduce_at_train_start"]] + ends[:-1]
        assert starts == previous_end, "an all-reduce ran between batches (e.g. in a callback)"
        per_step = [b - s for b, s in zip(before, starts)]
        assert per_step[0] >= 1 and per_step == [per_step[0]] * worker.STEPS
        assert ends == before
    assert r0["allreduce_before_step"] == r1["allreduce_before_step"]
    if worker.SCENARIOS[name].diagnostics:
        assert r0["diagnostics_measurements"]["BPCorrelation"] == worker.STEPS
        assert r0["diagnostics_measurements"]["Orthogonality"] == worker.STEPS
        assert r1["diagnostics_measurements"] == {"BPCorrelation": 0, "TargetNorms": 0, "Orthogonality": 0}


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["gait_exact_norm_sum", "bp_mean", "fa_sum"])
def test_epoch_metrics_are_reduced_over_ranks(records, name):
    r0, r1 = records[name]["ddp"]
    ref = records[name]["ref"]
    for key in ("train/loss_epoch", "train/acc_epoch", "val/loss", "val/acc", "val/acc_best"):
        assert r0["metrics"][key] == r1["metrics"][key], key
        assert r0["metrics"][key] == pytest.approx(ref["metrics"][key], rel=1e-6), key
    # the step value is each process's own batch
    assert r0["metrics"]["train/loss_step"] != r1["metrics"]["train/loss_step"]


# ---------------------------------------------------------------------- non-finite batches
@pytest.mark.e2e
def test_nan_on_one_rank_skips_on_every_rank(records):
    r0, r1 = records["gait_exact_nan_skip"]["ddp"]
    ref = records["gait_exact_nan_skip"]["ref"]
    assert r0["skipped_batches"] == r1["skipped_batches"] == ref["skipped_batches"] == 1
    assert "exception" not in r0 and "exception" not in r1
    assert bool(torch.isnan(r1["batches"][worker.NAN_STEP][0]).any())
    assert not bool(torch.isnan(r0["batches"][worker.NAN_STEP][0]).any())
    for k in range(worker.STEPS):
        assert all(torch.equal(a, b) for a, b in zip(r0["weights"][k], r1["weights"][k]))
        assert max_abs_diff(r0["weights"][k], ref["weights"][k]) <= 1e-10
    # the skipped step took part in the all-reduce on both ranks, and stepped nothing
    assert r0["allreduce_at_end"] == r1["allreduce_at_end"]
    assert all(torch.equal(a, b) for a, b in zip(r0["weights"][worker.NAN_STEP], r0["weights"][worker.NAN_STEP - 1]))


@pytest.mark.e2e
def test_nan_on_one_rank_raises_on_every_rank(records):
    r0, r1 = records["gait_exact_nan_raise"]["ddp"]
    assert r1["exception"].startswith("NonFiniteError: non-finite target")
    assert r0["exception"].startswith("NonFiniteError: non-finite weight update")
    assert f"global step {worker.NAN_STEP}" in r0["exception"]


# ---------------------------------------------------------------------- the DataModule
@pytest.mark.e2e
def test_datamodule_splits_its_own_order_over_the_ranks(records, tiny_cifar_root):
    """Under DDP each rank gets every other sample of the one-process order of ``shuffle_seed``,
    cropped and flipped as a one-process run crops and flips it.

    So the ranks' k-th batches (32 each) together are the k-th batch (64) of a one-process
    run, epoch after epoch; per epoch they are one pass over the training split.
    """
    from lightning_gait.data import CIFAR10DataModule, EpochSeededSampler

    r0, r1 = records["datamodule"]["ddp"]
    assert r0["sampler"] == r1["sampler"] and r0["sampler"].endswith("DistributedSampler")
    dm = CIFAR10DataModule(data_dir=str(tiny_cifar_root), download=False, verify_checksums=False, val_size=64,
                           shuffle_seed=7, crop_padding=2, flip=True)
    dm.setup("fit")
    images = dm.data_train.images
    steps_per_epoch = len(images) // 64  # two ranks of 32
    assert len(r0["batches"]) == len(r1["batches"]) == 2 * steps_per_epoch
    orders = []
    for epoch in range(2):
        sampler = EpochSeededSampler(dm.data_train, seed=7)  # the worker's shuffle_seed
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler))
        augmented, _ = dm.data_train.__getitems__((order + epoch * len(images)).tolist())  # one-process images
        orders.append(order)
        for k in range(steps_per_epoch):
            one_process_batch = order[k * 64:(k + 1) * 64]
            for r, rec in enumerate((r0, r1)):
                x, _ = rec["batches"][epoch * steps_per_epoch + k]
                pixels = torch.round(x * 255).to(torch.uint8)
                assert torch.equal(pixels, augmented[k * 64:(k + 1) * 64][r::2]), (epoch, k, r)
                assert not torch.equal(pixels, images[one_process_batch[r::2]])  # cropped or flipped
        assert sorted(order.tolist()) == list(range(len(images)))
    assert not torch.equal(orders[0], orders[1]), "the order did not change between epochs"
    assert r0["metrics"]["train/loss_epoch"] == r1["metrics"]["train/loss_epoch"]


# ---------------------------------------------------------------------- the CLI
TRAINER_CONFIGS = sorted((REPO_ROOT / "conf" / "trainer").glob("*.yaml"))


def resolved_config(*configs: Path) -> dict:
    import contextlib
    import io

    from lightning_gait import fit

    out = io.StringIO()
    args = [a for c in configs for a in ("--config", str(c))] + ["--print_config"]
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        fit.main(args)
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(out.getvalue())


def test_trainer_configs_exist():
    assert {p.stem for p in TRAINER_CONFIGS} >= {"ddp_gpus", "ddp_cpu", "slurm"}


@pytest.mark.parametrize("trainer_config", TRAINER_CONFIGS, ids=lambda p: p.stem)
def test_trainer_config_composes_with_a_rule_config(trainer_config, monkeypatch):
    """A second --config sets only the trainer's distribution; model, data and callbacks stay."""
    monkeypatch.setattr(sys, "argv", ["lightning-gait-fit"])  # LightningCLI warns about pytest's argv
    own = yaml.safe_load(trainer_config.read_text())
    assert set(own) == {"trainer"}, "trainer configs hold the trainer block only"
    assert own["trainer"]["strategy"] == "ddp" and "callbacks" not in own["trainer"]
    base = resolved_config(REPO_ROOT / "conf" / "gait_norm.yaml")
    both = resolved_config(REPO_ROOT / "conf" / "gait_norm.yaml", trainer_config)
    for key, value in own["trainer"].items():
        assert both["trainer"][key] == value, key
    assert both["model"] == base["model"] and both["data"] == base["data"]
    assert both["trainer"]["callbacks"] == base["trainer"]["callbacks"]
    assert both["trainer"]["precision"] == base["trainer"]["precision"]


def diagnostics_config(tmp_path: Path, *, every_n_steps: int = 1) -> Path:
    """The three diagnostics callbacks measuring every step and a CSV logger (stacked on conf/gait_norm.yaml)."""
    config = {
        "trainer": {
            "callbacks": [{"class_path": f"lightning_gait.callbacks.{name}", "init_args": {"every_n_steps": every_n_steps}}
                          for name in ("BPCorrelation", "TargetNorms", "Orthogonality")],
            "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                       "init_args": {"save_dir": str(tmp_path / "logs"), "name": "ddp"}},
        },
    }
    path = tmp_path / "gait_norm_diagnostics.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.e2e  # two processes
def test_fit_cli_two_processes_with_callbacks(tiny_cifar_root, tmp_path):
    config = diagnostics_config(tmp_path)
    cmd = [
        sys.executable, "-m", "lightning_gait.fit", "--config", str(REPO_ROOT / "conf" / "gait_norm.yaml"),
        "--config", str(config), "--config", str(REPO_ROOT / "conf" / "trainer" / "ddp_cpu.yaml"),
        "--data.data_dir", str(tiny_cifar_root), "--data.verify_checksums", "false",
        "--data.val_size", "64", "--data.batch_size", "64", "--trainer.max_steps", "3",
        "--model.init_args.net.init_args.width", "16", "--model.init_args.net.init_args.depth", "2",
        "--trainer.default_root_dir", str(tmp_path / "out"), "--trainer.enable_progress_bar", "false",
        "--trainer.log_every_n_steps", "1",
    ]
    log = tmp_path / "fit.log"
    code = run_to_end(cmd, cwd=tmp_path, log=log, timeout=DDP_TIMEOUT_S)
    text = log.read_text()
    assert code == 0, text[-6000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in text
    assert text.count("lightning-gait summary:") == 1, "the summary must be printed by rank 0 only"
    assert "steps: 3" in text and "test/acc" in text
    csvs = list((tmp_path / "logs").rglob("metrics.csv"))
    assert len(csvs) == 1, csvs
    rows = list(csv.DictReader(csvs[0].open()))
    # one measurement per step, from rank 0 only: no duplicated logs
    for key in ("bp_corr/layer_1", "ortho/layer_2", "target_norm/layer_1", "train/loss_step"):
        steps = [int(r["step"]) for r in rows if r.get(key)]
        assert sorted(steps) == [0, 1, 2], (key, steps)
    # with 256 training images, 2 ranks x 64: the epoch (2 steps) ended and validation ran once
    assert len([r for r in rows if r.get("val/acc")]) == 1


@pytest.mark.slow
def test_fit_cli_two_processes_real_cifar(shared_data_root, tmp_path):
    """The issue's command: GAIT-N 3072-6x500 float64, 2 processes, 20 steps, real CIFAR-10."""
    cmd = [
        sys.executable, "-m", "lightning_gait.fit", "--config", "conf/gait_norm.yaml",
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--data.data_dir", str(shared_data_root), "--trainer.max_steps", "20",
        "--trainer.default_root_dir", str(tmp_path / "out"),
        "--trainer.logger.init_args.save_dir", str(tmp_path / "out"),
    ]
    log = tmp_path / "fit.log"
    code = run_to_end(cmd, cwd=REPO_ROOT, log=log, timeout=900)
    text = log.read_text()
    assert code == 0, text[-6000:]
    assert text.count("lightning-gait summary:") == 1
    assert "steps: 20" in text


@pytest.mark.slow
def test_ddp_spawn_equals_one_process(records, tmp_path):
    """The same check through ``strategy="ddp_spawn"`` (the ranks are forked by Lightning)."""
    names = ["gait_exact_norm_sum", "bp_sum"]
    cmd = [sys.executable, str(WORKER_PATH), str(tmp_path), "--strategy", "ddp_spawn", "--scenarios", *names]
    log = tmp_path / "spawn.log"
    code = run_to_end(cmd, cwd=REPO_ROOT, log=log, timeout=DDP_TIMEOUT_S)
    assert code == 0, log.read_text()[-6000:]
    for name in names:
        r0, r1 = (torch.load(tmp_path / f"{name}_rank{r}.pt", weights_only=False) for r in range(2))
        ref = records[name]["ref"]
        for k in range(worker.STEPS):
            assert all(torch.equal(a, b) for a, b in zip(r0["weights"][k], r1["weights"][k]))
            assert max_abs_diff(r0["weights"][k], ref["weights"][k]) <= 1e-10
            assert max_rel_diff(r0["grads"][k], ref["grads"][k]) <= 1e-10
