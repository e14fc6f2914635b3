"""A network written outside the package against the network contract, for the tests.

``PatchMixNet`` differs from ``InvertibleMLP`` in shape: its hidden activations are
``(N, C, H, W)``. Layer 1 is a strided convolution over non-overlapping patches (not
inverted); the hidden layers mix channels at every pixel with one shared ``C x C``
matrix (:class:`PixelMix`); the output layer flattens and applies a square dense matrix
(:class:`FlatDense`) whose first ``num_classes`` units are the logits. The two layer types
are new to the library: they register their matrix views here, and the rules, inverses,
penalty and diagnostics use them unchanged.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from lightning_gait.activations import Identity, build_activation
from lightning_gait.networks import InvertibleNetwork, MatrixView, matrix_view


class PixelMix(nn.Module):
    """``z[n, :, h, w] = W a[n, :, h, w] + b``: one ``C x C`` matrix shared by every pixel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("oc,nchw->nohw", self.weight, x) + self.bias.view(1, -1, 1, 1)


class FlatDense(nn.Module):
    """Flattens ``(N, C, H, W)`` and applies a square dense matrix."""

    def __init__(self, input_shape: Sequence[int]) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        n = math.prod(self.input_shape)
        self.weight = nn.Parameter(torch.empty(n, n))
        self.bias = nn.Parameter(torch.zeros(n))

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x.flatten(1), self.weight, self.bias)


def _pixels_to_rows(x: Tensor) -> Tensor:
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _rows_to_pixels(rows: Tensor, like: Tensor) -> Tensor:
    n, _, h, w = like.shape
    return rows.reshape(n, h, w, -1).permute(0, 3, 1, 2)


@matrix_view.register
def _(layer: PixelMix) -> MatrixView:
    return MatrixView(layer.weight, layer.bias, input_rows=_pixels_to_rows, output_rows=_pixels_to_rows,
                      rows_to_input=_rows_to_pixels, rows_to_output=_rows_to_pixels)


@matrix_view.register
def _(layer: FlatDense) -> MatrixView:
    return MatrixView(layer.weight, layer.bias, input_rows=lambda x: x.flatten(1),
                      rows_to_input=lambda r, like: r.reshape(r.shape[0], *layer.input_shape))


class PatchMixNet(InvertibleNetwork):
    """Patch convolution -> ``mixers`` x :class:`PixelMix` -> :class:`FlatDense` output."""

    def __init__(self, input_shape: Optional[Sequence[int]] = None, num_classes: Optional[int] = None, *,
                 channels: int = 8, patch: int = 4, mixers: int = 2, activation: str = "leaky_relu") -> None:
        super().__init__()
        if input_shape is None or num_classes is None:
            raise ValueError("PatchMixNet needs input_shape and num_classes")
        c, h, w = input_shape
        self.input_shape = (c, h, w)
        self.num_classes = num_classes
        hidden = (channels, h // patch, w // patch)
        self.layers = nn.ModuleList(
            [nn.Conv2d(c, channels, kernel_size=patch, stride=patch)]
            + [PixelMix(channels) for _ in range(mixers)]
            + [FlatDense(hidden)]
        )
        self.activation = build_activation(activation)
        self.output_activation = Identity()
        self.reset_parameters()

    def activation_of(self, index: int):
        return self.output_activation if index == self.num_layers - 1 else self.activation

    def reset_parameters(self) -> None:
        for layer in self.layers:
            nn.init.orthogonal_(layer.weight)
            nn.init.zeros_(layer.bias)

    def prepare_input(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.input_shape)
