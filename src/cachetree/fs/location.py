"""Where bytes live: a small wrapper over an fsspec filesystem and a path inside it.

A :class:`Location` names a file or directory on local disk or on any fsspec filesystem
(``s3://``, ``gs://``, ``memory://``, ...). It offers the handful of operations the rest of
the library needs, with one rule: a file written through :meth:`Location.write_bytes`
appears under its final name complete or not at all (temp file + fsync + rename locally,
a single put on object stores).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import posixpath
import re
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, BinaryIO

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from ..errors import InvalidNameError, NodeNotFoundError, StorageError

__all__ = [
    "RESERVED_PREFIX",
    "TMP_MARK",
    "Location",
    "atomic_write_local",
    "cat_existing",
    "cat_whole",
    "fsync_path",
    "local_file_stats",
    "node_path",
    "split_node_path",
    "storage_error",
    "storage_errors",
    "temp_name",
    "validate_name",
]


TMP_MARK = ".tmp-"
"""Infix of temporary file names; anything carrying it is a leftover once its writer is gone."""

_FORBIDDEN = re.compile(r'[\\/:*?"<>|\x00-\x1f]')
RESERVED_PREFIX = ".cachetree"


def validate_name(name: str, *, what: str = "name") -> str:
    """Check one path segment (a node or item name) and return it.

    Parameters
    ----------
    name
        A single segment: no separators, not ``.`` or ``..``, no control characters.
    what
        Word used in the error message (``"node name"``, ``"item name"``...).

    Raises
    ------
    InvalidNameError
        If the segment could address anything outside its parent directory.
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"{what} must be a string, got {type(name).__name__}")
    if name in ("", ".", ".."):
        raise InvalidNameError(f"{what} {name!r} is not allowed: use a plain, non-empty name")
    if _FORBIDDEN.search(name):
        raise InvalidNameError(
            f"{what} {name!r} contains a separator or forbidden character "
            '(one of \\ / : * ? " < > | or a control character)'
        )
    if name.startswith(RESERVED_PREFIX):
        raise InvalidNameError(f"{what} {name!r} uses the reserved prefix {RESERVED_PREFIX!r}")
    if name != name.strip():
        raise InvalidNameError(f"{what} {name!r} has leading or trailing white space")
    return name


def node_path(path: str) -> str:
    """Check a relative node path that must name a node below the root (not the root itself).

    Raises
    ------
    InvalidNameError
        For an empty path, ``"."``, or anything :func:`split_node_path` rejects.
    """
    if not split_node_path(path):
        raise InvalidNameError(
            f"node path {path!r} names no node: give a name like 'step' or 'step/sub'"
        )
    return path


def split_node_path(path: str) -> list[str]:
    """Split a relative node path like ``"a/b/c"`` into validated segments.

    Raises
    ------
    InvalidNameError
        For absolute paths, ``..`` segments, empty segments or forbidden characters.
    """
    if not isinstance(path, str):
        raise InvalidNameError(f"node path must be a string, got {type(path).__name__}")
    if path.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", path):
        raise InvalidNameError(f"node path {path!r} is absolute: give a path relative to the root")
    if path in ("", "."):
        return []
    return [validate_name(part, what="node name") for part in path.split("/")]


class Location:
    """A path on an fsspec filesystem.

    Parameters
    ----------
    fs
        The filesystem.
    path
        Path inside ``fs`` (as returned by ``fsspec.core.url_to_fs``).
    """

    __slots__ = ("fs", "path")

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str):
        self.fs = fs
        self.path = path.rstrip("/") or "/"

    @classmethod
    def from_url(cls, url: str | os.PathLike[str] | Location, **storage_options: Any) -> Location:
        """Make a location from a local path or an fsspec URL."""
        if isinstance(url, Location):
            return url
        url = os.fspath(url)
        if "://" not in url and "::" not in url:
            url = os.path.abspath(os.path.expanduser(url))
        fs, path = fsspec.core.url_to_fs(url, **storage_options)
        return cls(fs, path)

    # -- naming -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The full URL (a plain path for local files)."""
        if self.is_local:
            return self.path
        return self.fs.unstrip_protocol(self.path)

    @property
    def name(self) -> str:
        """Last path segment."""
        return posixpath.basename(self.path)

    @property
    def is_local(self) -> bool:
        """True on the local filesystem, where renames are atomic."""
        return isinstance(self.fs, LocalFileSystem)

    def join(self, *parts: str) -> Location:
        """A location below this one; every segment is validated first."""
        segments: list[str] = []
        for part in parts:
            segments.extend(split_node_path(part))
        return Location(self.fs, posixpath.join(self.path, *segments))

    def raw_child(self, name: str) -> Location:
        """A child location whose name is trusted (e.g. the library's own reserved files)."""
        return Location(self.fs, posixpath.join(self.path, name))

    @property
    def parent(self) -> Location:
        """The directory containing this location."""
        return Location(self.fs, posixpath.dirname(self.path))

    def relative_to(self, other: Location) -> str:
        """This path relative to ``other`` (``""`` when equal)."""
        rel = posixpath.relpath(self.path, other.path)
        return "" if rel == "." else rel

    def __truediv__(self, name: str) -> Location:
        return self.join(name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and (self.fs, self.path) == (other.fs, other.path)

    def __hash__(self) -> int:
        return hash(self.path)

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def __fspath__(self) -> str:
        if not self.is_local:
            raise TypeError(f"{self.url} is not a local path")
        return self.path

    # -- queries ----------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether anything exists here."""
        return self.fs.exists(self.path)

    def isdir(self) -> bool:
        """Whether this is a directory."""
        return self.fs.isdir(self.path)

    def ls(self, detail: bool = False) -> list[Any]:
        """Entries directly below this directory (names, or fsspec info dicts).

        On remote filesystems the listing cache is dropped first, so files other processes
        wrote since are seen.
        """
        if not self.is_local:
            self.fs.invalidate_cache(self.path)
        try:
            entries = self.fs.ls(self.path, detail=True)
        except FileNotFoundError:
            return []
        entries = [e for e in entries if e["name"].rstrip("/") != self.path]
        if detail:
            return entries
        return [posixpath.basename(e["name"].rstrip("/")) for e in entries]

    def du(self) -> int:
        """Total bytes stored at or below this location (0 when missing)."""
        if self.is_local:
            return _local_du(self.path)
        try:
            if self.fs.isfile(self.path):
                return int(self.fs.size(self.path))
            return int(self.fs.du(self.path, total=True))
        except FileNotFoundError:
            return 0

    # -- reading ----------------------------------------------------------------------
    def read_bytes(self, *, large: bool = False) -> bytes:
        """The file's contents: one request on object stores (see :func:`cat_whole`).

        With ``large``, for files that may be big (arrays), the filesystem may read a file
        over its block size in concurrent ranges instead; s3fs then asks for the size
        first, one request more.
        """
        try:
            return self.fs.cat_file(self.path) if large else cat_whole(self.fs, self.path)
        except FileNotFoundError as exc:
            raise NodeNotFoundError(f"no file at {self.url}") from exc

    def read_text(self) -> str:
        """The file's contents decoded as UTF-8."""
        return self.read_bytes().decode("utf-8")

    def read_npy(self, *, mmap: bool = True) -> np.ndarray:
        """The array in this ``.npy`` file (never unpickled).

        On local disk it is memory-mapped read-only unless ``mmap`` is false; elsewhere the
        file is read whole. A missing file raises :class:`FileNotFoundError` (locally) or
        :class:`~cachetree.errors.NodeNotFoundError` (a subclass of it).
        """
        if self.is_local:
            return np.load(self.path, mmap_mode="r" if mmap else None, allow_pickle=False)
        return np.load(io.BytesIO(self.read_bytes(large=True)), allow_pickle=False)

    # -- writing ----------------------------------------------------------------------
    def makedirs(self) -> None:
        """Create this directory and its parents; on object stores, where folders exist only
        as key prefixes, the filesystem at most checks that the bucket exists (s3fs: a HEAD,
        creating the bucket when it is missing)."""
        with storage_errors(self):
            self.fs.makedirs(self.path, exist_ok=True)

    def write_bytes(self, data: bytes) -> None:
        """Write ``data`` so the file appears complete or not at all."""
        with storage_errors(self):
            if self.is_local:
                atomic_write_local(self.path, data)
            else:
                self.fs.pipe_file(self.path, data)

    def write_files(self, files: Mapping[str, bytes]) -> None:
        """Write several files under this directory (``files``: path relative to it, and
        contents), each appearing complete or not at all; on an object store, in one batch
        of concurrent puts."""
        with storage_errors(self):
            if self.is_local:
                for name, data in files.items():
                    atomic_write_local(posixpath.join(self.path, name), data)
            else:
                self.fs.pipe({posixpath.join(self.path, n): data for n, data in files.items()})

    def write_text(self, text: str) -> None:
        """Atomically write ``text`` as UTF-8."""
        self.write_bytes(text.encode("utf-8"))

    def zarr_store(self, *, read_only: bool = False) -> Any:
        """A zarr v3 store rooted here (``LocalStore`` on disk, ``FsspecStore`` elsewhere)."""
        from zarr.storage import FsspecStore, LocalStore

        if self.is_local:
            return LocalStore(self.path, read_only=read_only)
        return FsspecStore(self._async_fs(), path=self.path, read_only=read_only)

    def _async_fs(self) -> Any:
        """An asynchronous instance of this filesystem, as zarr's FsspecStore needs."""
        fs = self.fs
        if fs.async_impl and fs.asynchronous:
            return fs
        if fs.async_impl:  # same filesystem and options, asynchronous mode
            spec = json.loads(fs.to_json())
            spec["asynchronous"] = True
            return fsspec.AbstractFileSystem.from_json(json.dumps(spec))
        from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

        return AsyncFileSystemWrapper(fs, asynchronous=True)

    def remove_if_empty(self) -> None:
        """Delete this directory if nothing is in it (otherwise, or when missing, do nothing)."""
        if self.is_local:
            with contextlib.suppress(OSError):
                os.rmdir(self.path)
        elif not self.ls():
            with contextlib.suppress(OSError, NotImplementedError):
                self.fs.rmdir(self.path)

    def remove(self) -> None:
        """Delete this file or directory tree; missing is fine.

        A local directory is first renamed to a temporary name beside it, so the path is gone
        in one step: a process creating files in it meanwhile (a writer waiting for a clean
        claim) sees it missing and starts over rather than racing the recursive delete. On
        an object store, the keys at or under the path are listed once and deleted in
        batches (a recursive ``rm`` would also check twice whether a missing path exists).
        """
        with storage_errors(self), contextlib.suppress(FileNotFoundError):
            path = self.path
            if _keys_only(self.fs):
                keys = self.fs.find(path)
                if keys:
                    self.fs.rm(keys)
                return
            if not self.is_local:
                self.fs.rm(path, recursive=True)
            elif os.path.isdir(path) and not os.path.islink(path):
                doomed = temp_name(path)
                os.rename(path, doomed)
                shutil.rmtree(doomed)
            else:
                os.remove(path)


def local_file_stats(path: str) -> Iterator[os.stat_result]:
    """``os.stat`` of every file below a local directory (files that vanish meanwhile are
    left out): one call each, where fsspec's ``find``/``du`` also list every folder with
    the details of each entry, several times slower on a canvas of a thousand files."""
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                yield os.stat(os.path.join(folder, name))


def _local_du(path: str) -> int:
    """Bytes of the files at or below a local path (0 when missing)."""
    try:
        top = os.stat(path)
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(top.st_mode):
        return top.st_size
    return sum(s.st_size for s in local_file_stats(path))


def _keys_only(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` is an object store (s3fs, gcsfs, adlfs: fsspec's asynchronous
    filesystems), where a folder is only a prefix of keys and is gone with its keys."""
    return bool(getattr(fs, "async_impl", False))


def _one_request(fs: fsspec.AbstractFileSystem) -> dict[str, Any]:
    """Options that make ``fs.cat_file`` read a whole file in one request.

    s3fs first asks for the size of a file it reads whole (a HEAD, and on a missing key also
    a listing), to split files over its block size into concurrent range reads;
    ``max_concurrency=1`` skips that, so a read is one GET and a missing file one 404.
    """
    return {"max_concurrency": 1} if getattr(fs, "max_concurrency", 1) > 1 else {}


def cat_whole(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    """The file at ``path`` of ``fs``, in one request on object stores (no size probe);
    a missing file raises :class:`FileNotFoundError`. For small files: metadata, markers,
    shards."""
    return fs.cat_file(path, **_one_request(fs))


def cat_existing(fs: fsspec.AbstractFileSystem, paths: list[str]) -> dict[str, bytes]:
    """The files of ``paths`` that exist, by path (what is missing or not a file is left
    out): read one after the other on local disk, concurrently elsewhere, one request each
    on object stores (see :func:`cat_whole`)."""
    if not paths:
        return {}
    if isinstance(fs, LocalFileSystem):
        found = {}
        for path in paths:
            try:
                with open(path, "rb") as fh:
                    found[path] = fh.read()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                pass
        return found
    found = fs.cat(paths, on_error="omit", **_one_request(fs))
    return found if isinstance(found, dict) else {paths[0]: found}


def atomic_write_local(path: str, data: bytes | memoryview | Callable[[BinaryIO], None]) -> None:
    """Write to a temp file beside ``path``, fsync it, then rename it into place.

    ``data`` is the bytes to write, or a function that writes them to an open binary file.
    The temp file is removed if anything fails.
    """
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "xb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_path(directory)


def temp_name(path: str) -> str:
    """A unique temporary name in the same directory as ``path``."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}{TMP_MARK}{uuid.uuid4().hex[:12]}")


def fsync_path(path: str) -> None:
    """Flush a file, or a directory's entries so a rename inside it survives a power cut.

    POSIX only; errors (e.g. on filesystems that refuse it) are ignored.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def storage_error(loc: Location, exc: OSError) -> StorageError:
    """A :class:`~cachetree.errors.StorageError` naming ``loc`` and the cause of ``exc``."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM):
        return StorageError(f"permission denied writing {loc.url}: {exc}")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(f"no space left on the device holding {loc.url}: {exc}")
    if exc.errno == errno.EROFS:
        return StorageError(f"cannot write {loc.url}: the file system is read-only")
    return StorageError(f"could not write {loc.url}: {exc}")


@contextlib.contextmanager
def storage_errors(loc: Location) -> Iterator[None]:
    """Turn low-level OS errors into :class:`~cachetree.errors.StorageError` naming the location."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        raise storage_error(loc, exc) from exc
