"""``python -m benchmarks.bench_floor``: how cheap a GAIT step could be on this machine.

**The model.** A GAIT-prop step does what a backprop step does (forward pass, one
weight-gradient product per layer, the optimizer step; the forward and optimizer ranges
of ``python -m benchmarks.bench``'s split are the same for both rules) except at the
square layers, where backprop's input-gradient product ``dL/da_{l-1} = dL/dz_l W_l^T``
(one ``N x n x n`` product) is replaced by a solve ``x = r W_l^-1`` with the current
weights. Assuming GAIT's shared work costs at least backprop's and leaving out all
elementwise work of the target pass::

    T_gait(d) >= T_bp(d) + d * delta          (depth d: d square layers)

where ``delta`` is the extra work of one solve over one ``N x n x n`` product. This tool
measures, side by side in one run, backprop steps at depths 2, 6 and 12 and the
primitives that make up ``delta`` for each way of getting the solve. Added terms use
the faster of two timings (alone in a hot loop, round-robin with the others) and
subtracted terms the slower, so each ``delta`` is on the low side.

**The schemes.**

* ``exact_lu``: an LU factorisation and its two triangular solves.
* A reused (cached) inverse ``M``: ``r M`` has relative error about ``||E||``,
  ``E = I - W M``, and each refinement step multiplies it by ``||E||`` at the cost of two
  ``N x n x n`` products (a residual with ``W``, a product with ``M``). With an inverse
  one step old, the measured update error after one refinement is 4.5e-6
  (``benchmarks/README.md``), i.e. an effective per-step drift ``e = 2.1e-3``; an inverse
  ``K`` steps old has drift about ``K e`` (measured: 7.5e-5 at ``K = 5``, model 1.1e-4).
  ``c`` refinements of a ``K``-step-old inverse leave about ``(K e)^(c+1)``.

  - ``cached_free_upkeep``: the fewest refinements that meet the tolerance with ``K = 1``,
    as if ``M`` were kept exact for free: ``delta = 2 c t(product)``. A lower bound.
  - ``cached_refresh``: the cheapest ``c`` and ``K`` with ``M`` recomputed (``inv``) every
    ``K`` steps: ``delta = 2 c t(product) + t(inv) / K``.
  - ``cached_newton_schulz``: a Newton-Schulz step every step (two ``n x n x n`` products,
    squares the drift) and the fewest refinements after it.
  - ``cached_mixed`` (float64 runs): products with ``M`` in float32, residuals in
    float64, upkeep free: ``delta = t32 - t64 + c (t64 + t32)``.

**The tolerance.** The documented bound of ``inverse="cached"`` is 1e-6 relative to the
exact-inverse update. In float32 no second method can meet that literally: float32 LU
itself is 1.2e-5 (median) from the float64 result, and two float32 solvers differ by that
much, so the float32 rows use 1e-5 ("as accurate as float32 LU"), which lets one
refinement suffice.

It prints the floors at each depth, the largest ``delta`` a 1.3x step at depth 6 allows,
and the largest ``delta`` that keeps the ratio at depth 12 within 10% of the ratio at
depth 2 under the model above (GAIT's extra cost purely per square layer; a GAIT step
with extra cost independent of depth would lower that growth only by making the shallow
network slower).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .variants import VARIANTS, StepRunner, sync

__all__ = ["measure_primitives", "measure_backprop", "floor_report", "format_floor", "main",
           "DRIFT_PER_STEP", "TOLERANCE"]

#: effective per-step drift of a reused inverse (sqrt of the measured 4.5e-6, see above)
DRIFT_PER_STEP = 2.1e-3
#: relative update tolerance per dtype (float32: as accurate as float32 LU, see above)
TOLERANCE = {"float64": 1e-6, "float32": 1e-5}


def _median_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _round_robin_ms(fns: Dict, device: torch.device, repeats: int, warmup: int) -> Dict:
    """Median ms of each callable, timed round-robin (one call of each per repetition)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: Dict[object, List[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            samples[key].append(1e3 * (time.perf_counter() - start))
    return {k: statistics.median(v) for k, v in samples.items()}


def measure_primitives(width: int, batch: int, dtype: torch.dtype, device: torch.device, *,
                       repeats: int = 40, warmup: int = 5, seed: int = 0) -> Dict[str, Dict[str, float]]:
    """Median ms of the linear algebra a square layer's solve is built from.

    Each primitive is timed alone in a hot loop and round-robin with the others (closer to
    a real step, where other work runs in between). ``"low"`` is the faster of the two,
    ``"high"`` the slower.
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
    interleaved = _round_robin_ms(ops, device, repeats, warmup)
    return {"alone": alone, "interleaved": interleaved,
            "low": {k: min(alone[k], interleaved[k]) for k in ops},
            "high": {k: max(alone[k], interleaved[k]) for k in ops}}


def measure_backprop(width: int, depths: Sequence[int], batch: int, in_features: Optional[int], dtype: torch.dtype,
                     device: torch.device, *, repeats: int = 15, warmup: int = 3, seed: int = 0) -> Dict[int, float]:
    """Median ms of a full backprop step (``local_gradients`` + Adam) at each depth, interleaved.

    ``in_features`` ``None``: the config's input size.
    """
    runners = {
        d: StepRunner(VARIANTS["backprop"], width=width, depth=d, batch=batch, in_features=in_features,
                      dtype=dtype, device=device, seed=seed)
        for d in depths
    }
    return _round_robin_ms({d: runner.step for d, runner in runners.items()}, device, repeats, warmup)


def _fewest_refinements(drift: float, tolerance: float, max_refinements: int = 6) -> int:
    """Smallest ``c`` with ``drift^(c+1) <= tolerance``."""
    for c in range(max_refinements + 1):
        if drift ** (c + 1) <= tolerance:
            return c
    raise ValueError(f"drift {drift} cannot reach {tolerance} with {max_refinements} refinements")


def cached_deltas(low: Dict[str, float], *, drift: float, tolerance: float,
                  low32: Optional[Dict[str, float]] = None, high: Optional[Dict[str, float]] = None) -> Dict[str, dict]:
    """``delta`` (ms) of each reused-inverse scheme and the choice behind it."""
    out: Dict[str, dict] = {}
    c = _fewest_refinements(drift, tolerance)
    out["cached_free_upkeep"] = {"delta": 2 * c * low["product"], "refinements": c}
    best = None
    for c in range(1, 5):
        for k in range(1, 501):
            if (k * drift) ** (c + 1) > tolerance:
                break
            cost = 2 * c * low["product"] + low["inv"] / k
            if best is None or cost < best["delta"]:
                best = {"delta": cost, "refinements": c, "refresh_every": k}
    if best is not None:
        out["cached_refresh"] = best
    c = _fewest_refinements(drift ** 2, tolerance)
    out["cached_newton_schulz"] = {"delta": 2 * low["square_product"] + 2 * c * low["product"], "refinements": c}
    if low32 is not None and high is not None:
        c = _fewest_refinements(drift, tolerance)
        delta = low32["product"] - high["product"] + c * (low["product"] + low32["product"])
        out["cached_mixed"] = {"delta": delta, "refinements": c}
    return out


def floor_report(low: Dict[str, float], high: Dict[str, float], bp_ms: Dict[int, float], *, dtype: str,
                 low32: Optional[Dict[str, float]] = None, drift: float = DRIFT_PER_STEP,
                 tolerance: Optional[float] = None, focus_depth: int = 6, shallow: int = 2, deep: int = 12,
                 fast_target: float = 1.3, depth_growth: float = 0.10) -> dict:
    """Floors of the GAIT/backprop ratio from measured primitives and backprop steps.

    ``low``/``high``: the faster/slower timing of each primitive in this dtype; ``low32``:
    float32 timings for the mixed-precision scheme of a float64 run. Returns each scheme's
    ``delta`` and details, the floor ratio at each depth, and the largest ``delta`` each
    target allows.
    """
    tolerance = TOLERANCE[dtype] if tolerance is None else tolerance
    schemes: Dict[str, dict] = {
        "exact_lu": {"delta": low["lu_factor"] + low["lu_solve"] - high["product"]},
    }
    schemes.update(cached_deltas(low, drift=drift, tolerance=tolerance,
                                 low32=low32 if dtype == "float64" else None, high=high))
    ratios = {name: {d: 1.0 + d * s["delta"] / bp_ms[d] for d in bp_ms} for name, s in schemes.items()}
    allowed = {}
    if focus_depth in bp_ms:
        allowed[f"{fast_target}x_at_depth_{focus_depth}"] = (fast_target - 1.0) * bp_ms[focus_depth] / focus_depth
    if shallow in bp_ms and deep in bp_ms:
        # 1 + deep*D/T_deep <= (1 + growth) * (1 + shallow*D/T_shallow)
        slope = deep / bp_ms[deep] - (1.0 + depth_growth) * shallow / bp_ms[shallow]
        allowed[f"depth_{deep}_within_{int(round(depth_growth * 100))}pct_of_depth_{shallow}"] = (
            depth_growth / slope if slope > 0 else math.inf)
    return {"dtype": dtype, "tolerance": tolerance, "drift_per_step": drift, "schemes": schemes,
            "delta_ms": {k: v["delta"] for k, v in schemes.items()}, "floor_ratio": ratios,
            "allowed_delta_ms": allowed}


def _scheme_note(name: str, scheme: dict) -> str:
    parts = []
    if "refinements" in scheme:
        parts.append(f"{scheme['refinements']} refinement(s)")
    if "refresh_every" in scheme:
        parts.append(f"recomputed every {scheme['refresh_every']} steps")
    return f"{name} ({', '.join(parts)})" if parts else name


def format_floor(result: dict) -> str:
    lines = ["### Floor of the GAIT/backprop step ratio (elementwise work left out)", ""]
    meta = result.get("meta", {})
    if meta:
        lines.append(f"Run {meta.get('started')}, load average at start {meta.get('loadavg_start')}, "
                     f"{meta.get('threads')} torch threads, torch {meta.get('torch')}.")
        lines.append("")
    for entry in result["entries"]:
        p, rep = entry["primitives_ms"]["low"], entry["report"]
        depths = sorted(entry["backprop_ms"], key=int)
        lines.append(f"**{entry['device']}, {entry['dtype']}, width {entry['width']}, batch {entry['batch']}, "
                     f"tolerance {rep['tolerance']:g}, drift per step {rep['drift_per_step']:g}**: "
                     f"product N x n x n {p['product']:.2f} ms, n x n x n {p['square_product']:.2f} ms, "
                     f"lu_factor {p['lu_factor']:.2f} ms, lu_solve {p['lu_solve']:.2f} ms, inv {p['inv']:.2f} ms "
                     "(faster of alone and interleaved); backprop step "
                     + ", ".join(f"depth {d}: {entry['backprop_ms'][d]:.1f} ms" for d in depths) + ".")
        lines.append("")
        lines.append("| scheme | delta ms per square layer | " + " | ".join(f"floor ratio, depth {d}" for d in depths)
                     + f" | depth {depths[-1]} / depth {depths[0]} |")
        lines.append("|---|---:|" + "---:|" * len(depths) + "---:|")
        for name, scheme in rep["schemes"].items():
            ratios = rep["floor_ratio"][name]
            growth = ratios[depths[-1]] / ratios[depths[0]]
            lines.append(f"| {_scheme_note(name, scheme)} | {scheme['delta']:.2f} | "
                         + " | ".join(f"{ratios[d]:.2f}" for d in depths) + f" | {growth:.3f} |")
        lines.append("")
        lines.append("Largest delta each target allows: " + "; ".join(
            f"{k}: {v:.2f} ms" for k, v in rep["allowed_delta_ms"].items()) + ".")
        lines.append("")
    return "\n".join(lines)


def run(*, devices: Sequence[str], dtypes: Sequence[str], width: int = 500, batch: int = 256,
        in_features: Optional[int] = None, depths: Sequence[int] = (2, 6, 12), repeats: int = 15,
        drift: float = DRIFT_PER_STEP, log: Callable[[str], None] = print) -> dict:
    try:
        load_start = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load_start = None
    meta = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "loadavg_start": load_start,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": platform.processor(),
            "argv": sys.argv[1:]}
    entries = []
    for device_name in devices:
        device = torch.device(device_name)
        measured = {}
        for dtype_name in dtypes:
            t0 = time.perf_counter()
            dtype = getattr(torch, dtype_name)
            prims = measure_primitives(width, batch, dtype, device)
            bp = measure_backprop(width, depths, batch, in_features, dtype, device, repeats=repeats)
            measured[dtype_name] = (prims, bp)
            log(f"{device_name} {dtype_name}: measured in {time.perf_counter() - t0:.0f} s")
        for dtype_name, (prims, bp) in measured.items():
            low32 = measured["float32"][0]["low"] if "float32" in measured else None
            entries.append({"device": device_name, "dtype": dtype_name, "width": width, "batch": batch,
                            "in_features": in_features, "primitives_ms": prims, "backprop_ms": bp,
                            "report": floor_report(prims["low"], prims["high"], bp, dtype=dtype_name,
                                                   low32=low32, drift=drift)})
    try:
        meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return {"meta": meta, "entries": entries, "torch": torch.__version__, "threads": torch.get_num_threads()}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_floor", description=__doc__.split("\n")[0])
    p.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, and cuda if present)")
    p.add_argument("--dtypes", nargs="+", default=["float64", "float32"])
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--depths", nargs="+", type=int, default=[2, 6, 12])
    p.add_argument("--repeats", type=int, default=15, help="backprop steps timed per depth")
    p.add_argument("--drift", type=float, default=DRIFT_PER_STEP, help="per-step drift of a reused inverse")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--markdown", metavar="PATH")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    for d in args.dtypes:
        if d not in TOLERANCE:
            p.error(f"dtype {d!r} is not supported; use float32 or float64")
    if not 0 < args.drift < 1:
        p.error(f"--drift must lie in (0, 1), got {args.drift}")
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not torch.cuda.is_available():
        p.error("device 'cuda' requested but torch.cuda.is_available() is False")
    result = run(devices=devices, dtypes=args.dtypes, width=args.width, batch=args.batch,
                 depths=args.depths, repeats=args.repeats, drift=args.drift, log=lambda s: print(s, flush=True))
    text = format_floor(result)
    print()
    print(text)
    for path, payload in ((args.json, None), (args.markdown, text)):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as fh:
                if payload is None:
                    json.dump(result, fh, indent=1)
                else:
                    fh.write(payload + "\n")
    return result


if __name__ == "__main__":
    main()
