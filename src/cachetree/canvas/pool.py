"""A bounded pool of background tasks that keeps the first failure."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["BoundedPool"]


class BoundedPool:
    """Threads running background tasks, at most ``2 * workers`` queued or running at once.

    :meth:`submit` blocks while the pool is full, so memory held by queued tasks stays
    bounded. The first task failure is kept and re-raised by :meth:`raise_error`.
    """

    def __init__(self, workers: int, name: str):
        self._exec = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=name)
        self._limit = 2 * workers
        self._slots = threading.BoundedSemaphore(self._limit)
        self._lock = threading.Lock()
        self._error: BaseException | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args)`` in the background, waiting for a free slot first."""
        self._slots.acquire()
        try:
            future = self._exec.submit(fn, *args)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(self._task_done)
        return future

    def _task_done(self, future: concurrent.futures.Future[Any]) -> None:
        self._slots.release()
        exc = future.exception()
        if exc is not None:
            with self._lock:
                if self._error is None:
                    self._error = exc

    def raise_error(self) -> None:
        """Re-raise the first failure of a background task, if any."""
        with self._lock:
            error = self._error
        if error is not None:
            raise error

    def wait_idle(self) -> None:
        """Wait until no task is queued or running."""
        taken = 0
        try:
            for _ in range(self._limit):
                self._slots.acquire()
                taken += 1
        finally:
            for _ in range(taken):
                self._slots.release()

    def shutdown(self) -> None:
        """Finish the queued tasks and stop the threads."""
        self._exec.shutdown(wait=True)
