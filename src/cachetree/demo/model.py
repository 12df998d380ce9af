"""The patch model of the whole-slide demo, run over the tissue and merged by a canvas.

Patches lie on a regular grid; only those over tissue (by the low-resolution tissue mask)
are run, so the grid has gaps. Each batch of patches is read from the slide on its own
(never a whole row of the slide), the two-head model of the quick demo runs on it, and a
row-major :class:`~cachetree.canvas.Canvas` merges the batches, checkpointing every few
rows so that a killed run resumes where the last checkpoint was made.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..canvas import Canvas, HeadSpec
from ..tree.node import Node
from .quick import patch_model

__all__ = ["HEADS", "merge_model", "read_patches", "tissue_boxes"]

HEADS = {"stains": HeadSpec(3, "uint8"), "foreground": HeadSpec(1, "uint8")}
"""Heads of the merged output: probabilities stored as uint8 (x 255), 4 bytes a pixel."""
CHANNEL_NAMES = {"stains": ["hematoxylin", "eosin", "DAB"], "foreground": ["tissue"]}


def tissue_boxes(
    mask: np.ndarray, factor: int, size: int, patch: int, stride: int
) -> list[np.ndarray]:
    """Row-major ``[x0, y0, x1, y1]`` boxes of the patches touching tissue, one array per row.

    ``mask`` is the tissue mask downsampled by ``factor``; rows without tissue are left out.
    """
    starts = np.arange(0, max(size - patch, 0) + stride, stride)
    rows = []
    for y0 in starts:
        band = mask[y0 // factor : -(-(y0 + patch) // factor)].any(axis=0)
        # a patch touches tissue when the band has some in its columns
        covered = np.concatenate([[0], np.cumsum(band)])
        lo = np.minimum(starts // factor, len(band))
        hi = np.minimum(-(-(starts + patch) // factor), len(band))
        xs = starts[covered[hi] > covered[lo]]
        if len(xs):
            ys = np.full_like(xs, y0)
            rows.append(np.column_stack([xs, ys, xs + patch, ys + patch]))
    return rows


def read_patches(slide: Any, boxes: np.ndarray) -> np.ndarray:
    """The slide under boxes of one patch row as ``(N, h, w, 3)`` uint8 (255 past the edge).

    Boxes that touch or overlap (sorted by x0) are read together, one slide read per run of
    them, so a read spans at most the run's boxes, never the whole row of the slide.
    """
    height, width = slide.shape[-2:]
    y0, y1 = int(boxes[0, 1]), int(boxes[0, 3])
    patch_h, patch_w = y1 - y0, int(boxes[0, 2] - boxes[0, 0])
    out = np.full((len(boxes), patch_h, patch_w, 3), 255, np.uint8)
    gaps = np.flatnonzero(boxes[1:, 0] > boxes[:-1, 2]) + 1
    for run in np.split(np.arange(len(boxes)), gaps):
        x0, x1 = int(boxes[run[0], 0]), int(boxes[run[-1], 2])
        pixels = np.moveaxis(np.asarray(slide[:, y0 : min(y1, height), x0 : min(x1, width)]), 0, -1)
        for i in run:
            left = int(boxes[i, 0]) - x0
            part = pixels[:, left : left + patch_w]
            out[i, : part.shape[0], : part.shape[1]] = part
    return out


def _as_uint8(probability: np.ndarray) -> np.ndarray:
    """Probabilities x 255 as uint8 (``probability`` is scaled in place)."""
    probability *= 255
    return np.rint(probability, out=probability).astype(np.uint8)


def _batches(rows: list[np.ndarray], batch: int) -> Iterator[tuple[int, np.ndarray]]:
    """Row index and boxes of every batch, in order (at most ``batch`` boxes each)."""
    for index, boxes in enumerate(rows):
        for start in range(0, len(boxes), batch):
            yield index, boxes[start : start + batch]


def merge_model(
    node: Node,
    slide: Any,
    rows: list[np.ndarray],
    *,
    batch: int,
    checkpoint_rows: int,
    memory_budget: int | str | None,
    bar: Callable[..., Any],
) -> dict[str, Any]:
    """Run the model over the boxes of ``rows`` and merge it into ``node`` (open for writing).

    ``slide`` is the ``(3, height, width)`` uint8 slide, a zarr array (or anything sliced
    into numpy); the canvas has its height and width. Resumes from the canvas checkpoint
    in ``node`` when there is one. Returns figures for the log: patches run, batches
    skipped on resume, bytes spilled.
    """
    canvas = Canvas(
        node,
        tuple(int(n) for n in slide.shape[-2:]),
        HEADS,
        weights="gaussian",
        order="row-major",
        memory_budget=memory_budget,
        resume=True,
        channel_names=CHANNEL_NAMES,
    )
    skip = canvas.batches_done
    batches = list(_batches(rows, batch))
    todo = list(enumerate(batches, 1))[skip:]
    with ThreadPoolExecutor(1, thread_name_prefix="demo-model") as ahead:
        # the model runs one batch ahead of the canvas, on a thread: numpy releases the GIL
        queued = deque((item, ahead.submit(_predict, slide, item[1][1])) for item in todo[:1])
        for index in bar(range(len(todo)), desc="model batches", unit="batch"):
            if index + 1 < len(todo):
                following = todo[index + 1]
                queued.append((following, ahead.submit(_predict, slide, following[1][1])))
            (done, (row, boxes)), outputs = queued.popleft()
            canvas.add(outputs.result(), boxes)
            last_of_row = done == len(batches) or batches[done][0] != row
            if last_of_row and (row + 1) % checkpoint_rows == 0:
                canvas.checkpoint(done)
    spilled = canvas.stats["spilled_bytes"]
    canvas.finalize(commit=False)
    patches = sum(len(boxes) for _, (_, boxes) in todo)
    return {"patches": patches, "skipped_batches": skip, "spilled_bytes": spilled}


def _predict(slide: Any, boxes: np.ndarray) -> dict[str, np.ndarray]:
    """The model's uint8 outputs for a batch of boxes of one patch row."""
    outputs = patch_model(read_patches(slide, boxes))
    return {name: _as_uint8(value) for name, value in outputs.items()}
