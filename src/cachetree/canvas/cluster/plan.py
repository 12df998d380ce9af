"""The plan of a cluster merge and the run's parts on storage: writing and reading the plan,
the canvas spec it records, listing the run's parts and discarding them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import IncompatibleError, NodeNotFoundError
from ...fs.location import Location
from ...tree.parts import (
    PART_MARKER,
    PartInfo,
    list_parts,
    parts_location,
    release_items,
    remove_claimed_items,
    remove_parts,
    write_part,
)
from ..kinds import PLAN_KIND, SPILL_KIND, TASK_KIND
from ..spec import CanvasSpec
from .output import OutputImages
from .ownership import segment_owners
from .tasks import ATTEMPT_PREFIX, TASK_PREFIX, Task

__all__ = [
    "PLAN_PART",
    "PLAN_VERSION",
    "discard_run",
    "owned_segments",
    "planned_digest",
    "read_json_file",
    "read_plan",
    "require_plan",
    "run_parts",
    "spec_from_plan",
    "write_plan",
]

PLAN_PART = "canvas-plan"
"""Name of the plan part."""
PLAN_VERSION = 3
"""Version of the plan's layout that this cachetree writes and reads (3: the output images
are claimed items of the node, no longer in its parts area)."""


def read_json_file(loc: Location) -> dict[str, Any] | None:
    """The JSON object stored at ``loc``; None when it is missing or not an object."""
    try:
        value = json.loads(loc.read_bytes())
    except (NodeNotFoundError, OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _plan_location(loc: Location) -> Location:
    return parts_location(loc).raw_child(PLAN_PART)


def read_plan(loc: Location) -> PartInfo | None:
    """The plan part of the node at ``loc``, or None when it has none."""
    info = read_json_file(_plan_location(loc).raw_child(PART_MARKER))
    if info is None or info.get("kind") != PLAN_KIND:
        return None
    return PartInfo(_plan_location(loc), PLAN_PART, **info)


def require_plan(loc: Location) -> PartInfo:
    """The plan part of the node at ``loc``, of a version this cachetree reads.

    Raises
    ------
    NodeNotFoundError
        The node holds no plan.
    IncompatibleError
        The plan has another version.
    """
    plan = read_plan(loc)
    if plan is None:
        raise NodeNotFoundError(
            f"{loc.url} holds no distributed canvas (no {PLAN_PART} part): run "
            "merge_distributed on it first"
        )
    if plan.meta.get("version") != PLAN_VERSION:
        raise IncompatibleError(
            f"{loc.url}: the canvas plan has version {plan.meta.get('version')!r}",
            [f"this cachetree reads plan version {PLAN_VERSION}"],
        )
    return plan


def write_plan(
    loc: Location,
    spec: CanvasSpec,
    canvas_json: dict,
    tasks: Sequence[Task],
    *,
    ngff_format: str | None = None,
) -> None:
    """Write the plan: the canvas (``canvas_json`` is ``spec.to_json()``), the tasks and
    the owner of every level-0 segment; claim and create the output images where missing
    (OME-NGFF ``ngff_format``, default 0.5)."""
    output = OutputImages.require(loc, spec, ngff_format)
    owners = segment_owners(tasks, spec.shape, spec.tile, output.segment)
    arrays: dict[str, Any] = {"shape": np.asarray(spec.shape, np.int64), "owners": owners}
    if not isinstance(spec.weights, str):
        arrays["weights"] = np.asarray(spec.weights, np.float32)
    write_part(
        loc,
        PLAN_PART,
        arrays,
        kind=PLAN_KIND,
        meta={
            "version": PLAN_VERSION,
            "canvas": canvas_json,
            "channel_names": {k: list(v) for k, v in (spec.channel_names or {}).items()},
            "min_size": spec.min_size,
            "tasks": [
                [t.id, planned_digest(t, np.argwhere(owners == i))] for i, t in enumerate(tasks)
            ],
            "segment": output.segment,
        },
    )


def planned_digest(task: Task, owned: np.ndarray) -> str:
    """Fingerprint of a task as planned: its boxes, params and region, and the segments it
    owns (a task's marker counts only for the same plan of it)."""
    h = hashlib.sha1(task.digest.encode())
    h.update(np.ascontiguousarray(owned, np.int64).tobytes())
    return h.hexdigest()[:16]


def owned_segments(plan: PartInfo, task_id: str) -> np.ndarray:
    """``(n, 2)`` ``(row, segment)`` of the level-0 segments the plan gives task ``task_id``
    alone (none for a task the plan does not list)."""
    ids = [tid for tid, _ in plan.meta["tasks"]]
    if task_id not in ids:
        return np.zeros((0, 2), np.int64)
    return np.argwhere(np.asarray(plan.read("owners")) == ids.index(task_id))


def spec_from_plan(plan: PartInfo) -> CanvasSpec:
    """The canvas spec the plan records."""
    return CanvasSpec.from_json(
        plan.meta["canvas"],
        weights=np.asarray(plan.read("weights")) if "weights" in plan.arrays else None,
        channel_names=plan.meta.get("channel_names") or None,
        min_size=int(plan.meta.get("min_size", 256)),
    )


def run_parts(loc: Location) -> list[PartInfo]:
    """The committed parts of the run: plan, task markers and the tasks' spill parts (listed
    afresh: workers add parts)."""
    loc.fs.invalidate_cache(parts_location(loc).path)
    return [
        p
        for p in list_parts(loc, kind=(PLAN_KIND, TASK_KIND, SPILL_KIND))
        if p.kind != SPILL_KIND or p.name.startswith(ATTEMPT_PREFIX)
    ]


def discard_run(loc: Location, *, keep_images: bool = False) -> int:
    """Remove the plan, every task marker and every task spill part (committed or not),
    then the output images, or with ``keep_images`` only their claim (they are the node's
    items from then on).

    The plan and markers go first: a run killed meanwhile starts again from nothing rather
    than trusting images that are gone.

    Returns
    -------
    int
        Number of parts removed.
    """
    root = parts_location(loc)
    loc.fs.invalidate_cache(root.path)
    names = [
        n
        for n in root.ls()
        if n == PLAN_PART or n.startswith(ATTEMPT_PREFIX) or n.startswith(TASK_PREFIX)
    ]
    remove_parts(root, names)
    if keep_images:
        release_items(loc)
    else:
        remove_claimed_items(loc)
    return len(names)
