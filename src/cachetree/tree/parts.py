"""Parts: partial results that independent writers add to a node, one directory each.

A part lives in ``<node>/.cachetree-parts/<name>/``: one ``.npy`` file per array, then a
``part.json`` marker written last (atomically, or as a single put on object stores). A part
without its marker is a leftover of a writer that died and is never read. Parts survive a
re-initialisation of their node with unchanged parameters, so work already done is kept.
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import (
    CorruptRecordError,
    InvalidDataError,
    ItemNotFoundError,
    NodeNotFoundError,
)
from ..fs.location import TMP_MARK, Location, cat_existing, storage_errors, validate_name
from ..fs.records import Field, parse_record
from ..fs.writer import AsyncWriter
from .fingerprint import to_jsonable
from .layout import LOCK, MANIFEST, PARTS
from .lock import LockInfo, parse_lock
from .manifest import now_iso

__all__ = [
    "CLAIM_KIND",
    "CLAIM_PART",
    "PART_MARKER",
    "WRITER_FILE",
    "PartInfo",
    "claim_items",
    "claimed_items",
    "kept_on_reopen",
    "list_parts",
    "parse_marker",
    "part_id",
    "parts_location",
    "parts_of_dead_writers",
    "release_items",
    "remove_claimed_items",
    "remove_part",
    "remove_parts",
    "uncommitted_parts",
    "write_part",
    "writer_of_part",
]


PART_MARKER = "part.json"

CLAIM_PART = "_claimed-items"
"""Name of the part listing the items a run writes in place (see :func:`claim_items`)."""

CLAIM_KIND = "claimed-items"
"""Kind of that part: it holds no arrays, its ``meta["items"]`` names the items."""

WRITER_FILE = "writer.json"
"""Written into a part directory before any array by writers that record themselves
(:func:`cachetree.results.add_part`): who is writing it."""

_MARKER_FIELDS = {
    "kind": Field(str, required=True),
    "arrays": Field(
        dict,
        required=True,
        check=lambda arrays: all(
            isinstance(a, dict)
            and isinstance(a.get("shape"), list)
            and all(isinstance(n, int) and not isinstance(n, bool) for n in a["shape"])
            and isinstance(a.get("dtype"), str)
            for a in arrays.values()
        ),
        expect="an object of {shape: [int, ...], dtype: str} records",
    ),
    "meta": Field(dict),
    "created": Field(str),
    "writer": Field(dict),
}


def parse_marker(raw: bytes | None, *, where: str) -> dict[str, Any]:
    """The checked contents of a part marker.

    Raises
    ------
    CorruptRecordError
        When the marker is empty, not JSON or has fields of the wrong type; such a part
        counts as unfinished (clean removes it once its writer is gone).
    """
    return parse_record(raw, _MARKER_FIELDS, where=where, remedy="the part counts as unfinished")


@dataclass(frozen=True)
class PartInfo:
    """A committed part.

    Attributes
    ----------
    name
        Directory name of the part (unique within the node).
    key
        The logical key the part contributes to (JSON form: numbers, strings, lists).
    kind
        ``"part"`` for partial results, ``"shared"`` for shared inputs; subsystems add their own.
    arrays
        Array name to ``{"shape", "dtype"}``.
    meta
        Free metadata of the writer.
    """

    location: Location
    name: str
    key: Any = None
    kind: str = "part"
    arrays: dict[str, dict[str, Any]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    writer: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes of the part's arrays (uncompressed)."""
        return sum(
            int(np.prod(a["shape"], dtype=np.int64)) * np.dtype(a["dtype"]).itemsize
            for a in self.arrays.values()
        )

    def read(self, array: str) -> np.ndarray:
        """Load one array of the part (memory-mapped on local disk)."""
        if array not in self.arrays:
            raise ItemNotFoundError(
                f"part {self.name!r} has no array {array!r}; it has {sorted(self.arrays)}"
            )
        return self.location.join(array + ".npy").read_npy()


def parts_location(node: Location) -> Location:
    """Directory holding the parts of the node at ``node``."""
    return node.raw_child(PARTS)


def write_part(
    node: Location,
    name: str,
    arrays: Mapping[str, Any],
    *,
    key: Any = None,
    kind: str = "part",
    meta: Mapping[str, Any] | None = None,
    writer: AsyncWriter | None = None,
) -> PartInfo:
    """Write a part atomically: arrays first, the ``part.json`` marker last.

    Writing a part whose name exists replaces it (its marker is removed first, so readers
    never see a mix of old and new arrays).

    Parameters
    ----------
    node
        Node directory.
    name
        Part name, unique within the node (e.g. ``"worker3-0007"``).
    arrays
        Array name (``/`` allowed for grouping) to numpy-compatible array.
    key
        Logical key of the result this part contributes to.
    kind
        ``"part"`` or ``"shared"`` (or a subsystem's kind).
    meta
        JSON-compatible metadata stored in the marker.
    writer
        An :class:`~cachetree.fs.writer.AsyncWriter` rooted anywhere, whose pool writes the
        arrays; by default a private one is used. Either way the marker is written only
        after every array is done.
    """
    with storage_errors(node):
        validate_name(name, what="part name")
        if not isinstance(arrays, Mapping) or not arrays:
            raise InvalidDataError("a part needs a non-empty mapping of array names to arrays")
        loc = parts_location(node).join(name)
        marker = loc.raw_child(PART_MARKER)
        marker.remove()
        own = writer is None
        active = writer if writer is not None else AsyncWriter(loc, save_format="npy")
        prefix = loc.relative_to(active.root)
        summary: dict[str, dict[str, Any]] = {}
        try:
            for array_name, value in arrays.items():
                data = np.asarray(value)
                summary[array_name] = {"shape": list(data.shape), "dtype": data.dtype.str}
                active.write(posixpath.join(prefix, array_name) if prefix else array_name, data)
            active.flush()
        finally:
            if own:
                active.close()
        info = _marker_record(key, kind, summary, meta)
        marker.write_text(json.dumps(info))
        return PartInfo(loc, name, **info)


def _marker_record(
    key: Any, kind: str, arrays: dict[str, dict[str, Any]], meta: Mapping[str, Any] | None
) -> dict[str, Any]:
    """What a part marker holds."""
    return {
        "key": to_jsonable(key),
        "kind": kind,
        "arrays": arrays,
        "meta": to_jsonable(dict(meta or {})),
        "created": now_iso(),
        "writer": {"host": socket.gethostname(), "pid": os.getpid()},
    }


def _claim_marker(node: Location) -> Location:
    return parts_location(node).raw_child(CLAIM_PART).raw_child(PART_MARKER)


def claim_items(node: Location, names: Iterable[str]) -> None:
    """Record that the items ``names`` of the node at ``node`` are written in place by the
    run whose parts the node holds (call it before writing them; items claimed before stay
    claimed).

    Until the run releases them (:func:`release_items`) they are not listed among the
    node's items while it is open, re-opening the node with its parts keeps them, and
    :func:`remove_claimed_items` removes them with the run. Committing the node inventories
    them as any other item.
    """
    with storage_errors(node):
        claimed = claimed_items(node)
        items = claimed | {validate_name(n, what="item name") for n in names}
        if items == claimed:
            return
        record = _marker_record(None, CLAIM_KIND, {}, {"items": sorted(items)})
        _claim_marker(node).write_text(json.dumps(record))


def claimed_items(node: Location) -> frozenset[str]:
    """The items of the node at ``node`` that a run claimed (see :func:`claim_items`)."""
    marker = _claim_marker(node)
    try:
        info = parse_marker(marker.read_bytes(), where=f"item claim {marker.url}")
    except (NodeNotFoundError, CorruptRecordError, IsADirectoryError, NotADirectoryError):
        return frozenset()
    items = info.get("meta", {}).get("items")
    if not isinstance(items, list):
        return frozenset()
    return frozenset(n for n in items if isinstance(n, str))


def kept_on_reopen(node: Location, children: Iterable[str], *, keep_parts: bool) -> set[str]:
    """Names in the node at ``node`` that re-opening it for writing keeps: its child nodes,
    manifest and lock, and with ``keep_parts`` its parts area and the items a run claimed."""
    keep = {*children, MANIFEST, LOCK}
    if keep_parts:
        keep |= {PARTS, *claimed_items(node)}
    return keep


def release_items(node: Location) -> None:
    """Make the claimed items of the node at ``node`` ordinary items (the claim goes)."""
    remove_parts(parts_location(node), [CLAIM_PART])


def remove_claimed_items(node: Location) -> None:
    """Remove the claimed items of the node at ``node``, then the claim."""
    for name in sorted(claimed_items(node)):
        node.raw_child(name).remove()
    release_items(node)


def _read_markers(locations: list[Location]) -> dict[str, bytes]:
    if not locations:
        return {}
    return cat_existing(locations[0].fs, [loc.raw_child(PART_MARKER).path for loc in locations])


def _part_dirs(node: Location) -> list[Location]:
    root = parts_location(node)
    return [root.raw_child(n) for n in sorted(root.ls()) if TMP_MARK not in n]


def _scan_parts(node: Location) -> tuple[list[PartInfo], list[Location]]:
    """Committed parts (valid marker) and unfinished part directories of the node."""
    dirs = _part_dirs(node)
    markers = _read_markers(dirs)
    parts: list[PartInfo] = []
    unfinished: list[Location] = []
    for loc in dirs:
        marker = loc.raw_child(PART_MARKER)
        try:
            info = parse_marker(markers.get(marker.path), where=f"part marker {marker.url}")
        except CorruptRecordError:
            unfinished.append(loc)  # no marker, or an unreadable one: not committed
            continue
        fields = ("key", "kind", "arrays", "meta", "created", "writer")
        parts.append(PartInfo(loc, loc.name, **{k: info[k] for k in fields if k in info}))
    return parts, unfinished


def list_parts(node: Location, *, kind: str | Iterable[str] | None = None) -> list[PartInfo]:
    """Committed parts of the node, sorted by name (optionally only of some kinds)."""
    kinds = {kind} if isinstance(kind, str) else (set(kind) if kind is not None else None)
    parts, _ = _scan_parts(node)
    return [p for p in parts if kinds is None or p.kind in kinds]


def uncommitted_parts(node: Location) -> list[Location]:
    """Part directories without a valid marker (writers that died or are still writing)."""
    _, unfinished = _scan_parts(node)
    temps = [parts_location(node).raw_child(n) for n in parts_location(node).ls() if TMP_MARK in n]
    return unfinished + temps


def parts_of_dead_writers(node: Location) -> list[Location]:
    """Unfinished part directories whose writer recorded itself on this host and has died
    (see :func:`writer_of_part`): nobody will finish them."""
    return [
        part_dir
        for part_dir in uncommitted_parts(node)
        if TMP_MARK not in part_dir.name
        and (writer := writer_of_part(part_dir)) is not None
        and writer.is_stale()
    ]


def remove_part(part: PartInfo) -> None:
    """Delete a part: the marker first, so it stops counting before its arrays go."""
    remove_parts(part.location.parent, [part.name])


def remove_parts(parts_root: Location, names: Iterable[str]) -> None:
    """Delete the parts ``names`` of a parts directory: every marker first, then the rest.

    A part stops counting as soon as its marker is gone. On object stores several parts'
    files are found with one listing and deleted in bulk (a handful of requests for any
    number of parts, instead of several per part).
    """
    wanted = set(names)
    if not wanted:
        return
    if parts_root.is_local or len(wanted) == 1:
        for name in sorted(wanted):
            parts_root.raw_child(name).raw_child(PART_MARKER).remove()
        for name in sorted(wanted):
            parts_root.raw_child(name).remove()
        return
    fs = parts_root.fs
    fs.invalidate_cache(parts_root.path)
    try:
        found = fs.find(parts_root.path)
    except FileNotFoundError:
        return
    prefix = parts_root.path.rstrip("/") + "/"
    files = [f for f in found if f.startswith(prefix)]
    chosen = [f for f in files if f[len(prefix) :].split("/", 1)[0] in wanted]
    markers = [f for f in chosen if f[len(prefix) :].split("/", 1)[1:] == [PART_MARKER]]
    rest = sorted(set(chosen) - set(markers))
    for batch in (markers, rest):
        if batch:
            fs.rm(batch)
    fs.invalidate_cache(parts_root.path)


def part_id(info: PartInfo) -> str:
    """Identity of one written part (its name and creation time)."""
    return f"{info.name}@{info.created}"


def writer_of_part(part_dir: Location) -> LockInfo | None:
    """Who wrote (or is writing) a part directory, when its writer recorded it."""
    loc = part_dir.raw_child(WRITER_FILE)
    try:
        raw = loc.read_bytes()
    except (NodeNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    held = parse_lock(raw, where=f"part writer record {loc.url}")
    return None if held.error else held
