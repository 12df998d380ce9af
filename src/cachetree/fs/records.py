"""Checked reading of the small JSON records kept beside the data.

Manifests, lock files, part markers and keyed-store inventories are all read through
:func:`parse_record`: the text must be a JSON object, every required field must be present
and every known field must have the right type. Anything else raises
:class:`~cachetree.errors.CorruptRecordError` (or the subclass the caller names) with a
message that names the file and says what to do. Unknown fields are ignored, so records
written by a newer version still read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..errors import CorruptRecordError

__all__ = ["Field", "is_iso_time", "parse_record"]


@dataclass(frozen=True)
class Field:
    """What one field of a record must look like.

    Attributes
    ----------
    types
        Accepted Python types after JSON decoding (``bool`` never passes for ``int``).
    required
        Whether the field must be present.
    check
        Extra test of the value (only called when the type is right).
    expect
        Words for the error message describing what ``check`` wants.
    """

    types: type | tuple[type, ...]
    required: bool = False
    check: Callable[[Any], bool] | None = None
    expect: str = ""

    def problem(self, value: Any) -> str | None:
        """Why ``value`` does not fit, or None when it does."""
        types = self.types if isinstance(self.types, tuple) else (self.types,)
        if isinstance(value, bool) and bool not in types:
            return f"must be {_type_words(types)}, not a boolean"
        if not isinstance(value, types):
            return f"must be {_type_words(types)}, not {type(value).__name__}"
        if self.check is not None and not self.check(value):
            return f"must be {self.expect}" if self.expect else "has an invalid value"
        return None


def _type_words(types: tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        dict: "an object",
        list: "a list",
        bool: "a boolean",
        type(None): "null",
    }
    return " or ".join(names.get(t, t.__name__) for t in types)


def is_iso_time(value: Any) -> bool:
    """Whether ``value`` is an ISO 8601 time stamp."""
    try:
        datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return False
    return True


def parse_record(
    raw: bytes | str | None,
    fields: Mapping[str, Field],
    *,
    where: str,
    remedy: str,
    error: type[CorruptRecordError] = CorruptRecordError,
) -> dict[str, Any]:
    """Parse a JSON record and check its fields.

    Parameters
    ----------
    raw
        The file's contents.
    fields
        Known fields and what they must look like.
    where
        The file, as the message should name it (e.g. ``"manifest of /runs/a"``).
    remedy
        What the user should do about a bad record (completes the message).
    error
        Exception class to raise.

    Returns
    -------
    dict
        The decoded object, known fields checked.

    Raises
    ------
    CorruptRecordError
        (or ``error``) when the text is empty, not JSON, not an object, misses a required
        field or has a field of the wrong type.
    """
    if raw is None or not raw.strip():
        raise error(f"{where} is empty (a run was probably killed while writing it); {remedy}")
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"{where} is not valid JSON ({exc}); {remedy}") from None
    if not isinstance(value, dict):
        raise error(f"{where} must hold a JSON object, not {type(value).__name__}; {remedy}")
    for name, spec in fields.items():
        if name not in value:
            if spec.required:
                raise error(f"{where} lacks the field {name!r}; {remedy}")
            continue
        problem = spec.problem(value[name])
        if problem is not None:
            raise error(f"{where}: field {name!r} {problem}; {remedy}")
    return value
