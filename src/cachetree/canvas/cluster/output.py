"""The output images of a cluster merge, in the run's parts area until they are published.

The client creates one image per head (every pyramid level, empty) in
``.cachetree-parts/canvas-output/<head>.ome.zarr`` when it writes the plan. Tasks write the
level-0 segments they own into it, whole shards at a time, each shard put in place in one
step (a rename, or one object put); finalising writes the seams and the empty segments,
builds the coarse levels (on the cluster when there is one, one shard row per task) and
publishes the images into the node.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from ...errors import NodeNotFoundError
from ...fs.location import Location
from ...images.ngff import ImageInfo
from ...images.pyramid import ImageWriter, finite_range
from ...tree.node import Node
from ...tree.parts import parts_location
from ..rows import finish_head, publish_image
from ..spec import CanvasSpec

__all__ = ["OUTPUT", "OutputImages", "ValueRanges"]

OUTPUT = "canvas-output"
"""Folder of the output images in the node's parts area."""

SegmentTiles = Mapping[int, Mapping[str, np.ndarray] | None]
"""Tile column to each head's normalised ``(C, h, w)`` tile, or None (the fill value)."""


class ValueRanges:
    """Running (min, max) of the finite values of each head, per channel (thread safe)."""

    def __init__(self, spec: CanvasSpec):
        self._low = {n: np.full(h.channels, np.nan) for n, h in spec.heads.items()}
        self._high = {n: np.full(h.channels, np.nan) for n, h in spec.heads.items()}
        self._lock = threading.Lock()

    def add(self, head: str, low: Any, high: Any) -> None:
        """Fold in per-channel minima and maxima (NaN: none)."""
        with self._lock:
            np.fmin(self._low[head], np.asarray(low, np.float64), out=self._low[head])
            np.fmax(self._high[head], np.asarray(high, np.float64), out=self._high[head])

    def add_json(self, ranges: Mapping[str, Any]) -> None:
        """Fold in ranges of :meth:`to_json`."""
        for head, (low, high) in ranges.items():
            self.add(head, _floats(low), _floats(high))

    def get(self, head: str) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)`` per channel of ``head``."""
        with self._lock:
            return self._low[head].copy(), self._high[head].copy()

    def to_json(self) -> dict[str, list[list[float | None]]]:
        """Head to ``[low, high]`` lists per channel, None where there is no value."""
        with self._lock:
            return {
                head: [_nullable(self._low[head]), _nullable(self._high[head])]
                for head in self._low
            }


def _nullable(values: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values]


def _floats(values: list[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], np.float64)


class OutputImages:
    """Every head's output image of a cluster merge (picklable: it holds no open files)."""

    def __init__(self, spec: CanvasSpec, images: dict[str, ImageWriter]):
        self.spec = spec
        self.images = images

    @staticmethod
    def location(node: Location) -> Location:
        """Where the output images of the node at ``node`` are made."""
        return parts_location(node).raw_child(OUTPUT)

    @classmethod
    def require(cls, node: Location, spec: CanvasSpec, ngff_format: str | None) -> OutputImages:
        """The output images of the node, created empty where missing or of another shape."""
        images = {}
        for name, head in spec.heads.items():
            location = cls.location(node).raw_child(f"{name}.ome.zarr")
            shape = _shape(spec, name)
            try:
                image = ImageWriter.open(location, axes=_axes(spec, name), min_size=spec.min_size)
            except NodeNotFoundError:
                image = None
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
        return cls(spec, images)

    @classmethod
    def open(cls, node: Location, spec: CanvasSpec) -> OutputImages:
        """The output images the client created (see :meth:`require`)."""
        return cls(
            spec,
            {
                name: ImageWriter.open(
                    cls.location(node).raw_child(f"{name}.ome.zarr"),
                    axes=_axes(spec, name),
                    min_size=spec.min_size,
                )
                for name in spec.heads
            },
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

    def write_segment(self, ty: int, sx: int, tiles: SegmentTiles, ranges: ValueRanges) -> int:
        """Write segment ``(ty, sx)`` of every head from its tiles, whole shards at a time,
        and fold its values into ``ranges``; returns the shards written."""
        spec, tile = self.spec, self.spec.tile
        columns = self.segment_columns(sx)
        height = min(tile, spec.shape[0] - ty * tile)
        width = min(columns.stop * tile, spec.shape[1]) - columns.start * tile
        written = 0
        for name, image in self.images.items():
            head = spec.heads[name]
            block = np.full((head.channels, height, width), image.fill_value, head.dtype)
            if any(tiles.get(tx) is None for tx in columns) and math.isfinite(spec.fill_value):
                fill = float(np.asarray(spec.fill_value).astype(head.dtype))
                ranges.add(name, np.full(head.channels, fill), np.full(head.channels, fill))
            for tx in columns:
                outputs = tiles.get(tx)
                if outputs is None:
                    continue
                out = outputs[name]
                x = (tx - columns.start) * tile
                block[:, :, x : x + out.shape[-1]] = out
                low_high = np.array([finite_range(channel) for channel in out])
                ranges.add(name, low_high[:, 0], low_high[:, 1])
            layout = image.levels[0]
            per = layout.per_shard[-1]
            for shard_x in range(columns.start // per, -(-columns.stop // per)):
                x = (shard_x * per - columns.start) * tile
                part = block[:, :, x : x + per * tile]
                for c in range(head.channels):
                    index = (c, ty, shard_x) if len(image.axes) == 3 else (ty, shard_x)
                    image.write_shard(
                        0, index, part[c : c + 1] if len(image.axes) == 3 else part[c]
                    )
                    written += 1
        return written

    def publish(
        self,
        node: Node,
        ranges: ValueRanges,
        *,
        client: Any = None,
        storage_options: Mapping[str, Any] | None = None,
        workers: int = 2,
        progress: bool = False,
    ) -> dict[str, ImageInfo]:
        """Build the coarse levels (on the cluster of ``client``, else in threads here),
        write the metadata and put every image into ``node``."""
        for name, image in self.images.items():
            if client is None:
                image.build_levels(workers=workers, progress=progress)
            else:
                _levels_on_cluster(client, image, dict(storage_options or {}))
            finish_head(image, self.spec, name, *ranges.get(name))
        return {
            name: publish_image(image.location, node.item(f"{name}.ome.zarr"))
            for name, image in self.images.items()
        }


def _shape(spec: CanvasSpec, name: str) -> tuple[int, ...]:
    channels = spec.heads[name].channels
    return spec.shape if channels == 1 else (channels, *spec.shape)


def _axes(spec: CanvasSpec, name: str) -> str:
    return "yx" if spec.heads[name].channels == 1 else "cyx"


def _levels_on_cluster(client: Any, image: ImageWriter, options: dict[str, Any]) -> None:
    """Levels 1..n of ``image``, each from the one below, one task per shard row."""
    from distributed import wait

    url, axes = image.location.url, "".join(image.axes)
    for level in range(1, len(image.levels)):
        grid = image.levels[level].shard_grid
        rows: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        for shard in np.ndindex(*grid):
            rows.setdefault(shard[:-1], []).append(shard)
        futures = client.map(
            _downsample_row,
            list(rows.values()),
            url=url,
            options=options,
            axes=axes,
            level=level,
            levels=len(image.levels),
            pure=False,
        )
        wait(futures)
        for future in futures:
            future.result()


def _downsample_row(
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
        Location.from_url(url, **options), axes=axes, max_levels=levels, min_size=1
    )
    image.downsample_shards(level, shards)
