"""OME-NGFF metadata: validation of what callers give, the attributes written, and reading.

Two versions are written and read: **0.5** (zarr format 3, attributes under ``ome``; the
default) and **0.4** (zarr format 2, for readers that do not know zarr v3 yet). Axes carry
their physical unit when one is given (e.g. ``micrometer``) and every level's scale is the
pixel size at that level, so viewers overlay images of different resolutions correctly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import DTypeMismatchError, InvalidDataError, NodeNotFoundError, ShapeMismatchError
from ..fs.location import Location
from .meta import ome_attrs, standalone_labels

__all__ = [
    "AXIS_ORDER",
    "DEFAULT_FORMAT",
    "DEFAULT_TILE",
    "FORMATS",
    "NAMED_COLORS",
    "RGB_NAMES",
    "UNITS",
    "ImageInfo",
    "NgffFormat",
    "check_axes",
    "check_channel_names",
    "check_dtype",
    "check_extra_attrs",
    "check_format",
    "check_units",
    "default_name",
    "find_ome_attrs",
    "group_attributes",
    "is_rgb",
    "level_shapes",
    "multiscales_metadata",
    "omero_metadata",
    "per_axis",
    "read_image",
    "require_image",
    "zarr_format_of",
]

NgffFormat = Literal["0.4", "0.5"]
"""An OME-NGFF version cachetree writes: ``"0.5"`` (zarr v3, sharded) or ``"0.4"`` (zarr v2)."""
FORMATS: tuple[str, ...] = ("0.4", "0.5")
DEFAULT_FORMAT: NgffFormat = "0.5"
"""What is written unless a call or the tree says otherwise."""
AXIS_ORDER = "tczyx"
"""Every valid axes string is a subsequence of this that includes ``y`` and ``x``."""
DEFAULT_TILE = 512
"""Default chunk edge in y and x."""

_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
_DEFAULT_AXES = {2: "yx", 3: "cyx", 4: "czyx", 5: "tczyx"}
_DEFAULT_LABEL_AXES = {2: "yx", 3: "zyx", 4: "tzyx"}
_RESERVED_ATTRS = ("multiscales", "omero", "image-label")
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


SPACE_UNITS = (
    "angstrom",
    "attometer",
    "centimeter",
    "decimeter",
    "exameter",
    "femtometer",
    "foot",
    "gigameter",
    "hectometer",
    "inch",
    "kilometer",
    "megameter",
    "meter",
    "micrometer",
    "mile",
    "millimeter",
    "nanometer",
    "parsec",
    "petameter",
    "picometer",
    "terameter",
    "yard",
    "yoctometer",
    "yottameter",
    "zeptometer",
    "zettameter",
)
TIME_UNITS = (
    "attosecond",
    "centisecond",
    "day",
    "decisecond",
    "exasecond",
    "femtosecond",
    "gigasecond",
    "hectosecond",
    "hour",
    "kilosecond",
    "megasecond",
    "microsecond",
    "millisecond",
    "minute",
    "nanosecond",
    "petasecond",
    "picosecond",
    "second",
    "terasecond",
    "yoctosecond",
    "yottasecond",
    "zeptosecond",
    "zettasecond",
)
UNITS = {"space": SPACE_UNITS, "time": TIME_UNITS}
"""Unit names OME-NGFF allows on space and time axes (UDUNITS-2 names)."""
_UNIT_ALIASES = {
    "um": "micrometer",
    "\u00b5m": "micrometer",
    "\u03bcm": "micrometer",
    "micron": "micrometer",
    "nm": "nanometer",
    "mm": "millimeter",
    "cm": "centimeter",
    "m": "meter",
    "s": "second",
    "ms": "millisecond",
    "min": "minute",
    "h": "hour",
}


@dataclass(frozen=True)
class ImageInfo:
    """What an OME-Zarr image holds, read from its metadata alone.

    ``scale`` and ``translation`` are those of level 0, one value per axis, in ``units``.
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
    units: tuple[str | None, ...] = ()
    """Physical unit of each axis (None where there is none)."""
    version: str = DEFAULT_FORMAT
    """OME-NGFF version of the image (``"0.4"`` or ``"0.5"``)."""


def read_image(location: Location | str) -> ImageInfo:
    """The metadata of the OME-Zarr image at ``location`` (no pixel is read).

    At standalone labels (see :func:`cachetree.images.ngff.write_standalone_labels`) it is
    their labels image's.

    Raises
    ------
    NodeNotFoundError
        Nothing exists at ``location``.
    InvalidDataError
        It exists but is neither an OME-Zarr multiscale image nor standalone labels.
    """
    import zarr

    loc, attrs, version = require_image(Location.from_url(location))
    group = zarr.open_group(loc.zarr_store(read_only=True), mode="r")
    arrays = [group[ds["path"]] for ds in attrs["multiscales"][0]["datasets"]]
    return image_info(loc, attrs, version, [tuple(a.shape) for a in arrays], str(arrays[0].dtype))


def image_info(
    loc: Location,
    attrs: Mapping[str, Any],
    version: str,
    levels: Sequence[tuple[int, ...]],
    dtype: str,
) -> ImageInfo:
    """The :class:`ImageInfo` of an image with OME attributes ``attrs`` (of ``version``),
    the level shapes ``levels`` and pixel type ``dtype``: what :func:`read_image` reads, as
    the writer that just wrote it knows it."""
    multiscale = attrs["multiscales"][0]
    axes = tuple(a["name"] if isinstance(a, Mapping) else a for a in multiscale["axes"])
    units = tuple(a.get("unit") if isinstance(a, Mapping) else None for a in multiscale["axes"])
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
        shape=tuple(levels[0]),
        dtype=dtype,
        levels=[tuple(shape) for shape in levels],
        scale=tuple(transforms.get("scale", {}).get("scale", [1.0] * ndim)),
        translation=tuple(transforms.get("translation", {}).get("translation", [0.0] * ndim)),
        contrast_limits=contrast_limits,
        labels="image-label" in attrs,
        channel_names=channel_names,
        url=loc.url,
        name=multiscale.get("name") or default_name(loc),
        value_range=value_range,
        units=units,
        version=version,
    )


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


def per_axis(
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


def check_format(version: str | None) -> NgffFormat:
    """``version`` checked (None: :data:`DEFAULT_FORMAT`)."""
    if version is None:
        return DEFAULT_FORMAT
    if version not in FORMATS:
        raise InvalidDataError(
            f"unknown OME-NGFF format {version!r}: use '0.5' (zarr v3 with shards, the "
            "default) or '0.4' (zarr v2, for older readers)"
        )
    return version  # type: ignore[return-value]


def zarr_format_of(version: str) -> int:
    """The zarr format an OME-NGFF version is stored in."""
    return 3 if version == "0.5" else 2


def check_units(
    units: str | Mapping[str, str | None] | Sequence[str | None] | None, axes: tuple[str, ...]
) -> tuple[str | None, ...]:
    """One unit (or None) per axis, from a unit for every spatial axis, a mapping of axis
    name to unit, or one unit per axis; common short forms (``um``, ``nm``, ``s``) are
    spelled out as OME-NGFF wants (``micrometer``, ``nanometer``, ``second``)."""
    if units is None:
        return (None,) * len(axes)
    if isinstance(units, str):
        by_axis: dict[str, Any] = {a: units for a in axes if _AXIS_TYPES[a] == "space"}
    elif isinstance(units, Mapping):
        by_axis = dict(units)
        unknown = [a for a in by_axis if a not in axes]
        if unknown:
            raise InvalidDataError(f"units given for axes {unknown} not in {''.join(axes)!r}")
    else:
        given = list(units)
        if len(given) != len(axes):
            raise ShapeMismatchError(
                f"{len(given)} units given for axes {''.join(axes)!r}: give one per axis"
            )
        by_axis = dict(zip(axes, given, strict=True))
    out: list[str | None] = []
    for axis in axes:
        unit = by_axis.get(axis)
        if unit is None:
            out.append(None)
            continue
        kind = _AXIS_TYPES[axis]
        name = _UNIT_ALIASES.get(str(unit), str(unit))
        if kind not in UNITS or name not in UNITS[kind]:
            allowed = "no unit" if kind not in UNITS else f"e.g. {UNITS[kind][:4]}"
            raise InvalidDataError(
                f"{unit!r} is not an OME-NGFF unit for axis {axis!r} ({kind}): {allowed}"
            )
        out.append(name)
    return tuple(out)


# -- pyramid ---------------------------------------------------------------------------------
def level_shapes(
    shape: tuple[int, ...], min_size: int, max_levels: int | None
) -> list[tuple[int, ...]]:
    """Shapes of all levels: y and x halved (rounding up) until small enough."""
    shapes = [tuple(shape)]
    while max(shapes[-1][-2:]) > min_size and (max_levels is None or len(shapes) < max_levels):
        *rest, y, x = shapes[-1]
        shapes.append((*rest, -(-y // 2), -(-x // 2)))
    return shapes


# -- metadata ------------------------------------------------------------------------------
def multiscales_metadata(
    name: str,
    axes: tuple[str, ...],
    n_levels: int,
    scale: tuple[float, ...],
    translation: tuple[float, ...],
    labels: bool,
    *,
    units: Sequence[str | None] | None = None,
    version: str = DEFAULT_FORMAT,
) -> list[dict[str, Any]]:
    """``multiscales`` of either version; level k's translation keeps pixel centres aligned.

    Version 0.4 repeats the version inside each multiscale; 0.5 keeps it beside them.
    """
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
    units = units or (None,) * len(axes)
    axes_meta = [
        {"name": a, "type": _AXIS_TYPES[a], **({"unit": u} if u else {})}
        for a, u in zip(axes, units, strict=True)
    ]
    multiscale = {
        **({"version": version} if version == "0.4" else {}),
        "name": name,
        "axes": axes_meta,
        "datasets": datasets,
        "type": "nearest" if labels else "mean",
    }
    return [multiscale]


def omero_metadata(
    name: str,
    axes: tuple[str, ...],
    shape: tuple[int, ...],
    low: np.ndarray,
    high: np.ndarray,
    channel_names: list[str] | None,
    *,
    dtype: Any = None,
    version: str = DEFAULT_FORMAT,
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
    omero = {"name": name, "channels": channels, "rdefs": {"model": model}}
    return {**omero, "version": version} if version == "0.4" else omero


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


def group_attributes(version: str, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """OME attributes as stored by ``version``: under ``ome`` with the version (0.5), or
    at the top level (0.4, where the version is inside each entry)."""
    if version == "0.5":
        return {"ome": {"version": version, **attrs}}
    return dict(attrs)


# -- reading -------------------------------------------------------------------------------
def find_ome_attrs(loc: Location) -> tuple[dict[str, Any], str] | None:
    """OME attributes holding ``multiscales`` and their version, or None.

    Reads ``zarr.json`` (0.5) or ``.zattrs`` (0.4) and nothing else.
    """
    for filename in ("zarr.json", ".zattrs"):
        try:
            meta = json.loads(loc.raw_child(filename).read_bytes())
        except (OSError, ValueError, NodeNotFoundError):
            continue
        raw = meta if filename == ".zattrs" else meta.get("attributes", {})
        attrs, version = ome_attrs(raw)
        if isinstance(attrs.get("multiscales"), list) and attrs["multiscales"]:
            return attrs, version
    return None


def require_image(loc: Location) -> tuple[Location, dict[str, Any], str]:
    """The multiscale image at ``loc`` with its OME attributes and version: ``loc`` itself,
    or the labels image of standalone labels at ``loc``; raise when there is neither."""
    found = find_ome_attrs(loc)
    if found is not None:
        return loc, *found
    labels = standalone_labels(loc)
    found = None if labels is None else find_ome_attrs(labels)
    if labels is not None and found is not None:
        return labels, *found
    if not loc.exists():
        raise NodeNotFoundError(f"no OME-Zarr image at {loc.url}: nothing exists there")
    raise InvalidDataError(f"{loc.url} is not an OME-Zarr image (no 'multiscales' attributes)")
