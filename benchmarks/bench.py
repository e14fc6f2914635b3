"""``python -m benchmarks.bench``: step time of GAIT-prop against backprop, side by side.

A *step* is what a rule does per batch in training: ``local_gradients(x, y)``, plus the
orthogonality penalty's gradient when the variant has one (``4 ortho_weight (W W^T - I) W``
per square layer, the gradient :meth:`LocalLearningRule.training_step` adds through
:func:`~lightning_gait.networks.orthogonality_surrogate`), installed into ``.grad``, then
one step of the rule's own optimizer (Adam). Every variant trains its own copy of the
same network on the same batch, and the variants are timed round-robin within each
repetition (the order rotating), so that load from other processes hits all of them
alike; each ratio is the median over repetitions of ``variant time / baseline time`` in
the same repetition.

What is reported, per device, dtype, width and depth:

* ``median_ms`` (and quartiles) of the step after warm-up, ``ratio`` to the baseline
  (backprop with the same activation);
* ``peak_step_mb``: memory a step needs beyond what is resident before it (parameters,
  optimizer state, cached inverses). CPU: the rise of the process's peak resident set
  (``VmHWM``, reset through ``/proc/self/clear_refs`` before the step) above the resident
  set before the step, with glibc's mmap threshold fixed at 64 KiB so that freed tensors
  leave the resident set (``None`` where the kernel offers no reset). CUDA:
  ``torch.cuda.max_memory_allocated()`` above ``memory_allocated()`` before the step;
* ``state_mb``: parameters, optimizer state and cached inverses;
* a split of the step (instrumented re-run of the same calls): forward, inverses, target
  pass, local gradients, penalty, optimizer;
* the Lightning path: ``training_step`` under a real ``Trainer`` against the bare step
  of the same variant, interleaved step by step.

``--quick`` runs the acceptance setting (width 500, depth 6, batch 256) for a few
variants in under a minute; the default sweeps width 256/500/1024/2048 at depth 6 and
depth 2/6/12 at width 500. ``--json PATH`` and ``--markdown PATH`` write the results.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn import functional as F

from lightning_gait.networks import InvertibleMLP
from lightning_gait.rules import Backprop, GAITProp, LocalLearningRule
from lightning_gait.rules.base import LocalObjective
from lightning_gait.targets import NonFiniteError, output_gradient

__all__ = [
    "Variant",
    "VARIANTS",
    "BenchConfig",
    "StepRunner",
    "penalty_gradients",
    "run_benchmark",
    "format_markdown",
    "main",
]


# ---------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class Variant:
    """One timed learning rule: its class, keyword arguments and activation."""

    name: str
    label: str
    rule: str  # "backprop" or "gait"
    activation: str = "leaky_relu"
    options: Dict[str, object] = field(default_factory=dict)
    baseline: str = "backprop"

    def build(self, net: InvertibleMLP) -> LocalLearningRule:
        if self.rule == "backprop":
            return Backprop(net, **self.options)
        if self.rule == "gait":
            return GAITProp(net, **self.options)
        raise ValueError(f"variant {self.name}: unknown rule {self.rule!r}")


def _gait(name, label, activation="leaky_relu", baseline="backprop", **options) -> Variant:
    options.setdefault("ortho_weight", 0.0)
    return Variant(name, label, "gait", activation, options, baseline)


VARIANTS: Dict[str, Variant] = {
    v.name: v
    for v in [
        Variant("backprop", "BP", "backprop"),
        Variant("backprop_s", "BP (SL-ReLU)", "backprop", "smooth_leaky_relu", baseline="backprop_s"),
        _gait("gait", "GAIT", gamma=1e-3),
        _gait("gait_n", "GAIT-N", normalize=True),
        _gait("gait_s", "GAIT-S", "smooth_leaky_relu", "backprop_s", gamma=1e-3),
        _gait("gait_sn", "GAIT-SN", "smooth_leaky_relu", "backprop_s", normalize=True),
        _gait("gait_n_diff", "GAIT-N, difference form", normalize=True, target_mode="difference"),
        _gait("gait_n_cached", "GAIT-N, difference form, cached inverse", normalize=True,
              target_mode="difference", inverse="cached"),
        _gait("gait_n_penalty", "GAIT-N + penalty", normalize=True, ortho_weight=100.0),
        _gait("gait_n_diff_penalty", "GAIT-N, difference form + penalty", normalize=True,
              target_mode="difference", ortho_weight=100.0),
        _gait("gait_n_cached_penalty", "GAIT-N, difference form, cached inverse + penalty", normalize=True,
              target_mode="difference", inverse="cached", ortho_weight=100.0),
    ]
}

#: what the full benchmark times at the acceptance setting, and on the sweeps
FULL_VARIANTS = list(VARIANTS)
SWEEP_VARIANTS = ["backprop", "gait_n", "gait_n_diff", "gait_n_cached", "gait_n_penalty"]
QUICK_VARIANTS = ["backprop", "gait_n", "gait_n_diff", "gait_n_cached", "gait_n_penalty"]
LIGHTNING_VARIANTS = ["backprop", "gait_n", "gait_n_cached", "gait_n_penalty"]


# ---------------------------------------------------------------------------- the step
@torch.no_grad()
def penalty_gradients(net: InvertibleMLP, weight: float) -> Dict[int, Tensor]:
    """``weight * 4 (W W^T - I) W`` per square layer: the gradient of ``weight ||W W^T - I||_F^2``.

    Two matrix products per layer, as :func:`~lightning_gait.networks.orthogonality_surrogate`.
    """
    out = {}
    for i in net.square_layer_indices:
        w = net.layers[i].weight
        p = w @ w.T
        p.diagonal().sub_(1.0)
        out[i] = torch.mm(p, w).mul_(4.0 * weight)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepRunner:
    """One variant's network, rule, optimizer and batch; :meth:`step` is the timed step."""

    def __init__(self, variant: Variant, *, width: int, depth: int, batch: int, in_features: int,
                 num_classes: int, dtype: torch.dtype, device: torch.device, seed: int) -> None:
        self.variant = variant
        self.device = device
        torch.manual_seed(seed)
        net = InvertibleMLP(in_features, width, depth, num_classes, activation=variant.activation)
        self.net = net.to(device=device, dtype=dtype)
        self.rule = variant.build(self.net)
        self.optimizer = self.rule.configure_optimizers()
        generator = torch.Generator().manual_seed(seed + 1)
        self.x = torch.rand(batch, in_features, generator=generator, dtype=dtype).to(device)
        self.y = torch.randint(0, num_classes, (batch,), generator=generator).to(device)
        self.params = [p for layer in self.net.layers for p in (layer.weight, layer.bias)]
        self.failed: Optional[str] = None

    @property
    def ortho_weight(self) -> float:
        return self.rule.ortho_weight if self.net.square_layer_indices else 0.0

    def step(self) -> None:
        """``local_gradients`` (+ penalty gradient) into ``.grad``, then the optimizer step."""
        self.optimizer.zero_grad(set_to_none=True)
        grads = self.rule.local_gradients(self.x, self.y)
        penalty = penalty_gradients(self.net, self.ortho_weight) if self.ortho_weight > 0 else {}
        for i, ((gw, gb), layer) in enumerate(zip(grads, self.net.layers)):
            if i in penalty:
                gw = gw.add_(penalty[i])
            layer.weight.grad = gw
            layer.bias.grad = gb
        self.optimizer.step()

    def split_step(self) -> Dict[str, float]:
        """The same step, stage by stage (seconds per stage); mirrors ``local_objective``."""
        rule, net, dev = self.rule, self.net, self.device
        times: Dict[str, float] = {}
        self.optimizer.zero_grad(set_to_none=True)

        def mark(name: str, start: float) -> float:
            _sync(dev)
            now = time.perf_counter()
            times[name] = now - start
            return now

        t = time.perf_counter()
        with torch.enable_grad():
            if isinstance(rule, Backprop):
                trace = net.trace(self.x, local=False)
                logits = net.logits(trace.output)
                objective = F.cross_entropy(logits, self.y, reduction=rule.loss_reduction)
                t = mark("forward", t)
                times["inverses"] = 0.0
                times["target_pass"] = 0.0
            else:
                trace = net.trace(self.x, local=True)
                g, _ = output_gradient(trace.output, self.y, net.num_classes, rule.loss_reduction)
                t = mark("forward", t)
                if isinstance(rule, GAITProp):
                    inverses = rule.layer_inverses()
                    t = mark("inverses", t)
                    rule.layer_inverses = lambda: inverses  # reuse this step's inverses
                else:
                    times["inverses"] = 0.0
                try:
                    with torch.no_grad():
                        signals = rule.layer_signals(trace, g, self.y)
                    rule.check_finite(signals, what="target signal")
                finally:
                    if "layer_inverses" in rule.__dict__:
                        del rule.layer_inverses
                t = mark("target_pass", t)
                objective = sum((s * a).sum() for s, a in zip(signals, trace.post))
            flat = torch.autograd.grad(objective, self.params, allow_unused=True)
        flat = [torch.zeros_like(p) if gr is None else gr for p, gr in zip(self.params, flat)]
        t = mark("local_gradients", t)
        penalty = penalty_gradients(net, self.ortho_weight) if self.ortho_weight > 0 else {}
        t = mark("penalty", t)
        for i, layer in enumerate(net.layers):
            gw = flat[2 * i]
            if i in penalty:
                gw = gw.add_(penalty[i])
            layer.weight.grad = gw
            layer.bias.grad = flat[2 * i + 1]
        self.optimizer.step()
        mark("optimizer", t)
        return times

    def state_bytes(self) -> int:
        total = sum(p.numel() * p.element_size() for p in self.net.parameters())
        for state in self.optimizer.state.values():
            total += sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, Tensor))
        strategy = getattr(self.rule, "inverse_strategy", None)
        if hasattr(strategy, "state_bytes"):
            total += strategy.state_bytes()
        return total


# ---------------------------------------------------------------------------- memory
_M_MMAP_THRESHOLD = -3


def _configure_malloc() -> bool:
    """Fix glibc's mmap threshold so that large freed tensors leave the resident set."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024))
    except (OSError, AttributeError):
        return False


def _proc_status_kb(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_step_mb(runner: StepRunner) -> Optional[float]:
    """Memory one step needs above what is resident before it (see the module docstring)."""
    if runner.device.type == "cuda":
        _sync(runner.device)
        runner.optimizer.zero_grad(set_to_none=True)
        before = torch.cuda.memory_allocated(runner.device)
        torch.cuda.reset_peak_memory_stats(runner.device)
        runner.step()
        _sync(runner.device)
        return (torch.cuda.max_memory_allocated(runner.device) - before) / 2**20
    runner.optimizer.zero_grad(set_to_none=True)
    if not _reset_peak_rss():
        return None
    before = _proc_status_kb("VmRSS")
    runner.step()
    peak = _proc_status_kb("VmHWM")
    if before is None or peak is None:
        return None
    return max(peak - before, 0) / 1024


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
    in_features: int = 3072
    num_classes: int = 10
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


# ---------------------------------------------------------------------------- timing
def _quantiles(values: Sequence[float]) -> Tuple[float, float, float]:
    v = sorted(values)
    if len(v) == 1:
        return v[0], v[0], v[0]
    q = statistics.quantiles(v, n=4, method="inclusive")
    return q[0], statistics.median(v), q[2]


def _time_point(cfg: BenchConfig, device: torch.device, dtype: torch.dtype, width: int, depth: int,
                log: Callable[[str], None]) -> Tuple[List[dict], List[dict]]:
    names = cfg.variants_at((width, depth))
    runners: Dict[str, StepRunner] = {}
    results: Dict[str, dict] = {}
    for name in names:
        runners[name] = StepRunner(VARIANTS[name], width=width, depth=depth, batch=cfg.batch,
                                   in_features=cfg.in_features, num_classes=cfg.num_classes,
                                   dtype=dtype, device=device, seed=cfg.seed)

    def guarded(name: str) -> Optional[float]:
        runner = runners[name]
        if runner.failed:
            return None
        try:
            _sync(device)
            start = time.perf_counter()
            runner.step()
            _sync(device)
            return time.perf_counter() - start
        except (NonFiniteError, RuntimeError) as err:  # singular LU, NaN targets, ...
            runner.failed = f"{type(err).__name__}: {err}"
            log(f"  {name} failed: {runner.failed}")
            return None

    for _ in range(cfg.warmup):
        for name in names:
            guarded(name)
    times: Dict[str, List[Optional[float]]] = {n: [] for n in names}
    start = time.perf_counter()
    rep = 0
    while rep < cfg.repeats:
        order = names[rep % len(names):] + names[: rep % len(names)]
        for name in order:
            times[name].append(guarded(name))
        rep += 1
        if rep >= cfg.min_repeats and time.perf_counter() - start > cfg.budget_s:
            break

    rows = []
    for name in names:
        runner = runners[name]
        variant = VARIANTS[name]
        valid = [t for t in times[name] if t is not None]
        row = {
            "device": device.type, "dtype": str(dtype).replace("torch.", ""), "width": width, "depth": depth,
            "batch": cfg.batch, "variant": name, "label": variant.label, "baseline": variant.baseline,
            "options": {k: v for k, v in variant.options.items()}, "activation": variant.activation,
            "repeats": len(valid), "status": "ok" if not runner.failed else runner.failed,
        }
        if valid:
            q1, med, q3 = _quantiles(valid)
            row.update(median_ms=med * 1e3, q1_ms=q1 * 1e3, q3_ms=q3 * 1e3, min_ms=min(valid) * 1e3)
            base = times.get(variant.baseline, [])
            paired = [a / b for a, b in zip(times[name], base) if a is not None and b is not None]
            base_valid = [t for t in base if t is not None]
            row["ratio"] = statistics.median(paired) if paired else None
            row["ratio_q1"], _, row["ratio_q3"] = _quantiles(paired) if paired else (None, None, None)
            row["ratio_of_medians"] = med / statistics.median(base_valid) if base_valid else None
        else:
            row.update(median_ms=None, q1_ms=None, q3_ms=None, min_ms=None, ratio=None,
                       ratio_q1=None, ratio_q3=None, ratio_of_medians=None)
        row["state_mb"] = runner.state_bytes() / 2**20
        results[name] = row
        rows.append(row)

    splits = []
    if cfg.split:
        for name in names:
            runner = runners[name]
            if runner.failed:
                continue
            samples: Dict[str, List[float]] = {}
            try:
                for _ in range(cfg.split_repeats):
                    for k, v in runner.split_step().items():
                        samples.setdefault(k, []).append(v)
            except (NonFiniteError, RuntimeError) as err:
                log(f"  split of {name} failed: {err}")
                continue
            entry = {"device": device.type, "dtype": str(dtype).replace("torch.", ""), "width": width,
                     "depth": depth, "batch": cfg.batch, "variant": name}
            for k in ("forward", "inverses", "target_pass", "local_gradients", "penalty", "optimizer"):
                entry[f"{k}_ms"] = statistics.median(samples[k]) * 1e3 if k in samples else 0.0
            entry["sum_ms"] = sum(entry[f"{k}_ms"] for k in
                                  ("forward", "inverses", "target_pass", "local_gradients", "penalty", "optimizer"))
            entry["step_median_ms"] = results[name]["median_ms"]
            splits.append(entry)
    del runners
    return rows, splits


# ---------------------------------------------------------------------------- Lightning
def _time_lightning(cfg: BenchConfig, device: torch.device, dtype: torch.dtype, width: int, depth: int,
                    log: Callable[[str], None]) -> List[dict]:
    """``training_step`` under a real Trainer, interleaved with the bare step of a twin."""
    import warnings

    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, Dataset

    class SameBatch(Dataset):
        def __init__(self, x, y, n):
            self.x, self.y, self.n = x, y, n

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return self.x, self.y

    class Interleave(pl.Callback):
        def __init__(self, twin: StepRunner, skip: int):
            self.twin, self.skip = twin, skip
            self.lightning: List[float] = []
            self.bare: List[float] = []
            self._t = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            _sync(device)
            self._t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            _sync(device)
            elapsed = time.perf_counter() - self._t
            t = time.perf_counter()
            self.twin.step()
            _sync(device)
            bare = time.perf_counter() - t
            if batch_idx >= self.skip:
                self.lightning.append(elapsed)
                self.bare.append(bare)

    rows = []
    steps = cfg.lightning_steps
    skip = min(cfg.warmup, 3)
    for name in cfg.lightning_variants:
        variant = VARIANTS[name]
        kwargs = dict(width=width, depth=depth, batch=cfg.batch, in_features=cfg.in_features,
                      num_classes=cfg.num_classes, dtype=dtype, device=device, seed=cfg.seed)
        module_runner = StepRunner(variant, **kwargs)
        twin = StepRunner(variant, **kwargs)
        callback = Interleave(twin, skip)
        loader = DataLoader(SameBatch(module_runner.x.cpu(), module_runner.y.cpu(), steps + skip),
                            batch_size=None, shuffle=False)
        precision = "64-true" if dtype == torch.float64 else "32-true"
        trainer = pl.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_steps=steps + skip,
            max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
            precision=precision, callbacks=[callback],
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                trainer.fit(module_runner.rule, train_dataloaders=loader)
            except (NonFiniteError, RuntimeError) as err:
                log(f"  lightning {name} failed: {err}")
                continue
        paired = [a / b for a, b in zip(callback.lightning, callback.bare)]
        rows.append({
            "device": device.type, "dtype": str(dtype).replace("torch.", ""), "width": width, "depth": depth,
            "batch": cfg.batch, "variant": name, "steps": len(paired),
            "lightning_ms": statistics.median(callback.lightning) * 1e3 if paired else None,
            "bare_ms": statistics.median(callback.bare) * 1e3 if paired else None,
            "ratio": statistics.median(paired) if paired else None,
        })
    return rows


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
        "step": "local_gradients + penalty gradient (when ortho_weight > 0) into .grad, then the rule's Adam step",
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
    out = {"meta": _meta(cfg, argv), "results": [], "split": [], "lightning": []}
    for device_name in cfg.devices:
        device = torch.device(device_name)
        for dtype_name in cfg.dtypes:
            dtype = getattr(torch, dtype_name)
            for width, depth in cfg.points():
                t0 = time.perf_counter()
                rows, splits = _time_point(cfg, device, dtype, width, depth, log)
                out["results"].extend(rows)
                out["split"].extend(splits)
                log(f"{device_name} {dtype_name} width {width} depth {depth}: "
                    + ", ".join(f"{r['variant']} {r['median_ms']:.1f} ms x{r['ratio']:.2f}"
                                for r in rows if r.get("median_ms") is not None and r.get("ratio") is not None)
                    + f"  ({time.perf_counter() - t0:.0f} s)")
            if cfg.lightning_steps > 0 and cfg.lightning_variants:
                width, depth = cfg.focus
                out["lightning"].extend(_time_lightning(cfg, device, dtype, width, depth, log))
    if cfg.memory:
        # last, because the allocator setting it needs slows every later step down
        _memory_phase(cfg, out["results"], log)
    try:
        out["meta"]["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    return out


def _memory_phase(cfg: BenchConfig, rows: List[dict], log: Callable[[str], None]) -> None:
    """Fill ``peak_step_mb`` of every row.

    CPU rows are measured in one fresh Python process whose allocator is set up before any
    tensor exists (:func:`_memory_worker`): in this process the heap already holds freed
    blocks that a step would reuse unseen. CUDA rows are measured here.
    """
    specs = []
    for k, row in enumerate(rows):
        row["peak_step_mb"] = None
        if row.get("status") != "ok":
            continue
        spec = dict(index=k, variant=row["variant"], width=row["width"], depth=row["depth"], batch=cfg.batch,
                    in_features=cfg.in_features, num_classes=cfg.num_classes, dtype=row["dtype"],
                    device=row["device"], seed=cfg.seed)
        if row["device"] == "cuda":
            row["peak_step_mb"] = _measure_spec(spec)
        else:
            specs.append(spec)
    if not specs:
        return
    import subprocess

    code = "from benchmarks.bench import _memory_worker; _memory_worker()"
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    payload = json.dumps({"threads": torch.get_num_threads(), "specs": specs})
    proc = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        log(f"  memory worker failed: {proc.stderr.strip()[-500:]}")
        return
    for line in proc.stdout.splitlines():
        if line.startswith("PEAK "):
            index, value = line[5:].split()
            rows[int(index)]["peak_step_mb"] = None if value == "None" else float(value)


def _measure_spec(spec: dict) -> Optional[float]:
    runner = StepRunner(VARIANTS[spec["variant"]], width=spec["width"], depth=spec["depth"], batch=spec["batch"],
                        in_features=spec["in_features"], num_classes=spec["num_classes"],
                        dtype=getattr(torch, spec["dtype"]), device=torch.device(spec["device"]),
                        seed=spec["seed"])
    try:
        for _ in range(2):  # the optimizer state and any cached inverse exist before the measured step
            runner.step()
        return peak_step_mb(runner)
    except (NonFiniteError, RuntimeError):
        return None


def _memory_worker() -> None:
    """Entry point of the memory process: specs as JSON on stdin, ``PEAK index MB`` lines out."""
    _configure_malloc()
    payload = json.loads(sys.stdin.read())
    torch.set_num_threads(int(payload["threads"]))
    for spec in payload["specs"]:
        print(f"PEAK {spec['index']} {_measure_spec(spec)}", flush=True)


def _fmt_load(load) -> str:
    return "-" if not load else "/".join(f"{x:.2f}" for x in load)


def _fmt(v, spec=".1f") -> str:
    return "-" if v is None else format(v, spec)


def format_markdown(result: dict) -> str:
    """Tables: step time and ratio per point; the split; the Lightning path."""
    lines = []
    meta = result.get("meta", {})
    lines.append(f"Machine: {meta.get('cpu')} ({meta.get('torch_threads')} torch threads), "
                 f"torch {meta.get('torch')}, CUDA: {meta.get('cuda')}. "
                 f"Load average at start/end: {_fmt_load(meta.get('loadavg_start'))} / "
                 f"{_fmt_load(meta.get('loadavg_end'))}.")
    # the load at the start is other processes' (at the end it includes this benchmark's own)
    loads = (meta.get("loadavg_start") or [])[:1]
    if loads and meta.get("cpu_count") and max(loads) > 0.5 * meta["cpu_count"]:
        lines.append("")
        lines.append(f"**Warning: other processes kept the machine busy (1-minute load {max(loads):.1f} on "
                     f"{meta['cpu_count']} cores); multi-threaded BLAS timings under contention swing by "
                     "several times. Rerun on a quiet machine, or compare with --threads 1.**")
    lines.append("")
    groups: Dict[Tuple, List[dict]] = {}
    for r in result.get("results", []):
        groups.setdefault((r["device"], r["dtype"]), []).append(r)
    for (dev, dt), rows in groups.items():
        lines.append(f"### Step time, {dev}, {dt}, batch {rows[0]['batch']}")
        lines.append("")
        lines.append("| width | depth | variant | median ms | IQR ms | ratio to BP | peak step MB | state MB |")
        lines.append("|---:|---:|---|---:|---:|---:|---:|---:|")
        for r in rows:
            iqr = f"{_fmt(r.get('q1_ms'))}-{_fmt(r.get('q3_ms'))}"
            ratio = _fmt(r.get("ratio"), ".2f")
            if r["variant"] == r["baseline"]:
                ratio = "1 (baseline)"
            status = "" if r.get("status") == "ok" else f" ({r.get('status')[:40]})"
            lines.append(f"| {r['width']} | {r['depth']} | {r['label']}{status} | {_fmt(r.get('median_ms'))} | "
                         f"{iqr} | {ratio} | {_fmt(r.get('peak_step_mb'))} | {_fmt(r.get('state_mb'))} |")
        lines.append("")
    if result.get("split"):
        lines.append("### Split of one step (ms, median of instrumented steps)")
        lines.append("")
        lines.append("| device | dtype | width | depth | variant | forward | inverses | target pass | "
                     "local grads | penalty | optimizer | sum | step |")
        lines.append("|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for s in result["split"]:
            lines.append(
                f"| {s['device']} | {s['dtype']} | {s['width']} | {s['depth']} | {s['variant']} | "
                + " | ".join(_fmt(s[f"{k}_ms"]) for k in ("forward", "inverses", "target_pass",
                                                             "local_gradients", "penalty", "optimizer", "sum"))
                + f" | {_fmt(s.get('step_median_ms'))} |")
        lines.append("")
    if result.get("lightning"):
        lines.append("### Lightning `training_step` (Trainer) against the bare step, interleaved")
        lines.append("")
        lines.append("| device | dtype | width | depth | variant | Lightning ms | bare ms | ratio |")
        lines.append("|---|---|---:|---:|---|---:|---:|---:|")
        for r in result["lightning"]:
            lines.append(f"| {r['device']} | {r['dtype']} | {r['width']} | {r['depth']} | {r['variant']} | "
                         f"{_fmt(r['lightning_ms'])} | {_fmt(r['bare_ms'])} | {_fmt(r['ratio'], '.2f')} |")
        lines.append("")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="acceptance point only, few variants (< 1 min)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--markdown", metavar="PATH", help="write the tables as markdown")
    p.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, and cuda if present)")
    p.add_argument("--dtypes", nargs="+", default=None, help="float64 float32")
    p.add_argument("--widths", nargs="+", type=int, default=None, help="width sweep (at --width-sweep-depth)")
    p.add_argument("--depths", nargs="+", type=int, default=None, help="depth sweep (at --depth-sweep-width)")
    p.add_argument("--width-sweep-depth", type=int, default=None, help="depth of the width sweep")
    p.add_argument("--depth-sweep-width", type=int, default=None, help="width of the depth sweep")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--in-features", type=int, default=None)
    p.add_argument("--variants", nargs="+", default=None, help=f"at the acceptance point; from {sorted(VARIANTS)}")
    p.add_argument("--sweep-variants", nargs="+", default=None, help="on the other sweep points")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--min-repeats", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--budget-s", type=float, default=None, help="time budget per point and dtype")
    p.add_argument("--split-repeats", type=int, default=None)
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
