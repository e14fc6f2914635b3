"""lightning-gait: GAIT-prop and its peers as PyTorch Lightning modules."""
from .activations import ACTIVATIONS, Identity, InvertibleActivation, LeakyReLU, SmoothLeakyReLU, build_activation
from .networks import InvertibleCNN, InvertibleMLP, LayerInverse, orthogonality_penalty
from .rules import Backprop, FeedbackAlignment, GAITProp, LocalLearningRule, TargetProp
from ._quiet import quiet_third_party_output
from .targets import NonFiniteError, TargetTrace

quiet_third_party_output()  # Lightning's tips and one internal deprecation (see _quiet.py)

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
