"""Find and remove what a cache tree no longer needs, with a dry run first.

Besides leftovers of crashed runs, stale nodes and temporary files, clean looks inside the
parts area of each node (``.cachetree-parts``):

* unfinished parts (no ``part.json`` marker) whose writer is gone: its process is dead
  (same host, recorded by :func:`cachetree.combine.add_part`), or nothing in the part changed
  for ``part_grace`` seconds;
* in committed nodes, parts already combined into the results (a combine killed after its
  commit leaves them), and — once no part waits to be combined — the shared inputs and the
  combiner setting;
* in committed nodes, keyed-store files that the store's inventory does not list.

Parts that wait to be combined are never selected.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from tqdm.auto import tqdm

from .errors import NodeNotFoundError
from .layout import LOCK, MANIFEST, PARTS
from .manifest import Status
from .storage import TMP_MARK, Location, split_node_path
from .walk import NodeInfo, walk

PART_GRACE = 3600.0
"""Seconds after its last change that an unfinished part whose writer cannot be checked
(another host, or written without :func:`cachetree.combine.add_part`) counts as abandoned."""


@dataclass(frozen=True)
class CleanEntry:
    """One thing clean would delete."""

    location: Location
    bytes: int
    reason: str
    only: tuple[Location, ...] | None = None
    """When set, only these paths inside ``location`` are deleted, then ``location`` itself if
    it is empty by then (so something written meanwhile is kept)."""

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
        _remove_if_empty(self.location)


@dataclass
class CleanPlan:
    """What :func:`plan_clean` found. Nothing is deleted until :meth:`execute`."""

    root: Location
    entries: list[CleanEntry] = field(default_factory=list)

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
        """Delete every entry; returns the bytes freed."""
        for entry in tqdm(self.entries, desc="cleaning", unit="entry", disable=not progress):
            entry.remove()
        return self.total_bytes


def _remove_if_empty(loc: Location) -> None:
    if loc.is_local:
        with contextlib.suppress(OSError):
            os.rmdir(loc.path)
    elif not loc.ls():
        with contextlib.suppress(OSError, NotImplementedError):
            loc.fs.rmdir(loc.path)


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
    keep = set(info.children) | {MANIFEST, LOCK}
    if keep_parts:
        keep.add(PARTS)
    return [loc.raw_child(name) for name in loc.ls() if name not in keep]


def plan_clean(
    root: Location, *, remove: Iterable[str] = (), part_grace: float = PART_GRACE
) -> CleanPlan:
    """List what can go: leftovers of crashed runs, stale nodes, temp files, stale locks, parts.

    Committed, current nodes are kept unless named in ``remove``. Nodes a live process is
    writing are never touched, nor are parts waiting to be combined.

    Parameters
    ----------
    root
        Root node directory of the tree.
    remove
        Paths (relative to ``root``) of nodes to delete whatever their state.
    part_grace
        Seconds without change after which an unfinished part whose writer cannot be checked
        is considered abandoned.

    Raises
    ------
    NodeNotFoundError
        If a path in ``remove`` is not a node.
    """
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
        plan.entries.append(CleanEntry(loc, loc.du(), "asked by name"))

    def covered(path: str) -> bool:
        return any(path == d or path.startswith(d + "/") or d == "" for d in doomed)

    for info in infos:
        if covered(info.path):
            continue
        loc = root.join(info.path) if info.path else root
        if info.writer is not None and info.writer_alive:
            continue  # being written right now
        if info.stale:
            doomed.append(info.path)
            plan.entries.append(CleanEntry(loc, loc.du(), "stale: its parent was recomputed"))
            continue
        if info.status is Status.COMMITTED:
            plan.entries += _committed_leftovers(loc, info)
            if loc.raw_child(PARTS).exists():
                plan.entries += _part_leftovers(loc, committed=True, grace=part_grace)
            continue
        reason = "corrupt manifest" if info.status is Status.CORRUPT else "uncommitted leftover"
        has_parts_area = loc.raw_child(PARTS).exists()
        if not info.children and not has_parts_area and info.depth > 0:
            doomed.append(info.path)
            plan.entries.append(CleanEntry(loc, loc.du(), reason))
            continue
        plan.entries += [
            CleanEntry(e, e.du(), reason) for e in _own_entries(loc, info, keep_parts=True)
        ]
        if has_parts_area:
            plan.entries += _part_leftovers(loc, committed=False, grace=part_grace)
        if info.writer is not None:
            plan.entries.append(CleanEntry(loc.raw_child(LOCK), 0, "lock of a dead process"))
    return plan


def _committed_leftovers(loc: Location, info: NodeInfo) -> list[CleanEntry]:
    temps = [loc.raw_child(name) for name in loc.ls() if TMP_MARK in name]
    entries = [CleanEntry(t, t.du(), "temporary file") for t in temps]
    if info.writer is not None:
        entries.append(CleanEntry(loc.raw_child(LOCK), 0, "lock left on a committed node"))
    entries += _unlisted_keyed_files(loc)
    return entries


def _unlisted_keyed_files(loc: Location) -> list[CleanEntry]:
    """Files in a committed node's keyed stores that their inventory does not list."""
    from .keyed import INVENTORY, STORE_SUFFIX

    entries = []
    for name in loc.ls():
        if not name.endswith(STORE_SUFFIX):
            continue
        store = loc.raw_child(name)
        try:
            raw = json.loads(store.raw_child(INVENTORY).read_bytes())
        except (FileNotFoundError, ValueError):
            continue  # no readable inventory: leave the store alone
        listed = {e.get("file") for e in raw.get("entries", [])} | {INVENTORY}
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
        for dirpath, _dirs, files in os.walk(loc.path):
            for name in files:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.stat(os.path.join(dirpath, name)).st_mtime)
        return newest
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
    from .combine import writer_of_part

    writer = writer_of_part(part_dir) if TMP_MARK not in part_dir.name else None
    if writer is not None and writer.host == socket.gethostname():
        return writer.is_stale()
    newest = _newest_change(part_dir)
    return newest is not None and now - newest > grace


def _part_leftovers(loc: Location, *, committed: bool, grace: float) -> list[CleanEntry]:
    """What a node's parts area no longer needs (see the module docstring)."""
    from .combine import combined_part_ids, part_id
    from .parts import list_parts, uncommitted_parts

    parts_dir = loc.raw_child(PARTS)
    unfinished = uncommitted_parts(loc)
    now = time.time()
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
