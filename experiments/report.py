"""``python -m experiments.report``: the README's result tables, from the CSVs.

Prints Markdown tables built only from the files the experiment commands wrote into
``--out`` (``results/``), so that the numbers in the README are the committed ones:

* Fig. 2B: per layer, mean ± std over networks of the correlation with backprop
  (one table per dtype and form), and the minimum over networks;
* Fig. 2B for the invertible CNN: per layer, median / minimum over networks for each variant,
  from ``<out>/cnn_fig2b/fig2b_summary.csv``;
* Fig. 2A: per regime, epochs, seed, final and best test accuracy, from ``--training``
  (default ``<out>/fig2a``, the 20-epoch run ``results/README.md`` shows).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

from .correlation import PANELS, read_csv
from .training import read_runs, summarize_runs

__all__ = ["correlation_table", "cnn_correlation_table", "training_table", "main"]

ORDER = ("GAIT", "GAIT-N", "GAIT-S", "GAIT-SN", "TP", "FA")


def _num(value: float, digits: int) -> str:
    return "nan" if math.isnan(value) else f"{value:.{digits}f}"


def correlation_table(summary: Sequence[Dict[str, object]], dtype: str, form: str, *, statistic: str = "mean",
                      digits: int = 4) -> str:
    """Markdown: variants x layers; ``statistic`` "mean" (mean ± std), "median" or "min"."""
    rows = [r for r in summary if r["dtype"] == dtype and r["form"] in (form, "-")]
    layers = sorted({int(r["layer"]) for r in rows})
    lines = ["| variant | " + " | ".join(f"layer {k}" for k in layers) + " |",
             "|---|" + "---|" * len(layers)]
    for name in ORDER:
        by_layer = {int(r["layer"]): r for r in rows if r["variant"] == name}
        if not by_layer:
            continue
        cells = []
        for k in layers:
            r = by_layer[k]
            if statistic == "mean":
                cells.append(f"{_num(float(r['corr_mean']), digits)} ± {_num(float(r['corr_std']), digits)}")
            else:
                cells.append(_num(float(r[f"corr_{statistic}"]), digits))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: the CNN's Fig. 2B columns: variant of experiments.conv_correlation -> column heading
CNN_COLUMNS = {"GAIT-N": "GAIT-N float64 paper", "GAIT-SN": "GAIT-SN float64 paper",
               "GAIT-N float32 difference": "GAIT-N float32 difference", "GAIT": "GAIT gamma 1e-3 float64 paper"}


def cnn_correlation_table(summary: Sequence[Dict[str, object]]) -> str:
    """Markdown: per layer of the CNN, median / minimum over networks of each variant's correlation."""
    by = {(str(r["variant"]), int(r["layer"])): r for r in summary}
    layers = sorted({int(r["layer"]) for r in summary})
    columns = [v for v in CNN_COLUMNS if any((v, k) in by for k in layers)]
    lines = ["| layer | " + " | ".join(CNN_COLUMNS[v] for v in columns) + " |", "|---|" + "---|" * len(columns)]
    for k in layers:
        kind = next(str(by[(v, k)]["layer_type"]) for v in columns if (v, k) in by)
        cells = [f"{float(by[(v, k)]['corr_median']):.6f} / {float(by[(v, k)]['corr_min']):.5f}" if (v, k) in by else "-"
                 for v in columns]
        lines.append(f"| {k} {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def training_table(runs) -> str:
    lines = ["| regime | epochs | seed | final test acc (%) | best test acc (%) | best at epoch | s per epoch |",
             "|---|---|---|---|---|---|---|"]
    seconds = {}
    for regime, rows in runs.items():
        trained = [r for r in rows if float(r["epoch"]) > 0]
        epochs = float(trained[-1]["epoch"]) if trained else 0.0
        seconds[regime] = sum(float(r["train_time_s"]) for r in trained) / epochs if epochs else math.nan
    for s in summarize_runs(runs):
        lines.append(f"| {s['label']} | {s['epochs']:g} | {s['seed']} | {100 * s['final_test_acc']:.2f} | "
                     f"{100 * s['best_test_acc']:.2f} | {s['best_epoch']:g} | {seconds[s['regime']]:.0f} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.report",
                                     description="Markdown tables of the results CSVs.")
    parser.add_argument("--out", default="results", help="folder the experiment commands wrote into")
    parser.add_argument("--training", default=None,
                        help="the --out of the Fig. 2A run to tabulate (default: OUT/fig2a, the committed 20-epoch run)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    training_out = Path(args.training) if args.training else out / "fig2a"
    summary_path = out / "fig2b_summary.csv"
    if summary_path.is_file():
        summary = read_csv(summary_path)
        for dtype, form in PANELS:
            print(f"\nFig. 2B, {dtype}, {form} form: correlation with BP, mean ± std over networks\n")
            print(correlation_table(summary, dtype, form))
        for dtype, form, statistic in (("float64", "paper", "median"), ("float64", "paper", "min"),
                                       ("float32", "difference", "min")):
            print(f"\nFig. 2B, {dtype}, {form} form: {statistic} over networks\n")
            print(correlation_table(summary, dtype, form, statistic=statistic, digits=6))
    cnn_path = out / "cnn_fig2b" / "fig2b_summary.csv"
    if cnn_path.is_file():
        print(f"\nFig. 2B for the invertible CNN ({cnn_path}): median / minimum over networks\n")
        print(cnn_correlation_table(read_csv(cnn_path)))
    runs = read_runs(training_out)
    if runs:
        print(f"\nFig. 2A: CIFAR-10 test accuracy (float64), {training_out}\n")
        print(training_table(runs))
    if not summary_path.is_file() and not runs:
        print(f"error: no results under {out}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
