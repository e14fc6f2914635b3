"""``LocalLearningRule``: the one manual-optimization loop that every learning rule shares.

A rule turns a batch into a *local objective*: a scalar whose gradient with respect to
each layer's weight and bias is that layer's update (Lightning's contract for manual
optimization: we call ``self.manual_backward`` and step the optimizer ourselves). For the
local rules (GAIT-prop, TP, FA) the objective is

    sum_l  sum_n  < s_l(n), a_l(n) >,       s_l = d loss_l / d a_l  (held constant)

over a forward pass whose layer inputs are detached, so autograd sends each ``s_l`` to
layer ``l``'s parameters only: exactly the gradient of the layer-local losses (eq. 6 of
the GAIT-prop paper) at the current point, at the cost of one matrix product per layer.
A subclass says only how the signals ``s_l`` are made (:meth:`layer_signals`), or, like
:class:`~lightning_gait.rules.backprop.Backprop`, overrides :meth:`local_objective`.

One training step (:meth:`training_step`):

0. checks of the batch (:meth:`check_batch`: dtype, size, labels in range) and of the
   previous step (its weights finite, its loss not grown by orders of magnitude), read
   from the device together, once;
1. ``local_objective(x, y)``: forward, targets, per-layer signals (non-finite targets
   raise :class:`~lightning_gait.errors.NonFiniteError` naming layer and step; a layer
   singular to working precision, :class:`~lightning_gait.errors.SingularLayerError`);
2. plus ``ortho_weight * ||W W^T - I||_F^2`` over square layers (a surrogate with the
   same gradient, :func:`~lightning_gait.networks.orthogonality_surrogate`);
3. one ``self.manual_backward`` of the sum, so that DDP all-reduces it like any
   gradient (with ``loss_reduction="sum"`` it is scaled by the world size, so that the
   averaged gradient is the gradient of the sum over the global batch);
4. a check that every update is finite, then one optimizer step (Adam by default),
   after which the sum of each new weight tensor and the loss stay on the device until
   the checks of item 0 of the next step (or validation, a checkpoint, the end of
   training) read them.

Non-finite values never reach a checkpoint: :meth:`on_save_checkpoint` refuses one whose
weights or optimizer state hold a NaN or an infinity. Rules that invert layers refuse
half and mixed precisions when fitting (:meth:`check_precision`).

Logged keys: ``train/loss``, ``train/acc``, ``train/ortho_penalty``, ``val/loss``,
``val/acc``, ``val/acc_best``, ``test/loss``, ``test/acc``. Losses are logged as the mean
cross-entropy per sample whatever ``loss_reduction`` is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor
from torch.nn import functional as F
from torch.profiler import record_function
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from ..errors import BatchError, NonFiniteError, PrecisionError, SingularLayerError
from ..networks import ForwardTrace, InvertibleNetwork, orthogonality_surrogate
from ..targets import first_nonfinite, output_gradient

__all__ = ["LocalLearningRule", "LocalObjective", "NONFINITE_POLICIES", "STEP_RANGES"]

NONFINITE_POLICIES = ("raise", "skip")

#: precisions in which a rule that inverts layers can compute its targets
INVERTIBLE_PRECISIONS = ("64-true", "64", "32-true", "32")

#: profiler ranges (``torch.profiler.record_function``) that split a training step:
#: the forward pass, the layer inverses, the target pass, the orthogonality penalty, the
#: backward of the local objective (the local gradients) and the optimizer step
STEP_RANGES = ("lightning_gait.forward", "lightning_gait.inverses", "lightning_gait.targets",
               "lightning_gait.penalty", "lightning_gait.backward", "lightning_gait.optimizer")


def _fused_adam_devices() -> set:
    """Device types PyTorch's fused Adam supports (``cpu`` and ``cuda`` if it cannot tell)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        return set(_get_fused_kernels_supported_devices())
    except (ImportError, AttributeError):  # a private helper: fall back where it moved
        return {"cpu", "cuda"}


@dataclass
class LocalObjective:
    """What :meth:`LocalLearningRule.local_objective` returns for one batch.

    ``objective`` carries the graph whose parameter gradient is the update; ``loss`` is
    the output loss value (with the rule's reduction, no graph); ``logits`` have no graph.
    """

    objective: Tensor
    loss: Tensor
    logits: Tensor
    trace: Optional[ForwardTrace] = None


@dataclass
class _StepRecord:
    """What an optimizer step leaves to be read from the device later, in one go."""

    step: int
    values: Tensor  # the sum of every network parameter, then the per-sample training loss


class LocalLearningRule(pl.LightningModule):
    """Base class of every learning rule: owns the manual-optimization loop and metrics.

    Args:
        net: the network to train, any :class:`~lightning_gait.networks.InvertibleNetwork`
            (e.g. :class:`~lightning_gait.InvertibleMLP`). The rule trains this very object:
            no copy, no change of dtype or device (the trainer's precision and accelerator
            decide those).
        lr, betas, adam_eps: Adam's hyperparameters (defaults: the scaling paper's).
        ortho_weight: weight of the orthogonality penalty ``||W W^T - I||_F^2`` on square
            layers (0 turns it off).
        loss_reduction: ``"sum"`` over the batch (the reference code) or ``"mean"``.
        on_nonfinite: ``"raise"`` a :class:`NonFiniteError` naming the layer and step, or
            ``"skip"`` the batch (no optimizer step), warn and count it in
            ``train/skipped_batches``. Non-finite weights after an optimizer step cannot
            be skipped: they raise under either policy.
        max_consecutive_skips: under ``"skip"``, the ``max_consecutive_skips``-th failing
            batch in a row raises instead of being skipped (so ``N - 1`` are skipped; 1
            raises at once): weights that have diverged make every batch fail.
        fused_adam: use PyTorch's fused Adam kernel (``torch.optim.Adam(fused=True)``).
            ``None`` (default): fused wherever every parameter is a floating tensor on a
            device the fused kernel supports (CPU, CUDA, ...), else PyTorch's default Adam.
            Same update to round-off (measured 1e-16 relative in float64), in one kernel.
            ``True`` raises where it is not available; ``False`` uses PyTorch's default
            Adam. A resumed run uses the choice made now, whichever implementation wrote
            the checkpoint.

    Extension points: :meth:`layer_signals` (what most rules override),
    :meth:`local_objective`, :meth:`configure_optimizers`.
    """

    #: rules that invert layers set this; they refuse a network that cannot be inverted
    #: and, when fitting, half and mixed precisions
    requires_invertible: bool = False
    #: what :meth:`check_precision` advises instead of a refused precision
    precision_advice: str = "use --trainer.precision 64-true (or 32-true)"
    #: warn when the training loss per sample exceeds this many times its start
    #: (or ln(num_classes), if larger), then again at each further such factor
    loss_growth_warning: float = 100.0

    def __init__(
        self,
        net: InvertibleNetwork,
        *,
        lr: float = 1.9e-5,
        betas: Tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-6,
        ortho_weight: float = 0.0,
        loss_reduction: str = "sum",
        on_nonfinite: str = "raise",
        max_consecutive_skips: int = 10,
        fused_adam: Optional[bool] = None,
    ) -> None:
        super().__init__()
        if not isinstance(net, InvertibleNetwork):
            raise ValueError(
                f"net must implement lightning_gait.networks.InvertibleNetwork (e.g. InvertibleMLP), "
                f"got {type(net).__name__}"
            )
        if self.requires_invertible and not net.invertible:
            raise ValueError(
                f"{type(self).__name__} inverts layers and needs a network whose layers after the first "
                f"are all square: {type(net).__name__} is not (for InvertibleMLP: square_output=True)"
            )
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if adam_eps <= 0:
            raise ValueError(f"adam_eps must be positive, got {adam_eps}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        if ortho_weight < 0:
            raise ValueError(f"ortho_weight must be >= 0, got {ortho_weight}")
        if loss_reduction not in ("sum", "mean"):
            raise ValueError(f"loss_reduction must be 'sum' or 'mean', got {loss_reduction!r}")
        if on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"on_nonfinite must be one of {NONFINITE_POLICIES}, got {on_nonfinite!r}")
        if isinstance(max_consecutive_skips, bool) or not isinstance(max_consecutive_skips, int) \
                or max_consecutive_skips < 1:
            raise ValueError(f"max_consecutive_skips must be an integer >= 1, got {max_consecutive_skips!r}")
        if fused_adam not in (None, True, False):
            raise ValueError(f"fused_adam must be None (automatic), True or False, got {fused_adam!r}")
        self.automatic_optimization = False
        self.net = net
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.adam_eps = float(adam_eps)
        self.ortho_weight = float(ortho_weight)
        self.loss_reduction = loss_reduction
        self.on_nonfinite = on_nonfinite
        self.max_consecutive_skips = max_consecutive_skips
        self.fused_adam = fused_adam
        self.save_hyperparameters(ignore=["net"])

        num_classes = net.num_classes
        # one metric object per stage (lightning-hydra-template style)
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.train_loss = MeanMetric()
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.val_acc_best = MaxMetric()
        #: the last batch's rule-specific diagnostics (e.g. a TargetTrace), for callbacks
        self.last_diagnostics: Any = None
        self.skipped_batches = 0
        self.consecutive_skips = 0
        # the last optimizer step's weight sums and loss, on the device, not yet read
        self._pending: Optional[_StepRecord] = None
        # the training loss at the start of the fit, and the next level that warns
        self._loss_start: Optional[float] = None
        self._loss_warn_above = math.inf

    # ------------------------------------------------------------------ the rule
    @property
    def parameter_pairs(self) -> List[Tuple[Tensor, Tensor]]:
        """``(weight, bias)`` per layer, input to output (the network's ``layer_parameters``)."""
        return self.net.layer_parameters()

    def layer_signals(self, trace: ForwardTrace, g: Tensor, y: Tensor) -> List[Tensor]:
        """Per layer (input to output), ``d loss_l / d a_l``: the signal sent to layer ``l``.

        ``trace`` is a local forward pass (layer inputs detached), ``g = dL/da_L`` the
        output-loss gradient. Signals must carry no graph. Override this to write a rule.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement layer_signals")

    def local_objective(self, x: Tensor, y: Tensor) -> LocalObjective:
        """Forward pass, signals, and the objective whose gradient is the update."""
        with record_function("lightning_gait.forward"):
            trace = self.net.trace(x, local=True)
        g, loss = output_gradient(trace.output, y, self.net.num_classes, self.loss_reduction)
        with torch.no_grad(), record_function("lightning_gait.targets"):
            signals = self.layer_signals(trace, g, y)
        self.check_finite(signals, what="target signal")
        objective = sum((s * a).sum() for s, a in zip(signals, trace.post))
        return LocalObjective(objective, loss, self.net.logits(trace.output).detach(), trace)

    @torch.enable_grad()
    def local_gradients(self, x: Tensor, y: Tensor) -> List[Tuple[Tensor, Tensor]]:
        """The (weight, bias) gradient that this rule installs for batch ``(x, y)``, per layer
        (``None`` for the bias of a layer without one).

        Input to output, ``nn.Linear`` layout and sign (to be subtracted), without the
        orthogonality penalty, without stepping and without touching ``.grad``.
        ``training_step`` uses the same :meth:`local_objective`.
        """
        bounds = self.check_batch(x, y)
        self._check_label_range(*bounds.tolist())
        out = self.local_objective(x, y)
        with record_function("lightning_gait.backward"):
            return self.net.pair_gradients(out.objective)

    def check_finite(self, tensors: Sequence[Optional[Tensor]], *, what: str,
                     inverses: Optional[Sequence[Optional[Any]]] = None) -> None:
        """Raise :class:`NonFiniteError` naming the layer (from 1 at the input) and the step.

        The layer reported is the first non-finite one in the order the rule computes
        them (output to input for target propagation). ``inverses`` (per layer, ``None``
        where not inverted) are the inverses the tensors were computed with: their
        ``singular`` flags are read in the same device synchronisation, and a singular
        layer raises :class:`SingularLayerError` (the targets below it are meaningless
        even where they are finite).
        """
        flags = [(i, inv.singular) for i, inv in enumerate(inverses or ())
                 if inv is not None and getattr(inv, "singular", None) is not None]
        if flags:
            present = [t for t in tensors if t is not None]
            finite = torch.isfinite(torch.stack([t.sum() for t in present])).all() if present else None
            regular = ~torch.stack([flag for _, flag in flags]).any()
            if bool(regular if finite is None else regular & finite):
                return
            for i, flag in reversed(flags):  # from the output down, as the targets were computed
                if bool(flag):
                    describe = getattr(inverses[i], "describe_singularity", lambda: "its inverse failed")
                    raise SingularLayerError(
                        f"layer {i + 1} (counted from 1 at the input) is singular to working precision at "
                        f"global step {self.global_step} of {type(self).__name__}: {describe()}; its inverse, "
                        "and every target below it, would be meaningless (the weights have degenerated: keep "
                        "the orthogonality penalty on, ortho_weight > 0, or lower the learning rate)"
                    )
        order = list(range(len(tensors) - 1, -1, -1))
        bad = first_nonfinite(list(tensors), order)
        if bad is not None:
            raise NonFiniteError(
                f"non-finite {what} at layer {bad + 1} (counted from 1 at the input) "
                f"at global step {self.global_step} of {type(self).__name__}"
            )

    def check_batch(self, x: Tensor, y: Tensor) -> Tensor:
        """Raise :class:`BatchError` for a batch the network cannot train on.

        Checks, without waiting for the device: inputs and labels are tensors, the batch
        is not empty, the labels are one int64 class index per input, the inputs have the
        network's dtype. Returns the labels' ``(min, max)`` as a tensor on the device, for
        the caller to read (with other values) and pass to :meth:`_check_label_range`.
        """
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise BatchError(f"a batch must be (inputs, labels) tensors, got {type(x).__name__} and {type(y).__name__}")
        if x.dim() == 0 or x.shape[0] == 0:
            raise BatchError(f"the batch is empty: inputs of shape {tuple(x.shape)}")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise BatchError(f"the labels have shape {tuple(y.shape)} for {x.shape[0]} inputs: "
                             f"expected one class index per input, shape ({x.shape[0]},)")
        if y.dtype != torch.int64:
            raise BatchError(f"the labels are {y.dtype}, expected torch.int64 class indices (y.long())")
        dtype = next(self.net.parameters()).dtype
        if x.dtype != dtype:
            raise BatchError(
                f"the inputs are {x.dtype} but the network's weights are {dtype}: convert one to the other "
                f"(x.to({dtype}), or net.to({x.dtype})); under a Trainer the precision sets the network's dtype"
            )
        return torch.stack(torch.aminmax(y))

    def _check_label_range(self, low: float, high: float) -> None:
        num_classes = self.net.num_classes
        if low < 0 or high >= num_classes:
            raise BatchError(f"labels must be class indices in [0, {num_classes - 1}] (the network has "
                             f"{num_classes} classes); this batch holds labels from {int(low)} to {int(high)}")

    def check_precision(self, precision: str) -> None:
        """Refuse a trainer precision in which the rule cannot compute its updates.

        A rule that inverts layers (``requires_invertible``) needs 32 or 64 bits: in half
        precision (``16-true``, ``bf16-true``) and under autocast (``16-mixed``,
        ``bf16-mixed``) the inverses run on 8 to 11 significant bits, which round the
        small target differences away (or fail: LU has no half-precision kernel).
        Raises :class:`PrecisionError` naming the precision and what to use instead.
        """
        if self.requires_invertible and str(precision) not in INVERTIBLE_PRECISIONS:
            raise PrecisionError(
                f"{type(self).__name__} inverts layers, which precision '{precision}' cannot do: its half-precision "
                f"round-off (3 significant digits or fewer) swamps the targets; {self.precision_advice}"
            )

    def setup(self, stage: str) -> None:
        if stage == "fit" and self._trainer is not None:
            self.check_precision(str(self.trainer.precision))

    def reset_rule_state(self) -> None:
        """Redraw random state the rule owns (none here; FA's feedback matrices) from its
        seed, in the network's current dtype, as if the rule had been built on it."""

    # ------------------------------------------------------------------ Lightning hooks
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def configure_optimizers(self):
        """Adam over the network's parameters (fused where available, see ``fused_adam``).

        Lightning calls this after moving the module to its device and dtype.
        """
        params = list(self.net.parameters())
        supported = _fused_adam_devices()
        unfusable = sorted({f"{p.device.type}/{p.dtype}" for p in params
                            if not (p.is_floating_point() and p.device.type in supported)})
        if self.fused_adam and unfusable:
            raise ValueError(
                f"fused_adam=True, but PyTorch's fused Adam does not support parameters on {unfusable} "
                f"(supported devices: {sorted(supported)}, floating dtypes); use fused_adam=None "
                "(fused where possible) or fused_adam=False"
            )
        fused = not unfusable if self.fused_adam is None else self.fused_adam
        return torch.optim.Adam(params, lr=self.lr, betas=self.betas, eps=self.adam_eps, fused=fused or None)

    def on_train_start(self) -> None:
        # validation during the sanity check must not count towards the best accuracy
        self.val_acc_best.reset()
        self._apply_adam_implementation()
        self._pending, self.consecutive_skips = None, 0
        self._loss_start, self._loss_warn_above = None, math.inf

    def _apply_adam_implementation(self) -> None:
        """Make restored optimizers use the Adam implementation they were built with.

        ``Optimizer.load_state_dict`` (Lightning's resume) restores each parameter group's
        ``fused``/``foreach`` flags from the checkpoint, so a checkpoint written with the
        other implementation would otherwise decide it; the optimizer's ``defaults`` keep
        the choice of :meth:`configure_optimizers`.
        """
        if self._trainer is None:
            return
        for optimizer in self.trainer.optimizers:
            if not isinstance(optimizer, torch.optim.Adam):
                continue
            fused = optimizer.defaults.get("fused")
            for group in optimizer.param_groups:
                group["fused"], group["foreach"] = fused, optimizer.defaults.get("foreach")
                if not fused:
                    continue
                for p in group["params"]:
                    state = optimizer.state.get(p, {})
                    step = state.get("step")
                    if isinstance(step, Tensor) and (step.device != p.device or step.dtype != torch.float32):
                        state["step"] = step.to(device=p.device, dtype=torch.float32)

    def on_load_checkpoint(self, checkpoint) -> None:
        """Take the checkpoint's floating dtype before its weights are copied in.

        Lightning restores weights before the precision plugin converts the module, so a
        float64 (``64-true``) checkpoint would otherwise pass through the float32 network
        the CLI built and lose its low bits; resuming would then not be exact.
        """
        dtypes = {v.dtype for v in checkpoint.get("state_dict", {}).values() if v.is_floating_point()}
        if len(dtypes) == 1:
            dtype = dtypes.pop()
            if next(self.net.parameters()).dtype != dtype:
                self.to(dtype)

    def _world_size(self) -> int:
        trainer = self._trainer
        return trainer.world_size if trainer is not None else 1

    def training_step(self, batch, batch_idx: int):
        """Manual optimization: local objective + penalty, one backward, one step."""
        x, y = batch
        opt = self.optimizers()
        self.read_step_checks(self.check_batch(x, y))
        try:
            out = self.local_objective(x, y)
        except NonFiniteError as err:
            if self._world_size() > 1:
                self._join_reduction_with_nan(opt)
            return self._skip_or_raise(err)
        objective = out.objective
        if self.loss_reduction == "sum" and self._world_size() > 1:
            # DDP averages gradients over ranks; the sum over the global batch is N times that
            objective = objective * self._world_size()
        if self.ortho_weight > 0 and self.net.square_layer_indices:
            with record_function("lightning_gait.penalty"):
                surrogate, penalty = orthogonality_surrogate(self.net)
            objective = objective + self.ortho_weight * surrogate
            self.log("train/ortho_penalty", penalty, on_step=True, on_epoch=False)
        opt.zero_grad(set_to_none=True)
        with record_function("lightning_gait.backward"):
            self.manual_backward(objective)
        try:
            # under DDP the update is averaged over all ranks: one rank's bad batch shows here on every rank
            self.check_finite([weight.grad for weight, _ in self.parameter_pairs], what="weight update")
        except NonFiniteError as err:
            opt.zero_grad(set_to_none=True)
            return self._skip_or_raise(err)
        step = self.global_step
        with record_function("lightning_gait.optimizer"):
            opt.step()
        self.consecutive_skips = 0

        per_sample = out.loss / len(y) if self.loss_reduction == "sum" else out.loss
        self._record_step(step, per_sample)
        self.train_loss(per_sample)
        self.train_acc(out.logits, y)
        self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=True, on_epoch=True, prog_bar=True)
        return per_sample

    # ------------------------------------------------------------------ checks between steps
    def _record_step(self, step: int, loss: Tensor) -> None:
        """Keep the sum of every parameter and the loss on the device, to be read later.

        A sum is finite only if every entry is (a finite sum that overflows is searched
        entry by entry when read), so one small tensor carries the whole check.
        """
        with torch.no_grad():
            params = list(self.net.parameters())
            values = torch.stack([p.detach().sum() for p in params] + [loss.detach().to(params[0].dtype)])
        self._pending = _StepRecord(step, values)

    def read_step_checks(self, label_bounds: Optional[Tensor] = None) -> None:
        """Read what the last optimizer step left (and a batch's label bounds), in one
        device synchronisation, and act on it.

        Raises :class:`NonFiniteError` naming the layer and the step when the step left a
        non-finite weight (under either ``on_nonfinite`` policy: a step cannot be undone),
        warns when the training loss has grown by orders of magnitude, and raises
        :class:`BatchError` for labels out of range. Called at the start of every training
        step, before validation, before a checkpoint is written and at the end of training.
        """
        pending, self._pending = self._pending, None
        parts = [] if pending is None else [pending.values]
        if label_bounds is not None:
            parts.append(label_bounds)
        if not parts:
            return
        # one transfer in a dtype that holds weight sums, the loss and int64 labels exactly
        # enough (float64; float32 where the device has no float64)
        common = torch.float32 if parts[0].device.type == "mps" else torch.float64
        values = torch.cat([part.to(common) for part in parts]).tolist()
        if pending is not None:
            count = pending.values.numel() - 1
            if not all(math.isfinite(v) for v in values[:count]):
                self._raise_for_nonfinite_weights(pending.step)
            self._watch_loss(values[count], pending.step)
        if label_bounds is not None:
            self._check_label_range(values[-2], values[-1])

    def _raise_for_nonfinite_weights(self, step: int) -> None:
        where = {id(t): (i, kind) for i, pair in enumerate(self.parameter_pairs)
                 for kind, t in zip(("weight", "bias"), pair) if t is not None}
        for name, p in self.net.named_parameters():
            if bool(torch.isfinite(p).all()):
                continue
            if id(p) in where:
                layer, kind = where[id(p)]
                what = f"the {kind} of layer {layer + 1} (counted from 1 at the input)"
            else:
                what = f"parameter {name}"
            skip = "; on_nonfinite='skip' cannot undo a step" if self.on_nonfinite == "skip" else ""
            raise NonFiniteError(
                f"non-finite values in {what} after the optimizer step of global step {step} of "
                f"{type(self).__name__}: the step overflowed (is the learning rate, lr={self.lr:g}, too large?)"
                f"{skip}"
            )

    def _watch_loss(self, loss: float, step: int) -> None:
        if self._loss_start is None:
            if math.isfinite(loss):
                self._loss_start = loss
                self._loss_warn_above = self.loss_growth_warning * max(loss, math.log(self.net.num_classes))
            return
        if not loss > self._loss_warn_above:  # a NaN loss is left to the checks of the targets and updates
            return
        rank_zero_warn(
            f"the training loss grew to {loss:.4g} per sample at global step {step} of {type(self).__name__}, "
            f"from {self._loss_start:.4g} at the start: the weights may be diverging (lower the learning rate?)"
        )
        # the next warning only once the loss has grown by the same factor again
        self._loss_warn_above = loss * self.loss_growth_warning

    def on_validation_start(self) -> None:
        self.read_step_checks()

    def on_train_end(self) -> None:
        self.read_step_checks()

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """Refuse to write a checkpoint that holds a NaN or an infinity.

        Reads the last step's checks first, then the weights and buffers
        (``state_dict``) and every optimizer state tensor. Raises :class:`NonFiniteError`
        naming the first non-finite entry; nothing is written.
        """
        self.read_step_checks()
        names = [f"net.{name}" for name, _ in self.net.named_parameters()]
        entries: List[Tuple[str, Tensor]] = [
            (name, value) for name, value in checkpoint.get("state_dict", {}).items()
            if isinstance(value, Tensor) and value.is_floating_point()
        ]
        for optimizer in checkpoint.get("optimizer_states", []):
            for index, state in optimizer.get("state", {}).items():
                owner = names[index] if isinstance(index, int) and index < len(names) else f"parameter {index}"
                entries += [(f"the optimizer's {key} of {owner}", value) for key, value in state.items()
                            if isinstance(value, Tensor) and value.is_floating_point()]
        bad = first_nonfinite([value for _, value in entries])
        if bad is not None:
            raise NonFiniteError(
                f"refusing to write a checkpoint at global step {self.global_step}: {entries[bad][0]} holds "
                "NaN or infinite values; training stops, and the checkpoints already written are kept"
            )

    def _join_reduction_with_nan(self, opt) -> None:
        """Under DDP, take part in this step's gradient all-reduce with NaN gradients.

        A rank that stops before its backward would leave the others waiting in the
        all-reduce (a hang) or, skipping, pair its next all-reduce with their current one.
        Sending NaN makes the averaged update non-finite on every rank, so all of them
        take the same skip-or-raise branch of the update check in :meth:`training_step`.
        """
        opt.zero_grad(set_to_none=True)
        nan = float("nan")
        self.manual_backward(sum((p * nan).sum() for p in self.parameters() if p.requires_grad))
        opt.zero_grad(set_to_none=True)

    def _skip_or_raise(self, err: NonFiniteError):
        if self.on_nonfinite == "raise":
            raise err
        self.consecutive_skips += 1
        if self.consecutive_skips >= self.max_consecutive_skips:
            raise type(err)(
                f"{err}; that makes {self.consecutive_skips} batches skipped in a row "
                f"(max_consecutive_skips={self.max_consecutive_skips}): the weights have probably diverged, "
                "so training stops"
            ) from err
        self.skipped_batches += 1
        rank_zero_warn(f"{err}; batch skipped (on_nonfinite='skip')")
        self.log("train/skipped_batches", float(self.skipped_batches), on_step=True, on_epoch=False)
        return None

    def _eval_step(self, batch, loss_metric: MeanMetric, acc_metric: MulticlassAccuracy, stage: str):
        # one key per stage whatever the number of loaders (validation may carry the test set too)
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        loss_metric(loss)
        acc_metric(logits, y)
        self.log(f"{stage}/loss", loss_metric, on_step=False, on_epoch=True, prog_bar=True, add_dataloader_idx=False)
        self.log(f"{stage}/acc", acc_metric, on_step=False, on_epoch=True, prog_bar=True, add_dataloader_idx=False)
        return loss

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0):
        if dataloader_idx == 1:  # the test set, evaluated with each validation (``test_every_epoch``)
            return self._eval_step(batch, self.test_loss, self.test_acc, "test")
        return self._eval_step(batch, self.val_loss, self.val_acc, "val")

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def test_step(self, batch, batch_idx: int):
        return self._eval_step(batch, self.test_loss, self.test_acc, "test")
