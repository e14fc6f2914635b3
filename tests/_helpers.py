"""Small helpers shared by several test files (imported as ``from _helpers import ...``)."""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def default_dtype(dtype: torch.dtype):
    """Build tensors and modules in ``dtype`` inside the block (e.g. exactly orthogonal float64 init)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
