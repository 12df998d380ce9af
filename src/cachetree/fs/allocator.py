"""glibc's allocator: from what size freed arrays leave the process, and when.

Every function here acts on the whole process and does nothing elsewhere than glibc.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import threading
from collections.abc import Iterator

__all__ = ["keep_freed_memory", "release_free_memory", "set_mmap_threshold"]

log = logging.getLogger("cachetree")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter numbers."""
_DEFAULT_TRIM_THRESHOLD = 128 * 2**10
"""glibc's trim threshold when ``MALLOC_TRIM_THRESHOLD_`` does not set one."""


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        libc = None
    if libc is None or not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        log.debug("no glibc allocator here: it is left as it is")
        return None
    return libc


def _mallopt(parameter: int, value: int) -> bool:
    libc = _libc()
    return bool(libc is not None and libc.mallopt(parameter, int(value)))


def set_mmap_threshold(nbytes: int) -> bool:
    """Map allocations of at least ``nbytes`` on their own (glibc's
    ``mallopt(M_MMAP_THRESHOLD)``); fixing it also stops glibc from raising it as large
    blocks are freed. Returns False (and does nothing) without glibc."""
    return _mallopt(_M_MMAP_THRESHOLD, nbytes)


def release_free_memory() -> None:
    """Give the free pages of every heap back to the system (glibc's ``malloc_trim``).

    glibc keeps freed blocks below its mmap threshold (which grows up to 32 MiB as large
    arrays are freed) in the process, so without this the arrays a stage freed would still
    count in the resident memory of the stages after it.
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class _Keepers:
    """How many callers are inside :func:`keep_freed_memory` (threads of one process)."""

    lock = threading.Lock()
    count = 0


@contextlib.contextmanager
def keep_freed_memory(nbytes: int) -> Iterator[None]:
    """Inside, every heap keeps up to ``nbytes`` of freed memory for the next allocations
    instead of handing it back to the system at once (glibc's ``M_TRIM_THRESHOLD``).

    Memory handed back is handed out again as fresh pages, and the kernel zeroes every
    page on first touch. A loop that frees and allocates arrays of some MiB (accumulators,
    encoded chunks, normalised tiles) under a low trim threshold — dask's nanny starts
    workers with ``MALLOC_TRIM_THRESHOLD_=65536`` — pays that on every allocation. When the
    last caller inside leaves (calls may nest and overlap across threads), the threshold
    goes back to ``MALLOC_TRIM_THRESHOLD_`` (or glibc's default) and the free memory of
    every heap goes back to the system (:func:`release_free_memory`). Resident memory
    inside may exceed what is in use by up to ``nbytes`` per heap (one per thread that
    allocates, at most eight per core).
    """
    with _Keepers.lock:
        if not _Keepers.count:
            _mallopt(_M_TRIM_THRESHOLD, nbytes)
        _Keepers.count += 1
    try:
        yield
    finally:
        with _Keepers.lock:
            _Keepers.count -= 1
            if not _Keepers.count:
                _mallopt(_M_TRIM_THRESHOLD, _trim_threshold_at_start())
                release_free_memory()


def _trim_threshold_at_start() -> int:
    try:
        return int(os.environ.get("MALLOC_TRIM_THRESHOLD_", _DEFAULT_TRIM_THRESHOLD))
    except ValueError:
        return _DEFAULT_TRIM_THRESHOLD
