"""Find and remove what a cache tree no longer needs, with a dry run first.

Besides leftovers of crashed runs, stale nodes and temporary files, clean looks inside the
parts area of each node (``.cachetree-parts``):

* unfinished parts (no ``part.json`` marker) whose writer is gone: its process is dead
  (same host, recorded by :func:`cachetree.results.add_part`), or nothing in the part
  changed for ``part_grace`` seconds;
* in committed nodes, parts already combined into the results (a combine killed after its
  commit leaves them), and — once no part waits to be combined — the shared inputs and the
  combiner setting;
* in finalised canvases, unfinished parts whoever wrote them (the spill a killed finalize
  left), and in committed nodes keyed-store files that the store's inventory does not list.

Parts that wait to be combined are never selected.

Clean runs safely beside live writers: a node whose lock a live process holds is skipped when
planning, and :meth:`CleanPlan.execute` deletes inside a node only while holding the node's
lock itself (writers that want the node meanwhile wait), after reading its manifest again.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime

from tqdm.auto import tqdm

from ..errors import (
    CorruptManifestError,
    CorruptRecordError,
    InvalidDataError,
    LockHeldError,
    NodeNotFoundError,
)
from ..fs.location import TMP_MARK, Location, local_file_stats, split_node_path
from .inventory import is_own_entry
from .keyed import INVENTORY, STORE_SUFFIX, combined_part_ids, read_inventory
from .layout import CANVAS_JSON, LOCK, MANIFEST, PARTS
from .lock import LockInfo, acquire_lock, release_lock
from .manifest import Status, read_manifest
from .parts import kept_on_reopen, list_parts, part_id, uncommitted_parts, writer_of_part
from .walk import NodeInfo, walk

__all__ = ["LOCK_GRACE", "PART_GRACE", "YOUNG", "CleanEntry", "CleanPlan", "plan_clean"]

PART_GRACE = 3600.0
"""Seconds after its last change that an unfinished part whose writer cannot be checked
(another host, or written without :func:`cachetree.results.add_part`) counts as
abandoned."""

LOCK_GRACE = 86400.0
"""Seconds a lock taken on another host keeps clean away (its process cannot be checked)."""

YOUNG = 60.0
"""Seconds during which an empty folder, or a group node without children, may be a node
another process is creating: clean leaves such things alone until they are older."""


@dataclass(frozen=True)
class CleanEntry:
    """One thing clean would delete.

    Attributes
    ----------
    node
        The node whose lock clean holds while deleting the entry (see :meth:`CleanPlan.execute`).
    created
        For entries of an uncommitted node: the creation stamp of the manifest seen when
        planning (``""`` when there was no readable manifest). The entry is skipped if the node
        was committed or opened again since.
    whole_node
        The entry is the node itself (with everything below it).
    """

    location: Location
    bytes: int
    reason: str
    only: tuple[Location, ...] | None = None
    """When set, only these paths inside ``location`` are deleted, then ``location`` itself if
    it is empty by then (so something written meanwhile is kept)."""
    node: Location | None = None
    created: str | None = None
    whole_node: bool = False

    @property
    def url(self) -> str:
        """Where the entry is."""
        return self.location.url

    def remove(self) -> None:
        """Delete what the entry stands for."""
        if self.only is None:
            self.location.remove()
            return
        for loc in self.only:
            loc.remove()
        self.location.remove_if_empty()


@dataclass
class CleanPlan:
    """What :func:`plan_clean` found. Nothing is deleted until :meth:`execute`."""

    root: Location
    entries: list[CleanEntry] = field(default_factory=list)
    skipped: list[tuple[CleanEntry, str]] = field(default_factory=list)
    """Entries :meth:`execute` left alone, with the reason (the node came back into use)."""

    @property
    def total_bytes(self) -> int:
        """Bytes freed by executing the plan."""
        return sum(e.bytes for e in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __str__(self) -> str:
        if not self.entries:
            return "nothing to clean"
        lines = [f"{format_bytes(e.bytes):>10}  {e.url}  ({e.reason})" for e in self.entries]
        lines.append(f"{format_bytes(self.total_bytes):>10}  total in {len(self.entries)} entries")
        return "\n".join(lines)

    def execute(self, *, progress: bool = False) -> int:
        """Delete every entry that is still unneeded; returns the bytes freed.

        Entries are grouped by node, deepest nodes first. For each node clean takes the
        node's lock (as a ``clean`` claim, so writers wait instead of starting), reads the
        manifest again and deletes only what is still a leftover: a node committed or opened
        again since the plan, a node that gained a child, or one a live process now holds, is
        left alone and listed in :attr:`skipped`.
        """
        freed = 0
        groups: dict[Location | None, list[CleanEntry]] = {}
        for entry in self.entries:
            groups.setdefault(entry.node, []).append(entry)
        order = sorted(groups, key=lambda n: -1 if n is None else -n.path.count("/"))
        bar = tqdm(total=len(self.entries), desc="cleaning", unit="entry", disable=not progress)
        with bar:
            for node in order:
                freed += self._execute_node(node, groups[node])
                bar.update(len(groups[node]))
        return freed

    def _execute_node(self, node: Location | None, entries: list[CleanEntry]) -> int:
        if node is None:
            for entry in entries:
                entry.remove()
            return sum(e.bytes for e in entries)
        try:
            claim = acquire_lock(node, purpose="clean", create_dirs=False)
        except (LockHeldError, NodeNotFoundError) as exc:
            self.skipped += [(e, str(exc)) for e in entries]
            return 0
        freed = 0
        try:
            current = _created_stamp(node)
            for entry in entries:
                why = _still_needed(entry, current)
                if why is not None:
                    self.skipped.append((entry, why))
                    continue
                entry.remove()
                freed += entry.bytes
        finally:
            release_lock(node, claim)
        return freed


def _created_stamp(node: Location) -> str | None:
    """``created`` of the node's manifest now: None when committed, ``""`` when unreadable."""
    try:
        manifest = read_manifest(node)
    except (NodeNotFoundError, CorruptManifestError):
        return ""
    return None if manifest.status is Status.COMMITTED else manifest.created


def _still_needed(entry: CleanEntry, current: str | None) -> str | None:
    """Why ``entry`` must be kept after all (None when it can go)."""
    if entry.created is not None and entry.created != current:
        return "the node was committed or opened again since the plan"
    if entry.whole_node and entry.created is not None and _holds_nodes(entry.location):
        return "a child node appeared in it since the plan"
    if entry.whole_node or entry.location == entry.node:
        return None
    if _looks_like_node(entry.location):
        return "a node is being created there"
    return None


_NODE_FILES = (MANIFEST, LOCK, f".{MANIFEST}{TMP_MARK}", f".{LOCK}{TMP_MARK}")
"""A folder holding one of these (a manifest or lock, or one being written) is a node, or is
becoming one."""


def _looks_like_node(loc: Location) -> bool:
    """Whether ``loc`` is a directory holding a manifest or a lock, or one being written."""
    return any(name.startswith(_NODE_FILES) for name in loc.ls())


def _holds_nodes(loc: Location) -> bool:
    """Whether a direct sub-directory of the node ``loc`` is a node (or becoming one)."""
    return any(
        entry["type"] == "directory" and _looks_like_node(Location(loc.fs, entry["name"]))
        for entry in loc.ls(detail=True)
        if not is_own_entry(posixpath.basename(entry["name"].rstrip("/")))
    )


def format_bytes(n: int | None) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _own_entries(loc: Location, info: NodeInfo, *, keep_parts: bool) -> list[Location]:
    """Files and folders of an uncommitted node that are not its child nodes (nor, with
    ``keep_parts``, its parts area and the items a run claimed).

    A folder holding a manifest or a lock (or one being written) is a child node being
    created, and an empty folder younger than :data:`YOUNG` may become one: both are kept.
    """
    keep = kept_on_reopen(loc, info.children, keep_parts=keep_parts)
    now = time.time()
    own = []
    for entry in loc.ls(detail=True):
        name = posixpath.basename(entry["name"].rstrip("/"))
        if name in keep:
            continue
        child = loc.raw_child(name)
        if entry["type"] == "directory" and (
            _looks_like_node(child) or (not child.ls() and _is_young(child, now))
        ):
            continue
        own.append(child)
    return own


def _is_young(loc: Location, now: float) -> bool:
    newest = _newest_change(loc)
    return newest is None or now - newest < YOUNG


def _lock_in_use(writer: LockInfo | None, lock_grace: float) -> bool:
    """Whether a node's lock says a process may be writing it now."""
    if writer is None or writer.is_stale():
        return False
    return writer.host == socket.gethostname() or writer.age() < lock_grace


def plan_clean(
    root: Location,
    *,
    remove: Iterable[str] = (),
    part_grace: float = PART_GRACE,
    lock_grace: float = LOCK_GRACE,
) -> CleanPlan:
    """List what can go: leftovers of crashed runs, stale nodes, temp files, stale locks, parts.

    Committed, current nodes are kept unless named in ``remove``. Nodes in use are never
    touched: a node whose lock is held by a live process on this host, or by a process on
    another host less than ``lock_grace`` seconds ago. Parts waiting to be combined are kept.

    Parameters
    ----------
    root
        Root node directory of the tree.
    remove
        Paths (relative to ``root``; ``""`` is ``root`` itself) of nodes to delete whatever
        their state.
    part_grace
        Seconds without change after which an unfinished part whose writer cannot be checked
        is considered abandoned.
    lock_grace
        Seconds after which a lock taken on another host (whose process cannot be checked)
        no longer keeps clean away.

    Raises
    ------
    NodeNotFoundError
        If a path in ``remove`` is not a node.
    InvalidDataError
        If a grace period is negative.
    """
    for name, value in (("part_grace", part_grace), ("lock_grace", lock_grace)):
        if not value >= 0:
            raise InvalidDataError(f"{name} must be a number of seconds >= 0, not {value!r}")
    plan = CleanPlan(root)
    infos = list(walk(root))
    by_path = {info.path: info for info in infos}
    doomed: list[str] = []
    for path in remove:
        split_node_path(path)
        if path not in by_path:
            raise NodeNotFoundError(f"no node {path!r} under {root.url}")
        doomed.append(path)
        loc = root.join(path) if path else root
        plan.entries.append(CleanEntry(loc, loc.du(), "asked by name", node=loc, whole_node=True))

    def covered(path: str) -> bool:
        return any(path == d or path.startswith(d + "/") or d == "" for d in doomed)

    for info in infos:
        if covered(info.path):
            continue
        loc = root.join(info.path) if info.path else root
        if _lock_in_use(info.writer, lock_grace):
            continue  # being written right now
        if info.stale:
            doomed.append(info.path)
            plan.entries.append(
                CleanEntry(
                    loc, loc.du(), "stale: its parent was recomputed", node=loc, whole_node=True
                )
            )
            continue
        if info.status is Status.COMMITTED:
            entries = _committed_leftovers(loc, info)
            if loc.raw_child(PARTS).exists():
                entries += _part_leftovers(loc, committed=True, grace=part_grace)
            plan.entries += [replace(e, node=loc) for e in entries]
            continue
        plan.entries += _uncommitted_leftovers(loc, info, part_grace, doomed)
    _doom_emptied_groups(plan, infos, doomed, root)
    return plan


def _uncommitted_leftovers(
    loc: Location, info: NodeInfo, part_grace: float, doomed: list[str]
) -> list[CleanEntry]:
    """What an uncommitted (open or corrupt) node leaves that nobody will finish."""
    reason = "corrupt manifest" if info.status is Status.CORRUPT else "uncommitted leftover"
    created = info.manifest.created if info.manifest is not None else ""
    has_parts_area = loc.raw_child(PARTS).exists()
    leaf = not info.children and not has_parts_area and info.depth > 0
    new_group = info.manifest is not None and info.manifest.kind == "group"
    if leaf and not (new_group and _is_young(loc.raw_child(MANIFEST), time.time())):
        doomed.append(info.path)
        return [CleanEntry(loc, loc.du(), reason, node=loc, created=created, whole_node=True)]
    entries = [
        CleanEntry(e, e.du(), reason, node=loc, created=created)
        for e in _own_entries(loc, info, keep_parts=True)
    ]
    if has_parts_area:
        entries += [
            replace(e, node=loc) for e in _part_leftovers(loc, committed=False, grace=part_grace)
        ]
    if info.writer is not None:
        entries.append(
            CleanEntry(loc.raw_child(LOCK), 0, "lock of a dead process", node=loc, created=created)
        )
    return entries


def _doom_emptied_groups(
    plan: CleanPlan, infos: list[NodeInfo], doomed: list[str], root: Location
) -> None:
    """Remove, in the same pass, uncommitted group nodes whose every child is removed."""
    gone = set(doomed)
    for info in reversed(infos):  # children before their parents
        if info.path in gone or info.depth == 0 or not info.children:
            continue
        if info.status is Status.COMMITTED or info.manifest is None:
            continue
        if info.manifest.kind != "group" or info.has_parts:
            continue
        if not all(posixpath.join(info.path, c) in gone for c in info.children):
            continue
        loc = root.join(info.path)
        # its own entries were planned already; the node itself now goes after its children
        plan.entries = [e for e in plan.entries if e.node != loc]
        plan.entries.append(
            CleanEntry(
                loc,
                0,
                "group node emptied by this clean",
                node=loc,
                created=info.manifest.created,
                whole_node=True,
            )
        )
        gone.add(info.path)


def _committed_leftovers(loc: Location, info: NodeInfo) -> list[CleanEntry]:
    temps = [loc.raw_child(name) for name in loc.ls() if TMP_MARK in name]
    entries = [CleanEntry(t, t.du(), "temporary file") for t in temps]
    if info.writer is not None:
        entries.append(CleanEntry(loc.raw_child(LOCK), 0, "lock left on a committed node"))
    entries += _unlisted_keyed_files(loc)
    return entries


def _unlisted_keyed_files(loc: Location) -> list[CleanEntry]:
    """Files in a committed node's keyed stores that their inventory does not list."""
    entries = []
    for name in loc.ls():
        if not name.endswith(STORE_SUFFIX):
            continue
        store = loc.raw_child(name)
        try:
            raw = read_inventory(store)
        except CorruptRecordError:
            raw = None
        if raw is None:
            continue  # no readable inventory: leave the store alone
        listed = {e["file"] for e in raw["entries"]} | {INVENTORY}
        for entry in store.ls():
            if entry not in listed:
                extra = store.raw_child(entry)
                entries.append(CleanEntry(extra, extra.du(), "keyed file not in the inventory"))
    return entries


def _timestamp(value: object) -> float | None:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value).timestamp()
    return None


def _newest_change(loc: Location) -> float | None:
    """Newest modification time at or below ``loc`` (None when storage does not say)."""
    if loc.is_local:
        try:
            newest = os.stat(loc.path).st_mtime
        except OSError:
            return None
        return max([newest, *(s.st_mtime for s in local_file_stats(loc.path))])
    try:
        infos = loc.fs.find(loc.path, detail=True, withdirs=True) or {
            loc.path: loc.fs.info(loc.path)
        }
    except OSError:
        return None
    times = [
        _timestamp(info.get("mtime") or info.get("LastModified") or info.get("created"))
        for info in infos.values()
    ]
    known = [t for t in times if t is not None]
    return max(known) if known else None


def _writer_gone(part_dir: Location, grace: float, now: float) -> bool:
    """Whether nobody will finish this unfinished part."""
    writer = writer_of_part(part_dir) if TMP_MARK not in part_dir.name else None
    if writer is not None and writer.host == socket.gethostname():
        return writer.is_stale()
    newest = _newest_change(part_dir)
    return newest is not None and now - newest > grace


def _part_leftovers(loc: Location, *, committed: bool, grace: float) -> list[CleanEntry]:
    """What a node's parts area no longer needs (see the module docstring)."""

    parts_dir = loc.raw_child(PARTS)
    unfinished = uncommitted_parts(loc)
    now = time.time()
    # A finalised canvas takes no more parts: what is unfinished there is spill its finalize
    # was killed while removing, whoever wrote it.
    if committed and loc.raw_child(CANVAS_JSON).exists():
        dead = unfinished
    else:
        dead = [u for u in unfinished if _writer_gone(u, grace, now)]
    entries = [CleanEntry(u, u.du(), "unfinished part whose writer is gone") for u in dead]
    if committed:
        parts = list_parts(loc)
        done = combined_part_ids(loc)
        data = [p for p in parts if p.kind == "part"]
        entries += [
            CleanEntry(p.location, p.location.du(), "part already combined")
            for p in data
            if part_id(p) in done
        ]
        needed = any(part_id(p) not in done for p in data) or len(dead) < len(unfinished)
        for p in parts:
            if p.kind == "part":
                continue
            if p.kind in ("shared", "config"):
                if needed:
                    continue
                what = "shared input" if p.kind == "shared" else "combiner setting"
                reason = f"{what} no remaining part needs"
            else:
                reason = "parts of a committed node"
            entries.append(CleanEntry(p.location, p.location.du(), reason))
    going = {e.location.name for e in entries}
    if entries and going >= set(parts_dir.ls()):
        reasons = sorted({e.reason for e in entries})
        return [
            CleanEntry(
                parts_dir,
                sum(e.bytes for e in entries),
                "parts no longer needed: " + ", ".join(reasons),
                only=tuple(e.location for e in entries),
            )
        ]
    return entries
