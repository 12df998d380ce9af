"""Spill parts: tile accumulators written to storage, read back, decoded, removed.

A spill part holds some tiles' accumulators over the box each tile was touched in::

    <ty>_<tx>/weight.npy          weight sum, (h, w)
    <ty>_<tx>/<head>/sum.npy      weighted value sum, (h, w, C)

and its meta lists the tiles as ``[ty, tx, y0, x0, y1, x1]`` (canvas pixels).
"""

from __future__ import annotations

import concurrent.futures
import os
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CacheTreeError, IncompatibleError, InvalidDataError, KeyLookupError
from ..fs.location import Location
from ..fs.writer import AsyncWriter, SaveFormat
from ..tree.parts import PartInfo, list_parts, parts_location, write_part
from .kinds import SPILL_KIND
from .spec import spec_differences
from .tiles import TileBuffers, TileKey

__all__ = [
    "SpillContents",
    "SpillFileWriter",
    "SpillRef",
    "SpillStore",
    "add_spilled_tile",
    "parts_to_adopt",
    "read_spill_part",
]


@dataclass(frozen=True)
class SpillRef:
    """One spilled contribution to a tile: the part and the box (canvas pixels) it covers."""

    part: str
    y0: int
    x0: int
    y1: int
    x1: int


class SpillFileWriter(AsyncWriter):
    """Writes spill arrays straight to their final names, without fsync.

    A spill part counts only once its marker exists (written after all its arrays, by
    :func:`~cachetree.tree.parts.write_part`), so a killed writer never leaves a readable torn
    part; durability against power loss is added by a canvas checkpoint, which fsyncs these
    files (:meth:`take_unsynced`) before it refers to them.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._unsynced: list[str] = []

    def _write_one(self, target: Location, payload: Any) -> None:
        if (
            not target.is_local
            or self.save_format is not SaveFormat.NUMPY_NPY
            or not isinstance(payload, np.ndarray)
        ):
            super()._write_one(target, payload)
            return
        os.makedirs(os.path.dirname(target.path), exist_ok=True)
        with open(target.path, "wb") as fh:
            np.lib.format.write_array(fh, payload, allow_pickle=False)
        with self._lock:
            self._unsynced.append(target.path)

    def take_unsynced(self) -> list[str]:
        """Paths written since the last call (and their directories)."""
        with self._lock:
            paths, self._unsynced = self._unsynced, []
        return paths


class SpillStore:
    """The spill parts of one canvas: written in the background, indexed by tile.

    Parts are named ``<prefix>-<seq>``. Each tile keeps the list of its spilled
    contributions (:attr:`refs`); a part is used up once every tile it holds was read back
    (:meth:`consume`). Parts a checkpoint refers to (:attr:`kept`) are only dropped after
    the next checkpoint (:attr:`garbage`).
    """

    def __init__(
        self,
        location: Location,
        prefix: str,
        spec_json: Mapping[str, Any],
        *,
        workers: int,
        recycle: Callable[[list[TileBuffers]], None],
    ):
        self._loc = location
        self._prefix = prefix
        self._spec_json = dict(spec_json)
        self._recycle = recycle
        self._writer = SpillFileWriter(parts_location(location), save_format="npy", workers=workers)
        self._exec = concurrent.futures.ThreadPoolExecutor(
            workers, thread_name_prefix="cachetree-spill"
        )
        # background spills in submission order: (future, part name, buffers to reuse)
        self._inflight: deque[tuple[Any, str, list[TileBuffers]]] = deque()
        self.parts: dict[str, PartInfo] = {}
        self.refs: dict[TileKey, list[SpillRef]] = {}
        self.left: dict[str, int] = {}
        self.kept: set[str] = set()
        self.garbage: list[str] = []
        self.counters = {"spill_events": 0, "spilled_tiles": 0, "spilled_bytes": 0}

    def write(
        self, seq: int, touched: list[tuple[TileKey, TileBuffers]], lent: list[TileBuffers]
    ) -> None:
        """Write the touched tiles as part ``<prefix>-<seq>`` in the background.

        ``lent`` buffers are handed to ``recycle`` once the part is written.
        """
        tile = int(self._spec_json["tile"])
        arrays: dict[str, np.ndarray] = {}
        tiles_meta: list[list[int]] = []
        for (ty, tx), buf in touched:
            assert buf.dirty is not None
            r0, r1, c0, c1 = buf.dirty
            arrays[f"{ty}_{tx}/weight"] = buf.weight[r0:r1, c0:c1]
            for name, acc in buf.sums.items():
                arrays[f"{ty}_{tx}/{name}/sum"] = acc[r0:r1, c0:c1]
            tiles_meta.append(
                [ty, tx, ty * tile + r0, tx * tile + c0, ty * tile + r1, tx * tile + c1]
            )
        name = f"{self._prefix}-{seq:08d}"
        future = self._exec.submit(
            write_part,
            self._loc,
            name,
            arrays,
            kind=SPILL_KIND,
            meta={"canvas": self._spec_json, "seq": seq, "tiles": tiles_meta},
            writer=self._writer,
        )
        self._inflight.append((future, name, lent))
        self.left[name] = len(tiles_meta)
        for ty, tx, y0, x0, y1, x1 in tiles_meta:
            self.refs.setdefault((ty, tx), []).append(SpillRef(name, y0, x0, y1, x1))
        self.counters["spill_events"] += 1
        self.counters["spilled_tiles"] += len(tiles_meta)
        self.counters["spilled_bytes"] += sum(a.nbytes for a in arrays.values())

    def wait_oldest(self) -> None:
        """Wait for the oldest background spill; its buffers are recycled."""
        future, name, buffers = self._inflight.popleft()
        self._recycle(buffers)
        self.parts[name] = future.result()

    def reap(self, *, wait: bool = False) -> None:
        """Collect finished background spills (all of them with ``wait``)."""
        while self._inflight and (wait or self._inflight[0][0].done()):
            self.wait_oldest()

    def part(self, name: str) -> PartInfo:
        """The spill part ``name``, waiting for its background write if needed."""
        while name not in self.parts:
            self.wait_oldest()
        return self.parts[name]

    def register(self, info: PartInfo, *, from_row: int = 0) -> None:
        """Count an existing part's tiles of rows ``from_row`` on as contributions."""
        left = 0
        for ty, tx, y0, x0, y1, x1 in info.meta["tiles"]:
            if ty < from_row:
                continue
            self.refs.setdefault((ty, tx), []).append(SpillRef(info.name, y0, x0, y1, x1))
            left += 1
        self.parts[info.name] = info
        self.left[info.name] = left

    def consume(self, ref: SpillRef) -> str | None:
        """One tile of a part was read back; the part's name once it can be dropped now."""
        left = self.left[ref.part] - 1
        self.left[ref.part] = left
        if left:
            return None
        if ref.part in self.kept:
            self.garbage.append(ref.part)  # the checkpoint still needs it
            return None
        return ref.part

    def forget(self, name: str) -> PartInfo | None:
        """Stop tracking part ``name``; its info, to remove it, if it was written."""
        self.left.pop(name, None)
        return self.parts.pop(name, None)

    def referenced(self) -> list[str]:
        """Parts with tiles not read back yet, sorted."""
        return sorted(n for n, left in self.left.items() if left > 0)

    def take_unsynced(self) -> list[str]:
        """Local spill files written and not fsynced since the last call."""
        return self._writer.take_unsynced()

    def shutdown(self) -> None:
        """Finish the queued writes and stop the threads."""
        self._exec.shutdown(wait=True)
        self._writer.close()


def add_spilled_tile(
    part: PartInfo,
    ref: SpillRef,
    key: TileKey,
    tile: int,
    weight: np.ndarray,
    sums: Mapping[str, np.ndarray],
) -> tuple[int, int, int, int]:
    """Add one spilled tile of ``part`` to a tile's ``weight`` and per-head ``sums``.

    ``ref`` gives the tile's box in canvas pixels; returns it as ``(r0, r1, c0, c1)`` in
    tile pixels.
    """
    ty, tx = key
    r0, r1 = ref.y0 - ty * tile, ref.y1 - ty * tile
    c0, c1 = ref.x0 - tx * tile, ref.x1 - tx * tile
    weight[r0:r1, c0:c1] += part.read(f"{ty}_{tx}/weight")
    for head, acc in sums.items():
        acc[r0:r1, c0:c1] += part.read(f"{ty}_{tx}/{head}/sum")
    return r0, r1, c0, c1


@dataclass(frozen=True)
class SpillContents:
    """What one spill part contributes, over the bounding box of its tiles.

    Pixels the part does not cover are NaN.
    """

    top: int
    """Canvas row of the box's first row."""
    left: int
    """Canvas column of the box's first column."""
    weight: np.ndarray
    """``(h, w)`` float32 weight sums."""
    sums: dict[str, np.ndarray]
    """Head name to ``(C, h, w)`` float32 weighted value sums."""


def read_spill_part(part: PartInfo) -> SpillContents:
    """Decode a spill part (kind ``"canvas-spill"``) into arrays placed on the canvas.

    Raises
    ------
    CacheTreeError
        The part lists no tiles.
    """
    tiles = part.meta.get("tiles") or []
    if not tiles:
        raise CacheTreeError(f"spill part {part.name!r} lists no tiles")
    top, left = min(t[2] for t in tiles), min(t[3] for t in tiles)
    bottom, right = max(t[4] for t in tiles), max(t[5] for t in tiles)
    heads = sorted({a.split("/")[1] for a in part.arrays if a.count("/") == 2})
    weight = np.full((bottom - top, right - left), np.nan, np.float32)
    sums: dict[str, np.ndarray] = {}
    for ty, tx, y0, x0, y1, x1 in tiles:
        box = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
        weight[box] = np.nan_to_num(weight[box]) + part.read(f"{ty}_{tx}/weight")
        for head in heads:
            tile_sum = np.moveaxis(np.asarray(part.read(f"{ty}_{tx}/{head}/sum")), -1, 0)
            if head not in sums:
                sums[head] = np.full((len(tile_sum), *weight.shape), np.nan, np.float32)
            sums[head][(slice(None), *box)] = (
                np.nan_to_num(sums[head][(slice(None), *box)]) + tile_sum
            )
    return SpillContents(top, left, weight, sums)


def parts_to_adopt(
    location: Location, parts: Sequence[str | PartInfo], spec_json: Mapping[str, Any]
) -> list[PartInfo]:
    """The spill parts ``parts`` of the node at ``location``, checked against a spec.

    Names are looked up (freshly: other processes wrote them); a :class:`PartInfo` is
    taken as it is. Parts are returned once each, in the given order.

    Raises
    ------
    InvalidDataError
        ``parts`` is not a sequence.
    KeyLookupError
        A part is not in the node (or not committed).
    IncompatibleError
        A part was written by a canvas of another spec (the patch order may differ).
    """
    if isinstance(parts, str) or not isinstance(parts, Sequence):
        raise InvalidDataError("adopt must be a sequence of spill part names")
    by_name = {p.name: p for p in parts if isinstance(p, PartInfo)}
    names = [p.name if isinstance(p, PartInfo) else str(p) for p in parts]
    if len(by_name) < len(names):
        location.fs.invalidate_cache(parts_location(location).path)
        by_name = {p.name: p for p in list_parts(location, kind=SPILL_KIND)}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise KeyLookupError(
            f"{len(missing)} spill parts to adopt are not in {location.url} (or not "
            f"committed): {missing[:5]}"
        )
    mine = {k: v for k, v in spec_json.items() if k != "order"}  # any order sums alike
    for name in dict.fromkeys(names):
        theirs = {k: v for k, v in by_name[name].meta.get("canvas", {}).items() if k != "order"}
        differences = spec_differences(theirs, mine)
        if differences:
            raise IncompatibleError(
                f"spill part {name} of {location.url} was written by a canvas with another spec",
                [d.replace("checkpoint has", "the part has") for d in differences],
            )
    return [by_name[name] for name in dict.fromkeys(names)]
