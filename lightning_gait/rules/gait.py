"""GAIT-prop: Gradient Adjusted Incremental Target propagation (and its variants)."""
from __future__ import annotations

from typing import List, Optional, Union

import torch
from torch import Tensor
from torch.profiler import record_function

from ..inverses import InverseStrategy, build_inverse_strategy
from pytorch_lightning.utilities import rank_zero_warn

from ..networks import ForwardTrace, InvertibleNetwork, LayerInverse, weight_gradient
from ..targets import (
    TARGET_MODES,
    TargetTrace,
    fixed_gamma,
    gait_nudge_absolute,
    gait_nudge_difference,
    normalized_gamma,
    output_gradient,
    per_sample,
)
from .base import LocalLearningRule, LocalObjective

__all__ = ["GAITProp"]


class GAITProp(LocalLearningRule):
    """GAIT-prop with fixed or normalized gamma, in the paper's or the exact numerical form.

    The four variants of "Scaling up learning with GAIT-prop" are the four combinations of
    the network's activation and ``normalize``: GAIT (leaky ReLU, fixed gamma), GAIT-N
    (leaky ReLU, normalized), GAIT-S (SL-ReLU, fixed) and GAIT-SN (SL-ReLU, normalized).

    Args:
        net: an invertible :class:`~lightning_gait.networks.InvertibleNetwork` (for
            :class:`~lightning_gait.InvertibleMLP`: ``square_output=True``).
        gamma: the fixed gamma (used when ``normalize=False``); the paper's 1e-3.
        normalize: per-sample ``gamma_l = eta * sqrt(n_l) / ||t_l - a_l||`` (eq. 5).
        eta: the normalized targets' scale; the paper's 1e-7.
        target_mode: ``"absolute"`` (the paper's form, the default: reproduces the
            published algorithm, its round-off failures included) or ``"difference"``
            (propagates ``t_l - a_l`` itself; same in exact arithmetic, works in float32).
        ortho_weight: the orthogonality penalty's weight; the paper's 100.
        inverse: how each step's layer inverses are obtained (:mod:`lightning_gait.inverses`):
            ``"lu"`` (the default: each layer's exact inverse, an LU factorisation of its
            matrix, every step), ``"cached"`` (an explicit inverse kept across steps, corrected by a
            Newton-Schulz step each step and one refinement step per solve, within 1e-6
            of the exact updates, see ``benchmarks/README.md``; needs
            ``target_mode="difference"``, since the paper's form subtracts targets that
            agree with the activations to ~1e-7 and so needs the inverse exact to
            round-off), or an :class:`~lightning_gait.inverses.InverseStrategy`.
        **kwargs: see :class:`LocalLearningRule` (lr, betas, adam_eps, loss_reduction,
            on_nonfinite).

    Extension points: :meth:`layer_gamma` (how gamma is chosen at one layer),
    :meth:`propagate` (one layer's target step), :meth:`layer_signals` (the whole pass).
    After each batch ``self.last_diagnostics`` holds its :class:`TargetTrace`.
    """

    requires_invertible = True
    precision_advice = ("use --trainer.precision 64-true, or 32-true with the difference form "
                        "(--model.init_args.target_mode difference)")

    def __init__(
        self,
        net: InvertibleNetwork,
        *,
        gamma: float = 1e-3,
        normalize: bool = False,
        eta: float = 1e-7,
        target_mode: str = "absolute",
        ortho_weight: float = 100.0,
        inverse: Union[str, InverseStrategy] = "lu",
        **kwargs,
    ) -> None:
        if not gamma > 0:
            raise ValueError(f"gamma must be positive, got {gamma}")
        if not eta > 0:
            raise ValueError(f"eta must be positive, got {eta}")
        if target_mode not in TARGET_MODES:
            raise ValueError(f"target_mode must be one of {TARGET_MODES}, got {target_mode!r}")
        inverse_strategy = build_inverse_strategy(inverse)
        if not inverse_strategy.exact and target_mode != "difference":
            raise ValueError(
                f"inverse={inverse!r} is approximate (relative error ~1e-7 and below) and needs "
                "target_mode='difference': the paper's form (target_mode='absolute') recovers "
                "t - a by subtraction and only an inverse exact to round-off keeps it"
            )
        super().__init__(net, ortho_weight=ortho_weight, **kwargs)
        self.gamma = float(gamma)
        self.normalize = bool(normalize)
        self.eta = float(eta)
        self.target_mode = target_mode
        self.inverse_strategy = inverse_strategy

    def check_precision(self, precision: str) -> None:
        """Refuse half and mixed precisions; warn once for the paper's form in float32.

        In the paper's form (``target_mode="absolute"``) the target ``t_l`` differs from
        ``a_l`` by about ``eta`` (1e-7) relative, float32's resolution: below the output
        the differences ``t_l - a_l`` are round-off, and so are those layers' updates.
        """
        super().check_precision(precision)
        if str(precision) in ("32-true", "32") and self.target_mode == "absolute":
            rank_zero_warn(
                "GAITProp with target_mode='absolute' (the paper's form) under precision 32-true: the targets of "
                "the layers below the output are lost to float32 round-off, so their updates are noise; use the "
                "difference form (--model.init_args.target_mode difference) or --trainer.precision 64-true"
            )

    # ------------------------------------------------------------------ extension points
    def layer_gamma(self, index: int, difference: Tensor) -> Tensor:
        """Per-sample gamma at layer ``index`` (0-based) given ``t_l - a_l``."""
        if self.normalize:
            return normalized_gamma(difference, self.eta)
        return fixed_gamma(difference, self.gamma)

    def layer_inverses(self) -> List[Optional[LayerInverse]]:
        """Inverses of the inverted layers for this step (``None`` for layer 1).

        Each has ``solve`` (the linear part's inverse) and ``solve_affine`` (the affine
        map's); they come from ``self.inverse_strategy`` (the ``inverse`` argument).
        """
        return self.inverse_strategy.layer_inverses(self.net)

    def propagate(
        self,
        index: int,
        trace: ForwardTrace,
        inverse: LayerInverse,
        difference: Tensor,
        target: Optional[Tensor],
        gamma: Tensor,
        slope: Optional[Tensor] = None,
    ):
        """One step down: from layer ``index``'s target to layer ``index - 1``'s.

        Returns ``(difference, target)`` of layer ``index - 1``; ``target`` is ``None`` in
        the difference form. Entries of layer ``index - 1`` that layer ``index`` does not
        read (auxiliary units) keep their own value as target. ``slope``, passed in the
        difference form, is ``f'(z) difference`` at layer ``index`` (only read here).
        """
        net = self.net
        activation = net.activation_of(index)
        z = trace.pre[index]
        below = trace.post[index - 1]
        if self.target_mode == "absolute":
            input_target = gait_nudge_absolute(activation, inverse, trace.post[index], z, target, gamma)
            new_target = net.expand_to_previous(index, input_target, below, difference=False)
            return new_target - below, new_target
        input_difference = gait_nudge_difference(activation, inverse, z, difference, gamma, trace.post[index], slope)
        return net.expand_to_previous(index, input_difference, below, difference=True), None

    # ------------------------------------------------------------------ the pass
    def target_trace(self, trace: ForwardTrace, g: Tensor) -> TargetTrace:
        """Targets of every layer from the output gradient ``g`` (output to input)."""
        num_layers = self.net.num_layers
        absolute = self.target_mode == "absolute"
        with record_function("lightning_gait.inverses"):
            inverses = self.layer_inverses()
        differences: List[Optional[Tensor]] = [None] * num_layers
        targets: List[Optional[Tensor]] = [None] * num_layers
        multipliers: List[Optional[Tensor]] = [None] * num_layers
        gammas: List[Optional[Tensor]] = [None] * num_layers
        # the difference form's f'(z_l) (t_l - a_l): the nudge reads it, the signals reuse it
        slopes: List[Optional[Tensor]] = [None] * num_layers

        top = num_layers - 1
        out = trace.post[top]
        if absolute:
            targets[top] = out - 0.5 * g
            differences[top] = targets[top] - out  # recovered by subtraction, as in the paper
        else:
            differences[top] = -0.5 * g
        multipliers[top] = torch.ones(out.shape[0], dtype=out.dtype, device=out.device)
        for i in range(top, 0, -1):
            gamma = self.layer_gamma(i, differences[i])
            gammas[i] = gamma
            if not absolute:
                slopes[i] = self.net.activation_of(i).times_derivative(trace.pre[i], differences[i])
            differences[i - 1], targets[i - 1] = self.propagate(
                i, trace, inverses[i], differences[i], targets[i], gamma, slope=slopes[i]
            )
            multipliers[i - 1] = multipliers[i] / gamma
        self.check_finite(differences, what="target difference t - a", inverses=inverses)
        self.check_finite(multipliers, what="target multiplier")
        return TargetTrace(differences, multipliers, gammas, targets if absolute else None,
                           None if absolute else slopes)

    def layer_signals(self, trace: ForwardTrace, g: Tensor, y: Tensor) -> List[Tensor]:
        targets = self.target_trace(trace, g)
        self.last_diagnostics = targets
        return targets.signals()

    def _pre_activation_signals(self, trace: ForwardTrace, g: Tensor, y: Tensor) -> List[Tensor]:
        """``d loss_l / d z_l = s_l f'(z_l)`` per layer, ``s_l`` the signals of :meth:`layer_signals`.

        Unless a subclass overrides :meth:`layer_signals`, they are made from the target
        trace in one tensor per layer, ``f'(z_l) (t_l - a_l)`` scaled in place by
        ``-2 m_l``: the product the difference form's pass already formed (the trace's
        ``slopes``, then cleared from it), else a new one. The signals themselves are not
        formed; the targets' own checks cover them.
        """
        net = self.net
        if type(self).layer_signals is not GAITProp.layer_signals:
            signals = self.layer_signals(trace, g, y)
            self.check_finite(signals, what="target signal")
            return [net.activation_of(i).times_derivative(trace.pre[i], s) for i, s in enumerate(signals)]
        targets = self.target_trace(trace, g)
        self.last_diagnostics = targets
        slopes = targets.slopes or [None] * len(targets.differences)
        targets.slopes = None  # scaled in place below
        deltas = []
        for i, (e, m) in enumerate(zip(targets.differences, targets.multipliers)):
            delta = slopes[i] if slopes[i] is not None else net.activation_of(i).times_derivative(trace.pre[i], e)
            scale = per_sample(-2.0 * m, e)
            deltas.append(delta * scale if delta is e else delta.mul_(scale))
        return deltas

    def local_objective(self, x: Tensor, y: Tensor) -> LocalObjective:
        """Forward pass, targets and every layer's update, computed without an autograd graph.

        The same updates as the base class's objective ``sum_l <s_l, a_l>`` differentiated
        through a forward pass: layer ``l``'s update is the gradient of its local loss,
        :func:`~lightning_gait.networks.weight_gradient` of ``s_l f'(z_l)`` (one product
        per layer, the one autograd would compute). The objective returned is
        :meth:`~lightning_gait.networks.InvertibleNetwork.update_objective` of those
        updates, whose gradient is exactly them: one backward of it reaches every
        parameter (under DDP, through the usual all-reduce), and nothing of the forward
        pass is kept for it.
        """
        net = self.net
        # layers orthogonal by construction: their matrices computed once for the whole step
        with net.computed_weights():
            with torch.no_grad():
                with record_function("lightning_gait.forward"):
                    trace = net.trace(x)
                g, loss = output_gradient(trace.output, y, net.num_classes, self.loss_reduction)
                with record_function("lightning_gait.targets"):
                    deltas = self._pre_activation_signals(trace, g, y)
                with record_function("lightning_gait.backward"):
                    updates = [weight_gradient(layer, trace.inputs[i], delta)
                               for i, (layer, delta) in enumerate(zip(net.layers, deltas))]
            objective = net.update_objective(updates)
        return LocalObjective(objective, loss, net.logits(trace.output), trace)
