"""Nuclei of a whole slide, labelled block by block with consistent ids and bounded memory.

The nucleus mask of a block (:class:`NucleusMask`) is computed from the model's heads read
with a halo around the block, wide enough for the smoothing and the opening to give the
block exactly the pixels of a whole-slide computation. The mask is then labelled in two
passes, neither of which holds more than a few blocks and one row of pixels:

1. the blocks are labelled one after the other in row-major order (a few at a time on
   threads) with :func:`scipy.ndimage.label`, given provisional ids that run on from one
   block to the next, and stored in a scratch Zarr array of the node. The labels that touch
   across the faces with the block above and the block to the left are paired with
   dask-image's face grouping while both sides are at hand (the last row of the block row
   above is kept), and the first pixel of every provisional label is noted;
2. the pairs give the nuclei as connected components of a graph with one vertex per
   provisional label (:func:`scipy.sparse.csgraph.connected_components`); each nucleus is
   numbered by its first pixel in row-major order over the slide, and the scratch blocks
   are relabelled as they are written. The ids are those of :func:`scipy.ndimage.label` on
   the whole mask, whatever the block size.

``dask_image.ndmeasure.label`` does the same in one dask graph, but that graph keeps every
block's labels in memory until the graph of the whole slide is resolved (4 bytes a pixel),
and its adjacency graph reads every block face back from the labels; here the faces are
grouped while pass 1 holds the blocks, so only the face grouping is taken from dask-image.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import zarr
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..images.metadata import DEFAULT_TILE
from ..tree.node import Node

__all__ = ["BLOCKS_ITEM", "NucleusMask", "label_blockwise", "nucleus_mask"]

BLOCKS_ITEM = "blocks"
"""Scratch Zarr array of the provisional labels (removed once the labels are written)."""
_OPENING = ndimage.iterate_structure(ndimage.generate_binary_structure(2, 1), 2)
"""Structuring element of the opening that removes specks (a diamond of radius 2)."""
_CONNECTIVITY = ndimage.generate_binary_structure(2, 1)
"""Pixels of a nucleus touch by an edge (that of :func:`scipy.ndimage.label`)."""
_AHEAD = 3
"""Blocks masked and labelled ahead of the one being stored (on two threads)."""

MaskReader = Callable[[int, int, int, int], np.ndarray]
"""``read(y0, y1, x0, x1)``: the boolean mask of slide pixels ``[y0:y1, x0:x1]``."""


def nucleus_mask(
    hematoxylin: np.ndarray, foreground: np.ndarray, threshold: float, sigma: float
) -> np.ndarray:
    """Pixels of nuclei: smoothed hematoxylin above ``threshold`` on tissue, specks removed.

    ``hematoxylin`` and ``foreground`` are uint8 probabilities (x 255) of the same shape.
    """
    smooth = ndimage.gaussian_filter(hematoxylin.astype(np.float32), sigma)
    mask = (smooth > threshold * 255) & (foreground > 127)
    return ndimage.binary_opening(mask, structure=_OPENING)


@dataclass(frozen=True)
class NucleusMask:
    """:func:`nucleus_mask` of any region of the slide, read with a halo from the heads.

    ``hematoxylin`` and ``foreground`` are the ``(y, x)`` heads of the slide, anything
    that slicing reads into numpy (a :class:`~cachetree.demo.levels.Plane` reads a region
    in one zarr call; a dask array works too). A region equals the same pixels of
    :func:`nucleus_mask` applied to the whole slide: the halo covers the smoothing radius
    and the opening's, and at the slide's edge there is no halo, so the filters see the
    edge just as they would on the whole slide.
    """

    hematoxylin: Any
    foreground: Any
    threshold: float
    sigma: float

    @property
    def halo(self) -> int:
        """Pixels around a region that reach it through the smoothing and the opening."""
        smoothing = int(4.0 * self.sigma + 0.5)  # scipy's gaussian_filter radius (truncate 4)
        opening = 2 * (_OPENING.shape[0] // 2)  # erosion, then dilation
        return smoothing + opening

    def __call__(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        height, width = self.hematoxylin.shape
        ya, yb = max(y0 - self.halo, 0), min(y1 + self.halo, height)
        xa, xb = max(x0 - self.halo, 0), min(x1 + self.halo, width)
        window = (slice(ya, yb), slice(xa, xb))
        heads = [np.asarray(head[window]) for head in (self.hematoxylin, self.foreground)]
        mask = nucleus_mask(*heads, self.threshold, self.sigma)
        return mask[y0 - ya : y1 - ya, x0 - xa : x1 - xa]


@dataclass
class _Pass1:
    """What pass 1 keeps besides the scratch array: nothing the size of the slide."""

    width: int
    count: int = 0
    """Provisional labels so far (ids 1 .. count)."""

    def __post_init__(self) -> None:
        self.pairs: list[np.ndarray] = []
        self.firsts: list[np.ndarray] = [np.array([-1], np.int64)]  # background first
        self.row_above = np.zeros(self.width, np.int32)
        self.row_below = np.zeros(self.width, np.int32)
        self.column_left = np.zeros(0, np.int32)

    def add(self, local: np.ndarray, count: int, y0: int, x0: int) -> np.ndarray:
        """Provisional ids of a block labelled on its own; faces with its neighbours paired."""
        from dask_image.ndmeasure._utils._label import _across_block_label_grouping

        ids = np.where(local > 0, local + np.int32(self.count), 0).astype(np.int32)
        self.firsts.append(_first_pixels(local, count, y0, x0, self.width))
        self.count += count
        x1 = x0 + ids.shape[1]
        faces = []
        if y0 > 0:
            faces.append(np.stack([self.row_above[x0:x1], ids[0]]))
        if x0 > 0:
            faces.append(np.stack([self.column_left, ids[:, 0]]))
        for face in faces:
            self.pairs.append(_across_block_label_grouping(face, _CONNECTIVITY))
        self.column_left = ids[:, -1].copy()
        self.row_below[x0:x1] = ids[-1]
        return ids

    def next_row(self) -> None:
        self.row_above, self.row_below = self.row_below, self.row_above

    def final_ids(self) -> np.ndarray:
        """uint32 final id of every provisional id (0 stays 0): ``scipy.ndimage.label``'s."""
        pairs = np.concatenate([np.zeros((2, 0), np.int32), *self.pairs], axis=1)
        n = self.count + 1
        graph = coo_matrix((np.ones(pairs.shape[1], np.int8), (pairs[0], pairs[1])), (n, n))
        _, component = connected_components(graph, directed=False)
        first = np.full(component.max(initial=0) + 1, np.iinfo(np.int64).max)
        np.minimum.at(first, component, np.concatenate(self.firsts))
        rank = np.empty(len(first), np.uint32)
        rank[np.argsort(first)] = np.arange(len(first), dtype=np.uint32)
        return rank[component]


def _first_pixels(local: np.ndarray, count: int, y0: int, x0: int, width: int) -> np.ndarray:
    """Slide-wide row-major index of the first pixel of labels 1 .. count of a block.

    :func:`scipy.ndimage.label` numbers labels in the order their first pixels come, so the
    running maximum over the labelled pixels steps up exactly at those pixels.
    """
    flat = local.ravel()
    labelled = np.flatnonzero(flat)
    steps = np.flatnonzero(np.diff(np.maximum.accumulate(flat[labelled]), prepend=0))
    ys, xs = np.divmod(labelled[steps], local.shape[1])
    assert len(ys) == count
    return (ys + y0).astype(np.int64) * width + xs + x0


def _blocks(shape: tuple[int, int], block: tuple[int, int]) -> Iterator[tuple[int, ...]]:
    """``(y0, y1, x0, x1)`` of every block, row-major."""
    (height, width), (bh, bw) = shape, block
    for y0 in range(0, height, bh):
        for x0 in range(0, width, bw):
            yield y0, min(y0 + bh, height), x0, min(x0 + bw, width)


def _label_region(read: MaskReader, box: tuple[int, ...]) -> tuple[np.ndarray, int]:
    labels, count = ndimage.label(read(*box), structure=_CONNECTIVITY)
    return labels.astype(np.int32, copy=False), int(count)


def label_blockwise(
    read: MaskReader, shape: tuple[int, int], block: int | tuple[int, int], node: Node
) -> tuple[da.Array, int]:
    """Connected components of a mask of ``shape``, read block by block, with unique ids.

    Pass 1 runs here, into the scratch item :data:`BLOCKS_ITEM` of ``node`` (open for
    writing); pass 2 is returned lazily, to be written by the caller, who removes the
    scratch array afterwards. Memory holds a few blocks and a row of pixels, whatever
    ``shape``.

    Returns
    -------
    labels, count
        uint32 labels (1 .. count, 0 for background) as a lazy dask array, and the number
        of components; the labels equal :func:`scipy.ndimage.label` of the whole mask.
    """
    bh, bw = (block, block) if isinstance(block, int) else block
    scratch = zarr.create_array(
        node.item(f"{BLOCKS_ITEM}.zarr").zarr_store(),
        shape=shape,
        dtype=np.int32,
        chunks=(min(bh, DEFAULT_TILE), bw),
        overwrite=True,
    )
    state = _Pass1(shape[1])
    boxes = list(_blocks(shape, (bh, bw)))
    with ThreadPoolExecutor(2, thread_name_prefix="nuclei-label") as pool:
        ahead: deque[tuple[tuple[int, ...], Future]] = deque()
        for index in range(len(boxes)):
            while len(ahead) <= _AHEAD and index + len(ahead) < len(boxes):
                box = boxes[index + len(ahead)]
                ahead.append((box, pool.submit(_label_region, read, box)))
            (y0, y1, x0, x1), labelled = ahead.popleft()
            if x0 == 0 and y0 > 0:
                state.next_row()
            scratch[y0:y1, x0:x1] = state.add(*labelled.result(), y0, x0)
    final = state.final_ids()
    labels = node.open_array(BLOCKS_ITEM).map_blocks(_relabel, final=final, dtype=np.uint32)
    return labels, int(final.max(initial=0))


def _relabel(block: np.ndarray, final: np.ndarray) -> np.ndarray:
    return final[block]
