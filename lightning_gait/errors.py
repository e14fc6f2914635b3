"""The errors lightning-gait raises on purpose, in two families.

* :class:`UserError`: something the user can fix (a configuration, the data, a batch, a
  checkpoint, an output folder). ``python -m lightning_gait.fit`` prints its message
  without a traceback and exits with code 2.
* :class:`NonFiniteError`: training produced a NaN or an infinity (or, for
  :class:`SingularLayerError`, an inverse without meaning). ``on_nonfinite="skip"`` skips
  the batch where that is possible; ``fit`` exits with code 3.

The module has no dependencies, so that every part of the package can raise them.
"""
from __future__ import annotations

__all__ = [
    "UserError",
    "BatchError",
    "PrecisionError",
    "CheckpointError",
    "RunFolderError",
    "NonFiniteError",
    "SingularLayerError",
]


class UserError(Exception):
    """A mistake in the configuration, data, batch, checkpoint or output folder that the
    user can fix; the message says what is wrong and what to do."""


class BatchError(UserError, ValueError):
    """A batch that does not fit the network: empty, of another dtype, or with labels
    outside ``[0, num_classes)``."""


class PrecisionError(UserError, ValueError):
    """A trainer precision in which the learning rule cannot compute its updates."""


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, or does not fit the model or the trainer."""


class RunFolderError(UserError):
    """An output folder that holds another run's checkpoints."""


class NonFiniteError(FloatingPointError):
    """A target, multiplier, update, weight or optimizer state that is NaN or infinite."""


class SingularLayerError(NonFiniteError):
    """A layer to be inverted is singular to working precision: its inverse, and every
    target propagated through it, would be infinite, NaN or meaningless."""
