"""OME-NGFF images and labels with a multiscale pyramid: the public write and read calls.

:func:`write_image` stores a numpy or dask array as an OME-Zarr group: level ``"0"`` is the
data itself, each further level halves y and x (2x2 mean for images, nearest for labels)
until the larger of the two is at most ``min_size``. The source graph is computed once:
level 0 is written from it, and every further level is built by reading back the level
just written. The per-channel minimum and maximum are collected while level 0 is stored
and saved as ``omero`` display windows, so viewers open the image with sensible contrast.

The format is OME-NGFF 0.5 on zarr v3, with chunks stored in shards (one file per row of
up to 16 MiB of chunks), unless ``format="0.4"`` asks for zarr v2 with one file per chunk.
Chunks are viewer friendly: 1 along t, c and z, square tiles in y and x. All writing goes
through :class:`cachetree.images.pyramid.ImageWriter`; both versions are read.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np
import zarr

from ..errors import InvalidDataError, ShapeMismatchError
from ..fs.location import Location, fsync_path, temp_name, validate_name
from .meta import LABELS_GROUP, ome_attrs, standalone_labels
from .meta import label_names as label_names
from .metadata import (  # the metadata names stay importable from here
    AXIS_ORDER as AXIS_ORDER,
)
from .metadata import (
    DEFAULT_FORMAT as DEFAULT_FORMAT,
)
from .metadata import (
    DEFAULT_TILE,
    ImageInfo,
    NgffFormat,
    check_axes,
    check_channel_names,
    check_dtype,
    check_extra_attrs,
    check_format,
    check_units,
    default_name,
    find_ome_attrs,
    group_attributes,
    per_axis,
    read_image,
    require_image,
    zarr_format_of,
)
from .metadata import (
    FORMATS as FORMATS,
)
from .metadata import (
    is_rgb as is_rgb,
)
from .metadata import (
    level_shapes as level_shapes,
)
from .metadata import (
    multiscales_metadata as multiscales_metadata,
)
from .metadata import (
    omero_metadata as omero_metadata,
)
from .pyramid import ImageWriter

__all__ = ["is_ome_zarr", "open_image", "write_image", "write_labels", "write_standalone_labels"]
"""The calls defined here; the metadata names imported above (``ImageInfo``, ``read_image``,
``check_axes``, ...) are documented in :mod:`cachetree.images.metadata` and stay importable
from this module."""

_LEVEL_WORKERS = min(4, os.cpu_count() or 1)
"""Threads building pyramid levels of a whole image."""


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
    units: str | Mapping[str, str | None] | Sequence[str | None] | None = None,
    format: NgffFormat | None = None,
) -> ImageInfo:
    """Write ``data`` as an OME-NGFF multiscale image (or labels) at ``location``.

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
        Physical pixel size and origin of level 0 (in ``units``), either one value per
        axis or one per spatial axis (t and c then get scale 1 and translation 0).
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
    units
        Physical unit of the spatial axes (``"micrometer"``; ``"um"`` is spelled out), or a
        mapping of axis name to unit (``{"t": "second", "y": "micrometer", ...}``).
    format
        ``"0.5"`` (default: zarr v3, chunks stored in shards) or ``"0.4"`` (zarr v2, one
        file per chunk, for readers without zarr v3 support).

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
    check_units(units, axes_t)
    for values, what in ((scale, "scale"), (translation, "translation")):
        per_axis(values, axes_t, 0.0, what)
    check_channel_names(channel_names, axes_t, source.shape)
    check_extra_attrs(extra_attrs)
    version = check_format(format)
    name = name or default_name(loc)

    def build(target: Location) -> None:
        writer = ImageWriter.create(
            target,
            source.shape,
            source.dtype,
            axes=axes_t,
            chunk=DEFAULT_TILE if chunks is None else chunks,
            min_size=min_size,
            max_levels=max_levels,
            labels=labels,
            format=version,
        )
        low, high = writer.write_dask(source, progress=progress)
        writer.build_levels(workers=_LEVEL_WORKERS)
        writer.finish(
            low=low,
            high=high,
            name=name,
            channel_names=channel_names,
            extra_attrs=extra_attrs,
            scale=scale,
            translation=translation,
            units=units,
            label_source=label_source,
        )

    return _built_in_place(loc, build)


def _built_in_place(loc: Location, build: Callable[[Location], None]) -> ImageInfo:
    """Run ``build`` on a temp folder beside ``loc`` and move it into place (locally; an
    object store has no partial folders to hide); the metadata of the result."""
    target = Location(loc.fs, temp_name(loc.path)) if loc.is_local else loc
    try:
        build(target)
    except BaseException:
        if loc.is_local:
            target.remove()
        raise
    if loc.is_local:
        _move_into_place(target, loc)
    return read_image(loc)


def open_image(location: Location | str) -> list[da.Array]:
    """The pyramid at ``location`` as lazy dask arrays, full resolution first.

    At standalone labels (see :func:`write_standalone_labels`) it is their labels image's.

    Raises
    ------
    NodeNotFoundError, InvalidDataError
        As :func:`~cachetree.images.metadata.read_image`.
    """
    loc, attrs, _ = require_image(Location.from_url(location))
    group = zarr.open_group(loc.zarr_store(read_only=True), mode="r")
    return [da.from_zarr(group[ds["path"]]) for ds in attrs["multiscales"][0]["datasets"]]


def is_ome_zarr(location: Location | str) -> bool:
    """Whether ``location`` holds an OME-Zarr multiscale image or standalone labels (what
    :func:`open_image` opens); reads only group attributes.

    Never raises: anything unreadable is simply not an OME-Zarr.
    """
    try:
        loc = Location.from_url(location)
        return find_ome_attrs(loc) is not None or standalone_labels(loc) is not None
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
    image. Their y and x (and z, t) extents must match the image's; scale, translation and
    units default to the image's, and the OME-NGFF version is the image's. Other keyword
    arguments go to :func:`write_image`.

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
    for key, values in (
        ("scale", info.scale),
        ("translation", info.translation),
        ("units", info.units or (None,) * len(info.axes)),
    ):
        by_axis = dict(zip(info.axes, values, strict=True))
        kwargs.setdefault(key, [by_axis[a] for a in label_axes])
    version = kwargs.pop("format", None) or info.version
    if version != info.version:
        raise InvalidDataError(
            f"labels of a {info.version} image must be {info.version} too, not {version}"
        )
    return _add_labels(
        image_loc, name, source, info.version, axes=label_axes, label_source="../../", **kwargs
    )


def write_standalone_labels(
    location: Location | str,
    data: Any,
    *,
    name: str | None = None,
    format: NgffFormat | None = None,
    **kwargs: Any,
) -> ImageInfo:
    """Write ``data`` as labels of no image: a zarr group at ``location`` holding only them.

    OME-NGFF keeps labels under an image; labels without one are stored the same way under
    a zarr group that has no image of its own: ``<location>/labels/<name>``, listed in the
    ``labels`` group's attributes. Readers that look for an image two folders above a
    labels image (napari-ome-zarr) then find an existing group there instead of creating one
    in the folder holding ``location``. :func:`~cachetree.images.metadata.read_image` and
    :func:`open_image` at ``location`` read the labels image. An existing ``location`` is
    replaced.

    Parameters
    ----------
    location
        The group to create (local path or fsspec URL).
    data
        Integer numpy or dask array, 2-D to 4-D (t, z, y, x).
    name
        Name of the labels (default: the last segment of ``location`` without ``.ome.zarr``).
    format
        ``"0.5"`` (default) or ``"0.4"``: the OME-NGFF version, and zarr v3 or v2 for the
        group too.
    kwargs
        ``axes``, ``scale``, ``units``... as for :func:`write_image`.

    Raises
    ------
    InvalidDataError, ShapeMismatchError, DTypeMismatchError
        As :func:`write_image`; also for a ``name`` that is not a plain name.
    """
    loc = Location.from_url(location)
    version = check_format(format)
    name = validate_name(name or default_name(loc), what="labels name")
    source = _as_dask(data)

    def build(target: Location) -> None:
        target.remove()
        zarr.open_group(target.zarr_store(), mode="w", zarr_format=zarr_format_of(version))
        _add_labels(target, name, source, version, **kwargs)

    return _built_in_place(loc, build)


def _add_labels(
    group: Location, name: str, data: da.Array, version: str, **kwargs: Any
) -> ImageInfo:
    """Write labels ``name`` at ``<group>/labels/<name>`` and list them in the ``labels`` group."""
    labels_loc = group.join(LABELS_GROUP)
    written = write_image(
        labels_loc.join(name), data, labels=True, name=name, format=version, **kwargs
    )
    labels_group = zarr.open_group(
        labels_loc.zarr_store(), mode="a", zarr_format=zarr_format_of(version)
    )
    names = [n for n in ome_attrs(labels_group.attrs.asdict())[0].get("labels", []) if n != name]
    labels_group.attrs.update(group_attributes(version, {"labels": [*names, name]}))
    return written


# -- helpers ---------------------------------------------------------------------------------
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
