"""Finished tile rows: normalised and written into the output images, then published."""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import shutil
import threading

import numpy as np

from ..fs.location import Location
from ..fs.pool import BoundedPool
from ..images.ngff import ImageInfo, read_image
from ..images.pyramid import ImageWriter, PyramidAssembler, finite_range
from ..tree.node import Node
from .blocks import block_mean
from .kinds import PROGRESS
from .ranges import ValueRanges
from .spec import CanvasSpec

__all__ = ["RowWriter", "finish_head", "publish_image"]


class RowWriter:
    """Level 0 of every head in the staging area, written tile by tile in the background.

    Tracks the tile rows handed over (:attr:`rows_final`) and those whose chunks are all
    written (:attr:`rows_durable`, recorded in ``progress.json``), each head's value range,
    and at the end builds the pyramids and publishes the images into the node.
    """

    def __init__(
        self, staging: Location, spec: CanvasSpec, pool: BoundedPool, ngff_format: str | None = None
    ):
        self._staging = staging
        self._format = ngff_format
        self._spec = spec
        self._pool = pool
        self._images: dict[str, ImageWriter] = {}
        self._assemblers: dict[str, PyramidAssembler] | None = None
        self._lock = threading.Lock()
        self._ranges = ValueRanges(spec)
        self._written: list[str] = []
        self._row_futures: dict[int, list[concurrent.futures.Future[None]]] = {}
        self.rows_final = 0
        self.rows_durable = 0

    # -- the staging images ---------------------------------------------------------------
    def create(self) -> None:
        """New empty images; their pyramids are built while rows are written."""
        spec = self._spec
        for name, head in spec.heads.items():
            shape = spec.shape if head.channels == 1 else (head.channels, *spec.shape)
            fill = int(spec.fill_value) if head.dtype.kind in "iu" else spec.fill_value
            self._images[name] = ImageWriter.create(
                self._staging.raw_child(f"{name}.ome.zarr"),
                shape,
                head.dtype,
                chunk=spec.tile,
                fill_value=fill,
                min_size=spec.min_size,
                format=self._format,
            )
        self._assemblers = {name: PyramidAssembler(img) for name, img in self._images.items()}
        self._write_progress(0)

    def reopen(self, rows_final: int) -> None:
        """The images of a killed run: rows from ``rows_final`` on are cleared."""
        self.rows_final = self.rows_durable = rows_final
        for name, head in self._spec.heads.items():
            axes = "yx" if head.channels == 1 else "cyx"
            image = ImageWriter.open(
                self._staging.raw_child(f"{name}.ome.zarr"), axes=axes, min_size=self._spec.min_size
            )
            self._images[name] = image
            # rows the killed run wrote after its checkpoint are not covered: clear them
            image.clear_rows(0, rows_final)
        self._write_progress(rows_final)

    def _write_progress(self, rows: int) -> None:
        self._staging.raw_child(PROGRESS).write_text(
            json.dumps({"rows_final": rows, "tile": self._spec.tile})
        )

    # -- rows -----------------------------------------------------------------------------
    def write_tile(
        self, ty: int, tx: int, outputs: dict[str, np.ndarray]
    ) -> list[concurrent.futures.Future[None]]:
        """Write one normalised tile of every head in the background."""
        return [
            self._pool.submit(self._write_one, name, ty, tx, out) for name, out in outputs.items()
        ]

    def empty_tile(self, ty: int, tx: int) -> None:
        """A tile no patch touched: its chunks stay unwritten (they read as the fill value)."""
        fill = self._spec.fill_value
        if math.isfinite(fill):
            for name, head in self._spec.heads.items():
                value = np.full(head.channels, float(np.asarray(fill).astype(head.dtype)))
                self._ranges.add(name, value, value)
        paths = []
        for name, head in self._spec.heads.items():
            for c in range(head.channels):
                index = (c, ty, tx) if head.channels > 1 else (ty, tx)
                paths += self._images[name].write_chunk(0, index, None)
                if self._assemblers is not None:
                    self._assemblers[name].add(0, index, None)
        self._record(paths)

    def end_row(self, ty: int, futures: list[concurrent.futures.Future[None]]) -> None:
        """Every tile of row ``ty`` was handed over; ``futures`` are its writes."""
        self._row_futures[ty] = futures
        self.rows_final = ty + 1

    def advance(self, *, wait: bool = False) -> None:
        """Advance the durable-row mark over rows whose chunks are all written."""
        advanced = False
        while self.rows_durable < self.rows_final:
            futures = self._row_futures.get(self.rows_durable, [])
            if wait:
                concurrent.futures.wait(futures)
            elif not all(f.done() for f in futures):
                break
            self._row_futures.pop(self.rows_durable, None)
            self.rows_durable += 1
            advanced = True
        self._pool.raise_error()
        if advanced:
            self._write_progress(self.rows_durable)

    def _write_one(self, name: str, ty: int, tx: int, out: np.ndarray) -> None:
        """Worker thread: encode and write one tile of one head; fold in its value range."""
        image = self._images[name]
        channels = out.shape[0]
        lows, highs = np.empty(channels), np.empty(channels)
        paths = []
        assembler = self._assemblers[name] if self._assemblers is not None else None
        for c in range(channels):
            index = (c, ty, tx) if len(image.axes) == 3 else (ty, tx)
            paths += image.write_chunk(0, index, out[c])
            lows[c], highs[c] = finite_range(out[c])
            if assembler is not None:
                assembler.add(0, index, out[c])
        self._ranges.add(name, lows, highs)
        self._record(paths)

    def _record(self, paths: list[str]) -> None:
        """Remember level-0 files written, for the next checkpoint's fsync."""
        if paths and self._staging.is_local:
            with self._lock:
                self._written += paths

    # -- coarse levels of the rows written -----------------------------------------------
    def built_levels(self) -> int:
        """Pyramid levels built while rows are written (0 for a resumed run, whose levels
        are built at the end)."""
        if self._assemblers is None or not self._images:
            return 0
        return len(next(iter(self._images.values())).shapes) - 1

    def level_row_means(self, level: int, row: int, factor: int) -> dict[str, np.ndarray]:
        """Chunk row ``row`` of pyramid ``level`` of every head, ``(C, h, w)``, averaged over
        ``factor x factor`` blocks chunk by chunk (only one chunk is held at a time).

        Complete once every level-0 tile row it covers is durable (:attr:`rows_durable`).
        """
        out = {}
        for name, image in self._images.items():
            *lead, _, columns = image.grid(level)
            channels = lead[0] if lead else 1
            out[name] = np.stack(
                [
                    np.concatenate(
                        [
                            block_mean(
                                image.read_chunk(level, (c, row, tx) if lead else (row, tx))[
                                    np.newaxis
                                ],
                                factor,
                            )[0]
                            for tx in range(columns)
                        ],
                        axis=1,
                    )
                    for c in range(channels)
                ]
            )
        return out

    # -- state for checkpoints ------------------------------------------------------------
    def value_ranges(self) -> dict[str, np.ndarray]:
        """Head name to its ``(2, C)`` running (min, max) per channel."""
        return self._ranges.stacked()

    def restore_value_ranges(self, ranges: dict[str, np.ndarray]) -> None:
        """Continue from the ranges of :meth:`value_ranges`."""
        self._ranges.restore(ranges)

    def take_written(self) -> list[str]:
        """Local chunk files written since the last call."""
        with self._lock:
            paths, self._written = self._written, []
        return paths

    # -- the end --------------------------------------------------------------------------
    def publish(self, node: Node, *, workers: int, progress: bool) -> dict[str, ImageInfo]:
        """Complete the pyramids and metadata and put each image into ``node``."""
        infos: dict[str, ImageInfo] = {}
        for name, image in self._images.items():
            assembler = self._assemblers[name] if self._assemblers is not None else None
            if assembler is None or not assembler.complete():
                # resumed run: the levels above 0 are rebuilt from level 0
                image.build_levels(workers=workers, progress=progress)
            finish_head(image, self._spec, name, *self._ranges.get(name))
        for name, image in self._images.items():
            infos[name] = publish_image(image.location, node.item(f"{name}.ome.zarr"))
        return infos


def finish_head(
    image: ImageWriter, spec: CanvasSpec, name: str, low: np.ndarray, high: np.ndarray
) -> ImageInfo:
    """Write the OME-NGFF metadata of head ``name``'s image: its value range per channel
    (``low``, ``high``: NaN where no finite value), channel names and physical scale;
    returns the image's metadata (no pixel is read)."""
    return image.finish(
        low=low if len(low) > 1 else low[0],
        high=high if len(high) > 1 else high[0],
        name=name,
        channel_names=spec.channel_names.get(name) if len(low) > 1 else None,
        scale=spec.scale,
        units=spec.units,
    )


def publish_image(source: Location, target: Location) -> ImageInfo:
    """Put the finished image at ``target`` and return its metadata, keeping ``source``
    until the node is committed.

    Locally the files are hard-linked (no data is copied); elsewhere they are copied.
    """
    _copy_image(source, target)
    return read_image(target)


def _copy_image(source: Location, target: Location) -> None:
    target.remove()
    if source.is_local and target.is_local:
        try:
            shutil.copytree(source.path, target.path, copy_function=os.link)
            return
        except OSError:
            shutil.rmtree(target.path, ignore_errors=True)
            shutil.copytree(source.path, target.path)
            return
    source.fs.copy(source.path, target.path, recursive=True)
