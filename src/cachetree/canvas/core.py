"""The public :class:`Canvas`: merges patch batches into a cache node and finalises it."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from ..errors import FinalizedError, InvalidDataError
from ..fs.location import Location, storage_errors
from ..images.ngff import ImageInfo
from ..tree.layout import CANVAS_JSON
from ..tree.node import Node
from ..tree.parts import (
    PartInfo,
    parts_location,
    remove_parts,
)
from .kinds import SPILL_KIND, STAGING
from .preview import write_preview
from .resuming import ResumableCanvas
from .rows import RowWriter
from .spec import CanvasSpec, HeadSpec, NanPolicy, Order
from .tiles import TileKey
from .worker import WorkerCanvas

__all__ = ["Canvas", "Role"]

log = logging.getLogger("cachetree")

PREVIEW_INTERVAL = 2.0
"""Fewest seconds between two writes of the preview while merging (checkpoints always write
it); at least 50 times the last write's duration, so writing it costs at most 2 %."""
PREVIEW_COST_SHARE = 50
FINAL_LEVEL = 2
"""Pyramid level the preview of final rows is read from, at most (see _use_written_levels)."""

Role = Literal["canvas", "worker"]
"""What ``Canvas(..., role=...)`` makes: a :class:`Canvas` or a :class:`WorkerCanvas`."""


class Canvas(ResumableCanvas):
    """Accumulate overlapping multi-head patch predictions into full-size images.

    Parameters
    ----------
    node
        Cache node open for writing (``node.writing``); results and spill data go there.
    shape
        Canvas ``(height, width)`` in pixels.
    heads
        Head name to :class:`HeadSpec`, to ``(channels, dtype)`` or to a channel count
        (float32). Names become item names (``<head>.ome.zarr``).
    weights
        Blending weights: ``"uniform"``, ``"gaussian"`` or an ``(h, w)`` array.
    memory_budget
        Bytes of accumulators held in RAM: an int, ``"512MiB"``, ``"25%"`` (of RAM); None
        means min(1 GiB, 10 % of RAM). Each patch's own tiles are always held, so a budget
        smaller than that is exceeded by that much.
    order
        ``"row-major"`` promises that no patch starts (clipped y0) above the smallest y0 of
        an earlier batch; rows above that are then final and written at once. ``"any"``
        accepts any order.
    tile
        Edge of the accumulator tiles and of the output chunks, in pixels.
    nan_policy
        ``"raise"``: NaN or infinite values raise
        :class:`~cachetree.errors.NonFiniteValueError`.
        ``"ignore"``: a pixel with a non-finite value in any channel of any head gets zero
        weight for every head.
    fill_value
        Output where no patch contributed (must fit every head's dtype).
    checkpoint_every
        Call :meth:`checkpoint` after every this many batches (None: only when asked).
    resume
        Continue from the newest checkpoint in the node, if any (see :attr:`batches_done`);
        otherwise start from scratch. Without it, leftovers of earlier runs are removed.
    channel_names
        Optional head name to channel names, stored in the OME-Zarr metadata.
    min_size
        The pyramid stops once the larger of height and width is at most this.
    pixel_size, units, output_stride
        Physical pixel size of the model's input, its unit and the input pixels per canvas
        pixel (see :class:`~cachetree.canvas.CanvasSpec`): the output images get the scale
        ``pixel_size * output_stride`` in ``units``.
    workers
        Threads encoding and writing output chunks.
    progress
        Show progress bars in :meth:`finalize`.
    role
        ``"canvas"`` (default) merges and finalises. ``"worker"`` makes a
        :class:`~cachetree.canvas.WorkerCanvas` instead (``node`` may then be a location
        or a URL; ``resume``, ``adopt``, ``checkpoint_every`` and ``progress`` are not
        taken).
    part_prefix
        Name prefix of a worker canvas' spill parts, unique per worker attempt.
    adopt
        Spill parts written by worker canvases of the same spec (names, or
        :class:`~cachetree.tree.parts.PartInfo` as listed, which saves listing them again), in
        the order their contributions are summed: :meth:`finalize` merges them in. They
        are removed only after the node is committed.

    Raises
    ------
    FinalizedError
        The node is not open for writing (role ``"canvas"``).
    InvalidDataError, ShapeMismatchError, DTypeMismatchError
        Malformed arguments.
    IncompatibleError
        ``resume=True`` but the checkpoint was made with another spec, or a part to adopt
        was written with another spec.
    KeyLookupError
        A part to adopt is not in the node.
    """

    role = "canvas"

    def __new__(cls, *args: Any, role: Role = "canvas", **kwargs: Any) -> Any:
        if role not in ("canvas", "worker"):
            raise InvalidDataError(f"role must be 'canvas' or 'worker', not {role!r}")
        if role == "canvas":
            return super().__new__(cls)
        return _worker_canvas(*args, **kwargs)

    def __init__(
        self,
        node: Node | Location | str,
        shape: tuple[int, int],
        heads: Mapping[str, HeadSpec | tuple[int, Any] | int],
        *,
        weights: str | np.ndarray = "uniform",
        memory_budget: int | str | None = None,
        order: Order = "any",
        tile: int = 512,
        nan_policy: NanPolicy = "raise",
        fill_value: float = 0.0,
        checkpoint_every: int | None = None,
        resume: bool = False,
        channel_names: Mapping[str, Sequence[str]] | None = None,
        min_size: int = 256,
        pixel_size: float | tuple[float, float] | None = None,
        units: str | None = None,
        output_stride: float | tuple[float, float] = 1,
        workers: int = 2,
        progress: bool = False,
        role: Role = "canvas",
        part_prefix: str | None = None,
        adopt: Sequence[str | PartInfo] | None = None,
    ):
        if part_prefix is not None:
            raise InvalidDataError("part_prefix is only for role='worker' canvases")
        if not isinstance(node, Node):
            raise InvalidDataError(f"node must be a cachetree Node, got {type(node).__name__}")
        if not node.writing:
            raise FinalizedError(
                f"node {node.url} is not open for writing (committed, or never opened): "
                "open it first, e.g. `with tree.node(path, params=...) as node:`, and only "
                "build a canvas when the node is not committed yet"
            )
        if adopt is not None and resume:
            raise InvalidDataError("adopt and resume cannot be combined")
        spec = CanvasSpec(
            shape,
            heads,
            weights=weights,
            tile=tile,
            order=order,
            nan_policy=nan_policy,
            fill_value=fill_value,
            channel_names=channel_names,
            min_size=min_size,
            pixel_size=pixel_size,
            units=units,
            output_stride=output_stride,
        )
        if checkpoint_every is not None and (
            isinstance(checkpoint_every, bool)
            or not isinstance(checkpoint_every, int)
            or checkpoint_every < 1
        ):
            raise InvalidDataError(
                f"checkpoint_every must be a positive integer or None, got {checkpoint_every!r}"
            )
        self.checkpoint_every = checkpoint_every
        self.progress = progress
        self.node = node
        super().__init__(
            node.location,
            spec,
            memory_budget=memory_budget,
            workers=workers,
            spill_prefix=SPILL_KIND,
        )
        self._parts_root = parts_location(self._loc)
        self._staging = self._parts_root.raw_child(STAGING)
        self._rows = RowWriter(self._staging, spec, self._pool, node.ngff_format)
        self._checkpoint: PartInfo | None = None
        self._preview_written: tuple[int, float] = (-1, 0.0)  # version, time
        self._preview_pause = PREVIEW_INTERVAL
        self._final_level = -1  # pyramid level final rows of the preview are read from
        self._final_rows = 0  # chunk rows of that level already in the preview
        self._preview_seq = 0
        try:
            if adopt is not None:
                self._adopt(adopt)
                self._start_fresh(keep_spills=True)
            elif not (resume and self._resume()):
                self._start_fresh()
        except BaseException:
            self._shutdown()
            raise

    @property
    def grid(self) -> tuple[int, int]:
        """Tile rows and columns."""
        return self.spec.grid

    @property
    def rows_written(self) -> int:
        """Canvas rows (pixels) already normalised and written to the output level 0."""
        return min(self._rows.rows_final * self.spec.tile, self.spec.shape[0])

    # -- rows -----------------------------------------------------------------------------
    def _rows_passed(self, upto: int) -> None:
        self._finalize_rows(min(upto, self.spec.grid[0]))

    def _after_batch(self) -> None:
        if self.checkpoint_every and self._batches_done % self.checkpoint_every == 0:
            self.checkpoint()
        elif time.monotonic() - self._preview_written[1] >= self._preview_pause:
            self._write_preview()

    def _use_written_levels(self) -> None:
        """Take the preview of final rows from the pyramid levels built as rows are written
        (no extra pass over the tiles), when their chunks cover whole preview cells.

        Level 2 at most: a chunk row of level ``k`` is complete once ``2**k`` tile rows are,
        so final rows reach the preview in bands of up to four tile rows.
        """
        built, tile, factor = self._rows.built_levels(), self.spec.tile, self._preview.factor
        level = min(built, factor.bit_length() - 1, FINAL_LEVEL)
        ratio = factor >> level
        self._final_level = level if built and tile % ratio == 0 else -1
        self._final_rows = 0

    def _sync_final_rows(self, *, partial: bool = False) -> None:
        """Copy the coarse level of rows written since the last call into the preview.

        With ``partial``, the rows of the band not complete yet are read from level 0 too
        (a checkpoint's preview then shows every row written).
        """
        level = self._final_level
        if level < 0:
            return
        span, grid, durable = 1 << level, self.spec.grid[0], self._rows.rows_durable
        factor = self._preview.factor
        cells = self.spec.tile // (factor >> level)
        while (
            self._final_rows * span < grid and min((self._final_rows + 1) * span, grid) <= durable
        ):
            means = self._rows.level_row_means(level, self._final_rows, factor >> level)
            self._preview.set_rows(self._final_rows * cells, means)
            self._final_rows += 1
        first = self._final_rows * span
        if partial and self.spec.tile % factor == 0 and first < durable:
            rows = [self._rows.level_row_means(0, ty, factor) for ty in range(first, durable)]
            means = {
                head: np.concatenate([row[head] for row in rows], axis=1)
                for head in self.spec.heads
            }
            self._preview.set_rows(first * self.spec.tile // factor, means)

    def _write_preview(self) -> None:
        """Write the preview pyramid, unless nothing left memory since the last one."""
        self._sync_final_rows()
        version = self._preview.version
        if version == self._preview_written[0]:
            return
        height = self.spec.shape[0]
        merged = self._preview.coverage()
        if self.spec.order == "row-major":
            merged = max(merged, min(1.0, self._frontier / height))
        status = {
            "seq": self._preview_seq,
            "batches_done": self._batches_done,
            "merged": merged,
        }
        start = time.monotonic()
        write_preview(
            self._staging, self._preview_seq, self._preview, self._rows.value_ranges(), status
        )
        self._preview_seq += 1
        end = time.monotonic()
        self._preview_written = (version, end)
        self._preview_pause = max(PREVIEW_INTERVAL, PREVIEW_COST_SHARE * (end - start))

    def _finalize_rows(self, upto: int) -> None:
        """Normalise and write tile rows ``rows_final .. upto - 1``."""
        columns = self.spec.grid[1]
        rows = range(self._rows.rows_final, upto)
        for ty in tqdm(rows, desc="canvas rows", unit="row", disable=not self.progress):
            futures = []
            protect = {(ty, tx) for tx in range(columns)}
            for tx in range(columns):
                futures += self._finalize_tile((ty, tx), protect)
            self._rows.end_row(ty, futures)
        self._collect()

    def _finalize_tile(self, key: TileKey, protect: set[TileKey]) -> list[Any]:
        """Sum a tile's resident and spilled contributions, normalise it and write it."""
        outputs = self._final_tile(key, protect, preview=self._final_level < 0)
        if outputs is None:
            self._rows.empty_tile(*key)
            return []
        return self._rows.write_tile(*key, outputs)

    def _collect(self, *, wait: bool = False) -> None:
        """Collect finished spills and advance the durable-row mark."""
        self._spills.reap(wait=wait)
        self._rows.advance(wait=wait)

    def _unsynced_paths(self) -> list[str]:
        return self._rows.take_written() + super()._unsynced_paths()

    def flush_parts(self) -> list[str]:
        """Not available: only a :class:`WorkerCanvas` ends with ``flush_parts()``."""
        raise InvalidDataError(
            "flush_parts() ends a worker canvas (role='worker'); this canvas is finalised "
            "with finalize()"
        )

    # -- finishing ------------------------------------------------------------------------
    def finalize(self, *, commit: bool = True) -> dict[str, ImageInfo]:
        """Write every head as an OME-Zarr image with a pyramid and clean up.

        Remaining rows are normalised (spilled contributions summed back in) and written,
        the pyramid levels are built from level 0, the images are put in the node as
        ``<head>.ome.zarr`` with ``canvas.json`` beside them, the node is committed (unless
        ``commit=False``) and the spill data is removed.

        Returns
        -------
        dict[str, ImageInfo]
            The written image of each head.
        """
        with storage_errors(self._loc):
            self._check_open()
            self._finalize_rows(self.spec.grid[0])
            self._spills.reap(wait=True)
            self._drain()
            self._store.drop_idle()  # accumulators are not needed any more
            infos = self._rows.publish(self.node, workers=self._workers, progress=self.progress)
            self.node.save_json(
                CANVAS_JSON,
                {
                    "kind": "canvas",
                    **self._spec_json,
                    "images": {name: f"{name}.ome.zarr" for name in self.spec.heads},
                    "batches": self._batches_done,
                },
            )
            self._finalized = True
            if commit:
                self.node.commit()
            remove_parts(self._parts_root, [info.name for info in self._canvas_parts()])
            self._staging.remove()
            self._shutdown()
            return infos

    _finish = finalize


def _worker_canvas(
    node: Node | Location | str,
    shape: tuple[int, int],
    heads: Mapping[str, HeadSpec | tuple[int, Any] | int],
    *,
    part_prefix: str | None = None,
    memory_budget: int | str | None = None,
    workers: int = 2,
    order: Order = "any",
    **options: Any,
) -> WorkerCanvas:
    """``Canvas(..., role="worker")``: the :class:`WorkerCanvas` of those arguments."""
    given = [options.get("adopt"), options.get("checkpoint_every")]
    if options.get("resume") or any(v is not None for v in given):
        raise InvalidDataError(
            "a worker canvas only writes spill parts: resume, adopt and "
            "checkpoint_every are for role='canvas'"
        )
    if part_prefix is None:
        raise InvalidDataError(
            "a worker canvas needs part_prefix, unique per worker attempt "
            "(e.g. 'task-0007-3f9a2c1b')"
        )
    for option in ("resume", "adopt", "checkpoint_every", "progress"):
        options.pop(option, None)
    spec = CanvasSpec(shape, heads, order=order, **options)
    return WorkerCanvas(
        node, spec, part_prefix=part_prefix, memory_budget=memory_budget, workers=workers
    )
