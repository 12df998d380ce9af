"""The output images of a cluster merge, written in place in the node.

The client creates one image per head (every pyramid level, empty) as the node's item
``<head>.ome.zarr`` when it writes the plan, after claiming those items for the run (see
:func:`~cachetree.tree.parts.claim_items`: hidden from the node's listing until the run is
done, removed with the run when it is discarded). Tasks write the level-0 segments they own
into it, whole shards at a time, each shard put in place in one step (a rename, or one
object put); finalising writes the seams and the empty segments, builds the coarse levels
(on the cluster when there is one, but for the small top levels) and writes the metadata: no data
is copied.
"""

from __future__ import annotations

import concurrent.futures
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ...errors import NodeNotFoundError
from ...fs.location import Location
from ...images.ngff import ImageInfo
from ...images.pyramid import ImageWriter, PyramidAssembler, finite_range
from ...tree.parts import claim_items, claimed_items
from ..ranges import ValueRanges
from ..rows import finish_head
from ..spec import CanvasSpec

__all__ = ["OutputImages"]

CLUSTER_LEVEL_BYTES = 64 * 2**20
"""A coarse level whose level below holds fewer bytes is made in the finalising process: a
cluster round costs more than reading it (about 0.4 s on one thread)."""

SegmentTiles = Mapping[int, Mapping[str, np.ndarray] | None]
"""Tile column to each head's normalised ``(C, h, w)`` tile, or None (the fill value)."""


class OutputImages:
    """Every head's output image of a cluster merge, as one process writes into it.

    Level-0 segments are written whole; each also feeds a
    :class:`~cachetree.images.pyramid.PyramidAssembler`, so the coarse-level chunks made of
    this process' segments alone are written with them (a band task writes its band's
    pyramid). Chunks that also need segments written elsewhere stay unwritten and are made
    by :meth:`build_coarse_levels` at the end.
    """

    def __init__(self, spec: CanvasSpec, images: dict[str, ImageWriter], *, pyramid: bool):
        self.spec = spec
        self.images = images
        self._assemblers = (
            {name: PyramidAssembler(image) for name, image in images.items()} if pyramid else {}
        )

    @staticmethod
    def item_name(head: str) -> str:
        """Name of the node's item holding head ``head``'s image."""
        return f"{head}.ome.zarr"

    @classmethod
    def image_location(cls, node: Location, head: str) -> Location:
        """Where head ``head``'s image of the node at ``node`` is made."""
        return node.join(cls.item_name(head))

    @classmethod
    def require(cls, node: Location, spec: CanvasSpec, ngff_format: str | None) -> OutputImages:
        """The output images of the node, claimed for the run and created empty where the
        run had none yet or one of another shape (an image the run claimed before is
        opened, keeping what its tasks wrote; the others are created without looking)."""
        claimed = claimed_items(node)
        claim_items(node, [cls.item_name(name) for name in spec.heads])
        images = {}
        for name, head in spec.heads.items():
            location = cls.image_location(node, name)
            shape = _shape(spec, name)
            image = _reopen(location, spec, name) if cls.item_name(name) in claimed else None
            if image is None or image.shape != shape or image.dtype != head.dtype:
                fill = int(spec.fill_value) if head.dtype.kind in "iu" else spec.fill_value
                image = ImageWriter.create(
                    location,
                    shape,
                    head.dtype,
                    chunk=spec.tile,
                    fill_value=fill,
                    min_size=spec.min_size,
                    format=ngff_format,
                )
            images[name] = image
        return cls(spec, images, pyramid=False)

    @classmethod
    def open(cls, node: Location, spec: CanvasSpec, *, pyramid: bool = False) -> OutputImages:
        """The output images the client created, every level of them (see :meth:`require`;
        no level is looked up); with ``pyramid``, the segments written feed the coarse
        levels (in a task; never where :meth:`build_coarse_levels` runs, which makes what
        no task made)."""
        return cls(
            spec,
            {
                name: ImageWriter.open(
                    cls.image_location(node, name),
                    axes=_axes(spec, name),
                    min_size=spec.min_size,
                    join_stored=False,
                    check_levels=False,
                )
                for name in spec.heads
            },
            pyramid=pyramid,
        )

    @property
    def segment(self) -> int:
        """Tiles per segment: a whole number of level-0 shards of every head."""
        widths = [image.levels[0].per_shard[-1] for image in self.images.values()]
        return min(math.lcm(*widths), self.images_columns)

    @property
    def images_columns(self) -> int:
        """Tile columns of level 0."""
        return -(-self.spec.shape[1] // self.spec.tile)

    def segment_columns(self, sx: int) -> range:
        """Tile columns of segment column ``sx``."""
        step = self.segment
        return range(sx * step, min((sx + 1) * step, self.images_columns))

    @property
    def planes(self) -> list[tuple[str, int]]:
        """``(head, channel)`` of every plane of the output: what a segment is written by."""
        return [(name, c) for name, head in self.spec.heads.items() for c in range(head.channels)]

    def write_segment(self, ty: int, sx: int, tiles: SegmentTiles, ranges: ValueRanges) -> int:
        """Write segment ``(ty, sx)`` of every plane (see :meth:`write_plane`); returns the
        shards written."""
        return sum(self.write_plane(ty, sx, plane, tiles, ranges) for plane in self.planes)

    def write_plane(
        self,
        ty: int,
        sx: int,
        plane: tuple[str, int],
        tiles: SegmentTiles,
        ranges: ValueRanges,
    ) -> int:
        """Write one plane ``(head, channel)`` of segment ``(ty, sx)`` from its tiles, whole
        shards at a time (each chunk encoded straight from its tile), and fold its values
        into ``ranges``; returns the shards written. Planes may be written by several
        threads at once."""
        name, c = plane
        spec, image = self.spec, self.images[name]
        channels = spec.heads[name].channels
        columns = self.segment_columns(sx)
        planes = len(image.axes) == 3
        fill = float(np.asarray(spec.fill_value).astype(image.dtype))
        for tx in columns:
            outputs = tiles.get(tx)
            low, high = np.full((2, channels), np.nan)
            low[c], high[c] = (fill, fill) if outputs is None else finite_range(outputs[name][c])
            ranges.add(name, low, high)
        per = image.levels[0].per_shard[-1]
        shards = range(columns.start // per, -(-columns.stop // per))
        for shard_x in shards:
            index = (c, ty, shard_x) if planes else (ty, shard_x)
            image.write_shard_chunks(0, index, _tile_chunks(tiles, name))
        if name in self._assemblers:
            for tx in columns:
                outputs = tiles.get(tx)
                chunk = None if outputs is None else outputs[name][c]
                self._assemblers[name].add(0, (c, ty, tx) if planes else (ty, tx), chunk)
        return len(shards)

    def build_coarse_levels(
        self,
        owners: np.ndarray,
        *,
        client: Any = None,
        storage_options: Mapping[str, Any] | None = None,
        workers: int = 2,
        progress: bool = False,
    ) -> int:
        """Make every coarse-level shard no single task could make, from the level below.

        A shard of level ``k`` was made by a task when every level-0 segment under it has
        that task as owner (``owners``, see
        :func:`~cachetree.canvas.cluster.ownership.segment_owners`); the others are made
        here, level by level: on the cluster of ``client`` (about four tasks per worker),
        or in ``workers`` threads without a client and for the levels made from fewer than
        :data:`CLUSTER_LEVEL_BYTES` (the small ones at the top of the pyramid).

        Returns
        -------
        int
            Shards made.
        """
        made = 0
        for image in self.images.values():
            for level in range(1, len(image.levels)):
                todo = [
                    shard
                    for shard in np.ndindex(*image.levels[level].shard_grid)
                    if not self._made_by_a_task(image, level, shard, owners)
                ]
                if client is None or _input_bytes(image, level) < CLUSTER_LEVEL_BYTES:
                    _downsample_here(image, level, todo, workers, progress)
                else:
                    _downsample_on_cluster(client, image, level, todo, storage_options)
                made += len(todo)
        return made

    def _made_by_a_task(
        self, image: ImageWriter, level: int, shard: tuple[int, ...], owners: np.ndarray
    ) -> bool:
        region = image.levels[level].shard_region(shard)
        scale, tile = 2**level, self.spec.tile
        rows = slice(region[-2].start * scale // tile, -(-region[-2].stop * scale // tile))
        first = region[-1].start * scale // tile // self.segment
        last = (min(region[-1].stop * scale, self.spec.shape[1]) - 1) // tile // self.segment
        under = owners[rows, first : last + 1]
        return bool(under.size) and under.min() >= 0 and under.min() == under.max()

    def write_metadata(self, ranges: ValueRanges) -> dict[str, ImageInfo]:
        """Write every image's OME-NGFF metadata (after :meth:`build_coarse_levels`); the
        images are in the node already. Returns each head's image as written."""
        return {
            name: finish_head(image, self.spec, name, *ranges.get(name))
            for name, image in self.images.items()
        }


def _tile_chunks(tiles: SegmentTiles, name: str) -> Callable[[tuple[int, ...]], np.ndarray | None]:
    """Level-0 chunk ``(c, ty, tx)`` or ``(ty, tx)`` of head ``name``, from the tiles of one
    tile row (None where no tile is given)."""

    def chunk_of(index: tuple[int, ...]) -> np.ndarray | None:
        outputs = tiles.get(index[-1])
        return None if outputs is None else outputs[name][index[0] if len(index) == 3 else 0]

    return chunk_of


def _reopen(location: Location, spec: CanvasSpec, name: str) -> ImageWriter | None:
    """Head ``name``'s image at ``location`` as made before, or None when it is gone."""
    try:
        return ImageWriter.open(location, axes=_axes(spec, name), min_size=spec.min_size)
    except NodeNotFoundError:
        return None


def _shape(spec: CanvasSpec, name: str) -> tuple[int, ...]:
    channels = spec.heads[name].channels
    return spec.shape if channels == 1 else (channels, *spec.shape)


def _axes(spec: CanvasSpec, name: str) -> str:
    return "yx" if spec.heads[name].channels == 1 else "cyx"


def _input_bytes(image: ImageWriter, level: int) -> int:
    """Bytes of the level that ``level`` is made from."""
    return math.prod(image.levels[level - 1].shape) * image.dtype.itemsize


def _downsample_here(
    image: ImageWriter, level: int, shards: list[tuple[int, ...]], workers: int, progress: bool
) -> None:
    """Shards ``shards`` of ``level`` in ``workers`` threads of this process."""
    with (
        concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool,
        tqdm(total=len(shards), desc=f"pyramid level {level}", disable=not progress) as bar,
    ):
        for future in [pool.submit(image.downsample_shards, level, [s]) for s in shards]:
            future.result()
            bar.update()


def _downsample_on_cluster(
    client: Any,
    image: ImageWriter,
    level: int,
    shards: list[tuple[int, ...]],
    options: Mapping[str, Any] | None,
) -> None:
    """Shards ``shards`` of ``level`` on the cluster, in about four groups per worker."""
    from distributed import wait

    if not shards:
        return
    workers = max(1, len(client.scheduler_info().get("workers", {})))
    groups = np.array_split(np.asarray(shards), min(len(shards), 4 * workers))
    futures = client.map(
        _downsample_group,
        [[tuple(int(i) for i in shard) for shard in group] for group in groups],
        url=image.location.url,
        options=dict(image.location.fs.storage_options if options is None else options),
        axes="".join(image.axes),
        level=level,
        levels=len(image.levels),
        pure=False,
    )
    wait(futures)
    for future in futures:
        future.result()


def _downsample_group(
    shards: list[tuple[int, ...]],
    *,
    url: str,
    options: dict[str, Any],
    axes: str,
    level: int,
    levels: int,
) -> None:
    """On a worker: shards ``shards`` of ``level`` of the image at ``url`` (of ``levels``
    levels)."""
    image = ImageWriter.open(
        Location.from_url(url, **options),
        axes=axes,
        max_levels=levels,
        min_size=1,
        join_stored=False,
        check_levels=False,
    )
    image.downsample_shards(level, shards)
