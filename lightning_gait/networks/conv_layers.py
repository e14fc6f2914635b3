"""Invertible convolutional layers: each is one square matrix shared by many rows.

* :class:`Conv1x1`: a ``C x C`` matrix applied to every pixel of ``(N, C, H, W)``
  (an invertible 1x1 convolution, as in Glow). Rows are pixels: ``N * H * W`` rows of
  ``C`` entries.
* :class:`PatchConv`: a convolution whose kernel and stride are both ``k``, so that its
  patches do not overlap. Each ``k x k`` patch of ``C`` channels (space-to-depth, entries
  ordered channel, patch row, patch column) maps through one ``C k^2 x C k^2`` matrix to
  the ``C k^2`` channels of one output pixel: ``(N, C, H, W) -> (N, C k^2, H/k, W/k)``.
  Rows are patches: ``N * (H/k) * (W/k)`` rows of ``C k^2`` entries.
* :class:`FlatLinear`: a dense layer on the flattened input ``(N, *input_shape)``, for
  an output layer that reads a convolutional activation. One row per sample.

The parameter ``weight`` of each layer *is* its matrix ``A`` (``(n_out, n_in)``,
``nn.Linear`` layout), so the orthogonality penalty, feedback alignment's feedback and the
cached inverse work on it directly. Each registers its
:func:`~lightning_gait.networks.layers.matrix_view` (so does ``nn.Conv2d``, whose rows are
its unfolded, overlapping patches: never square, never inverted). The forward passes use
``F.conv2d`` (a convolution kernel that is a view of ``A``) and agree with the views to
round-off.

Speed on a CPU (``benchmarks/README.md``). The invertible CNN keeps its activations in
channels-last memory order (``torch.channels_last``): a pixel's channels are contiguous,
so the rows of a 1x1 convolution are a view of the activation (no copy) and the
convolutions take oneDNN's fast channels-last path. :func:`rows_to_pixels` and
:func:`rows_to_patches` return channels-last tensors. A batch holds far more rows (pixels,
patches) than the matrix has columns, so :class:`Conv1x1` and :class:`PatchConv` are
inverted by one explicit inverse of ``A`` per step and one product over the rows, itself a
convolution (1x1, or transposed over patches: oneDNN's convolutions beat a matrix product
over the rows here) (:class:`~lightning_gait.networks.layers.ProductInverse`), not by
triangular solves over the rows; their updates come from one weight-gradient convolution
(:func:`~lightning_gait.networks.layers.weight_gradient`).
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .layers import MatrixView, ProductInverse, layer_inverse, matrix_view, orthogonal_inverse, weight_gradient

__all__ = [
    "Conv1x1",
    "PatchConv",
    "FlatLinear",
    "pixels_to_rows",
    "rows_to_pixels",
    "patches_to_rows",
    "rows_to_patches",
]


# ---------------------------------------------------------------------- rows
def pixels_to_rows(x: Tensor) -> Tensor:
    """``(N, C, H, W) -> (N * H * W, C)``: one row per pixel, in (sample, row, column) order."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def rows_to_pixels(rows: Tensor, like: Tensor) -> Tensor:
    """Undo :func:`pixels_to_rows`: ``(N * H * W, C') -> (N, C', H, W)``, ``N, H, W`` from ``like``.

    Returns a view of ``rows`` in channels-last memory order (no copy), the layout the
    invertible CNN keeps its activations in.
    """
    n, _, h, w = like.shape
    return rows.reshape(n, h, w, -1).permute(0, 3, 1, 2)


def patches_to_rows(x: Tensor, k: int) -> Tensor:
    """Space-to-depth: ``(N, C, H, W) -> (N * H/k * W/k, C k^2)``.

    One row per ``k x k`` patch, in (sample, patch row, patch column) order; within a row
    the entries are ordered (channel, row in the patch, column in the patch), the order of
    a convolution kernel ``(C, k, k)`` flattened.
    """
    n, c, h, w = x.shape
    return x.reshape(n, c, h // k, k, w // k, k).permute(0, 2, 4, 1, 3, 5).reshape(-1, c * k * k)


def rows_to_patches(rows: Tensor, k: int, like: Tensor) -> Tensor:
    """Undo :func:`patches_to_rows`; ``like`` has the shape of the layer's output ``(N, C', H/k, W/k)``."""
    n, _, hp, wp = like.shape
    c = rows.shape[1] // (k * k)
    # (sample, patch row, patch column, channel, row, column) -> (sample, image row, image column,
    # channel), one copy, then the channels-last view of the image
    pixels = rows.reshape(n, hp, wp, c, k, k).permute(0, 1, 4, 2, 5, 3).reshape(n, hp * k, wp * k, c)
    return pixels.permute(0, 3, 1, 2)


# ---------------------------------------------------------------------- layers
class _SquareMatrixLayer(nn.Module):
    """A layer whose parameters are one square matrix ``weight`` (``n x n``) and a bias."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size, size))
        self.bias = nn.Parameter(torch.empty(size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Orthogonal matrix, zero bias."""
        nn.init.orthogonal_(self.weight)
        nn.init.zeros_(self.bias)


class Conv1x1(_SquareMatrixLayer):
    """``z[n, :, h, w] = A a[n, :, h, w] + b``: one ``C x C`` matrix shared by every pixel.

    Input and output ``(N, C, H, W)``; ``weight`` is ``A`` (``C x C``), ``bias`` has ``C`` entries.
    """

    def __init__(self, channels: int) -> None:
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive integer, got {channels!r}")
        super().__init__(channels)
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


class PatchConv(_SquareMatrixLayer):
    """A convolution over non-overlapping ``k x k`` patches: ``(N, C, H, W) -> (N, C k^2, H/k, W/k)``.

    Kernel size and stride are both ``patch``; ``weight`` is the ``C k^2 x C k^2`` matrix
    ``A`` applied to every patch (flattened in (channel, row, column) order, see
    :func:`patches_to_rows`), so the layer is square and, with ``A`` invertible,
    invertible. ``H`` and ``W`` must be multiples of ``patch``.
    """

    def __init__(self, in_channels: int, patch: int = 2) -> None:
        for name, value in (("in_channels", in_channels), ("patch", patch)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        super().__init__(in_channels * patch * patch)
        self.in_channels = in_channels
        self.patch = patch
        self.out_channels = in_channels * patch * patch

    def kernel(self) -> Tensor:
        """The convolution kernel ``(C k^2, C, k, k)``: a view of ``weight``."""
        return self.weight.view(self.out_channels, self.in_channels, self.patch, self.patch)

    def forward(self, x: Tensor) -> Tensor:
        k = self.patch
        if x.shape[-2] % k or x.shape[-1] % k:
            raise ValueError(f"PatchConv(patch={k}) needs height and width divisible by {k}, got {tuple(x.shape)}")
        return F.conv2d(x, self.kernel(), self.bias, stride=k)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, patch={self.patch}, out_channels={self.out_channels}"


class FlatLinear(nn.Module):
    """A dense layer on the flattened input: ``(N, *input_shape) -> (N, out_features)``.

    ``weight`` is ``(out_features, prod(input_shape))`` as in ``nn.Linear``; the input is
    flattened row-major (channel, row, column for an image).
    """

    def __init__(self, input_shape: Sequence[int], out_features: int) -> None:
        super().__init__()
        self.input_shape: Tuple[int, ...] = tuple(int(n) for n in input_shape)
        self.in_features = math.prod(self.input_shape)
        self.out_features = int(out_features)
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features))
        self.bias = nn.Parameter(torch.empty(self.out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """(Semi-)orthogonal matrix, zero bias."""
        nn.init.orthogonal_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x.flatten(1), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, out_features={self.out_features}"


# ---------------------------------------------------------------------- matrix views
def _pixel_product(r: Tensor, matrix: Tensor) -> Tensor:
    # rows_to_pixels(pixels_to_rows(r) @ M, r): a 1x1 convolution whose kernel is M^T (oneDNN's
    # channels-last convolution, faster on a CPU than a matrix product over the rows)
    return F.conv2d(r, matrix.T[:, :, None, None])


@matrix_view.register
def _(layer: Conv1x1) -> MatrixView:
    return MatrixView(layer.weight, layer.bias, input_rows=pixels_to_rows, output_rows=pixels_to_rows,
                      rows_to_input=rows_to_pixels, rows_to_output=rows_to_pixels, product=_pixel_product)


@matrix_view.register
def _(layer: PatchConv) -> MatrixView:
    k = layer.patch

    def product(r: Tensor, matrix: Tensor) -> Tensor:
        # rows_to_patches(pixels_to_rows(r) @ M): a transposed convolution whose kernel is
        # M, row o -> input channel o (no copy of the rows into patches)
        return F.conv_transpose2d(r, matrix.reshape(matrix.shape[0], -1, k, k), stride=k)

    return MatrixView(
        layer.weight,
        layer.bias,
        input_rows=lambda x: patches_to_rows(x, k),
        output_rows=pixels_to_rows,
        rows_to_input=lambda r, like: rows_to_patches(r, k, like),
        rows_to_output=rows_to_pixels,
        product=product,
    )


@matrix_view.register
def _(layer: nn.Conv2d) -> MatrixView:
    # any convolution (e.g. the CNN's first, 3x3 layer) applies its kernel, flattened, to the
    # rows of its unfolded input patches (F.unfold's order: channel, kernel row, kernel
    # column). The patches overlap, so rows do not map back to an input: such a layer is
    # never square and never inverted.
    if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        raise TypeError(f"no matrix view for {layer!r}: only groups=1 and explicit zero padding")
    options = dict(kernel_size=layer.kernel_size, dilation=layer.dilation, padding=layer.padding,
                   stride=layer.stride)

    def input_rows(x: Tensor) -> Tensor:
        return F.unfold(x, **options).transpose(1, 2).reshape(-1, layer.weight[0].numel())

    def rows_to_input(rows: Tensor, like: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(layer).__name__}: overlapping patches do not map back to an input")

    return MatrixView(layer.weight.view(layer.out_channels, -1), layer.bias, input_rows=input_rows,
                      output_rows=pixels_to_rows, rows_to_input=rows_to_input, rows_to_output=rows_to_pixels)


@matrix_view.register
def _(layer: FlatLinear) -> MatrixView:
    shape = layer.input_shape
    return MatrixView(layer.weight, layer.bias, input_rows=lambda x: x.flatten(1),
                      rows_to_input=lambda r, like: r.reshape(r.shape[0], *shape))


# ---------------------------------------------------------------------- inverses and updates
@layer_inverse.register(Conv1x1)
@layer_inverse.register(PatchConv)
def _(layer):
    # a batch holds far more pixels (rows) than the matrix has columns: one explicit
    # inverse and one product over the rows beat triangular solves over the rows
    return orthogonal_inverse(layer) or ProductInverse.from_view(matrix_view(layer))


def _kernel_gradient(layer, x: Tensor, grad: Tensor, kernel: Tensor, stride: int):
    _, dk, db = torch.ops.aten.convolution_backward(
        grad, x, kernel, [layer.bias.shape[0]], [stride, stride], [0, 0], [1, 1], False, [0, 0], 1,
        [False, True, True])
    return dk.reshape(layer.weight.shape), db


@weight_gradient.register
def _(layer: Conv1x1, x: Tensor, grad: Tensor):
    return _kernel_gradient(layer, x, grad, layer.weight[:, :, None, None], 1)


@weight_gradient.register
def _(layer: PatchConv, x: Tensor, grad: Tensor):
    return _kernel_gradient(layer, x, grad, layer.kernel(), layer.patch)
