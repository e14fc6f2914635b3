"""lightning-gait: GAIT-prop and its peers as PyTorch Lightning modules.

Importing the package changes no global state (warnings filters, loggers): the ``fit``
command quiets third-party output for its own run (:mod:`lightning_gait._quiet`).
"""
from .activations import ACTIVATIONS, Identity, InvertibleActivation, LeakyReLU, SmoothLeakyReLU, build_activation
from .networks import InvertibleCNN, InvertibleMLP, LayerInverse, orthogonality_penalty
from .rules import Backprop, FeedbackAlignment, GAITProp, LocalLearningRule, TargetProp
from .targets import NonFiniteError, TargetTrace

__version__ = "0.1.0"

__all__ = [
    "InvertibleMLP",
    "InvertibleCNN",
    "Backprop",
    "GAITProp",
    "TargetProp",
    "FeedbackAlignment",
    "LocalLearningRule",
    "InvertibleActivation",
    "Identity",
    "LeakyReLU",
    "SmoothLeakyReLU",
    "ACTIVATIONS",
    "build_activation",
    "LayerInverse",
    "orthogonality_penalty",
    "NonFiniteError",
    "TargetTrace",
]
