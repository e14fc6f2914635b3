"""Networks: the contract every network honours, its layers' inverses, and the paper's MLP."""
from .base import ForwardTrace, InvertibleNetwork
from .layers import (
    LayerInverse,
    MatrixView,
    layer_inverse,
    matrix_view,
    orthogonality_penalty,
    orthogonality_surrogate,
)
from .mlp import InvertibleMLP

__all__ = [
    "InvertibleNetwork",
    "ForwardTrace",
    "InvertibleMLP",
    "MatrixView",
    "matrix_view",
    "LayerInverse",
    "layer_inverse",
    "orthogonality_penalty",
    "orthogonality_surrogate",
]
