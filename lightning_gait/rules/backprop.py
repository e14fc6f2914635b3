"""Backprop: the baseline every local rule is measured against."""
from __future__ import annotations

from torch.nn import functional as F
from torch.profiler import record_function

from ..networks import InvertibleNetwork
from .base import LocalLearningRule, LocalObjective

__all__ = ["Backprop"]


class Backprop(LocalLearningRule):
    """Plain backpropagation of the cross-entropy loss through the whole network.

    Works with either output layer (``square_output=True``: logits are the first
    ``num_classes`` units; ``False``: a plain ``width -> num_classes`` layer). Defaults:
    the scaling paper's Adam, no orthogonality penalty. ``local_gradients`` equals
    ``torch.autograd.grad`` of the loss.
    """

    def __init__(self, net: InvertibleNetwork, *, ortho_weight: float = 0.0, **kwargs) -> None:
        super().__init__(net, ortho_weight=ortho_weight, **kwargs)

    def local_objective(self, x, y) -> LocalObjective:
        with record_function("lightning_gait.forward"):
            trace = self.net.trace(x, local=False)
        logits = self.net.logits(trace.output)
        loss = F.cross_entropy(logits, y, reduction=self.loss_reduction)
        return LocalObjective(loss, loss.detach(), logits.detach(), trace)
