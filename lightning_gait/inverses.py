"""How a rule gets the inverse of each square layer in each training step.

GAIT-prop's target step ``t_{l-1} = (f^-1(u_l) - b_l) W_l^-1`` (``docs/gait-prop.md``,
"One training step", step 4) needs ``x = r W^-1`` for a batch of row vectors ``r``
(``N x n``) at every inverted layer, with the *current* weights. In ``nn.Linear`` layout
``W = A^T`` with ``A`` the layer's matrix (:func:`~lightning_gait.networks.matrix_view`;
``nn.Linear.weight`` for a dense layer), so a solver returns ``X`` with ``X @ A.T == r``
for rows, and ``solve``/``solve_affine`` apply it to the layer's own tensor shapes
(:class:`~lightning_gait.networks.LayerInverse`'s contract). Two strategies:

* :class:`ExactInverse` (``"lu"``, the default): an LU factorisation of every square
  weight each step (``n^3 / 3`` multiply-adds) and two triangular solves per batch
  (``N n^2``). Exact to round-off.
* :class:`CachedInverse` (``"cached"``): an explicit approximate inverse ``M ~ W^-1`` per
  layer, kept across steps and corrected each step, so that every solve is a matrix
  product ``x = r M`` (``N n^2``, the cost of backprop's ``dL/da_{l-1}``) plus its
  correction. Weights move by about one learning rate per element per step, so last
  step's ``M`` is off by a small ``E = I - W M``; two corrections, both on by default,
  remove it:

  - ``newton_steps`` Newton-Schulz steps on ``M`` (each ``2 n^3``)::

        E = I - W M;   M <- M + M E        (so that I - W M_new = E^2)

  - ``refinements`` steps of iterative refinement per solve (each ``2 N n^2``)::

        x <- x + (r - x W) M              (error  x - r W^-1  multiplied by E)

  The residual ``||E||_F`` that a Newton-Schulz step computes anyway certifies the
  result (``||I - W M_new||_2 <= ||E||_F^2``); when it exceeds ``max_residual`` (weights
  that jumped, e.g. a loaded checkpoint), ``M`` is recomputed exactly from an LU
  factorisation. ``refresh_every`` forces an exact recomputation every so many steps.

  Documented bound: with the defaults, every layer's weight update stays within 1e-6
  relative of the exact-inverse update (``benchmarks/README.md`` has the measurements,
  ``tests/maths/test_inverses.py`` checks it on a short run). The cached inverse needs
  ``target_mode="difference"`` (:class:`~lightning_gait.rules.gait.GAITProp` refuses it
  otherwise).

Which is faster depends on the hardware: a corrected cached inverse costs about 6.5
products of ``N n^2`` per layer against 2-4.5 for the LU and its solves, so it can only
win where matrix products run far faster than an LU factorisation and its triangular
solves. The benchmarks (``benchmarks/README.md``) measure both.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .networks import LayerInverse, MatrixView

__all__ = [
    "InverseStrategy",
    "ExactInverse",
    "CachedInverse",
    "MatrixInverse",
    "INVERSE_STRATEGIES",
    "build_inverse_strategy",
]


class MatrixInverse:
    """Applies an explicit approximate inverse ``M ~ (A^T)^-1`` of a layer's matrix ``A``.

    ``solve_rows(r)`` returns ``X`` with ``X @ A.T ~= r``: ``X = r M`` followed by
    ``refinements`` steps of iterative refinement ``X <- X + (r - X A^T) M``; ``solve`` and
    ``solve_affine`` apply it to the layer's tensors through its :class:`MatrixView`.
    """

    def __init__(self, inverse: Tensor, weight: Tensor, refinements: int = 0,
                 view: Optional[MatrixView] = None, singular: Optional[Tensor] = None) -> None:
        self.inverse = inverse
        self.weight = weight
        self.refinements = int(refinements)
        self.view = view
        #: a 0-dim boolean tensor, true when the matrix was found singular (``None``: not known)
        self.singular = singular

    def solve_rows(self, r: Tensor) -> Tensor:
        x = r @ self.inverse
        for _ in range(self.refinements):
            residual = r - x @ self.weight.T
            x = torch.addmm(x, residual, self.inverse)
        return x

    def describe_singularity(self) -> str:
        return "its exact inversion met a zero pivot"

    solve = LayerInverse.solve
    solve_affine = LayerInverse.solve_affine


class InverseStrategy:
    """Gives, for one training step, a solver per layer (``None`` where not inverted).

    :meth:`layer_inverses` is called once per :meth:`GAITProp.target_trace
    <lightning_gait.rules.gait.GAITProp.target_trace>` with the network whose current
    weights must be inverted; each returned object has ``solve(r)`` (the linear part's
    inverse) and ``solve_affine(z)`` (the whole affine map's), as
    :class:`~lightning_gait.networks.LayerInverse`. It may also have ``singular``: a
    0-dim boolean tensor, true when the layer is singular to working precision (the rule
    then raises :class:`~lightning_gait.errors.SingularLayerError` naming the layer), and
    ``describe_singularity()``. Subclass it to try another scheme.
    """

    name: str = "abstract"
    #: True when the solves are exact to round-off (the paper's target form needs that)
    exact: bool = False

    def layer_inverses(self, net: nn.Module) -> List[Optional[object]]:  # pragma: no cover
        raise NotImplementedError

    def reset(self) -> None:
        """Forget any state kept across steps."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ExactInverse(InverseStrategy):
    """The layer's own exact inverse (an LU factorisation for matrix layers) in every step."""

    name = "lu"
    exact = True

    def layer_inverses(self, net: nn.Module) -> List[Optional[LayerInverse]]:
        out: List[Optional[LayerInverse]] = [None] * net.num_layers
        for i in net.inverted_layer_indices:
            out[i] = net.layer_inverse(i)
        return out


class CachedInverse(InverseStrategy):
    """An explicit inverse per square layer, kept across steps and corrected each step.

    Args:
        newton_steps: Newton-Schulz steps ``M <- M + M (I - W M)`` applied to the cached
            inverse when the weights have changed since it was last corrected
            (``2 n^3`` multiply-adds each). Each squares the error ``I - W M``.
        refinements: iterative-refinement steps per solve (``2 N n^2`` each). Each
            multiplies the error of the solution by ``I - W M``.
        refresh_every: recompute every ``M`` exactly (LU) after this many weight changes;
            ``None`` never does unless ``max_residual`` trips (required with
            ``newton_steps=0``).
        max_residual: recompute ``M`` exactly when ``||I - W M||_F`` before a
            Newton-Schulz step exceeds this (the step then could not guarantee
            ``||I - W M_new||_2 <= max_residual^2``).

    The error of one solve is at most ``||E_used||_2^(refinements + 1)`` relative to
    ``||r|| ||W^-1||``, where ``E_used = I - W M`` for the ``M`` used in the solve; after
    a Newton-Schulz step ``E_used = E^2`` with ``E`` this step's drift (its size in
    training is in ``benchmarks/README.md``).
    """

    name = "cached"

    def __init__(
        self,
        *,
        newton_steps: int = 1,
        refinements: int = 1,
        refresh_every: Optional[int] = None,
        max_residual: float = 0.05,
    ) -> None:
        if not isinstance(newton_steps, int) or newton_steps < 0:
            raise ValueError(f"newton_steps must be an integer >= 0, got {newton_steps!r}")
        if not isinstance(refinements, int) or refinements < 0:
            raise ValueError(f"refinements must be an integer >= 0, got {refinements!r}")
        if newton_steps == 0 and refinements == 0:
            raise ValueError(
                "newton_steps=0 and refinements=0 would use a stale inverse uncorrected; "
                "set one of them >= 1"
            )
        if refresh_every is not None and (not isinstance(refresh_every, int) or refresh_every < 1):
            raise ValueError(f"refresh_every must be None or an integer >= 1, got {refresh_every!r}")
        if newton_steps == 0 and refresh_every is None:
            raise ValueError(
                "newton_steps=0 never updates the cached inverse, so its error would grow without "
                "bound: set refresh_every (an exact recomputation every so many steps)"
            )
        if not max_residual > 0:
            raise ValueError(f"max_residual must be positive, got {max_residual}")
        self.newton_steps = newton_steps
        self.refinements = refinements
        self.refresh_every = refresh_every
        self.max_residual = float(max_residual)
        # layer index -> (cached inverse, the weight it was corrected for, age in weight changes)
        self._cache: Dict[int, Tuple[Tensor, Tensor, int]] = {}
        # layer index -> whether the last exact inversion found the matrix singular (0-dim bool tensor)
        self._singular: Dict[int, Tensor] = {}
        self.exact_refreshes = 0
        self.last_residual = math.nan

    def reset(self) -> None:
        self._cache.clear()
        self._singular.clear()
        self.exact_refreshes = 0
        self.last_residual = math.nan

    def __repr__(self) -> str:
        return (
            f"CachedInverse(newton_steps={self.newton_steps}, refinements={self.refinements}, "
            f"refresh_every={self.refresh_every}, max_residual={self.max_residual})"
        )

    @torch.no_grad()
    def _exact(self, index: int, weight: Tensor) -> Tensor:
        self.exact_refreshes += 1
        # M with X M = ... : (weight^T)^-1 = (weight^-1)^T; inv_ex does not wait for the
        # device to check for a zero pivot, it reports it in ``info``
        inverse, info = torch.linalg.inv_ex(weight)
        self._singular[index] = info != 0
        return inverse.T.contiguous()

    @torch.no_grad()
    def _newton_schulz(self, weight: Tensor, inverse: Tensor) -> Tuple[Tensor, float]:
        """One step ``M + M (I - W M)`` with ``W = weight^T``; returns it and ``||I - W M||_F``."""
        residual = torch.mm(weight.T, inverse).neg_()
        residual.diagonal().add_(1.0)
        norm = float(torch.linalg.matrix_norm(residual))
        return torch.addmm(inverse, inverse, residual), norm

    @torch.no_grad()
    def inverse_of(self, index: int, weight: Tensor) -> Tensor:
        """The corrected cached inverse of ``weight^T`` for layer ``index``.

        Whether the weights moved is decided by comparing them with a copy kept from the
        last call (``n^2`` reads and ``n^2`` more memory per layer), not by tensor version
        counters: fused optimizers (``torch.optim.Adam(fused=True)``) update parameters in
        place without bumping them.
        """
        weight = weight.detach()
        cached = self._cache.get(index)
        if (
            cached is None
            or cached[0].shape != weight.shape
            or cached[0].dtype != weight.dtype
            or cached[0].device != weight.device
        ):
            inverse, age = self._exact(index, weight), 0
            seen = weight.clone()
        else:
            inverse, seen, age = cached
            if not torch.equal(seen, weight):
                age += 1
                if self.refresh_every is not None and age >= self.refresh_every:
                    inverse, age = self._exact(index, weight), 0
                else:
                    for _ in range(self.newton_steps):
                        inverse, norm = self._newton_schulz(weight, inverse)
                        self.last_residual = norm
                        if not norm <= self.max_residual:  # also catches NaN
                            inverse, age = self._exact(index, weight), 0
                            break
                # only now: if a correction above raised, the next call corrects again
                seen.copy_(weight)
        self._cache[index] = (inverse, seen, age)
        return inverse

    def state_bytes(self) -> int:
        """Bytes held across steps: each layer's inverse and the copy of its weights."""
        return sum(t.numel() * t.element_size() for inverse, seen, _ in self._cache.values() for t in (inverse, seen))

    def __getstate__(self):
        # pickles (checkpoint hyperparameters, deepcopy) leave the tensors out; the next
        # step recomputes them exactly
        state = self.__dict__.copy()
        state["_cache"] = {}
        state["_singular"] = {}
        return state

    def layer_inverses(self, net: nn.Module) -> List[Optional[MatrixInverse]]:
        out: List[Optional[MatrixInverse]] = [None] * net.num_layers
        for i in net.inverted_layer_indices:
            view = net.view(i)
            weight = view.matrix.detach()
            out[i] = MatrixInverse(self.inverse_of(i, weight), weight, self.refinements, view,
                                   singular=self._singular.get(i))
        return out


INVERSE_STRATEGIES = {ExactInverse.name: ExactInverse, CachedInverse.name: CachedInverse}


def build_inverse_strategy(spec: Union[str, InverseStrategy, None]) -> InverseStrategy:
    """``"lu"`` (exact, default), ``"cached"``, or an :class:`InverseStrategy` instance."""
    if spec is None:
        return ExactInverse()
    if isinstance(spec, InverseStrategy):
        return spec
    if isinstance(spec, str) and spec in INVERSE_STRATEGIES:
        return INVERSE_STRATEGIES[spec]()
    raise ValueError(
        f"inverse={spec!r} is not known; choose one of {sorted(INVERSE_STRATEGIES)} "
        "or pass an InverseStrategy instance"
    )
