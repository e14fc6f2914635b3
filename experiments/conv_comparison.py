"""``python -m experiments.conv_comparison``: the invertible CNN's runs (experiment ``cnn``), from their CSVs.

Reads ``results/cnn/RUN_sSEED/metrics.csv`` (:mod:`experiments.curves`; the runs of
``experiments/grids/cnn.yaml``) and compares, for each pair of :data:`PAIRS` (BP and GAIT-N on the same
inputs, float32, lr 1e-3, penalty 100 for GAIT-N), at one epoch ``N``:

* the test accuracy of BP, GAIT-N, BP with GAIT-N's penalty (the matched baseline, where the pair has
  one) and GAIT-N with the other penalty weights (runs named ``GAIT+ortho_W``; the weight read from
  each run's ``config.yaml``), those that have reached epoch ``N``;
* the gaps (percentage points): BP minus GAIT-N; the matched baseline minus GAIT-N of the same weight;
  and, averaged over epochs 1..N (a single epoch moves by 2-5 points at this constant learning rate),
  BP minus the matched baseline (what the penalty costs backprop) and the matched baseline minus GAIT-N
  (what the rule costs on top);
* the largest orthogonality deviation ``||W W^T - I||_F / sqrt(n)`` over the inverted layers of each
  run at epoch ``N`` (the last log at or before the epoch's end).

It prints the rows and two markdown tables: the penalty weights over epochs 1-4 (accuracy, the least
aligned hidden layer's correlation with backprop, layer 1's update norm against backprop's, the
largest orthogonality deviation) and the standardized pair epoch by epoch. ``--write`` writes each
pair's rows to ``results/cnn/{pair}_epoch{N}.csv`` (a ``source`` column naming the run folders
each row comes from) and its figure ``{pair}_epoch{N}.png``: test accuracy of the pair's runs; the
GAIT-N run's per-layer ``1 - r`` (r its correlation with backprop, computed in float64); the least
aligned layer's ``1 - r`` at each penalty weight::

    python -m experiments.conv_comparison --epoch 10 --write

The comparison of these runs with the paper's MLP is withdrawn: they differ from the MLP's runs in
preprocessing, precision and learning-rate selection (``results/README.md``); the fair table is
:mod:`experiments.fair_table`.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .curves import RESULTS_DIR, RunResult, grid_spec, runs
from .headline import save_figure, write_summary

FOLDER = RESULTS_DIR / "cnn"
#: pair -> (BP run, GAIT-N run, BP run with GAIT-N's penalty or None): runs of experiments/grids/cnn.yaml
PAIRS: Dict[str, tuple] = {
    "pixels": ("conv-bp+pixels", "conv-gait_norm+pixels", "conv-bp+pixels+ortho_100"),
    "standardized": ("conv-bp", "conv-gait_norm", None),
}
#: the learning-rate check: the CNN's BP at lr 1e-4 against lr 1e-3 (pixels in [0, 1])
LR_RUNS = ("conv-bp+pixels+lr_1e-4", "conv-bp+pixels")


def _run(folder: Path, name: str, seed: int) -> Optional[RunResult]:
    found = runs(folder, [name])
    return next((r for r in found if r.seed == seed), None)


def ortho_weight(run: RunResult) -> float:
    return float(run.config()["model"]["init_args"]["ortho_weight"])


def penalty_runs(folder: Path, gait: str, seed: int = 0) -> Dict[str, float]:
    """``{run: orthogonality weight}`` of the GAIT-N run ``gait`` and its ``gait+ortho_W`` variants."""
    out = {}
    for run in runs(folder):
        if run.seed == seed and (run.name == gait or run.name.startswith(gait + "+ortho_")):
            out[run.name] = ortho_weight(run)
    return out


def hidden_layers(epoch: Dict[str, float]) -> List[str]:
    """The ``bp_corr/layer_k`` keys of an epoch but the output layer's (r = 1 by construction)."""
    keys = sorted((k for k in epoch if k.startswith("bp_corr/layer_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    return keys[:-1]


def least_aligned(epoch: Dict[str, float]) -> float:
    keys = hidden_layers(epoch)
    return min(epoch[k] for k in keys) if keys else math.nan


def largest_ortho(epoch: Dict[str, float]) -> float:
    values = [v for k, v in epoch.items() if k.startswith("ortho/")]
    return max(values) if values else math.nan


def compare(epoch: int, *, folder: Path = FOLDER, pair: str = "pixels", seed: int = 0) -> List[Dict[str, object]]:
    """Rows ``(quantity, epoch, value, source)`` for ``pair`` at ``epoch`` (accuracies and gaps in
    percentage points; ``source``: the run folders, ``;``-separated). Raises ``LookupError`` when the
    pair's BP or GAIT-N run is missing or short of ``epoch``; the others join once they reach it."""
    bp_name, gait_name, matched_name = PAIRS[pair]
    curves: Dict[str, List[Dict[str, float]]] = {}
    folders: Dict[str, str] = {}
    weights = penalty_runs(folder, gait_name, seed)
    keys = {"cnn_bp": bp_name, "cnn_gait_n": gait_name}
    if matched_name:
        keys["cnn_bp_matched"] = matched_name
    for name, weight in weights.items():
        if name != gait_name:
            keys[f"cnn_gait_n_ortho{weight:g}"] = name
    for key, name in keys.items():
        run = _run(folder, name, seed)
        epochs = [e for e in run.epochs() if e["epoch"] <= epoch] if run else []
        if key in ("cnn_bp", "cnn_gait_n") and (run is None or len(epochs) < epoch or "test_acc" not in epochs[-1]):
            done = len(epochs)
            raise LookupError(f"{folder / f'{name}_s{seed}'} has no test accuracy at epoch {epoch} (it has {done} epochs)"
                              if run else f"{folder / f'{name}_s{seed}'}: no such run")
        if run is not None and len(epochs) >= epoch:
            curves[key], folders[key] = epochs, str(run.folder)
    acc = {key: 100 * c[epoch - 1]["test_acc"] for key, c in curves.items()}
    rows: List[Dict[str, object]] = [{"quantity": f"{k}_test_acc", "epoch": epoch, "value": acc[k], "source": folders[k]}
                                     for k in curves]

    def derived(quantity: str, value: float, *sources: str) -> None:
        rows.append({"quantity": quantity, "epoch": epoch, "value": value,
                     "source": ";".join(folders[s] for s in sources)})

    derived("cnn_gap_bp_minus_gait_n", acc["cnn_bp"] - acc["cnn_gait_n"], "cnn_bp", "cnn_gait_n")
    if "cnn_bp_matched" in curves:
        same = "cnn_gait_n" if weights.get(gait_name) == 100.0 else "cnn_gait_n_ortho100"
        if same in acc:
            derived("cnn_gap_matched_bp_minus_gait_n", acc["cnn_bp_matched"] - acc[same], "cnn_bp_matched", same)
        mean = lambda a, b: sum(100 * (x["test_acc"] - y["test_acc"]) for x, y in zip(curves[a], curves[b])) / epoch  # noqa: E731
        derived(f"cnn_mean_gap_epochs1_{epoch}_bp_minus_matched_bp", mean("cnn_bp", "cnn_bp_matched"), "cnn_bp", "cnn_bp_matched")
        derived(f"cnn_mean_gap_epochs1_{epoch}_matched_bp_minus_gait_n", mean("cnn_bp_matched", "cnn_gait_n"),
                "cnn_bp_matched", "cnn_gait_n")
    for key in curves:
        if key.startswith("cnn_gait_n_ortho"):
            derived(f"cnn_gap_bp_minus_{key[len('cnn_'):]}", acc["cnn_bp"] - acc[key], "cnn_bp", key)
    for key, c in curves.items():
        derived(f"{key}_largest_ortho_dev", largest_ortho(c[epoch - 1]), key)
    if pair != "pixels":  # what the pair's inputs change, against the same rules on pixels in [0, 1]
        for key, name in (("cnn_bp", PAIRS["pixels"][0]), ("cnn_gait_n", PAIRS["pixels"][1])):
            run = _run(folder, name, seed)
            other = [e for e in run.epochs() if e["epoch"] <= epoch] if run else []
            if len(other) >= epoch:
                rows.append({"quantity": f"{key}_mean_gain_epochs1_{epoch}_over_pixels", "epoch": epoch,
                             "value": sum(100 * (a["test_acc"] - b["test_acc"]) for a, b in zip(curves[key], other)) / epoch,
                             "source": f"{folders[key]};{run.folder}"})
    return rows


def format_rows(rows: Sequence[Dict[str, object]]) -> str:
    return "\n".join(f"{r['quantity']:48s} epoch {r['epoch']:3d}  {r['value']:9.4f}  ({r['source']})" for r in rows)


def penalty_table(folder: Path = FOLDER, *, gait: str = PAIRS["pixels"][1], epochs: int = 4, seed: int = 0) -> str:
    """Markdown: per penalty weight (largest first), epochs run, test accuracy at epochs 1..``epochs``,
    the least aligned hidden layer's r at epoch ``epochs`` (and its lowest over epochs 1..``epochs``),
    layer 1's update norm over backprop's and the largest orthogonality deviation at ``epochs``."""
    weights = penalty_runs(folder, gait, seed)
    lines = ["| penalty weight | epochs run | " + " | ".join(f"test acc % epoch {e}" for e in range(1, epochs + 1))
             + f" | least aligned hidden layer r, epoch {epochs} (lowest over epochs 1-{epochs}) | "
             f"layer-1 update norm / BP's, epoch {epochs} | largest ortho dev, epoch {epochs} |",
             "|---|---|" + "---|" * epochs + "---|---|---|"]
    for name, weight in sorted(weights.items(), key=lambda kv: -kv[1]):
        curve = _run(folder, name, seed).epochs()
        if len(curve) < epochs:
            continue
        last = curve[epochs - 1]
        lowest = min(least_aligned(e) for e in curve[:epochs])
        lines.append(f"| {weight:g} | {len(curve)} | " + " | ".join(f"{100 * e['test_acc']:.2f}" for e in curve[:epochs])
                     + f" | {least_aligned(last):.4f} ({lowest:.4f}) | {last.get('bp_norm_ratio/layer_1', math.nan):.2f}"
                     f" | {largest_ortho(last):.4f} |")
    return "\n".join(lines)


def pair_table(folder: Path = FOLDER, *, pair: str = "standardized", epochs: int = 10, seed: int = 0) -> str:
    """Markdown: the pair epoch by epoch: BP, GAIT-N, their gap, GAIT-N's least aligned hidden layer."""
    bp_name, gait_name, _ = PAIRS[pair]
    bp, gait = (_run(folder, n, seed) for n in (bp_name, gait_name))
    if bp is None or gait is None:
        return ""
    lines = [f"| epoch | CNN BP | CNN GAIT-N | gap (BP - GAIT-N) | GAIT-N least aligned hidden layer r |",
             "|---|---|---|---|---|"]
    for b, g in list(zip(bp.epochs(), gait.epochs()))[:epochs]:
        lines.append(f"| {b['epoch']} | {100 * b['test_acc']:.2f} | {100 * g['test_acc']:.2f} | "
                     f"{100 * (b['test_acc'] - g['test_acc']):.2f} | {least_aligned(g):.4f} |")
    return "\n".join(lines)


def plot(epoch: int, path: Path, *, folder: Path = FOLDER, pair: str = "pixels", seed: int = 0) -> Path:
    """Left: test accuracy of the pair's runs and the penalty runs, epochs 1..``epoch``. Middle: ``1 - r``
    per hidden layer of the pair's GAIT-N run (log axis). Right: the least aligned hidden layer's
    ``1 - r`` of each GAIT-N run by penalty weight."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = grid_spec("cnn").get("labels", {})
    bp_name, gait_name, matched_name = PAIRS[pair]
    weights = penalty_runs(folder, gait_name, seed)
    others = [n for n in sorted(weights, key=lambda n: -weights[n]) if n != gait_name]
    names = [n for n in (bp_name, gait_name, matched_name, *others) if n]
    curves = {}
    for name in names:
        run = _run(folder, name, seed)
        if run is not None:
            curves[name] = [e for e in run.epochs() if e["epoch"] <= epoch and "test_acc" in e]
    oranges = plt.get_cmap("autumn")
    colours = {bp_name: "tab:blue", gait_name: "tab:red", matched_name: "tab:purple"}
    colours.update({n: oranges(0.35 + 0.4 * i / max(1, len(others) - 1)) for i, n in enumerate(others)})
    fig, (ax_acc, ax_corr, ax_worst) = plt.subplots(1, 3, figsize=(17, 4.6))
    for name in names:
        if curves.get(name):
            ax_acc.plot([e["epoch"] for e in curves[name]], [100 * e["test_acc"] for e in curves[name]], "-o", ms=3,
                        color=colours[name], label=labels.get(name, name))
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.legend(fontsize=7, loc="lower right")
    gait_curve = curves.get(gait_name, [])
    layers = hidden_layers(gait_curve[-1]) if gait_curve else []
    palette = plt.get_cmap("viridis")
    for i, key in enumerate(layers):
        points = [(e["epoch"], max(1.0 - e[key], 1e-12)) for e in gait_curve if key in e]
        if points:
            ax_corr.plot(*zip(*points), "-o", ms=3, color=palette(i / max(1, len(layers) - 1)),
                         label=key.replace("bp_corr/", "").replace("_", " "))
    ax_corr.set_yscale("log")
    ax_corr.set_xlabel("epoch")
    ax_corr.set_ylabel("1 - correlation with backprop (float64)\nCNN GAIT-N, output layer left out")
    ax_corr.set_title(labels.get(gait_name, gait_name), fontsize=8)
    if layers:
        ax_corr.legend(fontsize=7, ncol=2)
    for name in (gait_name, *others):
        points = [(e["epoch"], max(1.0 - least_aligned(e), 1e-12)) for e in curves.get(name, []) if hidden_layers(e)]
        if points:
            ax_worst.plot(*zip(*points), "-o", ms=3, color=colours[name], label=f"penalty {weights[name]:g}")
    ax_worst.set_yscale("log")
    ax_worst.set_xlabel("epoch")
    ax_worst.set_ylabel("1 - r of the least aligned hidden layer (float64)")
    ax_worst.set_title("CNN GAIT-N: orthogonality penalty weight", fontsize=8)
    if ax_worst.get_lines():
        ax_worst.legend(fontsize=7)
    for a in (ax_acc, ax_corr, ax_worst):
        a.grid(alpha=0.3)
    fig.suptitle(f"CIFAR-10: the invertible CNN, inputs {pair}, float32, lr 1e-3, seed {seed}", fontsize=10)
    return save_figure(fig, path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.conv_comparison", description=__doc__.split("\n")[0])
    parser.add_argument("--epoch", type=int, default=10, help="compare every run at this epoch (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default=str(FOLDER), help="the cnn experiment's folder")
    parser.add_argument("--write", action="store_true", help="write {pair}_epoch{N}.csv and .png into --results")
    args = parser.parse_args(argv)
    folder = Path(args.results)
    compared = 0
    for pair in PAIRS:
        try:
            rows = compare(args.epoch, folder=folder, pair=pair, seed=args.seed)
        except LookupError as err:
            print(f"{pair}: cannot compare at epoch {args.epoch}: {err}", file=sys.stderr)
            continue
        compared += 1
        print(f"\n{pair}:\n{format_rows(rows)}")
        if args.write:
            print("wrote", write_summary(rows, folder / f"{pair}_epoch{args.epoch}.csv"))
            print("wrote", plot(args.epoch, folder / f"{pair}_epoch{args.epoch}.png", folder=folder, pair=pair,
                                seed=args.seed))
    if not compared:
        return 1
    low, high = (_run(folder, n, args.seed) for n in LR_RUNS)
    if low and high and len(low.epochs()) >= 2 and len(high.epochs()) >= 2:
        print(f"\nlearning rate (CNN BP, pixels, test accuracy at epoch 2): lr 1e-4 {100 * low.epochs()[1]['test_acc']:.2f}, "
              f"lr 1e-3 {100 * high.epochs()[1]['test_acc']:.2f}")
    table = penalty_table(folder, seed=args.seed)
    if table.count("\n") > 1:
        print(f"\npenalty weights (pixels):\n{table}")
    table = pair_table(folder, epochs=args.epoch, seed=args.seed)
    if table:
        print(f"\nstandardized pair:\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
