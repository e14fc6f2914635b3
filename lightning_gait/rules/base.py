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

The checks of items 0, 1 and 4, the refusal of a checkpoint holding a NaN or an infinity
and of half precisions for rules that invert layers live in :mod:`.guards`; Adam and the
dtype of a restored checkpoint in :mod:`.optim`.

Logged keys: ``train/loss``, ``train/acc``, ``train/ortho_penalty``, ``val/loss``,
``val/acc``, ``val/acc_best``, ``test/loss``, ``test/acc``. Losses are logged as the mean
cross-entropy per sample whatever ``loss_reduction`` is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import torch
import pytorch_lightning as pl
from torch import Tensor, nn
from torch.nn import functional as F
from torch.profiler import record_function
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from ..activations import InvertibleActivation
from ..errors import NonFiniteError
from ..networks import ForwardTrace, InvertibleNetwork, orthogonality_surrogate
from ..targets import output_gradient
from .guards import NONFINITE_POLICIES, StepGuards
from .optim import AdamOptimizer

__all__ = ["LocalLearningRule", "LocalObjective", "NONFINITE_POLICIES", "STEP_RANGES"]

#: profiler ranges (``torch.profiler.record_function``) that split a training step:
#: the forward pass, the layer inverses, the target pass, the orthogonality penalty, the
#: backward of the local objective (the local gradients) and the optimizer step
STEP_RANGES = ("lightning_gait.forward", "lightning_gait.inverses", "lightning_gait.targets",
               "lightning_gait.penalty", "lightning_gait.backward", "lightning_gait.optimizer")


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


def check_network(net: Any, rule: str) -> None:
    """Check ``net`` against the network contract (``networks/base.py``) when the rule is
    built, naming the missing piece: a ``ValueError`` whose message starts with ``net``."""
    if not isinstance(net, nn.Module) and (isinstance(net, dict) or hasattr(net, "class_path")
                                            or type(net).__name__ in ("Namespace", "NestedArg")):
        raise ValueError(
            f"net reached {rule}.__init__ as a config value, not a network: annotate the argument "
            f"`net: InvertibleNetwork` (from lightning_gait.networks) in {rule}.__init__, so that the CLI builds it")
    if not isinstance(net, InvertibleNetwork):
        raise ValueError(f"net must implement lightning_gait.networks.InvertibleNetwork (e.g. InvertibleMLP), "
                         f"got {type(net).__name__}")
    name = type(net).__name__
    layers = getattr(net, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ValueError(f"net {name} sets no `layers`: set self.layers = nn.ModuleList([...]) (input to output, "
                         "each with a weight and a bias) in its __init__")
    classes = getattr(net, "num_classes", None)
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise ValueError(f"net {name} sets no `num_classes` (a positive int, got {classes!r}): set it in __init__")
    for index, layer in enumerate(layers):
        try:
            net.view(index)
        except (NotImplementedError, TypeError) as err:
            raise ValueError(f"net {name}: layer {index + 1} ({type(layer).__name__}): {err}") from None
        try:
            activation = net.activation_of(index)
        except NotImplementedError as err:
            raise ValueError(f"net {err}") from None
        if not isinstance(activation, InvertibleActivation):
            raise ValueError(
                f"net {name}: the activation after layer {index + 1} is {type(activation).__module__}."
                f"{type(activation).__name__}, not a lightning_gait.activations.InvertibleActivation (targets "
                "need its inverse and derivative): use build_activation('leaky_relu'), or subclass "
                "InvertibleActivation")


def _net_from_config() -> bool:
    """Whether LightningCLI is building this module from a config whose ``net`` is plain data
    (class path and arguments), which is then saved among the hyperparameters."""
    try:
        from pytorch_lightning.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # another Lightning: the network stays out of the hyperparameters
        return False
    given = _given_hyperparameters.get()
    return isinstance(given, dict) and isinstance(given.get("net"), dict)


def _imported_class(class_path: Any, base: type) -> Optional[type]:
    """The class ``class_path`` names if its module is already imported and it is a ``base``;
    nothing is imported on a checkpoint's word (as Lightning's own check)."""
    import sys

    if not isinstance(class_path, str) or "." not in class_path:
        return None
    module, name = class_path.rsplit(".", 1)
    named = getattr(sys.modules.get(module), name, None)
    return named if isinstance(named, type) and issubclass(named, base) else None


def _saved_hparams(checkpoint_path, weights_only: Optional[bool]) -> dict:
    """A checkpoint's ``hyper_parameters``, a file object put back where it was."""
    from pytorch_lightning.core.saving import pl_load

    start = checkpoint_path.tell() if hasattr(checkpoint_path, "seek") else None
    checkpoint = pl_load(checkpoint_path, map_location="cpu", weights_only=weights_only)
    if start is not None:
        checkpoint_path.seek(start)
    return dict(checkpoint.get("hyper_parameters") or {})


class LocalLearningRule(StepGuards, AdamOptimizer, pl.LightningModule):
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
            Same update to round-off, in one kernel.
            ``True`` raises where it is not available; ``False`` uses PyTorch's default
            Adam. A resumed run uses the choice made now, whichever implementation wrote
            the checkpoint.

    Extension points: :meth:`layer_signals` (what most rules override),
    :meth:`local_objective`, :meth:`configure_optimizers`.
    """

    #: rules that invert layers set this; they refuse a network that cannot be inverted
    #: and, when fitting, half and mixed precisions
    requires_invertible: bool = False

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
        check_network(net, type(self).__name__)
        if self.requires_invertible and not net.invertible:
            raise ValueError(
                f"{type(self).__name__} inverts layers and needs a network whose layers after the first "
                f"are all square: {type(net).__name__} is not (for InvertibleMLP: square_output=True)"
            )
        self._init_optimizer(lr, betas, adam_eps, fused_adam)
        if ortho_weight < 0:
            raise ValueError(f"ortho_weight must be >= 0, got {ortho_weight}")
        if loss_reduction not in ("sum", "mean"):
            raise ValueError(f"loss_reduction must be 'sum' or 'mean', got {loss_reduction!r}")
        self._init_guards(on_nonfinite, max_consecutive_skips)
        self.automatic_optimization = False
        self.net = net
        self.ortho_weight = float(ortho_weight)
        self.loss_reduction = loss_reduction
        # from a config (LightningCLI), the hyperparameters hold the network's class path and
        # arguments, so load_from_checkpoint(path) rebuilds the module; a network built in
        # Python stays out of them (pass it: load_from_checkpoint(path, net=...))
        self.save_hyperparameters(ignore=[] if _net_from_config() else ["net"])

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
        #: set by a callback before a training step (see :meth:`training_step`): called once
        #: with the step's :class:`LocalObjective`, then cleared
        self.objective_hook: Optional[Callable[[LocalObjective], None]] = None

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args: Any, **kwargs: Any):
        """Lightning's ``load_from_checkpoint``, for checkpoints of ``fit``: called on
        ``LocalLearningRule`` it builds the rule the checkpoint names; the network is the one the
        checkpoint's hyperparameters name (an already imported class), unless ``net=`` gives one;
        the loaded module keeps those hyperparameters, so that its own checkpoints load the same way."""
        saved = _saved_hparams(checkpoint_path, kwargs.get("weights_only"))
        named = _imported_class(saved.get("_class_path"), LocalLearningRule)
        if named is not None and named is not cls and issubclass(named, cls):
            cls = named
        elif named is None and cls is LocalLearningRule:
            raise ValueError(f"{checkpoint_path}: the checkpoint names no imported rule class "
                             f"({saved.get('_class_path')!r}); load it with the rule's own class")
        if "net" not in kwargs:
            net = saved.get("net")
            if net is None:
                raise ValueError(f"{checkpoint_path}: the checkpoint holds no network settings (its module was built "
                                 "in Python, or by a fit that did not save them): pass the network, "
                                 "load_from_checkpoint(path, net=...)")
            if isinstance(net, dict) and _imported_class(net.get("class_path"), nn.Module) is None:
                raise ValueError(f"{checkpoint_path}: the network class {net.get('class_path')!r} the checkpoint "
                                 "names is not imported: import its module first, or pass net=...")
        model = super(LocalLearningRule, cls).load_from_checkpoint(checkpoint_path, *args, **kwargs)
        if "net" not in kwargs:
            kept = {k: saved[k] for k in ("_class_path", "net", "_instantiator") if k in saved}
            model.hparams.update({k: v for k, v in kept.items() if k not in model.hparams})
        return model

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

    def setup(self, stage: str) -> None:
        if stage == "fit" and self._trainer is not None:
            self.check_precision(str(self.trainer.precision))

    def reset_rule_state(self) -> None:
        """Redraw random state the rule owns (none here; FA's feedback matrices) from its
        seed, in the network's current dtype, as if the rule had been built on it."""

    # ------------------------------------------------------------------ Lightning hooks
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def on_train_start(self) -> None:
        # validation during the sanity check must not count towards the best accuracy
        self.val_acc_best.reset()
        self._apply_adam_implementation()
        self._apply_resumed_settings()
        self._reset_step_guards()

    def _world_size(self) -> int:
        trainer = self._trainer
        return trainer.world_size if trainer is not None else 1

    def training_step(self, batch, batch_idx: int):
        """Manual optimization: local objective + penalty, one backward, one step.

        When :attr:`objective_hook` is set (a callback sets it, e.g.
        :class:`~lightning_gait.callbacks.BPCorrelation`), it is cleared and called with
        the batch's :class:`LocalObjective` before the penalty is added: the gradient of
        ``objective`` (the graph is still there; keep it with ``retain_graph=True``) is
        exactly what :meth:`local_gradients` returns for this batch, at the weights before
        the step. A batch whose targets are not finite never reaches the hook.
        """
        x, y = batch
        opt = self.optimizers()
        hook, self.objective_hook = self.objective_hook, None
        self.read_step_checks(self.check_batch(x, y))
        try:
            out = self.local_objective(x, y)
        except NonFiniteError as err:
            if self._world_size() > 1:
                self._join_reduction_with_nan(opt)
            return self._skip_or_raise(err)
        if hook is not None:
            hook(out)
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
