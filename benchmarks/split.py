"""The split of a training step, read from the profiler ranges the library marks.

:meth:`~lightning_gait.rules.LocalLearningRule.training_step` runs under a real
``Trainer`` and :func:`torch.profiler.profile` (CPU activity; CUDA too on a GPU) for
``steps`` steps after ``warmup`` unprofiled ones. Each range of
:data:`lightning_gait.rules.base.STEP_RANGES` is summed over the profiled steps (its own
time plus its children's: the CPU wall time inside the range) and divided by their number.
The ranges can nest (GAIT-prop's ``inverses`` lie inside ``targets``): ``sum`` adds the
outermost ranges only, and ``other`` is the rest of the step (Lightning's hooks, metrics,
logging, the finiteness check of the update, the loss of the output layer).
"""
from __future__ import annotations

import os
import time
from typing import Dict, List, Optional

import pytorch_lightning as pl
import torch
from torch.profiler import ProfilerActivity, profile

from lightning_gait.rules.base import STEP_RANGES

from .variants import StepRunner, make_trainer, same_batch_loader, sync

__all__ = ["RANGE_KEYS", "aggregate_ranges", "profile_split"]

#: short names of the ranges (``lightning_gait.forward`` -> ``forward``), in step order
RANGE_KEYS = {name: name.rsplit(".", 1)[1] for name in STEP_RANGES}


def _device_us(event) -> float:
    value = getattr(event, "device_time_total", None)
    if value is None:
        value = getattr(event, "cuda_time_total", 0.0)
    return float(value or 0.0)


def aggregate_ranges(events, steps: int) -> Dict[str, float]:
    """Per-step milliseconds of every step range in ``events`` (a profiler's ``events()``).

    ``{key}_ms``: CPU time inside the range (self + children); ``{key}_device_ms``: time of
    the device kernels launched inside it (CUDA only); ``sum_ms``: the outermost ranges.
    """
    cpu = {key: 0.0 for key in RANGE_KEYS.values()}
    device = dict(cpu)
    outermost = 0.0
    for event in events:
        key = RANGE_KEYS.get(event.name)
        if key is None:
            continue
        cpu[key] += event.cpu_time_total
        device[key] += _device_us(event)
        parent = event.cpu_parent
        while parent is not None and parent.name not in RANGE_KEYS:
            parent = parent.cpu_parent
        if parent is None:
            outermost += event.cpu_time_total
    out = {f"{key}_ms": cpu[key] / 1e3 / steps for key in cpu}
    if any(device.values()):
        out.update({f"{key}_device_ms": device[key] / 1e3 / steps for key in device})
    out["sum_ms"] = outermost / 1e3 / steps
    return out


class _ProfiledSteps(pl.Callback):
    """Starts the profiler at batch ``warmup``, stops it after the last batch; times each profiled step."""

    def __init__(self, prof, device: torch.device, warmup: int, steps: int) -> None:
        self.prof, self.device, self.warmup, self.steps = prof, device, warmup, steps
        self.seconds: List[float] = []
        self.running = False
        self._t = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        sync(self.device)
        if batch_idx == self.warmup:
            self.prof.start()
            self.running = True
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync(self.device)
        if batch_idx >= self.warmup:
            self.seconds.append(time.perf_counter() - self._t)
        if batch_idx == self.warmup + self.steps - 1:
            self.stop()

    def stop(self) -> None:
        if self.running:
            self.prof.stop()
            self.running = False


def profile_split(runner: StepRunner, *, steps: int, warmup: int) -> Optional[Dict[str, float]]:
    """The split of ``runner``'s rule's ``training_step`` (see the module docstring).

    Returns the per-step range times, ``step_ms`` (mean wall time of a profiled
    ``training_step`` with its Lightning hooks) and ``other_ms`` (``step_ms - sum_ms``);
    ``None`` when training stopped before every profiled step ran.
    """
    import warnings

    device = runner.device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    # Kineto, the profiler's backend, prints its start and stop markers for every profile (and,
    # without a GPU, a gpuGetDeviceCount "error"); level 6 keeps it silent. Read when the first
    # profile starts; a KINETO_LOG_LEVEL already set wins.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    prof = profile(activities=activities)
    callback = _ProfiledSteps(prof, device, warmup, steps)
    trainer = make_trainer(device, runner.x.dtype, warmup + steps, [callback])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(runner.rule, train_dataloaders=same_batch_loader(runner, warmup + steps))
    finally:
        callback.stop()
    if len(callback.seconds) < steps:
        return None
    out = aggregate_ranges(prof.events(), steps)
    out["step_ms"] = sum(callback.seconds) / steps * 1e3
    out["other_ms"] = out["step_ms"] - out["sum_ms"]
    return out
