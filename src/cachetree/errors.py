"""Exceptions raised by cachetree.

Every error derives from :class:`CacheTreeError`, so ``except CacheTreeError`` catches
anything the library raises on purpose. Messages say what was wrong and what to do.
"""

from __future__ import annotations

__all__ = [
    "BoxOutOfBoundsError",
    "CacheTreeError",
    "CorruptManifestError",
    "CorruptRecordError",
    "DTypeMismatchError",
    "FinalizedError",
    "IncompatibleError",
    "InvalidDataError",
    "InvalidNameError",
    "ItemNotFoundError",
    "KeyLookupError",
    "LockHeldError",
    "NodeNotFoundError",
    "NonFiniteValueError",
    "NotCommittedError",
    "ShapeMismatchError",
    "StaleNodeError",
    "StorageError",
    "UncommittedChildrenError",
    "UnknownCombinerError",
]


class CacheTreeError(Exception):
    """Base class of every error cachetree raises on purpose."""


class InvalidNameError(CacheTreeError, ValueError):
    """A node or item name is empty, absolute, contains ``..`` or a forbidden character."""


class NodeNotFoundError(CacheTreeError, FileNotFoundError):
    """The node (or item) asked for does not exist."""


class ItemNotFoundError(NodeNotFoundError):
    """A node has no item of the requested name."""


class CorruptRecordError(CacheTreeError):
    """A small state file (manifest, lock, part marker, inventory) is empty or malformed."""


class CorruptManifestError(CorruptRecordError):
    """A node's manifest file is empty, cannot be parsed, or has fields of the wrong type."""


class NotCommittedError(CacheTreeError):
    """An operation needs a committed node, but the node is not committed."""


class UncommittedChildrenError(CacheTreeError):
    """A node cannot be committed while some of its child nodes are not."""


class StaleNodeError(CacheTreeError):
    """A committed node was made with different parameters (raised with ``on_stale='raise'``)."""


class LockHeldError(CacheTreeError):
    """Another live process holds the node's owner lock."""


class InvalidDataError(CacheTreeError, TypeError):
    """An argument has the wrong type, shape or dtype."""


class ShapeMismatchError(InvalidDataError, ValueError):
    """Array shapes do not agree with each other or with the target."""


class DTypeMismatchError(InvalidDataError):
    """An array has a dtype the target cannot hold."""


class BoxOutOfBoundsError(CacheTreeError, ValueError):
    """A patch box lies completely outside the canvas or is malformed."""


class NonFiniteValueError(CacheTreeError, ValueError):
    """Values contain NaN or infinity and the NaN policy forbids them."""


class FinalizedError(CacheTreeError):
    """The object was finalised or closed and accepts no more data."""


class IncompatibleError(CacheTreeError):
    """Two outputs cannot be merged; ``differences`` lists every reason."""

    def __init__(self, message: str, differences: list[str]):
        super().__init__(message + "".join(f"\n  - {d}" for d in differences))
        self.differences = list(differences)


class UnknownCombinerError(CacheTreeError, LookupError):
    """A combiner name is neither built in nor an importable ``module:function`` path."""


class KeyLookupError(CacheTreeError, KeyError):
    """A key is missing, or a float key matches more than one stored key."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class StorageError(CacheTreeError, OSError):
    """Writing to or reading from storage failed (disk full, permission denied, ...)."""
