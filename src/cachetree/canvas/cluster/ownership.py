"""Which task writes which part of the output: owned segments and seams.

Level 0 of every head is cut into **segments**: one tile row high and as wide as the
widest shard of any head (a whole number of every head's shards), so a segment is written
in whole shards. A segment every patch of which (counted in its task's region) belongs to
one task is **owned** by that task: the task normalises it and writes it straight into the
output images. A segment reached by patches of two or more tasks is a **seam**: those tasks
write their tiles there as spill parts and finalising sums them. A segment no patch reaches
is **empty** and holds the fill value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .tasks import Task

__all__ = ["EMPTY", "SEAM", "segment_grid", "segment_owners", "touched_segments"]

SEAM = -1
"""Owner of a segment reached by several tasks."""
EMPTY = -2
"""Owner of a segment no patch reaches."""


def segment_grid(shape: tuple[int, int], tile: int, segment: int) -> tuple[int, int]:
    """Segment rows and columns of a canvas of ``shape`` in tiles of ``tile`` pixels,
    ``segment`` tiles a segment."""
    return math.ceil(shape[0] / tile), math.ceil(math.ceil(shape[1] / tile) / segment)


def touched_segments(task: Task, shape: tuple[int, int], tile: int, segment: int) -> np.ndarray:
    """``(rows, segments)`` booleans: the segments the task's patches reach, within the
    canvas and the task's region."""
    H, W = shape
    rows, columns = segment_grid(shape, tile, segment)
    boxes = np.asarray(task.boxes, np.int64)
    x0, y0, x1, y1 = (0, 0, W, H) if task.region is None else task.region
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    cx0, cy0 = np.maximum(boxes[:, 0], x0), np.maximum(boxes[:, 1], y0)
    cx1, cy1 = np.minimum(boxes[:, 2], x1), np.minimum(boxes[:, 3], y1)
    keep = (cx0 < cx1) & (cy0 < cy1)
    cx0, cy0, cx1, cy1 = cx0[keep], cy0[keep], cx1[keep], cy1[keep]
    r0, r1 = cy0 // tile, (cy1 - 1) // tile + 1
    s0, s1 = cx0 // tile // segment, (cx1 - 1) // tile // segment + 1
    # 2-D difference array: +1 at each box's first corner, -1 past its edges
    marks = np.zeros((rows + 1, columns + 1), np.int64)
    np.add.at(marks, (r0, s0), 1)
    np.add.at(marks, (r0, s1), -1)
    np.add.at(marks, (r1, s0), -1)
    np.add.at(marks, (r1, s1), 1)
    return marks.cumsum(axis=0).cumsum(axis=1)[:rows, :columns] > 0


def segment_owners(
    tasks: Sequence[Task], shape: tuple[int, int], tile: int, segment: int
) -> np.ndarray:
    """``(rows, segments)`` int32: the index of the task owning each segment, :data:`SEAM`
    or :data:`EMPTY`."""
    owners = np.full(segment_grid(shape, tile, segment), EMPTY, np.int32)
    for index, task in enumerate(tasks):
        touched = touched_segments(task, shape, tile, segment)
        owners[touched & (owners >= 0)] = SEAM
        owners[touched & (owners == EMPTY)] = index
    return owners
