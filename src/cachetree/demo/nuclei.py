"""Nuclei of a whole slide, labelled blockwise with consistent ids and bounded memory.

The nucleus mask is smoothed and opened with dask-image's filters, which work block by
block with an overlap (``map_overlap``), so a block sees the pixels around it. The mask
is then labelled in two passes:

1. every block is labelled on its own (:func:`scipy.ndimage.label`) and stored in the node
   as a scratch Zarr array, so no block stays in memory;
2. the block labels are made unique (an offset per block), the labels that touch across
   block faces are joined with dask-image's adjacency graph and connected components, and
   the blocks are relabelled as they are written.

``dask_image.ndmeasure.label`` does the same in one dask graph, but that graph keeps every
block's labels in memory until the graph of the whole slide is resolved (4 bytes a pixel:
4 GiB at 32 768 px a side), so it is split here at the on-disk scratch array.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
from scipy import ndimage

from ..tree.node import Node

__all__ = ["BLOCKS_ITEM", "label_blockwise", "nucleus_mask"]

BLOCKS_ITEM = "blocks"
"""Scratch Zarr array of the per-block labels (removed once the labels are written)."""


def nucleus_mask(
    hematoxylin: da.Array, foreground: da.Array, threshold: float, sigma: float
) -> da.Array:
    """Pixels of nuclei: smoothed hematoxylin above ``threshold`` on tissue, specks removed.

    ``hematoxylin`` and ``foreground`` are uint8 probabilities (x 255) of the same chunks.
    """
    from dask_image import ndfilters, ndmorph

    smooth = ndfilters.gaussian_filter(hematoxylin.astype(np.float32), sigma)
    mask = (smooth > threshold * 255) & (foreground > 127)
    disk = ndimage.generate_binary_structure(2, 1)
    return ndmorph.binary_opening(mask, structure=ndimage.iterate_structure(disk, 2))


def _label_block(block: np.ndarray) -> np.ndarray:
    return ndimage.label(block)[0].astype(np.int32, copy=False)


def _block_count(block: np.ndarray) -> np.ndarray:
    return np.array([[block.max(initial=0)]], np.int64)


def _add_offset(
    block: np.ndarray, offsets: np.ndarray, block_info: dict[Any, Any] | None = None
) -> np.ndarray:
    by, bx = block_info[0]["chunk-location"]
    return np.where(block > 0, block + np.int32(offsets[by, bx]), 0).astype(np.int32)


def label_blockwise(mask: da.Array, node: Node) -> tuple[da.Array, int]:
    """Connected components of ``mask`` with ids unique over the whole slide.

    Pass 1 is computed here, into the scratch item :data:`BLOCKS_ITEM` of ``node`` (open
    for writing); pass 2 is returned lazily, to be written by the caller, who removes the
    scratch array afterwards.

    Returns
    -------
    labels, count
        uint32 labels (1 .. count, 0 for background) as a lazy dask array with ``mask``'s
        chunks, and the number of nuclei.
    """
    from dask_image.ndmeasure._utils import _label

    node.save_array(BLOCKS_ITEM, mask.map_blocks(_label_block, dtype=np.int32))
    blocks = node.open_array(BLOCKS_ITEM)
    counts = blocks.map_blocks(_block_count, chunks=(1, 1), dtype=np.int64).compute()
    offsets = (np.cumsum(counts.ravel()) - counts.ravel()).reshape(counts.shape)
    total = int(counts.sum())
    unique = blocks.map_blocks(_add_offset, offsets=offsets, dtype=np.int32)
    graph = _label.label_adjacency_graph(unique, None, total)
    new_ids = np.asarray(_label.connected_components_delayed(graph).compute())
    new_ids = new_ids.astype(np.uint32)
    labels = unique.map_blocks(_relabel, new_ids=new_ids, dtype=np.uint32)
    return labels, int(new_ids.max(initial=0))


def _relabel(block: np.ndarray, new_ids: np.ndarray) -> np.ndarray:
    return new_ids[block]
