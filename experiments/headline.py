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
* ``gait_norm_ortho1000``, ``gait_norm_ortho10``: GAIT-N with orthogonality weight 1000 / 10,
  and ``bp_matched_ortho10``: the matched baseline with weight 10;
* ``bp_square``: backprop with the square output but no penalty (between ``bp`` and
  ``bp_matched``: which of the two differences costs backprop accuracy);
* ``bp_smooth``, ``gait_smooth_norm``: BP-S and GAIT-SN (no leaky-ReLU kink);
* ``fa``, ``fa_lr1e-4``: feedback alignment at the config's and a larger learning rate,
  with the diagnostics (correlation with backprop, condition numbers) along the way;
* ``conv_bp``, ``conv_bp32``, ``conv_gait_norm``, ``conv_gait_norm_diff32``: the invertible CNN
  (``conf/conv/``, lr 1e-4), and at lr 1e-3 ``conv_bp32_lr1e-3``, ``conv_gait_norm_diff32_lr1e-3``
  and ``conv_bp32_ortho100_lr1e-3`` (BP with GAIT-N's penalty: the CNN's matched baseline);
  ``conv_gait_norm_diff32_ortho10_lr1e-3`` and ``conv_gait_norm_diff32_ortho1_lr1e-3``: the
  CNN's GAIT-N with orthogonality weight 10 / 1; ``conv_bp32_norm_lr1e-3`` and
  ``conv_gait_norm_diff32_norm_lr1e-3``: the lr 1e-3 pair on inputs standardized per channel
  (``normalize_channels``; the others see pixels in [0, 1], as the paper's MLP);
  :mod:`experiments.conv_comparison` sets them against the MLP.

A run lives in ``OUTPUTS/{name}_s{seed}/``; each start of it (the first and every resume)
logs to a segment ``part{k}/`` of its own (``metrics.csv`` and ``checkpoints/``), and a
start resumes from the ``last.ckpt`` of the latest segment (also with a larger
``--epochs``: a 20-epoch run continues to 200).
``sync`` joins each run's segments into ``results/headline/{name}_s{seed}.csv``;
``report`` prints the table from those CSVs (``--write``: also the summary CSV and the
figures); the CNN runs are compared with the MLP by :mod:`experiments.conv_comparison`.

Commands::

    python -m experiments.headline run bp gait_norm --seeds 0 1 --epochs 20
    python -m experiments.headline run gait_norm --seeds 0 --epochs 200
    python -m experiments.headline sync
    python -m experiments.headline report --epoch 20 --write
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .common import DEFAULT_DATA_DIR

#: the overrides shared by the CNN's lr 1e-3 runs
_CONV_BP_F32_LR1E3 = ["--trainer.precision", "32-true", "--model.init_args.lr", "1e-3"]
_CONV_GAIT_DIFF_F32_LR1E3 = ["--model.init_args.target_mode", "difference"] + _CONV_BP_F32_LR1E3
_STANDARDIZED = ["--data.normalize_channels", "true"]

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
    "gait_norm_ortho10": ("gait_norm", ["--model.init_args.ortho_weight", "10"],
                          "GAIT-N, paper form, penalty 10"),
    "bp_matched_ortho10": ("bp", ["--model.init_args.net.init_args.square_output", "true",
                                  "--model.init_args.ortho_weight", "10"],
                           "BP on GAIT-N's network with penalty 10"),
    "bp_square": ("bp", ["--model.init_args.net.init_args.square_output", "true"],
                  "BP, square output, no penalty"),
    "bp_smooth": ("bp_smooth", [], "BP-S (SL-ReLU)"),
    "gait_smooth_norm": ("gait_smooth_norm", [], "GAIT-SN, paper form, float64"),
    "fa": ("fa", [], "FA as conf/fa.yaml (lr 2.5e-5)"),
    "fa_lr1e-4": ("fa", ["--model.init_args.lr", "1e-4"], "FA, lr 1e-4"),
    "conv_bp": ("conv/bp", [], "BP on the invertible CNN (lr 1e-4)"),
    "conv_bp32": ("conv/bp", ["--trainer.precision", "32-true"], "BP on the invertible CNN, float32 (lr 1e-4)"),
    "conv_gait_norm": ("conv/gait_norm", [], "GAIT-N on the invertible CNN, paper form, float64 (lr 1e-4)"),
    "conv_gait_norm_diff32": ("conv/gait_norm", ["--model.init_args.target_mode", "difference",
                                                 "--trainer.precision", "32-true"],
                              "GAIT-N on the invertible CNN, difference form, float32 (lr 1e-4)"),
    "conv_bp32_lr1e-3": ("conv/bp", _CONV_BP_F32_LR1E3, "BP on the invertible CNN, float32, lr 1e-3"),
    "conv_bp32_ortho100_lr1e-3": ("conv/bp", _CONV_BP_F32_LR1E3 + ["--model.init_args.ortho_weight", "100"],
                                  "BP on the invertible CNN with GAIT-N's penalty 100, float32, lr 1e-3"),
    "conv_gait_norm_diff32_lr1e-3": ("conv/gait_norm", _CONV_GAIT_DIFF_F32_LR1E3,
                                     "GAIT-N on the invertible CNN, difference form, float32, lr 1e-3"),
    "conv_gait_norm_diff32_ortho10_lr1e-3": ("conv/gait_norm", _CONV_GAIT_DIFF_F32_LR1E3 + ["--model.init_args.ortho_weight", "10"],
                                             "GAIT-N on the invertible CNN, difference form, float32, lr 1e-3, penalty 10"),
    "conv_gait_norm_diff32_ortho1_lr1e-3": ("conv/gait_norm", _CONV_GAIT_DIFF_F32_LR1E3 + ["--model.init_args.ortho_weight", "1"],
                                            "GAIT-N on the invertible CNN, difference form, float32, lr 1e-3, penalty 1"),
    "conv_bp32_norm_lr1e-3": ("conv/bp", _CONV_BP_F32_LR1E3 + _STANDARDIZED,
                              "BP on the invertible CNN, float32, lr 1e-3, inputs standardized per channel"),
    "conv_gait_norm_diff32_norm_lr1e-3": ("conv/gait_norm", _CONV_GAIT_DIFF_F32_LR1E3 + _STANDARDIZED,
                                          "GAIT-N on the invertible CNN, difference form, float32, lr 1e-3, "
                                          "inputs standardized per channel"),
}

#: the configs whose rule is backprop (their correlation with backprop is 1 by definition)
BACKPROP_CONFIGS = ("bp", "bp_smooth", "conv/bp")

RESULTS_DIR = Path("results/headline")
OUTPUTS_DIR = Path("outputs/headline")


def run_id(name: str, seed: int) -> str:
    return f"{name}_s{seed}"


def fit_command(name: str, *, seed: int, epochs: int, data_dir: str, outputs: Path,
                ckpt_path: Optional[Path] = None, log_version: str = "part1") -> List[str]:
    """The ``fit`` command line of run ``name`` (resuming from ``ckpt_path`` if given),
    logging to ``OUTPUTS/{run_id}/{log_version}/metrics.csv``."""
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
        "--trainer.logger.version", log_version,
        "--trainer.enable_progress_bar", "false",
        "--test_after_fit", "false",
    ]
    if ckpt_path is not None:
        cmd += ["--ckpt_path", str(ckpt_path)]
    return cmd


def last_checkpoint(outputs: Path, rid: str) -> Optional[Path]:
    """The ``last.ckpt`` of the run's latest segment that has one (checkpoints lie beside
    the segment's log: ``{run_id}/checkpoints`` or ``{run_id}/part{k}/checkpoints``)."""
    run_dir = outputs / rid
    candidates = [run_dir / "checkpoints" / "last.ckpt"]
    candidates += [seg.parent / "checkpoints" / "last.ckpt" for seg in log_segments(run_dir) if seg.parent != run_dir]
    found = [path for path in candidates if path.is_file()]
    return found[-1] if found else None


def _segments(run_dir: Path) -> List[tuple]:
    """``(k, metrics file)`` of one run in the order written: ``metrics.csv`` in the run's
    folder (a run logged without segments) as ``k = 0``, then ``part{k}/metrics.csv``."""
    found = [(0, 0, run_dir / "metrics.csv")] if (run_dir / "metrics.csv").is_file() else []
    for path in run_dir.glob("part*/metrics.csv"):
        index = path.parent.name[len("part"):]
        if index.isdigit():
            found.append((int(index), 1, path))
    return [(k, path) for k, _, path in sorted(found)]


def log_segments(run_dir: Path) -> List[Path]:
    """The metrics files of one run in the order they were written: ``metrics.csv`` in the
    run's folder (a run logged without segments) first, then ``part{k}/metrics.csv`` by ``k``.

    Each start of a run (the first and every resume) logs to a segment of its own: the CSV
    logger rewrites a ``metrics.csv`` it finds from what it holds in memory, which would
    drop the epochs logged before the resume.
    """
    return [path for _, path in _segments(run_dir)]


def next_log_version(run_dir: Path) -> str:
    """The segment the next start of the run logs to: ``part{k+1}`` after the last ``part{k}``."""
    return f"part{max([k for k, _ in _segments(run_dir)], default=0) + 1}"


def merge_segments(segments: Sequence[Path], dest: Path) -> Path:
    """Concatenate metrics CSVs (columns: the union, in order of appearance) into ``dest``."""
    rows: List[Dict[str, str]] = []
    columns: Dict[str, None] = {}
    for path in segments:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            columns.update(dict.fromkeys(reader.fieldnames or []))
            rows.extend(reader)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), restval="")
        writer.writeheader()
        writer.writerows(rows)
    return dest


def sync(outputs: Path = OUTPUTS_DIR, results: Path = RESULTS_DIR) -> List[Path]:
    """Write each run's metrics (all its segments, in order) to ``results/{run_id}.csv``;
    return the files written."""
    written = []
    for run_dir in sorted(p for p in outputs.iterdir() if p.is_dir()) if outputs.is_dir() else []:
        segments = log_segments(run_dir)
        if segments:
            written.append(merge_segments(segments, results / f"{run_dir.name}.csv"))
    return written


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


def aggregate(rows: Sequence[Dict[str, object]], baseline: str = "bp") -> List[Dict[str, object]]:
    """Per run, over its seeds (rows of :func:`summarize`): mean, min and max of the final and
    best test accuracy, the mean layer-1 correlation with backprop, and the gap of the mean
    final accuracy to ``baseline``'s (positive: below the baseline), in the order of ``RUNS``."""
    by_run: Dict[str, List[Dict[str, object]]] = {}
    for row in rows:
        by_run.setdefault(str(row["run"]), []).append(row)
    order = [n for n in RUNS if n in by_run] + sorted(n for n in by_run if n not in RUNS)
    out = []
    for name in order:
        seeds = sorted(by_run[name], key=lambda r: r["seed"])
        final = [float(r["final_test_acc"]) for r in seeds]
        best = [float(r["best_test_acc"]) for r in seeds]
        corr = [float(r["bp_corr_layer_1"]) for r in seeds]
        out.append({
            "run": name, "label": RUNS[name][2] if name in RUNS else name,
            "seeds": " ".join(str(r["seed"]) for r in seeds), "epochs": " ".join(str(r["epochs"]) for r in seeds),
            "final_mean": sum(final) / len(final), "final_min": min(final), "final_max": max(final),
            "best_mean": sum(best) / len(best), "best_min": min(best), "best_max": max(best),
            "bp_corr_layer_1_mean": sum(corr) / len(corr),  # NaN when a run logs none (backprop)
        })
    base = next((r for r in out if r["run"] == baseline), None)
    for r in out:
        r["gap_to_bp"] = base["final_mean"] - r["final_mean"] if base is not None else math.nan
    return out


def write_summary(rows: Sequence[Dict[str, object]], path: Path) -> Path:
    """Write ``rows`` (dicts with the same keys: :func:`aggregate`'s, the CNN comparison's) to the CSV ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def format_table(rows: Sequence[Dict[str, object]]) -> str:
    """A markdown table of :func:`aggregate`'s rows (accuracies in %; range over seeds in brackets)."""

    def pct(r, key):
        lo, hi = 100 * r[f"{key}_min"], 100 * r[f"{key}_max"]
        mean = f"{100 * r[f'{key}_mean']:.2f}"
        return mean if lo == hi else f"{mean} ({lo:.2f}-{hi:.2f})"

    lines = ["| run | seeds | epochs | final test acc % | best test acc % | gap to BP (pp) | layer-1 r |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        corr = r["bp_corr_layer_1_mean"]
        corr_text = "-" if math.isnan(corr) else f"{corr:.4f}"
        gap = "-" if math.isnan(r["gap_to_bp"]) else f"{100 * r['gap_to_bp']:+.2f}"
        lines.append(f"| {r['label']} | {r['seeds']} | {r['epochs']} | {pct(r, 'final')} | {pct(r, 'best')} | "
                     f"{gap} | {corr_text} |")
    return "\n".join(lines)


def plot_curves(results: Path, path: Path, *, names: Optional[Sequence[str]] = None,
                max_epoch: Optional[int] = None, title: str = "") -> Optional[Path]:
    """Test accuracy (left) and ``1 - r``, r the layer-1 correlation with backprop, on a log
    axis (right) against the epoch, one colour per run, one line per seed (dashed: seeds
    after the first). ``None`` when no run has a finished epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: Dict[str, List[tuple]] = {}
    for csv_path in sorted(results.glob("*_s*.csv")):
        name, _, seed = csv_path.stem.rpartition("_s")
        if names is not None and name not in names:
            continue
        epochs = [e for e in read_epochs(csv_path) if max_epoch is None or e["epoch"] <= max_epoch]
        if epochs:
            curves.setdefault(name, []).append((int(seed), epochs))
    if not curves:
        return None
    order = [n for n in (names or RUNS) if n in curves]
    palette = plt.get_cmap("tab20")  # one colour per run, the same in every figure
    colours = {name: palette(list(RUNS).index(name) % 20 if name in RUNS else 19) for name in order}
    fig, (ax_acc, ax_corr) = plt.subplots(1, 2, figsize=(12, 4.4))
    for name in order:
        for k, (seed, epochs) in enumerate(sorted(curves[name])):
            xs = [e["epoch"] for e in epochs]
            style = "-" if k == 0 else "--"
            label = f"{RUNS[name][2] if name in RUNS else name}" if k == 0 else None
            ax_acc.plot(xs, [100 * e["test_acc"] for e in epochs], style, color=colours[name], lw=1.2, label=label)
            corr = [(e["epoch"], max(1.0 - e["bp_corr/layer_1"], 1e-12)) for e in epochs if "bp_corr/layer_1" in e]
            if corr and RUNS.get(name, ("",))[0] not in BACKPROP_CONFIGS:  # backprop's own r is 1 by definition
                ax_corr.plot(*zip(*corr), style, color=colours[name], lw=1.2)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.legend(fontsize=7, loc="lower right")
    ax_corr.set_xlabel("epoch")
    ax_corr.set_yscale("log")
    ax_corr.set_ylabel("1 - layer-1 correlation with backprop\n(computed in float64; backprop runs left out)")
    for a in (ax_acc, ax_corr):
        a.grid(alpha=0.3)
    fig.suptitle(title or "CIFAR-10, one line per seed (dashed: second seed)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _run_queue(names: Sequence[str], seeds: Sequence[int], epochs: int, data_dir: str, outputs: Path,
               results: Path, fit_args: Sequence[str] = ()) -> int:
    for seed in seeds:
        for name in names:
            rid = run_id(name, seed)
            ckpt = last_checkpoint(outputs, rid)
            if ckpt is None and log_segments(outputs / rid):
                print(f"{outputs / rid} holds logs but no last.ckpt to resume from; "
                      f"remove the folder to start run {rid} again", file=sys.stderr, flush=True)
                return 1
            cmd = fit_command(name, seed=seed, epochs=epochs, data_dir=data_dir, outputs=outputs, ckpt_path=ckpt,
                              log_version=next_log_version(outputs / rid)) + list(fit_args)
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
    report.add_argument("--seeds-table", action="store_true",
                        help="also print one line per run and seed")
    report.add_argument("--write", action="store_true",
                        help="write summary_epoch{N}.csv and the figures into the results folder")
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
    rows = summarize(results, at_epoch=args.epoch)
    if not rows:
        print(f"no finished epoch in {results}/*_s*.csv (run `sync` after `run`)", file=sys.stderr)
        return 1
    if args.seeds_table:
        for row in rows:
            print(f"{row['run']:22s} seed {row['seed']}  epochs {row['epochs']:3d}  "
                  f"final {100 * row['final_test_acc']:.2f}  best {100 * row['best_test_acc']:.2f} "
                  f"(epoch {row['best_epoch']})  layer-1 r {row['bp_corr_layer_1']:.4f}")
    if args.epoch is not None:  # compare only runs that reached the epoch; name the others
        running = [r for r in rows if r["epochs"] < args.epoch]
        rows = [r for r in rows if r["epochs"] >= args.epoch]
        for r in running:
            print(f"not yet at epoch {args.epoch}: {run_id(r['run'], r['seed'])} ({r['epochs']} epochs)")
        if not rows:
            print(f"no run has reached epoch {args.epoch}", file=sys.stderr)
            return 1
    table = aggregate(rows)
    print(format_table(table))
    if args.write:
        suffix = f"epoch{args.epoch}" if args.epoch is not None else "last"
        print("wrote", write_summary(table, results / f"summary_{suffix}.csv"))
        controlled = plot_curves(results, results / f"curves_{suffix}.png", max_epoch=args.epoch,
                                 names=[n for n in RUNS if not n.startswith(("conv_", "fa"))],
                                 title=f"MLP runs (float64 unless named), epochs 1-{args.epoch or 'last'}")
        peers = plot_curves(results, results / f"fa_{suffix}.png", max_epoch=args.epoch,
                            names=["bp", "fa", "fa_lr1e-4"], title="feedback alignment against BP")
        full = plot_curves(results, results / "full_length.png", names=["bp", "gait_norm"],
                           title="BP and GAIT-N at full length (as far as the runs got)")
        for figure, what in ((controlled, "MLP curves"), (peers, "FA curves"), (full, "full-length curves")):
            print(f"wrote {figure}" if figure else f"skipped the {what}: no such run with a finished epoch")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "offline")
    sys.exit(main())
