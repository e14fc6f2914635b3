"""An exactly invertible convolutional network for GAIT-prop: :class:`InvertibleCNN`."""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..activations import Identity, InvertibleActivation, build_activation
from .base import InvertibleNetwork
from .conv_layers import Conv1x1, FlatLinear, PatchConv

__all__ = ["InvertibleCNN"]


class InvertibleCNN(InvertibleNetwork):
    """A convolutional network whose layers after the first are square and exactly invertible.

    Layout, input to output (defaults in brackets), with the sizes and parameter counts for
    CIFAR-10 and the defaults::

        layer 1   3x3 convolution, padding 1, C -> channels     3x32x32 -> 32x32x32        896
                  (not square, never inverted, like the MLP's first layer)
        stage s = 1 .. stages [3], each dividing height and width by patch [2]:
          PatchConv  on the first `keep` channels of the layer below (on all of layer 1's
                     at stage 1), c -> c*patch^2 channels  32x32x32 -> 128x16x16   16,512
          mixers [1] x Conv1x1 on all c*patch^2 channels  128x16x16 -> 128x16x16   16,512
          (stages 2 and 3: 32x16x16 -> 128x8x8 -> 128x8x8, 32x8x8 -> 128x4x4 -> 128x4x4)
        output    FlatLinear on the first `keep` channels, flattened: 32x4x4 = 512 -> 512
                  (square: the first num_classes units are the logits, the others
                  auxiliary units, as the MLP's output layer)                     262,656

    Eight layers and 362,624 parameters in all; the inverted matrices are 128 x 128 (six)
    and 512 x 512 (the output).

    ``keep`` (default ``channels``) is how many channels a stage passes on ("factor-out"):
    the others are auxiliary channels of the layer that produced them. Nothing reads them,
    and target propagation gives them their own value as target (difference zero), so each
    inverted layer stays square while the network narrows as it downsamples (2020
    GAIT-prop's "tower", for channels). Every hidden activation is the same invertible
    function; the output layer is linear.

    Every matrix starts (semi-)orthogonal and every bias at zero, so at initialisation each
    inverted layer's matrix (shared over pixels or patches) is orthogonal and GAIT-prop's
    updates equal backprop's. The orthogonality penalty acts on the shared matrices.

    Args:
        input_shape: ``(C, H, W)`` of one image; the CLI takes it from the DataModule.
            ``H`` and ``W`` must be multiples of ``patch ** stages``.
        num_classes: number of logits (from the DataModule in the CLI).
        channels: output channels of the first (3x3) convolution.
        activation: hidden activation, ``"leaky_relu"`` or ``"smooth_leaky_relu"`` (or
            ``"identity"``).
        stages: number of PatchConv stages (each divides height and width by ``patch``).
        patch: kernel size and stride of every PatchConv.
        mixers: Conv1x1 layers after each PatchConv (0 for none).
        keep: channels each stage and the output layer read from the layer below
            (``None``: ``channels``); at most the channels there.
        square_output: square output layer with auxiliary units (needed by the rules that
            invert layers); ``False`` gives a plain ``-> num_classes`` output layer.
        orthogonal: ``None`` (plain weights), or ``"cayley"`` / ``"matrix_exp"``: every
            square layer (patch convolutions, 1x1 convolutions, a square output layer)
            orthogonal by construction with that map
            (:mod:`lightning_gait.networks.orthogonal`; its inverse is its transpose, the
            orthogonality penalty leaves it out).
        orthogonal_scale: with ``orthogonal``, each of those layers is ``s * Q`` with a
            trained scale ``s`` (scaled orthogonal).
        alpha: negative slope of the leaky activations.

    The network reshapes a flat batch ``(N, C*H*W)`` (row-major ``C, H, W``, as the
    DataModules give it) into images; ``(N, C, H, W)`` is accepted as it is. Activations
    are kept in channels-last memory order (shapes stay ``(N, C, H, W)``): the 1x1 and
    patch convolutions and their inverses then work on rows without copies
    (:mod:`~lightning_gait.networks.conv_layers`).
    :meth:`layout` lists each layer's shapes and parameter count.
    """

    def __init__(
        self,
        input_shape: Optional[Sequence[int]] = None,
        num_classes: Optional[int] = None,
        channels: int = 32,
        activation: str = "leaky_relu",
        stages: int = 3,
        patch: int = 2,
        mixers: int = 1,
        keep: Optional[int] = None,
        square_output: bool = True,
        orthogonal: Optional[str] = None,
        orthogonal_scale: bool = False,
        *,
        alpha: float = 0.1,
    ) -> None:
        super().__init__()
        for name, value in (("input_shape", input_shape), ("num_classes", num_classes)):
            if value is None:
                raise ValueError(
                    f"{name} is not set: give it (e.g. InvertibleCNN(input_shape=(3, 32, 32), num_classes=10)); "
                    "the CLI takes it from the DataModule"
                )
        shape = tuple(input_shape)
        if len(shape) != 3 or not all(isinstance(n, int) and n >= 1 for n in shape):
            raise ValueError(f"input_shape must be three positive integers (C, H, W), got {input_shape!r}")
        keep = channels if keep is None else keep
        for name, value in (("num_classes", num_classes), ("channels", channels), ("patch", patch),
                            ("keep", keep)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name, value in (("stages", stages), ("mixers", mixers)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        c, h, w = shape
        scale = patch ** stages
        if h % scale or w % scale:
            raise ValueError(
                f"input_shape {shape}: height and width must be multiples of patch ** stages = {scale} "
                f"(patch={patch}, stages={stages})"
            )
        self.input_shape: Tuple[int, int, int] = shape
        self.num_classes = num_classes
        self.channels, self.stages, self.patch, self.mixers, self.keep = channels, stages, patch, mixers, keep
        self.square_output = square_output
        self.activation_name = activation
        self.activation: InvertibleActivation = (
            build_activation(activation) if activation == "identity" else build_activation(activation, alpha=alpha)
        )
        self.output_activation: InvertibleActivation = Identity()

        layers: List[nn.Module] = [nn.Conv2d(c, channels, kernel_size=3, padding=1)]
        #: channels layer i reads from the layer below (None: all of them)
        self._reads: List[Optional[int]] = [None]
        below = channels  # channels of the last layer's output
        for _ in range(stages):
            read = below if not layers[1:] else self._check_keep(keep, below)
            layers.append(PatchConv(read, patch))
            self._reads.append(None if read == below else read)
            below = read * patch * patch
            h, w = h // patch, w // patch
            for _ in range(mixers):
                layers.append(Conv1x1(below))
                self._reads.append(None)
        read = below if stages == 0 else self._check_keep(keep, below)
        width = read * h * w
        if square_output and width < num_classes:
            raise ValueError(
                f"the output layer reads {read} x {h} x {w} = {width} units, fewer than num_classes={num_classes}: "
                "raise keep or channels (or set square_output=False)"
            )
        layers.append(FlatLinear((read, h, w), width if square_output else num_classes))
        self._reads.append(None if read == below else read)
        self.layers = nn.ModuleList(layers)
        self.reset_parameters()
        self._init_orthogonal(orthogonal, orthogonal_scale)

    @staticmethod
    def _check_keep(keep: int, below: int) -> int:
        if keep > below:
            raise ValueError(f"keep={keep} is more than the {below} channels of the layer it reads")
        return keep

    # ------------------------------------------------------------------ the contract
    def prepare_input(self, x: Tensor) -> Tensor:
        """Images ``(N, C, H, W)`` from a flat batch ``(N, C*H*W)`` (row-major) or images,
        in channels-last memory order (see the class docstring)."""
        if x.dim() == 2 and x.shape[1] == math.prod(self.input_shape):
            return x.reshape(x.shape[0], *self.input_shape).contiguous(memory_format=torch.channels_last)
        if x.dim() == 4 and tuple(x.shape[1:]) == self.input_shape:
            return x.contiguous(memory_format=torch.channels_last)
        c, h, w = self.input_shape
        raise ValueError(
            f"input of shape {tuple(x.shape)} is neither (N, {c * h * w}) nor (N, {c}, {h}, {w}) "
            f"(input_shape={self.input_shape})"
        )

    def select_input(self, index: int, previous: Tensor) -> Tensor:
        """The first ``keep`` channels of the layer below where layer ``index`` factors out."""
        read = self._reads[index]
        if read is None:
            return previous
        # a channel slice of a channels-last tensor is strided: copy it once, channels last
        return previous[:, :read].contiguous(memory_format=torch.channels_last)

    def expand_to_previous(self, index: int, value: Tensor, previous: Tensor, *, difference: bool) -> Tensor:
        """Put ``value`` on the channels layer ``index`` reads; the others keep their own value."""
        read = self._reads[index]
        if read is None:
            return value
        # in previous's memory order (channels last)
        out = torch.zeros_like(previous) if difference else previous.clone()
        out[:, :read] = value
        return out

    # ------------------------------------------------------------------ description
    def layout(self) -> List[Dict[str, object]]:
        """Per layer: its type, the shape it reads, its output shape, its matrix and parameter count."""
        rows: List[Dict[str, object]] = []
        shape: Tuple[int, ...] = self.input_shape
        for i, layer in enumerate(self.layers):
            read = self._reads[i]
            reads = shape if read is None else (read, *shape[1:])
            if isinstance(layer, nn.Conv2d):
                out = (layer.out_channels, *shape[1:])
                matrix = (layer.out_channels, layer.weight[0].numel())
            elif isinstance(layer, PatchConv):
                out = (layer.out_channels, reads[1] // layer.patch, reads[2] // layer.patch)
                matrix = tuple(layer.weight.shape)
            elif isinstance(layer, FlatLinear):
                out = (layer.out_features,)
                matrix = tuple(layer.weight.shape)
            else:
                out, matrix = reads, tuple(layer.weight.shape)
            params = sum(p.numel() for p in layer.parameters())
            rows.append({"layer": i + 1, "type": type(layer).__name__, "reads": reads, "output": out,
                         "matrix": matrix, "params": params, "inverted": i in self.inverted_layer_indices})
            shape = out
        return rows

