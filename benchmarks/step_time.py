"""Timing of the steps: variants round-robin at one point, the split, and the Lightning path."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch

from lightning_gait.targets import NonFiniteError

from .split import profile_split
from .variants import VARIANTS, StepRunner, make_trainer, same_batch_loader, sync

__all__ = ["quantiles", "time_point", "time_lightning"]


def quantiles(values: Sequence[float]) -> Tuple[float, float, float]:
    """First quartile, median and third quartile."""
    v = sorted(values)
    if len(v) == 1:
        return v[0], v[0], v[0]
    q = statistics.quantiles(v, n=4, method="inclusive")
    return q[0], statistics.median(v), q[2]


def _runner(cfg, name: str, device: torch.device, dtype: torch.dtype, width: int, depth: int) -> StepRunner:
    return StepRunner(VARIANTS[name], width=width, depth=depth, batch=cfg.batch, in_features=cfg.in_features,
                      num_classes=cfg.num_classes, dtype=dtype, device=device, seed=cfg.seed)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def time_point(cfg, device: torch.device, dtype: torch.dtype, width: int, depth: int,
               log: Callable[[str], None]) -> Tuple[List[dict], List[dict]]:
    """Every variant of ``cfg`` at ``(width, depth)``, round-robin; then the split of each.

    Returns ``(rows, splits)``: one result row per variant (step time, quartiles, the
    paired ratio to its baseline, state size) and one split row per variant (see
    :mod:`benchmarks.split`), when ``cfg.split``.
    """
    names = cfg.variants_at((width, depth))
    runners: Dict[str, StepRunner] = {name: _runner(cfg, name, device, dtype, width, depth) for name in names}

    def guarded(name: str) -> Optional[float]:
        runner = runners[name]
        if runner.failed:
            return None
        try:
            sync(device)
            start = time.perf_counter()
            runner.step()
            sync(device)
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
        runner, variant = runners[name], VARIANTS[name]
        valid = [t for t in times[name] if t is not None]
        row = {
            "device": device.type, "dtype": _dtype_name(dtype), "width": width, "depth": depth,
            "batch": cfg.batch, "variant": name, "label": variant.label, "baseline": variant.baseline,
            "regime": variant.regime, "overrides": list(variant.overrides),
            "activation": runner.net.activation_name, "repeats": len(valid),
            "status": "ok" if not runner.failed else runner.failed,
        }
        if valid:
            q1, med, q3 = quantiles(valid)
            row.update(median_ms=med * 1e3, q1_ms=q1 * 1e3, q3_ms=q3 * 1e3, min_ms=min(valid) * 1e3)
            base = times.get(variant.baseline, [])
            paired = [a / b for a, b in zip(times[name], base) if a is not None and b is not None]
            base_valid = [t for t in base if t is not None]
            row["ratio"] = statistics.median(paired) if paired else None
            row["ratio_q1"], _, row["ratio_q3"] = quantiles(paired) if paired else (None, None, None)
            row["ratio_of_medians"] = med / statistics.median(base_valid) if base_valid else None
        else:
            row.update(median_ms=None, q1_ms=None, q3_ms=None, min_ms=None, ratio=None,
                       ratio_q1=None, ratio_q3=None, ratio_of_medians=None)
        row["state_mb"] = runner.state_bytes() / 2**20
        rows.append(row)
    failed = {name for name, runner in runners.items() if runner.failed}
    runners.clear()  # free the timed runners before the split builds its own

    splits = []
    for row in rows if cfg.split else []:
        name = row["variant"]
        if name in failed:
            continue
        try:
            split = profile_split(_runner(cfg, name, device, dtype, width, depth), steps=cfg.split_repeats,
                                  warmup=min(cfg.warmup, 3))
        except (NonFiniteError, RuntimeError) as err:
            log(f"  split of {name} failed: {err}")
            continue
        if split is None:
            log(f"  split of {name}: training stopped early")
            continue
        splits.append({"device": device.type, "dtype": _dtype_name(dtype), "width": width, "depth": depth,
                       "batch": cfg.batch, "variant": name, "steps": cfg.split_repeats, **split,
                       "bare_step_median_ms": row["median_ms"]})
    return rows, splits


class _Interleave(pl.Callback):
    """Times each ``training_step`` (with its hooks) and, right after it, the bare step of a twin."""

    def __init__(self, twin: StepRunner, skip: int, device: torch.device) -> None:
        self.twin, self.skip, self.device = twin, skip, device
        self.lightning: List[float] = []
        self.bare: List[float] = []
        self._t = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        sync(self.device)
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync(self.device)
        elapsed = time.perf_counter() - self._t
        t = time.perf_counter()
        self.twin.step()
        sync(self.device)
        bare = time.perf_counter() - t
        if batch_idx >= self.skip:
            self.lightning.append(elapsed)
            self.bare.append(bare)


def time_lightning(cfg, device: torch.device, dtype: torch.dtype, width: int, depth: int,
                   log: Callable[[str], None]) -> List[dict]:
    """``training_step`` under a real Trainer, interleaved with the bare step of a twin."""
    import warnings

    rows = []
    steps = cfg.lightning_steps
    skip = min(cfg.warmup, 3)
    for name in cfg.lightning_variants:
        module_runner = _runner(cfg, name, device, dtype, width, depth)
        callback = _Interleave(_runner(cfg, name, device, dtype, width, depth), skip, device)
        trainer = make_trainer(device, dtype, steps + skip, [callback])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                trainer.fit(module_runner.rule, train_dataloaders=same_batch_loader(module_runner, steps + skip))
            except (NonFiniteError, RuntimeError) as err:
                log(f"  lightning {name} failed: {err}")
                continue
        paired = [a / b for a, b in zip(callback.lightning, callback.bare)]
        rows.append({
            "device": device.type, "dtype": _dtype_name(dtype), "width": width, "depth": depth,
            "batch": cfg.batch, "variant": name, "steps": len(paired),
            "lightning_ms": statistics.median(callback.lightning) * 1e3 if paired else None,
            "bare_ms": statistics.median(callback.bare) * 1e3 if paired else None,
            "ratio": statistics.median(paired) if paired else None,
        })
    return rows
