"""``python -m benchmarks.bench``: step time of GAIT-prop against backprop, side by side.

A *step* is what a rule does per batch in training: the rule's ``local_gradients(x, y)``
plus the gradient of the orthogonality surrogate when the variant has a penalty (the
update :meth:`~lightning_gait.rules.LocalLearningRule.training_step` computes), installed
into ``.grad``, then one step of the rule's own optimizer (Adam). Every variant is a regime
of ``conf/`` built as ``fit`` builds it (:mod:`benchmarks.variants`) and trains its own copy
of the same network on the same batch; the variants are timed round-robin within each
repetition (the order rotating), so that load from other processes hits all of them
alike; each ratio is the median over repetitions of ``variant time / baseline time`` in
the same repetition.

What is reported, per device, dtype, width and depth:

* ``median_ms`` (and quartiles) of the step after warm-up, ``ratio`` to the baseline
  (backprop with the same activation);
* ``peak_step_mb``: memory a step needs beyond what is resident before it
  (:mod:`benchmarks.memory`);
* ``state_mb``: parameters, optimizer state and cached inverses;
* the split of the real ``training_step`` into the library's profiler ranges (forward,
  inverses, targets, penalty, backward, optimizer; :mod:`benchmarks.split`);
* the Lightning path: ``training_step`` under a real ``Trainer`` against the bare step
  of the same variant, interleaved step by step.

``--quick`` runs the acceptance setting (width 500, depth 6, batch 256) for a few
variants; the default sweeps width 256/500/1024/2048 at depth 6 and depth 2/6/12 at
width 500. ``--json PATH`` and ``--markdown PATH`` write the results. Run it from the
repository root.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from lightning_gait.malloc import describe, keep_freed_memory

from .memory import memory_phase
from .step_time import time_lightning, time_point
from .tables import format_markdown
from .variants import FULL_VARIANTS, LIGHTNING_VARIANTS, QUICK_VARIANTS, SWEEP_VARIANTS, VARIANTS

__all__ = ["BenchConfig", "quick_config", "run_benchmark", "format_markdown", "config_from_args", "main"]


# ---------------------------------------------------------------------------- config
@dataclass
class BenchConfig:
    """What to time. ``points`` are ``(width, depth)`` pairs; ``variants_at`` maps a point
    to its variant names (default: ``variants`` at the acceptance point ``focus``,
    ``sweep_variants`` elsewhere)."""

    devices: List[str] = field(default_factory=lambda: ["cpu"])
    dtypes: List[str] = field(default_factory=lambda: ["float64", "float32"])
    widths: List[int] = field(default_factory=lambda: [256, 500, 1024, 2048])
    depths: List[int] = field(default_factory=lambda: [2, 6, 12])
    width_sweep_depth: int = 6
    depth_sweep_width: int = 500
    focus: Tuple[int, int] = (500, 6)
    batch: int = 256
    in_features: Optional[int] = None  # None: the configs' (the data's) sizes
    num_classes: Optional[int] = None
    variants: List[str] = field(default_factory=lambda: list(FULL_VARIANTS))
    sweep_variants: List[str] = field(default_factory=lambda: list(SWEEP_VARIANTS))
    repeats: int = 30
    min_repeats: int = 5
    warmup: int = 3
    budget_s: float = 60.0  # per point and dtype: stop after min_repeats once this is spent
    split_repeats: int = 5
    split: bool = True
    memory: bool = True
    lightning_steps: int = 20
    lightning_variants: List[str] = field(default_factory=lambda: list(LIGHTNING_VARIANTS))
    seed: int = 0
    quick: bool = False

    def points(self) -> List[Tuple[int, int]]:
        pts = [(w, self.width_sweep_depth) for w in self.widths]
        pts += [(self.depth_sweep_width, d) for d in self.depths]
        out: List[Tuple[int, int]] = []
        for p in pts:
            if p not in out:
                out.append(p)
        return out

    def variants_at(self, point: Tuple[int, int]) -> List[str]:
        names = self.variants if tuple(point) == tuple(self.focus) else self.sweep_variants
        names = list(names)
        # every variant needs its baseline in the same round-robin
        for name in list(names):
            base = VARIANTS[name].baseline
            if base not in names:
                names.insert(0, base)
        return names

    def validate(self) -> None:
        for name in list(self.variants) + list(self.sweep_variants) + list(self.lightning_variants):
            if name not in VARIANTS:
                raise ValueError(f"variant {name!r} is not known; choose from {sorted(VARIANTS)}")
        for d in self.dtypes:
            if d not in ("float32", "float64"):
                raise ValueError(f"dtype {d!r} is not supported; use float32 or float64")
        for dev in self.devices:
            if dev not in ("cpu", "cuda"):
                raise ValueError(f"device {dev!r} is not supported; use cpu or cuda")
            if dev == "cuda" and not torch.cuda.is_available():
                raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
        if self.repeats < 1 or self.min_repeats < 1 or self.warmup < 0:
            raise ValueError("repeats and min_repeats must be >= 1 and warmup >= 0")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")


def quick_config(**overrides) -> BenchConfig:
    """The ``--quick`` setting: the acceptance point only, a few variants and repeats."""
    cfg = BenchConfig(
        widths=[500], depths=[6], variants=list(QUICK_VARIANTS), sweep_variants=list(QUICK_VARIANTS),
        repeats=9, min_repeats=3, warmup=2, budget_s=12.0, split_repeats=3,
        lightning_steps=8, lightning_variants=["backprop", "gait_n"], quick=True,
    )
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


# ---------------------------------------------------------------------------- driver
def _meta(cfg: BenchConfig, argv: Optional[Sequence[str]]) -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    meta = {
        "command": "python -m benchmarks.bench " + " ".join(argv or []),
        "torch": torch.__version__, "python": platform.python_version(), "cpu": cpu,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "config": asdict(cfg),
        "step": "local_gradients + orthogonality surrogate gradient (when ortho_weight > 0) into .grad, "
                "then the rule's Adam step",
        "split": "training_step under a Trainer and torch.profiler: CPU time inside each range of "
                 "lightning_gait.rules.base.STEP_RANGES per step (self + children); sum: outermost ranges",
        "ratio": "median over repetitions of (variant step / baseline step) in the same round-robin repetition",
        "peak_step_mb": "CPU: rise of peak RSS (VmHWM reset via /proc/self/clear_refs) over RSS before one step, "
                        "glibc mmap threshold 64 KiB; CUDA: max_memory_allocated - memory_allocated before",
    }
    try:
        meta["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    return meta


def run_benchmark(cfg: BenchConfig, *, log: Callable[[str], None] = print,
                  argv: Optional[Sequence[str]] = None) -> dict:
    """Run every point of ``cfg`` and return the JSON-ready results."""
    cfg.validate()
    malloc = describe(keep_freed_memory())  # as fit does (lightning_gait.malloc), before the first step
    out = {"meta": {**_meta(cfg, argv), "malloc": malloc}, "results": [], "split": [], "lightning": []}
    for device_name in cfg.devices:
        device = torch.device(device_name)
        for dtype_name in cfg.dtypes:
            dtype = getattr(torch, dtype_name)
            for width, depth in cfg.points():
                t0 = time.perf_counter()
                rows, splits = time_point(cfg, device, dtype, width, depth, log)
                out["results"].extend(rows)
                out["split"].extend(splits)
                log(f"{device_name} {dtype_name} width {width} depth {depth}: "
                    + ", ".join(f"{r['variant']} {r['median_ms']:.1f} ms x{r['ratio']:.2f}"
                                for r in rows if r.get("median_ms") is not None and r.get("ratio") is not None)
                    + f"  ({time.perf_counter() - t0:.0f} s)")
            if cfg.lightning_steps > 0 and cfg.lightning_variants:
                width, depth = cfg.focus
                out["lightning"].extend(time_lightning(cfg, device, dtype, width, depth, log))
    if cfg.memory:
        # last, because the allocator setting it needs slows every later step down
        memory_phase(cfg, out["results"], log)
    try:
        out["meta"]["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="acceptance point only, few variants and repeats")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--markdown", metavar="PATH", help="write the tables as markdown")
    p.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, and cuda if present)")
    p.add_argument("--dtypes", nargs="+", default=None, help="float64 float32")
    p.add_argument("--widths", nargs="+", type=int, default=None, help="width sweep (at --width-sweep-depth)")
    p.add_argument("--depths", nargs="+", type=int, default=None, help="depth sweep (at --depth-sweep-width)")
    p.add_argument("--width-sweep-depth", type=int, default=None, help="depth of the width sweep")
    p.add_argument("--depth-sweep-width", type=int, default=None, help="width of the depth sweep")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--in-features", type=int, default=None, help="network input size (default: the configs')")
    p.add_argument("--variants", nargs="+", default=None, help=f"at the acceptance point; from {sorted(VARIANTS)}")
    p.add_argument("--sweep-variants", nargs="+", default=None, help="on the other sweep points")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--min-repeats", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--budget-s", type=float, default=None, help="time budget per point and dtype")
    p.add_argument("--split-repeats", type=int, default=None, help="profiled training steps per variant")
    p.add_argument("--no-split", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--lightning-steps", type=int, default=None, help="0 skips the Trainer comparison")
    p.add_argument("--lightning-variants", nargs="+", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=None)
    return p


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    cfg = quick_config() if args.quick else BenchConfig()
    cfg.devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    mapping = {
        "dtypes": args.dtypes, "widths": args.widths, "depths": args.depths, "batch": args.batch,
        "in_features": args.in_features, "variants": args.variants, "sweep_variants": args.sweep_variants,
        "repeats": args.repeats, "min_repeats": args.min_repeats, "warmup": args.warmup,
        "budget_s": args.budget_s, "split_repeats": args.split_repeats,
        "lightning_steps": args.lightning_steps, "seed": args.seed,
        "width_sweep_depth": args.width_sweep_depth, "depth_sweep_width": args.depth_sweep_width,
        "lightning_variants": args.lightning_variants,
    }
    for k, v in mapping.items():
        if v is not None:
            setattr(cfg, k, v)
    if tuple(cfg.focus) not in cfg.points():
        # the acceptance point is not swept: the full variant list goes to the first point
        cfg.focus = cfg.points()[0]
    if args.no_split:
        cfg.split = False
    if args.no_memory:
        cfg.memory = False
    return cfg


def main(argv: Optional[Sequence[str]] = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    cfg = config_from_args(args)
    for name in ("lightning_fabric", "pytorch_lightning", "lightning"):  # accelerator lines, tips
        logging.getLogger(name).setLevel(logging.WARNING)
    result = run_benchmark(cfg, argv=argv, log=lambda s: print(s, flush=True))
    text = format_markdown(result)
    print()
    print(text)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1, default=str)
    if args.markdown:
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        with open(args.markdown, "w") as fh:
            fh.write(text + "\n")
    return result


if __name__ == "__main__":
    main()
