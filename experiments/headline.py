"""``python -m experiments.headline``: GAIT-N against backprop, causes separated.

Each named run is one ``python -m lightning_gait.fit`` command: a regime config from
``conf/`` plus the overrides that make the run what its name says, on the real CIFAR-10
with the test set as the validation set (``val_size 0``, as the reference code), the same
seed for weights and data order, and a CSV logger. The diagnostics callbacks of the
configs log the per-layer correlation with backprop (``bp_corr/layer_k``) every 50 steps,
so every accuracy curve comes with its alignment curve.

Runs (``RUNS``):

* ``bp``: backprop as ``conf/bp.yaml`` (plain ``500 -> 10`` output, no penalty);
* ``bp_matched``: backprop on the network GAIT-N trains (square output with auxiliary
  units, orthogonality penalty 100);
* ``gait_norm``: GAIT-N, the paper's form, float64;
* ``gait_norm_diff64`` / ``gait_norm_diff32``: GAIT-N in the difference form, float64 / float32;
* ``gait_norm_ortho1000``: GAIT-N with orthogonality weight 1000;
* ``bp_smooth``, ``gait_smooth_norm``: BP-S and GAIT-SN (no leaky-ReLU kink);
* ``conv_bp``, ``conv_gait_norm``, ``conv_gait_norm_diff32``: the invertible CNN
  (``conf/conv/``), against the MLP's curves.

A run writes its logs and checkpoints to ``OUTPUTS/{name}_s{seed}/`` and is resumed from
its ``last.ckpt`` when started again (also with a larger ``--epochs``: a 20-epoch run
continues to 200). ``sync`` copies each run's ``metrics.csv`` to
``results/headline/{name}_s{seed}.csv``; ``report`` prints the table from those CSVs.

Commands::

    python -m experiments.headline run bp gait_norm --seeds 0 1 --epochs 20
    python -m experiments.headline run gait_norm --seeds 0 --epochs 200
    python -m experiments.headline sync
    python -m experiments.headline report
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .common import DEFAULT_DATA_DIR

#: run name -> (regime config in conf/, extra CLI overrides, label)
RUNS: Dict[str, tuple] = {
    "bp": ("bp", [], "BP (500 -> 10 output, no penalty)"),
    "bp_matched": ("bp", ["--model.init_args.net.init_args.square_output", "true",
                          "--model.init_args.ortho_weight", "100"],
                   "BP on GAIT-N's network (square output, penalty 100)"),
    "gait_norm": ("gait_norm", [], "GAIT-N, paper form, float64"),
    "gait_norm_diff64": ("gait_norm", ["--model.init_args.target_mode", "difference"],
                         "GAIT-N, difference form, float64"),
    "gait_norm_diff32": ("gait_norm", ["--model.init_args.target_mode", "difference",
                                       "--trainer.precision", "32-true"],
                         "GAIT-N, difference form, float32"),
    "gait_norm_ortho1000": ("gait_norm", ["--model.init_args.ortho_weight", "1000"],
                            "GAIT-N, paper form, penalty 1000"),
    "bp_smooth": ("bp_smooth", [], "BP-S (SL-ReLU)"),
    "gait_smooth_norm": ("gait_smooth_norm", [], "GAIT-SN, paper form, float64"),
    "conv_bp": ("conv/bp", [], "BP on the invertible CNN (lr 1e-4)"),
    "conv_gait_norm": ("conv/gait_norm", [], "GAIT-N on the invertible CNN, paper form, float64 (lr 1e-4)"),
    "conv_gait_norm_diff32": ("conv/gait_norm", ["--model.init_args.target_mode", "difference",
                                                 "--trainer.precision", "32-true"],
                              "GAIT-N on the invertible CNN, difference form, float32 (lr 1e-4)"),
}

RESULTS_DIR = Path("results/headline")
OUTPUTS_DIR = Path("outputs/headline")


def run_id(name: str, seed: int) -> str:
    return f"{name}_s{seed}"


def fit_command(name: str, *, seed: int, epochs: int, data_dir: str, outputs: Path,
                ckpt_path: Optional[Path] = None) -> List[str]:
    """The ``fit`` command line of run ``name`` (resuming from ``ckpt_path`` if given)."""
    if name not in RUNS:
        raise ValueError(f"unknown run {name!r}; choose from {', '.join(RUNS)}")
    config, overrides, _ = RUNS[name]
    rid = run_id(name, seed)
    cmd = [
        sys.executable, "-m", "lightning_gait.fit", "--config", config, *overrides,
        "--seed_everything", str(seed),
        "--data.data_dir", data_dir, "--data.download", "false", "--data.val_size", "0",
        "--data.shuffle_seed", str(seed),
        "--trainer.max_epochs", str(epochs),
        "--trainer.default_root_dir", str(outputs / rid),
        "--trainer.logger", "pytorch_lightning.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(outputs), "--trainer.logger.name", rid,
        "--trainer.logger.version", "",
        "--trainer.enable_progress_bar", "false",
        "--test_after_fit", "false",
    ]
    if ckpt_path is not None:
        cmd += ["--ckpt_path", str(ckpt_path)]
    return cmd


def last_checkpoint(outputs: Path, rid: str) -> Optional[Path]:
    path = outputs / rid / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


def sync(outputs: Path = OUTPUTS_DIR, results: Path = RESULTS_DIR) -> List[Path]:
    """Copy every run's ``metrics.csv`` to ``results/{run_id}.csv``; return the copies."""
    copied = []
    for metrics in sorted(outputs.glob("*/metrics.csv")):
        results.mkdir(parents=True, exist_ok=True)
        dest = results / f"{metrics.parent.name}.csv"
        shutil.copyfile(metrics, dest)
        copied.append(dest)
    return copied


def read_epochs(path: Path) -> List[Dict[str, float]]:
    """One row per finished epoch of a run's metrics CSV: ``epoch`` (1-based), ``step``,
    ``test_acc`` (the validation set is the test set), ``train_acc``, and the last
    ``bp_corr/layer_k`` logged at or before the epoch's last step (the diagnostics
    callbacks log by step, without an epoch). Rows logged twice (before an interruption
    and again after the resume) count once: the later one wins."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    by_epoch: Dict[int, Dict[str, float]] = {}
    correlations: Dict[int, Dict[str, float]] = {}  # step -> bp_corr values
    for row in rows:
        step = int(float(row["step"])) if row.get("step") else None
        corr = {k: float(v) for k, v in row.items() if k.startswith("bp_corr/") and v not in ("", None)}
        if corr and step is not None:
            correlations.setdefault(step, {}).update(corr)
        if not row.get("epoch"):
            continue
        epoch = int(float(row["epoch"]))
        entry = by_epoch.setdefault(epoch, {})
        if row.get("val/acc"):
            entry["test_acc"] = float(row["val/acc"])
            if step is not None:
                entry["step"] = step
        if row.get("train/acc_epoch"):
            entry["train_acc"] = float(row["train/acc_epoch"])
    out = []
    for epoch in sorted(by_epoch):
        entry = by_epoch[epoch]
        if "test_acc" not in entry:
            continue
        steps = [s for s in correlations if "step" in entry and s <= entry["step"]]
        corr = correlations[max(steps)] if steps else {}
        out.append({"epoch": epoch + 1, **entry, **corr})
    return out


def summarize(results: Path = RESULTS_DIR, at_epoch: Optional[int] = None) -> List[Dict[str, object]]:
    """Per run and seed: epochs done, final and best test accuracy, layer-1 correlation at the end."""
    out = []
    for path in sorted(results.glob("*_s*.csv")):
        name, _, seed = path.stem.rpartition("_s")
        epochs = read_epochs(path)
        if at_epoch is not None:
            epochs = [e for e in epochs if e["epoch"] <= at_epoch]
        if not epochs:
            continue
        last = epochs[-1]
        best = max(epochs, key=lambda e: e["test_acc"])
        out.append({
            "run": name, "seed": int(seed), "epochs": last["epoch"],
            "final_test_acc": last["test_acc"], "best_test_acc": best["test_acc"], "best_epoch": best["epoch"],
            "bp_corr_layer_1": last.get("bp_corr/layer_1", math.nan),
        })
    return out


def _run_queue(names: Sequence[str], seeds: Sequence[int], epochs: int, data_dir: str, outputs: Path,
               results: Path, fit_args: Sequence[str] = ()) -> int:
    for seed in seeds:
        for name in names:
            rid = run_id(name, seed)
            cmd = fit_command(name, seed=seed, epochs=epochs, data_dir=data_dir, outputs=outputs,
                              ckpt_path=last_checkpoint(outputs, rid)) + list(fit_args)
            print("+", " ".join(cmd), flush=True)
            code = subprocess.call(cmd)
            sync(outputs, results)
            if code != 0:
                print(f"run {rid} exited with {code}", file=sys.stderr, flush=True)
                return code
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.headline", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train the named runs in turn (resuming each from its last.ckpt)")
    run.add_argument("names", nargs="+", choices=list(RUNS))
    run.add_argument("--seeds", type=int, nargs="+", default=[0])
    run.add_argument("--epochs", type=int, default=20)
    run.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    run.add_argument("--fit-args", nargs=argparse.REMAINDER, default=[],
                     help="further options passed to fit as they are (give last)")
    report = sub.add_parser("report", help="print the table from the results folder")
    report.add_argument("--epoch", type=int, default=None, help="compare at this epoch (default: each run's last)")
    for p in (run, sub.add_parser("sync", help="copy metrics.csv files into the results folder"), report):
        p.add_argument("--outputs", default=str(OUTPUTS_DIR))
        p.add_argument("--results", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    outputs, results = Path(args.outputs), Path(args.results)
    if args.command == "run":
        return _run_queue(args.names, args.seeds, args.epochs, args.data_dir, outputs, results, args.fit_args)
    if args.command == "sync":
        for path in sync(outputs, results):
            print(path)
        return 0
    for row in summarize(results, at_epoch=args.epoch):
        print(f"{row['run']:22s} seed {row['seed']}  epochs {row['epochs']:3d}  final {100 * row['final_test_acc']:.2f}  "
              f"best {100 * row['best_test_acc']:.2f} (epoch {row['best_epoch']})  "
              f"layer-1 r {row['bp_corr_layer_1']:.4f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "offline")
    sys.exit(main())
