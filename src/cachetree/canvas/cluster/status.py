"""Which tasks of a cluster merge are done, and what a node holds of the run."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ...fs.location import Location, cat_existing
from ...tree.manifest import read_manifest
from ...tree.node import NodeLike, location_of
from ...tree.parts import PART_MARKER, PartInfo, parts_location
from ..kinds import PLAN_KIND, SPILL_KIND, TASK_KIND
from .plan import read_json_file, read_plan, run_parts
from .tasks import Task, marker_name

__all__ = [
    "RunStatus",
    "TaskProgress",
    "done_markers",
    "is_distributed_canvas",
    "run_status",
    "task_progress",
    "task_status",
    "valid_marker",
]


def _committed(loc: Location, names: Sequence[str]) -> set[str]:
    """Which of the named parts of the node at ``loc`` have their marker (fresh, not cached)."""
    root = parts_location(loc)
    paths = {root.raw_child(n).raw_child(PART_MARKER).path: n for n in names}
    if not paths:
        return set()
    if loc.is_local:
        return {n for p, n in paths.items() if os.path.exists(p)}
    return {paths[p] for p in cat_existing(loc.fs, list(paths)) if p in paths}


def valid_marker(loc: Location, task_id: str, digest: str) -> dict[str, Any] | None:
    """The marker meta of task ``task_id`` when it is for the same planned task (``digest``,
    see :func:`~cachetree.canvas.cluster.plan.planned_digest`) and all its parts exist."""
    info = read_json_file(
        parts_location(loc).raw_child(marker_name(task_id)).raw_child(PART_MARKER)
    )
    if info is None or info.get("kind") != TASK_KIND:
        return None
    meta = info.get("meta") or {}
    if meta.get("digest") != digest:
        return None
    listed = list(meta.get("spill_parts", []))
    if len(_committed(loc, listed)) != len(set(listed)):
        return None
    return meta


def done_markers(
    parts: Sequence[PartInfo], tasks: Iterable[tuple[str, str]]
) -> dict[str, PartInfo]:
    """Of ``(task id, digest)`` pairs, the markers that count: same digest, all parts there."""
    spills = {p.name for p in parts if p.kind == SPILL_KIND}
    markers = {p.name: p for p in parts if p.kind == TASK_KIND}
    done = {}
    for task_id, digest in tasks:
        marker = markers.get(marker_name(task_id))
        if marker is None or marker.meta.get("digest") != digest:
            continue
        if all(n in spills for n in marker.meta.get("spill_parts", ())):
            done[task_id] = marker
    return done


@dataclass(frozen=True)
class TaskProgress:
    """Where one planned task of a cluster merge stands."""

    id: str
    done: bool
    seconds: float | None = None
    """Time its finished attempt took."""
    worker: str | None = None
    """The worker that ran its finished attempt."""

    def __str__(self) -> str:
        if not self.done:
            return f"{self.id}  not done"
        return f"{self.id}  done in {self.seconds:.1f} s on {self.worker}"


def task_progress(parts: Sequence[PartInfo]) -> list[TaskProgress] | None:
    """Every planned task of a cluster merge, in plan order, from a listing of the node's
    parts (no further reads); None when the parts hold no plan."""
    plan = next((p for p in parts if p.kind == PLAN_KIND), None)
    if plan is None:
        return None
    planned = [(tid, digest) for tid, digest in plan.meta["tasks"]]
    done = done_markers(parts, planned)
    return [
        TaskProgress(
            tid,
            tid in done,
            done[tid].meta.get("seconds") if tid in done else None,
            done[tid].meta.get("worker") if tid in done else None,
        )
        for tid, _ in planned
    ]


def task_status(node: NodeLike, tasks: Iterable[Task]) -> dict[str, PartInfo]:
    """Markers of the given tasks that count: made for the task as the node's plan lists
    it, and every part they name exists.

    Returns
    -------
    dict[str, PartInfo]
        Task id to its marker, for the tasks that are done.
    """
    loc = location_of(node)
    plan = read_plan(loc)
    planned = {tid: digest for tid, digest in plan.meta["tasks"]} if plan is not None else {}
    parts = run_parts(loc)
    return done_markers(parts, ((t.id, planned.get(t.id, "")) for t in tasks))


def is_distributed_canvas(node: NodeLike) -> bool:
    """Whether the node holds a canvas merged by
    :func:`~cachetree.canvas.cluster.merge_distributed` and not yet finalised (its plan part
    exists): :func:`~cachetree.canvas.cluster.finalize_canvas` is what combines it."""
    try:
        return read_plan(location_of(node)) is not None
    except Exception:
        return False


@dataclass(frozen=True)
class RunStatus:
    """What a node holds of a canvas merged by
    :func:`~cachetree.canvas.cluster.merge_distributed`."""

    url: str
    """URL of the node."""
    status: str
    """The node's status (``"open"``, ``"committed"``, ...)."""
    canvas: dict[str, Any] | None
    """The canvas spec (JSON form) of the plan; None without a plan."""
    tasks_done: int = 0
    """Planned tasks whose marker counts."""
    tasks_total: int = 0
    """Planned tasks."""
    listed_parts: int = 0
    """Spill parts the markers of finished tasks list."""
    orphan_parts: int = 0
    """Spill parts of unfinished or failed attempts."""
    tasks: tuple[TaskProgress, ...] = ()
    """Every planned task, in plan order."""


def run_status(node: NodeLike) -> RunStatus:
    """The plan, tasks and parts of the distributed canvas in ``node`` (reads metadata only)."""
    loc = location_of(node)
    plan = read_plan(loc)
    status = read_manifest(loc).status.value
    if plan is None:
        return RunStatus(loc.url, status, None)
    parts = run_parts(loc)
    done = done_markers(parts, [(tid, digest) for tid, digest in plan.meta["tasks"]])
    spills = {p.name for p in parts if p.kind == SPILL_KIND}
    listed = {n for m in done.values() for n in m.meta.get("spill_parts", ())}
    orphans = spills - listed
    return RunStatus(
        loc.url,
        status,
        plan.meta["canvas"],
        tasks_done=len(done),
        tasks_total=len(plan.meta["tasks"]),
        listed_parts=len(spills) - len(orphans),
        orphan_parts=len(orphans),
        tasks=tuple(task_progress(parts) or ()),
    )
