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

Arrays are **not copied** before a background write: do not modify an array passed to
:meth:`AsyncWriter.write` until :meth:`AsyncWriter.flush` returns (pass ``arr.copy()`` if
you must reuse the buffer). Torch tensors on a GPU are copied to host memory by ``write``
itself, on the calling thread.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import io
import logging
import os
import queue
import shutil
import sys
import threading
import traceback
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePath
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np

from ..errors import FinalizedError, InvalidDataError, InvalidNameError
from .location import (
    Location,
    atomic_write_local,
    fsync_path,
    split_node_path,
    storage_errors,
    temp_name,
    validate_name,
)

__all__ = ["AsyncWriter", "DictMode", "SaveFormat"]

log = logging.getLogger(__name__)


class SaveFormat(StrEnum):
    """File format of the written outputs; the value is the file extension."""

    NUMPY_NPY = "npy"
    """One ``.npy`` file per array (mappings need ``DictMode.SPLIT``)."""
    NUMPY_NPZ = "npz"
    """An uncompressed ``.npz`` archive; a mapping's keys become the archive's names."""
    ZARR = "zarr"
    """A Zarr v3 array directory, or a group holding one array per key for mappings."""
    PYTORCH_PT = "pt"
    """A ``torch.save`` file (needs PyTorch)."""


class DictMode(StrEnum):
    """How mappings and sequences of arrays are laid out."""

    SINGLE = "single"
    """One output holding every key (``name.npz``, ``name.zarr`` group, ``name.pt`` dict)."""
    SPLIT = "split"
    """One output per key, named ``{name}_{key}.{ext}`` (sequences: ``{name}_{index}``)."""


# A leaf is a numpy array, or a CPU torch tensor when the format is PYTORCH_PT.
Leaf = Any


@dataclass(frozen=True, slots=True)
class _Container:
    """Several named arrays destined for one file (npz / zarr group / pt)."""

    items: tuple[tuple[str, Leaf], ...]
    is_sequence: bool


@dataclass(frozen=True, slots=True)
class _Job:
    target: Location
    payload: Leaf | _Container
    nbytes: int


def _loaded_torch() -> Any:
    """The torch module if something already imported it (a tensor cannot exist otherwise)."""
    return sys.modules.get("torch")


def _is_tensor(obj: Any) -> bool:
    torch = _loaded_torch()
    return torch is not None and isinstance(obj, torch.Tensor)


def _is_arraylike(obj: Any) -> bool:
    return isinstance(obj, np.ndarray) or _is_tensor(obj) or hasattr(type(obj), "__array__")


def _leaf_nbytes(leaf: Leaf) -> int:
    if isinstance(leaf, np.ndarray):
        return int(leaf.nbytes)
    return int(leaf.nelement() * leaf.element_size())  # torch tensor


def _describe(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}".removeprefix("builtins.")


def _parse_enum(enum_cls: type[StrEnum], value: Any, what: str) -> Any:
    if isinstance(value, enum_cls):
        return value
    if isinstance(value, str):
        text = value.strip().lower().lstrip(".")
        for member in enum_cls:
            if text in (member.value, member.name.lower()):
                return member
    choices = ", ".join(repr(m.value) for m in enum_cls)
    raise InvalidDataError(f"unknown {what} {value!r}: choose one of {choices}")


def _write_npz(fh: BinaryIO, items: Sequence[tuple[str, np.ndarray]]) -> None:
    """Write an uncompressed ``.npz`` archive into an open binary file, without pickle.

    This is what ``np.savez`` does internally, but it accepts every key (``np.savez`` cannot
    take a key named ``file`` or ``allow_pickle``) and never pickles.
    """
    with zipfile.ZipFile(fh, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, arr in items:
            with zf.open(f"{key}.npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)


def _fsync_tree(top: str) -> None:
    """fsync every file and directory below ``top``, so that renaming ``top`` is durable."""
    for dirpath, _dirnames, filenames in os.walk(top, topdown=False):
        for filename in filenames:
            fd = os.open(os.path.join(dirpath, filename), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_path(dirpath)


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
        self.save_format: SaveFormat = _parse_enum(SaveFormat, save_format, "save_format")
        self.dict_mode: DictMode = _parse_enum(DictMode, dict_mode, "dict_mode")
        for what, value, minimum in (
            ("workers", workers, 1),
            ("max_inflight", max_inflight, 1),
            ("small_sync_bytes", small_sync_bytes, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise InvalidDataError(f"{what} must be an integer >= {minimum}, got {value!r}")
        self._torch: Any = None
        if self.save_format is SaveFormat.PYTORCH_PT:
            try:
                import torch
            except ImportError as exc:
                raise InvalidDataError(
                    "save_format='pt' needs PyTorch, which is not installed: install torch, "
                    "or choose save_format='npy', 'npz' or 'zarr'"
                ) from exc
            self._torch = torch
        self.root = Location.from_url(out_root)
        self.max_inflight = max_inflight
        self.small_sync_bytes = small_sync_bytes
        self.upload_queue = upload_queue
        self.written: list[str] = []
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="cachetree-writer"
        )
        self._slots = threading.BoundedSemaphore(max_inflight)
        self._lock = threading.Lock()
        self._pending: set[concurrent.futures.Future[None]] = set()
        self._error: BaseException | None = None
        self._error_tb: TracebackType | None = None
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
        jobs = self._plan(relative_path_no_ext, to_save)
        if sum(job.nbytes for job in jobs) < self.small_sync_bytes:
            for job in jobs:
                self._run(job)
            return
        for job in jobs:
            self._slots.acquire()  # backpressure: blocks while max_inflight writes are pending
            try:
                with self._lock:
                    self._check_usable_locked()
                    future = self.pool.submit(self._run_in_background, job)
                    self._pending.add(future)
            except BaseException:
                self._slots.release()
                raise
            future.add_done_callback(self._on_done)

    def flush(self) -> None:
        """Wait until every write scheduled so far is on storage; re-raise the first failure."""
        while True:
            with self._lock:
                pending = [f for f in self._pending if not f.done()]
            if not pending:
                break
            concurrent.futures.wait(pending)
        self._raise_stored_error()

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
            self.pool.shutdown(wait=True)

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
    def _write_one(self, target: Location, payload: Leaf | _Container) -> None:
        """Write one output file (or zarr directory) atomically at ``target``.

        Runs on a pool thread, or on the caller's thread for small items. Subclasses may
        override it (e.g. to add instrumentation) and call ``super()._write_one``.
        """
        if self.save_format is SaveFormat.ZARR:
            self._write_zarr(target, payload)
            return

        def serialise(fh: BinaryIO) -> None:
            self._serialise(fh, payload)

        if target.is_local:
            self._write_local_atomic(target, serialise)
        else:
            buffer = io.BytesIO()
            serialise(buffer)
            target.write_bytes(buffer.getvalue())

    # -- planning (caller's thread) ---------------------------------------------------------
    def _plan(self, relative_path_no_ext: str, to_save: Any) -> list[_Job]:
        if isinstance(relative_path_no_ext, PurePath):
            relative_path_no_ext = relative_path_no_ext.as_posix()
        if not split_node_path(relative_path_no_ext):
            raise InvalidNameError(
                f"relative path {relative_path_no_ext!r} is empty: name the output file"
            )
        base = self.root.join(relative_path_no_ext)
        ext = "." + self.save_format.value

        def at(suffix: str) -> Location:
            return Location(base.fs, base.path + suffix)

        if _is_arraylike(to_save):
            leaf = self._as_leaf(to_save, "to_save")
            return [_Job(at(ext), leaf, _leaf_nbytes(leaf))]

        if isinstance(to_save, Mapping):
            if not to_save:
                raise InvalidDataError("to_save is an empty mapping: there is nothing to write")
            items = []
            for key, value in to_save.items():
                if not isinstance(key, str):
                    raise InvalidDataError(
                        f"mapping keys must be str, got {_describe(key)} {key!r}; "
                        "convert the keys with str() first"
                    )
                validate_name(key, what="mapping key")
                items.append((key, self._as_leaf(value, f"to_save[{key!r}]")))
            is_sequence = False
        elif isinstance(to_save, Sequence) and not isinstance(to_save, str | bytes | bytearray):
            if not to_save:
                raise InvalidDataError("to_save is an empty sequence: there is nothing to write")
            items = [
                (str(i), self._as_leaf(value, f"to_save[{i}]")) for i, value in enumerate(to_save)
            ]
            is_sequence = True
        else:
            raise InvalidDataError(
                f"cannot write a {_describe(to_save)}: give an array (numpy, torch or anything "
                "with __array__), a mapping of str to arrays, or a list/tuple of arrays"
            )

        if self.dict_mode is DictMode.SPLIT:
            return [_Job(at(f"_{key}{ext}"), leaf, _leaf_nbytes(leaf)) for key, leaf in items]
        if self.save_format is SaveFormat.NUMPY_NPY:
            kind = "sequence" if is_sequence else "mapping"
            raise InvalidDataError(
                f"a {kind} of arrays cannot be stored in one .npy file: use "
                "dict_mode='split' (one .npy per key) or save_format='npz' or 'zarr'"
            )
        if is_sequence and self.save_format is SaveFormat.NUMPY_NPZ:
            items = [(f"arr_{key}", leaf) for key, leaf in items]
        container = _Container(tuple(items), is_sequence)
        return [_Job(at(ext), container, sum(_leaf_nbytes(leaf) for _, leaf in items))]

    def _as_leaf(self, obj: Any, where: str) -> Leaf:
        """Turn one array-like into what the format serialises; validate it."""
        torch = self._torch
        if _is_tensor(obj):
            tensor = obj.detach()
            if tensor.device.type != "cpu":
                tensor = tensor.cpu()
            if torch is not None:  # pt format: keep the tensor (bfloat16 etc. survive)
                if tensor.layout == torch.strided and (
                    tensor.untyped_storage().nbytes() > tensor.nelement() * tensor.element_size()
                ):
                    tensor = tensor.clone()  # a view: torch.save would store the whole base
                return tensor
            try:
                arr = tensor.resolve_conj().resolve_neg().numpy()
            except (TypeError, RuntimeError) as exc:
                raise InvalidDataError(
                    f"{where}: torch tensor of dtype {tensor.dtype} has no numpy equivalent "
                    f"({exc}); cast it (e.g. .float()) or use save_format='pt'"
                ) from exc
        elif isinstance(obj, np.ndarray):
            arr = obj
        elif _is_arraylike(obj):
            arr = np.asarray(obj)
        else:
            scalar = isinstance(obj, int | float | complex)
            hint = " (wrap a scalar with np.asarray)" if scalar else ""
            raise InvalidDataError(
                f"{where} is a {_describe(obj)}, not an array: expected a numpy array, a "
                f"torch tensor or anything with __array__{hint}"
            )
        if arr.dtype.hasobject:
            raise InvalidDataError(
                f"{where} has dtype {arr.dtype}, which holds Python objects and cannot be "
                "saved without pickle: convert it to a numeric, bool or fixed-width string dtype"
            )
        if torch is not None:
            if not arr.dtype.isnative:
                arr = arr.astype(arr.dtype.newbyteorder("="))
            if not arr.flags.writeable:
                arr = arr.copy()  # torch.from_numpy warns on read-only buffers
            try:
                return torch.from_numpy(arr)
            except TypeError as exc:
                raise InvalidDataError(
                    f"{where}: dtype {arr.dtype} cannot become a torch tensor ({exc}); "
                    "choose save_format='npy', 'npz' or 'zarr'"
                ) from exc
        return arr

    # -- running ----------------------------------------------------------------------------
    def _run(self, job: _Job) -> None:
        self._write_one(job.target, job.payload)
        url = job.target.url
        with self._lock:
            self.written.append(url)
        if self.upload_queue is not None:
            self.upload_queue.put(url)

    def _run_in_background(self, job: _Job) -> None:
        try:
            self._run(job)
        except BaseException as exc:
            with self._lock:
                if self._error is None:
                    # Drop the finished frames' locals (they hold the payload arrays) but keep
                    # the traceback printable.
                    traceback.clear_frames(exc.__traceback__)
                    self._error, self._error_tb = exc, exc.__traceback__
                    log.debug("background write of %s failed: %r", job.target.url, exc)

    def _on_done(self, future: concurrent.futures.Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)
        self._slots.release()

    def _check_usable(self) -> None:
        with self._lock:
            self._check_usable_locked()

    def _check_usable_locked(self) -> None:
        if self._closed:
            raise FinalizedError(
                f"AsyncWriter({self.root.url}) is closed and accepts no more writes: "
                "create a new writer"
            )
        if self._error is not None:
            raise self._error.with_traceback(self._error_tb)

    def _raise_stored_error(self) -> None:
        with self._lock:
            error, tb = self._error, self._error_tb
        if error is not None:
            raise error.with_traceback(tb)

    # -- serialisation ----------------------------------------------------------------------
    def _serialise(self, fh: BinaryIO, payload: Leaf | _Container) -> None:
        fmt = self.save_format
        if fmt is SaveFormat.NUMPY_NPY:
            np.save(fh, payload, allow_pickle=False)  # header + buffer, no extra copy
        elif fmt is SaveFormat.NUMPY_NPZ:
            items = payload.items if isinstance(payload, _Container) else (("arr_0", payload),)
            _write_npz(fh, items)
        elif fmt is SaveFormat.PYTORCH_PT:
            obj: Any = payload
            if isinstance(payload, _Container):
                leaves = payload.items
                obj = [v for _, v in leaves] if payload.is_sequence else dict(leaves)
            self._torch.save(obj, fh)
        else:  # pragma: no cover - zarr never reaches here
            raise AssertionError(fmt)

    @staticmethod
    def _write_local_atomic(target: Location, serialise: Callable[[BinaryIO], None]) -> None:
        """Serialise into a temp file beside ``target``, fsync, rename over it, fsync the dir."""
        with storage_errors(target):
            atomic_write_local(target.path, serialise)

    @staticmethod
    def _fill_zarr(store: Any, payload: Leaf | _Container) -> None:
        import zarr

        if isinstance(payload, _Container):
            group = zarr.create_group(store, overwrite=True)
            for key, arr in payload.items:
                group.create_array(key, data=arr)
        else:
            zarr.create_array(store, data=payload, overwrite=True)

    def _write_zarr(self, target: Location, payload: Leaf | _Container) -> None:
        if not target.is_local:
            # Object stores have no directory rename: write in place (chunks, then metadata
            # objects are each a single put, but the store as a whole is not atomic).
            with storage_errors(target):
                self._fill_zarr(target.zarr_store(), payload)
            return
        from zarr.storage import LocalStore

        final = target.path
        parent = os.path.dirname(final)
        with storage_errors(target):
            os.makedirs(parent, exist_ok=True)
            if os.path.lexists(final) and not os.path.isdir(final):
                raise FileExistsError(
                    errno.EEXIST,
                    "exists and is not a directory, cannot replace it by a zarr",
                    final,
                )
            tmp = temp_name(final)
            old: str | None = None
            try:
                self._fill_zarr(LocalStore(tmp), payload)
                _fsync_tree(tmp)
                try:
                    os.rename(tmp, final)  # works when final is missing (or an empty dir)
                except OSError as exc:
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                    # Replace an existing store: move it aside, move the new one in, drop the
                    # old one. Readers may briefly find nothing, never a partial store.
                    old = temp_name(final)
                    os.rename(final, old)
                    os.rename(tmp, final)
            except BaseException:
                if old is not None and not os.path.lexists(final):
                    with contextlib.suppress(OSError):
                        os.rename(old, final)
                    old = None
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            fsync_path(parent)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
