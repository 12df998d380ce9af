"""A lazy, normalised view of a canvas from what is on disk, for any process.

:func:`open_canvas` needs only the node's location. Before :meth:`Canvas.finalize
<cachetree.canvas.Canvas.finalize>` it combines the rows already written to the staging
level 0 with the spilled accumulators (summed and divided on the fly, tile by tile, when
dask asks for a chunk); afterwards it returns the finished images. Tiles still held in the
writer's memory are not on disk and show the fill value: call ``canvas.checkpoint()`` in the
writer to make everything visible. A canvas merged by several processes
(:mod:`cachetree.canvas.cluster`) shows the tasks finished so far: only spill parts that a
task marker lists count, so parts of unfinished or killed attempts never do.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import zarr

from ..errors import CacheTreeError, NodeNotFoundError
from ..fs.location import Location
from ..images.ngff import open_image
from ..tree.node import NodeLike, location_of
from ..tree.parts import PartInfo, list_parts, parts_location
from .checkpoint import newest_checkpoint
from .cluster.output import OutputImages
from .kinds import (
    CANVAS_JSON,
    CHECKPOINT_KIND,
    PLAN_KIND,
    PROGRESS,
    SPILL_KIND,
    STAGING,
    STAGING_KIND,
    TASK_KIND,
)
from .normalise import normalise_block
from .preview import read_preview_pointer
from .spec import HeadSpec
from .spill import SpillRef, add_spilled_tile

__all__ = [
    "CanvasPyramid",
    "CanvasState",
    "canvas_state",
    "is_canvas",
    "open_canvas",
    "open_canvas_pyramid",
]

log = logging.getLogger("cachetree")


@dataclass(frozen=True)
class CanvasState:
    """What is on disk of a canvas.

    Attributes
    ----------
    spec
        The canvas spec (shape, heads, tile, weights, order, fill value, ...).
    finalized
        Whether the canvas was finalised (its heads are OME-Zarr images of the node).
    rows_final
        Tile rows whose normalised level 0 is complete in the staging area.
    spill_parts
        Number of spill parts on disk.
    batches_done
        Batches covered by the newest checkpoint (None without a checkpoint).
    tasks_done, tasks_total
        Of a canvas merged by several processes: tasks finished so far, and planned (None
        otherwise, and ``tasks_total`` also when no plan was written).
    preview
        The newest preview pointer (``preview.json``: folder, factor, display ranges, ...),
        or None (a finalised canvas, or one written before previews existed).
    """

    spec: dict[str, Any]
    finalized: bool
    rows_final: int
    spill_parts: int
    batches_done: int | None
    tasks_done: int | None = None
    tasks_total: int | None = None
    preview: dict[str, Any] | None = None

    @property
    def merged(self) -> float | None:
        """Share of the canvas merged so far, 0..1 (None when unknown).

        A finalised canvas is 1; a canvas merged by several processes counts its finished
        tasks; otherwise the preview says how much of the canvas patches reached (row-major:
        at least the share above the newest batch).
        """
        if self.finalized:
            return 1.0
        if self.tasks_done is not None and self.tasks_total:
            return self.tasks_done / self.tasks_total
        if self.preview is not None and "merged" in self.preview:
            return float(self.preview["merged"])
        return None

    def value_range(self, head: str) -> list[list[float]] | None:
        """Per-channel ``[low, high]`` of ``head`` to display it with, from the preview."""
        if self.preview is None:
            return None
        return self.preview.get("ranges", {}).get(head)


def _read_json(loc: Location) -> Any | None:
    try:
        return json.loads(loc.read_bytes())
    except (NodeNotFoundError, OSError, ValueError):
        return None


def _load(loc: Location) -> tuple[dict[str, Any] | None, list[PartInfo], int]:
    """Final canvas.json (or None), the canvas parts, and the durable tile rows.

    With task markers (several merging processes), the spill parts no marker lists are
    left out: they belong to attempts that are still running or were killed.
    """
    final = _read_json(loc.raw_child(CANVAS_JSON))
    if isinstance(final, dict) and "images" in final:
        return final, [], 0
    loc.fs.invalidate_cache(parts_location(loc).path)  # other processes write the parts
    kinds = (SPILL_KIND, CHECKPOINT_KIND, STAGING_KIND, TASK_KIND, PLAN_KIND)
    parts = list_parts(loc, kind=kinds)
    if any(p.kind in (TASK_KIND, PLAN_KIND) for p in parts):
        listed = {n for p in parts if p.kind == TASK_KIND for n in p.meta.get("spill_parts", ())}
        parts = [p for p in parts if p.kind != SPILL_KIND or p.name in listed]
    progress = _read_json(parts_location(loc).raw_child(STAGING).raw_child(PROGRESS)) or {}
    return None, parts, int(progress.get("rows_final", 0))


def canvas_state(source: NodeLike) -> CanvasState:
    """Summary of the canvas stored in a node (reads only small metadata files).

    Raises
    ------
    NodeNotFoundError
        The node holds no canvas.
    """
    loc = location_of(source)
    return _state(loc, *_load(loc))


def _state(
    loc: Location, final: dict[str, Any] | None, parts: list[PartInfo], rows: int
) -> CanvasState:
    if final is not None:
        return CanvasState(final, True, -(-final["shape"][0] // final["tile"]), 0, None)
    spec = _spec_from_parts(parts, loc)
    newest = newest_checkpoint(parts)
    plans = [p for p in parts if p.kind == PLAN_KIND]
    distributed = bool(plans) or any(p.kind == TASK_KIND for p in parts)
    return CanvasState(
        spec,
        False,
        rows,
        sum(p.kind == SPILL_KIND for p in parts),
        None if newest is None else int(newest.meta["batches_done"]),
        tasks_done=sum(p.kind == TASK_KIND for p in parts) if distributed else None,
        tasks_total=len(plans[0].meta.get("tasks", ())) if plans else None,
        preview=read_preview_pointer(parts_location(loc).raw_child(STAGING)),
    )


def is_canvas(source: NodeLike) -> bool:
    """Whether the node holds a canvas, finished or in progress. Never raises."""
    try:
        canvas_state(source)
        return True
    except Exception:
        return False


def _spec_from_parts(parts: list[PartInfo], loc: Location) -> dict[str, Any]:
    for kind in (STAGING_KIND, PLAN_KIND, CHECKPOINT_KIND, TASK_KIND, SPILL_KIND):
        for part in parts:
            if part.kind == kind and isinstance(part.meta.get("canvas"), dict):
                return part.meta["canvas"]
    raise NodeNotFoundError(f"{loc.url} holds no canvas (no canvas parts, no {CANVAS_JSON})")


def open_canvas(source: NodeLike) -> dict[str, da.Array]:
    """The canvas in a node as one lazy dask array per head, normalised.

    Shapes are ``(C, H, W)``, or ``(H, W)`` for one-channel heads, in the head dtype,
    chunked by canvas tile. Works while the canvas is being written (from another process,
    e.g. a viewer) and after it was finalised.

    Parameters
    ----------
    source
        The node, its location or its URL.

    Raises
    ------
    NodeNotFoundError
        The node holds no canvas.
    """
    loc = location_of(source)
    final, parts, rows_final = _load(loc)
    if final is not None:
        return {head: open_image(loc.join(path))[0] for head, path in final["images"].items()}
    return _level0_views(loc, parts, rows_final)


def _level0_views(loc: Location, parts: list[PartInfo], rows_final: int) -> dict[str, da.Array]:
    spec = _spec_from_parts(parts, loc)
    tile = int(spec["tile"])
    index: dict[tuple[int, int], list[tuple[PartInfo, SpillRef]]] = {}
    spills = sorted((p for p in parts if p.kind == SPILL_KIND), key=lambda p: p.meta.get("seq", -1))
    for part in spills:
        for ty, tx, y0, x0, y1, x1 in part.meta.get("tiles", []):
            if ty >= rows_final:
                index.setdefault((ty, tx), []).append((part, SpillRef(part.name, y0, x0, y1, x1)))
    staging = parts_location(loc).raw_child(STAGING)
    has_staging = any(p.kind == STAGING_KIND for p in parts)
    owned = _written_by_tasks(parts)
    token = uuid.uuid4().hex[:12]
    views = {}
    for head, head_spec in spec["heads"].items():
        source_array = _HeadSource(
            node=loc,
            spec=spec,
            head=head,
            head_spec=HeadSpec(head_spec["channels"], head_spec["dtype"]),
            index=index,
            rows_final=rows_final if has_staging else 0,
            staging=staging.raw_child(f"{head}.ome.zarr"),
            owned=owned,
            output=OutputImages.image_location(loc, head),
        )
        chunks = (tile, tile) if source_array.ndim == 2 else (source_array.shape[0], tile, tile)
        views[head] = da.from_array(
            source_array,
            chunks=chunks,
            asarray=False,
            fancy=False,
            meta=np.empty((0,) * source_array.ndim, source_array.dtype),
            name=f"canvas-view-{head}-{token}",
        )
    return views


def _written_by_tasks(parts: list[PartInfo]) -> frozenset[tuple[int, int]]:
    """Tiles of a cluster merge that finished tasks wrote into its output images: those of
    the segments the plan gives them."""
    plan = next((p for p in parts if p.kind == PLAN_KIND), None)
    if plan is None or "segment" not in plan.meta:
        return frozenset()
    planned = [tid for tid, _ in plan.meta["tasks"]]
    done = {p.meta.get("task") for p in parts if p.kind == TASK_KIND}
    indices = [i for i, tid in enumerate(planned) if tid in done]
    owners, segment = np.asarray(plan.read("owners")), int(plan.meta["segment"])
    columns = -(-int(plan.meta["canvas"]["shape"][1]) // int(plan.meta["canvas"]["tile"]))
    return frozenset(
        (int(ty), tx)
        for ty, sx in np.argwhere(np.isin(owners, indices))
        for tx in range(int(sx) * segment, min((int(sx) + 1) * segment, columns))
    )


class _HeadSource:
    """Array-like over one head: each read normalises the tiles it covers."""

    def __init__(
        self,
        *,
        node: Location,
        spec: Mapping[str, Any],
        head: str,
        head_spec: HeadSpec,
        index: Mapping[tuple[int, int], list[tuple[PartInfo, SpillRef]]],
        rows_final: int,
        staging: Location,
        owned: frozenset[tuple[int, int]] = frozenset(),
        output: Location | None = None,
    ):
        self.node = node
        self.head = head
        self.channels = channels = head_spec.channels
        self.dtype = head_spec.dtype
        self.acc_dtype = head_spec.acc_dtype
        self.height, self.width = (int(v) for v in spec["shape"])
        self.tile = int(spec["tile"])
        fill = spec.get("fill_value", 0.0)
        self.fill = float(fill)
        self.index = index
        self.rows_final = rows_final
        self.staging = staging
        self.owned = owned
        self.output = output
        self._level0: dict[str, Any] = {}
        self._finished: Location | None = None
        self.shape = (
            (self.height, self.width) if channels == 1 else (channels, self.height, self.width)
        )
        self.ndim = len(self.shape)

    def _written_tile(self, image: Location, ty: int, tx: int) -> np.ndarray:
        """Tile ``(ty, tx)`` of level 0 of a written image (the staging one, or the cluster
        tasks' output), ``(C, th, tw)``."""
        array = self._level0.get(image.path)
        if array is None:
            array = zarr.open_array(image.raw_child("0").zarr_store(read_only=True), mode="r")
            self._level0[image.path] = array
        T = self.tile
        th, tw = self._tile_size(ty, tx)
        region = (slice(ty * T, ty * T + th), slice(tx * T, tx * T + tw))
        return np.asarray(array[(Ellipsis, *region)]).reshape(self.channels, th, tw)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        if any(not isinstance(k, slice) or k.step not in (None, 1) for k in key):
            raise IndexError("the canvas view supports plain slices only")
        ys = range(self.height)[key[-2]]
        xs = range(self.width)[key[-1]]
        cs = range(self.channels)[key[0]] if self.ndim == 3 else range(1)
        out = np.empty((len(cs), len(ys), len(xs)), self.dtype)
        if len(ys) and len(xs) and len(cs):
            T = self.tile
            for ty in range(ys.start // T, (ys.stop - 1) // T + 1):
                for tx in range(xs.start // T, (xs.stop - 1) // T + 1):
                    block = self._tile(ty, tx)  # (C, th, tw)
                    y0, y1 = max(ys.start, ty * T), min(ys.stop, (ty + 1) * T)
                    x0, x1 = max(xs.start, tx * T), min(xs.stop, (tx + 1) * T)
                    out[:, y0 - ys.start : y1 - ys.start, x0 - xs.start : x1 - xs.start] = block[
                        cs.start : cs.stop, y0 - ty * T : y1 - ty * T, x0 - tx * T : x1 - tx * T
                    ]
        return out if self.ndim == 3 else out[0]

    def _tile(self, ty: int, tx: int) -> np.ndarray:
        try:
            return self._tile_while_merging(ty, tx)
        except (CacheTreeError, OSError) as exc:
            # The merge moved on since this view was made: the writer consumed the spill part
            # (its row was written) or finalised the canvas (the staging area is gone).
            log.debug("canvas view: tile %s changed while reading (%s)", (ty, tx), exc)
            return self._tile_moved_on(ty, tx)

    def _tile_while_merging(self, ty: int, tx: int) -> np.ndarray:
        if ty < self.rows_final:
            return self._written_tile(self.staging, ty, tx)
        if (ty, tx) in self.owned and self.output is not None:
            return self._written_tile(self.output, ty, tx)
        refs = self.index.get((ty, tx), [])
        if not refs:
            return self._fill_tile(ty, tx)
        th, tw = self._tile_size(ty, tx)
        sums = np.zeros((th, tw, self.channels), self.acc_dtype)
        weight = np.zeros((th, tw), np.float32)
        for part, ref in refs:
            add_spilled_tile(part, ref, (ty, tx), self.tile, weight, {self.head: sums})
        fill = self.fill if math.isfinite(self.fill) or self.dtype.kind == "f" else 0
        return normalise_block(sums, weight, self.dtype, fill)

    def _tile_moved_on(self, ty: int, tx: int) -> np.ndarray:
        """The tile from the finished image, else from the staging rows, else the fill."""
        if self._finished is None:  # looked up until the canvas is finalised, then kept
            final = _read_json(self.node.raw_child(CANVAS_JSON))
            images = final.get("images", {}) if isinstance(final, dict) else {}
            if self.head in images:
                self._finished = self.node.join(images[self.head])
        try:
            return self._written_tile(self._finished or self.staging, ty, tx)
        except (CacheTreeError, OSError):
            return self._fill_tile(ty, tx)

    def _tile_size(self, ty: int, tx: int) -> tuple[int, int]:
        """Height and width of tile ``(ty, tx)`` (smaller at the bottom and right edges)."""
        T = self.tile
        return min(T, self.height - ty * T), min(T, self.width - tx * T)

    def _fill_tile(self, ty: int, tx: int) -> np.ndarray:
        return np.full((self.channels, *self._tile_size(ty, tx)), self.fill, self.dtype)


@dataclass(frozen=True)
class CanvasPyramid:
    """A canvas as lazy pyramids, and the state they were read at.

    Attributes
    ----------
    state
        What is on disk (:func:`canvas_state`).
    levels
        Head name to its levels, finest first, each half the size of the one before
        (``(C, H, W)`` or ``(H, W)``, chunked by canvas tile). A finalised canvas gives its
        stored pyramids. A canvas in progress gives the normalised level 0 of
        :func:`open_canvas`, then the preview: levels finer than the preview factor F show
        the preview's F x F blocks enlarged, the others are the stored preview pyramid.
        Without a preview (canvases written by older versions) only level 0 is given.
    """

    state: CanvasState
    levels: dict[str, list[da.Array]]


def open_canvas_pyramid(source: NodeLike) -> CanvasPyramid:
    """The canvas in a node as lazy pyramids, reading only small metadata files.

    Opening shows a canvas of any size at once: the coarse levels of a canvas in progress
    come from its preview, so a viewer zoomed out reads a few small chunks, and a viewer
    zoomed in reads the level-0 tiles on screen.

    Raises
    ------
    NodeNotFoundError
        The node holds no canvas.
    """
    loc = location_of(source)
    final, parts, rows_final = _load(loc)
    state = _state(loc, final, parts, rows_final)
    if final is not None:
        images = final["images"].items()
        return CanvasPyramid(state, {head: open_image(loc.join(path)) for head, path in images})
    views = _level0_views(loc, parts, rows_final)
    pointer = state.preview
    if pointer is None:
        return CanvasPyramid(state, {head: [view] for head, view in views.items()})
    folder = parts_location(loc).raw_child(STAGING).raw_child(pointer["folder"])
    factor = int(pointer["factor"])
    levels = {}
    for head, view in views.items():
        preview = open_image(folder.raw_child(f"{head}.ome.zarr"))
        enlarged = []
        step = 2
        while step < factor:
            enlarged.append(_enlarged(preview[0], factor // step, view, step))
            step *= 2
        levels[head] = [view, *enlarged, *preview]
    return CanvasPyramid(state, levels)


def _enlarged(preview: da.Array, ratio: int, level0: da.Array, step: int) -> da.Array:
    """A level ``step`` times smaller than ``level0``, drawn from the preview (``ratio``
    times coarser) by repeating each preview pixel ``ratio`` times in y and x."""
    *lead, height, width = level0.shape
    shape = (*lead, -(-height // step), -(-width // step))
    source = _Enlarged(preview, ratio, shape)
    tile = level0.chunksize[-1]
    chunks = (*lead, tile, tile)
    return da.from_array(
        source,
        chunks=chunks,
        asarray=False,
        fancy=False,
        meta=np.empty((0,) * len(shape), preview.dtype),
        name=f"canvas-enlarged-{ratio}-{preview.name}",
    )


class _Enlarged:
    """Array-like: the preview's pixels repeated ``ratio`` times, cropped to ``shape``."""

    def __init__(self, preview: da.Array, ratio: int, shape: tuple[int, ...]):
        self.preview = preview
        self.ratio = ratio
        self.shape = shape
        self.ndim = len(shape)
        self.dtype = preview.dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        lead = key[:-2]
        ys = range(self.shape[-2])[key[-2]]
        xs = range(self.shape[-1])[key[-1]]
        r = self.ratio
        py0, py1 = ys.start // r, (ys.stop - 1) // r + 1
        px0, px1 = xs.start // r, (xs.stop - 1) // r + 1
        block = np.asarray(
            self.preview[(*lead, slice(py0, py1), slice(px0, px1))].compute(scheduler="sync")
        )
        block = block.repeat(r, axis=-2).repeat(r, axis=-1)
        y0, x0 = ys.start - py0 * r, xs.start - px0 * r
        return block[..., y0 : y0 + len(ys), x0 : x0 + len(xs)]
