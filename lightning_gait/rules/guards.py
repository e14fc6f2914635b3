"""The numerical guards of a training step, apart from the loop they guard.

:class:`StepGuards` is a mixin of :class:`~lightning_gait.rules.base.LocalLearningRule`. It
holds every check the loop makes, so that the loop reads as the algorithm:

* of a batch (:meth:`~StepGuards.check_batch`: tensors, size, int64 labels in range, the
  network's dtype);
* of the rule's own tensors (:meth:`~StepGuards.check_finite`: non-finite targets or
  updates raise :class:`~lightning_gait.errors.NonFiniteError` naming layer and step; a
  layer singular to working precision :class:`~lightning_gait.errors.SingularLayerError`),
  and what follows one: ``on_nonfinite="skip"`` skips the batch, at most
  ``max_consecutive_skips - 1`` in a row (:meth:`~StepGuards._skip_or_raise`);
* of the last optimizer step, read from the device once, together with the next batch's
  label bounds (:meth:`~StepGuards.read_step_checks`): weights that became non-finite
  raise under either policy, a training loss grown by orders of magnitude warns;
* of a checkpoint (:meth:`~StepGuards.on_save_checkpoint`): one holding a NaN or an
  infinity is refused;
* of the trainer's precision (:meth:`~StepGuards.check_precision`): rules that invert
  layers refuse half and mixed precisions.

The mixin reads from the rule ``net``, ``lr``, ``parameter_pairs``, ``requires_invertible``
and Lightning's ``global_step``, ``log`` and ``manual_backward``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor

from ..errors import BatchError, NonFiniteError, PrecisionError, SingularLayerError
from ..targets import first_nonfinite

__all__ = ["StepGuards", "NONFINITE_POLICIES", "INVERTIBLE_PRECISIONS"]

NONFINITE_POLICIES = ("raise", "skip")

#: precisions in which a rule that inverts layers can compute its targets
INVERTIBLE_PRECISIONS = ("64-true", "64", "32-true", "32")


@dataclass
class _StepRecord:
    """What an optimizer step leaves to be read from the device later, in one go."""

    step: int
    values: Tensor  # the sum of every network parameter, then the per-sample training loss


class StepGuards:
    """Checks of batches, targets, updates, weights, checkpoints and precision (a mixin)."""

    #: what :meth:`check_precision` advises instead of a refused precision
    precision_advice: str = "use --trainer.precision 64-true (or 32-true)"
    #: warn when the training loss per sample exceeds this many times its start
    #: (or ln(num_classes), if larger), then again at each further such factor
    loss_growth_warning: float = 100.0

    def _init_guards(self, on_nonfinite: str, max_consecutive_skips: int) -> None:
        """Check and keep the policy for non-finite values; start with nothing pending."""
        if on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"on_nonfinite must be one of {NONFINITE_POLICIES}, got {on_nonfinite!r}")
        if isinstance(max_consecutive_skips, bool) or not isinstance(max_consecutive_skips, int) \
                or max_consecutive_skips < 1:
            raise ValueError(f"max_consecutive_skips must be an integer >= 1, got {max_consecutive_skips!r}")
        self.on_nonfinite = on_nonfinite
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped_batches = 0
        self._reset_step_guards()

    def _reset_step_guards(self) -> None:
        """Forget the pending step, the skips in a row and the loss's start (a new fit)."""
        self.consecutive_skips = 0
        # the last optimizer step's weight sums and loss, on the device, not yet read
        self._pending: Optional[_StepRecord] = None
        # the training loss at the start of the fit, and the next level that warns
        self._loss_start: Optional[float] = None
        self._loss_warn_above = math.inf

    # ------------------------------------------------------------------ within a step
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

    def _join_reduction_with_nan(self, opt) -> None:
        """Under DDP, take part in this step's gradient all-reduce with NaN gradients.

        A rank that stops before its backward would leave the others waiting in the
        all-reduce (a hang) or, skipping, pair its next all-reduce with their current one.
        Sending NaN makes the averaged update non-finite on every rank, so all of them
        take the same skip-or-raise branch of the update check in ``training_step``.
        """
        opt.zero_grad(set_to_none=True)
        nan = float("nan")
        self.manual_backward(sum((p * nan).sum() for p in self.parameters() if p.requires_grad))
        opt.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ between steps
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

    # ------------------------------------------------------------------ Lightning hooks
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
