"""``python -m experiments.full_length``: BP and GAIT-N on the paper's MLP over the paper's 200 epochs.

Reads the curves of the ``paper200`` experiment (``results/paper200/RUN_sSEED/metrics.csv``,
written by ``python -m experiments.stacks sync paper200``) and writes:

* ``results/paper200/summary.csv``: one row per run and finished epoch: ``regime`` (the
  stack's first config: ``bp``, ``gait_norm``), ``seed``, ``epoch`` (1-based), ``val_acc``
  (the held-out split of the training set), ``test_acc``;
* ``results/paper200/curves.png``: test accuracy against epoch, with earlier float64 curves
  of the same regimes overlaid for the stretch they cover (``--overlay REGIME=CSV``: a
  Lightning ``metrics.csv`` whose ``val/acc`` is test accuracy, ``val_size 0``).

It prints the epochs reached and the gap between the regimes at the last epoch both have
reached. Commands::

    python -m experiments.stacks run paper200        # train or resume (200 epochs each)
    python -m experiments.stacks sync paper200
    python -m experiments.full_length
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .headline import save_figure

RESULTS = Path("results/paper200")
#: earlier float64 curves (paper form, validated on the test set) drawn beside the float32 ones
OVERLAYS: Dict[str, str] = {
    "bp": "results/mlp_gap/bp_s0/metrics.csv",  # 54 epochs
    "gait_norm": "results/mlp_gap/gait_norm_s0/metrics.csv",  # 26 epochs
}


def epoch_rows(path: Path, *, acc_key: str = "val/acc") -> List[Dict[str, float]]:
    """``{epoch (1-based), val_acc, test_acc}`` per finished epoch of a Lightning metrics CSV;
    a row logged twice (before an interruption and after the resume) counts once, the later."""
    by_epoch: Dict[int, Dict[str, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("epoch") or not row.get(acc_key):
                continue
            entry = {"epoch": int(float(row["epoch"])) + 1, "val_acc": float(row[acc_key])}
            if row.get("test/acc"):
                entry["test_acc"] = float(row["test/acc"])
            by_epoch[entry["epoch"]] = entry
    return [by_epoch[e] for e in sorted(by_epoch)]


def summarize(results: Path = RESULTS) -> List[Dict[str, object]]:
    rows: List[Dict[str, object]] = []
    for path in sorted(results.glob("*_s*/metrics.csv")):
        run, _, seed = path.parent.name.rpartition("_s")
        regime = run.split("+")[0]
        for e in epoch_rows(path):
            rows.append({"regime": regime, "run": run, "seed": int(seed), "epoch": e["epoch"],
                         "val_acc": e["val_acc"], "test_acc": e.get("test_acc", float("nan"))})
    return rows


def final_gap(rows: Sequence[Dict[str, object]], a: str = "bp", b: str = "gait_norm") -> Optional[Tuple[int, float, float]]:
    """``(epoch, test_acc of a, test_acc of b)`` at the last epoch both reached (seed 0)."""
    acc = {(r["regime"], r["epoch"]): float(r["test_acc"]) for r in rows if r["seed"] == 0}
    common = sorted({e for (g, e) in acc if g == a} & {e for (g, e) in acc if g == b})
    if not common:
        return None
    epoch = common[-1]
    return epoch, acc[(a, epoch)], acc[(b, epoch)]


def plot(rows: Sequence[Dict[str, object]], path: Path, overlays: Dict[str, str]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"bp": "tab:gray", "gait_norm": "tab:blue"}
    labels = {"bp": "BP", "gait_norm": "GAIT-N"}
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for regime in dict.fromkeys(r["regime"] for r in rows):
        mine = [r for r in rows if r["regime"] == regime and r["seed"] == 0]
        ax.plot([r["epoch"] for r in mine], [100 * float(r["test_acc"]) for r in mine], color=colours.get(regime),
                label=f"{labels.get(regime, regime)}, float32" + (" difference form" if regime != "bp" else "")
                + ", 45k training images")
    for regime, csv_path in overlays.items():
        old = epoch_rows(Path(csv_path))
        if old:
            ax.plot([e["epoch"] for e in old], [100 * e["val_acc"] for e in old], ":", color=colours.get(regime),
                    label=f"{labels.get(regime, regime)}, float64" + (" paper form" if regime != "bp" else "")
                    + ", 50k training images (earlier run)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xlim(0, 200)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("The paper's MLP on CIFAR-10, seed 0", fontsize=10)
    return save_figure(fig, path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.full_length", description=__doc__.split("\n")[0])
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--overlay", nargs="*", default=None, metavar="REGIME=CSV",
                        help="earlier curves to draw dotted (default: the float64 runs of results/)")
    args = parser.parse_args(argv)
    results = Path(args.results)
    rows = summarize(results)
    if not rows:
        print(f"error: no finished epoch in {results}/*_s*/metrics.csv (run `python -m experiments.stacks sync paper200`)",
              file=sys.stderr)
        return 1
    overlays = OVERLAYS if args.overlay is None else dict(item.split("=", 1) for item in args.overlay)
    missing = [p for p in overlays.values() if not Path(p).is_file()]
    if missing:
        print(f"error: overlay curve not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    with open(results / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for run in dict.fromkeys(r["run"] for r in rows):
        mine = [r for r in rows if r["run"] == run]
        print(f"{run} seed(s) {sorted({r['seed'] for r in mine})}: {max(r['epoch'] for r in mine)} of 200 epochs")
    gap = final_gap(rows)
    if gap:
        epoch, bp, gait = gap
        print(f"epoch {epoch}: BP {100 * bp:.2f}%, GAIT-N {100 * gait:.2f}% test accuracy; gap {100 * (bp - gait):+.2f} points")
    print("wrote", results / "summary.csv", plot(rows, results / "curves.png", overlays))
    return 0


if __name__ == "__main__":
    sys.exit(main())
