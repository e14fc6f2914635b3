"""``python -m experiments.correlation``: the paper's Fig. 2B.

Per layer, how well each rule's weight update agrees with backprop's on untrained
orthogonal ``3072 -> 6 x 500`` networks (``docs/gait-prop.md``, "The correlation metric"):

* variants: the regimes of ``conf/`` as :func:`~experiments.common.build_regime` builds
  them: GAIT (``gait``: leaky ReLU, fixed gamma), GAIT-N (``gait_norm``: normalized
  targets), GAIT-S (``gait_smooth``: SL-ReLU, fixed gamma), GAIT-SN (``gait_smooth_norm``);
  TP (``tp``, exact inverse) and FA (``fa`` on the same square-output network, feedback
  seed ``seed + j``) as references. Their hyperparameters are their configs';
* networks: ``--nets`` (10); network ``j`` is the network that ``fit`` starts from under
  ``--seed_everything seed + j`` (orthogonal weights, zero biases, square output layer).
  Every variant of network ``j`` has the very same weights (only the activation differs);
* data: network ``j`` sees batch ``j`` of CIFAR-10's training set in a fixed random
  order (``torch.randperm`` under seed ``seed``): images ``perm[j*B : (j+1)*B]``, pixels
  divided by 255 as in training, ``B = --batch-size`` (256);
* regimes: float64 and float32 (the rule converted with ``.to(dtype)``, as ``fit``'s
  precision does), each with the paper's form (``target_mode="absolute"``) and the
  difference form (``"difference"``); TP and FA have no form (``form="-"``);
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
import yaml
from torch import Tensor

from lightning_gait.diagnostics import backprop_gradients, gradient_alignment
from lightning_gait.rules import FeedbackAlignment, GAITProp, TargetProp
from lightning_gait.targets import NonFiniteError

from .common import DEFAULT_DATA_DIR, build_regime, check_data_dir, close_figure, label, model_args, net_args, stack_args

__all__ = [
    "Variant",
    "VARIANTS",
    "REFERENCES",
    "VARIANTS_FILE",
    "load_variants",
    "FORMS",
    "DTYPES",
    "load_batches",
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
#: the CSVs' short names of the rules
RULE_NAMES = {GAITProp: "gait", TargetProp: "tp", FeedbackAlignment: "fa"}

LONG_COLUMNS = ("variant", "rule", "activation", "gamma_mode", "dtype", "form", "net", "batch", "layer",
                "corr", "cos", "angle", "norm_ratio", "status")
SUMMARY_COLUMNS = ("variant", "dtype", "form", "layer", "n_nets", "n_nan", "corr_mean", "corr_std", "corr_median",
                   "corr_min", "corr_max", "angle_mean", "angle_std")


@dataclass(frozen=True)
class Variant:
    """One rule of the figure: a regime of ``conf/`` and the files of ``conf/variants/`` stacked on it
    to put it on the figure's network (``variants``, as ``fit``'s further ``--config``).

    ``target_forms``: measured in both target forms (GAIT-prop); ``seed_arg``: the rule's
    argument that takes the network's seed (FA's ``feedback_seed``).
    """

    regime: str
    variants: Tuple[str, ...] = ()
    target_forms: bool = True
    seed_arg: Optional[str] = None

    @property
    def name(self) -> str:
        return label(self.regime)


#: the figure's rules as config stacks
VARIANTS_FILE = Path(__file__).resolve().with_name("correlation.yaml")


def load_variants(path: Path = VARIANTS_FILE) -> Tuple[Tuple[Variant, ...], Tuple[Variant, ...]]:
    """``(variants, references)`` of ``path``: GAIT-prop's rules (both target forms) and the others."""
    spec = yaml.safe_load(path.read_text())

    def read(entry: dict, target_forms: bool) -> Variant:
        stack = list(entry["stack"])
        return Variant(stack[0], tuple(stack[1:]), target_forms=target_forms, seed_arg=entry.get("seed_arg"))

    return tuple(read(e, True) for e in spec["variants"]), tuple(read(e, False) for e in spec["references"])


VARIANTS, REFERENCES = load_variants()


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


def build_variant(variant: Variant, *, form: Optional[str] = None, seed: int = 0, width: Optional[int] = None,
                  depth: Optional[int] = None):
    """The rule of ``variant`` on the network ``fit`` draws under ``--seed_everything seed``.

    ``form`` is the target form of a GAIT-prop variant (one of :data:`FORMS`); ``width``
    and ``depth`` override the config's network (``None``: the config's). The rule comes
    in float32, as the CLI builds it; ``.to(dtype)`` converts it.
    """
    overrides = stack_args(variant.variants) + net_args(width=width, depth=depth)
    if variant.target_forms:
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        overrides += model_args(target_mode=form)
    if variant.seed_arg is not None:
        overrides += model_args(**{variant.seed_arg: seed})
    return build_regime(variant.regime, *overrides, seed=seed)


def describe(rule) -> Dict[str, str]:
    """The CSV's ``rule``, ``activation`` and ``gamma_mode`` of a built rule."""
    gamma_mode = "-"
    if isinstance(rule, GAITProp):
        gamma_mode = "normalized" if rule.normalize else "fixed"
    return {"rule": RULE_NAMES[type(rule)], "activation": rule.net.activation_name, "gamma_mode": gamma_mode}


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
    width: Optional[int] = None,
    depth: Optional[int] = None,
) -> List[Dict[str, object]]:
    """Every (variant, dtype, form) on network ``j`` and its batch; long-format rows.

    Backprop's gradient is computed once per (activation, dtype) and shared.
    """
    images, labels = batch
    jobs = [(v, f) for v in variants for f in forms] + [(v, None) for v in references]
    built = {job: build_variant(job[0], form=job[1], seed=seed + j, width=width, depth=depth) for job in jobs}
    by_activation: Dict[str, list] = {}
    for job, rule in built.items():
        by_activation.setdefault(rule.net.activation_name, []).append(job)
    rows: List[Dict[str, object]] = []
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        x = to_inputs(images, dtype)
        for activation in sorted(by_activation):
            reference = None
            for variant, form in by_activation[activation]:
                rule = copy.deepcopy(built[(variant, form)]).to(dtype)
                rule.reset_rule_state()  # rule-owned random draws in the measured dtype
                if reference is None:  # every variant of this activation has the same weights
                    reference = backprop_gradients(rule.net, x, labels, loss_reduction="sum")
                per_layer, status = alignment_rows(rule, x, labels, reference)
                for i, values in enumerate(per_layer):
                    rows.append({
                        "variant": variant.name, **describe(rule), "dtype": dtype_name, "form": FORM_NAMES[form],
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
    width: Optional[int] = None,
    depth: Optional[int] = None,
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
    """The checks of Fig. 2B against the paper's claims, as human-readable lines (PASS/FAIL)."""
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
    parser.add_argument("--width", type=int, default=None, help="network width (default: the configs')")
    parser.add_argument("--depth", type=int, default=None, help="number of hidden layers (default: the configs')")
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
