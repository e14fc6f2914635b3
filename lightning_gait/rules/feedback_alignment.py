"""Feedback alignment: errors sent down through fixed random matrices."""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from ..networks import ForwardTrace, InvertibleNetwork
from .base import LocalLearningRule

__all__ = ["FeedbackAlignment"]


class FeedbackAlignment(LocalLearningRule):
    """Feedback alignment (Lillicrap et al., 2016).

    Backprop's ``dL/da_{l-1} = (dL/da_l * f'(z_l)) W_l^T`` with ``W_l^T`` replaced by a
    fixed random matrix ``B_l`` of the shape of the layer's matrix
    (:func:`~lightning_gait.networks.matrix_view`; ``nn.Linear.weight`` for dense
    layers), applied to the same rows, drawn once (orthogonal, like the weights' init,
    from ``feedback_seed``) and kept as buffers ``feedback_{l}``, so that they are saved
    in checkpoints and broadcast by DDP. Works with either output layer.

    Defaults are the reference code's FA optimizer: Adam lr 2.5e-5, betas (0.9, 0.99),
    eps 1e-4; no orthogonality penalty.
    """

    def __init__(
        self,
        net: InvertibleNetwork,
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
        for i, b in self._draw_feedback().items():
            self.register_buffer(f"feedback_{i}", b, persistent=True)

    def _draw_feedback(self):
        """``{layer index: B_l}`` drawn from ``feedback_seed`` in the dtype of each layer's matrix."""
        generator = torch.Generator().manual_seed(self.feedback_seed)
        drawn = {}
        for i in range(1, self.net.num_layers):  # nothing is sent below layer 1
            matrix = self.net.view(i).matrix
            b = torch.empty(matrix.shape, dtype=matrix.dtype)
            torch.nn.init.orthogonal_(b, generator=generator)
            drawn[i] = b.to(matrix)
        return drawn

    @torch.no_grad()
    def reset_rule_state(self) -> None:
        """Redraw the feedback matrices from ``feedback_seed`` in the network's current dtype."""
        for i, b in self._draw_feedback().items():
            self.feedback(i).copy_(b)

    def feedback(self, index: int) -> Tensor:
        return getattr(self, f"feedback_{index}")

    def layer_signals(self, trace: ForwardTrace, g: Tensor, y: Tensor) -> List[Tensor]:
        num_layers = self.net.num_layers
        signals: List[Tensor] = [None] * num_layers  # type: ignore[list-item]
        signals[-1] = g
        for i in range(num_layers - 1, 0, -1):
            delta_z = signals[i] * self.net.activation_of(i).derivative(trace.pre[i])
            view = self.net.view(i)
            delta_input = view.rows_to_input(view.output_rows(delta_z) @ self.feedback(i), delta_z)
            signals[i - 1] = self.net.expand_to_previous(i, delta_input, trace.post[i - 1], difference=True)
        return signals
