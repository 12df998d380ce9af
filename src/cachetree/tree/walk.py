"""List a cache tree quickly: read only manifests, never the data."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import CorruptManifestError, CorruptRecordError
from ..fs.location import Location, cat_existing
from .inventory import is_own_entry
from .layout import LOCK, MANIFEST, PARTS
from .lock import LockInfo, parse_lock
from .manifest import CORRUPT_REMEDY, Manifest, Status
from .parts import parse_marker

__all__ = [
    "NodeInfo",
    "walk",
]


@dataclass(frozen=True)
class NodeInfo:
    """One node as seen by :func:`walk`.

    Attributes
    ----------
    path
        Path relative to the walked root (``""`` for the root itself).
    url
        Full URL or local path.
    status
        Manifest status (``committed``, ``open`` or ``corrupt``).
    stale
        Committed, but its parent was recomputed since.
    writer
        Lock holder while a process is (or was, if ``writer_alive`` is False) writing it.
    has_parts
        Holds parts not yet combined.
    manifest
        The parsed manifest (None when corrupt).
    error
        Why the manifest is corrupt.
    children
        Names of child nodes.
    """

    path: str
    url: str
    status: Status
    depth: int
    stale: bool = False
    writer: LockInfo | None = None
    writer_alive: bool = False
    has_parts: bool = False
    manifest: Manifest | None = None
    error: str | None = None
    children: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        """Last path segment (the root's own name for the root)."""
        return posixpath.basename(self.path) if self.path else posixpath.basename(self.url)

    @property
    def state(self) -> str:
        """One word for people: committed, stale, in progress, has parts, uncommitted, corrupt.

        A tree's root, a container that is never committed itself, says ``root``.
        """
        if self.status is Status.CORRUPT:
            return "corrupt"
        if (
            self.status is Status.OPEN
            and self.manifest is not None
            and self.manifest.kind == "root"
        ):
            return "root"
        if self.status is Status.COMMITTED:
            return "stale" if self.stale else ("has parts" if self.has_parts else "committed")
        if self.writer is not None and self.writer_alive:
            return "in progress"
        return "has parts" if self.has_parts else "uncommitted"

    @property
    def kind(self) -> str:
        """The node's kind, plus the kinds of its items (e.g. ``node: image, log``)."""
        if self.manifest is None:
            return "?"
        kinds = sorted({item.get("kind", "?") for item in self.manifest.items.values()})
        return self.manifest.kind + (": " + ", ".join(kinds) if kinds else "")

    @property
    def bytes(self) -> int | None:
        """Bytes of the node's own items (None until committed)."""
        if self.manifest is None or self.status is not Status.COMMITTED:
            return None
        return self.manifest.total_bytes

    @property
    def time(self) -> str | None:
        """Commit time, or creation time while uncommitted."""
        if self.manifest is None:
            return None
        return self.manifest.committed or self.manifest.created


_IS_DIRECTORY = b"<a directory>"  # what _Lister.read_many gives for a directory


class _Lister:
    """Directory listing and bulk manifest reads for one filesystem."""

    def __init__(self, root: Location):
        self.fs = root.fs
        self.local = root.is_local

    def entries(self, path: str) -> tuple[list[str], set[str]]:
        """Sub-directory names and file names of ``path``."""
        dirs: list[str] = []
        files: set[str] = set()
        if self.local:
            try:
                with os.scandir(path) as it:
                    for entry in it:
                        (dirs.append if entry.is_dir() else files.add)(entry.name)
            except (FileNotFoundError, NotADirectoryError):
                pass
            return sorted(dirs), files
        self.fs.invalidate_cache(path)  # see what other processes wrote since the last look
        try:
            listing = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return [], files
        for entry in listing:
            name = posixpath.basename(entry["name"].rstrip("/"))
            if entry["name"].rstrip("/") == path:
                continue
            (dirs.append if entry["type"] == "directory" else files.add)(name)
        return sorted(dirs), files

    def read_many(self, paths: list[str]) -> dict[str, bytes]:
        """Contents of the files that exist among ``paths``."""
        found = cat_existing(self.fs, paths)
        if self.local:
            found.update({p: _IS_DIRECTORY for p in paths if p not in found and os.path.isdir(p)})
        return found


def walk(root: Location, *, max_depth: int | None = None) -> Iterator[NodeInfo]:
    """Yield every node at or below ``root``, parents before children, siblings sorted.

    Only manifests (and lock files, where present) are read, so the cost grows with the
    number of nodes, not with the amount of data.

    Parameters
    ----------
    root
        A node directory.
    max_depth
        Stop descending below this depth (0 lists only ``root``).
    """
    lister = _Lister(root)
    manifest_path = posixpath.join(root.path, MANIFEST)
    raw = lister.read_many([manifest_path]).get(manifest_path)
    if raw is None:
        return
    yield from _walk_node(lister, root, root.path, raw, None, 0, max_depth)


def _walk_node(
    lister: _Lister,
    root: Location,
    path: str,
    raw: bytes,
    parent_fp: str | None,
    depth: int,
    max_depth: int | None,
) -> Iterator[NodeInfo]:
    dirs, files = lister.entries(path)
    candidates = [d for d in dirs if not is_own_entry(d)]
    manifests = lister.read_many([posixpath.join(path, d, MANIFEST) for d in candidates])
    children = [d for d in candidates if posixpath.join(path, d, MANIFEST) in manifests]
    lock_path = posixpath.join(path, LOCK)
    writer = None
    if LOCK in files or LOCK in dirs:
        raw_lock = lister.read_many([lock_path]).get(lock_path)
        if raw_lock is not None:
            raw_lock = None if raw_lock is _IS_DIRECTORY else raw_lock
            writer = parse_lock(raw_lock, where=f"lock file {lock_path}")
    has_parts = PARTS in dirs and _has_pending_parts(lister, posixpath.join(path, PARTS))
    info = _node_info(root, path, raw, parent_fp, depth, writer, has_parts, children)
    yield info
    if max_depth is not None and depth >= max_depth:
        return
    own_fp = info.manifest.fingerprint if info.manifest else None
    for child in children:
        child_path = posixpath.join(path, child)
        yield from _walk_node(
            lister,
            root,
            child_path,
            manifests[posixpath.join(child_path, MANIFEST)],
            own_fp,
            depth + 1,
            max_depth,
        )


_KEPT_KINDS = ("shared", "config")
"""Part kinds that stay after a combine: they do not make a node "have parts"."""


def _has_pending_parts(lister: _Lister, parts_dir: str) -> bool:
    """Whether the parts area holds anything but shared inputs and the combiner setting."""
    names, _ = lister.entries(parts_dir)
    for name in names:  # usually the first answers; shared inputs are few
        marker = posixpath.join(parts_dir, name, "part.json")
        raw = lister.read_many([marker]).get(marker)
        try:
            kind = parse_marker(raw, where=marker).get("kind")
        except CorruptRecordError:
            kind = None
        if kind not in _KEPT_KINDS:
            return True
    return False


def _node_info(
    root: Location,
    path: str,
    raw: bytes,
    parent_fp: str | None,
    depth: int,
    writer: LockInfo | None,
    has_parts: bool,
    children: list[str],
) -> NodeInfo:
    loc = Location(root.fs, path)
    common: dict[str, Any] = dict(
        path=loc.relative_to(root),
        url=loc.url,
        depth=depth,
        children=tuple(children),
        writer=writer,
        writer_alive=writer is not None and not writer.is_stale(),
        has_parts=has_parts,
    )
    try:
        if raw is _IS_DIRECTORY:
            raise CorruptManifestError(
                f"manifest of {loc.url} is a directory, not a file; {CORRUPT_REMEDY}"
            )
        manifest = Manifest.from_json(raw, where=f"manifest of {loc.url}")
    except CorruptManifestError as exc:
        return NodeInfo(status=Status.CORRUPT, error=str(exc), **common)
    stale = (
        manifest.status is Status.COMMITTED
        and depth > 0
        and manifest.parent_fingerprint != parent_fp
    )
    return NodeInfo(status=manifest.status, stale=stale, manifest=manifest, **common)
