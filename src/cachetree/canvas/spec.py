"""What a canvas merges: its validated :class:`CanvasSpec`, heads, blending weights, budget.

:class:`CanvasSpec` is the one description of a canvas: :class:`~cachetree.canvas.Canvas`,
the worker canvases and plans of :mod:`cachetree.canvas.cluster` and the view in
:mod:`cachetree.canvas.view` all use it. Building one validates it; nothing is written.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import psutil

from ..errors import DTypeMismatchError, InvalidDataError, KeyLookupError, ShapeMismatchError
from ..fs.location import validate_name
from ..images.metadata import check_units

__all__ = [
    "SPEC_VERSION",
    "CanvasSpec",
    "HeadSpec",
    "NanPolicy",
    "Order",
    "parse_memory_budget",
    "spec_differences",
    "weight_window",
]

Order = Literal["row-major", "any"]
"""Patch order a canvas is promised: top to bottom (``"row-major"``) or any."""
NanPolicy = Literal["raise", "ignore"]
"""What a canvas does with NaN or infinite values: raise, or give such pixels zero weight."""
SPEC_VERSION = 1
"""Version of the JSON form of a spec (:meth:`CanvasSpec.to_json`)."""


@dataclass(frozen=True)
class HeadSpec:
    """One model head: its channel count and the dtype of its merged output.

    ``dtype`` accepts anything :class:`numpy.dtype` does and is stored as a numpy dtype.
    Accumulation is in float32 (float64 for float64 heads); integer outputs are rounded
    and clipped to their range.
    """

    channels: int
    dtype: Any = "float32"

    def __post_init__(self) -> None:
        if isinstance(self.channels, bool) or not isinstance(self.channels, int | np.integer):
            raise InvalidDataError(f"channels must be an integer, got {self.channels!r}")
        if self.channels < 1:
            raise ShapeMismatchError(f"a head needs at least one channel, got {self.channels}")
        try:
            dtype = np.dtype(self.dtype)
        except TypeError as exc:
            raise DTypeMismatchError(f"{self.dtype!r} is not a numpy dtype") from exc
        if dtype.kind not in "iuf":
            raise DTypeMismatchError(
                f"head dtype {dtype} is not supported: use an integer or float dtype"
            )
        object.__setattr__(self, "channels", int(self.channels))
        object.__setattr__(self, "dtype", dtype)

    @property
    def acc_dtype(self) -> np.dtype:
        """Dtype of the weighted-sum accumulator."""
        return np.dtype(np.float64 if self.dtype == np.float64 else np.float32)


@dataclass(frozen=True)
class CanvasSpec:
    """The canvas patches are merged into, validated when built.

    Parameters
    ----------
    shape
        Canvas ``(height, width)`` in pixels.
    heads
        Head name to :class:`HeadSpec`, to ``(channels, dtype)`` or to a channel count
        (float32). Names become item names (``<head>.ome.zarr``). Stored as
        :class:`HeadSpec` values.
    weights
        Blending weights: ``"uniform"``, ``"gaussian"`` or an ``(h, w)`` array (stored as
        float32).
    tile
        Edge of the accumulator tiles and of the output chunks, in pixels (even, >= 8).
    order
        ``"row-major"`` promises that no patch starts (clipped y0) above the smallest y0 of
        an earlier batch; ``"any"`` accepts any order. In :mod:`cachetree.canvas.cluster`
        (default ``"row-major"``) each task's boxes are sent to its worker canvas sorted top
        to bottom, so rows the task has passed are spilled at once.
    nan_policy
        ``"raise"`` or ``"ignore"`` (see :class:`~cachetree.canvas.Canvas`).
    fill_value
        Output where no patch contributed (must fit every head's dtype).
    channel_names
        Optional head name to channel names, stored in the OME-Zarr metadata.
    min_size
        The pyramid stops once the larger of height and width is at most this.
    pixel_size
        Physical size of one pixel of the input the model reads (one value, or ``(y, x)``),
        e.g. the ``scale`` of the input image's ``y`` and ``x`` axes.
    units
        Unit of ``pixel_size`` (an OME-NGFF name such as ``"micrometer"``; ``"um"`` is
        spelled out).
    output_stride
        Input pixels per canvas pixel along y and x (one value, or ``(y, x)``): 1 when the
        model's outputs have the input's resolution, 4 when they are 4 times coarser. The
        output images' pixel size (:attr:`scale`) is ``pixel_size * output_stride``.
    """

    shape: tuple[int, int]
    heads: Mapping[str, HeadSpec | tuple[int, Any] | int]
    weights: str | np.ndarray = "uniform"
    tile: int = 512
    order: Order = "row-major"
    nan_policy: NanPolicy = "raise"
    fill_value: float = 0.0
    channel_names: Mapping[str, Sequence[str]] | None = None
    min_size: int = 256
    pixel_size: float | tuple[float, float] | None = None
    units: str | None = None
    output_stride: float | tuple[float, float] = 1

    def __post_init__(self) -> None:
        field = self._set
        field("shape", _check_shape(self.shape))
        if not isinstance(self.heads, Mapping) or not self.heads:
            raise InvalidDataError("heads must be a non-empty mapping of head name to spec")
        heads: dict[str, HeadSpec] = {}
        for name, value in self.heads.items():
            validate_name(name, what="head name")
            heads[name] = _head_spec(name, value)
        field("heads", heads)
        tile = self.tile
        if isinstance(tile, bool) or not isinstance(tile, int | np.integer) or tile < 8 or tile % 2:
            raise InvalidDataError(f"tile must be an even integer >= 8, got {tile!r}")
        field("tile", int(tile))
        if self.order not in ("row-major", "any"):
            raise InvalidDataError(f"order must be 'row-major' or 'any', not {self.order!r}")
        if self.nan_policy not in ("raise", "ignore"):
            raise InvalidDataError(
                f"nan_policy must be 'raise' or 'ignore', not {self.nan_policy!r}"
            )
        field("fill_value", _check_fill(self.fill_value, heads))
        field("weights", _check_weights(self.weights))
        field("channel_names", _check_channel_names(self.channel_names, heads))
        min_size = self.min_size
        if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
            raise InvalidDataError(f"min_size must be a positive integer, got {min_size!r}")
        stride = _pair(self.output_stride, "output_stride")
        field("output_stride", stride)
        if self.pixel_size is not None:
            field("pixel_size", _pair(self.pixel_size, "pixel_size"))
        if self.units is not None:
            field("units", check_units(self.units, ("y", "x"))[0])

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    @property
    def scale(self) -> tuple[float, float] | None:
        """Physical ``(y, x)`` size of one canvas pixel: ``pixel_size * output_stride``."""
        if self.pixel_size is None:
            return None
        return tuple(p * s for p, s in zip(self.pixel_size, self.output_stride, strict=True))

    @property
    def grid(self) -> tuple[int, int]:
        """Tile rows and columns."""
        return -(-self.shape[0] // self.tile), -(-self.shape[1] // self.tile)

    @property
    def tile_bytes(self) -> int:
        """Bytes of one tile's accumulators: a float32 weight plane and each head's sums."""
        area = self.tile * self.tile
        return area * 4 + sum(area * s.channels * s.acc_dtype.itemsize for s in self.heads.values())

    def canvas_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~cachetree.canvas.Canvas` besides node, shape, heads."""
        return {
            "weights": self.weights,
            "tile": self.tile,
            "order": self.order,
            "nan_policy": self.nan_policy,
            "fill_value": self.fill_value,
            "channel_names": self.channel_names,
            "min_size": self.min_size,
            "pixel_size": self.pixel_size,
            "units": self.units,
            "output_stride": self.output_stride,
        }

    def to_json(self) -> dict[str, Any]:
        """The JSON form stored with every part and in ``canvas.json``.

        A weights array is stored as its shape and a digest; channel names and the minimum
        pyramid size are not part of it (they change no merged value). The physical pixel
        size of the canvas (``scale``, ``units``) is, when given.
        """
        if isinstance(self.weights, str):
            weights = self.weights
        else:
            digest = hashlib.sha1(np.ascontiguousarray(self.weights).tobytes()).hexdigest()
            weights = f"array:{self.weights.shape[0]}x{self.weights.shape[1]}:{digest[:16]}"
        fill = self.fill_value
        return {
            "version": SPEC_VERSION,
            "shape": list(self.shape),
            "heads": {
                n: {"channels": s.channels, "dtype": s.dtype.str} for n, s in self.heads.items()
            },
            "tile": self.tile,
            "weights": weights,
            "order": self.order,
            "nan_policy": self.nan_policy,
            "fill_value": fill if math.isfinite(fill) else repr(fill),
            **({"scale": list(self.scale)} if self.scale is not None else {}),
            **({"units": self.units} if self.units is not None else {}),
        }

    @classmethod
    def from_json(
        cls,
        canvas: Mapping[str, Any],
        *,
        weights: np.ndarray | None = None,
        channel_names: Mapping[str, Sequence[str]] | None = None,
        min_size: int = 256,
    ) -> CanvasSpec:
        """The spec of a JSON form (:meth:`to_json`); ``weights`` replaces a weights digest."""
        return cls(
            shape=tuple(canvas["shape"]),  # type: ignore[arg-type]
            heads={n: HeadSpec(h["channels"], h["dtype"]) for n, h in canvas["heads"].items()},
            weights=canvas["weights"] if weights is None else weights,
            tile=int(canvas["tile"]),
            order=canvas["order"],
            nan_policy=canvas["nan_policy"],
            fill_value=float(canvas["fill_value"]),
            channel_names=channel_names,
            min_size=min_size,
            pixel_size=tuple(canvas["scale"]) if "scale" in canvas else None,  # type: ignore[arg-type]
            units=canvas.get("units"),
        )


def spec_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """One line per key in which two JSON specs differ (``old`` is the checkpoint's)."""
    return [
        f"{key}: checkpoint has {old.get(key)!r}, this canvas has {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if json.dumps(old.get(key), sort_keys=True) != json.dumps(new.get(key), sort_keys=True)
    ]


def weight_window(weights: str | np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Blending weights of an ``(h, w)`` patch, as float32.

    ``"uniform"`` is all ones. ``"gaussian"`` is a separable Gaussian centred on the patch
    with sigma = 1/8 of the patch size along each axis, scaled to a maximum of 1. An array
    is checked (2-D, matching shape, finite, non-negative) and returned as float32.
    """
    h, w = int(shape[0]), int(shape[1])
    if isinstance(weights, str):
        if weights == "uniform":
            return np.ones((h, w), np.float32)
        if weights == "gaussian":

            def axis(n: int) -> np.ndarray:
                sigma = n / 8.0
                x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
                return np.exp(-0.5 * (x / sigma) ** 2)

            window = np.outer(axis(h), axis(w))
            return (window / window.max()).astype(np.float32)
        raise InvalidDataError(
            f"unknown weights {weights!r}: use 'uniform', 'gaussian' or an (h, w) array"
        )
    array = np.asarray(weights)
    if array.ndim != 2 or array.shape != (h, w):
        raise ShapeMismatchError(
            f"weights array has shape {array.shape} but the patches are {h}x{w}: "
            "give one weight per patch pixel"
        )
    if array.dtype.kind not in "iuf" or not np.isfinite(array).all() or (array < 0).any():
        raise InvalidDataError("weights must be finite, non-negative numbers")
    return array.astype(np.float32)


_SIZE_UNITS = {
    "b": 1,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
    "tb": 1e12,
    "k": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tib": 1024**4,
}


def parse_memory_budget(budget: int | str | None) -> int:
    """Bytes of a budget given as bytes, ``"512MiB"``, ``"2GB"`` or ``"25%"`` of RAM.

    ``None`` means min(1 GiB, 10 % of RAM).
    """
    total = psutil.virtual_memory().total
    if budget is None:
        return int(min(1024**3, total // 10))
    if isinstance(budget, bool):
        raise InvalidDataError(f"memory_budget must be bytes or a string, got {budget!r}")
    if isinstance(budget, int | np.integer):
        if budget <= 0:
            raise InvalidDataError(f"memory_budget must be positive, got {budget}")
        return int(budget)
    if isinstance(budget, str):
        match = re.fullmatch(
            r"\s*(\d+(?:\.\d*)?)\s*(%|b|kb|kib|mb|mib|gb|gib|tb|tib|k|m|g|t)?\s*",
            budget.lower(),
        )
        if match:
            value = float(match.group(1))
            unit = match.group(2) or "b"
            if unit == "%":
                if not 0 < value <= 100:
                    raise InvalidDataError(f"memory_budget {budget!r}: a percentage is 0-100")
                return int(total * value / 100)
            if value > 0:
                return int(value * _SIZE_UNITS[unit])
    raise InvalidDataError(
        f"memory_budget {budget!r} is not understood: give bytes (int), a size such as "
        "'512MiB' or '2GB', or a share of RAM such as '25%'"
    )


def _pair(value: Any, what: str) -> tuple[float, float]:
    """A positive finite ``(y, x)`` pair from one number or two."""
    try:
        pair = (float(value),) * 2 if np.isscalar(value) else tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise InvalidDataError(f"{what} must be a number or (y, x), got {value!r}") from exc
    if len(pair) != 2 or not all(0 < v < math.inf for v in pair):
        raise InvalidDataError(f"{what} must be one or two positive numbers, got {value!r}")
    return pair  # type: ignore[return-value]


def _head_spec(name: str, value: Any) -> HeadSpec:
    if isinstance(value, HeadSpec):
        return value
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return HeadSpec(int(value))
    if isinstance(value, tuple | list) and len(value) == 2:
        return HeadSpec(value[0], value[1])
    raise InvalidDataError(
        f"head {name!r}: give a HeadSpec, a channel count or (channels, dtype), got {value!r}"
    )


def _check_shape(shape: Any) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in shape)
        ok = all(float(v) == int(v) for v in shape)
    except (TypeError, ValueError) as exc:
        raise ShapeMismatchError(f"canvas shape must be (height, width), got {shape!r}") from exc
    if not ok or h < 1 or w < 1:
        raise ShapeMismatchError(f"canvas shape must be two positive integers, got {shape!r}")
    return h, w


def _check_fill(fill_value: Any, heads: Mapping[str, HeadSpec]) -> float:
    try:
        fill = float(fill_value)
    except (TypeError, ValueError) as exc:
        raise InvalidDataError(f"fill_value must be a number, got {fill_value!r}") from exc
    for name, spec in heads.items():
        if spec.dtype.kind in "iu":
            info = np.iinfo(spec.dtype)
            if not math.isfinite(fill) or fill != round(fill) or not info.min <= fill <= info.max:
                raise DTypeMismatchError(
                    f"fill_value {fill_value!r} does not fit head {name!r} of dtype {spec.dtype}"
                )
    return fill


def _check_weights(weights: Any) -> str | np.ndarray:
    if isinstance(weights, str):
        weight_window(weights, (1, 1))  # validates the name
        return weights
    array = np.asarray(weights)
    if array.ndim != 2:
        raise ShapeMismatchError(f"a weights array must be 2-D (h, w), got shape {array.shape}")
    return weight_window(array, array.shape)


def _check_channel_names(
    channel_names: Mapping[str, Sequence[str]] | None, heads: Mapping[str, HeadSpec]
) -> dict[str, list[str]]:
    names = {k: [str(n) for n in v] for k, v in (channel_names or {}).items()}
    for head, given in names.items():
        if head not in heads:
            raise KeyLookupError(f"channel_names given for unknown head {head!r}")
        if len(given) != heads[head].channels:
            raise ShapeMismatchError(
                f"head {head!r} has {heads[head].channels} channels but "
                f"{len(given)} channel names were given"
            )
    return names
