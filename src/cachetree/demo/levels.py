"""Full-resolution planes of a node's OME-Zarr images, read region by region through zarr.

The demo's stages read regions of images many chunks wide (a strip of the slide under a
row of patches, a block of the model heads with its halo, a strip of labels). Read through
the lazy dask pyramid of :meth:`~cachetree.tree.node.Node.open_image`, every 512-px chunk
is one task that looks up its shard's index on its own; zarr reads the whole region in one
call, several times faster, and holds only the region.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from ..images.metadata import require_image
from ..tree.node import Node

__all__ = ["Plane", "full_resolution"]


def full_resolution(node: Node, image: str) -> zarr.Array:
    """Level 0 of image (or labels) item ``image`` of ``node``, opened read-only."""
    location, attrs, _ = require_image(node.item(f"{image}.ome.zarr"))
    path = attrs["multiscales"][0]["datasets"][0]["path"]
    return zarr.open_array(location.raw_child(path).zarr_store(read_only=True), mode="r")


@dataclass(frozen=True)
class Plane:
    """The ``(y, x)`` plane of channel ``channel`` of an image's level 0 (``(c, y, x)`` or
    ``(y, x)``); ``plane[ys, xs]`` reads that region alone, as numpy."""

    array: Any
    channel: int = 0

    @classmethod
    def of(cls, node: Node, image: str, channel: int = 0) -> Plane:
        """Channel ``channel`` of image item ``image`` of ``node``."""
        return cls(full_resolution(node, image), channel)

    @property
    def shape(self) -> tuple[int, int]:
        """Height and width."""
        return tuple(self.array.shape[-2:])

    def __getitem__(self, window: tuple[slice, slice]) -> np.ndarray:
        index = (self.channel, *window) if self.array.ndim == 3 else window
        return np.asarray(self.array[index])
