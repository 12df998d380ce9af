"""OME-Zarr images written chunk by chunk: level 0 from tiles, the pyramid from level 0.

:func:`cachetree.images.ngff.write_image` needs the whole image as one (dask) array. A patch
merger produces its result tile by tile instead, so :class:`ImageWriter` writes level 0
one chunk at a time (from any thread, encoding chunks itself, so many chunks can be written
in parallel without the zarr machinery in the way), then builds levels 1..n by reading back
the level below, and finally adds the ``multiscales`` and ``omero`` metadata. The layout
and metadata are the same as :func:`~cachetree.images.ngff.write_image` writes (OME-NGFF 0.4 on
zarr format 2, ``/`` chunk separator, chunks of 1 along non-spatial axes), so the result
opens with :func:`cachetree.images.ngff.open_image`, ``ome-zarr-py`` and napari.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import posixpath
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zarr
from numcodecs import Blosc
from tqdm import tqdm

from ..errors import InvalidDataError, NodeNotFoundError, ShapeMismatchError
from ..fs.location import Location
from . import ngff, policy

__all__ = ["ImageWriter", "PyramidAssembler", "build_pyramid"]


class ImageWriter:
    """Writer of one OME-Zarr image whose level 0 arrives chunk by chunk.

    Make one with :meth:`create` (new image) or :meth:`open` (continue an image whose
    level 0 is partly or fully written). :meth:`write_chunk` is thread safe; chunks may
    arrive in any order. :meth:`build_levels` then fills levels 1..n from level 0 and
    :meth:`finish` writes the metadata that makes the group an OME-Zarr image.

    Attributes
    ----------
    location
        The image group.
    axes
        Axis names, ending with ``y, x``; other axes have chunk size 1.
    shapes
        Shape of every level, level 0 first.
    chunk
        Chunk edge in y and x.
    """

    def __init__(
        self,
        location: Location,
        *,
        axes: tuple[str, ...],
        shapes: list[tuple[int, ...]],
        dtype: np.dtype,
        chunk: int,
        fill_value: Any,
        compressor: Blosc,
    ):
        self.location = location
        self.axes = axes
        self.shapes = shapes
        self.dtype = np.dtype(dtype)
        self.chunk = chunk
        self.fill_value = fill_value
        self.compressor = compressor
        self._made_dirs: set[str] = set()
        self._dir_lock = threading.Lock()

    # -- construction -------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        location: Location | str,
        shape: Sequence[int],
        dtype: Any,
        *,
        axes: str | Sequence[str] | None = None,
        chunk: int = ngff.DEFAULT_TILE,
        fill_value: float | int = 0,
        min_size: int = 256,
        max_levels: int | None = None,
        compressor: Blosc | None = None,
    ) -> ImageWriter:
        """Create an empty image group with every pyramid level (replacing what was there).

        Parameters
        ----------
        location
            Directory of the image group (e.g. ``node.item("probs.ome.zarr")``).
        shape
            Level-0 shape; the last two axes are y and x.
        dtype
            Pixel type (bool, integer or float).
        axes
            Axis names as for :func:`cachetree.images.ngff.write_image` (default by ``len(shape)``).
        chunk
            Chunk edge in y and x.
        fill_value
            Value of chunks never written.
        min_size, max_levels
            Stop adding levels once the larger of y and x is at most ``min_size`` or there
            are ``max_levels`` levels.
        compressor
            Blosc compressor (default: :func:`cachetree.images.policy.compressor`).
        """
        loc = Location.from_url(location)
        dtype = np.dtype(dtype)
        shape_t = tuple(int(n) for n in shape)
        if not 2 <= len(shape_t) <= 5 or min(shape_t) < 1:
            raise ShapeMismatchError(
                f"image shape {shape_t} must have 2 to 5 axes, each at least 1 long"
            )
        axes_t = ngff.check_axes(axes, len(shape_t), False)
        ngff.check_dtype(dtype, False)
        if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
            raise InvalidDataError(f"chunk must be a positive integer, got {chunk!r}")
        if min_size < 1 or (max_levels is not None and max_levels < 1):
            raise InvalidDataError(
                f"min_size ({min_size}) and max_levels ({max_levels}) must be at least 1"
            )
        shapes = ngff.level_shapes(shape_t, min_size, max_levels)
        compressor = compressor or policy.compressor(dtype)
        loc.remove()
        group = zarr.open_group(loc.zarr_store(), mode="w", zarr_format=2)
        for index, level_shape in enumerate(shapes):
            group.create_array(
                str(index),
                shape=level_shape,
                chunks=_chunks(level_shape, chunk),
                dtype=dtype,
                compressors=compressor,
                chunk_key_encoding={"name": "v2", "separator": "/"},
                fill_value=fill_value,
            )
        return cls(
            loc,
            axes=axes_t,
            shapes=shapes,
            dtype=dtype,
            chunk=chunk,
            fill_value=fill_value,
            compressor=compressor,
        )

    @classmethod
    def open(
        cls,
        location: Location | str,
        *,
        axes: str | Sequence[str] | None = None,
        min_size: int = 256,
        max_levels: int | None = None,
    ) -> ImageWriter:
        """Continue writing the image at ``location`` (its level ``"0"`` must exist).

        Missing pyramid levels are created (empty), so a level 0 written by anything that
        follows this layout can get its pyramid with :meth:`build_levels`.

        Raises
        ------
        NodeNotFoundError
            There is no level-0 array at ``location``.
        InvalidDataError
            Level 0 is not a zarr format 2 array with square y/x chunks and Blosc or no
            compression.
        """
        loc = Location.from_url(location)
        try:
            meta = json.loads(loc.raw_child("0").raw_child(".zarray").read_bytes())
        except (NodeNotFoundError, ValueError) as exc:
            raise NodeNotFoundError(f"no zarr format 2 level '0' at {loc.url}") from exc
        shape = tuple(meta["shape"])
        chunks = tuple(meta["chunks"])
        if chunks[-1] != chunks[-2] or any(c != 1 for c in chunks[:-2]):
            raise InvalidDataError(
                f"level 0 at {loc.url} has chunks {chunks}: need square y/x chunks and 1 "
                "along the other axes"
            )
        if meta.get("dimension_separator", ".") != "/" or meta.get("filters"):
            raise InvalidDataError(f"level 0 at {loc.url} uses an unsupported chunk layout")
        compressor = meta.get("compressor")
        if compressor is not None and compressor.get("id") != "blosc":
            raise InvalidDataError(f"level 0 at {loc.url} is not Blosc-compressed")
        dtype = np.dtype(meta["dtype"])
        fill = meta.get("fill_value", 0)
        fill_value = float(fill) if isinstance(fill, str) else fill  # "NaN", "Infinity"
        axes_t = ngff.check_axes(axes, len(shape), False)
        shapes = ngff.level_shapes(shape, min_size, max_levels)
        blosc = (
            Blosc(**{k: v for k, v in compressor.items() if k != "id"})
            if compressor
            else policy.compressor(dtype)
        )
        group = zarr.open_group(loc.zarr_store(), mode="a", zarr_format=2)
        for index, level_shape in enumerate(shapes[1:], start=1):
            existing = group.get(str(index))
            if existing is not None and tuple(existing.shape) == level_shape:
                continue
            group.create_array(
                str(index),
                shape=level_shape,
                chunks=_chunks(level_shape, chunks[-1]),
                dtype=dtype,
                compressors=blosc,
                chunk_key_encoding={"name": "v2", "separator": "/"},
                fill_value=fill_value,
                overwrite=True,
            )
        return cls(
            loc,
            axes=axes_t,
            shapes=shapes,
            dtype=dtype,
            chunk=chunks[-1],
            fill_value=fill_value,
            compressor=blosc,
        )

    # -- chunks ---------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        """Level-0 shape."""
        return self.shapes[0]

    def grid(self, level: int = 0) -> tuple[int, ...]:
        """Number of chunks along each axis of ``level``."""
        shape = self.shapes[level]
        return (*shape[:-2], -(-shape[-2] // self.chunk), -(-shape[-1] // self.chunk))

    def chunk_extent(self, level: int, index: Sequence[int]) -> tuple[int, int]:
        """Valid (height, width) of chunk ``index`` (edge chunks are clipped)."""
        *_, y, x = self.shapes[level]
        ty, tx = index[-2], index[-1]
        return min(self.chunk, y - ty * self.chunk), min(self.chunk, x - tx * self.chunk)

    def _chunk_path(self, level: int, index: Sequence[int]) -> str:
        return posixpath.join(self.location.path, str(level), *(str(int(i)) for i in index))

    def write_chunk(self, level: int, index: Sequence[int], data: np.ndarray) -> str:
        """Encode and store one chunk (thread safe); return the path of the chunk file.

        Parameters
        ----------
        level
            Pyramid level (0 for data; higher levels are normally made by :meth:`build_levels`).
        index
            Chunk index, one entry per axis (``(c, ty, tx)`` for ``cyx``).
        data
            The chunk's valid region: ``(h, w)`` (any leading axes of length 1 may be
            included or left out); edge chunks are padded with the fill value here.
        """
        if len(index) != len(self.axes):
            raise ShapeMismatchError(
                f"chunk index {tuple(index)} needs {len(self.axes)} entries for axes "
                f"{''.join(self.axes)!r}"
            )
        h, w = self.chunk_extent(level, index)
        block = np.asarray(data)
        block = block.reshape(block.shape[-2:]) if block.ndim > 2 else block
        if block.shape != (h, w):
            raise ShapeMismatchError(
                f"chunk {tuple(index)} of level {level} is {h}x{w} pixels, got {block.shape}"
            )
        if (h, w) != (self.chunk, self.chunk):
            full = np.full((self.chunk, self.chunk), self.fill_value, dtype=self.dtype)
            full[:h, :w] = block
            block = full
        encoded = self.compressor.encode(np.ascontiguousarray(block, dtype=self.dtype))
        path = self._chunk_path(level, index)
        self._put(path, encoded)
        return path

    def read_chunk(self, level: int, index: Sequence[int]) -> np.ndarray:
        """The valid region of one chunk (the fill value where it was never written)."""
        h, w = self.chunk_extent(level, index)
        raw = self._get(self._chunk_path(level, index))
        if raw is None:
            return np.full((h, w), self.fill_value, dtype=self.dtype)
        block = np.frombuffer(self.compressor.decode(raw), dtype=self.dtype)
        return block.reshape(self.chunk, self.chunk)[:h, :w]

    def _put(self, path: str, data: bytes) -> None:
        if not self.location.is_local:
            self.location.fs.pipe_file(path, data)
            return
        directory = os.path.dirname(path)
        if directory not in self._made_dirs:
            os.makedirs(directory, exist_ok=True)
            with self._dir_lock:
                self._made_dirs.add(directory)
        with open(path, "wb") as fh:
            fh.write(data)

    def _get(self, path: str) -> bytes | None:
        try:
            if self.location.is_local:
                with open(path, "rb") as fh:
                    return fh.read()
            return self.location.fs.cat_file(path)
        except FileNotFoundError:
            return None

    def build_levels(self, *, workers: int = 2, progress: bool = False) -> None:
        """Fill levels 1..n, each from the level below (2x2 mean), chunk by chunk.

        Memory stays at a few chunks per worker whatever the image size.
        """
        total = sum(math.prod(self.grid(k)) for k in range(1, len(self.shapes)))
        with (
            tqdm(total=total, unit="chunk", desc="pyramid", disable=not progress) as bar,
            concurrent.futures.ThreadPoolExecutor(
                max(1, workers), thread_name_prefix="cachetree-pyramid"
            ) as pool,
        ):
            for level in range(1, len(self.shapes)):
                indices = np.ndindex(*self.grid(level))
                window = max(4, 4 * workers)
                pending: set[concurrent.futures.Future[None]] = set()
                for index in indices:
                    if len(pending) >= window:
                        done, pending = concurrent.futures.wait(
                            pending, return_when=concurrent.futures.FIRST_COMPLETED
                        )
                        for fut in done:
                            fut.result()
                            bar.update(1)
                    pending.add(pool.submit(self._downsample_chunk, level, index))
                for fut in concurrent.futures.as_completed(pending):
                    fut.result()
                    bar.update(1)

    def _downsample_chunk(self, level: int, index: tuple[int, ...]) -> None:
        """Make chunk ``index`` of ``level`` from the (up to) 2x2 chunks below it."""
        *lead, ty, tx = index
        below = level - 1
        grid_below = self.grid(below)
        rows = []
        for sy in (2 * ty, 2 * ty + 1):
            if sy >= grid_below[-2]:
                continue
            cols = [
                self.read_chunk(below, (*lead, sy, sx))
                for sx in (2 * tx, 2 * tx + 1)
                if sx < grid_below[-1]
            ]
            rows.append(np.concatenate(cols, axis=1) if len(cols) > 1 else cols[0])
        block = np.concatenate(rows, axis=0) if len(rows) > 1 else rows[0]
        self.write_chunk(level, index, policy.mean_2x2(block))

    def finish(
        self,
        *,
        low: Any,
        high: Any,
        name: str | None = None,
        channel_names: Sequence[str] | None = None,
        extra_attrs: Mapping[str, Any] | None = None,
    ) -> ngff.ImageInfo:
        """Write the OME-NGFF metadata (call after every level is written).

        Parameters
        ----------
        low, high
            Minimum and maximum of the finite values of level 0: scalars, or one per
            channel when there is a ``c`` axis (NaN for a channel without finite values).
        name
            Image name in the metadata (default: the location's name without suffix).
        channel_names
            One per channel of the ``c`` axis.
        extra_attrs
            More group attributes.
        """
        names = ngff.check_channel_names(channel_names, self.axes, self.shape)
        extra = ngff.check_extra_attrs(extra_attrs)
        name = name or ngff.default_name(self.location)
        ndim = len(self.axes)
        attrs: dict[str, Any] = {
            "multiscales": ngff.multiscales_metadata(
                name, self.axes, len(self.shapes), (1.0,) * ndim, (0.0,) * ndim, False
            ),
            "omero": ngff.omero_metadata(
                name,
                self.axes,
                self.shape,
                np.atleast_1d(np.asarray(low)),
                np.atleast_1d(np.asarray(high)),
                names,
                dtype=self.dtype,
            ),
        }
        group = zarr.open_group(self.location.zarr_store(), mode="r+", zarr_format=2)
        group.attrs.update({**extra, **attrs})
        return ngff.read_image(self.location)


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
        if writer.chunk % 2:
            raise InvalidDataError(f"incremental pyramids need an even chunk, not {writer.chunk}")
        self.writer = writer
        self._pending: dict[tuple[int, ...], list[Any]] = {}
        self._lock = threading.Lock()

    def _expected(self, level: int, index: tuple[int, ...]) -> int:
        *_, gy, gx = self.writer.grid(level - 1)
        ty, tx = index[-2], index[-1]
        return min(2, gy - 2 * ty) * min(2, gx - 2 * tx)

    def add(self, level: int, index: Sequence[int], block: np.ndarray | None) -> None:
        """Account for chunk ``index`` of ``level`` (its valid region, or None for fill)."""
        if level + 1 >= len(self.writer.shapes):
            return
        *lead, ty, tx = (int(i) for i in index)
        target = (level + 1, *lead, ty // 2, tx // 2)
        down = (
            None if block is None else policy.mean_2x2(np.asarray(block).reshape(block.shape[-2:]))
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
        if done:
            data = self._assemble(level + 1, target[1:], entry[0])
            if data is not None:
                self.writer.write_chunk(level + 1, target[1:], data)
            self.add(level + 1, target[1:], data)

    def _assemble(
        self, level: int, index: tuple[int, ...], quarters: dict[tuple[int, int], Any]
    ) -> np.ndarray | None:
        """The chunk made of its quarters, or None when all of them are fill."""
        if all(q is None for q in quarters.values()):
            return None
        h, w = self.writer.chunk_extent(level, index)
        half = self.writer.chunk // 2
        data = np.empty((h, w), self.writer.dtype)
        for (qy, qx), quarter in quarters.items():
            y0, x0 = qy * half, qx * half
            y1, x1 = min(h, y0 + half), min(w, x0 + half)
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
) -> ngff.ImageInfo:
    """Build levels 1..n of the OME-Zarr image at ``location`` from its level 0.

    Level 0 must already be written (zarr format 2, ``/`` separator, Blosc, square y/x
    chunks); the metadata is (re)written with display windows computed from level 0.
    """
    writer = ImageWriter.open(location, min_size=min_size)
    writer.build_levels(workers=workers, progress=progress)
    low, high = _level_range(writer)
    return writer.finish(low=low, high=high, name=name)


def _level_range(writer: ImageWriter) -> tuple[np.ndarray, np.ndarray]:
    """Finite minimum and maximum of level 0, per channel when there is a ``c`` axis."""
    grid = writer.grid(0)
    channel_axis = writer.axes.index("c") if "c" in writer.axes else None
    count = writer.shape[channel_axis] if channel_axis is not None else 1
    low = np.full(count, np.nan)
    high = np.full(count, np.nan)
    for index in np.ndindex(*grid):
        c = index[channel_axis] if channel_axis is not None else 0
        lo, hi = finite_range(writer.read_chunk(0, index))
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


def _chunks(shape: tuple[int, ...], chunk: int) -> tuple[int, ...]:
    """Chunk shape: 1 along leading axes, ``chunk`` along y and x on every level.

    Not clamped to small levels: every chunk of every level then has the same layout,
    which is what :meth:`ImageWriter.write_chunk` encodes.
    """
    return (*(1 for _ in shape[:-2]), chunk, chunk)
