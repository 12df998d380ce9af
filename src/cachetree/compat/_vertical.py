"""The vertical merge: row blocks of sums and counts to normalised full-size maps."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import psutil
import zarr
from tqdm import tqdm

from ..errors import ShapeMismatchError
from ._batch import FLAT_KEYS
from ._rows import SPILL_MARK, row_blocks, stacked


def _rows_of(rows: Any, row_h: int) -> Iterator[np.ndarray]:
    """Row blocks of ``row_h`` rows each, whatever the chunking of ``rows``."""
    pending: list[np.ndarray] = []
    held = 0
    for block in row_blocks(rows):
        while len(block):
            take = min(row_h - held, len(block))
            pending.append(block[:take])
            held += take
            block = block[take:]
            if held == row_h:
                yield pending[0] if len(pending) == 1 else np.concatenate(pending)
                pending, held = [], 0


class _InPlace:
    """Sums accumulated straight into the result array, normalised in place."""

    def __init__(self, height: int, width: int, channels: int, dtype: Any) -> None:
        self.acc = np.zeros((height, width, channels), dtype)

    def add(self, top: int, sums: np.ndarray) -> None:
        self.acc[top : top + len(sums)] += sums

    def settle(self, start: int, stop: int, denom: np.ndarray) -> None:
        stop = min(stop, start + len(denom))  # rows below had no patch: they stay 0
        np.divide(self.acc[start:stop], denom[: stop - start], out=self.acc[start:stop])

    def result(self, out_h: int, out_w: int, chunk: int) -> da.Array:
        return stacked([self.acc[:out_h, :out_w]], chunk)


class _Band:
    """Sums of the rows not final yet (one row block high); final rows go to ``sink``."""

    def __init__(self, height: int, width: int, channels: int, dtype: Any, sink: Any) -> None:
        self.acc = np.zeros((height, width, channels), dtype)
        self.top = 0
        self.sink = sink

    def add(self, top: int, sums: np.ndarray) -> None:
        self.acc[top - self.top : top - self.top + len(sums)] += sums

    def settle(self, start: int, stop: int, denom: np.ndarray) -> None:
        k = min(stop - start, len(self.acc))
        self.sink.write(start, self.acc[:k] / denom[:k])
        if stop - start > k:  # a gap between rows (stride above the patch height)
            self.sink.write(start + k, np.zeros((stop - start - k, *self.sink.row_shape)))
        self.acc[: len(self.acc) - k] = self.acc[k:]
        self.acc[len(self.acc) - k :] = 0
        self.top = stop

    def result(self, out_h: int, out_w: int, chunk: int) -> da.Array:
        return self.sink.result()


class _ArraySink:
    """Final rows into an array (numpy or Zarr), written a whole chunk at a time."""

    def __init__(self, target: Any, chunk: int) -> None:
        self.target = target
        self.row_shape = tuple(target.shape[1:])
        self.buffer = np.zeros((chunk, *self.row_shape), target.dtype)
        self.start = 0
        self.fill = 0

    def write(self, y: int, rows: np.ndarray) -> None:
        rows = rows[: max(self.target.shape[0] - y, 0), : self.row_shape[0]]
        while len(rows):
            take = min(len(self.buffer) - self.fill, len(rows))
            self.buffer[self.fill : self.fill + take] = rows[:take]
            self.fill += take
            rows = rows[take:]
            if self.fill == len(self.buffer):
                self.flush()

    def flush(self) -> None:
        if self.fill:
            self.target[self.start : self.start + self.fill] = self.buffer[: self.fill]
            self.start += self.fill
            self.fill = 0

    def result(self) -> da.Array:
        self.flush()
        chunks = (len(self.buffer), *self.row_shape)
        if isinstance(self.target, np.ndarray):
            return stacked([self.target], len(self.buffer))
        return da.from_zarr(self.target, chunks=chunks)


def _row_tops(output_locs_y_: np.ndarray) -> np.ndarray:
    spans = np.asarray(output_locs_y_).reshape(-1, 2)
    if not len(spans):
        raise ShapeMismatchError("output_locs_y_ is empty: there are no rows to merge")
    y0s = np.unique(spans[:, 0]).astype(np.int64)
    return y0s - y0s[0]


def _drop_spilled_rows(zarr_group: zarr.Group | None) -> None:
    """Delete the spilled row blocks, and their group when we made it and it is now empty."""
    if zarr_group is None:
        return
    for name in ("canvas", "count"):
        if name in zarr_group:
            del zarr_group[name]
    store = zarr_group.store
    root = getattr(store, "root", None)
    if (
        zarr_group.attrs.get(SPILL_MARK)
        and zarr_group.path == ""
        and root is not None
        and not list(zarr_group.keys())
    ):
        shutil.rmtree(Path(root), ignore_errors=True)


def merge_multitask_vertical_chunkwise(
    canvas: list[da.Array],
    count: list[da.Array],
    output_locs_y_: np.ndarray,
    zarr_group: zarr.Group,
    save_path: Path,
    memory_threshold: int = 80,
    output_shape: tuple[int, int] | None = None,
    *,
    verbose: bool = True,
) -> list[da.Array]:
    """Merge the row blocks vertically into normalised maps, one ``(H, W, C)`` per head.

    Same parameters, defaults and results as TIAToolbox 2.1.3's function of this name, and
    bit for bit the same values where TIAToolbox succeeds. Row ``i`` of the stacked blocks
    (``canvas[h]`` is ``(N_rows * H, W, C)``, ``count[h]`` ``(N_rows * H, W, 1)``) starts at
    the ``i``-th smallest ``y0`` of ``output_locs_y_``, relative to the first. Unlike
    TIAToolbox, which only adds a row into the one above it (and raises when the stride is
    below half the patch height), a row may overlap any number of rows above it: sums and
    counts are accumulated top to bottom and each output row is divided by its count (0
    counts count as 1) as soon as no later row can reach it. The result is clipped to
    ``output_shape`` (height, width) when given.

    A head's result is held in memory (a dask array over one numpy array) unless that,
    added to the heads already held, would take more than ``memory_threshold`` percent of
    the available memory (TIAToolbox's test); then it is written, uncompressed, to
    ``probabilities/<idx>`` of ``zarr_group`` (or of a group opened at ``save_path``) and
    read lazily from there. The spilled row blocks ``canvas``/``count`` of ``zarr_group``
    are deleted afterwards, and the group itself when
    :func:`~cachetree.compat.save_multitask_to_cache` created it and it is left empty.
    """
    if len(canvas) != len(count) or not len(canvas):
        raise ShapeMismatchError(
            f"{len(canvas)} canvas and {len(count)} count entries: give one of each per head"
        )
    tops = _row_tops(output_locs_y_)
    available = max(psutil.virtual_memory().available, 1)
    held = 0
    results = []
    for idx, (values, hits) in enumerate(zip(canvas, count, strict=True)):
        if values.ndim != 3 or values.shape[0] % len(tops) or hits.shape[:2] != values.shape[:2]:
            raise ShapeMismatchError(
                f"head {idx}: canvas {values.shape} / count {hits.shape} are not {len(tops)} "
                "stacked row blocks (N_rows * H, W, C) / (N_rows * H, W, 1)"
            )
        row_h = values.shape[0] // len(tops)
        width, channels = values.shape[1:]
        height = int(tops[-1]) + row_h
        out_h, out_w = height, width
        if output_shape is not None:
            out_h, out_w = min(height, int(output_shape[0])), min(width, int(output_shape[1]))
        dtype = np.result_type(values.dtype, np.float32)
        nbytes = out_h * out_w * channels * dtype.itemsize
        if 100 * (held + nbytes) / available > memory_threshold:
            if zarr_group is None:
                zarr_group = zarr.open_group(str(save_path), mode="a")
            target = zarr_group.create_array(
                f"probabilities/{idx}",
                shape=(out_h, out_w, channels),
                chunks=(row_h, out_w, channels),
                dtype=dtype,
                fill_value=0,
                compressors=None,
                chunk_key_encoding=FLAT_KEYS,
                overwrite=True,
            )
            acc: Any = _Band(row_h, width, channels, values.dtype, _ArraySink(target, row_h))
        elif dtype == values.dtype:
            acc = _InPlace(height, width, channels, dtype)
            held += nbytes
        else:
            target = np.zeros((out_h, out_w, channels), dtype)
            acc = _Band(row_h, width, channels, values.dtype, _ArraySink(target, row_h))
            held += nbytes
        _sweep(values, hits, tops, row_h, acc, idx, verbose)
        results.append(acc.result(out_h, out_w, row_h))
    _drop_spilled_rows(zarr_group)
    return results


def _sweep(
    values: Any, hits: Any, tops: np.ndarray, row_h: int, acc: Any, idx: int, verbose: bool
) -> None:
    """Add the rows top to bottom; divide every output row once no later row reaches it."""
    counts = np.zeros((row_h, values.shape[1], 1), np.float32)
    settled = 0

    def settle(stop: int) -> None:
        nonlocal settled
        k = min(stop - settled, row_h)
        if k <= 0:
            return
        denom = counts[:k].copy()
        denom[denom == 0] = 1
        acc.settle(settled, stop, denom)
        counts[: row_h - k] = counts[k:]
        counts[row_h - k :] = 0
        settled = stop

    rows = tqdm(
        range(len(tops)),
        leave=False,
        desc=f"Merging rows for probability map {idx}",
        disable=not verbose,
    )
    blocks = zip(_rows_of(values, row_h), _rows_of(hits, row_h), strict=True)
    for i, (sums, hit) in zip(rows, blocks, strict=False):
        top = int(tops[i])
        settle(top)
        acc.add(top, sums)
        counts += hit.reshape(counts.shape)
    settle(int(tops[-1]) + row_h)
