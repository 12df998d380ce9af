"""OME-NGFF 0.4 images and labels on zarr format 2, with a multiscale pyramid.

:func:`write_image` stores a numpy or dask array as an OME-Zarr group: level ``"0"`` is the
data itself, each further level halves y and x (2x2 mean for images, nearest for labels)
until the larger of the two is at most ``min_size``. The source graph is computed once:
level 0 is written from it, and every further level is built by reading back the level
just written. The per-channel minimum and maximum are collected while level 0 is stored
and saved as ``omero`` display windows, so viewers open the image with sensible contrast.

Chunks are viewer friendly: 1 along t, c and z, square tiles in y and x. Everything here
needs only numpy, dask and zarr.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import zarr
from tqdm import tqdm

from ..errors import DTypeMismatchError, InvalidDataError, NodeNotFoundError, ShapeMismatchError
from ..fs.location import Location, fsync_path, temp_name
from .meta import LABELS_GROUP, label_names
from .policy import compressor, downsample_2x2

__all__ = [
    "AXIS_ORDER",
    "DEFAULT_TILE",
    "LABELS_GROUP",
    "NGFF_VERSION",
    "ImageInfo",
    "check_axes",
    "check_channel_names",
    "check_dtype",
    "check_extra_attrs",
    "default_name",
    "is_ome_zarr",
    "is_rgb",
    "label_names",
    "level_shapes",
    "multiscales_metadata",
    "omero_metadata",
    "open_image",
    "read_image",
    "write_image",
    "write_labels",
]


NGFF_VERSION = "0.4"
AXIS_ORDER = "tczyx"
"""Every valid axes string is a subsequence of this that includes ``y`` and ``x``."""
DEFAULT_TILE = 512
"""Default chunk edge in y and x."""

_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
_DEFAULT_AXES = {2: "yx", 3: "cyx", 4: "czyx", 5: "tczyx"}
_DEFAULT_LABEL_AXES = {2: "yx", 3: "zyx", 4: "tzyx"}
_RESERVED_ATTRS = ("multiscales", "omero", "image-label")
_BARS: dict[str, tqdm] = {}
"""Progress bars of the writes under way, by key: tasks look theirs up instead of carrying
it, so they stay picklable; a task in another process finds none and its level is counted
when the level is done."""
_CHANNEL_COLORS = ("FF00FF", "00FF00", "00FFFF", "FFFF00", "FF0000", "0000FF")
"""``omero`` colours of channels whose name is no colour, in channel order."""
NAMED_COLORS = {
    "red": "FF0000",
    "green": "00FF00",
    "blue": "0000FF",
    "cyan": "00FFFF",
    "magenta": "FF00FF",
    "yellow": "FFFF00",
    "gray": "FFFFFF",
    "grey": "FFFFFF",
    "white": "FFFFFF",
}
"""``omero`` colours of channels named like a colour: the colour itself."""
RGB_NAMES = (("red", "green", "blue"), ("red", "green", "blue", "alpha"))
"""Channel names (case-insensitive) of an RGB(A) image."""


@dataclass(frozen=True)
class ImageInfo:
    """What an OME-Zarr image holds, read from its metadata alone.

    ``scale`` and ``translation`` are those of level 0, one value per axis.
    ``contrast_limits`` is ``(start, end)`` of the display window, a list of them (one per
    channel) when there is a ``c`` axis, and None for labels.
    """

    axes: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    levels: list[tuple[int, ...]]
    scale: tuple[float, ...]
    translation: tuple[float, ...]
    contrast_limits: tuple[float, float] | list[tuple[float, float]] | None
    labels: bool
    channel_names: tuple[str, ...] | None
    url: str
    name: str
    value_range: tuple[float, float] | list[tuple[float, float]] | None = None
    """``(min, max)`` of the finite values of level 0 (one per channel with a ``c`` axis),
    when the ``omero`` metadata records them."""


# -- public API ----------------------------------------------------------------------------
def write_image(
    location: Location | str,
    data: Any,
    *,
    axes: str | Sequence[str] | None = None,
    labels: bool = False,
    scale: Sequence[float] | None = None,
    translation: Sequence[float] | None = None,
    chunks: int | Sequence[int] | None = None,
    min_size: int = 256,
    max_levels: int | None = None,
    channel_names: Sequence[str] | None = None,
    name: str | None = None,
    extra_attrs: Mapping[str, Any] | None = None,
    progress: bool = False,
    label_source: str | None = None,
) -> ImageInfo:
    """Write ``data`` as an OME-NGFF 0.4 multiscale image (or labels) at ``location``.

    Parameters
    ----------
    location
        Directory to create (local path or fsspec URL). An existing one is replaced.
    data
        numpy or dask array, 2-D to 5-D. A dask graph is computed exactly once.
    axes
        Axis names from ``t, c, z, y, x`` in that order, ending with ``y, x``. Default by
        dimensionality: ``yx``, ``cyx``, ``czyx``, ``tczyx`` for images and ``yx``,
        ``zyx``, ``tzyx`` for labels (labels never have a ``c`` axis).
    labels
        Write an integer label image: nearest-neighbour pyramid, ``image-label`` metadata.
    scale, translation
        Physical pixel size and origin of level 0, either one value per axis or one per
        spatial axis (t and c then get scale 1 and translation 0).
    chunks
        Tile edge in y and x (int; default 512), or a full chunk shape. Chunks are clamped
        to each level's shape; t, c and z default to 1.
    min_size
        Stop adding levels once the larger of y and x is at most this.
    max_levels
        Upper bound on the number of levels (level 0 included).
    channel_names
        One name per channel of the ``c`` axis (default ``channel_0``, ...).
    name
        Name stored in the metadata (default: the last segment of ``location`` without
        ``.ome.zarr``).
    extra_attrs
        More group attributes, merged in under their own keys.
    progress
        Show a progress bar over the chunks written.
    label_source
        For labels under an image (see :func:`write_labels`): the image's path relative to
        the labels, stored as ``image-label.source.image``.

    Returns
    -------
    ImageInfo
        The metadata of the written image.

    Raises
    ------
    InvalidDataError
        ``data`` is not an array, or an argument is malformed (axes, scale, ...).
    ShapeMismatchError
        Dimensionality, axes, scale or channel names do not agree with the data's shape.
    DTypeMismatchError
        Labels that are not integers, or an image dtype that is not numeric.
    """
    loc = Location.from_url(location)
    source = _as_dask(data)
    axes_t = check_axes(axes, source.ndim, labels)
    check_dtype(source.dtype, labels)
    base_scale = _per_axis(scale, axes_t, 1.0, "scale")
    if any(not 0 < s < math.inf for s in base_scale):
        raise InvalidDataError(f"scale {base_scale} must be positive and finite on every axis")
    base_translation = _per_axis(translation, axes_t, 0.0, "translation")
    names = check_channel_names(channel_names, axes_t, source.shape)
    extra = check_extra_attrs(extra_attrs)
    if min_size < 1 or (max_levels is not None and max_levels < 1):
        raise InvalidDataError(
            f"min_size ({min_size}) and max_levels ({max_levels}) must be at least 1"
        )

    shapes = level_shapes(source.shape, min_size, max_levels)
    level_chunks = [_chunk_shape(shape, axes_t, chunks) for shape in shapes]
    name = name or default_name(loc)
    target = Location(loc.fs, temp_name(loc.path)) if loc.is_local else loc
    try:
        group = zarr.open_group(target.zarr_store(), mode="w", zarr_format=2)
        low, high = _write_pyramid(group, source, shapes, level_chunks, axes_t, labels, progress)
        attrs: dict[str, Any] = {
            "multiscales": multiscales_metadata(
                name, axes_t, len(shapes), base_scale, base_translation, labels
            )
        }
        if labels:
            attrs["image-label"] = {"version": NGFF_VERSION}
            if label_source is not None:
                attrs["image-label"]["source"] = {"image": label_source}
        else:
            attrs["omero"] = omero_metadata(
                name, axes_t, source.shape, low, high, names, dtype=source.dtype
            )
        group.attrs.update({**extra, **attrs})
    except BaseException:
        if loc.is_local:
            target.remove()
        raise
    if loc.is_local:
        _move_into_place(target, loc)
    return read_image(loc)


def read_image(location: Location | str) -> ImageInfo:
    """The metadata of the OME-Zarr image at ``location`` (no pixel is read).

    Raises
    ------
    NodeNotFoundError
        Nothing exists at ``location``.
    InvalidDataError
        It exists but is not an OME-Zarr multiscale image.
    """
    loc = Location.from_url(location)
    attrs = _require_ome_attrs(loc)
    multiscale = attrs["multiscales"][0]
    axes = tuple(a["name"] if isinstance(a, Mapping) else a for a in multiscale["axes"])
    group = zarr.open_group(loc.zarr_store(read_only=True), mode="r")
    arrays = [group[ds["path"]] for ds in multiscale["datasets"]]
    transforms = {
        t["type"]: t for t in multiscale["datasets"][0].get("coordinateTransformations", [])
    }
    ndim = len(axes)
    channels = attrs.get("omero", {}).get("channels") or []
    windows = [
        (ch["window"]["start"], ch["window"]["end"])
        for ch in channels
        if "start" in ch.get("window", {}) and "end" in ch.get("window", {})
    ]
    contrast_limits: tuple[float, float] | list[tuple[float, float]] | None = None
    if channels and len(windows) == len(channels):
        contrast_limits = windows if "c" in axes else windows[0]
    ranges = [
        (ch["window"]["min"], ch["window"]["max"])
        for ch in channels
        if "min" in ch.get("window", {}) and "max" in ch.get("window", {})
    ]
    value_range: tuple[float, float] | list[tuple[float, float]] | None = None
    if channels and len(ranges) == len(channels):
        value_range = ranges if "c" in axes else ranges[0]
    channel_names = None
    if channels and "c" in axes:
        channel_names = tuple(str(ch.get("label", f"channel_{i}")) for i, ch in enumerate(channels))
    return ImageInfo(
        axes=axes,
        shape=tuple(arrays[0].shape),
        dtype=str(arrays[0].dtype),
        levels=[tuple(a.shape) for a in arrays],
        scale=tuple(transforms.get("scale", {}).get("scale", [1.0] * ndim)),
        translation=tuple(transforms.get("translation", {}).get("translation", [0.0] * ndim)),
        contrast_limits=contrast_limits,
        labels="image-label" in attrs,
        channel_names=channel_names,
        url=loc.url,
        name=multiscale.get("name") or default_name(loc),
        value_range=value_range,
    )


def open_image(location: Location | str) -> list[da.Array]:
    """The pyramid at ``location`` as lazy dask arrays, full resolution first.

    Raises
    ------
    NodeNotFoundError, InvalidDataError
        As :func:`read_image`.
    """
    loc = Location.from_url(location)
    attrs = _require_ome_attrs(loc)
    group = zarr.open_group(loc.zarr_store(read_only=True), mode="r")
    return [da.from_zarr(group[ds["path"]]) for ds in attrs["multiscales"][0]["datasets"]]


def is_ome_zarr(location: Location | str) -> bool:
    """Whether ``location`` holds an OME-Zarr multiscale image; reads only the group attributes.

    Never raises: anything unreadable is simply not an OME-Zarr.
    """
    try:
        return _ome_attrs(Location.from_url(location)) is not None
    except Exception:
        return False


def write_labels(
    image: Location | str,
    name: str,
    data: Any,
    *,
    axes: str | Sequence[str] | None = None,
    **kwargs: Any,
) -> ImageInfo:
    """Write ``data`` as the labels ``name`` of the OME-Zarr image at ``image``.

    The labels go where OME-NGFF readers look for them: ``<image>/labels/<name>``, listed in
    the ``labels`` group's attributes, with ``image-label.source`` pointing back at the
    image. Their y and x (and z, t) extents must match the image's; scale and translation
    default to the image's. Other keyword arguments go to :func:`write_image`.

    Raises
    ------
    NodeNotFoundError, InvalidDataError
        There is no OME-Zarr image at ``image``.
    ShapeMismatchError
        The labels' spatial extent differs from the image's.
    """
    image_loc = Location.from_url(image)
    info = read_image(image_loc)
    source = _as_dask(data)
    label_axes = check_axes(axes, source.ndim, labels=True)
    extent = dict(zip(info.axes, info.shape, strict=True))
    if any(extent.get(a, n) != n for a, n in zip(label_axes, source.shape, strict=True)):
        raise ShapeMismatchError(
            f"labels of shape {source.shape} (axes {''.join(label_axes)!r}) do not match "
            f"image {info.name!r} of shape {info.shape} (axes {''.join(info.axes)!r})"
        )
    for key, values in (("scale", info.scale), ("translation", info.translation)):
        by_axis = dict(zip(info.axes, values, strict=True))
        kwargs.setdefault(key, [by_axis[a] for a in label_axes])
    group_loc = image_loc.join(LABELS_GROUP)
    written = write_image(
        group_loc.join(name),
        source,
        axes=label_axes,
        labels=True,
        name=name,
        label_source="../../",
        **kwargs,
    )
    group = zarr.open_group(group_loc.zarr_store(), mode="a", zarr_format=2)
    names = [n for n in group.attrs.get("labels", []) if n != name]
    group.attrs["labels"] = [*names, name]
    return written


# -- validation ----------------------------------------------------------------------------
def _as_dask(data: Any) -> da.Array:
    """``data`` as a dask array with a known, non-empty shape of 2 to 5 dimensions."""
    if isinstance(data, np.ndarray):
        data = da.from_array(data, chunks=-1)
    if not isinstance(data, da.Array):
        raise InvalidDataError(
            f"image data must be a numpy or dask array, got {type(data).__name__}; "
            "wrap it with numpy.asarray(...) or dask.array.from_array(...)"
        )
    if not 2 <= data.ndim <= 5:
        raise ShapeMismatchError(
            f"image data must be 2-D to 5-D, got {data.ndim}-D with shape {data.shape}; "
            "squeeze or reshape it to at most (t, c, z, y, x)"
        )
    if any(math.isnan(n) for n in data.shape):
        raise ShapeMismatchError(
            f"dask array has unknown chunk sizes {data.shape}: call .compute_chunk_sizes() first"
        )
    if 0 in data.shape:
        raise ShapeMismatchError(f"image data has an empty axis (shape {data.shape})")
    return data


def check_axes(axes: str | Sequence[str] | None, ndim: int, labels: bool) -> tuple[str, ...]:
    """Validated axis names for ``ndim``-D data (defaults filled in)."""
    if axes is None:
        defaults = _DEFAULT_LABEL_AXES if labels else _DEFAULT_AXES
        if ndim not in defaults:
            raise ShapeMismatchError(
                f"labels can be at most 4-D (t, z, y, x), got {ndim}-D data: "
                "labels have no channel axis, save each channel as its own labels image"
            )
        axes = defaults[ndim]
    if not isinstance(axes, Sequence) or not all(isinstance(a, str) for a in axes):
        raise InvalidDataError(f"axes must be a string like 'cyx' or a list of names, got {axes!r}")
    names = tuple(axes)
    if len(names) != ndim:
        raise ShapeMismatchError(
            f"axes {''.join(names)!r} name {len(names)} axes but the data is {ndim}-D: "
            "give one axis name per dimension"
        )
    unknown = [a for a in names if a not in _AXIS_TYPES]
    if unknown:
        raise InvalidDataError(
            f"unknown axis name(s) {unknown} in {names}: use names from {', '.join(AXIS_ORDER)}"
        )
    if len(set(names)) != len(names):
        raise InvalidDataError(f"axes {names} repeat a name: each axis must appear once")
    if list(names) != sorted(names, key=AXIS_ORDER.index) or not {"y", "x"} <= set(names):
        raise InvalidDataError(
            f"axes {''.join(names)!r} are not in OME-NGFF order: time, then channel, then "
            "space, ending with 'y', 'x' (e.g. 'tczyx', 'cyx', 'zyx'); "
            "transpose the data to match (numpy.moveaxis)"
        )
    if labels and "c" in names:
        raise InvalidDataError(
            f"labels cannot have a channel axis (axes {''.join(names)!r}): "
            "save each channel as its own labels image"
        )
    return names


def check_dtype(dtype: np.dtype, labels: bool) -> None:
    """Labels need integers; images need booleans, integers or floats."""
    if labels and not np.issubdtype(dtype, np.integer):
        raise DTypeMismatchError(
            f"labels must have an integer dtype, got {dtype}: convert them, "
            "e.g. data.astype(numpy.uint32)"
        )
    if not (
        dtype.kind == "b" or np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
    ):
        raise DTypeMismatchError(
            f"image dtype {dtype} is not supported: use a boolean, integer or float dtype"
        )


def _per_axis(
    values: Sequence[float] | None, axes: tuple[str, ...], fill: float, what: str
) -> tuple[float, ...]:
    """One value per axis, from one per axis or one per spatial axis (others get ``fill``)."""
    if values is None:
        return (fill,) * len(axes)
    try:
        given = [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise InvalidDataError(f"{what} must be a sequence of numbers, got {values!r}") from exc
    spatial = [a for a in axes if _AXIS_TYPES[a] == "space"]
    if len(given) == len(spatial):
        by_axis = dict(zip(spatial, given, strict=True))
        given = [by_axis.get(a, fill) for a in axes]
    if len(given) != len(axes):
        raise ShapeMismatchError(
            f"{what} has {len(given)} values but axes {''.join(axes)!r} need {len(axes)} "
            f"(one per axis) or {len(spatial)} (one per spatial axis)"
        )
    if not all(math.isfinite(v) for v in given):
        raise InvalidDataError(f"{what} {given} must be finite")
    return tuple(given)


def check_channel_names(
    channel_names: Sequence[str] | None, axes: tuple[str, ...], shape: tuple[int, ...]
) -> list[str] | None:
    """``channel_names`` as strings, checked against the ``c`` axis."""
    if channel_names is None:
        return None
    if isinstance(channel_names, str) or "c" not in axes:
        raise InvalidDataError(
            f"channel_names needs a list of names and a 'c' axis (axes {''.join(axes)!r})"
        )
    count = shape[axes.index("c")]
    if len(channel_names) != count:
        raise ShapeMismatchError(
            f"{len(channel_names)} channel names given for {count} channels: give one per channel"
        )
    return [str(n) for n in channel_names]


def check_extra_attrs(extra_attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    """``extra_attrs`` as a JSON-serialisable dict that leaves the OME keys alone."""
    extra = dict(extra_attrs or {})
    clash = [k for k in _RESERVED_ATTRS if k in extra]
    if clash:
        raise InvalidDataError(f"extra_attrs may not set the OME-Zarr keys {clash}")
    try:
        json.dumps(extra)
    except (TypeError, ValueError) as exc:
        raise InvalidDataError(f"extra_attrs must be JSON serialisable: {exc}") from exc
    return extra


# -- pyramid -------------------------------------------------------------------------------
def level_shapes(
    shape: tuple[int, ...], min_size: int, max_levels: int | None
) -> list[tuple[int, ...]]:
    """Shapes of all levels: y and x halved (rounding up) until small enough."""
    shapes = [tuple(shape)]
    while max(shapes[-1][-2:]) > min_size and (max_levels is None or len(shapes) < max_levels):
        *rest, y, x = shapes[-1]
        shapes.append((*rest, -(-y // 2), -(-x // 2)))
    return shapes


def _chunk_shape(
    shape: tuple[int, ...], axes: tuple[str, ...], chunks: int | Sequence[int] | None
) -> tuple[int, ...]:
    """Chunks of one level: 1 along t, c, z and square y/x tiles, clamped to ``shape``."""
    if chunks is None or isinstance(chunks, int):
        tile = DEFAULT_TILE if chunks is None else chunks
        wanted = tuple(tile if a in "yx" else 1 for a in axes)
    else:
        wanted = tuple(chunks)
        if len(wanted) != len(axes):
            raise ShapeMismatchError(
                f"chunks {wanted} has {len(wanted)} entries for {len(axes)}-D data: "
                "give an int (y/x tile size) or one size per axis"
            )
    if not all(isinstance(c, int) and c >= 1 for c in wanted):
        raise InvalidDataError(f"chunk sizes {wanted} must be positive integers")
    return tuple(min(c, n) for c, n in zip(wanted, shape, strict=True))


def _write_pyramid(
    group: zarr.Group,
    source: da.Array,
    shapes: list[tuple[int, ...]],
    level_chunks: list[tuple[int, ...]],
    axes: tuple[str, ...],
    labels: bool,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Write every level into ``group``; return the minimum and maximum of level 0.

    The minimum and maximum have one entry per channel when there is a ``c`` axis.
    """
    channel_axis = axes.index("c") if "c" in axes else None
    counts = [
        math.prod(-(-n // c) for n, c in zip(shape, chunks, strict=True))
        for shape, chunks in zip(shapes, level_chunks, strict=True)
    ]
    bar_key = uuid.uuid4().hex
    level = source.rechunk(level_chunks[0])
    with tqdm(total=sum(counts), unit="chunk", desc="OME-Zarr", disable=not progress) as bar:
        _BARS[bar_key] = bar
        try:
            for index, (shape, chunks) in enumerate(zip(shapes, level_chunks, strict=True)):
                array = group.create_array(
                    str(index),
                    shape=shape,
                    chunks=chunks,
                    dtype=source.dtype,
                    compressors=compressor(source.dtype),
                    chunk_key_encoding={"name": "v2", "separator": "/"},
                    fill_value=0,
                )
                low_high = _store(level, array, channel_axis, bar_key)
                if index == 0:
                    limits = low_high
                bar.update(sum(counts[: index + 1]) - bar.n)  # chunks written by other processes
                if index + 1 < len(shapes):
                    read_chunks = tuple(
                        2 * c if a in "yx" else c
                        for a, c in zip(axes, level_chunks[index + 1], strict=True)
                    )
                    level = _downsample(da.from_zarr(array, chunks=read_chunks), labels)
        finally:
            del _BARS[bar_key]
    return limits


def _store(
    level: da.Array, array: zarr.Array, channel_axis: int | None, bar_key: str
) -> tuple[np.ndarray, np.ndarray]:
    """Compute ``level`` once, writing each block into ``array``; return its finite min and max.

    The min and max are scalars, or one per channel when there is a channel axis.

    ``level``'s chunks must line up with ``array``'s, so no two blocks share a zarr chunk.
    """
    out_chunks = (
        *(c if axis == channel_axis else (1,) * len(c) for axis, c in enumerate(level.chunks)),
        (2,),
    )
    stats = level.map_blocks(
        _write_block,
        array=array,
        channel_axis=channel_axis,
        bar_key=bar_key,
        chunks=out_chunks,
        new_axis=level.ndim,
        dtype=level.dtype,
        meta=np.empty((0,) * (level.ndim + 1), level.dtype),
        name=f"omezarr-store-{uuid.uuid4().hex}",
    ).compute()
    other_axes = tuple(a for a in range(level.ndim) if a != channel_axis)
    low = np.fmin.reduce(stats[..., 0], axis=other_axes)
    high = np.fmax.reduce(stats[..., 1], axis=other_axes)
    return low, high


def _write_block(
    block: np.ndarray,
    array: zarr.Array,
    channel_axis: int | None,
    bar_key: str,
    block_info: dict | None = None,
) -> np.ndarray:
    """Store ``block`` in its region of ``array``; return its finite min and max per channel.

    The result has the block's extent along the channel axis, 1 along the other axes, and a
    trailing axis holding (min, max). A channel with no finite value gets NaN.
    """
    array[tuple(slice(*loc) for loc in block_info[0]["array-location"])] = block
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


def _downsample(level: da.Array, labels: bool) -> da.Array:
    """Next level: y and x halved, rounding up (blocks must start at even y/x offsets)."""
    chunks = level.chunks[:-2] + tuple(tuple(-(-c // 2) for c in cs) for cs in level.chunks[-2:])
    return level.map_blocks(downsample_2x2, labels=labels, chunks=chunks, dtype=level.dtype)


# -- metadata ------------------------------------------------------------------------------
def multiscales_metadata(
    name: str,
    axes: tuple[str, ...],
    n_levels: int,
    scale: tuple[float, ...],
    translation: tuple[float, ...],
    labels: bool,
) -> list[dict[str, Any]]:
    """NGFF 0.4 ``multiscales``; level k's translation keeps pixel centres aligned."""
    datasets = []
    for level in range(n_levels):
        factors = [2**level if a in "yx" else 1 for a in axes]
        transforms: list[dict[str, Any]] = [
            {"type": "scale", "scale": [s * f for s, f in zip(scale, factors, strict=True)]}
        ]
        shift = [t + (f - 1) / 2 * s for t, f, s in zip(translation, factors, scale, strict=True)]
        if any(shift):
            transforms.append({"type": "translation", "translation": shift})
        datasets.append({"path": str(level), "coordinateTransformations": transforms})
    return [
        {
            "version": NGFF_VERSION,
            "name": name,
            "axes": [{"name": a, "type": _AXIS_TYPES[a]} for a in axes],
            "datasets": datasets,
            "type": "nearest" if labels else "mean",
        }
    ]


def omero_metadata(
    name: str,
    axes: tuple[str, ...],
    shape: tuple[int, ...],
    low: np.ndarray,
    high: np.ndarray,
    channel_names: list[str] | None,
    *,
    dtype: Any = None,
) -> dict[str, Any]:
    """``omero`` rendering settings: one colour and display window per channel.

    A channel named like a colour (``red``, ``green``, ...) gets that colour, others a
    cycle of distinct colours (white for a single channel). The window is the data range,
    except for RGB(A) ``uint8`` images (channels named red, green, blue[, alpha]), whose
    window is the full 0..255 so that viewers show their true colours (an alpha channel is
    inactive: viewers that split channels do not add it to the colours).
    """
    count = shape[axes.index("c")] if "c" in axes else 1
    names = channel_names or [f"channel_{i}" for i in range(count)]
    cycle = ["FFFFFF"] if count == 1 else [_CHANNEL_COLORS[i % 6] for i in range(count)]
    colors = [NAMED_COLORS.get(n.lower(), c) for n, c in zip(names, cycle, strict=True)]
    rgb = dtype is not None and is_rgb(names, np.dtype(dtype))
    channels = [
        {
            "label": names[i],
            "color": colors[i],
            "active": not (rgb and names[i].lower() == "alpha"),
            "coefficient": 1.0,
            "family": "linear",
            "inverted": False,
            "window": {**_window(lo, hi), "start": 0, "end": 255} if rgb else _window(lo, hi),
        }
        for i, (lo, hi) in enumerate(zip(np.ravel(low), np.ravel(high), strict=True))
    ]
    model = "color" if count > 1 else "greyscale"
    return {"name": name, "version": NGFF_VERSION, "channels": channels, "rdefs": {"model": model}}


def is_rgb(channel_names: Sequence[str] | None, dtype: np.dtype | str) -> bool:
    """Whether channels of this ``dtype`` and these names make an RGB(A) ``uint8`` image."""
    if channel_names is None or np.dtype(dtype) != np.uint8:
        return False
    return tuple(n.lower() for n in channel_names) in RGB_NAMES


def _window(low: np.generic, high: np.generic) -> dict[str, float]:
    """Display window of one channel: its range, widened by 1 when it is a single value.

    Viewers need ``start < end``; a channel without finite values gets 0..1.
    """
    lo, hi = low.item(), high.item()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    lo, hi = (int(lo), int(hi)) if isinstance(lo, bool) else (lo, hi)
    return {"min": lo, "max": hi, "start": lo, "end": hi if hi > lo else lo + 1}


def default_name(loc: Location) -> str:
    """The location's last segment without ``.zarr`` / ``.ome.zarr``."""
    return loc.name.removesuffix(".zarr").removesuffix(".ome") or loc.name


# -- reading -------------------------------------------------------------------------------
def _ome_attrs(loc: Location) -> dict[str, Any] | None:
    """Group attributes holding ``multiscales`` (v2 ``.zattrs`` or v3 ``zarr.json``), or None."""
    for filename in (".zattrs", "zarr.json"):
        try:
            meta = json.loads(loc.raw_child(filename).read_bytes())
        except (OSError, ValueError):
            continue
        attrs = meta if filename == ".zattrs" else meta.get("attributes", {})
        attrs = attrs.get("ome", attrs)
        if isinstance(attrs, dict) and isinstance(attrs.get("multiscales"), list):
            return attrs
    return None


def _require_ome_attrs(loc: Location) -> dict[str, Any]:
    """Like :func:`_ome_attrs`, but raise when there is no OME-Zarr image at ``loc``."""
    attrs = _ome_attrs(loc)
    if attrs is not None:
        return attrs
    if not loc.exists():
        raise NodeNotFoundError(f"no OME-Zarr image at {loc.url}: nothing exists there")
    raise InvalidDataError(f"{loc.url} is not an OME-Zarr image (no 'multiscales' attributes)")


def _move_into_place(tmp: Location, final: Location) -> None:
    """Rename the finished directory ``tmp`` to ``final``, replacing whatever was there."""
    old = None
    if os.path.lexists(final.path):
        old = Location(final.fs, temp_name(final.path))
        os.replace(final.path, old.path)
    os.replace(tmp.path, final.path)
    fsync_path(os.path.dirname(final.path))
    if old is not None:
        old.remove()
