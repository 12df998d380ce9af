"""glibc's mmap threshold: from what size freed arrays leave the process at once."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["set_mmap_threshold"]

log = logging.getLogger("cachetree")

_M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter number of the mmap threshold."""


def set_mmap_threshold(nbytes: int) -> bool:
    """Map allocations of at least ``nbytes`` on their own (glibc's
    ``mallopt(M_MMAP_THRESHOLD)``), for the whole process; fixing it also stops glibc from
    raising it as large blocks are freed. Returns False (and does nothing) without glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, int(nbytes)))
    except (OSError, AttributeError):
        log.debug("no glibc mallopt here: the allocator is left as it is")
        return False
