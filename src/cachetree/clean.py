"""Find and remove what a cache tree no longer needs, with a dry run first."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from .errors import NodeNotFoundError
from .layout import LOCK, MANIFEST, PARTS
from .manifest import Status
from .storage import TMP_MARK, Location, split_node_path
from .walk import NodeInfo, walk


@dataclass(frozen=True)
class CleanEntry:
    """One thing clean would delete."""

    location: Location
    bytes: int
    reason: str

    @property
    def url(self) -> str:
        """Where the entry is."""
        return self.location.url


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
            entry.location.remove()
        return self.total_bytes


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


def plan_clean(root: Location, *, remove: Iterable[str] = ()) -> CleanPlan:
    """List what can go: leftovers of crashed runs, stale nodes, temp files, stale locks.

    Committed, current nodes are kept unless named in ``remove``. Nodes a live process is
    writing are never touched.

    Parameters
    ----------
    root
        Root node directory of the tree.
    remove
        Paths (relative to ``root``) of nodes to delete whatever their state.

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
            continue
        reason = "corrupt manifest" if info.status is Status.CORRUPT else "uncommitted leftover"
        if not info.children and not info.has_parts and info.depth > 0:
            doomed.append(info.path)
            plan.entries.append(CleanEntry(loc, loc.du(), reason))
            continue
        plan.entries += [
            CleanEntry(e, e.du(), reason) for e in _own_entries(loc, info, keep_parts=True)
        ]
        if info.writer is not None:
            plan.entries.append(CleanEntry(loc.raw_child(LOCK), 0, "lock of a dead process"))
    return plan


def _committed_leftovers(loc: Location, info: NodeInfo) -> list[CleanEntry]:
    temps = [loc.raw_child(name) for name in loc.ls() if TMP_MARK in name]
    entries = [CleanEntry(t, t.du(), "temporary file") for t in temps]
    if info.writer is not None:
        entries.append(CleanEntry(loc.raw_child(LOCK), 0, "lock left on a committed node"))
    if info.has_parts:
        parts = loc.raw_child(PARTS)
        entries.append(CleanEntry(parts, parts.du(), "parts of a committed node"))
    return entries
