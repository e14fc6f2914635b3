"""``python -m lightning_gait.bench_floor``: the least a GAIT step can cost on this machine.

A GAIT-prop step does what a backprop step does (a forward pass, one weight-gradient
product per layer, the optimizer step) except at the square layers, where backprop's
input-gradient product ``dL/da_{l-1} = dL/dz_l W_l^T`` (one ``N x n x n`` product) is
replaced by a solve ``x = r W_l^-1`` with the current weights. Everything else being
free, a GAIT step therefore costs at least::

    T_gait >= T_bp + S * delta          (S square layers)

where ``delta`` is the extra work of one solve over one ``N x n x n`` product. This tool
measures, side by side in one run, the backprop step at depths 2, 6 and 12 and the
primitives that bound ``delta`` for each way of getting the solve:

* exact (LU): an LU factorisation and its two triangular solves,
  ``delta_exact = t(lu_factor) + t(lu_solve) - t(product)``;
* reused (cached) inverse: with ``M`` the inverse kept from an earlier step, the solve
  ``r M`` has relative error ``||E||`` with ``E = I - W M``; every further factor of
  ``||E||`` costs a refinement step (a residual product with ``W`` and a product with
  ``M``: two ``N x n x n`` products; a Newton-Schulz step on ``M`` instead costs two
  ``n x n x n`` products, more when ``n > N``). With Adam at the paper's learning rate the
  weights move so much in one step that two factors of ``||E||`` leave an update error of
  1.2e-5 (``benchmarks/README.md``), above the 1e-6 bound; three are needed, so even with
  ``M`` kept exact for free, ``delta_cached >= 2 * 2 * t(product)``.

From these it prints the floor of the ratio to backprop at each depth, the largest
``delta`` that a 1.3x step would allow at depth 6, and the largest ``delta`` that keeps the
ratio at depth 12 within 10% of the ratio at depth 2. The floors leave out all
elementwise work of the target pass (measured in the split of ``lightning_gait.bench``),
so real steps cost more.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .bench import VARIANTS, StepRunner, _sync

__all__ = ["measure_primitives", "measure_backprop", "floor_report", "format_floor", "main"]


def _median_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def measure_primitives(width: int, batch: int, dtype: torch.dtype, device: torch.device, *,
                       repeats: int = 40, warmup: int = 5, seed: int = 0) -> Dict[str, Dict[str, float]]:
    """Median ms of the linear algebra a square layer's solve is built from.

    Each primitive is timed twice: alone in a hot loop, and round-robin with the others
    (closer to a real step, where other work runs in between; on the 2-core CPU that is
    slower). ``"floor"`` is the smaller of the two, so that floors built on it are lower
    bounds.
    """
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(width, width, generator=g, dtype=torch.float64))
    weight = (q + 0.01 * torch.randn(width, width, generator=g, dtype=torch.float64)).to(device, dtype)
    r = torch.randn(batch, width, generator=g, dtype=torch.float64).to(device, dtype)
    lu, pivots = torch.linalg.lu_factor(weight.T)
    ops: Dict[str, Callable[[], object]] = {
        "product": lambda: r @ weight,                       # N x n x n
        "square_product": lambda: weight @ weight,           # n x n x n
        "lu_factor": lambda: torch.linalg.lu_factor(weight.T),
        "lu_solve": lambda: torch.linalg.lu_solve(lu, pivots, r, left=False),
        "inv": lambda: torch.linalg.inv(weight),
    }
    alone = {name: _median_ms(fn, device, repeats, warmup) for name, fn in ops.items()}
    samples: Dict[str, List[float]] = {k: [] for k in ops}
    for _ in range(warmup):
        for fn in ops.values():
            fn()
    for _ in range(repeats):
        for name, fn in ops.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append(1e3 * (time.perf_counter() - start))
    interleaved = {k: statistics.median(v) for k, v in samples.items()}
    return {"alone": alone, "interleaved": interleaved,
            "floor": {k: min(alone[k], interleaved[k]) for k in ops}}


def measure_backprop(width: int, depths: Sequence[int], batch: int, in_features: int, dtype: torch.dtype,
                     device: torch.device, *, repeats: int = 15, warmup: int = 3, seed: int = 0) -> Dict[int, float]:
    """Median ms of a full backprop step (``local_gradients`` + Adam) at each depth, interleaved."""
    runners = {
        d: StepRunner(VARIANTS["backprop"], width=width, depth=d, batch=batch, in_features=in_features,
                      num_classes=10, dtype=dtype, device=device, seed=seed)
        for d in depths
    }
    for _ in range(warmup):
        for runner in runners.values():
            runner.step()
    samples: Dict[int, List[float]] = {d: [] for d in depths}
    for _ in range(repeats):
        for d, runner in runners.items():
            _sync(device)
            start = time.perf_counter()
            runner.step()
            _sync(device)
            samples[d].append(1e3 * (time.perf_counter() - start))
    return {d: statistics.median(v) for d, v in samples.items()}


def floor_report(prims: Dict[str, float], bp_ms: Dict[int, float], *, focus_depth: int = 6,
                 shallow: int = 2, deep: int = 12, fast_target: float = 1.3, depth_growth: float = 0.10) -> dict:
    """Floors of the GAIT/backprop ratio from measured primitives and backprop steps.

    A network of depth ``d`` (``InvertibleMLP`` with a square output) has ``d`` square
    layers. Returns the per-layer ``delta`` of each scheme, the floor ratio at each depth,
    and the largest ``delta`` each target allows.
    """
    deltas = {
        "exact_lu": prims["lu_factor"] + prims["lu_solve"] - prims["product"],
        "cached_two_refinements": 2 * 2 * prims["product"],
        "cached_newton_schulz_and_refinement": 2 * prims["square_product"] + 2 * prims["product"],
    }
    ratios = {name: {d: 1.0 + d * delta / bp_ms[d] for d in bp_ms} for name, delta in deltas.items()}
    allowed = {}
    if focus_depth in bp_ms:
        allowed[f"{fast_target}x_at_depth_{focus_depth}"] = (fast_target - 1.0) * bp_ms[focus_depth] / focus_depth
    if shallow in bp_ms and deep in bp_ms:
        # 1 + deep*D/T_deep <= (1 + growth) * (1 + shallow*D/T_shallow)
        slope = deep / bp_ms[deep] - (1.0 + depth_growth) * shallow / bp_ms[shallow]
        allowed[f"depth_{deep}_within_{int(depth_growth * 100)}pct_of_depth_{shallow}"] = (
            depth_growth / slope if slope > 0 else float("inf"))
    return {"delta_ms": deltas, "floor_ratio": ratios, "allowed_delta_ms": allowed}


def format_floor(result: dict) -> str:
    lines = ["### Floor of the GAIT/backprop step ratio (elementwise work left out)", ""]
    for entry in result["entries"]:
        p, rep = entry["primitives_ms"]["floor"], entry["report"]
        depths = sorted(entry["backprop_ms"], key=int)
        lines.append(f"**{entry['device']}, {entry['dtype']}, width {entry['width']}, batch {entry['batch']}**: "
                     f"product N x n x n {p['product']:.2f} ms, n x n x n {p['square_product']:.2f} ms, "
                     f"lu_factor {p['lu_factor']:.2f} ms, lu_solve {p['lu_solve']:.2f} ms, inv {p['inv']:.2f} ms "
                     "(each the faster of alone and interleaved); "
                     "backprop step " + ", ".join(f"depth {d}: {entry['backprop_ms'][d]:.1f} ms" for d in depths) + ".")
        lines.append("")
        lines.append("| scheme | delta ms per square layer | " + " | ".join(f"floor ratio, depth {d}" for d in depths)
                     + f" | depth {depths[-1]} / depth {depths[0]} |")
        lines.append("|---|---:|" + "---:|" * len(depths) + "---:|")
        for name, delta in rep["delta_ms"].items():
            ratios = rep["floor_ratio"][name]
            growth = ratios[depths[-1]] / ratios[depths[0]]
            lines.append(f"| {name} | {delta:.2f} | " + " | ".join(f"{ratios[d]:.2f}" for d in depths)
                         + f" | {growth:.3f} |")
        lines.append("")
        lines.append("Largest delta each target allows: " + "; ".join(
            f"{k}: {v:.2f} ms" for k, v in rep["allowed_delta_ms"].items()) + ".")
        lines.append("")
    return "\n".join(lines)


def run(*, devices: Sequence[str], dtypes: Sequence[str], width: int = 500, batch: int = 256,
        in_features: int = 3072, depths: Sequence[int] = (2, 6, 12), repeats: int = 15,
        log: Callable[[str], None] = print) -> dict:
    entries = []
    for device_name in devices:
        device = torch.device(device_name)
        for dtype_name in dtypes:
            dtype = getattr(torch, dtype_name)
            t0 = time.perf_counter()
            prims = measure_primitives(width, batch, dtype, device)
            bp = measure_backprop(width, depths, batch, in_features, dtype, device, repeats=repeats)
            entries.append({"device": device_name, "dtype": dtype_name, "width": width, "batch": batch,
                            "in_features": in_features, "primitives_ms": prims, "backprop_ms": bp,
                            "report": floor_report(prims["floor"], bp)})
            log(f"{device_name} {dtype_name}: measured in {time.perf_counter() - t0:.0f} s")
    return {"entries": entries, "torch": torch.__version__, "threads": torch.get_num_threads()}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m lightning_gait.bench_floor", description=__doc__.split("\n")[0])
    p.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, and cuda if present)")
    p.add_argument("--dtypes", nargs="+", default=["float64", "float32"])
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--depths", nargs="+", type=int, default=[2, 6, 12])
    p.add_argument("--repeats", type=int, default=15, help="backprop steps timed per depth")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    for d in args.dtypes:
        if d not in ("float32", "float64"):
            p.error(f"dtype {d!r} is not supported; use float32 or float64")
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not torch.cuda.is_available():
        p.error("device 'cuda' requested but torch.cuda.is_available() is False")
    result = run(devices=devices, dtypes=args.dtypes, width=args.width, batch=args.batch,
                 depths=args.depths, repeats=args.repeats, log=lambda s: print(s, flush=True))
    print()
    print(format_floor(result))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return result


if __name__ == "__main__":
    main()
