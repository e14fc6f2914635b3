"""Networks: the contract every network honours, its layers' inverses, the paper's MLP and an invertible CNN."""
from .base import ForwardTrace, InvertibleNetwork
from .layers import (
    LayerInverse,
    MatrixView,
    OrthogonalInverse,
    ProductInverse,
    layer_inverse,
    matrix_view,
    orthogonality_penalty,
    orthogonality_surrogate,
    weight_gradient,
)
from .conv import InvertibleCNN
from .conv_layers import Conv1x1, FlatLinear, PatchConv
from .mlp import InvertibleMLP
from .orthogonal import ORTHOGONAL_MAPS, OrthogonalMatrix, make_orthogonal, orthogonal_parametrization

__all__ = [
    "InvertibleNetwork",
    "ForwardTrace",
    "InvertibleMLP",
    "InvertibleCNN",
    "Conv1x1",
    "PatchConv",
    "FlatLinear",
    "MatrixView",
    "matrix_view",
    "LayerInverse",
    "layer_inverse",
    "orthogonality_penalty",
    "orthogonality_surrogate",
    "ProductInverse",
    "OrthogonalInverse",
    "weight_gradient",
    "ORTHOGONAL_MAPS",
    "OrthogonalMatrix",
    "make_orthogonal",
    "orthogonal_parametrization",
]
