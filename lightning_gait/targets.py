"""Target propagation math as plain functions: GAIT-prop (paper and exact form) and TP.

Notation of ``docs/gait-prop.md`` ("One training step of GAIT-prop"): for the output
layer ``t_L = a_L - g / 2`` with ``g = dL/da_L``, multiplier ``m_L = 1``; then, from the
output down, for every square layer ``l``:

* ``gamma_l``: a constant, or normalized ``eta * sqrt(n_l) / ||t_l - a_l||_2`` (eq. 5 of
  the scaling paper, plain norm), per sample;
* ``eps_l = gamma_l * f'(z_l)^2`` elementwise;
* nudge ``u_l = (1 - eps_l) a_l + eps_l t_l``;
* ``t_{l-1} = (f^-1(u_l) - b_l) W_l^-1`` and ``m_{l-1} = m_l / gamma_l``.

Layer ``l``'s local loss is ``sum_n m_l(n) ||t_l(n) - a_l(n)||^2`` with ``t_l, m_l`` and the
layer input held constant; its gradient w.r.t. ``a_l`` is ``-2 m_l (t_l - a_l)``, which
equals backprop's ``dL/da_l`` when the weights are orthogonal and ``f^-1`` is linear
over the nudge.

Two numerical forms, identical in exact arithmetic:

* ``"absolute"`` (the paper's): targets ``t_l`` are formed and the difference
  ``t_l - a_l`` recovered by subtraction. In float64 with fixed ``gamma`` the difference
  shrinks like ``gamma^k`` and is lost to round-off near the input;
* ``"difference"``: the difference ``e_l = t_l - a_l`` is propagated itself,
  ``e_{l-1} = [f^-1(a_l + eps_l e_l) - z_l] W_l^-1`` with the bracket computed by
  :meth:`InvertibleActivation.inverse_difference`, so nothing tiny is added to
  something large.

All functions here are side-effect free and work on batches of any shape, the batch
first: per-sample quantities (gamma, multipliers, norms) reduce over every other
dimension, so dense ``(N, n)`` and convolutional ``(N, C, H, W)`` activations are alike.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import Tensor
from torch.nn import functional as F

from .activations import InvertibleActivation
from .errors import NonFiniteError

__all__ = [
    "TARGET_MODES",
    "TargetTrace",
    "NonFiniteError",
    "output_gradient",
    "fixed_gamma",
    "normalized_gamma",
    "gait_nudge_absolute",
    "gait_nudge_difference",
    "first_nonfinite",
    "per_sample",
]

TARGET_MODES = ("absolute", "difference")


def per_sample(values: Tensor, like: Tensor) -> Tensor:
    """``(N,)`` per-sample ``values`` shaped to broadcast over ``like`` (``(N, 1, ...)``)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


@dataclass
class TargetTrace:
    """What target propagation produced for one batch, per layer (0-based, input to output).

    ``differences[l]`` is ``t_l - a_l`` (the shape of ``a_l``), ``multipliers[l]`` the
    per-sample ``m_l`` (shape ``(N,)``), ``gammas[l]`` the per-sample gamma used at layer
    ``l`` to form the target of the layer below (``None`` for layer 0, which is never
    inverted), ``targets[l]`` the absolute targets where the rule formed them.
    ``slopes[l]``, where the pass formed it, is ``f'(z_l) (t_l - a_l)``: the difference
    form's nudge needs it, and the rule's signals reuse it in place (so the rule clears
    the field once it has made them).
    """

    differences: List[Tensor]
    multipliers: List[Tensor]
    gammas: List[Optional[Tensor]]
    targets: Optional[List[Tensor]] = None
    slopes: Optional[List[Optional[Tensor]]] = None

    def signals(self) -> List[Tensor]:
        """``d loss_l / d a_l = -2 m_l (t_l - a_l)`` for each layer."""
        return [-2.0 * per_sample(m, e) * e for m, e in zip(self.multipliers, self.differences)]


def output_gradient(output: Tensor, y: Tensor, num_classes: int, reduction: str = "sum"):
    """``g = dL/da_L`` and the loss ``L`` for cross-entropy on the first ``num_classes`` units.

    The logits are the first ``num_classes`` entries of the flattened output (the network
    contract). ``g`` is ``softmax - onehot`` on them (divided by ``N`` for ``"mean"``) and
    0 on the auxiliary units. Returns ``(g, loss)``; neither carries a graph.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"loss_reduction must be 'sum' or 'mean', got {reduction!r}")
    with torch.no_grad():
        logits = output.flatten(1)[:, :num_classes]
        loss = F.cross_entropy(logits, y, reduction=reduction)
        g_logits = torch.softmax(logits, dim=1)
        g_logits[torch.arange(len(y), device=y.device), y] -= 1.0
        if reduction == "mean":
            g_logits = g_logits / len(y)
        if output.dim() == 2 and output.shape[1] == num_classes:
            g = g_logits
        else:
            g = torch.zeros_like(output)
            g.view(len(y), -1)[:, :num_classes] = g_logits
    return g, loss


def fixed_gamma(e: Tensor, gamma: float) -> Tensor:
    """The original GAIT-prop: the same ``gamma`` for every sample."""
    return torch.full((e.shape[0],), gamma, dtype=e.dtype, device=e.device)


def normalized_gamma(e: Tensor, eta: float) -> Tensor:
    """Normalized targets: ``gamma = eta * sqrt(n) / ||e||_2`` per sample (eq. 5, plain norm).

    ``n`` is the number of entries of one sample's activation and the norm runs over all
    of them.

    A sample whose difference is exactly zero gets ``gamma = 1``: its nudge, its next
    difference and its updates are zero whatever gamma is, and ``1`` keeps the
    multiplier finite.
    """
    # over every dimension but the batch, without flattening (which copies a channels-last tensor)
    norm = torch.linalg.vector_norm(e, dim=tuple(range(1, e.dim())))
    scale = eta * math.sqrt(math.prod(e.shape[1:]))
    return torch.where(norm > 0, scale / torch.where(norm > 0, norm, torch.ones_like(norm)), torch.ones_like(norm))


def gait_nudge_absolute(
    activation: InvertibleActivation,
    inverse,
    a: Tensor,
    z: Tensor,
    t: Tensor,
    gamma: Tensor,
) -> Tensor:
    """Paper form: ``t_{l-1} = (f^-1((1 - eps) a + eps t) - b) W^-1`` with ``eps = gamma f'(z)^2``.

    ``inverse`` is the layer's inverse (:func:`~lightning_gait.networks.layers.layer_inverse`):
    ``solve_affine`` subtracts the bias and applies ``W^-1``.
    """
    eps = per_sample(gamma, z) * activation.derivative(z) ** 2
    u = (1.0 - eps) * a + eps * t
    return inverse.solve_affine(activation.inverse(u))


def gait_nudge_difference(
    activation: InvertibleActivation,
    inverse,
    z: Tensor,
    e: Tensor,
    gamma: Tensor,
    a: Optional[Tensor] = None,
    slope_e: Optional[Tensor] = None,
) -> Tensor:
    """Exact form: ``e_{l-1} = [f^-1(a + eps e) - z] W^-1``, without forming ``a + eps e``.

    ``a`` is ``f(z)`` from the forward pass (recomputed when not given), ``slope_e`` the
    product ``f'(z) e`` where the caller has it (only read); the bracket is
    :meth:`InvertibleActivation.nudge_difference`.
    """
    return inverse.solve(activation.nudge_difference(z, e, per_sample(gamma, z), a, slope_e))


def first_nonfinite(tensors: List[Optional[Tensor]], order: Optional[List[int]] = None) -> Optional[int]:
    """Index of the first tensor (in ``order``) holding a NaN or infinity, else ``None``.

    A finite sum proves every entry finite, so the common case costs one device
    synchronisation; the entries are searched only when some sum is not finite (a NaN or
    infinity, or finite values whose sum overflowed).
    """
    present = [(i, t) for i, t in enumerate(tensors) if t is not None]
    if not present:
        return None
    sums = torch.stack([t.sum() for _, t in present])
    if bool(torch.isfinite(sums).all()):
        return None
    for i in order if order is not None else [i for i, _ in present]:
        t = tensors[i]
        if t is not None and not bool(torch.isfinite(t).all()):
            return i
    return None
