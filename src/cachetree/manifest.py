"""The per-node manifest: status, fingerprint, timestamps and an inventory of items."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from ._version import __version__
from .errors import CorruptManifestError, NodeNotFoundError
from .layout import MANIFEST
from .storage import Location


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
        """Parse JSON text.

        Raises
        ------
        CorruptManifestError
            If the text is empty, not JSON, or lacks the fields of a manifest.
        """
        if not text or not text.strip():
            raise CorruptManifestError(
                f"{where} is empty (a run was probably killed while creating it); "
                "re-initialise the node to recompute it, or run `cachetree clean`"
            )
        try:
            raw = json.loads(text)
            names = {f.name for f in dataclasses.fields(cls)}
            manifest = cls(**{k: v for k, v in raw.items() if k in names})
            manifest.status = Status(manifest.status)
        except (ValueError, TypeError, AttributeError) as exc:
            raise CorruptManifestError(
                f"{where} cannot be parsed ({exc}); re-initialise the node to recompute it, "
                "or run `cachetree clean`"
            ) from exc
        if manifest.status not in (Status.OPEN, Status.COMMITTED):
            raise CorruptManifestError(f"{where} has invalid status {manifest.status!r}")
        return manifest


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
        text = loc.fs.cat_file(loc.path)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise NodeNotFoundError(f"no cache node at {node.url}") from exc
    return Manifest.from_json(text, where=f"manifest of {node.url}")


def write_manifest(node: Location, manifest: Manifest) -> None:
    """Write the manifest atomically (temp + fsync + rename locally, one put remotely)."""
    manifest_location(node).write_text(manifest.to_json())
