"""glibc's allocator, set for training on a CPU: freed tensors stay in the process for reuse.

By default glibc serves every allocation above its mmap threshold (at most 32 MiB) with a
fresh ``mmap`` and returns it to the system on ``free``. A training step allocates and
frees the same large activations at every step (a 256-image batch of the invertible CNN's
first stage is 32 MiB per tensor), so each new tensor is zeroed page by page by the kernel
before it is written: on a CPU an elementwise operation that returns a new tensor then
costs several times one that writes in place. :func:`keep_freed_memory` tells glibc not to
map allocations of its own (main) heap and to keep freed memory there, so a step reuses the
pages of the step before. The resident set then stays at its peak for the life of the
process. (glibc's per-thread heaps still map memory; tensors are allocated by the thread
that runs the step.)

``fit`` calls it at start (``LIGHTNING_GAIT_MALLOC=system`` leaves glibc's defaults);
elsewhere (another C library, another system) it does nothing and returns ``False``. An
allocator loaded with ``LD_PRELOAD`` (jemalloc, tcmalloc) is not glibc's: the settings then
change nothing, though the call succeeds.
"""
from __future__ import annotations

import ctypes
import os

__all__ = ["mallopt", "keep_freed_memory", "describe", "M_TRIM_THRESHOLD", "M_MMAP_THRESHOLD", "M_MMAP_MAX", "ENV_VAR"]

#: mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
#: ``system`` here leaves the allocator as the C library set it
ENV_VAR = "LIGHTNING_GAIT_MALLOC"


def mallopt(option: int, value: int) -> bool:
    """glibc's ``mallopt(option, value)``; ``False`` where there is no glibc or it refuses."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(option, value))
    except (OSError, AttributeError):
        return False


def keep_freed_memory() -> bool:
    """No ``mmap`` for the main heap's allocations, and its freed memory kept for reuse
    (trimmed only above 2 GiB free at the top). ``True`` once the first is set (the one the
    speed comes from); ``False`` if this C library has no such setting or
    ``LIGHTNING_GAIT_MALLOC=system``."""
    if os.environ.get(ENV_VAR, "") == "system" or not mallopt(M_MMAP_MAX, 0):
        return False
    mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    return True


def describe(kept: bool) -> str:
    """What :func:`keep_freed_memory` returned, in words, for a benchmark's record."""
    return "freed memory kept (as fit)" if kept else "the C library's defaults"
