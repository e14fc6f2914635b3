"""Feedback alignment: errors sent down through fixed random matrices."""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from ..networks import ForwardTrace, InvertibleMLP
from .base import LocalLearningRule

__all__ = ["FeedbackAlignment"]


class FeedbackAlignment(LocalLearningRule):
    """Feedback alignment (Lillicrap et al., 2016).

    Backprop's ``dL/da_{l-1} = (dL/da_l * f'(z_l)) W_l^T`` with ``W_l^T`` replaced by a
    fixed random matrix ``B_l`` of the same shape, drawn once (orthogonal, like the
    weights' init, from ``feedback_seed``) and kept as buffers ``feedback_{l}``, so that
    they are saved in checkpoints and broadcast by DDP. Works with either output layer.

    Defaults are the reference code's FA optimizer: Adam lr 2.5e-5, betas (0.9, 0.99),
    eps 1e-4; no orthogonality penalty.
    """

    def __init__(
        self,
        net: InvertibleMLP,
        *,
        feedback_seed: int = 0,
        lr: float = 2.5e-5,
        betas=(0.9, 0.99),
        adam_eps: float = 1e-4,
        ortho_weight: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(net, lr=lr, betas=betas, adam_eps=adam_eps, ortho_weight=ortho_weight, **kwargs)
        self.feedback_seed = int(feedback_seed)
        generator = torch.Generator().manual_seed(self.feedback_seed)
        for i, layer in enumerate(net.layers):
            if i == 0:
                continue  # nothing is sent below layer 1
            b = torch.empty_like(layer.weight, device="cpu")
            torch.nn.init.orthogonal_(b, generator=generator)
            self.register_buffer(f"feedback_{i}", b.to(layer.weight), persistent=True)

    def feedback(self, index: int) -> Tensor:
        return getattr(self, f"feedback_{index}")

    def layer_signals(self, trace: ForwardTrace, g: Tensor, y: Tensor) -> List[Tensor]:
        num_layers = self.net.num_layers
        signals: List[Tensor] = [None] * num_layers  # type: ignore[list-item]
        signals[-1] = g
        for i in range(num_layers - 1, 0, -1):
            delta_z = signals[i] * self.net.activation_of(i).derivative(trace.pre[i])
            signals[i - 1] = delta_z @ self.feedback(i)
        return signals
