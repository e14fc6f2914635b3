"""Wall time and throughput of training epochs: :class:`EpochTimer`.

Lightning's ``ThroughputMonitor`` measures samples per second too, but writes only to the
trainer's loggers (nothing with ``--trainer.logger false``), needs a ``batch_size_fn``, and
keeps no epoch wall time, which ``fit``'s summary prints and the dashboards plot
(``time/epoch_s``); ``LearningRateMonitor`` needs a logger as well. Hence this small one.
"""
from __future__ import annotations

import time

import pytorch_lightning as pl

__all__ = ["EpochTimer"]


class EpochTimer(pl.Callback):
    """Logs ``time/epoch_s`` (wall time of each training epoch, validation excluded),
    ``time/images_per_s`` (training images per second, this process; under DDP also
    ``time/images_per_s_global``, all processes together) and, with
    ``log_lr=True``, ``train/lr`` (the first optimizer's learning rate).

    Unlike Lightning's ``LearningRateMonitor`` it also works with ``--trainer.logger false``
    (the values then reach the progress bar and ``trainer.callback_metrics`` only).
    """

    def __init__(self, *, log_lr: bool = True) -> None:
        self.log_lr = log_lr
        self._start = None
        self._images = 0
        self._validation_start = None
        self._validation_s = 0.0
        self.last_epoch_s: float | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()
        self._images = 0
        self._validation_s = 0.0

    # Lightning validates inside the training epoch, before on_train_epoch_end: that time is left out
    def on_validation_start(self, trainer, pl_module) -> None:
        if self._start is not None and not trainer.sanity_checking:
            self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._validation_start is not None:
            self._validation_s += time.perf_counter() - self._validation_start
            self._validation_start = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._images += len(batch[1])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._start is None:
            return
        elapsed = time.perf_counter() - self._start - self._validation_s
        self.last_epoch_s = elapsed
        pl_module.log("time/epoch_s", elapsed, on_step=False, on_epoch=True, rank_zero_only=True)
        per_process = self._images / max(elapsed, 1e-9)
        pl_module.log("time/images_per_s", per_process, on_step=False, on_epoch=True, rank_zero_only=True)
        if trainer.world_size > 1:
            # every process trains on an equal share, at the same pace (they synchronise each step)
            pl_module.log("time/images_per_s_global", per_process * trainer.world_size, on_step=False,
                          on_epoch=True, rank_zero_only=True)
        if self.log_lr and trainer.optimizers:
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            pl_module.log("train/lr", float(lr), on_step=False, on_epoch=True, rank_zero_only=True)
