"""The paper's reduced-width invertible MLP (``docs/gait-prop.md``, "Architecture")."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from ..activations import Identity, InvertibleActivation, build_activation
from .base import InvertibleNetwork

__all__ = ["InvertibleMLP"]


class InvertibleMLP(InvertibleNetwork):
    """The reduced-width invertible MLP of "Scaling up learning with GAIT-prop".

    Layer 1 maps ``in_features -> width`` (semi-orthogonal, never inverted); then
    ``depth - 1`` square hidden layers ``width -> width``; then a linear output layer.
    With ``square_output=True`` the output layer is square (``width -> width``): its first
    ``num_classes`` units are the logits, the rest are auxiliary units whose target is
    their own value. With ``square_output=False`` it is a plain ``width -> num_classes``
    layer (the reference code's backprop baseline), and the network cannot be inverted.

    All weights start (semi-)orthogonal, all biases at zero. ``net.layers`` holds the
    ``depth + 1`` ``nn.Linear`` layers, input to output. Notation: row vectors,
    ``z_l = a_{l-1} W_l + b_l``, ``a_l = f(z_l)``, and ``nn.Linear.weight`` is ``W_l^T``.

    Args:
        in_features: size of the flattened input (``3 * 32 * 32`` for CIFAR-10). The CLI
            takes it from the DataModule when it is not given.
        width: units per hidden layer (``n``; the paper's 500).
        depth: number of hidden layers (the paper's 6).
        num_classes: number of logits (from the DataModule in the CLI).
        activation: hidden activation, ``"leaky_relu"``, ``"smooth_leaky_relu"`` or
            ``"identity"``. The output layer is always linear.
        square_output: square output layer with auxiliary units (needed by every rule
            that inverts layers).
        orthogonal: ``None`` (plain weights), or ``"cayley"`` / ``"matrix_exp"``: every
            square layer orthogonal by construction with that map
            (:mod:`lightning_gait.networks.orthogonal`; its inverse is its transpose, the
            orthogonality penalty leaves it out).
        orthogonal_scale: with ``orthogonal``, each of those layers is ``s * Q`` with a
            trained scale ``s`` (scaled orthogonal).
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
        orthogonal: Optional[str] = None,
        orthogonal_scale: bool = False,
        *,
        alpha: float = 0.1,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("num_classes", num_classes)):
            if value is None:
                raise ValueError(
                    f"{name} is not set: give it (e.g. InvertibleMLP(in_features=3072, num_classes=10)); "
                    "the CLI takes it from the DataModule"
                )
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
        self._init_orthogonal(orthogonal, orthogonal_scale)

    def prepare_input(self, x: Tensor) -> Tensor:
        """Accept ``(N, in_features)`` or images ``(N, C, H, W)`` (flattened row-major)."""
        if x.dim() > 2:
            x = x.reshape(x.shape[0], -1)
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"input of shape {tuple(x.shape)} does not flatten to (N, in_features={self.in_features})"
            )
        return x
