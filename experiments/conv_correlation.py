"""``python -m experiments.conv_correlation``: Fig. 2B for the invertible CNN.

Per layer, how well GAIT-prop's weight update agrees with backprop's on untrained
orthogonal :class:`~lightning_gait.InvertibleCNN` networks (``docs/gait-prop.md``,
"The correlation metric"):

* networks: ``--nets`` (10); network ``j`` is drawn under ``torch.manual_seed(j)``
  (orthogonal matrices, zero biases, the layout of ``conf/conv/*.yaml`` with
  ``--channels``), and its leaky-ReLU and SL-ReLU, float64 and float32 versions have the
  very same weights (drawn in float32, cast);
* data: network ``j`` sees batch ``j`` of CIFAR-10's 50 000 training images in a random
  order drawn under seed ``--seed`` (0): images ``perm[j*B : (j+1)*B]``, ``B`` =
  ``--batch-size`` (256), pixels divided by 255 as in training;
* variants (config stacks in ``experiments/conv_correlation.yaml``; the rule's ``target_mode``:
  "paper" is ``"absolute"``):

  - ``GAIT-N``: leaky ReLU, normalized targets, eta 1e-7, float64, paper form;
  - ``GAIT-SN``: SL-ReLU, normalized targets, eta 1e-7, float64, paper form;
  - ``GAIT-N float32 difference``: leaky ReLU, eta 1e-7, float32, difference form;
  - ``GAIT``: leaky ReLU, fixed gamma 1e-3, float64, paper form;

* reference: backprop's gradient of the same summed cross-entropy on the same network, in
  the same dtype, on the same batch;
* metric: :func:`lightning_gait.diagnostics.gradient_alignment` of the flattened weight
  updates (biases excluded), in float64: Pearson correlation, cosine, angle, norm ratio.
  A variant whose targets turn non-finite gets NaN and its ``status`` says so.

Writes ``--out`` (``results/cnn_fig2b``): ``fig2b_correlation.csv`` (one row per variant,
network and layer), ``fig2b_summary.csv`` (per variant and layer: median, min, max and
mean over the networks) and ``fig2b_correlation.png``; prints the median and minimum
per layer. Run from the repository root.
"""
from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import yaml

from lightning_gait import GAITProp, InvertibleCNN
from lightning_gait.diagnostics import backprop_gradients, gradient_alignment
from lightning_gait.targets import NonFiniteError

from .common import resolved_config, stack_args
from .correlation import load_batches

__all__ = ["Variant", "VARIANTS_FILE", "load_variants", "variant_from_stack", "load_batches", "make_network", "measure", "summarize", "plot", "main"]

DTYPES = {"float64": torch.float64, "float32": torch.float32}
COLUMNS = ("variant", "activation", "gamma_mode", "dtype", "form", "net", "layer", "layer_type",
           "corr", "cos", "angle", "norm_ratio", "status")
SUMMARY_COLUMNS = ("variant", "layer", "layer_type", "n_nets", "n_nan", "corr_median", "corr_min", "corr_max",
                   "corr_mean", "angle_median")


@dataclass(frozen=True)
class Variant:
    name: str
    activation: str
    dtype: str
    form: str  # GAITProp's target_mode
    normalize: bool
    eta: float = 1e-7
    gamma: float = 1e-3

    @property
    def form_name(self) -> str:
        return "paper" if self.form == "absolute" else self.form


#: the variants' config stacks (``experiments/conv_correlation.yaml``)
VARIANTS_FILE = Path(__file__).resolve().with_name("conv_correlation.yaml")
PRECISION_DTYPES = {"64-true": "float64", "64": "float64", "32-true": "float32", "32": "float32"}


def variant_from_stack(name: str, stack: Sequence[str]) -> Variant:
    """The variant that the config stack ``stack`` resolves to (its GAIT-prop rule's settings)."""
    config = yaml.safe_load(resolved_config(stack_args(stack)))
    rule = config["model"]["init_args"]
    precision = str(config["trainer"]["precision"])
    if config["model"]["class_path"] != "lightning_gait.GAITProp" or precision not in PRECISION_DTYPES:
        raise ValueError(f"{name}: {stack} is not a GAIT-prop rule in float32 or float64")
    return Variant(name, rule["net"]["init_args"]["activation"], PRECISION_DTYPES[precision], rule["target_mode"],
                   bool(rule["normalize"]), float(rule["eta"]), float(rule["gamma"]))


def load_variants(path: Path = VARIANTS_FILE) -> Tuple[Variant, ...]:
    """Every variant of ``path``, in its order."""
    return tuple(variant_from_stack(name, stack) for name, stack in yaml.safe_load(path.read_text())["variants"].items())


def make_network(seed: int, activation: str, dtype: torch.dtype, *, channels: int) -> InvertibleCNN:
    """Network ``seed``: the same weights for every activation and dtype (RNG state restored)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = InvertibleCNN((3, 32, 32), 10, channels=channels, activation=activation)
    return net.to(dtype)


def _layer_types(net: InvertibleCNN) -> List[str]:
    return [type(layer).__name__ for layer in net.layers]


def measure(j: int, images: torch.Tensor, labels: torch.Tensor, *, channels: int,
            variants: Sequence[Variant]) -> List[Dict[str, object]]:
    """Every variant's per-layer alignment with backprop on network ``j`` and its batch."""
    rows: List[Dict[str, object]] = []
    references: Dict[Tuple[str, str], list] = {}
    for v in variants:
        dtype = DTYPES[v.dtype]
        net = make_network(j, v.activation, dtype, channels=channels)
        x = images.to(dtype) / 255.0
        key = (v.activation, v.dtype)
        if key not in references:
            references[key] = backprop_gradients(net, x, labels)
        rule = GAITProp(net, normalize=v.normalize, eta=v.eta, gamma=v.gamma, target_mode=v.form)
        status = "ok"
        try:
            updates = rule.local_gradients(x, labels)
        except NonFiniteError as err:
            status, updates = f"non-finite: {err}", None
        for i, layer_type in enumerate(_layer_types(net)):
            if updates is None:
                values = {"corr": math.nan, "cos": math.nan, "angle": math.nan, "norm_ratio": math.nan}
            else:
                values = gradient_alignment(updates[i][0], references[key][i][0])
            rows.append({"variant": v.name, "activation": v.activation,
                         "gamma_mode": "normalized" if v.normalize else "fixed", "dtype": v.dtype,
                         "form": v.form_name, "net": j, "layer": i + 1, "layer_type": layer_type,
                         **values, "status": status})
    return rows


def summarize(rows: Sequence[Dict[str, object]]) -> List[Dict[str, object]]:
    """Per variant and layer: median, min, max and mean correlation over the networks (NaN counted)."""
    groups: Dict[Tuple[str, int], List[Dict[str, object]]] = {}
    for row in rows:
        groups.setdefault((row["variant"], row["layer"]), []).append(row)
    out = []
    for (variant, layer), group in groups.items():
        corr = [float(r["corr"]) for r in group if not math.isnan(float(r["corr"]))]
        angle = [float(r["angle"]) for r in group if not math.isnan(float(r["angle"]))]
        nan = math.nan
        out.append({"variant": variant, "layer": layer, "layer_type": group[0]["layer_type"],
                    "n_nets": len(group), "n_nan": len(group) - len(corr),
                    "corr_median": statistics.median(corr) if corr else nan, "corr_min": min(corr, default=nan),
                    "corr_max": max(corr, default=nan), "corr_mean": statistics.fmean(corr) if corr else nan,
                    "angle_median": statistics.median(angle) if angle else nan})
    return out


def plot(summary: Sequence[Dict[str, object]], path: Path, *, title: str) -> None:
    """Left: median correlation per layer, bars from min to max; right: 1 - median on a log axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(r["variant"] for r in summary))
    layers = sorted({int(r["layer"]) for r in summary})
    types = {int(r["layer"]): r["layer_type"] for r in summary}
    fig, (ax, ax_log) = plt.subplots(1, 2, figsize=(13, 4.6))
    width = 0.8 / len(variants)
    for k, name in enumerate(variants):
        by_layer = {int(r["layer"]): r for r in summary if r["variant"] == name}
        xs = [layer + (k - (len(variants) - 1) / 2) * width for layer in layers]
        med = [by_layer[layer]["corr_median"] for layer in layers]
        low = [m - by_layer[layer]["corr_min"] for m, layer in zip(med, layers)]
        high = [by_layer[layer]["corr_max"] - m for m, layer in zip(med, layers)]
        ax.errorbar(xs, med, yerr=[low, high], fmt="o", ms=4, capsize=2, label=name)
        ax_log.plot(layers, [max(1.0 - m, 1e-16) for m in med], "o-", ms=4, label=name)
    labels = [f"{layer}\n{types[layer].replace('Conv1x1', '1x1').replace('PatchConv', 'patch')}" for layer in layers]
    for a in (ax, ax_log):
        a.set_xticks(layers)
        a.set_xticklabels(labels, fontsize=8)
        a.set_xlabel("layer")
        a.grid(alpha=0.3)
    ax.set_ylabel("Pearson correlation with BP (median, min-max)")
    ax_log.set_yscale("log")
    ax_log.set_ylabel("1 - median correlation")
    ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _write_csv(path: Path, rows: Sequence[Dict[str, object]], columns: Sequence[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.12g}" if isinstance(v, float) else v) for k, v in row.items()})


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].strip("`: "))
    parser.add_argument("--data-dir", default="../shared/data", help="folder holding cifar-10-batches-py/")
    parser.add_argument("--out", type=Path, default=Path("results/cnn_fig2b"))
    parser.add_argument("--nets", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0, help="seed of the data order")
    parser.add_argument("--channels", type=int, default=32, help="InvertibleCNN channels (conf/conv uses 32)")
    parser.add_argument("--no-verify-checksums", action="store_true")
    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir).expanduser()
    if not (data_dir / "cifar-10-batches-py").is_dir():
        parser.error(f"--data-dir {args.data_dir!r} holds no cifar-10-batches-py/ folder")
    if args.nets < 1 or args.batch_size < 1:
        parser.error("--nets and --batch-size must be >= 1")
    args.out.mkdir(parents=True, exist_ok=True)
    batches = load_batches(data_dir, nets=args.nets, batch_size=args.batch_size, seed=args.seed,
                           verify_checksums=not args.no_verify_checksums)
    variants = load_variants()
    rows: List[Dict[str, object]] = []
    start = time.perf_counter()
    for j, (images, labels) in enumerate(batches):
        rows += measure(j, images, labels, channels=args.channels, variants=variants)
        print(f"network {j + 1}/{args.nets} measured ({time.perf_counter() - start:.0f} s)", flush=True)
    summary = summarize(rows)
    _write_csv(args.out / "fig2b_correlation.csv", rows, COLUMNS)
    _write_csv(args.out / "fig2b_summary.csv", summary, SUMMARY_COLUMNS)
    net = make_network(0, "leaky_relu", torch.float32, channels=args.channels)
    title = (f"InvertibleCNN (channels {args.channels}, {sum(p.numel() for p in net.parameters()):,} parameters) "
             f"at orthogonal init: {args.nets} networks, batch {args.batch_size} of CIFAR-10")
    plot(summary, args.out / "fig2b_correlation.png", title=title)
    for variant in dict.fromkeys(r["variant"] for r in summary):
        print(f"\n{variant}: layer, median, min Pearson correlation with backprop")
        for r in (r for r in summary if r["variant"] == variant):
            print(f"  {r['layer']} {r['layer_type']:<10} {r['corr_median']:.10f} {r['corr_min']:.10f}")
    print(f"\nwrote {args.out}/fig2b_correlation.csv, fig2b_summary.csv, fig2b_correlation.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
