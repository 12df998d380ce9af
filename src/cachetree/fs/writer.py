"""Asynchronous, atomic writing of arrays, mappings of arrays and sequences of arrays.

:class:`AsyncWriter` turns ``writer.write("runs/sample_0001", array)`` into a file
``<root>/runs/sample_0001.npy`` (or ``.npz``, ``.zarr``, ``.pt``) written on a thread pool.
Three promises hold for every file it writes:

* **Atomic.** On local disk the bytes go to a temporary name in the same directory
  (it contains :data:`~cachetree.fs.location.TMP_MARK`), are flushed and ``fsync``-ed, and the
  file is then renamed over its final name; the directory entry is ``fsync``-ed too. A reader,
  or a process killed at any instant, sees the complete new file, the previous file, or
  nothing — never a partial one. Zarr outputs are directories: the whole store is written under
  a temporary name and the directory is renamed into place. On object stores (any non-local
  fsspec URL) npy/npz/pt files are serialised in memory and sent with one put.
* **Bounded.** At most ``max_inflight`` files wait or are being written in the background;
  a further :meth:`AsyncWriter.write` blocks until one completes (backpressure), so a fast
  producer cannot fill memory with pending outputs.
* **Errors are not lost.** The first background failure is kept and raised again, as the
  very same exception object, by the next :meth:`~AsyncWriter.write`,
  :meth:`~AsyncWriter.flush` or :meth:`~AsyncWriter.close`; after it, the writer refuses new
  writes with that exception. File-system failures arrive as
  :class:`~cachetree.errors.StorageError` whose ``__cause__`` is the original ``OSError``.

Items whose arrays total fewer than ``small_sync_bytes`` bytes skip the pool and are written
on the calling thread (a thread hand-off costs more than writing a tiny file).

How a value becomes files (formats, layouts, atomic writes) is :mod:`cachetree.fs.payloads`;
the pool is a :class:`~cachetree.fs.pool.BoundedPool`.

Arrays are **not copied** before a background write: do not modify an array passed to
:meth:`AsyncWriter.write` until :meth:`AsyncWriter.flush` returns (pass ``arr.copy()`` if
you must reuse the buffer). Torch tensors on a GPU are copied to host memory by ``write``
itself, on the calling thread.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from pathlib import PurePath
from types import TracebackType
from typing import Any

from ..errors import FinalizedError, InvalidDataError, InvalidNameError
from .location import Location, split_node_path
from .payloads import Container, DictMode, Leaf, OutputFile, OutputFormat, SaveFormat
from .pool import BoundedPool

__all__ = ["AsyncWriter", "DictMode", "SaveFormat"]

log = logging.getLogger(__name__)


class AsyncWriter:
    """Write arrays (or mappings / sequences of arrays) atomically on a thread pool.

    Parameters
    ----------
    out_root
        Directory (local path, fsspec URL such as ``s3://bucket/out`` or ``memory://x``, or a
        :class:`~cachetree.fs.location.Location`) that every relative path is joined to.
    save_format
        A :class:`SaveFormat` or its value (``"npy"``, ``"npz"``, ``"zarr"``, ``"pt"``).
        ``"pt"`` needs PyTorch installed.
    dict_mode
        A :class:`DictMode` or its value: how mappings and sequences are laid out.
    workers
        Threads of the background pool.
    max_inflight
        Background writes (one per output file) that may be queued or running before
        :meth:`write` blocks.
    small_sync_bytes
        Items whose arrays hold fewer bytes than this in total are written on the calling
        thread before :meth:`write` returns. ``0`` sends everything to the pool.
    upload_queue
        If given, the final path of every completed file (a local path, or the URL for
        remote roots) is put on it, once, right after the file is in place. A bounded full
        queue makes the writing thread wait, which propagates backpressure.

    Examples
    --------
    >>> with AsyncWriter("out", save_format="npz") as writer:  # doctest: +SKIP
    ...     writer.write("preds/scene_42", {"flow": flow, "pressure": p})  # out/preds/scene_42.npz
    """

    def __init__(
        self,
        out_root: str | os.PathLike[str] | Location,
        save_format: SaveFormat | str = SaveFormat.NUMPY_NPY,
        dict_mode: DictMode | str = DictMode.SINGLE,
        workers: int = 4,
        max_inflight: int = 256,
        small_sync_bytes: int = 64_000,
        upload_queue: queue.Queue[str] | None = None,
    ):
        self.format = OutputFormat(save_format, dict_mode)
        self.save_format: SaveFormat = self.format.save_format
        self.dict_mode: DictMode = self.format.dict_mode
        for what, value, minimum in (
            ("workers", workers, 1),
            ("max_inflight", max_inflight, 1),
            ("small_sync_bytes", small_sync_bytes, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise InvalidDataError(f"{what} must be an integer >= {minimum}, got {value!r}")
        self.root = Location.from_url(out_root)
        self.max_inflight = max_inflight
        self.small_sync_bytes = small_sync_bytes
        self.upload_queue = upload_queue
        self.written: list[str] = []
        self.pool = BoundedPool(workers, "cachetree-writer", limit=max_inflight)
        self._lock = threading.Lock()
        self._closed = False

    # -- public API -------------------------------------------------------------------------
    def write(self, relative_path_no_ext: str, to_save: Any) -> None:
        """Schedule ``to_save`` to be written under ``relative_path_no_ext`` plus the extension.

        Parameters
        ----------
        relative_path_no_ext
            Path relative to the root, ``/``-separated, without extension
            (``"runs/sample_0001"`` → ``<root>/runs/sample_0001.npy``).
        to_save
            A numpy array (or anything with ``__array__``; a torch tensor), a mapping of
            ``str`` keys to arrays, or a list/tuple of arrays. A sequence behaves like a mapping
            with keys ``"0"``, ``"1"``, ... (inside a single ``.npz`` the names are
            ``arr_0``, ``arr_1``, ... as ``np.savez`` would give; a single ``.pt`` holds a list).

        Raises
        ------
        InvalidDataError
            Unsupported type, object dtype, empty container, or a mapping with
            ``save_format='npy'`` and ``dict_mode='single'``.
        InvalidNameError
            Absolute path, ``..``, empty segment or forbidden character in the path or a key.
        FinalizedError
            The writer was closed.
        BaseException
            The first error of an earlier background write (the same exception object), or
            the error of this write when it runs synchronously.
        """
        self._check_usable()
        files = self._plan(relative_path_no_ext, to_save)
        if sum(file.nbytes for file in files) < self.small_sync_bytes:
            for file in files:
                self._run(file)
            return
        for file in files:
            self._check_usable()
            self.pool.submit(self._run, file)  # blocks while max_inflight writes are pending

    def flush(self) -> None:
        """Wait until every write scheduled so far is on storage; re-raise the first failure."""
        self.pool.wait_idle()
        self.pool.raise_error()

    def close(self) -> None:
        """Flush, then shut the pool down. Raises the first background failure, if any.

        Idempotent: a second call does nothing (and does not raise again).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self.flush()
        finally:
            self.pool.shutdown()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> AsyncWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        # The body failed: still wait for and close everything, but let the body's exception
        # propagate; a writer failure is attached to it as a note instead of replacing it.
        try:
            self.close()
        except BaseException as close_exc:
            if close_exc is not exc:
                exc.add_note(f"AsyncWriter({self.root.url}) also failed: {close_exc!r}")
                log.error("AsyncWriter(%s) failed while closing: %r", self.root.url, close_exc)

    def __repr__(self) -> str:
        return (
            f"AsyncWriter({self.root.url!r}, save_format={self.save_format.value!r}, "
            f"dict_mode={self.dict_mode.value!r}, written={len(self.written)}, "
            f"closed={self._closed})"
        )

    # -- hook for subclasses ----------------------------------------------------------------
    def _write_one(self, target: Location, payload: Leaf | Container) -> None:
        """Write one output file (or zarr directory) atomically at ``target``.

        Runs on a pool thread, or on the caller's thread for small items. Subclasses may
        override it (e.g. to add instrumentation) and call ``super()._write_one``.
        """
        self.format.write(target, payload)

    # -- planning and running ---------------------------------------------------------------
    def _plan(self, relative_path_no_ext: str, to_save: Any) -> list[OutputFile]:
        if isinstance(relative_path_no_ext, PurePath):
            relative_path_no_ext = relative_path_no_ext.as_posix()
        if not split_node_path(relative_path_no_ext):
            raise InvalidNameError(
                f"relative path {relative_path_no_ext!r} is empty: name the output file"
            )
        return self.format.plan(self.root.join(relative_path_no_ext), to_save)

    def _run(self, file: OutputFile) -> None:
        self._write_one(file.target, file.payload)
        url = file.target.url
        with self._lock:
            self.written.append(url)
        if self.upload_queue is not None:
            self.upload_queue.put(url)

    def _check_usable(self) -> None:
        with self._lock:
            if self._closed:
                raise FinalizedError(
                    f"AsyncWriter({self.root.url}) is closed and accepts no more writes: "
                    "create a new writer"
                )
        self.pool.raise_error()
