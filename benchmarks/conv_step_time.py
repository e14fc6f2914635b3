"""``python -m benchmarks.conv_step_time``: GAIT-N against backprop on the invertible CNN.

The step is the one :mod:`benchmarks.bench` times (the rule's ``local_gradients`` plus the
orthogonality surrogate's gradient when the config has a penalty, then one Adam step),
for the regimes of ``conf/conv/`` as ``fit`` builds them (default network: 8 layers,
362,624 parameters), on one batch of uniform noise shaped ``(batch, 3, 32, 32)``. The
variants are timed round-robin within each repetition, the order rotating, so that load
from other processes hits all of them alike; a ratio is the median over repetitions of
``variant time / backprop time`` in the same repetition and dtype.

Variants: ``conv_bp`` (``conf/conv/bp.yaml``, no penalty), ``conv_gait_n``
(``conf/conv/gait_norm.yaml``: paper form, penalty 100), ``conv_gait_n_diff`` (the same in
the difference form). Run from the repository root::

    python -m benchmarks.conv_step_time                      # float64 and float32
    python -m benchmarks.conv_step_time --dtypes float32 --csv out.csv
"""
from __future__ import annotations

import argparse
import csv
import platform
import statistics
import time
from typing import Dict, List, Optional, Sequence

import torch

from experiments.common import model_args

from .step_time import quantiles
from .variants import StepRunner, Variant, sync

__all__ = ["CONV_VARIANTS", "time_conv", "main"]

CONV_VARIANTS: Dict[str, Variant] = {
    v.name: v
    for v in [
        Variant("conv_bp", "conv/bp", baseline="conv_bp"),
        Variant("conv_gait_n", "conv/gait_norm", baseline="conv_bp"),
        Variant("conv_gait_n_diff", "conv/gait_norm", tuple(model_args(target_mode="difference")),
                baseline="conv_bp"),
    ]
}


def time_conv(names: Sequence[str], *, dtype: torch.dtype, device: torch.device, batch: int, repeats: int,
              warmup: int, budget_s: float, seed: int = 0) -> List[dict]:
    """Round-robin step times of the variants ``names`` in ``dtype``; one row per variant."""
    runners = {name: StepRunner(CONV_VARIANTS[name], width=None, depth=None, batch=batch, dtype=dtype,
                                device=device, seed=seed) for name in names}

    def timed(name: str) -> float:
        sync(device)
        start = time.perf_counter()
        runners[name].step()
        sync(device)
        return time.perf_counter() - start

    for _ in range(warmup):
        for name in names:
            timed(name)
    times: Dict[str, List[float]] = {name: [] for name in names}
    start = time.perf_counter()
    for rep in range(repeats):
        order = list(names[rep % len(names):]) + list(names[: rep % len(names)])
        for name in order:
            times[name].append(timed(name))
        if rep + 1 >= 3 and time.perf_counter() - start > budget_s:
            break

    rows = []
    for name in names:
        variant = CONV_VARIANTS[name]
        q1, med, q3 = quantiles(times[name])
        base = times.get(variant.baseline)
        paired = [a / b for a, b in zip(times[name], base)] if base else []
        rows.append({
            "device": device.type, "dtype": str(dtype).replace("torch.", ""), "batch": batch, "variant": name,
            "regime": variant.regime, "overrides": " ".join(variant.overrides), "repeats": len(times[name]),
            "median_ms": med * 1e3, "q1_ms": q1 * 1e3, "q3_ms": q3 * 1e3,
            "ratio": statistics.median(paired) if paired else None,
            "parameters": sum(p.numel() for p in runners[name].net.parameters()),
        })
    return rows


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.conv_step_time", description=__doc__.split("\n")[0])
    parser.add_argument("--dtypes", nargs="+", default=["float64", "float32"], choices=["float64", "float32"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", nargs="+", default=list(CONV_VARIANTS), choices=list(CONV_VARIANTS))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=120.0, help="per dtype: stop after 3 repetitions once spent")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--csv", default=None, help="write the rows to this CSV file")
    args = parser.parse_args(argv)
    if "conv_bp" not in args.variants:
        parser.error("--variants must include conv_bp, the baseline of every ratio")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    print(f"# {where}, {torch.get_num_threads()} threads, torch {torch.__version__}, batch {args.batch}", flush=True)
    rows: List[dict] = []
    for name in args.dtypes:
        dtype = getattr(torch, name)
        for row in time_conv(args.variants, dtype=dtype, device=device, batch=args.batch, repeats=args.repeats,
                             warmup=args.warmup, budget_s=args.budget_s):
            row["processor"] = where
            rows.append(row)
            print(f"{row['dtype']:8s} {row['variant']:18s} {row['median_ms']:9.1f} ms "
                  f"(q1 {row['q1_ms']:.1f}, q3 {row['q3_ms']:.1f}, n={row['repeats']})  "
                  f"ratio to conv_bp {row['ratio']:.2f}", flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
