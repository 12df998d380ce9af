"""Golden fingerprints: a change here would make every user's cached node stale.

If one of these fails, the encoding of parameters changed. That is a breaking change for
every existing cache tree: do not update the values unless that is the intent (and say so
in the release notes).
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np
import pytest

from cachetree.tree.fingerprint import fingerprint


class Mode(enum.Enum):
    FAST = "fast"


@dataclasses.dataclass
class Params:
    sigma: float
    name: str


GOLDEN = [
    ("none", (None,), "b7f343d070bfc0ca"),
    ("dict", ({"sigma": 2.0, "level": 3, "name": "otsu"},), "3df86285c66ea503"),
    ("key order", ({"b": 1, "a": [1, 2, 3]},), "9a5772863c287e02"),
    ("upstream", ({"x": True}, "0123456789abcdef", None), "1cf7bbec09fb25e3"),
    ("array", ({"w": np.arange(6, dtype=np.float32).reshape(2, 3)},), "c2f7bd70b8037848"),
    (
        "numpy scalars",
        ({"i": np.int64(7), "f": np.float32(0.5), "b": np.bool_(True)},),
        "848aad9c10554eea",
    ),
    (
        "set, enum, dataclass",
        ({"s": {3, 1, 2}, "m": Mode.FAST, "p": Params(1.5, "a")},),
        "30edb2d05f67fa79",
    ),
    ("non-finite", ({"x": float("nan"), "y": float("inf")},), "2bee67a8a2309450"),
]


@pytest.mark.parametrize(("args", "expected"), [g[1:] for g in GOLDEN], ids=[g[0] for g in GOLDEN])
def test_fingerprint_is_stable(args, expected):
    assert fingerprint(*args) == expected


def test_equal_params_in_other_forms_share_a_fingerprint():
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    assert fingerprint({"x": np.int32(3)}) == fingerprint({"x": 3})
    assert fingerprint({"t": (1, 2)}) == fingerprint({"t": [1, 2]})
    assert fingerprint({"a": 1}) != fingerprint({"a": 1.5})
