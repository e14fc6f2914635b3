"""``python -m experiments.headline EXPERIMENT``: an experiment's table and curves, from its CSVs.

Reads ``results/EXPERIMENT/RUN_sSEED/metrics.csv`` (:mod:`experiments.curves`; written by
``python -m experiments.stacks sync EXPERIMENT``, or committed) and prints, per run, over its seeds at
one epoch (``--epoch``; default each run's last): the final test accuracy (mean, range over seeds),
the best over epochs (read on the test set: an optimistic number, for reference only), the
validation accuracy where the run held a split out (``-`` where it validated on the test set), the
gap of the mean final test accuracy to the baseline run (the experiment's first stack unless
``--baseline``), and the layer-1 correlation of the rule's update with backprop's at the last log of
the epoch. Labels, row order and figures come from the experiment file
``experiments/grids/EXPERIMENT.yaml`` (``labels``, ``stacks``, ``figures``).

``--write`` also writes ``summary_epoch{N}.csv`` (``summary_last.csv``) and each figure of the
experiment file (``{figure}_epoch{N}.png``; ``{figure}.png`` for one drawn over all epochs) into the
results folder: test accuracy (left) and ``1 - r`` of layer 1 on a log axis (right) against the
epoch, one colour per run, one line per seed (dashed: seeds after the first)::

    python -m experiments.headline mlp_gap --epoch 20 --write
    python -m experiments.headline mlp_gap --epoch 20 --seeds-table
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .curves import RESULTS_DIR, grid_spec, runs

#: the configs whose rule is backprop (their correlation with backprop is 1 by definition)
BACKPROP_CONFIGS = ("bp", "bp_smooth", "conv/bp", "conv-bp")


def is_backprop(run: str) -> bool:
    return run.split("+")[0] in BACKPROP_CONFIGS


def summarize(folder: Path, at_epoch: Optional[int] = None) -> List[Dict[str, object]]:
    """Per run and seed: epochs done (up to ``at_epoch``), final and best test accuracy, final
    validation accuracy (NaN where the run validated on the test set), layer-1 r at the end."""
    out = []
    for run in runs(folder):
        epochs = [e for e in run.epochs() if "test_acc" in e and (at_epoch is None or e["epoch"] <= at_epoch)]
        if not epochs:
            continue
        last = epochs[-1]
        best = max(epochs, key=lambda e: e["test_acc"])
        out.append({
            "run": run.name, "seed": run.seed, "epochs": last["epoch"],
            "final_test_acc": last["test_acc"], "best_test_acc": best["test_acc"], "best_epoch": best["epoch"],
            "final_val_acc": last.get("val_acc", math.nan),
            "bp_corr_layer_1": last.get("bp_corr/layer_1", math.nan),
        })
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def aggregate(rows: Sequence[Dict[str, object]], *, baseline: Optional[str] = None,
              order: Sequence[str] = (), labels: Optional[Dict[str, str]] = None) -> List[Dict[str, object]]:
    """Per run, over its seeds (rows of :func:`summarize`): mean, min and max of the final and best test
    accuracy, the mean final validation accuracy, the mean layer-1 correlation with backprop (NaN for
    backprop itself, whose r is 1 by definition), and the gap to ``baseline`` (positive: below it; NaN
    without a baseline): the mean over the run's seeds that the baseline also has of the baseline's
    final test accuracy minus the run's, seed by seed (``gap_seeds``). Runs in ``order`` first, in that
    order, then the others by name."""
    labels = labels or {}
    by_run: Dict[str, List[Dict[str, object]]] = {}
    for row in rows:
        by_run.setdefault(str(row["run"]), []).append(row)
    names = [n for n in order if n in by_run] + sorted(n for n in by_run if n not in order)
    out = []
    for name in names:
        seeds = sorted(by_run[name], key=lambda r: r["seed"])
        final = [float(r["final_test_acc"]) for r in seeds]
        best = [float(r["best_test_acc"]) for r in seeds]
        out.append({
            "run": name, "label": labels.get(name, name),
            "seeds": " ".join(str(r["seed"]) for r in seeds), "epochs": " ".join(str(r["epochs"]) for r in seeds),
            "final_mean": _mean(final), "final_min": min(final), "final_max": max(final),
            "best_mean": _mean(best), "best_min": min(best), "best_max": max(best),
            "val_mean": _mean([float(r["final_val_acc"]) for r in seeds]),  # NaN where validated on test
            "bp_corr_layer_1_mean": math.nan if is_backprop(name) else _mean([float(r["bp_corr_layer_1"]) for r in seeds]),
        })
    base = {int(r["seed"]): float(r["final_test_acc"]) for r in by_run.get(str(baseline), [])}
    for r, name in zip(out, names):
        paired = [(base[int(s["seed"])], float(s["final_test_acc"])) for s in by_run[name] if int(s["seed"]) in base]
        r["gap_seeds"] = " ".join(str(s["seed"]) for s in sorted(by_run[name], key=lambda s: s["seed"])
                                  if int(s["seed"]) in base)
        r["gap_to_baseline"] = _mean([b - a for b, a in paired]) if paired else math.nan
    return out


def write_summary(rows: Sequence[Dict[str, object]], path: Path) -> Path:
    """Write ``rows`` (dicts with the same keys) to the CSV ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def save_figure(fig, path: Path) -> Path:
    """Lay out ``fig``, write it to ``path`` (120 dpi, folders made) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def format_table(rows: Sequence[Dict[str, object]]) -> str:
    """A markdown table of :func:`aggregate`'s rows (accuracies in %; range over seeds in brackets)."""

    def pct(r, key):
        lo, hi = 100 * r[f"{key}_min"], 100 * r[f"{key}_max"]
        mean = f"{100 * r[f'{key}_mean']:.2f}"
        return mean if lo == hi else f"{mean} ({lo:.2f}-{hi:.2f})"

    lines = ["| run | seeds | epochs | final test acc % | best test acc % (max over epochs) | val acc % | "
             "gap to baseline (pp; same seeds) | layer-1 r |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        corr, val = r["bp_corr_layer_1_mean"], r["val_mean"]
        gap = "-" if math.isnan(r["gap_to_baseline"]) else f"{100 * r['gap_to_baseline']:+.2f}"
        lines.append(f"| {r['label']} | {r['seeds']} | {r['epochs']} | {pct(r, 'final')} | {pct(r, 'best')} | "
                     f"{'-' if math.isnan(val) else f'{100 * val:.2f}'} | {gap} | "
                     f"{'-' if math.isnan(corr) else f'{corr:.4f}'} |")
    return "\n".join(lines)


def plot_curves(folder: Path, path: Path, *, names: Optional[Sequence[str]] = None,
                max_epoch: Optional[int] = None, title: str = "",
                labels: Optional[Dict[str, str]] = None) -> Optional[Path]:
    """Test accuracy (left) and ``1 - r``, r the layer-1 correlation with backprop, on a log axis (right)
    against the epoch, one colour per run (in the order of ``names``), one line per seed (dashed: seeds
    after the first). ``None`` when no run has a finished epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels or {}
    curves: Dict[str, List[tuple]] = {}
    for run in runs(folder, names):
        epochs = [e for e in run.epochs() if "test_acc" in e and (max_epoch is None or e["epoch"] <= max_epoch)]
        if epochs:
            curves.setdefault(run.name, []).append((run.seed, epochs))
    if not curves:
        return None
    order = [n for n in (names or sorted(curves)) if n in curves]
    palette = plt.get_cmap("tab10")
    fig, (ax_acc, ax_corr) = plt.subplots(1, 2, figsize=(12, 4.4))
    for i, name in enumerate(order):
        colour = palette(i % 10)
        for k, (seed, epochs) in enumerate(sorted(curves[name])):
            xs = [e["epoch"] for e in epochs]
            style = "-" if k == 0 else "--"
            ax_acc.plot(xs, [100 * e["test_acc"] for e in epochs], style, color=colour, lw=1.2,
                        label=labels.get(name, name) if k == 0 else None)
            corr = [(e["epoch"], max(1.0 - e["bp_corr/layer_1"], 1e-12)) for e in epochs if "bp_corr/layer_1" in e]
            if corr and not is_backprop(name):  # backprop's own r is 1 by definition
                ax_corr.plot(*zip(*corr), style, color=colour, lw=1.2)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.legend(fontsize=7, loc="lower right")
    ax_corr.set_xlabel("epoch")
    ax_corr.set_yscale("log")
    ax_corr.set_ylabel("1 - layer-1 correlation with backprop\n(computed in float64; backprop runs left out)")
    for a in (ax_acc, ax_corr):
        a.grid(alpha=0.3)
    fig.suptitle(title or "CIFAR-10, one line per seed (dashed: seeds after the first)", fontsize=10)
    return save_figure(fig, path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.headline", description=__doc__.split("\n")[0])
    parser.add_argument("experiment", help="a folder of --results (and experiments/grids/EXPERIMENT.yaml)")
    parser.add_argument("--epoch", type=int, default=None, help="compare at this epoch (default: each run's last)")
    parser.add_argument("--baseline", default=None, help="the run the gap is taken to (default: the first stack's)")
    parser.add_argument("--seeds-table", action="store_true", help="also print one line per run and seed")
    parser.add_argument("--write", action="store_true",
                        help="write summary_epoch{N}.csv and the experiment file's figures into the results folder")
    parser.add_argument("--results", default=str(RESULTS_DIR), help="the folder holding EXPERIMENT/")
    args = parser.parse_args(argv)
    folder = Path(args.results) / args.experiment
    spec = grid_spec(args.experiment)
    from .stacks import run_name

    order = list(dict.fromkeys(run_name(s) for s in spec.get("stacks", [])))
    labels = spec.get("labels", {})
    rows = summarize(folder, at_epoch=args.epoch)
    if not rows:
        print(f"no finished epoch in {folder}/*_s*/metrics.csv", file=sys.stderr)
        return 1
    if args.seeds_table:
        for row in rows:
            val = row["final_val_acc"]
            print(f"{row['run']:34s} seed {row['seed']}  epochs {row['epochs']:3d}  "
                  f"final {100 * row['final_test_acc']:.2f}  best {100 * row['best_test_acc']:.2f} "
                  f"(epoch {row['best_epoch']})  val {'-' if math.isnan(val) else f'{100 * val:.2f}'}  "
                  f"layer-1 r {row['bp_corr_layer_1']:.4f}")
    if args.epoch is not None:  # compare only runs that reached the epoch; name the others
        for r in (r for r in rows if r["epochs"] < args.epoch):
            print(f"not yet at epoch {args.epoch}: {r['run']}_s{r['seed']} ({r['epochs']} epochs)")
        rows = [r for r in rows if r["epochs"] >= args.epoch]
        if not rows:
            print(f"no run has reached epoch {args.epoch}", file=sys.stderr)
            return 1
    baseline = args.baseline or (order[0] if order else None)
    table = aggregate(rows, baseline=baseline, order=order, labels=labels)
    print(format_table(table))
    if args.write:
        suffix = f"epoch{args.epoch}" if args.epoch is not None else "last"
        print("wrote", write_summary(table, folder / f"summary_{suffix}.csv"))
        for name, figure in spec.get("figures", {}).items():
            every = bool(figure.get("all_epochs"))
            path = plot_curves(folder, folder / (f"{name}.png" if every else f"{name}_{suffix}.png"),
                               names=figure["runs"], max_epoch=None if every else args.epoch, labels=labels,
                               title=f"{figure.get('title', name)}, epochs 1-{'last' if every else args.epoch or 'last'}")
            print(f"wrote {path}" if path else f"skipped figure {name}: none of its runs has a finished epoch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
