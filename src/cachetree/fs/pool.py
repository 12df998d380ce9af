"""A bounded pool of background tasks that keeps the first failure."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Any

__all__ = ["BoundedPool"]

log = logging.getLogger(__name__)


class BoundedPool:
    """Threads running background tasks, at most ``limit`` of them queued or running at once.

    :meth:`submit` blocks while the pool is full, so memory held by queued tasks stays
    bounded. The first task failure is kept and re-raised, as the very same exception object,
    by every later :meth:`raise_error`.

    Parameters
    ----------
    workers
        Threads of the pool.
    name
        Prefix of the threads' names.
    limit
        Tasks that may be queued or running before :meth:`submit` blocks; ``2 * workers``
        by default.
    """

    def __init__(self, workers: int, name: str, *, limit: int | None = None):
        self._exec = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=name)
        self._limit = 2 * workers if limit is None else limit
        self._slots = threading.BoundedSemaphore(self._limit)
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._error_tb: TracebackType | None = None
        self._pending: set[concurrent.futures.Future[Any]] = set()

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args)`` in the background, waiting for a free slot first."""
        self._slots.acquire()
        try:
            future = self._exec.submit(fn, *args)
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._task_done)
        return future

    def _task_done(self, future: concurrent.futures.Future[Any]) -> None:
        # The failure is kept before the slot is freed, so that whoever waits for the slots
        # (wait_idle) finds it.
        exc = None if future.cancelled() else future.exception()
        if exc is not None:
            with self._lock:
                if self._error is None:
                    # Drop the finished frames' locals (they may hold large arrays) but keep
                    # the traceback printable.
                    traceback.clear_frames(exc.__traceback__)
                    self._error, self._error_tb = exc, exc.__traceback__
                    log.debug("background task failed: %r", exc)
        with self._lock:
            self._pending.discard(future)
        self._slots.release()

    def raise_error(self) -> None:
        """Re-raise the first failure of a background task, if any."""
        with self._lock:
            error, tb = self._error, self._error_tb
        if error is not None:
            raise error.with_traceback(tb)

    def wait_idle(self) -> None:
        """Wait until no task is queued or running (several threads may wait at once)."""
        while True:
            with self._lock:  # a task leaves the set once its failure, if any, is kept
                pending = list(self._pending)
            if not pending:
                return
            concurrent.futures.wait(pending)

    def shutdown(self) -> None:
        """Finish the queued tasks and stop the threads."""
        self._exec.shutdown(wait=True)
