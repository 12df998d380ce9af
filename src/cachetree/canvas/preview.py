"""A coarse preview of a canvas while it merges, kept on disk as a small pyramid.

A canvas keeps, besides its tiles, one weighted-sum and one weight accumulator per
*preview factor* F: each cell holds the sums of an F x F block of the canvas. A tile's
accumulators are block-summed into them once, when they leave memory (spilled, or
normalised as a final row), so the preview always covers exactly what is on disk and costs
one pass over each tile instead of one per patch. F is the smallest power of two (at least
2) whose accumulators fit :data:`PREVIEW_MAX_BYTES` and a sixteenth of the memory budget:
16 for the 8 192² canvas of two heads of 4 and 1 channels, 128 for a 100 000² canvas of one
channel (a 782² preview).

:func:`write_preview` stores the normalised preview (``sum / weight`` per block) as an
OME-Zarr image per head in a new folder of the staging area, with its 2x reductions (block
sums halved again) down to the pyramid's minimum size, then points ``preview.json`` at it:
a reader follows the pointer and never sees a preview half written. The pointer also holds
each head's display range (never NaN: the weighted means of the preview and the exact
range of the rows written, which lie within the patch values' range) and how much of the
canvas is merged.
"""

from __future__ import annotations

import copy
import json
import math
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..fs.location import Location
from ..images.pyramid import ImageWriter
from .blocks import block_sum as _block_sum
from .normalise import normalise_block
from .spec import CanvasSpec

__all__ = [
    "PREVIEW",
    "PREVIEW_MAX_BYTES",
    "PreviewAccumulator",
    "display_range",
    "preview_factor",
    "read_preview_pointer",
    "write_preview",
]

PREVIEW = "preview.json"
"""File of the staging area naming the newest complete preview folder."""
PREVIEW_MAX_BYTES = 16 * 1024**2
"""Largest size of a canvas' preview accumulators."""
_PREFIX = "preview-"
_KEEP = 2
"""Preview folders kept: the newest and the one before, which a reader may still be reading."""


def preview_factor(spec: CanvasSpec, memory_budget: int) -> int:
    """The preview factor of a canvas: see the module docstring."""
    limit = min(PREVIEW_MAX_BYTES, memory_budget // 16)
    per_cell = 4 + sum(h.channels * h.acc_dtype.itemsize for h in spec.heads.values())
    height, width = spec.shape
    factor = 2
    while factor < max(height, width) and (
        -(-height // factor) * -(-width // factor) * per_cell > limit
    ):
        factor *= 2
    return factor


def _halve(values: np.ndarray) -> np.ndarray:
    """Sums over 2 x 2 cells (an odd last row or column is summed alone)."""
    return _block_sum(values, 0, 0, 2)


class PreviewAccumulator:
    """Block sums of everything that left a canvas' memory, at ``factor`` per cell."""

    def __init__(self, spec: CanvasSpec, factor: int):
        self.spec = spec
        self.factor = factor
        height, width = spec.shape
        self.shape = (-(-height // factor), -(-width // factor))
        self.weight = np.zeros(self.shape, np.float32)
        self.sums = {
            name: np.zeros((*self.shape, head.channels), head.acc_dtype)
            for name, head in spec.heads.items()
        }
        self.version = 0
        """Changes with every addition (a preview written at another version is stale)."""

    def add_tile(
        self, ty: int, tx: int, weight: np.ndarray, sums: Mapping[str, np.ndarray], box: Any
    ) -> None:
        """Add a tile's accumulators over its touched ``box`` (``r0, r1, c0, c1``, tile px)."""
        r0, r1, c0, c1 = box
        tile, factor = self.spec.tile, self.factor
        y0, x0 = ty * tile + r0, tx * tile + c0
        block = _block_sum(weight[r0:r1, c0:c1], y0, x0, factor)
        cy, cx = y0 // factor, x0 // factor
        region = (slice(cy, cy + block.shape[0]), slice(cx, cx + block.shape[1]))
        self.weight[region] += block
        for name, acc in sums.items():
            part = acc[r0:r1, c0:c1]
            if part.shape[-1] == 1:  # one channel: summed as a plane, several times faster
                self.sums[name][region][..., 0] += _block_sum(part[..., 0], y0, x0, factor)
            else:
                self.sums[name][region] += _block_sum(part, y0, x0, factor)
        self.version += 1

    def set_rows(self, row: int, means: Mapping[str, np.ndarray]) -> None:
        """Replace cell rows from ``row`` on by final means (``(C, h, w)`` per head, at the
        preview factor): rows no patch reaches any more, taken from the written pyramid.

        They count as covered, with the weight of ``F x F`` pixels of weight 1.
        """
        area = float(self.factor * self.factor)
        for name, mean in means.items():
            rows = slice(row, row + mean.shape[1])
            self.sums[name][rows] = np.moveaxis(mean, 0, -1) * area
            self.weight[rows] = area
        self.version += 1

    def copy(self) -> PreviewAccumulator:
        """An independent copy (to write while this one goes on adding)."""
        twin = copy.copy(self)
        twin.weight = self.weight.copy()
        twin.sums = {name: acc.copy() for name, acc in self.sums.items()}
        return twin

    # -- checkpoints ----------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        """The accumulators as arrays to store in a checkpoint."""
        return {"weight": self.weight, **{f"sum/{name}": acc for name, acc in self.sums.items()}}

    def reached(self) -> tuple[tuple[int, int], dict[str, np.ndarray]]:
        """The bounding box of the cells some patch reached: its first cell ``(row,
        column)`` and :meth:`arrays` cropped to it (none when no patch reached any)."""
        rows = np.flatnonzero(self.weight.any(axis=1))
        cols = np.flatnonzero(self.weight.any(axis=0))
        if not rows.size:
            return (0, 0), {}
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        return (int(rows[0]), int(cols[0])), {k: v[box] for k, v in self.arrays().items()}

    def add_reached(self, origin: tuple[int, int], arrays: Mapping[str, np.ndarray]) -> None:
        """Add the block sums another accumulator of the same factor :meth:`reached`."""
        if not arrays:
            return
        weight = np.asarray(arrays["weight"])
        box = (
            slice(origin[0], origin[0] + weight.shape[0]),
            slice(origin[1], origin[1] + weight.shape[1]),
        )
        self.weight[box] += weight
        for name, acc in self.sums.items():
            acc[box] += np.asarray(arrays[f"sum/{name}"])
        self.version += 1

    def restore(self, arrays: Mapping[str, np.ndarray]) -> bool:
        """Continue from :meth:`arrays` of a checkpoint; False (and unchanged) if they do
        not fit this canvas (another factor)."""
        weight = np.asarray(arrays.get("weight", np.empty(0)))
        if weight.shape != self.shape or any(f"sum/{n}" not in arrays for n in self.sums):
            return False
        self.weight[...] = weight
        for name, acc in self.sums.items():
            acc[...] = np.asarray(arrays[f"sum/{name}"])
        self.version += 1
        return True

    # -- what it shows --------------------------------------------------------------------
    def levels(self, head: str) -> list[np.ndarray]:
        """``(C, h, w)`` normalised previews of ``head``: factor F, 2F, ... down to the
        pyramid's minimum size (at least one)."""
        spec = self.spec
        dtype = spec.heads[head].dtype
        weight, sums = self.weight, self.sums[head]
        out = [normalise_block(sums, weight, dtype, spec.fill_value)]
        while max(weight.shape) > spec.min_size:
            weight, sums = _halve(weight), _halve(sums)
            out.append(normalise_block(sums, weight, dtype, spec.fill_value))
        return out

    def value_range(self, head: str) -> np.ndarray:
        """``(2, C)`` min and max per channel of the preview's covered cells (NaN if none)."""
        covered = self.weight > 0
        channels = self.spec.heads[head].channels
        if not covered.any():
            return np.full((2, channels), np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            means = self.sums[head][covered] / self.weight[covered][:, np.newaxis]
        finite = np.where(np.isfinite(means), means, np.nan)
        return np.stack([np.nanmin(finite, axis=0), np.nanmax(finite, axis=0)]).astype(np.float64)

    def coverage(self) -> float:
        """Share of the preview's cells some patch reached."""
        return float(np.count_nonzero(self.weight)) / self.weight.size


def display_range(
    preview: np.ndarray, rows: np.ndarray | None, fill_value: float
) -> list[list[float]]:
    """Per-channel ``[low, high]`` from the preview's range and the written rows' exact one.

    Never NaN: a channel with no value anywhere gets the fill value (or 0) as both ends.
    """
    low, high = preview[0].copy(), preview[1].copy()
    if rows is not None:
        low, high = np.fmin(low, rows[0]), np.fmax(high, rows[1])
    default = fill_value if math.isfinite(fill_value) else 0.0
    low = np.where(np.isfinite(low), low, default)
    high = np.where(np.isfinite(high), high, low)
    return [[float(lo), float(hi)] for lo, hi in zip(low, high, strict=True)]


def write_preview(
    staging: Location,
    seq: int,
    accumulator: PreviewAccumulator,
    rows_ranges: Mapping[str, np.ndarray],
    status: Mapping[str, Any],
    stop: threading.Event | None = None,
) -> bool:
    """Write the preview as ``preview-<seq>/<head>.ome.zarr`` and point ``preview.json`` at it.

    ``rows_ranges`` gives each head's exact ``(2, C)`` range of the rows written;
    ``status`` is stored in the pointer as it is (batch count, share merged, ...). Older
    preview folders but the previous one are removed. Once ``stop`` is set, the write ends
    at its next chunk and returns False: ``preview.json`` still names the previous preview,
    and the folder begun is left for the next write (or the end of the canvas) to remove.
    """
    spec = accumulator.spec
    folder = f"{_PREFIX}{seq:08d}"
    ranges = {}
    for name, head in spec.heads.items():
        levels = accumulator.levels(name)
        shape = levels[0].shape if head.channels > 1 else levels[0].shape[1:]
        fill = int(spec.fill_value) if head.dtype.kind in "iu" else spec.fill_value
        image = ImageWriter.create(
            staging.raw_child(folder).raw_child(f"{name}.ome.zarr"),
            shape,
            head.dtype,
            chunk=spec.tile,
            fill_value=fill,
            min_size=spec.min_size,
            max_levels=len(levels),
        )
        for level, data in enumerate(levels):
            for index in np.ndindex(*image.grid(level)):
                if stop is not None and stop.is_set():
                    return False
                *lead, ty, tx = index
                c = lead[0] if lead else 0
                y0, x0 = ty * spec.tile, tx * spec.tile
                h, w = image.chunk_extent(level, index)
                image.write_chunk(level, index, data[c, y0 : y0 + h, x0 : x0 + w])
        window = display_range(accumulator.value_range(name), rows_ranges.get(name), fill)
        ranges[name] = window
        low, high = np.array(window).T
        image.finish(
            low=low if head.channels > 1 else low[0],
            high=high if head.channels > 1 else high[0],
            name=name,
            extra_attrs={"cachetree_preview": {"factor": accumulator.factor}},
        )
    pointer = {
        "folder": folder,
        "factor": accumulator.factor,
        "shape": list(accumulator.shape),
        "ranges": ranges,
        **status,
    }
    staging.raw_child(PREVIEW).write_text(json.dumps(pointer))
    old = sorted(n for n in staging.ls() if n.startswith(_PREFIX) and n != folder)
    for name in old[: max(0, len(old) - (_KEEP - 1))]:
        staging.raw_child(name).remove()
    return True


def read_preview_pointer(staging: Location) -> dict[str, Any] | None:
    """The contents of ``preview.json`` in a staging area, or None when there is none."""
    try:
        pointer = json.loads(staging.raw_child(PREVIEW).read_bytes())
    except Exception:
        return None
    return pointer if isinstance(pointer, dict) and "folder" in pointer else None
