"""The one OME-Zarr writer: level 0 from chunks, regions or a dask array, then the pyramid.

:class:`ImageWriter` writes every image cachetree stores: whole images
(:func:`cachetree.images.ngff.write_image`, from a dask array), labels, and the heads of a
canvas, whose level 0 arrives tile by tile from many threads. It encodes chunks itself
(so many can be encoded in parallel without the zarr machinery in the way) and stores
them in shards (:mod:`cachetree.images.layout`), and reads them back here too (a chunk
with :meth:`ImageWriter.read_chunk`, a region shard by shard for the pyramid); zarr-python
makes the metadata documents, which are written in one batch
(:mod:`cachetree.images.documents`). A shard is never read back and
rewritten: chunks that arrive one at a time are appended, encoded, to a temp file (nothing
is held in memory), and once the last one is there the index is added and the file goes
into place in one step (a rename on local disk, one object put elsewhere). Levels 1..n are
built from the level below (:meth:`ImageWriter.build_levels`) or while level 0 streams in
(:class:`PyramidAssembler`); :meth:`ImageWriter.finish` adds the OME-NGFF metadata (0.5 on
zarr v3, or 0.4 on zarr v2).
"""

from __future__ import annotations

import concurrent.futures
import math
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import zarr
from numcodecs import Blosc
from tqdm import tqdm

from ..errors import InvalidDataError, NodeNotFoundError, ShapeMismatchError
from ..fs.location import Location
from . import metadata as meta
from . import policy
from .documents import group_documents, image_documents, stored_array
from .layout import LevelLayout
from .shards import ShardWriter

__all__ = ["ImageWriter", "PyramidAssembler", "build_pyramid", "finite_range"]

_BARS: dict[str, tqdm] = {}
"""Progress bars of the writes under way, by key: dask tasks look theirs up instead of
carrying it, so they stay picklable; a task in another process finds none."""


class ImageWriter(ShardWriter):
    """Writer of one OME-Zarr image (or labels) and its pyramid.

    Make one with :meth:`create` (new image) or :meth:`open` (continue an image whose
    level 0 is partly or fully written). Level 0 is written with
    :meth:`~cachetree.images.shards.ShardWriter.write_chunk` (any thread, any order),
    :meth:`~cachetree.images.shards.ShardWriter.write_shard` (both from
    :class:`~cachetree.images.shards.ShardWriter`) or :meth:`write_dask`; :meth:`build_levels`
    then fills levels 1..n and :meth:`finish` writes the metadata that makes the group an
    OME-Zarr image.

    Attributes
    ----------
    location
        The image group.
    axes
        Axis names, ending with ``y, x``.
    levels
        Layout of every level, level 0 first.
    labels
        Labels are downsampled by picking pixels, images by 2x2 means.
    """

    def __init__(
        self,
        location: Location,
        *,
        axes: tuple[str, ...],
        levels: list[LevelLayout],
        labels: bool = False,
        existing: bool = False,
    ):
        super().__init__(location, axes=axes, levels=levels, existing=existing)
        self.labels = labels

    # -- construction -------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        location: Location | str,
        shape: Sequence[int],
        dtype: Any,
        *,
        axes: str | Sequence[str] | None = None,
        chunk: int | Sequence[int] = meta.DEFAULT_TILE,
        fill_value: float | int = 0,
        min_size: int = 256,
        max_levels: int | None = None,
        compressor: Blosc | None = None,
        labels: bool = False,
        format: str | None = None,
    ) -> ImageWriter:
        """Create an empty image group with every pyramid level (replacing what was there).

        Parameters
        ----------
        location
            Directory of the image group (e.g. ``node.item("probs.ome.zarr")``).
        shape
            Level-0 shape; the last two axes are y and x.
        dtype
            Pixel type (bool, integer or float; integer for labels).
        axes
            Axis names as for :func:`cachetree.images.ngff.write_image` (default by
            ``len(shape)``).
        chunk
            Chunk edge in y and x (1 along the other axes), or a full chunk shape.
        fill_value
            Value of chunks never written.
        min_size, max_levels
            Stop adding levels once the larger of y and x is at most ``min_size`` or there
            are ``max_levels`` levels.
        compressor
            Blosc compressor (default: :func:`cachetree.images.policy.compressor`).
        labels
            A label image: pyramid by picking pixels, ``image-label`` metadata.
        format
            OME-NGFF version: ``"0.5"`` (zarr v3 with shards, the default) or ``"0.4"``
            (zarr v2).
        """
        loc = Location.from_url(location)
        dtype = np.dtype(dtype)
        shape_t = tuple(int(n) for n in shape)
        if not 2 <= len(shape_t) <= 5 or min(shape_t) < 1:
            raise ShapeMismatchError(
                f"image shape {shape_t} must have 2 to 5 axes, each at least 1 long"
            )
        axes_t = meta.check_axes(axes, len(shape_t), labels)
        meta.check_dtype(dtype, labels)
        version = meta.check_format(format)
        chunks = _chunk_shape(axes_t, chunk)
        if min_size < 1 or (max_levels is not None and max_levels < 1):
            raise InvalidDataError(
                f"min_size ({min_size}) and max_levels ({max_levels}) must be at least 1"
            )
        levels = [
            LevelLayout.plan(
                str(index),
                level_shape,
                chunks,
                dtype=dtype,
                fill_value=fill_value,
                zarr_format=meta.zarr_format_of(version),
                dimension_names=axes_t,
                codec=compressor,
            )
            for index, level_shape in enumerate(meta.level_shapes(shape_t, min_size, max_levels))
        ]
        loc.remove()
        loc.write_files(image_documents(levels))
        return cls(loc, axes=axes_t, levels=levels, labels=labels)

    @classmethod
    def open(
        cls,
        location: Location | str,
        *,
        axes: str | Sequence[str] | None = None,
        min_size: int = 256,
        max_levels: int | None = None,
        labels: bool = False,
        join_stored: bool = True,
        check_levels: bool = True,
    ) -> ImageWriter:
        """Continue writing the image at ``location`` (its level ``"0"`` must exist).

        Missing pyramid levels are created (empty), so a level 0 written by anything that
        follows this layout can get its pyramid with :meth:`build_levels`; without
        ``check_levels`` they are taken to exist as planned, and nothing is looked up (an
        image :meth:`create` made, on an object store where each look costs requests). With
        ``join_stored`` (the default), chunks written one at a time join those their shard
        holds already; without it, each shard is written whole by this writer (e.g. one of
        many processes that each write whole shards of their own) and nothing is read.

        Raises
        ------
        NodeNotFoundError
            There is no level-0 array at ``location``.
        InvalidDataError
            Level 0 is not laid out as this writer writes (Blosc chunks, in shards on
            zarr v3).
        """
        loc = Location.from_url(location)
        try:
            level0 = LevelLayout.from_array("0", stored_array(loc, "0"))
        except NodeNotFoundError as exc:
            raise NodeNotFoundError(f"no level-0 array at {loc.url}") from exc
        group = zarr.open_group(loc.zarr_store(), mode="r+") if check_levels else None
        axes_t = meta.check_axes(axes, len(level0.shape), labels)
        levels = [level0]
        for index, level_shape in enumerate(
            meta.level_shapes(level0.shape, min_size, max_levels)[1:], start=1
        ):
            layout = LevelLayout.plan(
                str(index),
                level_shape,
                level0.chunks,
                dtype=level0.dtype,
                fill_value=level0.fill_value,
                zarr_format=level0.zarr_format,
                dimension_names=axes_t,
                codec=level0.codec,
            )
            if group is not None:
                existing = group.get(layout.path)
                if existing is None or tuple(existing.shape) != level_shape:
                    layout.create(group)
            levels.append(layout)
        return cls(loc, axes=axes_t, levels=levels, labels=labels, existing=join_stored)

    # -- geometry -------------------------------------------------------------------------
    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """Shape of every level, level 0 first."""
        return [layout.shape for layout in self.levels]

    @property
    def shape(self) -> tuple[int, ...]:
        """Level-0 shape."""
        return self.levels[0].shape

    @property
    def dtype(self) -> np.dtype:
        """Pixel type."""
        return self.levels[0].dtype

    @property
    def fill_value(self) -> Any:
        """Value of pixels never written."""
        return self.levels[0].fill_value

    @property
    def version(self) -> str:
        """OME-NGFF version written: ``"0.5"`` on zarr v3, ``"0.4"`` on zarr v2."""
        return "0.5" if self.levels[0].zarr_format == 3 else "0.4"

    def grid(self, level: int = 0) -> tuple[int, ...]:
        """Number of chunks along each axis of ``level``."""
        return self.levels[level].grid

    def chunk_extent(self, level: int, index: Sequence[int]) -> tuple[int, int]:
        """Valid (height, width) of chunk ``index`` (edge chunks are clipped)."""
        region = self.levels[level].chunk_region(index)
        return region[-2].stop - region[-2].start, region[-1].stop - region[-1].start

    # -- reading --------------------------------------------------------------------------
    def read_chunk(self, level: int, index: Sequence[int]) -> np.ndarray:
        """The valid region of one stored chunk (the fill value where it was never written).

        The chunk's bytes are read and decoded here, in the calling thread, without opening
        the zarr array: reading chunks back while a canvas merges starts no zarr I/O threads
        (each of which would keep a heap of its own).
        """
        layout = self.levels[level]
        extent = tuple(s.stop - s.start for s in layout.chunk_region(index))
        encoded = self.read_encoded(level, index)
        if encoded is None:
            block = np.full(extent, self.fill_value, self.dtype)
        else:
            block = layout.decode_chunk(encoded)[tuple(slice(0, n) for n in extent)]
        return block.reshape(block.shape[-2:]) if block.ndim > 2 else block

    # -- whole levels ---------------------------------------------------------------------
    def write_dask(self, source: Any, *, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Compute ``source`` (a dask array of the level-0 shape) once into level 0.

        Every block of the computation is one whole shard. Returns the minimum and maximum
        of the finite values, one per channel when there is a ``c`` axis.
        """
        layout = self.levels[0]
        level = source.rechunk(layout.shards)
        channel_axis = self.axes.index("c") if "c" in self.axes else None
        out_chunks = (
            *(c if axis == channel_axis else (1,) * len(c) for axis, c in enumerate(level.chunks)),
            (2,),
        )
        bar_key = uuid.uuid4().hex
        with tqdm(
            total=level.npartitions, unit="shard", desc="OME-Zarr", disable=not progress
        ) as bar:
            _BARS[bar_key] = bar
            try:
                stats = level.map_blocks(
                    _write_block,
                    writer=self,
                    channel_axis=channel_axis,
                    bar_key=bar_key,
                    chunks=out_chunks,
                    new_axis=level.ndim,
                    dtype=level.dtype,
                    meta=np.empty((0,) * (level.ndim + 1), level.dtype),
                    name=f"omezarr-store-{uuid.uuid4().hex}",
                ).compute()
            finally:
                del _BARS[bar_key]
        other_axes = tuple(a for a in range(level.ndim) if a != channel_axis)
        low = np.fmin.reduce(stats[..., 0], axis=other_axes)
        high = np.fmax.reduce(stats[..., 1], axis=other_axes)
        return low, high

    def build_levels(self, *, workers: int = 2, progress: bool = False) -> None:
        """Fill levels 1..n, each from the level below, shard by shard.

        Memory stays at a few shards per worker whatever the image size.
        """
        self.flush()
        total = sum(math.prod(lv.shard_grid) for lv in self.levels[1:])
        with (
            tqdm(total=total, unit="shard", desc="pyramid", disable=not progress) as bar,
            concurrent.futures.ThreadPoolExecutor(
                max(1, workers), thread_name_prefix="cachetree-pyramid"
            ) as pool,
        ):
            for level in range(1, len(self.levels)):
                for future in _bounded(
                    pool,
                    (
                        (self._downsample_shard, level, shard)
                        for shard in np.ndindex(*self.levels[level].shard_grid)
                    ),
                    window=max(4, 4 * workers),
                ):
                    future.result()
                    bar.update(1)

    def downsample_shards(self, level: int, shards: Sequence[Sequence[int]]) -> None:
        """Make the given shards of ``level`` (>= 1) from the level below, which must be
        complete (e.g. one shard row per task when the levels are built on a cluster)."""
        for shard in shards:
            self._downsample_shard(level, tuple(int(i) for i in shard))

    def _downsample_shard(self, level: int, shard: tuple[int, ...]) -> None:
        """Make shard ``shard`` of ``level`` from the region of the level below it covers.

        The region below is read one chunk row at a time, so a shard twice the width of the
        widest shards never needs more than a chunk row of it at once.
        """
        region = self.levels[level].shard_region(shard)
        shape_below = self.levels[level - 1].shape
        step = max(1, self.levels[level - 1].chunks[-2] // 2)  # output rows per chunk row below
        parts = []
        for y in range(region[-2].start, region[-2].stop, step):
            rows = slice(y, min(y + step, region[-2].stop))
            source = tuple(
                slice(2 * r.start, min(2 * r.stop, n)) if axis >= len(region) - 2 else r
                for axis, (r, n) in enumerate(
                    zip((*region[:-2], rows, region[-1]), shape_below, strict=True)
                )
            )
            block = self.read_region(level - 1, source)
            parts.append(policy.downsample_2x2(block, labels=self.labels))
        self.write_shard(level, shard, np.concatenate(parts, axis=-2))

    def finish(
        self,
        *,
        low: Any = None,
        high: Any = None,
        name: str | None = None,
        channel_names: Sequence[str] | None = None,
        extra_attrs: Mapping[str, Any] | None = None,
        scale: Sequence[float] | None = None,
        translation: Sequence[float] | None = None,
        units: str | Mapping[str, str | None] | Sequence[str | None] | None = None,
        label_source: str | None = None,
    ) -> meta.ImageInfo:
        """Write the OME-NGFF metadata (call after every level is written).

        Parameters
        ----------
        low, high
            Minimum and maximum of the finite values of level 0: scalars, or one per
            channel when there is a ``c`` axis (NaN for a channel without finite values).
            Not used for labels.
        name
            Image name in the metadata (default: the location's name without suffix).
        channel_names
            One per channel of the ``c`` axis.
        extra_attrs
            More group attributes.
        scale, translation
            Physical pixel size and origin of level 0: one value per axis, or one per
            spatial axis (default 1 and 0).
        units
            Unit of the spatial axes (``"micrometer"``), or per axis (mapping or sequence).
        label_source
            For labels under an image: the image's path relative to the labels.
        """
        self.flush()
        shape = self.shape
        names = meta.check_channel_names(channel_names, self.axes, shape)
        extra = meta.check_extra_attrs(extra_attrs)
        base_scale = meta.per_axis(scale, self.axes, 1.0, "scale")
        if any(not 0 < s < math.inf for s in base_scale):
            raise InvalidDataError(f"scale {base_scale} must be positive and finite on every axis")
        base_translation = meta.per_axis(translation, self.axes, 0.0, "translation")
        axis_units = meta.check_units(units, self.axes)
        name = name or meta.default_name(self.location)
        version = self.version
        attrs: dict[str, Any] = {
            "multiscales": meta.multiscales_metadata(
                name,
                self.axes,
                len(self.levels),
                base_scale,
                base_translation,
                self.labels,
                units=axis_units,
                version=version,
            )
        }
        if self.labels:
            attrs["image-label"] = {"version": version}
            if label_source is not None:
                attrs["image-label"]["source"] = {"image": label_source}
        else:
            attrs["omero"] = meta.omero_metadata(
                name,
                self.axes,
                shape,
                np.atleast_1d(np.asarray(low, dtype=np.float64)),
                np.atleast_1d(np.asarray(high, dtype=np.float64)),
                names,
                dtype=self.dtype,
                version=version,
            )
        stored = {**extra, **meta.group_attributes(version, attrs)}
        zarr_format = self.levels[0].zarr_format
        self.location.write_files(group_documents(self.location, zarr_format, stored))
        return meta.image_info(self.location, attrs, version, self.shapes, str(self.dtype))


def _write_block(
    block: np.ndarray,
    writer: ImageWriter,
    channel_axis: int | None,
    bar_key: str,
    block_info: dict | None = None,
) -> np.ndarray:
    """Store ``block`` (one whole shard of level 0); return its finite min and max per channel.

    The result has the block's extent along the channel axis, 1 along the other axes, and a
    trailing axis holding (min, max). A channel with no finite value gets NaN.
    """
    shard = tuple(block_info[0]["chunk-location"])
    writer.write_shard(0, shard, block)
    bar = _BARS.get(bar_key)  # None in a worker process of a distributed scheduler
    if bar is not None:
        bar.update(1)
    values = block[np.newaxis] if channel_axis is None else np.moveaxis(block, channel_axis, 0)
    values = values.reshape(len(values), -1)
    if np.issubdtype(values.dtype, np.floating):
        values = np.where(np.isfinite(values), values, np.nan)
    stats = np.stack([np.fmin.reduce(values, axis=1), np.fmax.reduce(values, axis=1)], axis=-1)
    shape = [1] * block.ndim
    if channel_axis is not None:
        shape[channel_axis] = block.shape[channel_axis]
    return stats.reshape(*shape, 2)


def _bounded(
    pool: concurrent.futures.Executor, calls: Iterator[tuple[Any, ...]], window: int
) -> Iterator[concurrent.futures.Future[Any]]:
    """Submit ``calls`` keeping at most ``window`` in flight; yield each when done."""
    pending: set[concurrent.futures.Future[Any]] = set()
    for fn, *args in calls:
        if len(pending) >= window:
            done, pending = concurrent.futures.wait(
                pending, return_when=concurrent.futures.FIRST_COMPLETED
            )
            yield from done
        pending.add(pool.submit(fn, *args))
    yield from concurrent.futures.as_completed(pending)


def _chunk_shape(axes: tuple[str, ...], chunk: int | Sequence[int]) -> tuple[int, ...]:
    """Chunks of level 0: an int is the y/x tile (1 along t, c, z), a sequence is the shape."""
    if isinstance(chunk, int | np.integer) and not isinstance(chunk, bool):
        wanted = tuple(int(chunk) if a in "yx" else 1 for a in axes)
    elif isinstance(chunk, Sequence) and not isinstance(chunk, str):
        wanted = tuple(chunk)
        if len(wanted) != len(axes):
            raise ShapeMismatchError(
                f"chunks {wanted} has {len(wanted)} entries for {len(axes)}-D data: "
                "give an int (y/x tile size) or one size per axis"
            )
    else:
        raise InvalidDataError(f"chunk must be a positive integer or a shape, got {chunk!r}")
    if (
        not all(isinstance(c, int | np.integer) and not isinstance(c, bool) for c in wanted)
        or min(wanted) < 1
    ):
        raise InvalidDataError(f"chunk sizes {wanted} must be positive integers")
    return tuple(int(c) for c in wanted)


class PyramidAssembler:
    """Builds levels 1..n while level 0 is written, without reading anything back.

    Feed every level-0 chunk once, as it is written (:meth:`add`; ``None`` for a chunk
    left at the fill value). Each is halved at once into its quarter of the level-1 chunk
    above it; a level-1 chunk is written (and halved into level 2, and so on) when its last
    quarter arrives. Only partly filled chunks are held: with chunks arriving row by row,
    about ``chunk / 2`` rows of every level. Thread safe. The result equals
    :meth:`ImageWriter.build_levels` exactly (same 2x2 means, same edge handling).
    """

    def __init__(self, writer: ImageWriter):
        chunk = writer.levels[0].chunks
        if any(c % 2 for c in chunk[-2:]) and len(writer.levels) > 1:
            raise InvalidDataError(f"incremental pyramids need even chunks, not {chunk}")
        if any(c != 1 for c in chunk[:-2]):
            raise InvalidDataError(f"incremental pyramids need chunks of 1 off y/x, not {chunk}")
        self.writer = writer
        self._pending: dict[tuple[int, ...], list[Any]] = {}
        self._lock = threading.Lock()

    def _expected(self, level: int, index: tuple[int, ...]) -> int:
        *_, gy, gx = self.writer.grid(level - 1)
        ty, tx = index[-2], index[-1]
        return min(2, gy - 2 * ty) * min(2, gx - 2 * tx)

    def add(self, level: int, index: Sequence[int], block: np.ndarray | None) -> list[str]:
        """Account for chunk ``index`` of ``level`` (its valid region, or None for fill).

        Returns the paths of the files stored on the levels above as a result.
        """
        if level + 1 >= len(self.writer.levels):
            return []
        *lead, ty, tx = (int(i) for i in index)
        target = (level + 1, *lead, ty // 2, tx // 2)
        down = (
            None
            if block is None
            else policy.downsample_2x2(
                np.asarray(block).reshape(np.shape(block)[-2:]), labels=self.writer.labels
            )
        )
        with self._lock:
            entry = self._pending.get(target)
            if entry is None:
                entry = [{}, self._expected(level + 1, target[1:])]
                self._pending[target] = entry
            entry[0][(ty % 2, tx % 2)] = down  # only the quarters received are held
            done = len(entry[0]) == entry[1]
            if done:
                del self._pending[target]
        if not done:
            return []
        data = self._assemble(level + 1, target[1:], entry[0])
        paths = self.writer.write_chunk(level + 1, target[1:], data)
        return paths + self.add(level + 1, target[1:], data)

    def _assemble(
        self, level: int, index: tuple[int, ...], quarters: dict[tuple[int, int], Any]
    ) -> np.ndarray | None:
        """The chunk made of its quarters, or None when all of them are fill."""
        if all(q is None for q in quarters.values()):
            return None
        h, w = self.writer.chunk_extent(level, index)
        half_y, half_x = (-(-c // 2) for c in self.writer.levels[level - 1].chunks[-2:])
        data = np.empty((h, w), self.writer.dtype)
        for (qy, qx), quarter in quarters.items():
            y0, x0 = qy * half_y, qx * half_x
            y1, x1 = min(h, y0 + half_y), min(w, x0 + half_x)
            if quarter is None:
                data[y0:y1, x0:x1] = self.writer.fill_value
            else:
                data[y0:y1, x0:x1] = quarter
        return data

    def complete(self) -> bool:
        """Whether every chunk fed so far has reached the top level."""
        with self._lock:
            return not self._pending


def build_pyramid(
    location: Location | str,
    *,
    min_size: int = 256,
    workers: int = 2,
    progress: bool = False,
    name: str | None = None,
) -> meta.ImageInfo:
    """Build levels 1..n of the OME-Zarr image at ``location`` from its level 0.

    Level 0 must already be written as :class:`ImageWriter` writes it (Blosc chunks, in
    shards on zarr v3, ``/`` separator on zarr v2); the metadata is (re)written with
    display windows computed from level 0.
    """
    writer = ImageWriter.open(location, min_size=min_size)
    writer.build_levels(workers=workers, progress=progress)
    low, high = _level_range(writer)
    return writer.finish(low=low, high=high, name=name)


def _level_range(writer: ImageWriter) -> tuple[np.ndarray, np.ndarray]:
    """Finite minimum and maximum of level 0, per channel when there is a ``c`` axis."""
    layout = writer.levels[0]
    channel_axis = writer.axes.index("c") if "c" in writer.axes else None
    count = writer.shape[channel_axis] if channel_axis is not None else 1
    low = np.full(count, np.nan)
    high = np.full(count, np.nan)
    for shard in np.ndindex(*layout.shard_grid):
        region = layout.shard_region(shard)
        block = writer.read_region(0, region)
        if channel_axis is None:
            channels = [(0, block)]
        else:
            first = region[channel_axis].start
            moved = np.moveaxis(block, channel_axis, 0)
            channels = [(first + i, moved[i]) for i in range(len(moved))]
        for c, values in channels:
            lo, hi = finite_range(values)
            low[c] = np.fmin(low[c], lo)
            high[c] = np.fmax(high[c], hi)
    return low, high


def finite_range(block: np.ndarray) -> tuple[float, float]:
    """Minimum and maximum of the finite values of ``block`` (NaN, NaN when there are none)."""
    if block.size == 0:
        return math.nan, math.nan
    if block.dtype.kind != "f":
        return float(block.min()), float(block.max())
    lo, hi = float(block.min()), float(block.max())
    if math.isfinite(lo) and math.isfinite(hi):
        return lo, hi
    finite = block[np.isfinite(block)]
    if finite.size == 0:
        return math.nan, math.nan
    return float(finite.min()), float(finite.max())
