"""``python -m experiments.fair_table EXPERIMENT``: BP and GAIT-N on two networks, each at the learning
rate its validation accuracy chooses, compared on test accuracy.

Reads ``results/EXPERIMENT/RUN_sSEED/`` (:mod:`experiments.curves`; the runs of
``experiments/grids/fair_cnn_mlp.yaml``: every network and rule at every learning rate of one grid, over
the same seeds and epochs). Each run is placed by its ``config.yaml``: the network
(``model.init_args.net.class_path``), the rule (``model.class_path``) and the learning rate. At one epoch
``N`` (``--epoch``; default the last epoch every run has reached), for each network and rule:

1. every learning rate must have the same seeds at epoch ``N``, and every run a held-out validation
   split (a run that validated on the test set stops the table: its choice would be made on test);
2. the learning rate is the one of the highest mean validation accuracy over the seeds (``val/acc``, the
   5,000 held-out training images);
3. the row reports that rate's test accuracy (``test/acc``) at epoch ``N``: mean, min and max over the
   seeds; ``edge`` says when the chosen rate is the smallest or largest of the grid (widen the grid).

A run whose last logged validation accuracy is at chance (at most :data:`COLLAPSED_ACC`, 1 point above 10%)
has *collapsed* (it diverged, or a guard stopped it): a rate with a collapsed seed cannot be chosen and is
listed as collapsed; such runs are left out of "the last epoch every run has reached".

The test set is read only for the chosen rate. ``--write`` also writes ``table_epoch{N}.csv`` (one row per
network and rule, ``source``: the chosen runs' folders) and ``lr_epoch{N}.csv`` (every network, rule and
rate: mean validation accuracy, so the choice can be checked) into the experiment's folder::

    python -m experiments.stacks run fair_cnn_mlp
    python -m experiments.fair_table fair_cnn_mlp --write
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .curves import RESULTS_DIR, RunResult, runs, val_is_test
from .headline import write_summary

#: short names of the networks and rules in the table
NETWORKS = {"lightning_gait.InvertibleMLP": "MLP", "lightning_gait.InvertibleCNN": "CNN"}
RULES = {"lightning_gait.Backprop": "BP", "lightning_gait.GAITProp": "GAIT-N"}
#: a run whose last validation accuracy is at most this has collapsed to chance (CIFAR-10: 10%)
COLLAPSED_ACC = 0.11


class TableError(ValueError):
    """Runs that do not make a fair table (missing seeds or epochs, validation on the test set)."""


def place(run: RunResult) -> Tuple[str, str, float]:
    """``(network, rule, lr)`` of a run, from its config."""
    config = run.config()
    model = config["model"]
    net = model["init_args"]["net"]["class_path"]
    return NETWORKS.get(net, net), RULES.get(model["class_path"], model["class_path"]), float(model["init_args"]["lr"])


def collect(folder: Path, epoch: Optional[int] = None) -> Tuple[int, Dict[Tuple[str, str], Dict[float, Dict[int, dict]]]]:
    """``(epoch, {(network, rule): {lr: {seed: epoch's row (+ folder)}}})``; raises :class:`TableError`."""
    found = runs(folder)
    if not found:
        raise TableError(f"no runs in {folder}/*_s*/metrics.csv")
    curves = {}
    for run in found:
        if val_is_test(run.config()):
            raise TableError(f"{run.folder} validated on the test set (val_size 0): no choice can be made on it")
        curves[run] = run.epochs()
    collapsed = {run for run, curve in curves.items() if curve and curve[-1]["val_acc"] <= COLLAPSED_ACC}
    reached = min((len(c) for run, c in curves.items() if run not in collapsed), default=0)
    epoch = reached if epoch is None else epoch
    if epoch < 1:
        raise TableError("a run has no finished epoch")
    groups: Dict[Tuple[str, str], Dict[float, Dict[int, dict]]] = {}
    for run, curve in curves.items():
        network, rule, lr = place(run)
        if run in collapsed:
            row = {**curve[-1], "collapsed": True, "folder": str(run.folder)}
        else:
            at = [e for e in curve if e["epoch"] == epoch]
            if not at:
                raise TableError(f"{run.folder} has not reached epoch {epoch} (it has {len(curve)} epochs)")
            row = {**at[0], "collapsed": False, "folder": str(run.folder)}
        groups.setdefault((network, rule), {}).setdefault(lr, {})[run.seed] = row
    for key, by_lr in groups.items():
        seeds = {lr: sorted(s) for lr, s in by_lr.items()}
        if len({tuple(s) for s in seeds.values()}) != 1:
            raise TableError(f"{key[0]} {key[1]}: the learning rates have different seeds: {seeds}")
    return epoch, groups


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def choose(groups) -> Tuple[List[Dict[str, object]], List[Dict[str, object]]]:
    """``(table rows, per-rate rows)``: each network and rule at the rate of the highest mean validation
    accuracy, with that rate's test accuracy over the seeds."""
    table, rates = [], []
    for (network, rule), by_lr in sorted(groups.items()):
        collapsed = {lr for lr, seeds in by_lr.items() if any(r["collapsed"] for r in seeds.values())}
        means = {lr: _mean([r["val_acc"] for r in seeds.values()]) for lr, seeds in by_lr.items() if lr not in collapsed}
        for lr in sorted(by_lr):
            rates.append({"network": network, "rule": rule, "lr": lr, "seeds": " ".join(map(str, sorted(by_lr[lr]))),
                          "val_acc_mean": means.get(lr), "collapsed": lr in collapsed, "chosen": False})
        if not means:
            raise TableError(f"{network} {rule}: every learning rate has a collapsed run")
        best = max(means, key=lambda lr: (means[lr], -lr))  # a tie goes to the smaller rate
        for row in rates:
            if (row["network"], row["rule"], row["lr"]) == (network, rule, best):
                row["chosen"] = True
        chosen = by_lr[best]
        test = [chosen[s]["test_acc"] for s in sorted(chosen)]
        table.append({
            "network": network, "rule": rule, "lr": best, "seeds": " ".join(map(str, sorted(chosen))),
            "epoch": next(iter(chosen.values()))["epoch"], "val_acc_mean": means[best],
            "test_acc_mean": _mean(test), "test_acc_min": min(test), "test_acc_max": max(test),
            "edge": best in (min(by_lr), max(by_lr)) and len(by_lr) > 1,
            "source": ";".join(chosen[s]["folder"] for s in sorted(chosen)),
        })
    return table, rates


def format_table(rows: Sequence[Dict[str, object]]) -> str:
    lines = ["| network | rule | lr (chosen on validation) | seeds | epoch | val acc % (mean) | test acc % (mean, range) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        edge = " (edge of the grid)" if r["edge"] else ""
        lines.append(f"| {r['network']} | {r['rule']} | {r['lr']:g}{edge} | {r['seeds']} | {r['epoch']} | "
                     f"{100 * r['val_acc_mean']:.2f} | {100 * r['test_acc_mean']:.2f} "
                     f"({100 * r['test_acc_min']:.2f}-{100 * r['test_acc_max']:.2f}) |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.fair_table", description=__doc__.split("\n")[0])
    parser.add_argument("experiment", help="a folder of --results (the committed grid: fair_cnn_mlp)")
    parser.add_argument("--epoch", type=int, default=None, help="compare at this epoch (default: the last all reached)")
    parser.add_argument("--results", default=str(RESULTS_DIR), help="the folder holding EXPERIMENT/")
    parser.add_argument("--write", action="store_true", help="write table_epoch{N}.csv and lr_epoch{N}.csv")
    args = parser.parse_args(argv)
    folder = Path(args.results) / args.experiment
    try:
        epoch, groups = collect(folder, args.epoch)
    except TableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        table, rates = choose(groups)
    except TableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for r in rates:
        shown = "collapsed (left out)" if r["collapsed"] else f"mean val acc {100 * r['val_acc_mean']:.2f}"
        print(f"{r['network']} {r['rule']:7s} lr {r['lr']:<8g} seeds {r['seeds']}  {shown}"
              f"{'  <- chosen' if r['chosen'] else ''}")
    print(format_table(table))
    if args.write:
        print("wrote", write_summary(table, folder / f"table_epoch{epoch}.csv"))
        print("wrote", write_summary(rates, folder / f"lr_epoch{epoch}.csv"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
