"""What the browser shows of one node: its own row, its items, its parts and its children.

Plain functions over the core API (no Qt), run in worker threads by the browser. Only
manifests, lock files and small metadata files are read, never the data.
"""

from __future__ import annotations

import dataclasses
import posixpath
from dataclasses import dataclass
from typing import Any

from cachetree.fs.location import Location
from cachetree.tree.inventory import classify_dir, classify_file, is_own_entry
from cachetree.tree.layout import MANIFEST
from cachetree.tree.manifest import Status
from cachetree.tree.node import Node
from cachetree.tree.parts import PartInfo, claimed_items, list_parts
from cachetree.tree.walk import NodeInfo, walk


@dataclass(frozen=True)
class ItemEntry:
    """One item of a node as listed in its manifest (or found on disk while uncommitted)."""

    name: str
    kind: str
    bytes: int | None = None
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    labels: tuple[str, ...] = ()
    """Labels stored under an image (``<image>/labels/<name>``)."""


@dataclass(frozen=True)
class Listing:
    """A node as the browser shows it once expanded (internal parts left out).

    ``info`` and ``children`` carry paths relative to the tree root, so they can be used as
    stable keys; ``info.stale`` is only meaningful on a node's row as listed by its parent.
    """

    path: str
    info: NodeInfo
    items: tuple[ItemEntry, ...]
    parts: tuple[PartInfo, ...]
    children: tuple[NodeInfo, ...]


def node_items(node: Node, info: NodeInfo | None = None) -> list[ItemEntry]:
    """The items of ``node``: the manifest's inventory once committed, else a light listing.

    While a node is being written its items are classified from their names and zarr
    metadata only (no sizes), so an in-progress node can be inspected without walking data;
    items a run writes in place are left out until it is done (see
    :func:`~cachetree.tree.parts.claim_items`).
    """
    manifest = info.manifest if info is not None else None
    status = info.status if info is not None else node.status
    if manifest is not None and status is Status.COMMITTED:
        return [_entry(name, meta) for name, meta in sorted(manifest.items.items())]
    hidden = set(info.children) if info is not None else set(node.child_names())
    hidden |= claimed_items(node.location)
    entries = []
    for entry in node.location.ls(detail=True):
        name = posixpath.basename(entry["name"].rstrip("/"))
        if name in hidden or is_own_entry(name):
            continue
        if entry["type"] == "directory":
            meta = classify_dir(node.location.raw_child(name))
        else:
            meta = {**classify_file(name), "bytes": int(entry.get("size") or 0)}
        entries.append(_entry(name, meta))
    return sorted(entries, key=lambda e: e.name)


def _entry(name: str, meta: dict[str, Any]) -> ItemEntry:
    shape = meta.get("shape")
    return ItemEntry(
        name=name,
        kind=str(meta.get("kind", "?")),
        bytes=meta.get("bytes"),
        shape=tuple(shape) if shape is not None else None,
        dtype=meta.get("dtype"),
        labels=tuple(meta.get("labels") or ()),
    )


def list_node(root: Location, path: str) -> Listing | None:
    """List the node at ``path`` (relative to ``root``); None when it no longer exists."""
    location = root.join(path) if path else root
    infos = walk(location, max_depth=1)
    own = next(infos, None)
    if own is None:
        return None
    children = tuple(_rebase(child, path) for child in infos)
    own = _rebase(own, path)
    node = Node(location, root=root)
    items: list[ItemEntry] = []
    if own.status is not Status.CORRUPT:
        items = node_items(node, own)
    parts: tuple[PartInfo, ...] = ()
    if own.has_parts:
        parts = tuple(p for p in list_parts(location) if not is_internal(p.name))
    return Listing(path=path, info=own, items=tuple(items), parts=parts, children=children)


def is_internal(name: str) -> bool:
    """Whether a part is the library's own bookkeeping (``_combiner``, ...), not a result."""
    return name.startswith("_")


def _rebase(info: NodeInfo, prefix: str) -> NodeInfo:
    """``info`` with its path made relative to the tree root instead of the walked node."""
    if not prefix:
        return info
    path = posixpath.join(prefix, info.path) if info.path else prefix
    return dataclasses.replace(info, path=path)


def find_tree_root(location: Location) -> Location:
    """The topmost directory above ``location`` (itself included) that is a cache node.

    ``location`` itself is returned when it is no node (e.g. a bare OME-Zarr image).
    """
    root = location
    candidate = location.parent
    while candidate.path != root.path and candidate.raw_child(MANIFEST).exists():
        root = candidate
        candidate = candidate.parent
    return root
