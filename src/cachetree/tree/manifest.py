"""The per-node manifest: status, fingerprint, timestamps and an inventory of items."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from .._version import __version__
from ..errors import CorruptManifestError, NodeNotFoundError
from ..fs.location import Location, cat_whole
from ..fs.records import Field, is_iso_time, parse_record
from .layout import MANIFEST

__all__ = [
    "CORRUPT_REMEDY",
    "Manifest",
    "Status",
    "manifest_location",
    "now_iso",
    "read_manifest",
    "update_meta",
    "write_manifest",
]


class Status(StrEnum):
    """Lifecycle state of a node as recorded in its manifest."""

    OPEN = "open"
    """Initialised; being written, or left behind by a run that did not finish."""
    COMMITTED = "committed"
    """Complete: every item was written before the manifest said so."""
    CORRUPT = "corrupt"
    """The manifest is empty or unreadable; treated as uncommitted."""
    MISSING = "missing"
    """No node here."""


def now_iso() -> str:
    """Current UTC time as an ISO 8601 string."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class Manifest:
    """What ``.cachetree.json`` holds.

    Attributes
    ----------
    status
        ``open`` or ``committed``.
    fingerprint
        Fingerprint of the node's parameters combined with its parent's and inputs'.
    params
        JSON form of the parameters (for people; ``fingerprint`` is what is compared).
    parent_fingerprint
        The parent's fingerprint when this node was opened; a mismatch later means stale.
    kind
        What the node holds (``"node"``, ``"canvas"``, ``"parts"``, ...).
    items
        Inventory: item name to ``{"kind", "bytes", "shape", "dtype", ...}``.
    meta
        Free metadata owned by subsystems (parts, canvases).
    """

    status: Status = Status.OPEN
    fingerprint: str | None = None
    params: Any = None
    parent_fingerprint: str | None = None
    kind: str = "node"
    created: str = field(default_factory=now_iso)
    committed: str | None = None
    version: str = __version__
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def committed_at(self) -> datetime | None:
        """Commit time, or None while uncommitted."""
        if self.status is not Status.COMMITTED or not self.committed:
            return None
        return datetime.fromisoformat(self.committed)

    @property
    def total_bytes(self) -> int:
        """Bytes of all inventoried items."""
        return sum(int(item.get("bytes", 0)) for item in self.items.values())

    def to_json(self) -> str:
        """Serialise to JSON text."""
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str | bytes, *, where: str = "manifest") -> Manifest:
        """Parse JSON text, checking the type of every field.

        Raises
        ------
        CorruptManifestError
            If the text is empty, not JSON, or its fields are missing or of the wrong type.
        """
        raw = parse_record(
            text, _FIELDS, where=where, remedy=CORRUPT_REMEDY, error=CorruptManifestError
        )
        names = {f.name for f in dataclasses.fields(cls)}
        manifest = cls(**{k: v for k, v in raw.items() if k in names})
        manifest.status = Status(manifest.status)
        return manifest


CORRUPT_REMEDY = (
    "open the node again to recompute it, or delete it with `cachetree clean ROOT --remove PATH`"
)
"""What every corrupt-manifest message recommends (both work; tests follow them)."""


def _items_ok(items: dict[str, Any]) -> bool:
    return all(
        isinstance(item, dict)
        and isinstance(item.get("bytes", 0), int)
        and isinstance(item.get("kind", ""), str)
        and isinstance(item.get("shape", []), list)
        for item in items.values()
    )


_FIELDS = {
    "status": Field(
        str,
        required=True,
        check=lambda v: v in (Status.OPEN, Status.COMMITTED),
        expect="'open' or 'committed'",
    ),
    "kind": Field(str, required=True),
    "created": Field(str, required=True, check=is_iso_time, expect="an ISO 8601 time"),
    "committed": Field(
        (str, type(None)),
        check=lambda v: v is None or is_iso_time(v),
        expect="an ISO 8601 time or null",
    ),
    "fingerprint": Field((str, type(None))),
    "parent_fingerprint": Field((str, type(None))),
    "version": Field(str),
    "items": Field(dict, check=_items_ok, expect="an object of item records (kind, bytes, shape)"),
    "meta": Field(dict),
}


def manifest_location(node: Location) -> Location:
    """Where the manifest of the node directory ``node`` lives."""
    return node.raw_child(MANIFEST)


def read_manifest(node: Location) -> Manifest:
    """Read and parse the manifest of ``node``.

    Raises
    ------
    NodeNotFoundError
        If there is no manifest (so no node) at ``node``.
    CorruptManifestError
        If the manifest exists but is empty or unreadable.
    """
    loc = manifest_location(node)
    try:
        text = cat_whole(loc.fs, loc.path)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise NodeNotFoundError(f"no cache node at {node.url}") from exc
    except IsADirectoryError:
        raise CorruptManifestError(
            f"manifest of {node.url} is a directory, not a file; {CORRUPT_REMEDY}"
        ) from None
    return Manifest.from_json(text, where=f"manifest of {node.url}")


def write_manifest(node: Location, manifest: Manifest) -> None:
    """Write the manifest atomically (temp + fsync + rename locally, one put remotely)."""
    manifest_location(node).write_text(manifest.to_json())


def update_meta(node: Location, meta: Mapping[str, Any]) -> None:
    """Merge ``meta`` into the ``meta`` of the manifest of ``node`` (read, update, write)."""
    manifest = read_manifest(node)
    manifest.meta.update(meta)
    write_manifest(node, manifest)
