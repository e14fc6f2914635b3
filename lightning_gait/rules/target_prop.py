"""Target propagation with the exact layer inverse (the 2020 GAIT-prop paper's TP)."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from ..networks import ForwardTrace, InvertibleNetwork
from ..targets import TargetTrace
from .base import LocalLearningRule

__all__ = ["TargetProp"]


class TargetProp(LocalLearningRule):
    """Target propagation through the exact inverse: ``t_{l-1} = G_l(t_l)``.

    The output target is ``t_L = a_L - output_step * g`` (``g = dL/da_L``); each layer's
    local loss is ``||t_l - a_l||^2`` (multiplier 1). Unlike GAIT-prop, TP's updates do
    not equal backprop's even with orthogonal weights.

    Args:
        net: an invertible :class:`~lightning_gait.networks.InvertibleNetwork`.
        output_step: step size of the output target (0.5 as GAIT-prop's ``t_L``).
        ortho_weight: orthogonality penalty weight (default 100, as for GAIT-prop).
        **kwargs: see :class:`LocalLearningRule`.
    """

    requires_invertible = True

    def __init__(self, net: InvertibleNetwork, *, output_step: float = 0.5, ortho_weight: float = 100.0, **kwargs) -> None:
        if not output_step > 0:
            raise ValueError(f"output_step must be positive, got {output_step}")
        super().__init__(net, ortho_weight=ortho_weight, **kwargs)
        self.output_step = float(output_step)

    def layer_signals(self, trace: ForwardTrace, g: Tensor, y: Tensor) -> List[Tensor]:
        num_layers = self.net.num_layers
        targets: List[Optional[Tensor]] = [None] * num_layers
        targets[-1] = trace.output - self.output_step * g
        inverses = [None] + [self.net.layer_inverse(i) for i in range(1, num_layers)]
        for i in range(num_layers - 1, 0, -1):
            # G_l(t) = F_l^-1(f_l^-1(t)), as InvertibleNetwork.invert_layer
            below = inverses[i].solve_affine(self.net.activation_of(i).inverse(targets[i]))
            targets[i - 1] = self.net.expand_to_previous(i, below, trace.post[i - 1], difference=False)
        self.check_finite(targets, what="target", inverses=inverses)
        differences = [t - a for t, a in zip(targets, trace.post)]
        ones = torch.ones(g.shape[0], dtype=g.dtype, device=g.device)
        self.last_diagnostics = TargetTrace(differences, [ones] * num_layers, [None] * num_layers, targets)
        return self.last_diagnostics.signals()
