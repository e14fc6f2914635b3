"""``python -m benchmarks.orthogonal_maps``: the cost of an orthogonal-by-construction weight.

Times, per matrix size and dtype, computing ``W = B Q(A)`` from the trained parameter
(:class:`lightning_gait.networks.OrthogonalMatrix`) and its backward pass, for each map
of :data:`lightning_gait.networks.ORTHOGONAL_MAPS` (Cayley, matrix exponential) and, for
reference, PyTorch's own ``torch.nn.utils.parametrizations.orthogonal`` (its default map
for square matrices), with the generator at a typical trained size (entries ~0.05). The
sizes are the invertible CNN's (six 128 x 128, one 512 x 512) and the MLP's (500 x 500).
Minimum over repetitions, the maps round-robin::

    python -m benchmarks.orthogonal_maps --markdown benchmarks/orthogonal_maps_cpu.md
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrizations

from lightning_gait.networks import ORTHOGONAL_MAPS, OrthogonalMatrix

from .conv_step_time import _cpu_name

__all__ = ["time_maps", "main"]


def _best(fn: Callable[[], None], repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def time_maps(sizes: Sequence[int], dtypes: Sequence[torch.dtype], repeats: int) -> List[Dict[str, object]]:
    rows = []
    for dtype in dtypes:
        for n in sizes:
            generator = torch.Generator().manual_seed(n)
            x = (0.05 * torch.randn(n, n, generator=generator, dtype=dtype)).requires_grad_()
            grad = torch.randn(n, n, generator=generator, dtype=dtype)
            maps: Dict[str, Callable[[], torch.Tensor]] = {}
            for name in ORTHOGONAL_MAPS:
                mapping = OrthogonalMatrix(n, name).to(dtype)
                maps[name] = (lambda m: lambda: m(x))(mapping)
            reference = parametrizations.orthogonal(nn.Linear(n, n, bias=False).to(dtype))
            with torch.no_grad():
                reference.parametrizations.weight.original.copy_(x)
            maps["torch.nn.utils.parametrizations.orthogonal"] = lambda: reference.weight
            for name, compute in maps.items():
                with torch.no_grad():
                    forward = _best(lambda: compute(), repeats)

                def both():
                    torch.autograd.backward(compute(), grad)

                rows.append({"dtype": str(dtype).replace("torch.", ""), "size": n, "map": name,
                             "forward_ms": forward * 1e3, "forward_backward_ms": _best(both, repeats) * 1e3})
    return rows


def markdown(rows: List[Dict[str, object]], meta: Dict[str, object]) -> str:
    out = [f"# Orthogonal maps: forward and forward + backward ({meta['date']})", "",
           f"{meta['processor']}, {meta['threads']} torch threads, torch {meta['torch']}; load average "
           f"{meta['load']}; minimum of {meta['repeats']} repetitions.", "",
           "| dtype | n | map | forward (ms) | forward + backward (ms) |", "|---|---:|---|---:|---:|"]
    out += [f"| {r['dtype']} | {r['size']} | {r['map']} | {r['forward_ms']:.2f} | {r['forward_backward_ms']:.2f} |"
            for r in rows]
    return "\n".join(out) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.orthogonal_maps", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 500, 512])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = {"processor": _cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "repeats": args.repeats, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load": " ".join(f"{v:.2f}" for v in os.getloadavg())}
    rows = time_maps(args.sizes, [getattr(torch, d) for d in args.dtypes], args.repeats)
    for r in rows:
        print(f"{r['dtype']:8s} {r['size']:5d} {r['map']:45s} forward {r['forward_ms']:9.2f} ms   "
              f"forward+backward {r['forward_backward_ms']:9.2f} ms", flush=True)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(rows, meta))
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
