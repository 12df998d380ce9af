"""The files of one image: encoded chunks gathered into shards and stored atomically.

A shard (zarr v3) is assembled in a temp file as its chunks arrive, in any order and from
any thread, and nothing is held in memory; when its last chunk is there the index is added
and the file goes into place in one step (a rename on local disk, one object put
elsewhere), so a shard is never read back and rewritten while it is being written. On
zarr v2 each chunk is its own file, stored the same way. :class:`ShardWriter` is the base
of :class:`cachetree.images.pyramid.ImageWriter`.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import posixpath
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import ShapeMismatchError
from ..fs.location import Location, cat_whole, temp_name
from .layout import LevelLayout

__all__ = ["ShardFile", "ShardWriter"]

ShardKey = tuple[int, tuple[int, ...]]
"""A shard: its level and its index in the level's shard grid."""


class ShardFile:
    """A shard being filled: chunks are appended to a temp file as they arrive, in any
    order, and nothing is held in memory; :meth:`close` ends it with the index.

    The temp file is ``spool``, beside the shard on local disk so it can be renamed into
    place. With ``spool=None`` (object stores) it is an anonymous temp file, which the
    operating system removes when the file is closed or the process dies, and
    :meth:`upload` stores it in one put. Not thread safe: the writer serialises calls.
    """

    def __init__(self, layout: LevelLayout, spool: str | None):
        self.layout = layout
        self.spool = spool
        self.slots: dict[tuple[int, ...], tuple[int, int] | None] = {}
        self._fh: Any = None
        self._size = 0

    def add(self, local: tuple[int, ...], data: bytes | None) -> None:
        """Add the encoded chunk at ``local`` (None: absent, it reads as the fill value)."""
        if data is None:
            self.slots.setdefault(local, None)
            return
        if self._fh is None:
            self._fh = self._open()
        self._fh.write(data)
        self.slots[local] = (self._size, len(data))
        self._size += len(data)

    def _open(self) -> Any:
        if self.spool is None:
            return tempfile.TemporaryFile()
        os.makedirs(os.path.dirname(self.spool) or ".", exist_ok=True)
        return open(self.spool, "wb")

    def complete(self, shard: Sequence[int]) -> bool:
        """Whether every chunk of ``shard`` inside the level was added."""
        return len(self.slots) >= self.layout.chunks_in(shard)

    def close(self) -> bool:
        """End the file with the index; False (and no file) when no chunk holds data.

        A named spool is closed here; an anonymous one stays open for :meth:`upload`.
        """
        if self._fh is None:
            return False
        self._fh.write(self.layout.index_tail(self.slots))
        if self.spool is not None:
            self._fh.close()
        return True

    def upload(self, fs: Any, path: str) -> None:
        """Store the closed anonymous spool at ``path`` of ``fs`` in one put."""
        with self._fh as fh:
            fh.seek(0)
            fs.pipe_file(path, fh.read())

    def discard(self) -> None:
        """Drop the temp file (after a failure, or when the shard is cleared)."""
        if self._fh is not None:
            self._fh.close()
        if self.spool is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.spool)


class ShardWriter:
    """Stores the chunks of every level of one image into their shards (thread safe).

    Attributes
    ----------
    location
        The image group.
    axes
        Axis names, ending with ``y, x``.
    levels
        Layout of every level, level 0 first.
    """

    def __init__(
        self,
        location: Location,
        *,
        axes: tuple[str, ...],
        levels: list[LevelLayout],
        existing: bool = False,
    ):
        self.location = location
        self.axes = axes
        self.levels = levels
        self._existing = existing  # shards may be on disk from an earlier run
        self._pending: dict[ShardKey, ShardFile] = {}
        self._stored: set[ShardKey] = set()
        self._lock = threading.Lock()
        self._made_dirs: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()  # tasks of a dask graph carry the writer: no buffers
        state.update(_pending={}, _stored=set(), _lock=None, _made_dirs=set())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- writing --------------------------------------------------------------------------
    def write_chunk(self, level: int, index: Sequence[int], data: np.ndarray | None) -> list[str]:
        """Encode one chunk (thread safe); store its shard once the shard is complete.

        Parameters
        ----------
        level
            Pyramid level (0 for data; higher levels are normally made by
            :meth:`~cachetree.images.pyramid.ImageWriter.build_levels` or a
            :class:`~cachetree.images.pyramid.PyramidAssembler`).
        index
            Chunk index, one entry per axis (``(c, ty, tx)`` for ``cyx``).
        data
            The chunk's valid region (edge chunks are padded here; leading axes of
            length 1 may be left out), or None for a chunk holding only the fill value.

        Returns
        -------
        list[str]
            Paths of the files stored by this call: the chunk's shard when this chunk
            completed it (on zarr v2, the chunk itself), else none.
        """
        layout = self.levels[level]
        if len(index) != len(self.axes):
            raise ShapeMismatchError(
                f"chunk index {tuple(index)} needs {len(self.axes)} entries for axes "
                f"{''.join(self.axes)!r}"
            )
        block = None if data is None else self._chunk_block(layout, index, data)
        encoded = None if block is None else layout.encode_chunk(block)
        shard, local = layout.locate(index)
        if not layout.sharded:  # zarr v2: the chunk is the file
            if encoded is None:
                return []
            path = self._path(layout, shard)
            self._put(path, encoded)
            return [path]
        key = (level, shard)
        with self._lock:
            entry = self._pending.get(key)
            if entry is None:
                entry = self._pending[key] = self._new_shard(key)
            entry.add(local, encoded)
            complete = entry.complete(shard)
            if complete:
                del self._pending[key]
        return self._store(key, entry) if complete else []

    def _chunk_block(self, layout: LevelLayout, index: Sequence[int], data: Any) -> np.ndarray:
        region = layout.chunk_region(index)
        extent = tuple(s.stop - s.start for s in region)
        block = np.asarray(data)
        if block.shape != extent:
            if math.prod(block.shape) != math.prod(extent) or block.shape[-2:] != extent[-2:]:
                raise ShapeMismatchError(
                    f"chunk {tuple(index)} of level {layout.path} is {extent}, got {block.shape}"
                )
            block = block.reshape(extent)
        return block

    def _may_exist(self, key: ShardKey) -> bool:
        """Whether a shard may be stored already (so a new chunk must join its others)."""
        return self.levels[key[0]].sharded and (self._existing or key in self._stored)

    def _new_shard(self, key: ShardKey, *, join: bool = True) -> ShardFile:
        """An empty shard file; with ``join``, holding the chunks already stored when there
        may be some."""
        level, shard = key
        layout = self.levels[level]
        path = self._path(layout, shard)
        entry = ShardFile(layout, temp_name(path) if self.location.is_local else None)
        raw = self._get(path) if join and self._may_exist(key) else None
        if raw is not None:
            for local, data in layout.unpack(raw).items():
                entry.add(local, data)
        return entry

    def write_shard(self, level: int, shard: Sequence[int], block: np.ndarray) -> list[str]:
        """Store one whole shard (zarr v2: chunk) from ``block``, its region of the level.

        A shard's region is :meth:`~cachetree.images.layout.LevelLayout.shard_region`;
        chunks are encoded here and the shard replaces whatever was stored. Returns the path
        stored (none when every chunk holds only the fill value).
        """
        layout = self.levels[level]
        block = np.asarray(block)
        region = layout.shard_region(shard) if layout.sharded else layout.chunk_region(shard)

        def chunk_of(chunk: tuple[int, ...]) -> np.ndarray:
            return block[
                tuple(
                    slice(r.start - o.start, r.stop - o.start)
                    for r, o in zip(layout.chunk_region(chunk), region, strict=True)
                )
            ]

        return self.write_shard_chunks(level, shard, chunk_of)

    def write_shard_chunks(
        self,
        level: int,
        shard: Sequence[int],
        chunk_of: Callable[[tuple[int, ...]], np.ndarray | None],
    ) -> list[str]:
        """Store one whole shard (zarr v2: chunk) from its chunks, replacing what was stored.

        ``chunk_of(index)`` gives the valid region of the chunk at ``index`` of the level
        (leading axes of length 1 may be left out), or None for a chunk holding only the
        fill value; it is called once per chunk of the shard, so no array the size of the
        shard is made. Returns the path stored (none when every chunk is None).
        """
        layout = self.levels[level]
        if not layout.sharded:
            data = chunk_of(tuple(int(i) for i in shard))
            if data is not None:
                return self.write_chunk(level, shard, data)
            self._remove(self._path(layout, shard))
            return []
        key = (level, tuple(int(i) for i in shard))
        per = layout.per_shard
        with self._lock:
            stale = self._pending.pop(key, None)
        if stale is not None:
            stale.discard()
        entry = self._new_shard(key, join=False)  # replaced whole: nothing stored joins it
        try:
            for local in np.ndindex(*per):
                chunk = tuple(s * p + i for s, p, i in zip(shard, per, local, strict=True))
                if any(c >= g for c, g in zip(chunk, layout.grid, strict=True)):
                    continue
                data = chunk_of(chunk)
                block = None if data is None else self._chunk_block(layout, chunk, data)
                entry.add(local, None if block is None else layout.encode_chunk(block))
        except BaseException:
            entry.discard()
            raise
        return self._store(key, entry)

    def _store(self, key: ShardKey, entry: ShardFile) -> list[str]:
        """Finish a shard file and put it in place (one rename, or one object put)."""
        level, shard = key
        path = self._path(self.levels[level], shard)
        may_exist = self._may_exist(key)
        with self._lock:
            self._stored.add(key)
        try:
            if not entry.close():
                if may_exist:
                    self._remove(path)
                return []
            if entry.spool is not None:
                os.replace(entry.spool, path)
            else:
                entry.upload(self.location.fs, path)
        except BaseException:
            entry.discard()
            raise
        return [path]

    def flush(self) -> list[str]:
        """Store every shard still waiting for chunks (missing ones read as the fill value)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        return [path for key, entry in pending.items() for path in self._store(key, entry)]

    # -- reading --------------------------------------------------------------------------
    def read_encoded(self, level: int, index: Sequence[int]) -> bytes | None:
        """The stored bytes of chunk ``index`` of ``level``, encoded; None when it holds only
        the fill value or its shard is not stored yet.

        Only what is needed is read: on zarr v3 the shard's index, then the chunk's range.
        """
        layout = self.levels[level]
        shard, local = layout.locate(index)
        path = self._path(layout, shard)
        if not layout.sharded:
            return self._get(path)
        tail = self._get_range(path, -layout.index_size, None)
        slot = None if tail is None else layout.chunk_slot(tail, local)
        if slot is None:
            return None
        offset, length = slot
        return self._get_range(path, offset, offset + length)

    def read_region(self, level: int, region: Sequence[slice]) -> np.ndarray:
        """The pixels of ``region`` (one slice with start and stop per axis) of ``level``,
        the fill value where nothing is stored.

        Each shard the region touches is read whole, in one read (one request on an object
        store, where reading chunk by chunk costs the index and every chunk a request), and
        only its chunks inside the region are decoded.
        """
        layout = self.levels[level]
        out = np.full([r.stop - r.start for r in region], self.fill_value, self.dtype)
        spans = [
            range(r.start // s, -(-r.stop // s)) for r, s in zip(region, layout.shards, strict=True)
        ]
        for shard in itertools.product(*spans):
            data = self._get(self._path(layout, shard))
            for local, encoded in ({} if data is None else layout.unpack(data)).items():
                chunk = [s * p + i for s, p, i in zip(shard, layout.per_shard, local, strict=True)]
                if encoded is None or any(c >= g for c, g in zip(chunk, layout.grid, strict=True)):
                    continue
                box = layout.chunk_region(chunk)
                inside = [
                    slice(max(b.start, r.start), min(b.stop, r.stop))
                    for b, r in zip(box, region, strict=True)
                ]
                if any(i.start >= i.stop for i in inside):
                    continue
                block = layout.decode_chunk(encoded)
                out[_within(inside, region)] = block[_within(inside, box)]
        return out

    def _path(self, layout: LevelLayout, shard: Sequence[int]) -> str:
        return posixpath.join(self.location.path, layout.key(shard))

    def _put(self, path: str, data: bytes) -> None:
        """Store a chunk (zarr v2) as one object put, or locally as a temp file renamed into
        place."""
        if not self.location.is_local:
            self.location.fs.pipe_file(path, data)
            return
        directory = os.path.dirname(path)
        if directory not in self._made_dirs:
            os.makedirs(directory, exist_ok=True)
            self._made_dirs.add(directory)
        tmp = temp_name(path)
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def _get(self, path: str) -> bytes | None:
        try:
            if self.location.is_local:
                with open(path, "rb") as fh:
                    return fh.read()
            return cat_whole(self.location.fs, path)
        except FileNotFoundError:
            return None

    def _get_range(self, path: str, start: int, end: int | None) -> bytes | None:
        """Bytes ``start:end`` of a stored file (a negative ``start`` counts from its end,
        ``end=None`` reads to the end); None when the file is missing."""
        try:
            if self.location.is_local:
                with open(path, "rb") as fh:
                    fh.seek(start, os.SEEK_END if start < 0 else os.SEEK_SET)
                    return fh.read(-1 if end is None else end - fh.tell())
            return self.location.fs.cat_file(path, start=start, end=end)
        except FileNotFoundError:
            return None

    def _remove(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.location.fs.rm_file(path)

    def clear_rows(self, level: int, first_row: int) -> None:
        """Remove the stored shards of chunk rows ``first_row`` and below (they read as fill).

        Shards are one chunk row high, so this removes whole shard rows.
        """
        layout = self.levels[level]
        lead = layout.shard_grid[:-2]
        for index in np.ndindex(*lead):
            for row in range(first_row, layout.shard_grid[-2]):
                prefix = layout.key((*index, row, 0)).rsplit("/", 1)[0]
                Location(self.location.fs, posixpath.join(self.location.path, prefix)).remove()
        with self._lock:
            cleared = [k for k in self._pending if k[0] == level and k[1][-2] >= first_row]
            entries = [self._pending.pop(k) for k in cleared]
        for entry in entries:
            entry.discard()


def _within(part: Sequence[slice], whole: Sequence[slice]) -> tuple[slice, ...]:
    """``part`` as slices of an array holding ``whole`` (``part`` lies inside it)."""
    return tuple(
        slice(p.start - w.start, p.stop - w.start) for p, w in zip(part, whole, strict=True)
    )
