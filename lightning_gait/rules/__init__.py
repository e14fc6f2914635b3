"""Learning rules as LightningModules sharing :class:`LocalLearningRule`."""
from .backprop import Backprop
from .base import LocalLearningRule, LocalObjective
from .feedback_alignment import FeedbackAlignment
from .gait import GAITProp
from .target_prop import TargetProp

__all__ = ["LocalLearningRule", "LocalObjective", "Backprop", "GAITProp", "TargetProp", "FeedbackAlignment"]
