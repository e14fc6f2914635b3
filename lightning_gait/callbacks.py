"""Lightning callbacks that log what a GAIT-prop researcher watches while training.

* :class:`BPCorrelation`: per layer, how close the rule's update is to backprop's
  (``bp_corr``, ``bp_cos``, ``bp_angle``, ``bp_norm_ratio``), optionally also on freshly
  initialised networks (the paper's Fig. 2B);
* :class:`TargetNorms`: per layer, ``||t_l - a_l||``, the gamma used and the multiplier's
  log10 range (``target_norm``, ``gamma``, ``gamma_min``, ``gamma_max``,
  ``log10_multiplier``, ``log10_multiplier_min``, ``log10_multiplier_max``);
* :class:`Orthogonality`: per square layer, ``||W W^T - I||_F / sqrt(n)`` and the
  condition number (``ortho``, ``cond``).

The math lives in :mod:`lightning_gait.diagnostics` (plain PyTorch, float64). Metric
names are ``{family}/layer_{k}``, layers counted from 1 at the input.

When they measure. Every ``every_n_steps`` training batches (counted like the step
Lightning logs ``train/loss`` at: the number of batches trained before this one), the
first batch included. :class:`BPCorrelation` and :class:`Orthogonality` measure at the
weights *before* this batch's optimizer step, i.e. the point at which the rule computes
the update it is about to apply (:class:`Orthogonality` and backprop's gradient in
``on_train_batch_start``; the rule's update is the one the step computes).
:class:`TargetNorms` reads ``rule.last_diagnostics`` in ``on_train_batch_end``: the
targets that this batch's step used (also computed at the weights before the step).

Where they log. Straight to ``trainer.loggers`` with ``logger.log_metrics(metrics,
step=step)``, so that no value is lost to ``Trainer(log_every_n_steps=...)``. A CSV
logger gets the scalars; a :class:`~pytorch_lightning.loggers.WandbLogger` gets them too,
and at each validation end one bar chart of ``bp_corr`` per layer
(``charts/bp_corr_by_layer``) and one line chart per metric family over training
(``charts/{family}``).

Data-parallel training. Each callback measures on global rank 0 only
(``trainer.is_global_zero``) on rank 0's own batch, and logs from there (Lightning's
loggers write on rank 0 only). Nothing in the rank-0 branch communicates: the rule's
update and the backprop gradient are taken on the unwrapped network with
:func:`torch.autograd.grad` (no DDP hook fires, no ``.grad`` is touched), so the other
ranks cannot wait on a collective that they never enter; they just reach the next
gradient all-reduce a little earlier. One log per measurement, never one per rank.

Cost. A measurement is extra work on one batch (:class:`BPCorrelation`: backprop's
gradient, and a gradient of the step's own local objective) every ``every_n_steps`` batches (defaults 50; 100 for
:class:`Orthogonality`). ``python -m benchmarks.callbacks_overhead`` (from the repository
root) times training with and without them; ``benchmarks/README.md`` has the figures.
"""
from __future__ import annotations

import functools
import time
import warnings
from contextlib import contextmanager
from typing import Dict, Iterable, List, Tuple

import torch
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import WandbLogger

from .diagnostics import (
    ALIGNMENT_FAMILIES,
    alignment_at_init,
    alignment_metrics,
    backprop_gradients,
    layer_key,
    orthogonality_metrics,
    rule_alignment,
    target_metrics,
    warn_nonfinite,
)
from .families import DIAGNOSTICS
from .targets import NonFiniteError

__all__ = ["BPCorrelation", "TargetNorms", "Orthogonality", "DiagnosticCallback", "default_callbacks"]


def batch_step(trainer: "pl.Trainer") -> int:
    """The step Lightning logs this training batch's metrics at (batches trained before it)."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    step = getattr(loop, "_batches_that_stepped", None)
    return int(step) if step is not None else int(trainer.global_step)


def _layer_number(name: str) -> int:
    return int(name.rsplit("_", 1)[1])


class DiagnosticCallback(Callback):
    """Shared machinery: when to measure, how to log scalars and W&B charts.

    Args:
        every_n_steps: measure every this many training batches (the first one included);
            0 turns periodic measurement off.
        charts: log W&B line charts (and bar charts) at each validation end when a
            :class:`~pytorch_lightning.loggers.WandbLogger` is attached.
        max_chart_points: at most this many steps per line chart (evenly subsampled).
    """

    #: metric families drawn as one W&B line chart each (a declared diagnostic's
    #: ``chart_families``, :mod:`lightning_gait.families`)
    chart_families: Tuple[str, ...] = ()

    def __init__(self, *, every_n_steps: int = 50, charts: bool = True, max_chart_points: int = 200) -> None:
        super().__init__()
        if not isinstance(every_n_steps, int) or isinstance(every_n_steps, bool) or every_n_steps < 0:
            raise ValueError(f"every_n_steps must be an integer >= 0 (0: off), got {every_n_steps!r}")
        if not isinstance(max_chart_points, int) or max_chart_points < 2:
            raise ValueError(f"max_chart_points must be an integer >= 2, got {max_chart_points!r}")
        self.every_n_steps = every_n_steps
        self.charts = bool(charts)
        self.max_chart_points = max_chart_points
        #: ``(step, metrics)`` of every measurement on this rank, oldest first
        self.history: List[Tuple[int, Dict[str, float]]] = []
        #: wall seconds spent measuring and logging (``benchmarks/callbacks_overhead.py`` reads it)
        self.seconds_spent = 0.0
        #: synchronise CUDA before timing a measurement, so that :attr:`seconds_spent` is exact
        self.synchronize_timing = False

    @property
    def latest(self) -> Dict[str, float]:
        """The most recent measurement (empty before the first)."""
        return self.history[-1][1] if self.history else {}

    # ------------------------------------------------------------------ helpers
    @contextmanager
    def timed(self):
        """Adds the wall time of the block to :attr:`seconds_spent`."""
        if self.synchronize_timing and torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.synchronize_timing and torch.cuda.is_available():
                torch.cuda.synchronize()
            self.seconds_spent += time.perf_counter() - start

    def is_due(self, trainer: "pl.Trainer") -> bool:
        return self.every_n_steps > 0 and batch_step(trainer) % self.every_n_steps == 0

    @staticmethod
    def require(pl_module: "pl.LightningModule", attributes: Iterable[str], who: str) -> None:
        for attr in attributes:
            if not hasattr(pl_module, attr):
                raise ValueError(
                    f"{who} needs a LocalLearningRule-like LightningModule with .{attr}; "
                    f"got {type(pl_module).__name__}"
                )

    def log_metrics(self, trainer: "pl.Trainer", metrics: Dict[str, float], step: int) -> None:
        """Warn about NaNs (kept as NaN), remember, and send to every logger at ``step``."""
        if not metrics:
            return
        warn_nonfinite(metrics, where=f"at step {step} ({type(self).__name__})")
        self.history.append((step, dict(metrics)))
        for logger in trainer.loggers:
            logger.log_metrics(dict(metrics), step=step)

    def chart_payload(self, wandb) -> Dict[str, object]:
        """W&B line charts, one per family: every layer's value over the measured steps."""
        payload: Dict[str, object] = {}
        history = self.history
        if len(history) > self.max_chart_points:
            stride = (len(history) - 1) / (self.max_chart_points - 1)
            history = [history[round(j * stride)] for j in range(self.max_chart_points)]
        for family in self.chart_families:
            names = sorted(
                {n for _, m in history for n in m if n.split("/", 1)[0] == family}, key=_layer_number
            )
            if not names:
                continue
            rows = [(step, m) for step, m in history if all(n in m for n in names)]
            if not rows:
                continue
            xs = [step for step, _ in rows]
            ys = [[m[n] for _, m in rows] for n in names]
            keys = [n.split("/", 1)[1] for n in names]
            payload[f"charts/{family}"] = wandb.plot.line_series(
                xs=xs, ys=ys, keys=keys, title=f"{family} per layer", xname="step"
            )
        return payload

    # ------------------------------------------------------------------ hooks
    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if not self.charts or trainer.sanity_checking or not trainer.is_global_zero or not self.history:
            return
        runs = [logger.experiment for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if not runs:
            return
        import wandb

        with self.timed():
            payload = self.chart_payload(wandb)
            if payload:
                payload["trainer/global_step"] = trainer.global_step
                for run in runs:
                    run.log(payload)


class BPCorrelation(DiagnosticCallback):
    """Per layer, the rule's weight update against backprop's gradient on the same batch.

    Logs ``bp_corr/layer_{k}`` (Pearson), ``bp_cos/layer_{k}``, ``bp_angle/layer_{k}``
    (degrees) and ``bp_norm_ratio/layer_{k}`` (``||g|| / ||g_bp||``), computed in float64
    (:func:`lightning_gait.diagnostics.alignment_metrics`): the rule's
    ``local_gradients(x, y)`` against ``torch.autograd.grad`` of its cross-entropy loss
    (same ``loss_reduction``), weights only, without the orthogonality term, at the
    weights before the step, under the trainer's precision context. ``.grad`` is never
    touched and nothing is stepped. A rule whose targets are non-finite on that batch
    gets NaN at every layer (with a warning).

    How. Backprop's gradient is taken in ``on_train_batch_start``. For a rule whose
    ``training_step`` and ``local_gradients`` are
    :class:`~lightning_gait.rules.LocalLearningRule`'s, the rule's update is the step's
    own: the callback sets the rule's ``objective_hook``, takes the gradient of the
    step's local objective (the same tensors ``local_gradients`` returns, without a
    second forward and target pass) and logs in ``on_train_batch_end``. A rule that overrides either is measured with its
    ``local_gradients`` in ``on_train_batch_start``
    (:func:`lightning_gait.diagnostics.rule_alignment`).

    Args:
        every_n_steps: measure every this many batches (first included); 0: only at init.
        at_init: on the first training batch, also measure on ``init_networks`` freshly
            initialised networks (the paper's Fig. 2B: ``torch.manual_seed(init_seed + j)``
            then ``net.reset_parameters()``; the rule's own weights are restored after)
            and log ``{family}_init/layer_{k}`` (mean over networks) and
            ``{family}_init_std/layer_{k}`` (standard deviation), e.g. ``bp_corr_init/layer_1``.
        init_networks, init_seed: see ``at_init``.
        charts, max_chart_points: see :class:`DiagnosticCallback`.
    """

    chart_families = DIAGNOSTICS["alignment"].chart_families

    def __init__(
        self,
        *,
        every_n_steps: int = 50,
        at_init: bool = False,
        init_networks: int = 10,
        init_seed: int = 0,
        charts: bool = True,
        max_chart_points: int = 200,
    ) -> None:
        super().__init__(every_n_steps=every_n_steps, charts=charts, max_chart_points=max_chart_points)
        if not isinstance(init_networks, int) or init_networks < 1:
            raise ValueError(f"init_networks must be a positive integer, got {init_networks!r}")
        self.at_init = bool(at_init)
        self.init_networks = init_networks
        self.init_seed = int(init_seed)
        self._init_done = False
        #: ``{family}_init/layer_k`` and ``{family}_init_std/layer_k`` once measured
        self.init_metrics: Dict[str, float] = {}
        #: ``(step, backprop's gradients)`` between the start and the end of a measured batch,
        #: and the rule's update once its step has formed it
        self._pending = None
        self._updates = None

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        self.require(pl_module, ("net", "loss_reduction", "local_gradients"), "BPCorrelation")

    def measure(self, trainer: "pl.Trainer", pl_module, x, y) -> Dict[str, float]:
        """:func:`~lightning_gait.diagnostics.rule_alignment` in the trainer's precision context."""
        with trainer.precision_plugin.train_step_context():
            try:
                return rule_alignment(pl_module, x, y)
            except NonFiniteError as err:
                return self._nan_metrics(pl_module, str(err))

    @staticmethod
    def _nan_metrics(pl_module, reason: str) -> Dict[str, float]:
        warnings.warn(f"BPCorrelation: {reason}; logging NaN at every layer", RuntimeWarning)
        nan = float("nan")
        return {layer_key(f, i): nan for f in ALIGNMENT_FAMILIES for i in range(pl_module.net.num_layers)}

    @staticmethod
    def reuses_step(pl_module) -> bool:
        """Whether the rule's own training step can hand over its update (see the class docs)."""
        from .rules.base import LocalLearningRule

        cls = type(pl_module)
        return (isinstance(pl_module, LocalLearningRule) and cls.training_step is LocalLearningRule.training_step
                and cls.local_gradients is LocalLearningRule.local_gradients)

    def measure_at_init(self, trainer: "pl.Trainer", pl_module, x, y) -> Dict[str, float]:
        with trainer.precision_plugin.train_step_context():
            values = alignment_at_init(pl_module, x, y, num_networks=self.init_networks, seed=self.init_seed)
        metrics: Dict[str, float] = {}
        for name, v in values.items():
            family, layer = name.split("/", 1)
            metrics[f"{family}_init/{layer}"] = float(v.mean())
            metrics[f"{family}_init_std/{layer}"] = float(v.std()) if v.numel() > 1 else float("nan")
        return metrics

    def on_train_batch_start(self, trainer: "pl.Trainer", pl_module, batch, batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        step = batch_step(trainer)
        x, y = batch[0], batch[1]
        if self.at_init and not self._init_done:
            self._init_done = True
            with self.timed():
                self.init_metrics = self.measure_at_init(trainer, pl_module, x, y)
                self.log_init(trainer, self.init_metrics, step)
        if self.is_due(trainer):
            with self.timed():
                if not self.reuses_step(pl_module):
                    self.log_metrics(trainer, self.measure(trainer, pl_module, x, y), step)
                    return
                with trainer.precision_plugin.train_step_context():
                    reference = backprop_gradients(pl_module.net, x, y, loss_reduction=pl_module.loss_reduction)
                self._pending, self._updates = (step, reference), None
                pl_module.objective_hook = functools.partial(self._capture, pl_module)

    def _capture(self, pl_module, out) -> None:
        with self.timed():
            self._updates = pl_module.net.pair_gradients(out.objective, retain_graph=True)

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module, outputs, batch, batch_idx: int) -> None:
        if self._pending is None:
            return
        (step, reference), self._pending = self._pending, None
        updates, self._updates = self._updates, None
        pl_module.objective_hook = None
        with self.timed():
            if updates is None:
                metrics = self._nan_metrics(pl_module, f"the step at {step} formed no finite update")
            else:
                metrics = alignment_metrics(updates, reference)
            self.log_metrics(trainer, metrics, step)

    def log_init(self, trainer: "pl.Trainer", metrics: Dict[str, float], step: int) -> None:
        warn_nonfinite({k: v for k, v in metrics.items() if "_init_std/" not in k}, where="at init")
        for logger in trainer.loggers:
            logger.log_metrics(dict(metrics), step=step)

    def chart_payload(self, wandb) -> Dict[str, object]:
        payload = super().chart_payload(wandb)
        corr = {n: v for n, v in self.latest.items() if n.startswith("bp_corr/")}
        if corr:
            names = sorted(corr, key=_layer_number)
            table = wandb.Table(columns=["layer", "bp_corr"], data=[[n.split("/", 1)[1], corr[n]] for n in names])
            payload["charts/bp_corr_by_layer"] = wandb.plot.bar(
                table, "layer", "bp_corr", title="correlation with backprop per layer"
            )
        return payload


class TargetNorms(DiagnosticCallback):
    """Per layer, the targets the rule used on this batch: norms, gamma, multipliers.

    Reads ``rule.last_diagnostics`` (a :class:`~lightning_gait.targets.TargetTrace`, set
    by GAIT-prop and TP during the training step; nothing is recomputed) and logs
    :func:`lightning_gait.diagnostics.target_metrics`: ``target_norm/layer_{k}`` (batch
    mean of ``||t_l - a_l||``), ``gamma/layer_{k}`` / ``gamma_min`` / ``gamma_max`` (layers
    2..L: the layers that form a target below them) and ``log10_multiplier/layer_{k}`` /
    ``_min`` / ``_max``. To be sure the trace is this batch's, the callback clears
    ``last_diagnostics`` at the start of a batch it measures. Rules without targets
    (Backprop, FA) log nothing (one warning).
    """

    chart_families = DIAGNOSTICS["targets"].chart_families

    def __init__(self, *, every_n_steps: int = 50, charts: bool = True, max_chart_points: int = 200) -> None:
        super().__init__(every_n_steps=every_n_steps, charts=charts, max_chart_points=max_chart_points)
        self._warned = False

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        self.require(pl_module, ("last_diagnostics",), "TargetNorms")

    def on_train_batch_start(self, trainer: "pl.Trainer", pl_module, batch, batch_idx: int) -> None:
        if trainer.is_global_zero and self.is_due(trainer):
            pl_module.last_diagnostics = None

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module, outputs, batch, batch_idx: int) -> None:
        if not trainer.is_global_zero or not self.is_due(trainer):
            return
        trace = pl_module.last_diagnostics
        if trace is None or not hasattr(trace, "differences"):
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"TargetNorms: {type(pl_module).__name__} left no TargetTrace in last_diagnostics "
                    "(rules without targets, such as Backprop and FA, have none); nothing logged",
                    RuntimeWarning,
                )
            return
        with self.timed():
            self.log_metrics(trainer, target_metrics(trace), batch_step(trainer))


class Orthogonality(DiagnosticCallback):
    """Per square layer (2..L), ``||W W^T - I||_F / sqrt(n)`` and the condition number of ``W``.

    Logs ``ortho/layer_{k}`` and ``cond/layer_{k}``
    (:func:`lightning_gait.diagnostics.orthogonality_metrics`, float64) at the weights
    before the step. The condition number costs an SVD (``O(n^3)``), hence a sparser
    default.

    Args:
        every_n_steps: measure every this many batches (first included).
        condition: also log the condition number.
    """

    chart_families = DIAGNOSTICS["orthogonality"].chart_families

    def __init__(
        self, *, every_n_steps: int = 100, condition: bool = True, charts: bool = True, max_chart_points: int = 200
    ) -> None:
        super().__init__(every_n_steps=every_n_steps, charts=charts, max_chart_points=max_chart_points)
        self.condition = bool(condition)

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        self.require(pl_module, ("net",), "Orthogonality")
        if not hasattr(pl_module.net, "orthogonality_terms"):
            raise ValueError(
                f"Orthogonality needs a network implementing lightning_gait.networks.InvertibleNetwork; "
                f"got {type(pl_module.net).__name__}"
            )

    def on_train_batch_start(self, trainer: "pl.Trainer", pl_module, batch, batch_idx: int) -> None:
        if trainer.is_global_zero and self.is_due(trainer):
            with self.timed():
                metrics = orthogonality_metrics(pl_module.net, condition=self.condition)
                self.log_metrics(trainer, metrics, batch_step(trainer))


def default_callbacks() -> List[DiagnosticCallback]:
    """The three callbacks at their default settings."""
    return [BPCorrelation(), TargetNorms(), Orthogonality()]

