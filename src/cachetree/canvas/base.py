"""What every canvas does: take batches, accumulate them into tiles, spill tiles to storage."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import FinalizedError, InvalidDataError
from ..fs.location import Location, fsync_path, storage_errors
from ..fs.pool import BoundedPool
from ..tree.parts import remove_part
from .batch import Batch, prepare_batch
from .normalise import normalise_tile
from .preview import PreviewAccumulator, preview_factor
from .spec import CanvasSpec, HeadSpec, parse_memory_budget, weight_window
from .spill import SpillStore, add_spilled_tile
from .tiles import TileBuffers, TileKey, TileStore

__all__ = ["CanvasBase"]


class CanvasBase:
    """Accumulates batches of patches into tiles held within a memory budget.

    Tiles that do not fit are spilled as immutable parts named ``<spill_prefix>-<seq>``.
    Subclasses decide what happens to tile rows no later patch can reach
    (:meth:`_rows_passed`) and how a canvas ends (:meth:`_finish`).
    """

    def __init__(
        self,
        location: Location,
        spec: CanvasSpec,
        *,
        memory_budget: int | str | None,
        workers: int,
        spill_prefix: str,
        preview: int | None = None,
    ):
        self.spec = spec
        self.memory_budget = parse_memory_budget(memory_budget)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise InvalidDataError(f"workers must be a positive integer, got {workers!r}")
        self._workers = workers
        self._loc = location
        self._spec_json = spec.to_json()
        self._store = TileStore(spec, self.memory_budget)
        factor = preview_factor(spec, self.memory_budget) if preview is None else preview
        self._preview = PreviewAccumulator(spec, factor)
        self._pool = BoundedPool(workers, "cachetree-canvas")
        self._spills = SpillStore(
            location, spill_prefix, self._spec_json, workers=workers, recycle=self._store.recycle
        )
        self._next_seq = 0
        self._frontier = 0
        self._batches_done = 0
        self._finalized = False
        self._closed = False
        self._windows: dict[tuple[int, int], np.ndarray | None] = {}
        self._scratch: dict[str, np.ndarray] = {}
        self._streams = spec.order == "row-major"
        """Whether patches come top to bottom, so rows above a batch are complete."""
        self._region: tuple[int, int, int, int] | None = None
        """``(x0, y0, x1, y1)``: the canvas pixels this canvas accumulates (None: all)."""

    # -- public state -------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """Canvas ``(height, width)``."""
        return self.spec.shape

    @property
    def heads(self) -> dict[str, HeadSpec]:
        """Head name to :class:`HeadSpec`."""
        return dict(self.spec.heads)

    @property
    def tile(self) -> int:
        """Edge of the accumulator tiles and output chunks."""
        return self.spec.tile

    @property
    def batches_done(self) -> int:
        """Batches accumulated so far (after a resume: those covered by the checkpoint)."""
        return self._batches_done

    @property
    def finalized(self) -> bool:
        """Whether the canvas completed (``finalize()`` or ``flush_parts()``)."""
        return self._finalized

    @property
    def rows_written(self) -> int:
        """Canvas rows (pixels) already normalised and written to the output level 0."""
        return 0

    @property
    def resident_bytes(self) -> int:
        """Bytes of accumulator buffers held (in use or kept for reuse)."""
        return self._store.resident_bytes

    @property
    def stats(self) -> dict[str, int]:
        """Counters: spill events, spilled tiles and bytes, resident and peak bytes, rows."""
        return {
            **self._spills.counters,
            "spill_parts": len(self._spills.parts),
            "resident_bytes": self.resident_bytes,
            "peak_resident_bytes": self._store.peak_bytes,
            "tiles_in_memory": len(self._store.resident),
            "rows_written": self.rows_written,
        }

    def __repr__(self) -> str:
        heads = ", ".join(f"{n}:{s.channels}x{s.dtype}" for n, s in self.spec.heads.items())
        state = "finalized" if self._finalized else f"{self._batches_done} batches"
        return f"{type(self).__name__}({self.shape[0]}x{self.shape[1]}, heads=[{heads}], {state})"

    # -- adding -------------------------------------------------------------------------
    def add(
        self,
        outputs: Mapping[str, Any] | Sequence[Any] | np.ndarray,
        boxes: Any,
    ) -> None:
        """Accumulate a batch of patches.

        Parameters
        ----------
        outputs
            Head name to ``(N, h, w, C)`` array (``(N, h, w)`` is accepted for one-channel
            heads); or a sequence of such arrays in head order; or one array when there is
            one head. Values must have the head's dtype kind (integers are accepted for
            float heads, floats are rejected for integer heads).
        boxes
            ``(N, 4)`` integer boxes ``[x0, y0, x1, y1]`` with ``x1 - x0 == w`` and
            ``y1 - y0 == h``; parts outside the canvas are clipped, but every box must
            overlap it.

        Raises
        ------
        ShapeMismatchError, DTypeMismatchError, KeyLookupError, BoxOutOfBoundsError,
        NonFiniteValueError, FinalizedError
            The batch is rejected as a whole and the canvas is unchanged.
        """
        self._check_open()
        self._ingest(prepare_batch(self.spec, outputs, boxes, None, self._frontier))

    def add_weighted(
        self,
        sums: Mapping[str, Any] | Sequence[Any] | np.ndarray,
        weights: Any,
        boxes: Any,
    ) -> None:
        """Accumulate pre-weighted sums: ``sums`` are added as they are, ``weights`` too.

        For merging blocks that already hold ``sum(weight * value)`` and ``sum(weight)``
        (e.g. rows merged elsewhere). ``weights`` is ``(N, h, w)``, finite and >= 0; the
        canvas' own blending weights are not applied.
        """
        self._check_open()
        self._ingest(prepare_batch(self.spec, sums, boxes, weights, self._frontier))

    def _ingest(self, batch: Batch) -> None:
        with storage_errors(self._loc):
            if self._streams and len(batch.clipped):
                frontier = int(batch.clipped[:, 1].min())
                if frontier > self._frontier:
                    self._frontier = frontier
                    self._rows_passed(frontier // self.spec.tile)
            self._accumulate(batch)
            self._batches_done += 1
            self._collect()
            self._after_batch()

    def _rows_passed(self, upto: int) -> None:
        """Tile rows above ``upto`` are out of reach of every later patch."""
        raise NotImplementedError

    def _after_batch(self) -> None:
        """Called after every accepted batch."""

    def _check_open(self) -> None:
        if self._finalized:
            raise FinalizedError(
                "the canvas is finalized and accepts no more data: make a new Canvas (on a "
                "node opened with new params) to merge again"
            )
        if self._closed:
            raise FinalizedError("the canvas was closed; resume it with Canvas(..., resume=True)")
        self._pool.raise_error()

    # -- accumulation ---------------------------------------------------------------------
    def _window(self, h: int, w: int) -> np.ndarray | None:
        key = (h, w)
        if key not in self._windows:
            weights = self.spec.weights
            if isinstance(weights, str) and weights == "uniform":
                self._windows[key] = None
            else:
                self._windows[key] = weight_window(weights, key)
        return self._windows[key]

    def _scratch_for(self, name: str, h: int, w: int) -> np.ndarray:
        head = self.spec.heads[name]
        buf = self._scratch.get(name)
        if buf is None or buf.shape[0] < h or buf.shape[1] < w:
            buf = np.empty((h, w, head.channels), head.acc_dtype)
            self._scratch[name] = buf
        return buf[:h, :w]

    def _contributions(
        self, batch: Batch, i: int, window: np.ndarray | None
    ) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        """Weights and weighted values of patch ``i`` (None weights: all ones)."""
        win = batch.weights[i] if batch.weights is not None else window
        bad = batch.bad[i] if batch.bad is not None else None
        if bad is not None and not bad.any():
            bad = None
        if bad is not None:
            win = np.where(bad, np.float32(0), 1 if win is None else win).astype(np.float32)
        contrib: dict[str, np.ndarray] = {}
        for name, arr in batch.values.items():
            patch = arr[i]
            if bad is not None:
                patch = np.where(bad[..., np.newaxis], 0, patch)
            if win is None or batch.weights is not None:
                contrib[name] = patch
            else:
                h, w = patch.shape[:2]
                out = self._scratch_for(name, h, w)
                np.multiply(patch, win[..., np.newaxis], out=out, casting="unsafe")
                contrib[name] = out
        return win, contrib

    def _accumulate(self, batch: Batch) -> None:
        n = len(batch.boxes)
        if not n:
            return
        T = self.spec.tile
        first = next(iter(batch.values.values()))
        h, w = first.shape[1:3]
        window = None if batch.weights is not None else self._window(h, w)
        for i in range(n):
            bx0, by0 = int(batch.boxes[i, 0]), int(batch.boxes[i, 1])
            cx0, cy0, cx1, cy1 = (int(v) for v in batch.clipped[i])
            if self._region is not None:
                rx0, ry0, rx1, ry1 = self._region
                cx0, cy0, cx1, cy1 = max(cx0, rx0), max(cy0, ry0), min(cx1, rx1), min(cy1, ry1)
                if cx0 >= cx1 or cy0 >= cy1:
                    continue
            win, contrib = self._contributions(batch, i, window)
            ty0, ty1 = cy0 // T, (cy1 - 1) // T
            tx0, tx1 = cx0 // T, (cx1 - 1) // T
            protect = {(ty, tx) for ty in range(ty0, ty1 + 1) for tx in range(tx0, tx1 + 1)}
            for ty in range(ty0, ty1 + 1):
                ry0, ry1 = max(cy0, ty * T), min(cy1, (ty + 1) * T)
                py0, py1 = ry0 - by0, ry1 - by0
                ly0, ly1 = ry0 - ty * T, ry1 - ty * T
                for tx in range(tx0, tx1 + 1):
                    rx0, rx1 = max(cx0, tx * T), min(cx1, (tx + 1) * T)
                    px0, px1 = rx0 - bx0, rx1 - bx0
                    lx0, lx1 = rx0 - tx * T, rx1 - tx * T
                    buf = self._tile_for((ty, tx), protect)
                    if win is None:
                        buf.weight[ly0:ly1, lx0:lx1] += np.float32(1)
                    else:
                        buf.weight[ly0:ly1, lx0:lx1] += win[py0:py1, px0:px1]
                    for name, values in contrib.items():
                        buf.sums[name][ly0:ly1, lx0:lx1] += values[py0:py1, px0:px1]
                    buf.mark(ly0, ly1, lx0, lx1)

    def _tile_for(self, key: TileKey, protect: set[TileKey]) -> TileBuffers:
        buf = self._store.touch(key)
        if buf is None:
            buf = self._take_buffers(protect)
            self._store.resident[key] = buf
        return buf

    def _take_buffers(self, protect: set[TileKey]) -> TileBuffers:
        """A cleared tile buffer: reused, new within the budget, or freed by spilling.

        Decisions use logical counts only (a buffer whose spill is being written counts
        as free), so the same input always spills the same tiles whatever the timing of
        the background writes; a physical wait happens only when a buffer is needed now.
        """
        store = self._store
        if store.needs_room():
            self._spill(store.victims(protect))
        if store.free_count():
            while not store.has_idle():
                self._spills.wait_oldest()
            buf = store.reuse()
        else:  # within the budget, or a patch needing more tiles than the budget holds
            buf = store.allocate()
        if store.needs_room():
            self._spill(store.victims(protect))  # spill ahead: written while accumulation goes on
        return buf

    # -- spilling -------------------------------------------------------------------------
    def _spill(self, keys: list[TileKey]) -> None:
        """Write the given tiles' accumulators as one immutable part, in the background.

        The tiles leave memory at once (a later touch starts a fresh accumulator); their
        buffers are reused once the part is written. Tiles never touched are just freed.
        """
        if not keys:
            return
        touched, lent = self._store.detach(keys)
        for key, buf in touched:
            self._to_preview(key, buf)
        if touched:
            self._spills.write(self._take_seq(), touched, lent)

    def _to_preview(self, key: TileKey, buf: TileBuffers) -> None:
        """Add a tile's accumulators, leaving memory, to the preview."""
        if buf.dirty is not None:
            self._preview.add_tile(*key, buf.weight, buf.sums, buf.dirty)

    def _final_tile(
        self, key: TileKey, protect: set[TileKey], *, preview: bool
    ) -> dict[str, np.ndarray] | None:
        """Take a tile out of the canvas, its resident and spilled contributions summed and
        normalised (per head ``(C, h, w)`` of the head's dtype); None when nothing touched it.

        With ``preview``, its resident contributions go to the preview first (the spilled
        ones went there when they were spilled). Spill parts read to the end are removed.
        """
        buf = self._store.resident.pop(key, None)
        refs = self._spills.refs.pop(key, [])
        if buf is not None and preview:
            self._to_preview(key, buf)
        if buf is None and not refs:
            return None
        if buf is None:
            buf = self._take_buffers(protect)
        for ref in refs:
            part = self._spills.part(ref.part)
            box = add_spilled_tile(part, ref, key, self.spec.tile, buf.weight, buf.sums)
            buf.mark(*box)
        outputs = normalise_tile(self.spec, buf, *key)
        self._store.release(buf)
        for ref in refs:
            used_up = self._spills.consume(ref)
            if used_up is not None:
                self._drop_part(used_up)
        return outputs

    def _drop_part(self, name: str) -> None:
        info = self._spills.forget(name)
        if info is not None:
            self._pool.submit(remove_part, info)

    def preview_reached(self) -> tuple[tuple[int, int], dict[str, np.ndarray]]:
        """The preview block sums of every tile that left memory, over the cells some
        patch reached: ``(first cell row, column)`` and the arrays ``weight`` and
        ``sum/<head>`` (see :meth:`~cachetree.canvas.preview.PreviewAccumulator.reached`)."""
        return self._preview.reached()

    def _take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    # -- background work ------------------------------------------------------------------
    def _collect(self, *, wait: bool = False) -> None:
        """Collect finished background work; re-raise the first failure."""
        self._spills.reap(wait=wait)
        self._pool.raise_error()

    def _drain(self) -> None:
        """Wait for every background task; re-raise the first failure."""
        self._collect(wait=True)
        self._pool.wait_idle()
        self._pool.raise_error()

    def _unsynced_paths(self) -> list[str]:
        """Local files written since the last fsync."""
        return self._spills.take_unsynced()

    def _fsync_written(self) -> None:
        """fsync the files written since the last call, and their directories (local)."""
        directories = set()
        for path in self._unsynced_paths():
            fsync_path(path)
            directories.add(os.path.dirname(path))
        for directory in directories:
            fsync_path(directory)

    def _spill_all(self) -> None:
        """Spill every tile in memory and wait until every background write is done."""
        if self._store.resident:
            self._spill(list(self._store.resident))
        self._spills.reap(wait=True)
        self._drain()
        self._fsync_written()

    # -- ending -------------------------------------------------------------------------
    def close(self) -> None:
        """Stop without finishing: finish pending writes and keep the spill data.

        Work since the last checkpoint is not resumable; call ``checkpoint()`` first to
        keep it.
        """
        if self._closed or self._finalized:
            return
        try:
            self._spills.reap(wait=True)
            self._drain()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self._closed = True
        try:
            self._spills.shutdown()
        finally:
            self._pool.shutdown()

    def _finish(self) -> None:
        """End the canvas after a ``with`` block without error."""
        raise NotImplementedError

    def __enter__(self) -> CanvasBase:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb):
        if exc_type is None and not self._finalized and not self._closed:
            self._finish()
        else:
            try:
                self.close()
            except BaseException as close_exc:
                if exc is not None and close_exc is not exc:
                    exc.add_note(f"closing the canvas also failed: {close_exc!r}")
