"""Combiners: how parts of one key become one result (built in: sum, concatenate,
canvas-mean; users add their own as ``module:function``)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import (
    InvalidDataError,
    KeyLookupError,
    ShapeMismatchError,
    UnknownCombinerError,
)
from ..tree.keyed import (
    Key,
    key_from_json,
)
from ..tree.parts import (
    PartInfo,
)

__all__ = [
    "BUILTIN_COMBINERS",
    "PartView",
    "combine_canvas_mean",
    "combine_concatenate",
    "combine_sum",
    "resolve_combiner",
]


# -- parts as seen by combiners ---------------------------------------------------------------
class PartView(Mapping):
    """A committed part as a read-only mapping of array names to arrays, loaded on access.

    Attributes
    ----------
    info
        The underlying :class:`~cachetree.tree.parts.PartInfo`.
    """

    def __init__(self, info: PartInfo):
        self.info = info

    @property
    def name(self) -> str:
        """Part name."""
        return self.info.name

    @property
    def key(self) -> Key | None:
        """The key the part contributes to (None for shared inputs without a key)."""
        return None if self.info.key is None else key_from_json(self.info.key)

    @property
    def meta(self) -> dict[str, Any]:
        """Free metadata the writer stored."""
        return self.info.meta

    def shape(self, array: str) -> tuple[int, ...]:
        """Shape of one array, from the marker (no data read)."""
        return tuple(self._spec(array)["shape"])

    def dtype(self, array: str) -> np.dtype:
        """dtype of one array, from the marker (no data read)."""
        return np.dtype(self._spec(array)["dtype"])

    def _spec(self, array: str) -> dict[str, Any]:
        if array not in self.info.arrays:
            raise KeyLookupError(
                f"part {self.name!r} has no array {array!r}; it has {sorted(self.info.arrays)}"
            )
        return self.info.arrays[array]

    def __getitem__(self, array: str) -> np.ndarray:
        self._spec(array)
        return self.info.read(array)

    def __contains__(self, array: object) -> bool:
        return array in self.info.arrays

    def __iter__(self) -> Iterator[str]:
        return iter(self.info.arrays)

    def __len__(self) -> int:
        return len(self.info.arrays)

    def __repr__(self) -> str:
        return f"PartView({self.name!r}, key={self.key!r}, arrays={sorted(self.info.arrays)})"


# -- built-in combiners -----------------------------------------------------------------------
def _array_name(parts: Sequence[PartView], array: str | None) -> str:
    if array is not None:
        lacking = [p.name for p in parts if array not in p]
        if lacking:
            raise InvalidDataError(f"parts {lacking} have no array {array!r}")
        return array
    names = {tuple(sorted(p)) for p in parts}
    if len(names) == 1 and len(first := next(iter(names))) == 1:
        return first[0]
    raise InvalidDataError(
        "parts hold several (or differently named) arrays: "
        + "; ".join(f"{p.name}: {sorted(p)}" for p in parts[:5])
        + "; name the one to combine with the combiner option array=..., or use a user combiner"
    )


def combine_sum(
    parts: Sequence[PartView], *, key: Key, shared: Mapping[str, PartView], array: str | None = None
) -> np.ndarray:
    """Element-wise sum of one array over the parts (same shape required)."""
    name = _array_name(parts, array)
    shapes = {p.name: p.shape(name) for p in parts}
    if len(set(shapes.values())) > 1:
        raise ShapeMismatchError(f"cannot sum parts of key {key!r} with shapes {shapes}")
    dtype = np.result_type(*(p.dtype(name) for p in parts))
    total: np.ndarray | None = None
    for p in parts:  # one part in memory at a time
        if total is None:
            total = np.array(p[name], dtype=dtype, copy=True)
        else:
            total += p[name]
    assert total is not None
    return total


def combine_concatenate(
    parts: Sequence[PartView],
    *,
    key: Key,
    shared: Mapping[str, PartView],
    array: str | None = None,
    axis: int = 0,
) -> np.ndarray:
    """Concatenate one array of the parts along ``axis``, in part order.

    Part order is the ``order`` given to :func:`add_part`, then the part name.
    """
    name = _array_name(parts, array)
    shapes = [p.shape(name) for p in parts]
    ndim = {len(s) for s in shapes}
    if len(ndim) != 1 or not -min(ndim) <= axis < min(ndim):
        raise ShapeMismatchError(
            f"cannot concatenate parts of key {key!r} along axis {axis}: shapes {shapes}"
        )
    ax = axis % len(shapes[0])
    others = {s[:ax] + s[ax + 1 :] for s in shapes}
    if len(others) > 1:
        raise ShapeMismatchError(
            f"cannot concatenate parts of key {key!r} along axis {axis}: shapes {shapes} differ "
            "in another axis"
        )
    dtype = np.result_type(*(p.dtype(name) for p in parts))
    out_shape = list(shapes[0])
    out_shape[ax] = sum(s[ax] for s in shapes)
    out = np.empty(out_shape, dtype=dtype)
    start = 0
    for p, s in zip(parts, shapes, strict=True):
        index = [slice(None)] * len(out_shape)
        index[ax] = slice(start, start + s[ax])
        out[tuple(index)] = p[name]
        start += s[ax]
    return out


def combine_canvas_mean(
    parts: Sequence[PartView],
    *,
    key: Key,
    shared: Mapping[str, PartView],
    sum: str = "sum",
    weight: str = "weight",
    fill_value: float = 0.0,
    dtype: str | None = None,
) -> np.ndarray:
    """Weighted mean of canvas parts: (sum of the ``sum`` arrays) / (sum of the ``weight`` arrays).

    Each part holds a weighted sum (e.g. ``(C, H, W)``) and a weight that broadcasts against
    it (e.g. ``(H, W)`` or ``(1, H, W)``). Where the total weight is 0 the result is
    ``fill_value``. Accumulates in float64; the result is float32 unless the sums are float64
    (or ``dtype`` says otherwise).
    """
    for option, value in (("sum", sum), ("weight", weight)):
        lacking = [p.name for p in parts if value not in p]
        if lacking:
            raise InvalidDataError(
                f"canvas-mean needs an array {value!r} ({option}) in every part; parts "
                f"{lacking} lack it"
            )
    sum_shapes = {p.shape(sum) for p in parts}
    weight_shapes = {p.shape(weight) for p in parts}
    if len(sum_shapes) > 1 or len(weight_shapes) > 1:
        raise ShapeMismatchError(
            f"canvas-mean parts of key {key!r} disagree: {sum} shapes {sorted(sum_shapes)}, "
            f"{weight} shapes {sorted(weight_shapes)}"
        )
    s_shape, w_shape = sum_shapes.pop(), weight_shapes.pop()
    try:
        ok = np.broadcast_shapes(s_shape, w_shape) == s_shape
    except ValueError:
        ok = False
    if not ok:
        raise ShapeMismatchError(
            f"canvas-mean: weight shape {w_shape} does not broadcast to sum shape {s_shape}"
        )
    total = np.zeros(s_shape, dtype=np.float64)
    weights = np.zeros(w_shape, dtype=np.float64)
    for p in parts:  # one part in memory at a time
        total += p[sum]
        weights += p[weight]
    in_dtype = np.result_type(*(p.dtype(sum) for p in parts))
    out_dtype = np.dtype(dtype) if dtype else np.result_type(in_dtype, np.float32)
    covered = np.broadcast_to(weights > 0, s_shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / weights
    return np.where(covered, mean, fill_value).astype(out_dtype, copy=False)


BUILTIN_COMBINERS: Mapping[str, Callable[..., Any]] = {
    "canvas-mean": combine_canvas_mean,
    "concatenate": combine_concatenate,
    "sum": combine_sum,
}
"""Combiners usable by name. Anything else is an import path ``"package.module:function"``."""


def builtin_names() -> str:
    return ", ".join(repr(n) for n in sorted(BUILTIN_COMBINERS))


def resolve_combiner(name: str) -> Callable[..., Any]:
    """The function a combiner name designates.

    A combiner is called once per key as ``fn(parts, key=key, shared=shared, **options)``,
    where ``parts`` is a list of :class:`PartView` (in part order) and ``shared`` maps the
    names of the node's shared inputs to :class:`PartView`; it returns the key's result array.

    Raises
    ------
    UnknownCombinerError
        If ``name`` is not built in and not an importable ``module:function`` path.
    """
    if not isinstance(name, str) or not name:
        raise UnknownCombinerError(
            f"a combiner is named by a string, got {name!r}; built in: {builtin_names()}, or "
            "an import path 'package.module:function'"
        )
    if name in BUILTIN_COMBINERS:
        return BUILTIN_COMBINERS[name]
    if ":" not in name:
        raise UnknownCombinerError(
            f"unknown combiner {name!r}: use one of the built-in combiners ({builtin_names()}) "
            "or an import path 'package.module:function'"
        )
    module_name, _, attr = name.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise UnknownCombinerError(
            f"combiner {name!r}: cannot import module {module_name!r} ({exc}); "
            f"built-in combiners are {builtin_names()}"
        ) from exc
    try:
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise UnknownCombinerError(
            f"combiner {name!r}: module {module_name!r} has no attribute {attr!r}; "
            f"built-in combiners are {builtin_names()}"
        ) from exc
    if not callable(obj):
        raise UnknownCombinerError(
            f"combiner {name!r} is a {type(obj).__name__}, not a function; "
            f"built-in combiners are {builtin_names()}"
        )
    return obj
