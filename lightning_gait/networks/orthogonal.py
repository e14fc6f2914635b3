"""Square layers that are orthogonal by construction: ``W = s * B * Q(A)``.

GAIT-prop's updates equal backprop's when every inverted layer's matrix is orthogonal
(``docs/gait-prop.md``, "Why it equals BP"). The orthogonality penalty only keeps the
weights near that; :func:`make_orthogonal` makes a square layer's weight orthogonal at
every step, whatever the optimizer does, by a parametrization
(:mod:`torch.nn.utils.parametrize`) of its ``weight``:

    W = s * B @ Q(A),    A = U - U^T,  U = X.triu(1)   (skew-symmetric)

* ``X`` (``parametrizations.weight.original``, ``n x n``, only its strict upper triangle
  used) is what the optimizer trains; it starts at zero;
* ``Q`` is the Cayley map ``(I - A/2)^-1 (I + A/2)`` (``"cayley"``, the default) or the
  matrix exponential ``exp(A)`` (``"matrix_exp"``); both are orthogonal for every
  skew-symmetric ``A`` and equal ``I`` at ``A = 0``;
* ``B`` (a buffer) is the orthogonal matrix the layer held when it was parametrized (its
  orthogonal initialisation), so that the network starts from the same weights;
* ``s = exp(log_scale)`` is a trained scalar with ``scaled=True`` ("scaled orthogonal"),
  else 1.

The inverse is the transpose: with ``A_W`` the layer's matrix in ``nn.Linear`` layout
(rows map as ``x -> x A_W^T``), ``x = z A_W / s^2``. No LU, no penalty. A rule that
inverts layers gets that inverse from :func:`~lightning_gait.networks.layers.layer_inverse`
(:class:`~lightning_gait.networks.layers.OrthogonalInverse`); the penalty leaves these
layers out.

Which map: both cost ``O(n^3)`` per step, nothing next to a convolution over a batch's
pixels, but their backward passes differ by far: PyTorch differentiates ``matrix_exp``
through the exponential of a ``2n x 2n`` block matrix. Cayley is the default, the faster of
the two in the side-by-side measurement of ``benchmarks/README.md`` (float32, forward + backward).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.profiler import record_function

__all__ = [
    "ORTHOGONAL_MAPS",
    "OrthogonalMatrix",
    "make_orthogonal",
    "orthogonal_parametrization",
    "computed_weights",
    "trained_weight",
]

#: the maps from skew-symmetric to orthogonal matrices that :func:`make_orthogonal` offers
ORTHOGONAL_MAPS = ("cayley", "matrix_exp")


def _newton_schulz(q: Tensor, steps: int) -> Tensor:
    """Newton-Schulz polar steps ``Q <- Q (3 I - Q^T Q) / 2`` (error ``e -> ~e^2`` each) for a
    nearly orthogonal ``q``."""
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
    for _ in range(steps):
        q = 0.5 * q @ (3.0 * eye - q.T @ q)
    return q


def _polar(w: Tensor) -> Tensor:
    """The orthogonal matrix nearest ``w`` (its polar factor ``U V^T``)."""
    u, _, vh = torch.linalg.svd(w)
    return u @ vh


class OrthogonalMatrix(nn.Module):
    """The parametrization ``X -> s * B @ Q(X.triu(1) - X.triu(1)^T)`` of a square weight.

    Registered by :func:`make_orthogonal`; see the module docstring. Assigning a matrix to
    the parametrized weight (``layer.weight = W`` under ``torch.no_grad()``) restarts it
    from ``W``: ``B`` becomes ``W``'s polar factor, ``s`` its RMS singular value (1
    without ``scaled``), ``X`` zero.
    """

    def __init__(self, size: int, orthogonal_map: str = "cayley", scaled: bool = False) -> None:
        super().__init__()
        if orthogonal_map not in ORTHOGONAL_MAPS:
            raise ValueError(f"orthogonal map {orthogonal_map!r} is not known; choose one of {ORTHOGONAL_MAPS}")
        self.size = int(size)
        self.orthogonal_map = orthogonal_map
        self.scaled = bool(scaled)
        self.register_buffer("base", torch.eye(self.size))
        self.log_scale = nn.Parameter(torch.zeros(())) if self.scaled else None

    def rotation(self, x: Tensor) -> Tensor:
        """``Q(A)`` for the skew-symmetric ``A`` made from ``x``'s strict upper triangle."""
        upper = x.triu(1)
        a = upper - upper.mT
        if self.orthogonal_map == "matrix_exp":
            return torch.matrix_exp(a)
        eye = torch.eye(self.size, dtype=x.dtype, device=x.device)
        return torch.linalg.solve(eye - 0.5 * a, eye + 0.5 * a)

    def scale(self) -> Optional[Tensor]:
        """``s`` (a 0-dim tensor) for a scaled layer, ``None`` otherwise."""
        return None if self.log_scale is None else self.log_scale.exp()

    def forward(self, x: Tensor) -> Tensor:
        w = self.base @ self.rotation(x)
        return w if self.log_scale is None else w * self.log_scale.exp()

    @torch.no_grad()
    def right_inverse(self, w: Tensor) -> Tensor:
        if w.shape != (self.size, self.size):
            raise ValueError(f"expected a {self.size} x {self.size} matrix, got {tuple(w.shape)}")
        work = w.to(torch.float64)
        scale = torch.linalg.matrix_norm(work) / self.size ** 0.5
        if self.log_scale is not None:
            self.log_scale.copy_(scale.log())
        else:
            scale = torch.ones((), dtype=torch.float64)
        q = work / scale
        eye = torch.eye(self.size, dtype=torch.float64, device=w.device)
        deviation = float((q @ q.T - eye).abs().max())
        if deviation > 0.1:
            q = _polar(q)
        elif deviation > 10 * self.size * torch.finfo(w.dtype).eps:
            q = _newton_schulz(q, steps=3)  # orthogonal in w's own precision (e.g. a float32 start in float64)
        self.base = q.to(w.dtype)
        return torch.zeros_like(w)

    def _apply(self, fn, *args, **kwargs):
        dtype = self.base.dtype
        out = super()._apply(fn, *args, **kwargs)
        base = self.base
        if base.is_floating_point() and torch.finfo(base.dtype).eps < torch.finfo(dtype).eps:
            # a buffer made orthogonal in a coarser dtype: orthogonal in the finer one
            with torch.no_grad():
                base.copy_(_newton_schulz(base, steps=2))
        return out

    def extra_repr(self) -> str:
        return f"size={self.size}, orthogonal_map={self.orthogonal_map!r}, scaled={self.scaled}"


def orthogonal_parametrization(layer: nn.Module) -> Optional[OrthogonalMatrix]:
    """The :class:`OrthogonalMatrix` that parametrizes ``layer.weight``, or ``None``."""
    if not parametrize.is_parametrized(layer, "weight"):
        return None
    chain = layer.parametrizations.weight
    if len(chain) == 1 and isinstance(chain[0], OrthogonalMatrix):
        return chain[0]
    return None


def make_orthogonal(layer: nn.Module, orthogonal_map: str = "cayley", *, scaled: bool = False) -> nn.Module:
    """Make ``layer``'s square ``weight`` orthogonal by construction (in place; returns ``layer``).

    The weight it holds becomes the starting point ``B`` (orthogonalized if it is not
    orthogonal). Its trained parameter is then ``layer.parametrizations.weight.original``
    (and ``...weight[0].log_scale`` with ``scaled``), and ``layer.weight`` is computed
    from it at every access (once per step inside :func:`computed_weights`).
    """
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, Tensor) or weight.dim() != 2 or weight.shape[0] != weight.shape[1]:
        shape = None if weight is None else tuple(weight.shape)
        raise ValueError(f"{type(layer).__name__} has no square weight matrix (weight of shape {shape}): "
                         "only square layers can be orthogonal by construction")
    if orthogonal_parametrization(layer) is not None:
        raise ValueError(f"{type(layer).__name__} is already orthogonal by construction")
    mapping = OrthogonalMatrix(weight.shape[0], orthogonal_map, scaled).to(dtype=weight.dtype, device=weight.device)
    parametrize.register_parametrization(layer, "weight", mapping)
    return layer


def trained_weight(layer: nn.Module) -> Tensor:
    """The tensor the optimizer trains for ``layer.weight``: the weight itself, or the
    parametrization's ``original`` for a parametrized weight."""
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original
    return layer.weight


@contextmanager
def computed_weights(layers: Sequence[nn.Module]) -> Iterator[None]:
    """Within the block, every parametrized weight of ``layers`` is computed once.

    The weights are computed on entry with autograd on (so that a loss built in the block
    reaches the trained parameters even where the block itself runs under
    ``torch.no_grad()``) and every access in the block returns them
    (:func:`torch.nn.utils.parametrize.cached`). Without parametrized layers it does nothing.
    """
    parametrized = [layer for layer in layers if parametrize.is_parametrized(layer, "weight")]
    if not parametrized:
        yield
        return
    with parametrize.cached():
        with torch.enable_grad(), record_function("lightning_gait.forward"):
            for layer in parametrized:
                layer.weight  # noqa: B018 - fills the cache
        yield

