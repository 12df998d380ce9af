"""Stable fingerprints of the parameters that produced a node.

Two parameter sets get the same fingerprint exactly when they are equal after a canonical
encoding: mappings are sorted by key, tuples and lists are the same, numpy scalars equal their
Python values and arrays are hashed by dtype, shape and bytes.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..errors import InvalidDataError

__all__ = [
    "fingerprint",
    "to_jsonable",
]


def to_jsonable(value: Any) -> Any:
    """Canonical JSON-compatible form of ``value`` (arrays become a hash summary).

    Raises
    ------
    InvalidDataError
        If the value has a type with no stable encoding (e.g. an arbitrary object).
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        value = float(value)
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        digest = hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()[:16]
        return {"__array__": [str(value.dtype), list(value.shape), digest]}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, set | frozenset):
        return sorted((to_jsonable(v) for v in value), key=repr)
    if isinstance(value, Iterable):
        return [to_jsonable(v) for v in value]
    raise InvalidDataError(
        f"cannot encode a value of type {type(value).__name__} (as a parameter or as JSON); "
        "use numbers, strings, lists, dicts, numpy arrays or dataclasses"
    )


def fingerprint(params: Any, *upstream: str | None) -> str:
    """SHA-256 (hex, 16 chars) of ``params`` combined with upstream fingerprints."""
    payload = json.dumps([to_jsonable(params), list(upstream)], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
