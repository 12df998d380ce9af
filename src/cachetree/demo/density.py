"""Nuclei per region of a whole slide, counted by worker processes strip by strip.

Each worker task reads one horizontal strip of the nuclei labels (a block of columns at a
time) and writes one part into the counts node: ``counts``, the nuclei whose centroid it
can place (those not touching the strip's top or bottom edge), and ``boundary``, the pixel
count and coordinate sums of the nuclei cut by those edges. The combiner
:func:`combine_strips` adds the counts and joins the cut nuclei by id, so each nucleus is
counted once, in the region holding its centroid, whatever the strips.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..results import add_part
from ..results.combiners import PartView
from ..tree.cdir import cdir_query
from ..tree.keyed import Key
from .levels import full_resolution

__all__ = ["COMBINER", "combine_strips", "count_strip", "label_sums"]

COMBINER = f"{__name__}:combine_strips"
"""The counts node's combiner, by import path."""
_COLUMNS = 4096
"""Columns of labels read at a time."""


def label_sums(labels: np.ndarray, y0: int, x0: int) -> np.ndarray:
    """``(n, 4)`` float64 rows of id, pixel count, sum of y and sum of x per nucleus.

    ``y0`` and ``x0`` are the slide coordinates of ``labels[0, 0]``.
    """
    flat = labels.ravel()
    keep = np.flatnonzero(flat)
    if not len(keep):
        return np.zeros((0, 4))
    ids, inverse = np.unique(flat[keep], return_inverse=True)
    ys, xs = np.divmod(keep, labels.shape[1])
    count = np.bincount(inverse)
    sum_y = np.bincount(inverse, weights=ys) + y0 * count
    sum_x = np.bincount(inverse, weights=xs) + x0 * count
    return np.column_stack([ids, count, sum_y, sum_x])


def _merge_sums(tables: Sequence[np.ndarray]) -> np.ndarray:
    """Rows of the same id summed (id, count, sum y, sum x)."""
    table = np.concatenate([np.zeros((0, 4)), *tables])
    ids, inverse = np.unique(table[:, 0], return_inverse=True)
    merged = np.zeros((len(ids), 4))
    merged[:, 0] = ids
    for column in (1, 2, 3):
        merged[:, column] = np.bincount(inverse, weights=table[:, column], minlength=len(ids))
    return merged


def _edge_ids(block: np.ndarray, *, top: bool, bottom: bool) -> np.ndarray:
    """The ids on a block's first row (with ``top``) and last row (with ``bottom``), sorted
    once each, in an array of their own (a view of the rows would keep the block alive)."""
    rows = [block[0]] * top + [block[-1]] * bottom
    return np.unique(np.concatenate([np.zeros(0, block.dtype), *rows]))


def _add_centroids(grid: np.ndarray, sums: np.ndarray, region: int) -> None:
    cy = (sums[:, 2] / sums[:, 1]) // region
    cx = (sums[:, 3] / sums[:, 1]) // region
    np.add.at(grid, (cy.astype(np.int64), cx.astype(np.int64)), 1)


def count_strip(
    counts_url: str, nuclei_url: str, region: int, rows: tuple[int, int], strip: int
) -> str:
    """Run in a worker process: count the nuclei of slide rows ``rows``, write a part.

    Returns the name of the part written.
    """
    labels = full_resolution(cdir_query(nuclei_url).node, "nuclei")
    height, width = labels.shape
    y0, y1 = rows
    tables, edges = [], []
    for x0 in range(0, width, _COLUMNS):
        block = labels[y0:y1, x0 : x0 + _COLUMNS]
        tables.append(label_sums(block, y0, x0))
        edges.append(_edge_ids(block, top=y0 > 0, bottom=y1 < height))
        del block  # one block of labels at a time: nothing of it is kept
    sums = _merge_sums(tables)
    cut = np.isin(sums[:, 0], np.concatenate(edges))
    grid = np.zeros((-(-height // region), -(-width // region)), np.uint32)
    _add_centroids(grid, sums[~cut], region)
    part = add_part(
        counts_url,
        "density",
        {"counts": grid, "boundary": sums[cut]},
        order=strip,
        meta={"strip": strip, "rows": list(rows)},
    )
    return part.name


def combine_strips(
    parts: Sequence[PartView], *, key: Key, shared: Mapping[str, PartView], region: int
) -> Any:
    """Combiner of the counts node: the strips' counts plus the nuclei cut between strips.

    A strip counted twice (a worker of a killed run finishing after the new run started the
    strip again) is taken once.
    """
    by_strip = {}
    for part in parts:
        by_strip.setdefault(part.meta["strip"], part)
    grid = None
    for part in by_strip.values():  # one strip in memory at a time
        counts = part["counts"]
        grid = counts.astype(np.uint32) if grid is None else grid + counts
    assert grid is not None
    _add_centroids(grid, _merge_sums([part["boundary"] for part in by_strip.values()]), region)
    return grid
