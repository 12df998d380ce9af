"""The tiles a canvas holds in memory: their accumulators, a buffer pool and which to evict."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping

import numpy as np

from .spec import CanvasSpec, HeadSpec

__all__ = ["TileBuffers", "TileKey", "TileStore"]

TileKey = tuple[int, int]
"""``(tile row, tile column)``."""


class TileBuffers:
    """Accumulators of one tile: a weight plane and one weighted sum per head (full size)."""

    __slots__ = ("dirty", "sums", "weight")

    def __init__(self, tile: int, heads: Mapping[str, HeadSpec]):
        self.weight = np.zeros((tile, tile), np.float32)
        self.sums = {
            name: np.zeros((tile, tile, spec.channels), spec.acc_dtype)
            for name, spec in heads.items()
        }
        self.dirty: list[int] | None = None  # [r0, r1, c0, c1] that may be non-zero

    def clear(self) -> None:
        """Zero the part that may be non-zero."""
        if self.dirty is None:
            return
        r0, r1, c0, c1 = self.dirty
        self.weight[r0:r1, c0:c1] = 0
        for acc in self.sums.values():
            acc[r0:r1, c0:c1] = 0
        self.dirty = None

    def mark(self, r0: int, r1: int, c0: int, c1: int) -> None:
        """Rows ``r0:r1`` and columns ``c0:c1`` may be non-zero now."""
        d = self.dirty
        if d is None:
            self.dirty = [r0, r1, c0, c1]
        else:
            d[0], d[1], d[2], d[3] = min(d[0], r0), max(d[1], r1), min(d[2], c0), max(d[3], c1)


class TileStore:
    """Resident tiles in least-recently-touched order, within a memory budget.

    Buffers of tiles that left memory are kept for reuse while the budget allows. Buffers
    lent to a spill being written (:meth:`detach`) count as free, so decisions depend only
    on the input, never on the timing of background writes; they come back with
    :meth:`recycle`.
    """

    def __init__(self, spec: CanvasSpec, memory_budget: int):
        self.spec = spec
        self.memory_budget = memory_budget
        self.tile_bytes = spec.tile_bytes
        self.resident: OrderedDict[TileKey, TileBuffers] = OrderedDict()
        self._idle: list[TileBuffers] = []
        self._lent = 0
        self.allocated = 0
        self.peak = 0

    @property
    def resident_bytes(self) -> int:
        """Bytes of buffers held (in use or kept for reuse)."""
        return self.allocated * self.tile_bytes

    @property
    def peak_bytes(self) -> int:
        """Most bytes of buffers held at once."""
        return self.peak * self.tile_bytes

    def touch(self, key: TileKey) -> TileBuffers | None:
        """The buffers of a resident tile, now the most recently touched; None if absent."""
        buf = self.resident.get(key)
        if buf is not None:
            self.resident.move_to_end(key)
        return buf

    def free_count(self) -> int:
        """Buffers ready for reuse or coming back from a spill."""
        return len(self._idle) + self._lent

    def needs_room(self) -> bool:
        """Whether no buffer is free and a new one would exceed the budget."""
        return not self.free_count() and (self.allocated + 1) * self.tile_bytes > self.memory_budget

    def has_idle(self) -> bool:
        """Whether a buffer can be reused right now."""
        return bool(self._idle)

    def reuse(self) -> TileBuffers:
        """A cleared idle buffer."""
        buf = self._idle.pop()
        buf.clear()
        return buf

    def allocate(self) -> TileBuffers:
        """A new buffer (within the budget, or for a patch needing more than it holds)."""
        self.allocated += 1
        self.peak = max(self.peak, self.allocated)
        return TileBuffers(self.spec.tile, self.spec.heads)

    def release(self, buf: TileBuffers) -> None:
        """Keep a freed buffer for reuse, unless it was allocated over the budget."""
        if self._over_budget():
            self.allocated -= 1  # dropped: memory goes back to the budget
        else:
            self._idle.append(buf)

    def _over_budget(self) -> bool:
        return self.allocated * self.tile_bytes > self.memory_budget

    def victims(self, protect: set[TileKey]) -> list[TileKey]:
        """Tiles to spill to free memory.

        ``order="any"``: the least recently touched tiles, about a quarter of the budget at
        a time (each spill part costs a durable commit, so they are not made tile by tile).
        ``order="row-major"``: one tile, the most recently touched one outside the current
        patch. Patches sweep left to right row after row, so the tile just left
        behind is the one needed again last (in the next sweep) while the tiles ahead are
        needed at once: evicting it is what an optimal (Belady) cache would do, and spills
        2-3x less than LRU, which would evict every tile of a sweep that does not fit.
        """
        candidates: Iterable[TileKey]
        if self.spec.order == "row-major":
            candidates = reversed(self.resident)
            want = 1
        else:
            candidates = iter(self.resident)
            want = max(1, self.memory_budget // (4 * self.tile_bytes))
        chosen = []
        for key in candidates:
            if key not in protect:
                chosen.append(key)
                if len(chosen) >= want:
                    break
        return chosen

    def detach(
        self, keys: Iterable[TileKey]
    ) -> tuple[list[tuple[TileKey, TileBuffers]], list[TileBuffers]]:
        """Take tiles out of memory for a spill.

        Returns the touched tiles with their buffers, and the buffers lent to the spill
        (to :meth:`recycle` once it is written; the others are dropped). Untouched tiles
        are just freed.
        """
        touched: list[tuple[TileKey, TileBuffers]] = []
        lent: list[TileBuffers] = []
        for key in keys:
            buf = self.resident.pop(key)
            if buf.dirty is None:
                self.release(buf)
                continue
            touched.append((key, buf))
            if self._over_budget():
                self.allocated -= 1  # dropped once written
            else:
                lent.append(buf)
        self._lent += len(lent)
        return touched, lent

    def recycle(self, buffers: list[TileBuffers]) -> None:
        """Buffers lent to a spill that is written now: ready for reuse."""
        self._lent -= len(buffers)
        self._idle.extend(buffers)

    def drop_idle(self) -> None:
        """Free every buffer kept for reuse."""
        self._idle.clear()
        self.allocated = len(self.resident)
