"""``python -m experiments.orthogonality``: correlation with BP as weights leave orthogonality.

GAIT-prop's update equals backprop's when every inverted layer is orthogonal
(``W^-1 = W^T``, ``docs/gait-prop.md``, "Why it equals BP"); training keeps the weights
near orthogonal only through the penalty ``ortho_weight * ||W W^T - I||_F^2``. This
study measures what a given distance from orthogonality costs, with controlled
perturbations of untrained orthogonal networks:

* network ``j`` (``--nets``, 5) is the orthogonal network of Fig. 2B (the one ``fit``
  draws under ``--seed_everything seed + j``) with its batch ``j`` of 256 CIFAR-10
  training images (same order as Fig. 2B);
* every square layer (2..L) gets ``W -> W + s * E``, ``E`` with i.i.d. ``N(0, 1/n)``
  entries (``n`` = 500, the layer's width), one fixed draw ``E`` per network and layer
  (seed ``10_000 + seed + j``) scaled by each ``s`` in ``--scales``, so that only the size
  of the perturbation changes along a curve; layer 1 (not square, never inverted) is
  left as it is;
* x: ``||W W^T - I||_F / sqrt(n)`` averaged over the square layers
  (:func:`lightning_gait.diagnostics.orthogonality_deviation`; about ``sqrt(2) (s + s^2)``);
* y: per-layer Pearson correlation of the GAIT-N and GAIT-SN updates (regimes
  ``gait_norm`` and ``gait_smooth_norm``, built by
  :func:`~experiments.correlation.build_variant`, float64, the paper's form by default)
  with backprop's gradient on the perturbed network
  (:func:`lightning_gait.diagnostics.gradient_alignment`).

Writes ``orthogonality_drift.csv`` (one row per variant, form, scale, network and layer)
and ``orthogonality_drift.png`` (correlation and ``1 - correlation`` against the
deviation, one line per layer, mean over networks with min-max error bars) into ``--out``.
"""
from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from lightning_gait.diagnostics import backprop_gradients, orthogonality_deviation

from .common import DEFAULT_DATA_DIR, check_data_dir, close_figure
from .correlation import (
    FORM_NAMES,
    VARIANTS,
    alignment_rows,
    build_variant,
    load_batches,
    read_csv,
    to_inputs,
    write_csv,
)

__all__ = ["DEFAULT_SCALES", "perturb", "measure_drift", "run_drift", "plot_drift", "main"]

DEFAULT_SCALES = (0.0, 0.003, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5)
DRIFT_COLUMNS = ("variant", "form", "dtype", "scale", "net", "layer", "ortho_layer", "ortho_mean", "corr", "angle",
                 "norm_ratio", "status")
#: the variants measured: GAIT-N and GAIT-SN
DRIFT_VARIANTS = tuple(v for v in VARIANTS if v.regime in ("gait_norm", "gait_smooth_norm"))


@torch.no_grad()
def perturb(net, directions: Sequence[Optional[Tensor]], scale: float):
    """A copy of ``net`` whose square layers' weights are ``W + scale * E`` (``directions[i]`` = E)."""
    other = copy.deepcopy(net)
    for i, e in enumerate(directions):
        if e is not None:
            other.layers[i].weight.add_(scale * e.to(other.layers[i].weight))
    return other


def draw_directions(net, seed: int) -> List[Optional[Tensor]]:
    """For each square layer, ``E`` with i.i.d. ``N(0, 1/n)`` entries (float64); ``None`` elsewhere."""
    generator = torch.Generator().manual_seed(seed)
    out: List[Optional[Tensor]] = []
    for i, layer in enumerate(net.layers):
        if i in net.square_layer_indices:
            n = layer.weight.shape[0]
            out.append(torch.randn(layer.weight.shape, generator=generator, dtype=torch.float64) / math.sqrt(n))
        else:
            out.append(None)
    return out


def measure_drift(
    j: int,
    batch: Tuple[Tensor, Tensor],
    *,
    scales: Sequence[float] = DEFAULT_SCALES,
    forms: Sequence[str] = ("absolute",),
    seed: int = 0,
    width: Optional[int] = None,
    depth: Optional[int] = None,
) -> List[Dict[str, object]]:
    """Rows of network ``j`` at every scale, for GAIT-N and GAIT-SN, in float64."""
    images, labels = batch
    x = to_inputs(images, torch.float64)
    built = {(variant, form): build_variant(variant, form=form, seed=seed + j, width=width, depth=depth).double()
             for variant in DRIFT_VARIANTS for form in forms}
    base = next(iter(built.values())).net  # every variant of network j has these weights
    directions = draw_directions(base, 10_000 + seed + j)
    rows: List[Dict[str, object]] = []
    for scale in scales:
        perturbed = perturb(base, directions, scale)
        ortho = {i: orthogonality_deviation(perturbed.layers[i].weight) for i in perturbed.square_layer_indices}
        ortho_mean = statistics.fmean(ortho.values())
        references: Dict[str, list] = {}  # per activation
        for (variant, form), template in built.items():
            rule = copy.deepcopy(template)
            rule.net.load_state_dict(perturbed.state_dict())
            activation = rule.net.activation_name
            if activation not in references:
                references[activation] = backprop_gradients(rule.net, x, labels)
            per_layer, status = alignment_rows(rule, x, labels, references[activation])
            for i, values in enumerate(per_layer):
                rows.append({
                    "variant": variant.name, "form": FORM_NAMES[form], "dtype": "float64", "scale": scale,
                    "net": j, "layer": i + 1, "ortho_layer": ortho.get(i, math.nan), "ortho_mean": ortho_mean,
                    "corr": values["corr"], "angle": values["angle"], "norm_ratio": values["norm_ratio"],
                    "status": status,
                })
    return rows


def run_drift(batches, *, scales=DEFAULT_SCALES, forms=("absolute",), seed: int = 0, width: Optional[int] = None,
              depth: Optional[int] = None, log=print) -> List[Dict[str, object]]:
    rows: List[Dict[str, object]] = []
    for j, batch in enumerate(batches):
        start = time.perf_counter()
        rows += measure_drift(j, batch, scales=scales, forms=forms, seed=seed, width=width, depth=depth)
        if log:
            log(f"network {j + 1}/{len(batches)}: {time.perf_counter() - start:.1f} s")
    return rows


def drift_curves(rows: Sequence[Dict[str, object]], variant: str, form: str = "paper"):
    """``layer -> (x, mean corr, min corr, max corr)`` over scales (x: mean deviation over networks)."""
    curves = {}
    selected = [r for r in rows if r["variant"] == variant and r["form"] == form]
    for layer in sorted({int(r["layer"]) for r in selected}):
        xs, means, lows, highs = [], [], [], []
        for scale in sorted({float(r["scale"]) for r in selected}):
            group = [r for r in selected if int(r["layer"]) == layer and float(r["scale"]) == scale]
            corr = [float(r["corr"]) for r in group]
            xs.append(statistics.fmean(float(r["ortho_mean"]) for r in group))
            # a NaN (no direction) propagates into the mean: it is shown as a gap, not a number
            means.append(statistics.fmean(corr) if not any(math.isnan(c) for c in corr) else math.nan)
            finite = [c for c in corr if not math.isnan(c)]
            lows.append(min(finite) if finite else math.nan)
            highs.append(max(finite) if finite else math.nan)
        curves[layer] = (xs, means, lows, highs)
    return curves


def read_trained(folder: Path) -> Dict[str, List[Dict[str, object]]]:
    """``regime -> rows`` of ``training --track-alignment`` runs (``ortho_dev``, ``bp_corr_layer_k``):
    ``folder/{regime}_s{seed}/metrics.csv``, the lowest seed of each regime."""
    out = {}
    for regime in (v.regime for v in DRIFT_VARIANTS):
        found = sorted(Path(folder).glob(f"{regime}_s*/metrics.csv"))
        path = found[0] if found else None
        if path is not None:
            rows = read_csv(path)
            if rows and "ortho_dev" in rows[0]:
                out[regime] = rows
    return out


def plot_drift(rows: Sequence[Dict[str, object]], path: Optional[Path] = None, *, form: str = "paper",
               trained: Optional[Dict[str, List[Dict[str, object]]]] = None):
    """Correlation (top) and ``1 - correlation`` (bottom, log-log) against the deviation, per layer.

    ``trained`` (from :func:`read_trained`): networks measured during training, drawn as
    crosses at their own ``ortho_dev`` (the untrained network, epoch 0, left out).
    """
    import matplotlib.pyplot as plt

    variants = [v for v in DRIFT_VARIANTS if any(r["variant"] == v.name for r in rows)]
    if not variants:
        raise ValueError("no GAIT-N / GAIT-SN rows to plot")
    fig, axes = plt.subplots(2, len(variants), figsize=(5.6 * len(variants), 7.0), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for col, variant in enumerate(variants):
        name = variant.name
        curves = drift_curves(rows, name, form)
        layers = sorted(curves)
        for k, layer in enumerate(layers):
            xs, means, lows, highs = curves[layer]
            keep = [i for i, x in enumerate(xs) if x > 0]  # the log axis has no 0 (scale 0 is in the CSV)
            color = cmap(k / max(len(layers) - 1, 1))
            xk = [xs[i] for i in keep]
            mk = [means[i] for i in keep]
            err = [[mk[n] - lows[i] for n, i in enumerate(keep)], [highs[i] - mk[n] for n, i in enumerate(keep)]]
            axes[0, col].errorbar(xk, mk, yerr=err, marker="o", markersize=3, capsize=2, color=color,
                                  label=f"layer {layer}")
            one_minus = [max(1.0 - m, 1e-17) if not math.isnan(m) else math.nan for m in mk]
            axes[1, col].plot(xk, one_minus, marker="o", markersize=3, color=color, label=f"layer {layer}")
            for r in (trained or {}).get(variant.regime, []):
                value = r.get(f"bp_corr_layer_{layer}")
                if float(r["epoch"]) > 0 and isinstance(value, float):
                    axes[0, col].plot([r["ortho_dev"]], [value], marker="x", color=color, linestyle="none")
                    axes[1, col].plot([r["ortho_dev"]], [max(1.0 - value, 1e-17)], marker="x", color=color,
                                      linestyle="none")
        axes[0, col].set_xscale("log")
        axes[0, col].set_ylabel("correlation with BP")
        axes[0, col].set_title(f"{name}, float64, {form} form")
        axes[1, col].set_xscale("log")
        axes[1, col].set_yscale("log")
        axes[1, col].set_ylabel("1 - correlation (floored at 1e-17)")
        for row in range(2):
            axes[row, col].set_xlabel(r"$\|W W^T - I\|_F / \sqrt{n}$ (mean over square layers)")
            axes[row, col].grid(alpha=0.3, which="both")
    axes[0, 0].legend(fontsize=7)
    if trained:
        fig.suptitle("dots: W + s N(0, 1/n) on untrained networks (mean, min-max over networks); "
                     "crosses: the network during training", fontsize=9)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.orthogonality",
        description="Correlation of GAIT-N / GAIT-SN with BP as the weights drift from orthogonality.",
    )
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                        help="folder holding cifar-10-batches-py/ (as the CLI's --data.data_dir)")
    parser.add_argument("--out", default="results", help="output folder")
    parser.add_argument("--nets", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scales", default=",".join(str(s) for s in DEFAULT_SCALES),
                        help="comma-separated perturbation sizes s (W -> W + s N(0, 1/n))")
    parser.add_argument("--forms", default="paper", help="comma-separated: paper, difference")
    parser.add_argument("--width", type=int, default=None, help="network width (default: the configs')")
    parser.add_argument("--depth", type=int, default=None, help="number of hidden layers (default: the configs')")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 networks, batch 32, width 64, depth 3")
    parser.add_argument("--no-verify-checksums", action="store_true", help="for generated (test) datasets")
    parser.add_argument("--trained", default=None,
                        help="folder of `training --track-alignment` CSVs to overlay (default OUT/training_alignment)")
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG from OUT/orthogonality_drift.csv")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    args.trained = args.trained or str(out / "training_alignment")
    form_codes = {"paper": "absolute", "difference": "difference"}
    try:
        if args.plot_only:
            path = out / "orthogonality_drift.csv"
            if not path.is_file():
                raise ValueError(f"--plot-only: {path} not found")
            close_figure(plot_drift(read_csv(path), out / "orthogonality_drift.png",
                                    trained=read_trained(Path(args.trained))))
            return 0
        try:
            scales = [float(s) for s in args.scales.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"--scales must be comma-separated numbers, got {args.scales!r}") from None
        if not scales or any(s < 0 or math.isnan(s) for s in scales):
            raise ValueError(f"--scales must be non-negative numbers, got {args.scales!r}")
        forms = [f.strip() for f in args.forms.split(",") if f.strip()]
        if not forms or any(f not in form_codes for f in forms):
            raise ValueError(f"--forms: choose from paper, difference; got {args.forms!r}")
        if args.quick:
            args.nets, args.batch_size, args.width, args.depth = min(args.nets, 2), min(args.batch_size, 32), 64, 3
        data_dir = check_data_dir(args.data_dir)
        batches = load_batches(data_dir, nets=args.nets, batch_size=args.batch_size, seed=args.seed,
                               verify_checksums=not args.no_verify_checksums)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    rows = run_drift(batches, scales=scales, forms=[form_codes[f] for f in forms], seed=args.seed,
                     width=args.width, depth=args.depth)
    write_csv(out / "orthogonality_drift.csv", rows, DRIFT_COLUMNS)
    close_figure(plot_drift(rows, out / "orthogonality_drift.png", form=forms[0],
                            trained=read_trained(Path(args.trained))))
    print(f"wrote {out / 'orthogonality_drift.csv'} and {out / 'orthogonality_drift.png'} "
          f"in {time.perf_counter() - start:.0f} s")
    for name in [v.name for v in DRIFT_VARIANTS]:
        for layer, (xs, means, lows, _) in sorted(drift_curves(rows, name, forms[0]).items()):
            print(f"{name} layer {layer}: " + ", ".join(f"x={x:.3g}: {m:.6f}" for x, m in zip(xs, means)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
