"""The paper's reduced-width invertible MLP, its layer inverses and the orthogonality penalty.

Plain PyTorch, no Lightning. Notation of ``docs/gait-prop.md``: row vectors,
``z_l = a_{l-1} W_l + b_l``, ``a_l = f(z_l)``, and ``nn.Linear.weight`` is ``W_l^T``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .activations import Identity, InvertibleActivation, build_activation

__all__ = [
    "InvertibleMLP",
    "ForwardTrace",
    "LayerInverse",
    "orthogonality_penalty",
    "orthogonality_surrogate",
]


@dataclass
class ForwardTrace:
    """Everything a learning rule keeps from one forward pass.

    ``inputs[l]`` is the input of layer ``l`` (0-based, ``a_{l}`` in the paper's 1-based
    notation), ``pre[l]`` its pre-activation ``z`` and ``post[l]`` its output ``a``.
    With ``local=True`` each layer's input is detached, so that autograd through
    ``post[l]`` reaches only layer ``l``'s own weight and bias.
    """

    inputs: List[Tensor]
    pre: List[Tensor]
    post: List[Tensor]

    @property
    def output(self) -> Tensor:
        return self.post[-1]


class InvertibleMLP(nn.Module):
    """The reduced-width invertible MLP of "Scaling up learning with GAIT-prop".

    Layer 1 maps ``in_features -> width`` (semi-orthogonal, never inverted); then
    ``depth - 1`` square hidden layers ``width -> width``; then a linear output layer.
    With ``square_output=True`` the output layer is square (``width -> width``): its first
    ``num_classes`` units are the logits, the rest are auxiliary units whose target is
    their own value. With ``square_output=False`` it is a plain ``width -> num_classes``
    layer (the reference code's backprop baseline), and the network cannot be inverted.

    All weights start (semi-)orthogonal, all biases at zero. ``net.layers`` holds the
    ``depth + 1`` ``nn.Linear`` layers, input to output.

    Args:
        in_features: size of the flattened input (``3 * 32 * 32`` for CIFAR-10). Required;
            None (the default) means "take it from the data", which ``lightning_gait.fit``
            does.
        width: units per hidden layer (``n``; the paper's 500).
        depth: number of hidden layers (the paper's 6).
        num_classes: number of logits. Required; None as for ``in_features``.
        activation: hidden activation, ``"leaky_relu"``, ``"smooth_leaky_relu"`` or
            ``"identity"``. The output layer is always linear.
        square_output: square output layer with auxiliary units (needed by every rule
            that inverts layers).
        alpha: negative slope of the leaky activations.
    """

    def __init__(
        self,
        in_features: Optional[int] = None,
        width: int = 500,
        depth: int = 6,
        num_classes: Optional[int] = None,
        activation: str = "leaky_relu",
        square_output: bool = True,
        *,
        alpha: float = 0.1,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("num_classes", num_classes)):
            if value is None:
                raise ValueError(f"{name} is None: give it, or let the CLI take it from the data")
        for name, value in (("in_features", in_features), ("width", width), ("num_classes", num_classes)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be an integer >= 1 (number of hidden layers), got {depth!r}")
        if square_output and width < num_classes:
            raise ValueError(
                f"width={width} is smaller than num_classes={num_classes}: a square output layer "
                "needs width >= num_classes (or set square_output=False)"
            )
        self.in_features = in_features
        self.width = width
        self.depth = depth
        self.num_classes = num_classes
        self.square_output = square_output
        self.activation_name = activation
        self.activation: InvertibleActivation = (
            build_activation(activation) if activation == "identity" else build_activation(activation, alpha=alpha)
        )
        self.output_activation: InvertibleActivation = Identity()

        sizes = [in_features] + [width] * depth + [width if square_output else num_classes]
        self.layers = nn.ModuleList(nn.Linear(sizes[i], sizes[i + 1]) for i in range(len(sizes) - 1))
        self.reset_parameters()

    # ------------------------------------------------------------------ structure
    def reset_parameters(self) -> None:
        """(Semi-)orthogonal weights and zero biases."""
        for layer in self.layers:
            nn.init.orthogonal_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def invertible(self) -> bool:
        """True when every layer after the first is square (and so can be inverted)."""
        return self.square_output

    def is_square(self, index: int) -> bool:
        w = self.layers[index].weight
        return w.shape[0] == w.shape[1]

    @property
    def square_layer_indices(self) -> List[int]:
        """0-based indices of the square layers (all but layer 1, the output if square)."""
        return [i for i in range(self.num_layers) if i > 0 and self.is_square(i)]

    def activation_of(self, index: int) -> InvertibleActivation:
        """The activation after layer ``index`` (0-based): hidden, or identity at the output."""
        return self.output_activation if index == self.num_layers - 1 else self.activation

    # ------------------------------------------------------------------ forward
    def flatten(self, x: Tensor) -> Tensor:
        """Accept ``(N, in_features)`` or images ``(N, C, H, W)`` (flattened row-major)."""
        if x.dim() > 2:
            x = x.reshape(x.shape[0], -1)
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"input of shape {tuple(x.shape)} does not flatten to (N, in_features={self.in_features})"
            )
        return x

    def trace(self, x: Tensor, *, local: bool = False) -> ForwardTrace:
        """Forward pass keeping every layer's input, pre-activation and output."""
        a = self.flatten(x)
        inputs, pre, post = [], [], []
        for i, layer in enumerate(self.layers):
            inp = a.detach() if local else a
            z = layer(inp)
            a = self.activation_of(i)(z)
            inputs.append(inp)
            pre.append(z)
            post.append(a)
        return ForwardTrace(inputs, pre, post)

    def logits(self, output: Tensor) -> Tensor:
        """The class logits: the first ``num_classes`` units of the output layer."""
        return output[:, : self.num_classes]

    def forward(self, x: Tensor) -> Tensor:
        a = self.flatten(x)
        for i, layer in enumerate(self.layers):
            a = self.activation_of(i)(layer(a))
        return self.logits(a)

    # ------------------------------------------------------------------ inverse
    def layer_inverse(self, index: int) -> "LayerInverse":
        """An exact inverse of square layer ``index`` (0-based), from its current weights."""
        if not self.is_square(index):
            raise ValueError(f"layer {index + 1} is not square and has no inverse")
        return LayerInverse.from_linear(self.layers[index])

    def invert_layer(self, index: int, a: Tensor) -> Tensor:
        """``G_l(a) = (f^-1(a) - b_l) W_l^-1``: the input that makes layer ``index`` output ``a``."""
        z = self.activation_of(index).inverse(a)
        return self.layer_inverse(index).solve(z - self.layers[index].bias)


class LayerInverse:
    """Applies ``W^-1`` of a square ``nn.Linear`` to row vectors through an LU factorisation.

    For ``nn.Linear`` with ``weight = W^T``, ``z = a W + b`` so ``a = (z - b) W^-1``:
    ``solve(r)`` returns ``X`` with ``X W = r``, i.e. ``X weight^T = r``.

    ``lu, pivots`` factorise ``W = weight^T`` itself (``torch.linalg.lu_factor``): the
    transposed view is already in LAPACK's column-major layout, so nothing is copied,
    and the solve is a plain right-hand triangular solve (in float32 on CPU about 10%
    faster per layer than factorising ``weight`` and solving with its adjoint; same
    result to round-off).
    """

    def __init__(self, lu: Tensor, pivots: Tensor) -> None:
        self.lu = lu
        self.pivots = pivots

    @classmethod
    @torch.no_grad()
    def from_linear(cls, layer: nn.Linear) -> "LayerInverse":
        lu, pivots = torch.linalg.lu_factor(layer.weight.detach().T)
        return cls(lu, pivots)

    def solve(self, r: Tensor) -> Tensor:
        # X W = r with W = weight^T factorised as P L U
        return torch.linalg.lu_solve(self.lu, self.pivots, r, left=False)


def orthogonality_penalty(net: InvertibleMLP) -> Tensor:
    """``sum over square layers of ||W W^T - I||_F^2`` (differentiable, for reference)."""
    total = None
    for i in net.square_layer_indices:
        w = net.layers[i].weight
        eye = torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
        term = ((w @ w.T - eye) ** 2).sum()
        total = term if total is None else total + term
    if total is None:
        p = next(net.parameters())
        return torch.zeros((), dtype=p.dtype, device=p.device)
    return total


def orthogonality_surrogate(net: InvertibleMLP) -> Tuple[Tensor, Tensor]:
    """A cheap stand-in for :func:`orthogonality_penalty` with the same gradient.

    The gradient of ``||W W^T - I||_F^2`` is ``4 (W W^T - I) W``; the surrogate
    ``sum(W * (4 (W W^T - I) W).detach())`` has exactly that gradient at a cost of two
    matrix products per layer, against three through autograd. Returns
    ``(surrogate, penalty_value)``; only the surrogate carries a graph.
    """
    surrogate, value = None, None
    for i in net.square_layer_indices:
        w = net.layers[i].weight
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
