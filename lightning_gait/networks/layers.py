"""Invertible layers: each layer type's matrix view and exact inverse, chosen by its type.

Every layer the library inverts applies one matrix to "rows": a dense layer to each
sample, a 1x1 convolution to each pixel. :func:`matrix_view` returns that matrix (in
``nn.Linear`` layout, ``A`` of shape ``(n_out, n_in)``, rows map as ``x -> x A^T + b``)
together with the reshapes between the layer's tensors and rows. From it come:

* the exact inverse (:class:`LayerInverse`, an LU factorisation of the matrix applied to
  all rows in one solve), returned by :func:`layer_inverse`;
* the orthogonality penalty on the matrix (:func:`orthogonality_surrogate`);
* feedback alignment's random feedback (a matrix of the same shape, applied to rows);
* the orthogonality diagnostics.

A new layer type registers its view (``@matrix_view.register``) and, if its inverse is not
a matrix solve, its own inverse (``@layer_inverse.register``): the rules need no change.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import singledispatch
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor, nn

from .orthogonal import orthogonal_parametrization

__all__ = [
    "MatrixView",
    "matrix_view",
    "LayerInverse",
    "layer_inverse",
    "orthogonality_penalty",
    "orthogonality_surrogate",
    "ProductInverse",
    "OrthogonalInverse",
    "orthogonal_inverse",
    "weight_gradient",
]


def _same(t: Tensor) -> Tensor:
    return t


@dataclass
class MatrixView:
    """A layer's affine map as one matrix applied to rows.

    ``matrix`` is ``A`` (``(n_out, n_in)``, a view of the weight parameter), ``bias`` has
    ``n_out`` entries (or is ``None``). ``input_rows(x)`` turns the layer's input into
    ``(M, n_in)`` rows and ``output_rows(z)`` its output into ``(M, n_out)`` rows;
    ``rows_to_input(r, out)`` and ``rows_to_output(r, out)`` undo them, where ``out`` is
    always a tensor with the layer's OUTPUT shape for the same batch (it fixes the
    shapes; a layer whose input and output shapes differ derives its input shape from
    it). The layer computes ``rows_to_output(input_rows(x) A^T + b)``.
    """

    matrix: Tensor
    bias: Optional[Tensor]
    input_rows: Callable[[Tensor], Tensor] = _same
    output_rows: Callable[[Tensor], Tensor] = _same
    rows_to_input: Callable[[Tensor, Tensor], Tensor] = lambda r, like: r
    rows_to_output: Callable[[Tensor, Tensor], Tensor] = lambda r, like: r
    #: optional ``product(r, M)``: ``rows_to_input(output_rows(r) @ M, r)`` computed another
    #: way where that is faster (a convolution for pixels, a transposed one for patches), ``M`` of shape
    #: ``(n_out, n_in)``
    product: Optional[Callable[[Tensor, Tensor], Tensor]] = None

    @property
    def is_square(self) -> bool:
        return self.matrix.shape[0] == self.matrix.shape[1]

    @property
    def shape(self) -> Tuple[int, int]:
        return tuple(self.matrix.shape)


@singledispatch
def matrix_view(layer: nn.Module) -> MatrixView:
    """The :class:`MatrixView` of ``layer``; register one for each new layer type."""
    raise TypeError(
        f"no matrix view is registered for layer type {type(layer).__name__}; register one with "
        "@lightning_gait.networks.layers.matrix_view.register"
    )


@matrix_view.register
def _(layer: nn.Linear) -> MatrixView:
    return MatrixView(layer.weight, layer.bias)


class LayerInverse:
    """Applies the inverse of a square layer's matrix through an LU factorisation.

    With ``A`` the layer's matrix (``nn.Linear.weight``), rows map as ``z = x A^T + b``, so
    ``solve(r)`` returns ``X`` with ``X A^T = r`` and ``solve_affine(z)`` returns the input
    whose output is ``z``. ``lu, pivots`` factorise ``A^T`` itself
    (``torch.linalg.lu_factor_ex``): the transposed view is already in LAPACK's
    column-major layout, so nothing is copied and the solve is a plain right-hand
    triangular solve, one batched call for all rows.

    The factorisation does not check for singularity (that would wait for the device at
    every layer). :attr:`singular` is a 0-dim boolean tensor, computed on the device, that
    is true when the matrix is singular to working precision: its smallest LU pivot
    ``|U_ii|`` is at most ``n * eps`` times its largest (the rank tolerance of
    ``numpy.linalg.matrix_rank``, applied to the pivots). A rule reads it together with
    its other checks.
    """

    def __init__(self, lu: Tensor, pivots: Tensor, view: Optional[MatrixView] = None) -> None:
        self.lu = lu
        self.pivots = pivots
        self.view = view
        self._singular: Optional[Tensor] = None

    @classmethod
    @torch.no_grad()
    def from_view(cls, view: MatrixView) -> "LayerInverse":
        if not view.is_square:
            raise ValueError(f"a matrix of shape {view.shape} is not square and has no inverse")
        lu, pivots, _ = torch.linalg.lu_factor_ex(view.matrix.detach().T)
        return cls(lu, pivots, view)

    def pivot_range(self) -> Tuple[Tensor, Tensor]:
        """The smallest and largest ``|U_ii|`` of the factorisation (on the device)."""
        return torch.aminmax(self.lu.diagonal(dim1=-2, dim2=-1).abs())

    @property
    def tolerance(self) -> float:
        """``n * eps`` of the matrix's size and dtype: the pivot ratio at or below which it is singular."""
        return self.lu.shape[-1] * torch.finfo(self.lu.dtype).eps

    @property
    def singular(self) -> Tensor:
        """True (a 0-dim boolean tensor) when the matrix is singular to working precision."""
        if self._singular is None:
            low, high = self.pivot_range()
            self._singular = low <= high * self.tolerance
        return self._singular

    def describe_singularity(self) -> str:
        """Why :attr:`singular` holds, in words (waits for the device)."""
        low, high = (float(v) for v in self.pivot_range())
        ratio = low / high if high > 0 else 0.0
        return (f"its smallest LU pivot is {ratio:.1e} times its largest, at or below n * eps = "
                f"{self.tolerance:.1e} (n = {self.lu.shape[-1]}, {str(self.lu.dtype).replace('torch.', '')})")

    def solve_rows(self, r: Tensor) -> Tensor:
        """``X`` with ``X A^T = r`` for rows ``r`` of shape ``(M, n)``."""
        return torch.linalg.lu_solve(self.lu, self.pivots, r, left=False)

    def solve(self, r: Tensor) -> Tensor:
        """The input ``x`` whose linear part ``F(x) - b`` equals ``r`` (any layer shape)."""
        view = self.view
        if view is None:
            return self.solve_rows(r)
        return view.rows_to_input(self.solve_rows(view.output_rows(r)), r)

    def solve_affine(self, z: Tensor) -> Tensor:
        """The input ``x`` with ``F(x) = z``: ``solve(z - b)``, the bias subtracted from rows."""
        view = self.view
        if view is None:
            return self.solve_rows(z)
        rows = view.output_rows(z)
        if view.bias is not None:
            rows = rows - view.bias
        return view.rows_to_input(self.solve_rows(rows), z)


class _ExplicitInverse:
    """Solves with an explicit inverse ``M`` (:attr:`matrix_inverse`) of a square layer's
    matrix: ``X = r M`` over rows, or the layer's own product (a 1x1 convolution for pixels,
    a transposed one for patches) where its :class:`MatrixView` has one."""

    view: Optional[MatrixView]
    matrix_inverse: Tensor

    def solve_rows(self, r: Tensor) -> Tensor:
        return r @ self.matrix_inverse

    def solve(self, r: Tensor) -> Tensor:
        view = self.view
        if view is not None and view.product is not None:
            return view.product(r, self.matrix_inverse)
        return LayerInverse.solve(self, r)

    def solve_affine(self, z: Tensor) -> Tensor:
        view = self.view
        if view is not None and view.product is not None:
            return self.solve(z if view.bias is None else z - view.bias.view(1, -1, *([1] * (z.dim() - 2))))
        return LayerInverse.solve_affine(self, z)


class ProductInverse(_ExplicitInverse, LayerInverse):
    """Applies an explicit inverse ``M = (A^T)^-1`` of a square layer's matrix: ``X = r M``.

    For layers whose rows far outnumber the matrix's size (a convolution over every pixel
    of a batch), one ``n x n`` inversion per step (``n^3``) and one matrix product over the
    rows cost less than triangular solves over the rows, and a product runs at a CPU's
    full speed. ``M`` comes from the same LU factorisation as :class:`LayerInverse`
    (``lu_solve`` of the identity), so :attr:`singular` is the same pivot test; for a
    well-conditioned matrix (the orthogonality penalty keeps them so) the product is
    exact to round-off like the solves.
    """

    def __init__(self, lu: Tensor, pivots: Tensor, view: Optional[MatrixView] = None) -> None:
        super().__init__(lu, pivots, view)
        eye = torch.eye(lu.shape[-1], dtype=lu.dtype, device=lu.device)
        self.matrix_inverse = torch.linalg.lu_solve(lu, pivots, eye)


class OrthogonalInverse(_ExplicitInverse):
    """The inverse of a layer that is orthogonal by construction: its transpose (over ``s^2``).

    With the layer's matrix ``A = s R`` (``R`` orthogonal, :mod:`~lightning_gait.networks.orthogonal`),
    ``X A^T = r`` gives ``X = r A / s^2``: one matrix product, no factorisation, nothing
    that can be singular. Same interface as :class:`LayerInverse`.
    """

    singular = None

    def __init__(self, view: MatrixView, scale: Optional[Tensor] = None) -> None:
        self.view = view
        matrix = view.matrix.detach()
        self.matrix_inverse = matrix if scale is None else matrix / scale.detach() ** 2


def orthogonal_inverse(layer: nn.Module) -> Optional[OrthogonalInverse]:
    """:class:`OrthogonalInverse` of ``layer`` if it is orthogonal by construction, else ``None``."""
    mapping = orthogonal_parametrization(layer)
    if mapping is None:
        return None
    return OrthogonalInverse(matrix_view(layer), mapping.scale())


@singledispatch
def layer_inverse(layer: nn.Module):
    """An exact inverse of ``layer`` from its current weights (``solve``, ``solve_affine``).

    A layer that is orthogonal by construction gets its transpose
    (:class:`OrthogonalInverse`); otherwise the default factorises the layer's
    :func:`matrix_view`. A layer type whose inverse is not a matrix solve registers its
    own (``@layer_inverse.register``; call :func:`orthogonal_inverse` first in it to keep
    the orthogonal option).
    """
    return orthogonal_inverse(layer) or LayerInverse.from_view(matrix_view(layer))


@singledispatch
def weight_gradient(layer: nn.Module, x: Tensor, grad: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
    """``(dW, db)``: the gradient of ``sum(grad * layer(x))`` with respect to the layer's
    weight and bias (``db`` is ``None`` for a layer without one).

    With ``grad`` a local loss's gradient with respect to the layer's pre-activation
    ``z = layer(x)``, this is the layer's update, computed directly (no autograd graph of
    the forward pass is needed). The default uses the layer's :func:`matrix_view`
    (``dA = output_rows(grad)^T input_rows(x)``, ``db`` the column sums); a layer type
    without a view falls back to autograd through ``layer(x)``. Register a faster one
    for a new layer type with ``@weight_gradient.register``.
    """
    if matrix_view.dispatch(type(layer)) is matrix_view.dispatch(object):
        bias = getattr(layer, "bias", None)
        params = [layer.weight] + ([bias] if bias is not None else [])
        with torch.enable_grad():
            grads = torch.autograd.grad(layer(x.detach()), params, grad)
        return grads[0], (grads[1] if bias is not None else None)
    view = matrix_view(layer)
    rows = view.output_rows(grad)
    dw = (rows.T @ view.input_rows(x)).view_as(view.matrix)
    return dw, (rows.sum(0) if view.bias is not None else None)


@weight_gradient.register
def _(layer: nn.Conv2d, x: Tensor, grad: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        return weight_gradient.dispatch(nn.Module)(layer, x, grad)
    bias = layer.bias
    _, dw, db = torch.ops.aten.convolution_backward(
        grad, x, layer.weight, None if bias is None else [bias.shape[0]], list(layer.stride), list(layer.padding),
        list(layer.dilation), False, [0, 0], layer.groups, [False, True, bias is not None])
    return dw, db


def orthogonality_penalty(net) -> Tensor:
    """``sum over square layers of ||A A^T - I||_F^2`` (differentiable, for reference)."""
    total = None
    for _, w in net.orthogonality_terms():
        eye = torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
        term = ((w @ w.T - eye) ** 2).sum()
        total = term if total is None else total + term
    if total is None:
        p = next(net.parameters())
        return torch.zeros((), dtype=p.dtype, device=p.device)
    return total


def orthogonality_surrogate(net) -> Tuple[Tensor, Tensor]:
    """A cheap stand-in for :func:`orthogonality_penalty` with the same gradient.

    The gradient of ``||A A^T - I||_F^2`` is ``4 (A A^T - I) A``; the surrogate
    ``sum(A * (4 (A A^T - I) A).detach())`` has exactly that gradient at a cost of two
    matrix products per layer, against three through autograd. Returns
    ``(surrogate, penalty_value)``; only the surrogate carries a graph.
    """
    surrogate, value = None, None
    for _, w in net.orthogonality_terms():
        with torch.no_grad():
            p = w @ w.T
            p.diagonal().sub_(1.0)
            grad = 4.0 * (p @ w)
            v = (p * p).sum()
        s = (w * grad).sum()
        surrogate = s if surrogate is None else surrogate + s
        value = v if value is None else value + v
    if surrogate is None:
        p = next(net.parameters())
        zero = torch.zeros((), dtype=p.dtype, device=p.device)
        return zero, zero
    return surrogate, value
