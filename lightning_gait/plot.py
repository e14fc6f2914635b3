"""``python -m lightning_gait.plot RUN_DIR_OR_CSV``: PNG figures of a run, without a W&B account.

Reads either a CSV-logged run (``metrics.csv`` of Lightning's ``CSVLogger``, or a folder
holding one) or an offline W&B run (a folder holding ``run-*.wandb``, read by
:mod:`lightning_gait.wandb_history`), and writes, for whatever the run logged:

* ``accuracy.png``: training and validation accuracy and loss over steps (test accuracy
  as a dashed line);
* one figure per declared diagnostic (:data:`lightning_gait.families.DIAGNOSTICS`), a
  panel per family, every layer on it: ``bp_alignment.png`` (``bp_corr``, ``bp_cos``,
  ``bp_angle``, ``bp_norm_ratio``, from :class:`~lightning_gait.callbacks.BPCorrelation`,
  in float64 whatever the training dtype), ``target_norms.png`` (``target_norm``,
  ``gamma`` and the multiplier's log10 with their min-max bands, from
  :class:`~lightning_gait.callbacks.TargetNorms`), ``orthogonality.png`` (``ortho`` and
  ``cond`` per square layer, from :class:`~lightning_gait.callbacks.Orthogonality`), and
  any diagnostic registered with :func:`~lightning_gait.families.register_diagnostic`;
* ``bp_alignment_at_init.png``: per layer, mean and standard deviation over freshly
  initialised networks (``BPCorrelation(at_init=True)``, the paper's Fig. 2B; no shipped
  config turns it on).

Figures go to ``--out`` (default: a ``plots`` folder beside the input). Each figure the
run's logs do not allow is skipped with one line saying which metric it needs and what
logs it. Layer k has one colour in every panel and figure of a run (from the input, dark,
to the output, light), and no axis uses an offset (``+9.999e-1``): tick labels are the
values themselves.
"""
from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from .families import DIAGNOSTICS, Diagnostic, Panel

__all__ = ["Series", "figures", "load_run", "load_csv", "load_wandb", "layer_colour", "layer_count",
           "plot_diagnostic", "plot_figures", "plot_run", "main"]

#: ``key -> (steps, values)``, both lists in logging order, NaN kept
Series = Dict[str, Tuple[List[float], List[float]]]

_LAYER = re.compile(r"^(?P<family>[A-Za-z0-9_]+)/layer_(?P<k>\d+)$")


def _as_float(value) -> Optional[float]:
    if value is None or value == "" or isinstance(value, (dict, list, bool)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _append(series, key: str, step: float, value: float) -> None:
    steps, values = series.setdefault(key, ([], []))
    steps.append(step)
    values.append(value)


def load_csv(path: Union[str, Path]) -> Series:
    """Every numeric column of a Lightning ``metrics.csv`` against its ``step`` column."""
    series: Series = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = _as_float(row.get("step"))
            if step is None:
                continue
            for key, raw in row.items():
                if key in ("step", None):
                    continue
                value = _as_float(raw)
                if value is not None:
                    _append(series, key, step, value)
    return series


def load_wandb(path: Union[str, Path]) -> Series:
    """Every numeric key of an offline W&B run against ``trainer/global_step`` (else ``_step``)."""
    from .wandb_history import read_history

    series: Series = {}
    for row in read_history(path):
        step = _as_float(row.get("trainer/global_step"))
        if step is None:
            step = _as_float(row.get("_step"))
        if step is None:
            continue
        for key, raw in row.items():
            if key.startswith("_") or key == "trainer/global_step":
                continue
            value = _as_float(raw)
            if value is not None:
                _append(series, key, step, value)
    return series


def _find(path: Path, pattern: str) -> List[Path]:
    return sorted(path.rglob(pattern), key=lambda p: p.stat().st_mtime)


def find_runs(path: Path) -> List[Path]:
    """The runs under a folder, oldest first: the newest ``run-*.wandb`` file of each W&B run
    (a resumed run writes one per start), else every ``metrics.csv``."""
    files = [p for p in _find(path, "run-*.wandb") if "latest-run" not in p.parts]
    if files:
        newest = {p.name: p for p in files}  # sorted by time: the last file of each run id wins
        return sorted(newest.values(), key=lambda p: p.stat().st_mtime)
    return _find(path, "metrics.csv")


def load_run(path: Union[str, Path]) -> Tuple[Series, Path, str]:
    """``(series, source file, kind)`` for a ``metrics.csv``, a ``.wandb`` file or a folder of either.

    In a folder, an offline W&B run is preferred to a CSV (the newest of each).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.is_file():
        if path.suffix == ".csv":
            return load_csv(path), path, "csv"
        if path.suffix == ".wandb":
            return load_wandb(path), path, "wandb"
        raise ValueError(f"{path}: expected a metrics .csv, a .wandb file or a run folder")
    runs = [p for p in _find(path, "run-*.wandb") if "latest-run" not in p.parts]
    if runs:
        return load_wandb(runs[-1]), runs[-1], "wandb"
    csvs = _find(path, "metrics.csv")
    if csvs:
        return load_csv(csvs[-1]), csvs[-1], "csv"
    raise FileNotFoundError(f"no metrics.csv and no run-*.wandb under {path}")


def layer_series(series: Series, family: str) -> List[Tuple[int, List[float], List[float]]]:
    """``(k, steps, values)`` for every ``{family}/layer_{k}``, by layer number."""
    out = []
    for key, (steps, values) in series.items():
        m = _LAYER.match(key)
        if m and m.group("family") == family:
            out.append((int(m.group("k")), steps, values))
    return sorted(out)


def _plain_ticks(ax) -> None:
    """Tick labels that are the values themselves, without a shared offset or factor."""
    from matplotlib.ticker import ScalarFormatter

    for axis in (ax.xaxis, ax.yaxis):
        formatter = axis.get_major_formatter()
        if isinstance(formatter, ScalarFormatter):
            formatter.set_useOffset(False)


def _finish_layer_axes(ax, title: str, ylabel: str, *, log: bool) -> bool:
    """Scale, titles, grid and legend of a per-layer panel over training steps."""
    if log:
        ax.set_yscale("log")
    _plain_ticks(ax)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    return True


def layer_count(series: Series) -> int:
    """The highest layer number of any ``family/layer_k`` key (0 when none)."""
    return max((int(m.group("k")) for m in map(_LAYER.match, series) if m), default=0)


def layer_colour(k: int, layers: int):
    """Layer ``k``'s colour in a run of ``layers`` layers: the same in every panel and figure."""
    import matplotlib

    return matplotlib.colormaps["viridis"](0.9 * (k - 1) / max(layers - 1, 1))


def _use_log(values: Sequence[float]) -> bool:
    finite = [v for v in values if not math.isnan(v) and not math.isinf(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 100


def _layer_panel(ax, series: Series, family: str, *, title: str, ylabel: str, log: Optional[bool] = None) -> bool:
    layers = layer_series(series, family)
    if not layers:
        ax.set_visible(False)
        return False
    n = layer_count(series)
    for k, steps, values in layers:
        ax.plot(steps, values, color=layer_colour(k, n), label=f"layer {k}", marker="." if len(steps) < 30 else None)
    every = [v for _, _, values in layers for v in values]
    return _finish_layer_axes(ax, title, ylabel, log=log if log is not None else _use_log(every))


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def plot_accuracy(series: Series, out: Path, title: str) -> Optional[Path]:
    import matplotlib.pyplot as plt

    acc_keys = [k for k in ("train/acc_step", "train/acc_epoch", "train/acc", "val/acc") if k in series]
    loss_keys = [k for k in ("train/loss_step", "train/loss_epoch", "train/loss", "val/loss") if k in series]
    if not acc_keys and not loss_keys:
        return None
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"train/acc_step": dict(alpha=0.35, lw=0.8), "train/loss_step": dict(alpha=0.35, lw=0.8)}
    for ax, keys, name in ((ax_acc, acc_keys, "accuracy"), (ax_loss, loss_keys, "cross-entropy per sample")):
        for key in keys:
            steps, values = series[key]
            ax.plot(steps, values, label=key, marker="." if len(steps) < 30 else None, **styles.get(key, {}))
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        _plain_ticks(ax)
    if "test/acc" in series:
        ax_acc.axhline(series["test/acc"][1][-1], ls="--", color="k", lw=1, label="test/acc")
    if ax_acc.lines:
        ax_acc.legend(fontsize="small")
    if ax_loss.lines:
        ax_loss.legend(fontsize="small")
    ax_acc.set_title("accuracy")
    ax_loss.set_title("loss")
    fig.suptitle(title)
    return _save(fig, out / "accuracy.png")


def plot_alignment_at_init(series: Series, out: Path, title: str) -> Optional[Path]:
    import matplotlib.pyplot as plt

    means = layer_series(series, "bp_corr_init")
    if not means:
        return None
    stds = {k: values[-1] for k, _, values in layer_series(series, "bp_corr_init_std")}
    ks = [k for k, _, _ in means]
    ys = [values[-1] for _, _, values in means]
    errs = [stds.get(k, float("nan")) for k in ks]
    fig, ax = plt.subplots(figsize=(6, 4))
    n = layer_count(series)
    ax.bar([str(k) for k in ks], ys, yerr=[0 if math.isnan(e) else e for e in errs],
           color=[layer_colour(k, n) for k in ks], capsize=3)
    _plain_ticks(ax)
    ax.set_ylim(min(-0.1, min((y for y in ys if not math.isnan(y)), default=0) - 0.05), 1.05)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("layer (1 = input)")
    ax.set_ylabel("bp_corr at init (mean ± std over networks)")
    ax.set_title(f"{title}: correlation with backprop at init")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, out / "bp_alignment_at_init.png")


def _band_panel(ax, series: Series, family: str, *, title: str, ylabel: str, log: Optional[bool] = None) -> bool:
    """Mean per layer as a line, ``{family}_min`` .. ``{family}_max`` as a band."""
    layers = layer_series(series, family)
    if not layers:
        ax.set_visible(False)
        return False
    low = {k: (s, v) for k, s, v in layer_series(series, f"{family}_min")}
    high = {k: (s, v) for k, s, v in layer_series(series, f"{family}_max")}
    n = layer_count(series)
    for k, steps, values in layers:
        colour = layer_colour(k, n)
        ax.plot(steps, values, color=colour, label=f"layer {k}", marker="." if len(steps) < 30 else None)
        if k in low and k in high and low[k][0] == high[k][0]:
            ax.fill_between(low[k][0], low[k][1], high[k][1], color=colour, alpha=0.2, lw=0)
    every = [v for _, _, values in layers for v in values]
    return _finish_layer_axes(ax, title, ylabel, log=log if log is not None else _use_log(every))


def _panel_log(panel: Panel, series: Series) -> Optional[bool]:
    """The y scale of ``panel``: ``"log"`` where every value is positive; ``None`` lets
    :func:`_layer_panel` choose (log when positive values span more than a factor 100)."""
    if panel.scale == "linear":
        return False
    if panel.scale == "log":
        finite = [v for _, _, vs in layer_series(series, panel.family) for v in vs if math.isfinite(v)]
        return bool(finite) and min(finite) > 0
    return None


def plot_diagnostic(diagnostic: Diagnostic, series: Series, out: Path, title: str) -> Optional[Path]:
    """``diagnostic``'s figure, a panel per :class:`~lightning_gait.families.Panel` (None
    when the run logged none of its families)."""
    import matplotlib.pyplot as plt

    panels = diagnostic.panels
    if not any(layer_series(series, panel.family) for panel in panels):
        return None
    cols = 2 if len(panels) == 4 else len(panels)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        draw = _band_panel if panel.band else _layer_panel
        draw(ax, series, panel.family, title=panel.title, ylabel=panel.ylabel or panel.family,
             log=_panel_log(panel, series))
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{title}: {diagnostic.title}")
    return _save(fig, out / diagnostic.figure)


#: ``(function, file, the metric it needs, what logs that metric)``
Figure = Tuple[Callable[[Series, Path, str], Optional[Path]], str, str, str]


def _needs(diagnostic: Diagnostic) -> str:
    keys = [f"{panel.family}/layer_k" for panel in diagnostic.panels]
    return keys[0] if len(keys) == 1 else f"{', '.join(keys[:-1])} or {keys[-1]}"


def figures() -> List[Figure]:
    """Every figure, the declared diagnostics' as they are declared now."""
    declared = [(lambda series, out, title, d=d: plot_diagnostic(d, series, out, title), d.figure, _needs(d),
                 d.logged_by) for d in DIAGNOSTICS.values()]
    return [
        (plot_accuracy, "accuracy.png", "train/acc, val/acc or a loss", "the rule itself, with any logger"),
        *declared,
        (plot_alignment_at_init, "bp_alignment_at_init.png", "bp_corr_init/layer_k",
         "BPCorrelation(at_init=True), which no shipped config turns on"),
    ]


def plot_figures(path: Union[str, Path], *, out: Optional[Union[str, Path]] = None) -> Tuple[List[Path], List[str]]:
    """Write every figure the run's logs allow: ``(PNG paths, one line per figure skipped and why)``.

    A folder holding several runs gets the figures of each in ``OUT/<run>/``.
    """
    import matplotlib

    matplotlib.use("Agg")
    out_dir = Path(out) if out is not None else (Path(path) if Path(path).is_dir() else Path(path).parent) / "plots"
    runs = find_runs(Path(path)) if Path(path).is_dir() else []
    if len(runs) > 1:
        written, skipped = [], []
        for run in runs:
            title = run.parent.name if run.suffix == ".wandb" else f"{run.parent.parent.name}-{run.parent.name}"
            more, missing = plot_figures(run, out=out_dir / title)
            written += more
            skipped += [f"{title}: {line}" for line in missing]
        return written, skipped
    series, source, kind = load_run(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    title = source.parent.name if kind == "wandb" else f"{source.parent.parent.name}/{source.parent.name}"
    written, skipped = [], []
    for plot, name, needs, logged_by in figures():
        result = plot(series, out_dir, title)
        if result is not None:
            written.append(result)
        else:
            skipped.append(f"skipped {name}: the run logged no {needs} (logged by {logged_by})")
    return written, skipped


def plot_run(path: Union[str, Path], *, out: Optional[Union[str, Path]] = None) -> List[Path]:
    """Write every figure the run's logs allow; return the PNG paths."""
    return plot_figures(path, out=out)[0]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_gait.plot",
        description="PNG figures (accuracy, correlation with backprop, target norms, orthogonality) "
        "from a CSV-logged run (metrics.csv) or an offline W&B run folder.",
    )
    parser.add_argument("run", help="metrics.csv, a run-*.wandb file, or a folder holding either (each run of a "
                                    "folder holding several gets its own subfolder of figures)")
    parser.add_argument("--out", default=None, help="output folder (default: RUN/plots)")
    args = parser.parse_args(argv)
    try:
        written, skipped = plot_figures(args.run, out=args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for line in skipped:
        print(line, file=sys.stderr)
    if not written:
        print(f"error: {args.run} holds no metric this command can plot", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
