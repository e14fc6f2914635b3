"""``python -m experiments.correlation``: the paper's Fig. 2B.

Per layer, how well each rule's weight update agrees with backprop's on untrained
orthogonal ``3072 -> 6 x 500`` networks (``docs/gait-prop.md``, "The correlation metric"):

* networks: ``--nets`` (10) random :class:`~lightning_gait.InvertibleMLP` (orthogonal
  weights, zero biases, square output layer), network ``j`` drawn under
  ``torch.manual_seed(seed + j)``. The leaky-ReLU and SL-ReLU variants of network ``j``
  have the very same weights (only the activation differs);
* data: network ``j`` sees batch ``j`` of CIFAR-10's training set in a fixed random
  order (``torch.randperm`` under seed ``seed``): images ``perm[j*B : (j+1)*B]``, pixels
  divided by 255 as in training, ``B = --batch-size`` (256);
* variants: GAIT (leaky ReLU, fixed gamma 1e-3), GAIT-N (leaky ReLU, normalized targets,
  eta 1e-7), GAIT-S (SL-ReLU, fixed gamma), GAIT-SN (SL-ReLU, normalized); TP (exact
  inverse) and FA (fixed random orthogonal feedback, seed ``seed + j``) as references;
* regimes: float64 and float32, each with the paper's form (``target_mode="absolute"``)
  and the difference form (``"difference"``); TP and FA have no form (``form="-"``);
* reference: backprop's gradient of the same summed cross-entropy, on the same network,
  in the same dtype, on the same batch, computed once per (network, activation, dtype)
  and reused by every variant;
* metric: :func:`lightning_gait.diagnostics.gradient_alignment` of the flattened weight
  updates (biases excluded), computed in float64: Pearson correlation, cosine, angle
  (degrees), norm ratio. NaN stays NaN; a variant whose targets turn non-finite gets NaN
  and its ``status`` says so.

Writes into ``--out`` (``results/``): ``fig2b_correlation.csv`` (long format, one row per
variant, dtype, form, network and layer), ``fig2b_summary.csv`` (per variant, dtype, form
and layer: mean, std, median and min over networks of the correlation, mean and std of
the angle) and ``fig2b_correlation.png`` (bars per layer with one-std error bars, one
panel per dtype and form; the paper's panel is "float64, paper form").
"""
from __future__ import annotations

import argparse
import copy
import csv
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from lightning_gait.diagnostics import backprop_gradients, gradient_alignment
from lightning_gait.networks import InvertibleMLP
from lightning_gait.rules import FeedbackAlignment, GAITProp, TargetProp
from lightning_gait.targets import NonFiniteError
from .common import DEFAULT_DATA_DIR, check_data_dir, close_figure

__all__ = [
    "Variant",
    "VARIANTS",
    "REFERENCES",
    "FORMS",
    "DTYPES",
    "load_batches",
    "make_network",
    "build_variant",
    "measure_network",
    "run_correlation",
    "summarize",
    "plot_correlation",
    "main",
]

FORMS = ("absolute", "difference")
#: how the CSVs name the forms
FORM_NAMES = {"absolute": "paper", "difference": "difference", None: "-"}
DTYPES = {"float64": torch.float64, "float32": torch.float32}

LONG_COLUMNS = ("variant", "rule", "activation", "gamma_mode", "dtype", "form", "net", "batch", "layer",
                "corr", "cos", "angle", "norm_ratio", "status")
SUMMARY_COLUMNS = ("variant", "dtype", "form", "layer", "n_nets", "n_nan", "corr_mean", "corr_std", "corr_median",
                   "corr_min", "corr_max", "angle_mean", "angle_std")


@dataclass(frozen=True)
class Variant:
    """One rule of the figure: its name, rule, activation and (for GAIT-prop) gamma mode."""

    name: str
    rule: str  # "gait", "tp" or "fa"
    activation: str
    normalize: bool = False

    @property
    def gamma_mode(self) -> str:
        if self.rule != "gait":
            return "-"
        return "normalized" if self.normalize else "fixed"


VARIANTS = (
    Variant("GAIT", "gait", "leaky_relu", normalize=False),
    Variant("GAIT-N", "gait", "leaky_relu", normalize=True),
    Variant("GAIT-S", "gait", "smooth_leaky_relu", normalize=False),
    Variant("GAIT-SN", "gait", "smooth_leaky_relu", normalize=True),
)
REFERENCES = (
    Variant("TP", "tp", "leaky_relu"),
    Variant("FA", "fa", "leaky_relu"),
)
#: the paper's hyperparameters of the GAIT-prop variants (conf/gait*.yaml)
GAMMA = 1e-3
ETA = 1e-7


def load_batches(data_dir: Path, *, nets: int, batch_size: int, seed: int = 0,
                 verify_checksums: bool = True) -> List[Tuple[Tensor, Tensor]]:
    """Batch ``j`` (``j < nets``) of the training set in a seeded random order, as uint8 and labels.

    Images ``perm[j*B : (j+1)*B]`` (``perm = torch.randperm(N)`` under ``seed``); on a set
    smaller than ``nets * B`` the order wraps around (batches then share images).
    """
    from lightning_gait.data import CIFAR10DataModule

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if nets < 1:
        raise ValueError(f"--nets must be >= 1, got {nets}")
    dm = CIFAR10DataModule(data_dir=str(data_dir), download=False, val_size=0, verify_checksums=verify_checksums)
    dm.setup("fit")
    images, labels = dm.data_train.images, dm.data_train.labels
    n = len(labels)
    if batch_size > n:
        raise ValueError(f"--batch-size {batch_size} is larger than the training set ({n} images)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    batches = []
    for j in range(nets):
        idx = perm[(j * batch_size + torch.arange(batch_size)) % n]
        batches.append((images[idx], labels[idx]))
    return batches


def to_inputs(images: Tensor, dtype: torch.dtype) -> Tensor:
    """uint8 pixels -> ``dtype`` in [0, 1] (divided by 255, no mean subtraction, as in training)."""
    return images.to(dtype) / 255.0


def make_network(seed: int, *, activation: str = "leaky_relu", width: int = 500, depth: int = 6,
                 in_features: int = 3072) -> InvertibleMLP:
    """A float64 orthogonal network drawn under ``torch.manual_seed(seed)`` (RNG state restored)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = InvertibleMLP(in_features=in_features, width=width, depth=depth, num_classes=10, activation=activation,
                            square_output=True)
    return net.to(torch.float64)


def with_activation(net: InvertibleMLP, activation: str) -> InvertibleMLP:
    """The same weights under another hidden activation."""
    other = InvertibleMLP(in_features=net.in_features, width=net.width, depth=net.depth,
                          num_classes=net.num_classes, activation=activation, square_output=net.square_output)
    other = other.to(next(net.parameters()).dtype)
    other.load_state_dict(net.state_dict())
    return other


def build_variant(variant: Variant, net: InvertibleMLP, *, form: Optional[str], feedback_seed: int = 0):
    """The rule of ``variant`` around ``net`` with the paper's hyperparameters."""
    if variant.rule == "gait":
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        return GAITProp(net, gamma=GAMMA, normalize=variant.normalize, eta=ETA, target_mode=form)
    if variant.rule == "tp":
        return TargetProp(net)
    if variant.rule == "fa":
        return FeedbackAlignment(net, feedback_seed=feedback_seed)
    raise ValueError(f"unknown rule {variant.rule!r} of variant {variant.name}")


def alignment_rows(rule, x: Tensor, y: Tensor, reference) -> Tuple[List[Dict[str, float]], str]:
    """Per layer, :func:`gradient_alignment` of the rule's update with ``reference`` (NaN on failure)."""
    num_layers = len(reference)
    try:
        updates = rule.local_gradients(x, y)
    except NonFiniteError as err:
        nan = {"corr": math.nan, "cos": math.nan, "angle": math.nan, "norm_ratio": math.nan}
        return [dict(nan) for _ in range(num_layers)], f"non-finite: {err}"
    rows = [gradient_alignment(dw, dw_ref) for (dw, _), (dw_ref, _) in zip(updates, reference)]
    status = "ok" if all(not math.isnan(r["corr"]) for r in rows) else "nan"
    return rows, status


def measure_network(
    j: int,
    batch: Tuple[Tensor, Tensor],
    *,
    seed: int = 0,
    dtypes: Sequence[str] = ("float64", "float32"),
    forms: Sequence[str] = FORMS,
    variants: Sequence[Variant] = VARIANTS,
    references: Sequence[Variant] = REFERENCES,
    width: int = 500,
    depth: int = 6,
) -> List[Dict[str, object]]:
    """Every (variant, dtype, form) on network ``j`` and its batch; long-format rows.

    Backprop's gradient is computed once per (activation, dtype) and shared.
    """
    images, labels = batch
    base = make_network(seed + j, width=width, depth=depth, in_features=images.shape[1])
    nets64 = {act: (base if act == "leaky_relu" else with_activation(base, act))
              for act in sorted({v.activation for v in (*variants, *references)})}
    rows: List[Dict[str, object]] = []
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        x = to_inputs(images, dtype)
        for activation, net64 in nets64.items():
            net = copy.deepcopy(net64).to(dtype)
            reference = backprop_gradients(net, x, labels, loss_reduction="sum")
            jobs = [(v, f) for v in variants if v.activation == activation for f in forms]
            jobs += [(v, None) for v in references if v.activation == activation]
            for variant, form in jobs:
                rule = build_variant(variant, net, form=form, feedback_seed=seed + j)
                per_layer, status = alignment_rows(rule, x, labels, reference)
                for i, values in enumerate(per_layer):
                    rows.append({
                        "variant": variant.name, "rule": variant.rule, "activation": activation,
                        "gamma_mode": variant.gamma_mode, "dtype": dtype_name, "form": FORM_NAMES[form],
                        "net": j, "batch": j, "layer": i + 1, **values, "status": status,
                    })
    return rows


def run_correlation(
    batches: Sequence[Tuple[Tensor, Tensor]],
    *,
    seed: int = 0,
    dtypes: Sequence[str] = ("float64", "float32"),
    forms: Sequence[str] = FORMS,
    variants: Sequence[Variant] = VARIANTS,
    references: Sequence[Variant] = REFERENCES,
    width: int = 500,
    depth: int = 6,
    log=print,
) -> List[Dict[str, object]]:
    """:func:`measure_network` on every network ``j`` with ``batches[j]``."""
    rows: List[Dict[str, object]] = []
    for j, batch in enumerate(batches):
        start = time.perf_counter()
        rows += measure_network(j, batch, seed=seed, dtypes=dtypes, forms=forms, variants=variants,
                                references=references, width=width, depth=depth)
        if log:
            log(f"network {j + 1}/{len(batches)}: {time.perf_counter() - start:.1f} s")
    return rows


def _finite(values: Iterable[float]) -> List[float]:
    return [v for v in values if not math.isnan(v)]


def summarize(rows: Sequence[Dict[str, object]]) -> List[Dict[str, object]]:
    """Per (variant, dtype, form, layer): statistics over networks.

    Mean, std (sample std, n-1), median, min and max of the correlation over the
    networks whose correlation is defined; ``n_nan`` counts the others (a NaN is never
    averaged as a number, and when any network is NaN the mean is reported as NaN, too,
    so that a failure cannot hide behind the others).
    """
    groups: Dict[tuple, List[Dict[str, object]]] = {}
    for row in rows:
        key = (row["variant"], row["dtype"], row["form"], int(row["layer"]))
        groups.setdefault(key, []).append(row)
    out = []
    for (variant, dtype, form, layer), group in groups.items():
        corr_all = [float(r["corr"]) for r in group]
        angle_all = [float(r["angle"]) for r in group]
        corr, angle = _finite(corr_all), _finite(angle_all)
        n_nan = len(corr_all) - len(corr)
        nan = math.nan
        out.append({
            "variant": variant, "dtype": dtype, "form": form, "layer": layer,
            "n_nets": len(group), "n_nan": n_nan,
            "corr_mean": statistics.fmean(corr) if corr and not n_nan else nan,
            "corr_std": statistics.stdev(corr) if len(corr) > 1 and not n_nan else nan,
            "corr_median": statistics.median(corr) if corr else nan,
            "corr_min": min(corr) if corr else nan,
            "corr_max": max(corr) if corr else nan,
            "angle_mean": statistics.fmean(angle) if angle and not n_nan else nan,
            "angle_std": statistics.stdev(angle) if len(angle) > 1 and not n_nan else nan,
        })
    return out


def write_csv(path: Path, rows: Sequence[Dict[str, object]], columns: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k, "")) for k in columns})


def _fmt(value):
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value)  # full precision: 0.99999999 must not print as 1
    return value


def read_csv(path: Path) -> List[Dict[str, object]]:
    """Rows of a CSV written here, numbers parsed (``nan`` stays NaN)."""
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            parsed = {}
            for key, value in row.items():
                try:
                    parsed[key] = int(value) if key in ("layer", "net", "batch", "n_nets", "n_nan") else float(value)
                except (TypeError, ValueError):
                    parsed[key] = value
            out.append(parsed)
    return out


#: bar colours, as in the training figure
COLORS = {"GAIT": "tab:red", "GAIT-N": "tab:blue", "GAIT-S": "lightcoral", "GAIT-SN": "lightskyblue",
          "TP": "tab:purple", "FA": "tab:green"}
PANELS = (("float64", "paper"), ("float64", "difference"), ("float32", "paper"), ("float32", "difference"))


def plot_correlation(summary: Sequence[Dict[str, object]], path: Optional[Path] = None, *,
                     panels: Sequence[Tuple[str, str]] = PANELS, title: str = ""):
    """Bars per layer (mean over networks) with one-std error bars, one panel per (dtype, form).

    TP and FA (no form) appear in every panel of their dtype. Returns the figure.
    """
    import matplotlib.pyplot as plt

    panels = [p for p in panels if any(r["dtype"] == p[0] and r["form"] in (p[1], "-") for r in summary)]
    if not panels:
        raise ValueError("summary has no rows for any panel")
    ncols = 2 if len(panels) > 1 else 1
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 3.6 * nrows), squeeze=False)
    names = [v.name for v in (*VARIANTS, *REFERENCES)]
    names += sorted({str(r["variant"]) for r in summary} - set(names))
    for ax, (dtype, form) in zip(axes.flat, panels):
        rows = [r for r in summary if r["dtype"] == dtype and r["form"] in (form, "-")]
        present = [n for n in names if any(r["variant"] == n for r in rows)]
        layers = sorted({int(r["layer"]) for r in rows})
        width = 0.8 / max(len(present), 1)
        for k, name in enumerate(present):
            by_layer = {int(r["layer"]): r for r in rows if r["variant"] == name}
            xs = [layer + (k - (len(present) - 1) / 2) * width for layer in layers]
            means = [float(by_layer[l]["corr_mean"]) if l in by_layer else math.nan for l in layers]
            stds = [float(by_layer[l]["corr_std"]) if l in by_layer else math.nan for l in layers]
            stds = [0.0 if math.isnan(s) else s for s in stds]  # error bar drawing only; CSV keeps NaN
            ax.bar(xs, means, width=width, yerr=stds, capsize=2, label=name, color=COLORS.get(name))
        ax.axhline(1.0, color="gray", linewidth=0.6, linestyle=":")
        ax.axhline(0.0, color="gray", linewidth=0.6)
        ax.set_xticks(layers)
        ax.set_xlabel("layer (1 = input)")
        ax.set_ylabel("correlation with BP")
        lowest = min((float(r["corr_mean"]) - (0.0 if math.isnan(float(r["corr_std"])) else float(r["corr_std"]))
                      for r in rows if not math.isnan(float(r["corr_mean"]))), default=0.0)
        ax.set_ylim(min(-0.25, lowest - 0.05), 1.08)
        ax.set_title(f"{dtype}, {form} form")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def acceptance(summary: Sequence[Dict[str, object]], rows: Sequence[Dict[str, object]]) -> List[str]:
    """The issue's checks of Fig. 2B, as human-readable lines (PASS/FAIL)."""
    lines = []

    def layers_of(variant, dtype, form):
        return sorted((r for r in summary if r["variant"] == variant and r["dtype"] == dtype and r["form"] == form),
                      key=lambda r: r["layer"])

    gn = layers_of("GAIT-N", "float64", "paper")
    if gn:
        worst = min(float(r["corr_median"]) for r in gn)
        lines.append(f"{'PASS' if worst >= 0.9999 else 'FAIL'} float64 paper GAIT-N median >= 0.9999 at every "
                     f"layer (lowest layer median {worst:.8f})")
    sn = [r for r in rows if r["variant"] == "GAIT-SN" and r["dtype"] == "float64" and r["form"] == "paper"]
    if sn:
        worst = min(float(r["corr"]) for r in sn)  # NaN makes min() order-dependent: check explicitly
        ok = all(float(r["corr"]) >= 0.9999 for r in sn)
        lines.append(f"{'PASS' if ok else 'FAIL'} float64 paper GAIT-SN every net >= 0.9999 at every layer "
                     f"(lowest {worst:.8f})")
    g = layers_of("GAIT", "float64", "paper")
    if g:
        lines.append("info float64 paper GAIT mean by layer: " + ", ".join(f"{float(r['corr_mean']):.3f}" for r in g))
    diff32 = [r for r in summary if r["dtype"] == "float32" and r["form"] == "difference"]
    if diff32:
        worst = min(float(r["corr_min"]) for r in diff32)
        ok = all(float(r["corr_min"]) >= 0.999 and int(r["n_nan"]) == 0 for r in diff32)
        lines.append(f"{'PASS' if ok else 'FAIL'} float32 difference form >= 0.999 at every layer, every "
                     f"GAIT-prop variant and net (lowest {worst:.6f})")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.correlation",
        description="Fig. 2B: per-layer correlation with backprop on untrained orthogonal networks.",
    )
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                        help="folder holding cifar-10-batches-py/ (as the CLI's --data.data_dir)")
    parser.add_argument("--out", default="results", help="output folder")
    parser.add_argument("--nets", type=int, default=10, help="random networks per variant")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0, help="network j uses seed + j; the batch order uses seed")
    parser.add_argument("--dtypes", default="float64,float32", help="comma-separated: float64, float32")
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 networks, batch 32, width 64, depth 3")
    parser.add_argument("--no-verify-checksums", action="store_true", help="for generated (test) datasets")
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG from OUT/fig2b_summary.csv")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    try:
        if args.plot_only:
            path = out / "fig2b_summary.csv"
            if not path.is_file():
                raise ValueError(f"--plot-only: {path} not found")
            close_figure(plot_correlation(read_csv(path), out / "fig2b_correlation.png"))
            return 0
        dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
        bad = [d for d in dtypes if d not in DTYPES]
        if bad or not dtypes:
            raise ValueError(f"--dtypes: unknown {bad or args.dtypes!r}; choose from {', '.join(DTYPES)}")
        if args.quick:
            args.nets, args.batch_size, args.width, args.depth = min(args.nets, 2), min(args.batch_size, 32), 64, 3
        data_dir = check_data_dir(args.data_dir)
        batches = load_batches(data_dir, nets=args.nets, batch_size=args.batch_size, seed=args.seed,
                               verify_checksums=not args.no_verify_checksums)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    rows = run_correlation(batches, seed=args.seed, dtypes=dtypes, width=args.width, depth=args.depth)
    summary = summarize(rows)
    write_csv(out / "fig2b_correlation.csv", rows, LONG_COLUMNS)
    write_csv(out / "fig2b_summary.csv", summary, SUMMARY_COLUMNS)
    close_figure(plot_correlation(summary, out / "fig2b_correlation.png",
                                  title=f"Correlation with BP at init: {args.nets} networks, batch {args.batch_size}"))
    print(f"wrote {out / 'fig2b_correlation.csv'}, {out / 'fig2b_summary.csv'}, {out / 'fig2b_correlation.png'} "
          f"in {time.perf_counter() - start:.0f} s")
    for line in acceptance(summary, rows):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
