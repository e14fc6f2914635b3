"""``python -m experiments.conv_comparison``: the invertible CNN against the paper's MLP.

Reads, at one epoch ``N`` (the same for every run):

* the CNN's runs from ``results/headline/`` (written by ``experiments.headline run`` and
  ``sync``): BP (``conv_bp32_lr1e-3``) and GAIT-N (``conv_gait_norm_diff32_lr1e-3``, difference
  form, penalty 100 as ``conf/conv/gait_norm.yaml``), both float32, lr 1e-3, the same seed
  (``--bp`` and ``--gait`` name other runs, e.g. the lr 1e-4 pair ``conv_bp32`` and
  ``conv_gait_norm_diff32``); where they have reached the epoch, also BP with GAIT-N's
  penalty (``conv_bp32_ortho100_lr1e-3``) and the GAIT-N runs with other penalty weights
  (``CONV_GAIT_PENALTIES``);
* the MLP's runs of Fig. 2A from ``results/epochs20/training/`` (``experiments.training``,
  float64, seed 0, evaluated every half epoch): BP (``bp.csv``) and GAIT-N (``gait_norm.csv``).

and reports each one's test accuracy at epoch ``N``, the CNN GAIT-N's margin over the MLP's
BP, and the GAIT-N-to-BP gap of each network. ``--write`` also writes
``conv_epoch{N}.csv`` (one row per quantity) and ``conv_epoch{N}.png`` (test accuracy of
every run; the CNN GAIT-N's per-layer ``1 - r``, r its correlation with backprop, computed in
float64; the least aligned layer's ``1 - r`` at each penalty weight) into the results folder
(``--stem`` names them otherwise)::

    python -m experiments.headline run conv_bp32_lr1e-3 conv_gait_norm_diff32_lr1e-3 --seeds 0 --epochs 10
    python -m experiments.headline sync
    python -m experiments.conv_comparison --epoch 10 --write
    python -m experiments.conv_comparison --epoch 10 --bp conv_bp32_norm_lr1e-3 \\
        --gait conv_gait_norm_diff32_norm_lr1e-3 --write --stem conv_norm_epoch10
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .headline import RESULTS_DIR, RUNS, read_epochs, run_id, write_summary

MLP_DIR = Path("results/epochs20/training")
#: the CNN's runs compared (names in ``experiments.headline.RUNS``)
CONV_BP, CONV_GAIT = "conv_bp32_lr1e-3", "conv_gait_norm_diff32_lr1e-3"
#: BP on the CNN with GAIT-N's orthogonality penalty (compared once it has reached the epoch)
CONV_MATCHED = "conv_bp32_ortho100_lr1e-3"
#: the orthogonality weight of ``CONV_MATCHED``
CONV_MATCHED_WEIGHT = 100.0
#: the CNN's GAIT-N runs that differ only in the orthogonality penalty's weight (run -> weight);
#: those other than the compared GAIT-N run are reported once they have reached the epoch
CONV_GAIT_PENALTIES: Dict[str, float] = {
    "conv_gait_norm_diff32_lr1e-3": 100.0,
    "conv_gait_norm_diff32_ortho10_lr1e-3": 10.0,
    "conv_gait_norm_diff32_ortho1_lr1e-3": 1.0,
}


def mlp_accuracy(path: Path) -> Dict[int, float]:
    """Test accuracy at each whole epoch of an ``experiments.training`` CSV (``epoch`` may be
    fractional there: the run is evaluated every half epoch)."""
    out: Dict[int, float] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            epoch = float(row["epoch"])
            if epoch >= 1 and epoch == int(epoch):
                out[int(epoch)] = float(row["test_acc"])
    return out


def _at(curve: Dict[int, float], epoch: int, what: str) -> float:
    if epoch not in curve:
        done = max(curve) if curve else 0
        raise LookupError(f"{what} has no test accuracy at epoch {epoch} (it has {done} epochs)")
    return curve[epoch]


def _test_acc(path: Path) -> Dict[int, float]:
    """Test accuracy at each finished epoch of a run's synced CSV (empty if there is no CSV)."""
    return {e["epoch"]: e["test_acc"] for e in read_epochs(path)} if path.is_file() else {}


def penalty_key(weight: float) -> str:
    """The quantity prefix of a GAIT-N run with orthogonality weight ``weight``."""
    return f"cnn_gait_n_ortho{weight:g}"


def compare(epoch: int, *, results: Path = RESULTS_DIR, mlp: Path = MLP_DIR, seed: int = 0,
            conv_bp: str = CONV_BP, conv_gait: str = CONV_GAIT,
            conv_matched: Optional[str] = CONV_MATCHED,
            penalties: Optional[Dict[str, float]] = None) -> List[Dict[str, object]]:
    """Rows ``(quantity, epoch, value_pp, source)``: the test accuracies at ``epoch`` (%),
    then the CNN GAIT-N's margin over the MLP's BP and the GAIT-N-to-BP gaps (percentage
    points; a gap is BP minus GAIT-N). The CNN's matched baseline ``conv_matched`` (BP with
    penalty ``CONV_MATCHED_WEIGHT``) is included when its CSV has reached ``epoch``, with its
    gap to the GAIT-N run of ``penalties`` with that weight, and so is each GAIT-N
    run of ``penalties`` (run -> orthogonality weight; default :data:`CONV_GAIT_PENALTIES`)
    other than ``conv_gait``, as ``cnn_gait_n_ortho{weight}_test_acc`` with its margin over
    the MLP's BP and its gap to the CNN's BP. Raises ``LookupError`` naming one of the
    other runs that has not reached ``epoch``."""
    sources = {
        "cnn_bp": results / f"{run_id(conv_bp, seed)}.csv",
        "cnn_gait_n": results / f"{run_id(conv_gait, seed)}.csv",
        "mlp_bp": mlp / "bp.csv",
        "mlp_gait_n": mlp / "gait_norm.csv",
    }
    for key, path in sources.items():
        if not path.is_file():
            raise LookupError(f"{key}: {path} does not exist")
    curves = {key: _test_acc(sources[key]) for key in ("cnn_bp", "cnn_gait_n")}
    weights = CONV_GAIT_PENALTIES if penalties is None else penalties
    optional = [] if conv_matched is None else [("cnn_bp_matched", conv_matched)]
    optional += [(penalty_key(weight), name) for name, weight in weights.items() if name != conv_gait]
    for key, name in optional:  # included once they have reached the epoch
        path = results / f"{run_id(name, seed)}.csv"
        curve = _test_acc(path)
        if epoch in curve:
            sources[key], curves[key] = path, curve
    variants = [key for key, _ in optional if key in curves and key != "cnn_bp_matched"]
    cnn = list(curves)
    acc = {key: 100 * _at(curves[key], epoch, str(sources[key])) for key in cnn}
    acc.update({key: 100 * _at(mlp_accuracy(sources[key]), epoch, str(sources[key]))
                for key in ("mlp_bp", "mlp_gait_n")})
    rows: List[Dict[str, object]] = [
        {"quantity": f"{key}_test_acc", "epoch": epoch, "value_pp": acc[key], "source": str(sources[key])}
        for key in (*cnn, "mlp_bp", "mlp_gait_n")
    ]
    derived = {
        "cnn_gait_n_minus_mlp_bp": acc["cnn_gait_n"] - acc["mlp_bp"],
        "cnn_gap_bp_minus_gait_n": acc["cnn_bp"] - acc["cnn_gait_n"],
        "mlp_gap_bp_minus_gait_n": acc["mlp_bp"] - acc["mlp_gait_n"],
    }
    same_weight = "cnn_gait_n" if weights.get(conv_gait) == CONV_MATCHED_WEIGHT else penalty_key(CONV_MATCHED_WEIGHT)
    if "cnn_bp_matched" in acc and same_weight in acc:
        derived["cnn_gap_matched_bp_minus_gait_n"] = acc["cnn_bp_matched"] - acc[same_weight]
    for key in variants:
        derived[f"{key}_minus_mlp_bp"] = acc[key] - acc["mlp_bp"]
        derived[f"cnn_gap_bp_minus_{key[len('cnn_'):]}"] = acc["cnn_bp"] - acc[key]
    rows += [{"quantity": key, "epoch": epoch, "value_pp": value, "source": "derived"}
             for key, value in derived.items()]
    return rows


def format_rows(rows: Sequence[Dict[str, object]]) -> str:
    return "\n".join(f"{r['quantity']:26s} epoch {r['epoch']:3d}  {r['value_pp']:7.2f}  ({r['source']})"
                     for r in rows)


def _hidden_layers(epochs: Sequence[Dict[str, float]]) -> List[str]:
    """The ``bp_corr/layer_k`` keys of a run but the output layer's (r = 1 by construction)."""
    return sorted({k for e in epochs for k in e if k.startswith("bp_corr/layer_")},
                  key=lambda k: int(k.rsplit("_", 1)[1]))[:-1]


def plot(epoch: int, path: Path, *, results: Path = RESULTS_DIR, mlp: Path = MLP_DIR, seed: int = 0,
         conv_bp: str = CONV_BP, conv_gait: str = CONV_GAIT, conv_matched: Optional[str] = CONV_MATCHED,
         penalties: Optional[Dict[str, float]] = None) -> Path:
    """Left: test accuracy of the runs of :func:`compare`, epochs 1..``epoch``. Middle: ``1 - r``
    per layer of the CNN's GAIT-N run at each epoch's end (log axis; one colour per layer;
    the output layer, whose update is backprop's by construction, left out). Right: the
    worst layer's ``1 - r`` of each GAIT-N run of ``penalties`` (the orthogonality weight's
    effect on the equality with backprop)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    penalties = CONV_GAIT_PENALTIES if penalties is None else penalties
    variants = [name for name in penalties if name != conv_gait]
    fig, (ax_acc, ax_corr, ax_worst) = plt.subplots(1, 3, figsize=(17, 4.6))
    cnn = {name: [e for e in read_epochs(results / f"{run_id(name, seed)}.csv") if e["epoch"] <= epoch]
           for name in (conv_bp, conv_gait, conv_matched, *variants)
           if name is not None and (results / f"{run_id(name, seed)}.csv").is_file()}
    oranges = plt.get_cmap("autumn")
    styles = [(conv_bp, "tab:blue"), (conv_gait, "tab:red"), (conv_matched, "tab:purple")]
    styles += [(name, oranges(0.35 + 0.4 * i / max(1, len(variants) - 1))) for i, name in enumerate(variants)]
    for name, colour in styles:
        if not cnn.get(name):  # absent, or no finished epoch yet
            continue
        ax_acc.plot([e["epoch"] for e in cnn[name]], [100 * e["test_acc"] for e in cnn[name]], "-o", ms=3,
                    color=colour, label=f"CNN: {RUNS[name][2]}")
    for file, label, colour in (("bp.csv", "MLP: BP, float64 (results/epochs20)", "tab:blue"),
                                ("gait_norm.csv", "MLP: GAIT-N, paper form, float64 (results/epochs20)", "tab:red")):
        curve = sorted((e, a) for e, a in mlp_accuracy(mlp / file).items() if e <= epoch)
        ax_acc.plot(*zip(*[(e, 100 * a) for e, a in curve]), "--", color=colour, label=label)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("test accuracy (%)")
    low = min(min(line.get_ydata()) for line in ax_acc.get_lines())
    ax_acc.set_ylim(bottom=low - 4 * len(ax_acc.get_lines()))  # room for the legend below the curves
    ax_acc.legend(fontsize=6.5, loc="lower right")
    layers = _hidden_layers(cnn[conv_gait])
    palette = plt.get_cmap("viridis")
    for i, key in enumerate(layers):
        points = [(e["epoch"], max(1.0 - e[key], 1e-12)) for e in cnn[conv_gait] if key in e]
        if points:
            ax_corr.plot(*zip(*points), "-o", ms=3, color=palette(i / max(1, len(layers) - 1)),
                         label=key.replace("bp_corr/", "").replace("_", " "))
    ax_corr.set_yscale("log")
    ax_corr.set_xlabel("epoch")
    ax_corr.set_ylabel("1 - correlation with backprop (float64)\nCNN GAIT-N, output layer left out")
    ax_corr.set_title(RUNS[conv_gait][2], fontsize=8)
    ax_corr.legend(fontsize=7, ncol=2)
    for name, colour in styles:
        if name not in cnn or name not in penalties:
            continue
        hidden = _hidden_layers(cnn[name])
        points = [(e["epoch"], max(1.0 - min(e[k] for k in hidden), 1e-12))
                  for e in cnn[name] if hidden and all(k in e for k in hidden)]
        if points:
            ax_worst.plot(*zip(*points), "-o", ms=3, color=colour, label=f"penalty {penalties[name]:g}")
    ax_worst.set_yscale("log")
    ax_worst.set_xlabel("epoch")
    ax_worst.set_ylabel("1 - r of the least aligned hidden layer (float64)")
    ax_worst.set_title("CNN GAIT-N: orthogonality penalty weight", fontsize=8)
    if ax_worst.get_lines():
        ax_worst.legend(fontsize=7)
    for a in (ax_acc, ax_corr, ax_worst):
        a.grid(alpha=0.3)
    fig.suptitle(f"CIFAR-10: the invertible CNN (seed {seed}) against the paper's MLP", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.conv_comparison", description=__doc__.split("\n")[0])
    parser.add_argument("--epoch", type=int, default=10, help="compare every run at this epoch (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bp", default=CONV_BP, choices=[n for n in RUNS if n.startswith("conv_")],
                        help=f"the CNN's BP run (default {CONV_BP})")
    parser.add_argument("--gait", default=CONV_GAIT, choices=[n for n in RUNS if n.startswith("conv_")],
                        help=f"the CNN's GAIT-N run (default {CONV_GAIT})")
    parser.add_argument("--results", default=str(RESULTS_DIR), help="the CNN runs' synced CSVs")
    parser.add_argument("--mlp", default=str(MLP_DIR), help="the MLP's experiments.training CSVs")
    parser.add_argument("--write", action="store_true", help="write STEM.csv and STEM.png into --results")
    parser.add_argument("--stem", default=None,
                        help="file name of --write's CSV and PNG, without suffix (default conv_epoch{N})")
    args = parser.parse_args(argv)
    results, mlp = Path(args.results), Path(args.mlp)
    try:
        rows = compare(args.epoch, results=results, mlp=mlp, seed=args.seed, conv_bp=args.bp, conv_gait=args.gait)
    except LookupError as err:
        print(f"cannot compare at epoch {args.epoch}: {err}", file=sys.stderr)
        return 1
    print(format_rows(rows))
    if any(math.isnan(float(r["value_pp"])) for r in rows):
        print("a test accuracy is NaN", file=sys.stderr)
        return 1
    if args.write:
        stem = args.stem or f"conv_epoch{args.epoch}"
        print("wrote", write_summary(rows, results / f"{stem}.csv"))
        print("wrote", plot(args.epoch, results / f"{stem}.png", results=results, mlp=mlp,
                            seed=args.seed, conv_bp=args.bp, conv_gait=args.gait))
    return 0


if __name__ == "__main__":
    sys.exit(main())
