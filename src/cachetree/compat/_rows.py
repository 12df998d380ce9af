"""Row blocks: merging a row of aligned patches, and spilling row blocks to Zarr."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr
from tqdm import tqdm

from ..errors import ShapeMismatchError
from ._batch import FLAT_KEYS, as_boxes, predicted_flags

#: Attribute marking a spill group that :func:`save_multitask_to_cache` created itself, so
#: that the vertical merge may remove it once it holds nothing any more.
SPILL_MARK = "cachetree_compat_spill"


class _SpanBuffer(np.ndarray):
    """Backing store of ``output_locs_y``: appended to in place, grown by doubling."""

    filled: int = 0


def _new_spans(capacity: int, dtype: Any) -> _SpanBuffer:
    buffer = _SpanBuffer((max(capacity, 64), 2), dtype)
    buffer.filled = 0
    return buffer


def _append_spans(old: np.ndarray | None, new: np.ndarray) -> np.ndarray:
    """``concatenate(old, new)``, amortised O(len(new)) when ``old`` came from here.

    TIAToolbox concatenates the whole ``output_locs_y`` (one row per patch) at every row
    merge, which costs O(locations) per row; this keeps the same values and shape.
    """
    root = old
    while root is not None and root.base is not None:
        root = root.base
    ours = (
        isinstance(root, _SpanBuffer)
        and old.ndim == 2
        and len(old) == root.filled
        and old.dtype == root.dtype == new.dtype
        and old.__array_interface__["data"][0] == root.__array_interface__["data"][0]
    )
    if not ours:
        before = np.empty((0, 2), new.dtype) if old is None else np.asarray(old).reshape(-1, 2)
        root = _new_spans(2 * (len(before) + len(new)), np.result_type(before, new))
        root[: len(before)] = before
        root.filled = len(before)
    filled = root.filled
    if filled + len(new) > len(root):
        grown = _new_spans(max(2 * len(root), filled + len(new)), root.dtype)
        grown[:filled] = root[:filled]
        root = grown
    root[filled : filled + len(new)] = new
    root.filled = filled + len(new)
    return root[: root.filled].view(np.ndarray)


def _merge_row(
    blocks: np.ndarray, boxes: np.ndarray, width: int, flags: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """One row block of sums (head dtype) and hit counts (uint8), as TIAToolbox builds it.

    Patches are added left to right into zeros, so the float results are bit for bit
    TIAToolbox's. A gap gets no weight: with ``flags`` the gaps are known; without, an
    all-zero block is taken for one (TIAToolbox's rule).
    """
    height, channels = blocks.shape[1], blocks.shape[3]
    row = np.zeros((height, width, channels), blocks.dtype)
    hits = np.zeros((height, width, 1), np.uint8)
    for j, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        if (not flags[j]) if flags is not None else (not blocks[j].any()):
            continue
        x1 = min(x1, width)
        if x1 <= x0:
            continue
        row[0 : y1 - y0, x0:x1] += blocks[j, 0 : y1 - y0, 0 : x1 - x0]
        hits[0 : y1 - y0, x0:x1, 0] += 1
    return row, hits


def stacked(blocks: list[np.ndarray], rows_per_chunk: int | None = None) -> da.Array:
    """A dask array stacking ``blocks`` along axis 0, one chunk each (no copy).

    ``da.from_array`` copies a numpy input; this graph holds the blocks themselves. With
    ``rows_per_chunk`` a single block is cut into chunks of that many rows (views) instead.
    The blocks are also kept on the array, so that our own readers skip dask.
    """
    if rows_per_chunk is not None:
        (whole,) = blocks
        starts = range(0, max(len(whole), 1), rows_per_chunk)
        blocks = [whole[start : start + rows_per_chunk] for start in starts]
    name = f"cachetree-compat-{uuid.uuid4().hex}"
    tail = (0,) * (blocks[0].ndim - 1)
    graph = {(name, i, *tail): block for i, block in enumerate(blocks)}
    chunks = (tuple(len(b) for b in blocks), *((n,) for n in blocks[0].shape[1:]))
    array = da.Array(graph, name, chunks, dtype=blocks[0].dtype)
    array._compat_blocks = blocks
    return array


def row_blocks(rows: Any) -> Iterator[np.ndarray]:
    """The chunks of ``rows`` along axis 0 as numpy arrays, one at a time."""
    blocks = getattr(rows, "_compat_blocks", None)
    if blocks is not None and sum(len(b) for b in blocks) == rows.shape[0]:
        yield from blocks
    elif isinstance(rows, da.Array):
        for b in range(rows.numblocks[0]):
            yield np.asarray(rows.blocks[b].compute(scheduler="sync"))
    else:
        yield np.asarray(rows)


def _materialise(patches: Any) -> np.ndarray:
    """Patches as numpy; a dask array (aligned batches spilled to Zarr) without threads."""
    if isinstance(patches, da.Array):
        return np.asarray(patches.compute(scheduler="sync"))
    return np.asarray(patches)


def _stack(old: da.Array | None, new: np.ndarray) -> da.Array:
    if old is not None and old.shape[1:] != new.shape[1:]:
        raise ShapeMismatchError(
            f"row block {new.shape} does not match the rows before it {old.shape}: pass "
            "canvas_width so that every row has the same width"
        )
    if old is None:
        return stacked([new])
    blocks = getattr(old, "_compat_blocks", None)
    if blocks is None or sum(len(b) for b in blocks) != old.shape[0]:
        return da.concatenate([old, stacked([new])], axis=0)  # e.g. TIAToolbox's row blocks
    return stacked([*blocks, new])


def merge_multitask_horizontal(
    canvas: list[None] | list[da.Array],
    count: list[None] | list[da.Array],
    output_locs_y: np.ndarray,
    canvas_np: list[np.ndarray],
    output_locs: np.ndarray,
    change_indices: np.ndarray | list[int],
    canvas_width: int | None = None,
) -> tuple[list[da.Array], list[da.Array], list[np.ndarray], np.ndarray, np.ndarray]:
    """Merge runs of aligned patches (one row each) into per-head row blocks.

    Same parameters, defaults and results as TIAToolbox 2.1.3's function of this name.
    Each segment of ``output_locs`` ending at an index of ``change_indices`` is one row: its
    patches are summed (left to right, in the head's dtype) into a block of the patch
    height and ``canvas_width`` (default: ``max(x1) - min(x0)`` of the row) with a uint8 hit
    count; patches reaching past the width are clipped. Gaps get no weight: the slots that
    :func:`~cachetree.compat.prepare_multitask_full_batch` padded are skipped (when
    ``output_locs`` comes from it), otherwise all-zero blocks are.

    The blocks are appended to ``canvas[idx]`` and ``count[idx]``: dask arrays of stacked
    rows, ``(N_rows * H, W, C)`` and ``(N_rows * H, W, 1)``, one chunk per row. The merged
    patches are removed from ``canvas_np[idx]``. The three lists are updated in place and
    returned, as in TIAToolbox.

    Returns
    -------
    tuple
        ``canvas, count, canvas_np, output_locs, output_locs_y``: ``output_locs`` without
        the merged patches; ``output_locs_y`` extended by ``[y0, y1]`` of every merged
        patch.
    """
    if not len(canvas_np):
        return canvas, count, canvas_np, np.empty(0), np.empty(0)
    locs = np.asarray(output_locs)
    flags = predicted_flags(output_locs)
    spans = output_locs_y
    pending = list(canvas_np)
    start = 0
    for end in (int(i) for i in change_indices):
        n = end - start
        seg = locs[:n]
        width = (
            int(canvas_width)
            if canvas_width is not None
            else int(seg[:, 2].max() - seg[:, 0].min())
        )
        seg_flags = None if flags is None else flags[:n]
        for idx, patches in enumerate(pending):
            row, hits = _merge_row(_materialise(patches[:n]), seg, width, seg_flags)
            canvas[idx] = _stack(canvas[idx], row)
            count[idx] = _stack(count[idx], hits)
            pending[idx] = patches[n:]
        spans = _append_spans(spans, seg[:, (1, 3)].view(np.ndarray))
        locs = locs[n:]
        flags = None if flags is None else flags[n:]
        start = end
    for idx, patches in enumerate(pending):
        canvas_np[idx] = patches
    return canvas, count, canvas_np, as_boxes(locs, flags), spans


def _open_spill_group(save_path: str | Path) -> zarr.Group:
    """The group at ``save_path``; marked as ours when this call creates it."""
    existed = os.path.exists(save_path)
    group = zarr.open_group(str(save_path), mode="a")
    if not existed:
        group.attrs[SPILL_MARK] = True
    return group


def save_multitask_to_cache(
    canvas: list[da.Array],
    count: list[da.Array],
    canvas_zarr: list[zarr.Array | None],
    count_zarr: list[zarr.Array | None],
    save_path: str | Path = "temp.zarr",
    *,
    verbose: bool = True,
) -> tuple[list[zarr.Array], list[zarr.Array]]:
    """Append the row blocks of every head to Zarr arrays (``canvas/<idx>``, ``count/<idx>``).

    Same parameters, defaults and results as TIAToolbox 2.1.3's function of this name. A
    head's arrays are created in the group at ``save_path`` on its first spill (chunked
    like the row axis of ``canvas``, dtype of the rows, uncompressed: they are temporary)
    and appended to afterwards. Rows are computed one dask block at a time. ``canvas_zarr``
    and ``count_zarr`` are updated in place and returned. Heads whose ``canvas`` entry is
    None are left as they are. :func:`~cachetree.compat.merge_multitask_vertical_chunkwise`
    deletes these arrays once it has merged them (and the group, if this function created
    it and nothing else is left in it).
    """
    heads = tqdm(canvas, leave=False, desc="Memory Overload, Spilling to disk", disable=not verbose)
    group: zarr.Group | None = None
    for idx, values in enumerate(heads):
        hits = count[idx]
        if values is None or hits is None:
            continue
        if values.shape[0] != hits.shape[0]:
            raise ShapeMismatchError(
                f"head {idx}: canvas {values.shape} and count {hits.shape} do not match"
            )
        for name, rows, store in (("canvas", values, canvas_zarr), ("count", hits, count_zarr)):
            if store[idx] is None:
                group = group if group is not None else _open_spill_group(save_path)
                store[idx] = group.create_array(
                    f"{name}/{idx}",
                    shape=(0, *rows.shape[1:]),
                    chunks=(_rows_per_chunk(rows), *rows.shape[1:]),
                    dtype=rows.dtype,
                    compressors=None,
                    chunk_key_encoding=FLAT_KEYS,
                    overwrite=True,
                )
            _append_rows(store[idx], rows)
    return canvas_zarr, count_zarr


def _rows_per_chunk(rows: Any) -> int:
    chunks = getattr(rows, "chunks", None)
    return int(chunks[0][0]) if chunks else max(int(rows.shape[0]), 1)


def _append_rows(target: Any, rows: Any) -> None:
    if tuple(target.shape[1:]) != tuple(rows.shape[1:]):
        raise ShapeMismatchError(
            f"rows {rows.shape[1:]} do not match the spilled rows {tuple(target.shape[1:])}"
        )
    start = target.shape[0]
    target.resize((start + rows.shape[0], *target.shape[1:]))
    for block in row_blocks(rows):
        target[start : start + len(block)] = block
        start += len(block)
