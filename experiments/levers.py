"""``python -m experiments.levers EXPERIMENT``: each run of an experiment at the epoch its validation chooses.

Reads ``results/EXPERIMENT/RUN_sSEED/`` (:mod:`experiments.curves`; written by ``python -m
experiments.stacks sync EXPERIMENT``). For every run and seed:

* the *chosen epoch*: the one with the highest ``val/acc`` (the 5,000 held-out training images),
  and the ``test/acc`` of that epoch; the test set is only read there;
* the epochs reached;
* per layer, the smallest BP correlation logged over the whole run (``bp_corr/layer_k``, every
  logged step; NaN when any logged value is NaN).

A run that validated on the test set (``val_size: 0``) stops the table: its choice would be made on
test; a run that has not finished an epoch yet is left out, with a note. One row per run: the seeds, the epochs reached (fewest over the seeds), the chosen epochs,
mean validation accuracy, test accuracy (mean, range), and the smallest BP correlation of any layer
over training and seeds, with its layer ("-" when none was logged). A NaN validation accuracy in a
run leaves nothing to choose: its row is NaN; a NaN stays NaN in every mean and range. Labels come from the grid (``experiments/grids/EXPERIMENT.yaml``).

A grid's ``ablation`` (lever -> ``[run with it, run without it]``) adds the ablation table: per lever,
the seeds both runs have finished (all the epochs of their ``trainer.max_epochs``), each run's mean
test accuracy over those seeds, and the mean of the paired differences (with - without, seed by
seed) in test accuracy and in validation accuracy; a lever whose two runs share no finished seed
yet says so. A run short of its epochs is "unfinished", whether it is still running or stopped.

``--write`` also writes ``table.csv`` (one row per run and seed), ``ablation.csv`` and ``ablation.png``
(when the grid has an ``ablation``), ``curves.png`` (accuracy against epoch, a panel per run) and
``correlation.png`` (``1 - bp_corr`` per layer along training, a panel per run that is not backprop) into
the experiment's folder::

    python -m experiments.stacks run cnn_levers
    python -m experiments.stacks sync cnn_levers
    python -m experiments.levers cnn_levers --write
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .curves import RESULTS_DIR, RunResult, grid_spec, runs, val_is_test
from .headline import save_figure, write_summary

__all__ = ["smallest_correlations", "correlation_curves", "seed_row", "table_rows", "format_table", "ablation_rows",
           "format_ablation", "plot_ablation", "plot", "plot_correlation", "main"]

CORR = "bp_corr/layer_"


def correlation_curves(metrics: Path) -> Dict[int, List[tuple]]:
    """Per layer (1-based), ``(step, bp_corr)`` for every logged step."""
    out: Dict[int, List[tuple]] = {}
    with open(metrics, newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key and key.startswith(CORR) and value not in ("", None) and row.get("step"):
                    out.setdefault(int(key[len(CORR):]), []).append((int(float(row["step"])), float(value)))
    return out


def smallest_correlations(metrics: Path) -> Dict[int, float]:
    """Per layer (1-based, as logged), the smallest ``bp_corr/layer_k`` over every logged step; NaN
    when any of that layer's values is NaN."""
    out: Dict[int, float] = {}
    for layer, points in correlation_curves(metrics).items():
        values = [r for _, r in points]
        out[layer] = math.nan if any(math.isnan(r) for r in values) else min(values)
    return out


class Unfinished(ValueError):
    """A run that has not finished an epoch yet: left out of the tables, with a note."""


def seed_row(run: RunResult) -> Dict[str, object]:
    """One run and seed: epochs reached, the epoch validation chooses, its accuracies, smallest correlations."""
    if not run.config_path.is_file():
        raise ValueError(f"{run.folder}: no config.yaml beside its metrics.csv")
    if val_is_test(run.config()):
        raise ValueError(f"{run.folder}: validated on the test set (val_size 0); nothing can be chosen on it")
    epochs = [e for e in run.epochs() if "val_acc" in e]
    if not epochs:
        raise Unfinished(f"{run.folder}: no finished epoch with a validation accuracy yet")
    if any(math.isnan(e["val_acc"]) for e in epochs):  # nothing can be chosen: the row says so
        best = {"epoch": math.nan, "val_acc": math.nan, "test_acc": math.nan}
    else:
        best = max(epochs, key=lambda e: e["val_acc"])  # the first of equal ones
    corr = smallest_correlations(run.metrics)
    planned = ((run.config().get("trainer") or {}).get("max_epochs"))
    return {"run": run.name, "seed": run.seed, "epochs": epochs[-1]["epoch"],
            "finished": planned is None or epochs[-1]["epoch"] >= int(planned),  # None: no plan to compare
            "chosen_epoch": best["epoch"],
            "val_acc": best["val_acc"], "test_acc": best.get("test_acc", math.nan),
            **{f"min_bp_corr_layer_{k}": corr[k] for k in sorted(corr)}, "source": str(run.folder)}


def table_rows(seed_rows: Sequence[Dict[str, object]]) -> List[Dict[str, object]]:
    """One row per run over its finished seeds, and one row for each unfinished seed (short of
    ``trainer.max_epochs``), so that no mean mixes seeds at different epochs: its seeds, fewest epochs,
    chosen epochs, mean val, test mean and range, and the smallest correlation of any layer (NaN if any
    is NaN) with its layer."""
    out = []
    groups: Dict[tuple, List[Dict[str, object]]] = {}
    for r in seed_rows:  # key: (run, finished, None for the finished seeds together, else the seed)
        finished = r.get("finished", True)
        groups.setdefault((r["run"], finished, None if finished else r["seed"]), []).append(r)
    names = list(dict.fromkeys(name for name, _, _ in groups))
    order = lambda g: (names.index(g[0][0]), not g[0][1], -1 if g[0][2] is None else g[0][2])  # finished first
    for (name, finished, _), rows in sorted(groups.items(), key=order):
        tests = [float(r["test_acc"]) for r in rows]
        nan_test = any(math.isnan(t) for t in tests)
        corr = [(float(v), int(k[len("min_bp_corr_layer_"):])) for r in rows for k, v in r.items()
                if k.startswith("min_bp_corr_layer_")]
        nan = [c for c in corr if math.isnan(c[0])]
        low = nan[0] if nan else min(corr, default=(None, None))  # None: nothing logged
        out.append({"run": name, "finished": finished, "seeds": [r["seed"] for r in rows],
                    "epochs": min(r["epochs"] for r in rows),
                    "chosen": [r["chosen_epoch"] for r in rows],
                    "val_acc": sum(float(r["val_acc"]) for r in rows) / len(rows),
                    "test_acc": sum(tests) / len(tests),
                    "test_min": math.nan if nan_test else min(tests), "test_max": math.nan if nan_test else max(tests),
                    "min_bp_corr": low[0], "min_bp_corr_layer": low[1]})
    return out


def _pct(value: float) -> str:
    return "nan" if math.isnan(value) else f"{100 * value:.2f}"


def _points(difference: float) -> str:
    return "nan" if math.isnan(difference) else f"{100 * difference:+.2f}"


def format_table(rows: Sequence[Dict[str, object]], labels: Optional[Dict[str, str]] = None) -> str:
    labels = labels or {}
    lines = ["| run | seeds | epochs | chosen epoch | val acc % (mean) | test acc % (mean, range) | smallest BP correlation (layer) |",
             "|---|---|---:|---|---:|---|---|"]
    for r in rows:
        low = r["min_bp_corr"]
        corr = "-" if low is None else f"nan ({r['min_bp_corr_layer']})" if math.isnan(low) else \
            f"{low:.6f} ({r['min_bp_corr_layer']})"
        test = _pct(r["test_acc"]) + (f" ({_pct(r['test_min'])}-{_pct(r['test_max'])})" if len(r["seeds"]) > 1 else "")
        label = labels.get(r["run"], r["run"]) + ("" if r.get("finished", True) else " (unfinished)")
        lines.append(f"| {label} | {', '.join(map(str, r['seeds']))} | {r['epochs']} | "
                     f"{', '.join('-' if isinstance(c, float) else str(c) for c in r['chosen'])} | {_pct(r['val_acc'])} | {test} | {corr} |")
    return "\n".join(lines)


def ablation_rows(seed_rows: Sequence[Dict[str, object]], ablation: Dict[str, Sequence[str]],
                  known_runs: Optional[Sequence[str]] = None) -> List[Dict[str, object]]:
    """One row per lever of ``ablation`` (lever -> ``[run with it, run without it]``): the seeds both runs
    have finished (``finished`` of :func:`seed_row`), the mean test accuracy of each over those seeds and
    the paired differences (``differences``, seed by seed, with - without) and their mean, and the mean
    paired difference of their validation accuracies at the chosen epochs (``val_difference``: what a
    choice of lever is made on); ``seeds`` is empty and the numbers NaN while the two share no seed.
    ``known_runs`` (the grid's runs) makes a name outside them an error, not a lever that never fills in."""
    if not isinstance(ablation, dict):
        raise ValueError(f"ablation: expected a mapping of lever -> [run with it, run without it], got {ablation!r}")
    finished = {(r["run"], r["seed"]): r for r in seed_rows if r.get("finished", True)}
    out = []
    for lever, pair in ablation.items():
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(isinstance(p, str) for p in pair):
            raise ValueError(f"ablation lever {lever!r}: expected [run with it, run without it], got {pair!r}")
        with_run, without_run = pair
        for name in pair:
            if known_runs is not None and name not in known_runs:
                raise ValueError(f"ablation lever {lever!r}: {name!r} is not a run of the grid")
        seeds = sorted({s for n, s in finished if n == with_run} & {s for n, s in finished if n == without_run})
        mean = (lambda values: sum(values) / len(values)) if seeds else (lambda values: math.nan)
        accuracies = lambda run, key: [float(finished[(run, s)][key]) for s in seeds]
        with_acc, without_acc = accuracies(with_run, "test_acc"), accuracies(without_run, "test_acc")
        differences = [a - b for a, b in zip(with_acc, without_acc)]
        val_differences = [a - b for a, b in zip(accuracies(with_run, "val_acc"), accuracies(without_run, "val_acc"))]
        out.append({"lever": lever, "with": with_run, "without": without_run, "seeds": seeds,
                    "test_with": mean(with_acc), "test_without": mean(without_acc),
                    "difference": mean(differences), "differences": differences,
                    "val_difference": mean(val_differences)})
    return out


def format_ablation(rows: Sequence[Dict[str, object]], labels: Optional[Dict[str, str]] = None) -> str:
    labels = labels or {}
    lines = ["| lever | with it | without it | seeds | test acc % with (mean) | without (mean) | test difference (points) "
             "| val difference (points) |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if r["seeds"]:
            numbers = (f"{', '.join(map(str, r['seeds']))} | {_pct(r['test_with'])} | {_pct(r['test_without'])} | "
                       f"{_points(r['difference'])} | {_points(r['val_difference'])}")
        else:
            numbers = "no seed finished by both yet | | | |"
        lines.append(f"| {r['lever']} | {labels.get(r['with'], r['with'])} | {labels.get(r['without'], r['without'])} | {numbers} |")
    return "\n".join(lines)


def plot_ablation(rows: Sequence[Dict[str, object]], path: Path) -> Path:
    """``ablation.png``: per lever with a finished pair, the mean difference in test accuracy (with -
    without, points) as a bar and each seed's difference as a dot; levers still waiting for a pair
    are listed as such; a NaN difference is not drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.4))
    for i, r in enumerate(rows):
        if not r["seeds"]:
            ax.text(0.02, i, "no seed finished by both yet", va="center", fontsize=8, color="grey",
                    transform=ax.get_yaxis_transform())
            continue
        if not math.isnan(r["difference"]):
            ax.barh(i, 100 * r["difference"], color="C0" if r["difference"] >= 0 else "C3", alpha=0.6)
        points = [100 * d for d in r["differences"] if not math.isnan(d)]
        ax.plot(points, [i] * len(points), "o", color="black", markersize=4)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [f"{r['lever']} (seeds {', '.join(map(str, r['seeds'])) or '-'})" for r in rows],
                  fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="test accuracy with the lever - without it (points)", title="each lever on its own")
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


def _panels(count: int, columns: int = 4):
    """A figure of ``count`` panels sharing their y axis, ``columns`` to a row (fewer when there are
    fewer panels); the unused ones are hidden. Returns the figure and the ``count`` panels in reading order."""
    import matplotlib.pyplot as plt

    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.6 * rows + 0.6), sharey=True, squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def _title(text: str, width: int = 42) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def plot(found: Sequence[RunResult], path: Path, labels: Optional[Dict[str, str]] = None) -> Path:
    """``curves.png``: one panel per run (its label as title, the same accuracy axis in every panel):
    test (solid) and validation (dashed) accuracy of each seed against the epoch, a colour per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels or {}
    names = list(dict.fromkeys(r.name for r in found))
    seeds = sorted({r.seed for r in found})
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = {seed: cycle[i % len(cycle)] for i, seed in enumerate(seeds)}
    fig, panels = _panels(len(names))
    for name, ax in zip(names, panels):
        for run in (r for r in found if r.name == name):
            epochs = run.epochs()
            for key, style in (("test_acc", "-"), ("val_acc", "--")):
                kept = [e for e in epochs if key in e]
                ax.plot([e["epoch"] for e in kept], [100 * e[key] for e in kept], style, color=colours[run.seed],
                        label=f"seed {run.seed}" if key == "test_acc" else None)
        ax.set_title(_title(labels.get(name, name)), fontsize=7)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="lower right")
    fig.suptitle("accuracy (%) against epoch: test (solid), validation (dashed)", fontsize=9)
    return save_figure(fig, path)


def plot_correlation(found: Sequence[RunResult], path: Path, labels: Optional[Dict[str, str]] = None) -> Optional[Path]:
    """``correlation.png``: one panel per run that is not backprop, ``1 - bp_corr`` of each layer of its
    lowest seed along training (log scale, the same axis in every panel; NaN and values at or above 1
    are not drawn). ``None`` (nothing written) when no such run logged a correlation."""
    import matplotlib

    matplotlib.use("Agg")

    from .headline import is_backprop

    labels = labels or {}
    chosen: Dict[str, tuple] = {}  # run name -> (its lowest seed with a logged correlation, its curves)
    for run in sorted(found, key=lambda r: r.seed):
        if not is_backprop(run.name) and run.name not in chosen:
            curves = correlation_curves(run.metrics)
            if curves:
                chosen[run.name] = (run, curves)
    if not chosen:
        return None
    fig, panels = _panels(len(chosen))
    for (name, (run, curves)), ax in zip(chosen.items(), panels):
        for layer, points in sorted(curves.items()):
            kept = [(step, 1.0 - r) for step, r in points if not math.isnan(r) and r < 1.0]
            ax.plot([p[0] for p in kept], [p[1] for p in kept], linewidth=0.8, label=f"layer {layer}")
        ax.set_yscale("log")
        ax.set_title(_title(f"{labels.get(name, name)}, seed {run.seed}"), fontsize=7)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    panels[0].legend(fontsize=6, ncol=2)
    fig.suptitle("1 - correlation of each layer's update with backprop's, against the training step", fontsize=9)
    return save_figure(fig, path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.levers", description=__doc__.split("\n")[0])
    parser.add_argument("experiment", help="a folder of --results (e.g. cnn_levers)")
    parser.add_argument("--results", default=str(RESULTS_DIR), help="the folder holding EXPERIMENT/")
    parser.add_argument("--write", action="store_true", help="write table.csv into the experiment's folder")
    args = parser.parse_args(argv)
    folder = Path(args.results) / args.experiment
    found = runs(folder)
    if not found:
        print(f"error: no runs in {folder} (RUN_sSEED/metrics.csv): run and sync the experiment first", file=sys.stderr)
        return 2
    per_seed = []
    for run in found:
        try:
            per_seed.append(seed_row(run))
        except Unfinished as note:
            print(f"note: {note}: left out", file=sys.stderr)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    if not per_seed:
        print(f"error: no run in {folder} has finished an epoch yet", file=sys.stderr)
        return 2
    spec = grid_spec(args.experiment)
    print(format_table(table_rows(per_seed), spec.get("labels")))
    ablation = None
    if spec.get("ablation"):
        from .stacks import run_name

        try:
            known = [run_name(stack) for stack in spec["stacks"]] if spec.get("stacks") else None
            ablation = ablation_rows(per_seed, spec["ablation"], known)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print()
        print(format_ablation(ablation, spec.get("labels")))
    if args.write:
        keys = list(dict.fromkeys(k for r in per_seed for k in r))
        print(f"wrote {write_summary([{k: r.get(k, '') for k in keys} for r in per_seed], folder / 'table.csv')}")
        if ablation is not None:
            rows = [{k: " ".join(map(str, v)) if k in ("seeds", "differences") else v for k, v in r.items()}
                    for r in ablation]
            print(f"wrote {write_summary(rows, folder / 'ablation.csv')}")
            print(f"wrote {plot_ablation(ablation, folder / 'ablation.png')}")
        print(f"wrote {plot(found, folder / 'curves.png', spec.get('labels'))}")
        written = plot_correlation(found, folder / "correlation.png", spec.get("labels"))
        if written is not None:
            print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
