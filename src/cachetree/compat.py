"""Drop-in versions of the multi-head merge helpers of the seed pipeline.

A whole-slide inference loop written against the seed's functions keeps working after
changing the import to ``from cachetree.compat import ...``:

* :func:`prepare_multitask_full_batch` aligns a batch to the global location order,
  zero-pads the locations that were never sent (masked out) and the tail on the last batch,
  and keeps the aligned batch on disk (Zarr) when memory is short;
* :func:`merge_multitask_horizontal` merges a run of patches into one row block per head
  (weighted sums and hit counts);
* :func:`save_multitask_to_cache` spills row blocks to Zarr datasets, created on the first
  spill and appended to afterwards;
* :func:`merge_multitask_vertical_chunkwise` merges the row blocks vertically and
  normalises them with a :class:`~cachetree.canvas.Canvas`: correct for any stride (a row
  may overlap many rows below it), with bounded memory, written as OME-Zarr into a cache
  node.

Differences from the seed, all fixes: hit counts are float32 (a uint8 count wraps after
255 hits); padding has each head's dtype; the location lookup only looks at the front of
``full_output_locs`` (work per batch does not grow with the number of locations); rows that
overlap more than their neighbour are merged correctly. As in the seed, zero-padded gaps
count as patches of zeros when rows are merged.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import psutil
import zarr
from tqdm import tqdm

from .canvas import Canvas, HeadSpec
from .errors import InvalidDataError, KeyLookupError, ShapeMismatchError
from .fs.location import Location
from .images.ngff import open_image
from .tree.node import Node

__all__ = [
    "merge_multitask_horizontal",
    "merge_multitask_vertical_chunkwise",
    "prepare_multitask_full_batch",
    "save_multitask_to_cache",
]


def _concat(old: np.ndarray | None, new: np.ndarray) -> np.ndarray:
    if old is None or len(old) == 0:
        return np.asarray(new)
    return np.concatenate([old, new], axis=0)


def _memory_short(nbytes: int, canvas_np: Any, memory_threshold: float) -> bool:
    """Whether holding ``nbytes`` more (beside ``canvas_np``) crosses the threshold."""
    held = 0
    for arr in canvas_np or ():
        if isinstance(arr, np.ndarray):
            held += arr.nbytes
    vm = psutil.virtual_memory()
    share = 100.0 * (held + nbytes) / max(vm.available, 1)
    return share > memory_threshold or vm.percent > memory_threshold


def _match_front(batch_locs: np.ndarray, full: np.ndarray) -> np.ndarray:
    """Index in ``full`` of every row of ``batch_locs``, looking only as far as needed.

    The lookup grows over the front of ``full`` (doubling its window) until every batch
    location is found, so the work is proportional to the rows consumed, not to ``len(full)``.
    """
    wanted = [tuple(row) for row in batch_locs.tolist()]
    if len(set(wanted)) != len(wanted):
        raise InvalidDataError("batch_locs repeat a location: each location must appear once")
    lookup: dict[tuple[Any, ...], int] = {}
    scanned = 0
    window = max(2 * len(wanted), 64)
    missing = set(wanted)
    while missing and scanned < len(full):
        stop = min(len(full), scanned + window)
        for offset, row in enumerate(full[scanned:stop].tolist()):
            key = tuple(row)
            if key in missing:
                lookup[key] = scanned + offset
                missing.discard(key)
        scanned = stop
        window *= 2
    if missing:
        example = next(iter(missing))
        raise KeyLookupError(
            f"{len(missing)} batch location(s), e.g. {list(example)}, are not among the "
            f"{len(full)} remaining output locations: batches must follow the order of "
            "full_output_locs and each location may be sent once"
        )
    return np.fromiter((lookup[key] for key in wanted), dtype=np.int64, count=len(wanted))


def prepare_multitask_full_batch(
    batch_output: Sequence[np.ndarray],
    batch_locs: np.ndarray,
    full_output_locs: np.ndarray,
    output_locs: np.ndarray | None,
    canvas_np: Sequence[np.ndarray | zarr.Array] | None = None,
    save_path: str | Path = "temp_fullbatch",
    memory_threshold: int = 80,
    *,
    is_last: bool,
) -> tuple[list[np.ndarray | zarr.Array], np.ndarray, np.ndarray]:
    """Align patch predictions to the global output order and pad the gaps with zeros.

    Parameters
    ----------
    batch_output
        One ``(N, H, W, C)`` array per head for the batch.
    batch_locs
        ``(N, 4)`` output locations of the batch; each must be a row of ``full_output_locs``.
    full_output_locs
        The locations not consumed yet, in canonical order; consumed from the front.
    output_locs
        Locations consumed so far (None or empty on the first call).
    canvas_np
        Per-head arrays accumulated so far; their size counts when deciding whether the
        aligned batch is kept in memory or on disk.
    save_path
        Directory in which a unique sub-folder holds the aligned batch when it goes to disk.
    memory_threshold
        Percentage of available memory (or of system memory in use) above which the aligned
        batch is written to Zarr instead of being held in RAM.
    is_last
        Last batch: the remaining locations are appended to ``output_locs`` and the outputs
        are zero-padded to match.

    Returns
    -------
    full_batch_output : list of numpy.ndarray or zarr.Array
        Per head, ``(M, H, W, C)`` with ``M`` the locations consumed (plus the tail when
        ``is_last``); locations missing from the batch are zeros of the head's dtype.
    full_output_locs : numpy.ndarray
        The unconsumed rest (a view, not a copy).
    output_locs : numpy.ndarray
        ``output_locs`` extended by the consumed locations.

    Raises
    ------
    ShapeMismatchError
        Heads disagree on the patch count, or batch_locs does not match it.
    KeyLookupError
        A batch location is not among the remaining locations.
    """
    heads = [np.asarray(h) for h in batch_output]
    if not heads:
        raise InvalidDataError("batch_output needs at least one head")
    locs = np.asarray(batch_locs)
    full = np.asanyarray(full_output_locs)
    if locs.ndim != 2 or (full.ndim != 2 or full.shape[1] != locs.shape[1]):
        raise ShapeMismatchError(
            f"batch_locs {locs.shape} and full_output_locs {full.shape} must be 2-D with the "
            "same row length"
        )
    n = len(locs)
    for idx, head in enumerate(heads):
        if head.ndim < 1 or len(head) != n:
            raise ShapeMismatchError(
                f"head {idx} has {len(head) if head.ndim else 0} patches but batch_locs has {n}"
            )
    matches = _match_front(locs, full) if n else np.zeros(0, np.int64)
    consumed = int(matches.max()) + 1 if n else 0
    tail = len(full) - consumed if is_last else 0
    total = consumed + tail
    nbytes = sum(total * int(np.prod(h.shape[1:], dtype=np.int64)) * h.itemsize for h in heads)
    on_disk = total > 0 and _memory_short(nbytes, canvas_np, memory_threshold)
    group = None
    if on_disk:
        os.makedirs(save_path, exist_ok=True)
        folder = tempfile.mkdtemp(prefix="fullbatch-", dir=save_path)
        group = zarr.open_group(os.path.join(folder, "full_batch.zarr"), mode="w")
    full_batch_output: list[np.ndarray | zarr.Array] = []
    for idx, head in enumerate(heads):
        shape = (total, *head.shape[1:])
        if group is not None:
            target = group.create_array(
                str(idx),
                shape=shape,
                chunks=(1, *head.shape[1:]),
                dtype=head.dtype,
                fill_value=0,
            )
            for row, match in zip(head, matches, strict=True):
                target[int(match)] = row
        else:
            target = np.zeros(shape, head.dtype)
            target[matches] = head
        full_batch_output.append(target)
    output_locs = _concat(output_locs, full[:total])
    return full_batch_output, full[total:], output_locs


def _accumulate_row(
    patches: np.ndarray, boxes: np.ndarray, x_end: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sum one row of patches into ``(h, x_end, C)`` sums and ``(h, x_end, 1)`` counts."""
    h, w, channels = patches.shape[1:]
    sums = np.zeros((h, x_end, channels), np.float32)
    counts = np.zeros((h, x_end, 1), np.float32)
    for patch, (x0, _y0, _x1, _y1) in zip(patches, boxes.tolist(), strict=True):
        a, b = max(int(x0), 0), min(int(x0) + w, x_end)
        if b <= a:
            continue
        sums[:, a:b] += patch[:, a - x0 : b - x0]
        counts[:, a:b] += 1
    return sums, counts


def merge_multitask_horizontal(
    canvas: list[da.Array | None],
    count: list[da.Array | None],
    output_locs_y_: np.ndarray | None,
    canvas_np: list[np.ndarray],
    output_locs: np.ndarray,
    change_indices: np.ndarray | Sequence[int],
) -> tuple[list[da.Array], list[da.Array], list[np.ndarray], np.ndarray, np.ndarray]:
    """Merge runs of patches (one row each) into per-head row blocks of sums and counts.

    Each segment of ``output_locs`` ending at an index of ``change_indices`` is one row:
    its patches are summed into a block of height ``H`` (the patch height) spanning
    ``x = 0 .. max(x1)``, with a float32 hit count. Blocks are appended to ``canvas`` and
    ``count`` (dask arrays of shape ``(N_rows, H, W, C)`` and ``(N_rows, H, W, 1)``), the
    consumed patches are removed from ``canvas_np`` and ``output_locs``, and each row's
    ``[y0, y1]`` is appended to ``output_locs_y_``.

    Returns
    -------
    tuple
        ``canvas, count, canvas_np, output_locs, output_locs_y_``
    """
    canvas, count = list(canvas), list(count)
    canvas_np = list(canvas_np)
    locs = np.asarray(output_locs)
    start = 0
    for end in (int(i) for i in change_indices):
        seg = locs[: end - start]
        if len(seg) == 0:
            continue
        y0s = np.unique(seg[:, 1])
        if len(y0s) != 1:
            raise InvalidDataError(
                f"a row segment holds patches at several y0 {y0s.tolist()}: change_indices "
                "must split output_locs where y0 changes"
            )
        x_end = int(seg[:, 2].max())
        for idx, pending in enumerate(canvas_np):
            patches = np.asarray(pending[: end - start])
            sums, counts = _accumulate_row(patches, seg, x_end)
            block = da.from_array(sums[np.newaxis], chunks=(1, *sums.shape))
            hits = da.from_array(counts[np.newaxis], chunks=(1, *counts.shape))
            canvas[idx], block = _same_width(canvas[idx], block)
            count[idx], hits = _same_width(count[idx], hits)
            canvas[idx] = block if canvas[idx] is None else da.concatenate([canvas[idx], block])
            count[idx] = hits if count[idx] is None else da.concatenate([count[idx], hits])
            canvas_np[idx] = pending[end - start :]
        span = np.array([[int(seg[0, 1]), int(seg[0, 3])]])
        output_locs_y_ = _concat(output_locs_y_, span)
        locs = locs[end - start :]
        start = end
    return canvas, count, canvas_np, locs, output_locs_y_


def _same_width(old: da.Array | None, new: da.Array) -> tuple[da.Array | None, da.Array]:
    """Pad the narrower of two row-block stacks with zeros on the right."""
    if old is None or old.shape[2] == new.shape[2]:
        return old, new
    width = max(old.shape[2], new.shape[2])

    def pad(arr: da.Array) -> da.Array:
        extra = width - arr.shape[2]
        return arr if not extra else da.pad(arr, ((0, 0), (0, 0), (0, extra), (0, 0)))

    return pad(old), pad(new)


def save_multitask_to_cache(
    canvas: list[da.Array | None],
    count: list[da.Array | None],
    canvas_zarr: list[zarr.Array | None],
    count_zarr: list[zarr.Array | None],
    save_path: str | Path = "temp.zarr",
    *,
    verbose: bool = True,
) -> tuple[list[zarr.Array], list[zarr.Array]]:
    """Append accumulated row blocks to Zarr datasets on disk.

    For each head the row blocks of ``canvas`` and ``count`` are computed one dask block at
    a time (never the whole stack at once) and appended to the datasets ``canvas/<idx>``
    and ``count/<idx>`` of the group at ``save_path``, which are created (chunked like the
    row axis of the dask arrays) on the first spill. Values are not normalised here: see
    :func:`merge_multitask_vertical_chunkwise`.

    Parameters
    ----------
    canvas, count
        Per-head dask arrays ``(N_rows, H, W, C)`` of sums and hit counts (None: nothing
        new for that head).
    canvas_zarr, count_zarr
        Per-head datasets from earlier spills, or None where none exists yet.
    save_path
        Zarr group holding the datasets (created when missing).
    verbose
        Show a progress bar.

    Returns
    -------
    canvas_zarr, count_zarr
        The per-head datasets, now holding every row spilled so far.
    """
    canvas_zarr, count_zarr = list(canvas_zarr), list(count_zarr)
    if len(canvas_zarr) < len(canvas) or len(count_zarr) < len(count):
        raise ShapeMismatchError(
            f"{len(canvas)} heads of row blocks but {len(canvas_zarr)} canvas and "
            f"{len(count_zarr)} count datasets: pass one entry (None at first) per head"
        )
    group: zarr.Group | None = None
    total = sum(0 if c is None else c.numblocks[0] for c in canvas)
    with tqdm(total=total, desc="spilling rows", unit="block", disable=not verbose) as bar:
        for idx, (values, hits) in enumerate(zip(canvas, count, strict=True)):
            if values is None or hits is None:
                continue
            if values.shape[:3] != hits.shape[:3]:
                raise ShapeMismatchError(
                    f"head {idx}: canvas {values.shape} and count {hits.shape} do not match"
                )
            for name, arr, store in (
                ("canvas", values, canvas_zarr),
                ("count", hits, count_zarr),
            ):
                if store[idx] is None:
                    if group is None:
                        group = zarr.open_group(str(save_path), mode="a")
                    store[idx] = group.create_array(
                        f"{name}/{idx}",
                        shape=(0, *arr.shape[1:]),
                        chunks=(arr.chunks[0][0], *arr.shape[1:]),
                        dtype=np.float32 if name == "count" else arr.dtype,
                        overwrite=True,
                    )
                target = store[idx]
                if tuple(target.shape[1:]) != tuple(arr.shape[1:]):
                    raise ShapeMismatchError(
                        f"head {idx}: {name} rows are {arr.shape[1:]} but the dataset holds "
                        f"{tuple(target.shape[1:])}"
                    )
                for b in range(arr.numblocks[0]):
                    block = np.asarray(arr.blocks[b].compute())
                    start = target.shape[0]
                    target.resize((start + len(block), *target.shape[1:]))
                    target[start:] = block
                    if name == "canvas":
                        bar.update(1)
    return canvas_zarr, count_zarr


def _row_spans(output_locs_y_: np.ndarray, n_rows: int) -> np.ndarray:
    """``(n_rows, 2)`` of ``[y0, y1]``, one per row block (duplicates are collapsed)."""
    spans = np.asarray(output_locs_y_, dtype=np.int64).reshape(-1, 2)
    if len(spans) != n_rows:
        _, first = np.unique(spans, axis=0, return_index=True)
        spans = spans[np.sort(first)]
    if len(spans) != n_rows:
        raise ShapeMismatchError(
            f"output_locs_y_ describes {len(spans)} distinct rows but there are {n_rows} row "
            "blocks: give one [y0, y1] per row block"
        )
    return spans


def merge_multitask_vertical_chunkwise(
    canvas: list[da.Array],
    count: list[da.Array],
    output_locs_y_: np.ndarray,
    zarr_group: zarr.Group | None,
    save_path: str | Path,
    memory_threshold: int = 80,
    *,
    shape: tuple[int, int] | None = None,
    node: Node | None = None,
    head_names: Sequence[str] | None = None,
    tile: int = 512,
    verbose: bool = False,
) -> list[da.Array]:
    """Merge row blocks vertically into normalised full-size maps, one per head.

    Row ``i`` covers ``y = y0_i .. y1_i`` of ``output_locs_y_`` and ``x = 0 .. W``; rows
    may overlap any number of rows below them. Sums and counts of every row are added into
    a :class:`~cachetree.canvas.Canvas` (row-major when the rows come top to bottom), which
    writes each finished band at once and keeps memory within ``memory_threshold`` percent
    of the available RAM. The result is stored as OME-Zarr images in a cache node, and the
    temporary ``canvas``/``count`` datasets of ``zarr_group`` are deleted.

    Parameters
    ----------
    canvas, count
        Per-head row blocks ``(N_rows, H, W, C)`` of sums and matching hit counts
        (``(N_rows, H, W, 1)``, ``(N_rows, H, W, C)`` or ``(N_rows, H, W)``), dask arrays
        (e.g. wrapping the datasets of :func:`save_multitask_to_cache`) or numpy arrays.
    output_locs_y_
        ``[y0, y1]`` of each row block (repeated entries are collapsed).
    zarr_group
        Group holding temporary ``canvas``/``count`` datasets to delete afterwards, or None.
    save_path
        Base directory; the result goes to the cache node ``<save_path>/merged`` unless
        ``node`` is given.
    memory_threshold
        Percentage of the available RAM the canvas may use.
    shape
        ``(height, width)`` of the output (default: the bottom of the lowest row by the
        width of the row blocks); rows reaching past it are clipped.
    node
        A cache node open for writing to hold the result (committed on return).
    head_names
        Names of the heads' images (default ``head0``, ``head1``, ...).
    tile
        Output chunk edge.
    verbose
        Show progress bars.

    Returns
    -------
    list of dask.array.Array
        One ``(height, width, C)`` float map per head, read lazily from the written images.
    """
    if len(canvas) != len(count) or not canvas:
        raise ShapeMismatchError(
            f"{len(canvas)} canvas and {len(count)} count entries: give one of each per head"
        )
    values = [v if isinstance(v, da.Array) else da.from_array(np.asarray(v)) for v in canvas]
    hits = [c if isinstance(c, da.Array) else da.from_array(np.asarray(c)) for c in count]
    n_rows = values[0].shape[0]
    for idx, (v, c) in enumerate(zip(values, hits, strict=True)):
        if v.ndim != 4 or v.shape[:3] != values[0].shape[:3] or c.shape[:3] != v.shape[:3]:
            raise ShapeMismatchError(
                f"head {idx}: canvas {v.shape} / count {c.shape} must be (N_rows, H, W, C) "
                f"row blocks like head 0 {values[0].shape}"
            )
    spans = _row_spans(output_locs_y_, n_rows)
    row_h, row_w = values[0].shape[1:3]
    if ((spans[:, 1] - spans[:, 0]) != row_h).any():
        raise ShapeMismatchError(
            f"row spans {spans.tolist()[:3]}... do not match the row block height {row_h}"
        )
    names = list(head_names) if head_names is not None else [f"head{i}" for i in range(len(values))]
    if len(names) != len(values):
        raise ShapeMismatchError(f"{len(names)} head names for {len(values)} heads")
    if shape is None:
        shape = (max(int(spans[:, 1].max()), 1), int(row_w))
    heads = {
        name: HeadSpec(int(v.shape[3]), np.float64 if v.dtype == np.float64 else np.float32)
        for name, v in zip(names, values, strict=True)
    }
    order = "row-major" if (np.diff(spans[:, 0]) >= 0).all() else "any"
    budget = max(int(psutil.virtual_memory().available * memory_threshold / 100), 64 * 2**20)
    own_node = node is None
    if own_node:
        location = Location.from_url(os.path.join(os.fspath(save_path), "merged"))
        location.remove()
        node = Node(location, kind="canvas").open()
    merger = Canvas(
        node,
        shape,
        heads,
        order=order,
        memory_budget=budget,
        tile=tile,
        progress=verbose,
    )
    try:
        row_chunks = np.cumsum((0, *values[0].chunks[0]))
        for start, stop in tqdm(
            list(itertools.pairwise(row_chunks)),
            desc="merging rows",
            unit="block",
            disable=not verbose,
        ):
            blocks = [np.asarray(v[start:stop].compute()) for v in values]
            weights = np.asarray(hits[0][start:stop].compute(), dtype=np.float32)
            if weights.ndim == 4:
                weights = weights[..., 0]
            for r in range(stop - start):
                y0 = int(spans[start + r, 0])
                box = np.array([[0, y0, row_w, y0 + row_h]])
                if box[0, 1] >= shape[0] or box[0, 3] <= 0:
                    continue  # entirely outside the requested shape
                merger.add_weighted(
                    {name: b[r : r + 1] for name, b in zip(names, blocks, strict=True)},
                    weights[r : r + 1],
                    box,
                )
        merger.finalize(commit=True)
    except BaseException:
        merger.close()
        raise
    if zarr_group is not None:
        for name in ("canvas", "count"):
            if name in zarr_group:
                del zarr_group[name]
    result = []
    for name in names:
        level0 = open_image(node.item(f"{name}.ome.zarr"))[0]
        result.append(level0[..., np.newaxis] if level0.ndim == 2 else da.moveaxis(level0, 0, -1))
    return result
