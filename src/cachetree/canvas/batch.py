"""Validation of one batch of patches before a canvas changes anything."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import (
    BoxOutOfBoundsError,
    DTypeMismatchError,
    InvalidDataError,
    KeyLookupError,
    NonFiniteValueError,
    ShapeMismatchError,
)
from .spec import CanvasSpec

__all__ = ["Batch", "prepare_batch"]


@dataclass
class Batch:
    """A validated batch, ready to be accumulated."""

    values: dict[str, np.ndarray]
    """Head name to ``(N, h, w, C)`` values."""
    boxes: np.ndarray
    """``(N, 4)`` int64 boxes as given."""
    clipped: np.ndarray
    """``(N, 4)`` int64 boxes clipped to the canvas."""
    weights: np.ndarray | None
    """``(N, h, w)`` pre-summed weights (``add_weighted``), else None."""
    bad: np.ndarray | None
    """``(N, h, w)`` non-finite pixels to ignore, or None."""


def prepare_batch(spec: CanvasSpec, outputs: Any, boxes: Any, weights: Any, frontier: int) -> Batch:
    """Check a whole batch against ``spec``; ``frontier`` is the top row of a row-major canvas.

    Raises
    ------
    ShapeMismatchError, DTypeMismatchError, KeyLookupError, BoxOutOfBoundsError,
    NonFiniteValueError, InvalidDataError
        The batch does not fit the canvas.
    """
    values = _values_by_head(spec, outputs)
    first = next(iter(values))
    n, h, w = values[first].shape[:3]
    for name, arr in values.items():
        head = spec.heads[name]
        if arr.ndim == 3 and head.channels == 1:
            arr = arr[..., np.newaxis]
            values[name] = arr
        if arr.ndim != 4:
            raise ShapeMismatchError(
                f"head {name!r}: expected patches of shape (N, h, w, C), got {arr.shape}"
            )
        if arr.shape[:3] != (n, h, w):
            raise ShapeMismatchError(
                f"head {name!r} has {arr.shape[0]} patches of {arr.shape[1]}x{arr.shape[2]} "
                f"but head {first!r} has {n} of {h}x{w}: every head needs the same "
                "patches"
            )
        if arr.shape[3] != head.channels:
            raise ShapeMismatchError(
                f"head {name!r} has {head.channels} channels but the patches have "
                f"{arr.shape[3]} (shape {arr.shape})"
            )
        if arr.dtype.kind not in "biuf" or (head.dtype.kind in "iu" and arr.dtype.kind == "f"):
            raise DTypeMismatchError(
                f"head {name!r} holds {head.dtype} but the patches are {arr.dtype}: "
                f"convert them (e.g. .astype('{head.dtype}')) or declare the head as float"
            )
    box = _check_boxes(spec.shape, boxes, n, h, w)
    pre_weights = None
    if weights is not None:
        pre_weights = _check_weights(weights, n, h, w)
    elif not isinstance(spec.weights, str) and (h, w) != spec.weights.shape:
        raise ShapeMismatchError(
            f"patches are {h}x{w} but the weights array is "
            f"{spec.weights.shape[0]}x{spec.weights.shape[1]}"
        )
    bad = _non_finite(values, spec.nan_policy) if n else None
    clipped = box.copy()
    np.clip(clipped[:, 0::2], 0, spec.shape[1], out=clipped[:, 0::2])
    np.clip(clipped[:, 1::2], 0, spec.shape[0], out=clipped[:, 1::2])
    if spec.order == "row-major" and n:
        top = int(clipped[:, 1].min())
        if top < frontier:
            raise BoxOutOfBoundsError(
                f"a patch starts at y={top}, above y={frontier} where an earlier "
                "batch started; in order='row-major' rows above that are final and may "
                "be written already. Send patches top to bottom, or make the canvas with "
                "order='any'"
            )
    return Batch(values, box, clipped, pre_weights, bad)


def _all_finite(arr: np.ndarray) -> bool:
    """Whether every value is finite, without allocating a mask.

    One pass: a sum is finite unless a value is NaN or infinite, or finite values overflow
    it, which only then costs a second look (min and max propagate NaN and keep infinities).
    """
    if arr.dtype.kind != "f" or arr.size == 0:
        return True
    if np.isfinite(np.add.reduce(arr, axis=None)):
        return True
    return bool(np.isfinite(arr.min()) and np.isfinite(arr.max()))


def _check_weights(weights: Any, n: int, h: int, w: int) -> np.ndarray:
    pre_weights = np.asarray(weights)
    if pre_weights.ndim == 4 and pre_weights.shape[3] == 1:
        pre_weights = pre_weights[..., 0]
    if pre_weights.shape != (n, h, w):
        raise ShapeMismatchError(
            f"weights have shape {pre_weights.shape}; expected {(n, h, w)}, one "
            "weight sum per patch pixel"
        )
    if pre_weights.dtype.kind not in "biuf":
        raise DTypeMismatchError(f"weights must be numeric, got {pre_weights.dtype}")
    if n and (not _all_finite(pre_weights) or pre_weights.min() < 0):
        raise NonFiniteValueError("weights must be finite and non-negative")
    return pre_weights


def _non_finite(values: Mapping[str, np.ndarray], nan_policy: str) -> np.ndarray | None:
    """Pixels with a non-finite value in any channel of any head (or raise)."""
    bad = None
    for name, arr in values.items():
        if arr.dtype.kind == "f" and not _all_finite(arr):
            if nan_policy == "raise":
                count = int(np.count_nonzero(~np.isfinite(arr)))
                raise NonFiniteValueError(
                    f"head {name!r} has {count} NaN or infinite values: clean the "
                    "patches, or make the canvas with nan_policy='ignore' to give "
                    "such pixels zero weight"
                )
            mask = ~np.isfinite(arr).all(axis=3)
            bad = mask if bad is None else bad | mask
    return bad


def _values_by_head(spec: CanvasSpec, outputs: Any) -> dict[str, np.ndarray]:
    names = list(spec.heads)
    if isinstance(outputs, Mapping):
        unknown = [k for k in outputs if k not in spec.heads]
        missing = [k for k in names if k not in outputs]
        if unknown or missing:
            raise KeyLookupError(
                f"outputs name heads {sorted(map(str, outputs))} but the canvas has "
                f"{names}"
                + (f"; unknown: {unknown}" if unknown else "")
                + (f"; missing: {missing}" if missing else "")
            )
        raw = {k: outputs[k] for k in names}
    elif isinstance(outputs, list | tuple):
        if len(outputs) != len(names):
            raise KeyLookupError(
                f"got {len(outputs)} head outputs but the canvas has {len(names)} heads "
                f"{names}: give one array per head, in that order, or a mapping"
            )
        raw = dict(zip(names, outputs, strict=True))
    elif len(names) == 1:
        raw = {names[0]: outputs}
    else:
        raise InvalidDataError(
            f"the canvas has heads {names}: give outputs as a mapping of head name to array"
        )
    values = {}
    for name, value in raw.items():
        if value is None or (not hasattr(value, "__array__") and not isinstance(value, list)):
            raise InvalidDataError(f"head {name!r}: expected an array, got {type(value).__name__}")
        values[name] = np.asarray(value)
    return values


def _check_boxes(shape: tuple[int, int], boxes: Any, n: int, h: int, w: int) -> np.ndarray:
    arr = np.asarray(boxes)
    if arr.size == 0 and n == 0:
        return np.zeros((0, 4), np.int64)
    if arr.ndim == 1 and arr.size == 4 and n == 1:
        arr = arr[np.newaxis]
    if arr.ndim != 2 or arr.shape[1] != 4 or (arr.size and arr.dtype.kind not in "iuf"):
        raise ShapeMismatchError(
            f"boxes must be an (N, 4) array of [x0, y0, x1, y1], got shape {arr.shape}"
        )
    if arr.shape[0] != n:
        raise ShapeMismatchError(
            f"{arr.shape[0]} boxes for {n} patches: give exactly one box per patch"
        )
    if arr.dtype.kind == "f" and (not np.isfinite(arr).all() or (arr != np.round(arr)).any()):
        raise BoxOutOfBoundsError("box coordinates must be whole numbers")
    box = arr.astype(np.int64)
    sizes = np.stack([box[:, 3] - box[:, 1], box[:, 2] - box[:, 0]], axis=1)
    wrong = np.flatnonzero((sizes != (h, w)).any(axis=1))
    if wrong.size:
        i = int(wrong[0])
        raise ShapeMismatchError(
            f"box {i} {box[i].tolist()} is {sizes[i, 0]}x{sizes[i, 1]} pixels (y, x) but "
            f"the patches are {h}x{w}: boxes are [x0, y0, x1, y1] with x1 - x0 = width"
        )
    H, W = shape
    outside = (box[:, 2] <= 0) | (box[:, 0] >= W) | (box[:, 3] <= 0) | (box[:, 1] >= H)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise BoxOutOfBoundsError(
            f"box {i} {box[i].tolist()} lies outside the {H}x{W} canvas "
            f"({int(outside.sum())} of {n} boxes do): boxes are [x0, y0, x1, y1] in "
            "canvas pixels and must overlap the canvas"
        )
    return box
