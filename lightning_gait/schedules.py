"""Learning-rate schedules as callbacks: the rate is a function of the global step alone.

A schedule that reads nothing but ``trainer.global_step`` needs no state of its own, so a
run resumed from a checkpoint continues on the very rates an uninterrupted run would use.
It works with the rules' manual optimization (Lightning steps no scheduler there): before
each training batch it writes the rate into every parameter group.
"""
from __future__ import annotations

import math
from typing import Optional

import pytorch_lightning as pl

__all__ = ["CosineLR", "cosine_factor"]


def cosine_factor(step: int, total: int, *, warmup: int = 0, final: float = 0.0) -> float:
    """The multiplier of the base rate at ``step`` of ``total``: linear from ``1/warmup`` to 1
    over the first ``warmup`` steps, then half a cosine from 1 down to ``final``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0), span) / span
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


class CosineLR(pl.Callback):
    """Cosine decay of the rule's ``lr`` over training, with an optional linear warm-up.

    Args:
        warmup_steps: steps of linear warm-up.
        final_fraction: the rate at the end, as a fraction of ``lr``.
        total_steps: the steps the cosine spans; ``None``: the trainer's
            ``estimated_stepping_batches`` (from ``max_epochs`` / ``max_steps``, so a run
            resumed with another ``max_epochs`` changes its schedule from there on).
    """

    def __init__(self, warmup_steps: int = 0, final_fraction: float = 0.0, total_steps: Optional[int] = None) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if not 0.0 <= final_fraction <= 1.0:
            raise ValueError(f"final_fraction must lie in [0, 1], got {final_fraction}")
        if total_steps is not None and total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.warmup_steps, self.final_fraction, self.total_steps = warmup_steps, final_fraction, total_steps

    def rate(self, trainer: "pl.Trainer", base_lr: float) -> float:
        total = self.total_steps or int(trainer.estimated_stepping_batches)
        return base_lr * cosine_factor(trainer.global_step, total, warmup=self.warmup_steps, final=self.final_fraction)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        lr = self.rate(trainer, float(pl_module.lr))
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr
