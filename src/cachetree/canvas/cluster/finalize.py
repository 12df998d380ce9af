"""Finalising a cluster merge: the spill parts the task markers list are summed into the
canvas's images, the node is committed and the run's parts are removed."""

from __future__ import annotations

import logging

from ...errors import CacheTreeError, FinalizedError
from ...fs.location import TMP_MARK
from ...images.ngff import ImageInfo
from ...tree.node import Node, NodeLike, as_node
from ...tree.parts import parts_location
from ..core import Canvas
from ..kinds import SPILL_KIND
from .plan import discard_run, require_plan, run_parts, spec_from_plan
from .status import done_markers

__all__ = ["IncompleteRunError", "finalize_canvas"]

log = logging.getLogger("cachetree")


class IncompleteRunError(CacheTreeError):
    """Finalising was asked for while some planned tasks have no result yet."""


def finalize_canvas(
    node: NodeLike,
    *,
    partial: bool = False,
    commit: bool = True,
    memory_budget: int | str | None = None,
    workers: int = 2,
    progress: bool = False,
) -> dict[str, ImageInfo]:
    """Merge the tasks' spill parts into the final images, commit and remove the parts.

    The plan written by :func:`~cachetree.canvas.cluster.merge_distributed` gives the canvas
    and the tasks; each task's marker names the spill parts of its successful attempt, and
    only those are summed (in plan order), so parts of killed or failed attempts never
    count. Every head is written as ``<head>.ome.zarr`` with a pyramid, plus
    ``canvas.json``; then the node is committed and every part of the run is removed (also
    those of failed attempts). Killed before the commit, it can simply be run again.

    Parameters
    ----------
    node
        The node open for writing; or a handle, location or URL of a node another process
        left uncommitted (e.g. ``merge_distributed(..., finalize=False)`` followed by
        ``node.abandon()``): its lock is then taken, and a live holder raises
        :class:`~cachetree.errors.LockHeldError`.
    partial
        Finalise even when some planned tasks have no result (their patches are missing
        from the images). Default: raise :class:`IncompleteRunError`.
    commit
        Commit the node (default). Without it the images are written, the parts removed
        and the node stays open.
    memory_budget, workers, progress
        As for :class:`~cachetree.canvas.Canvas` (only one tile row is held at a time).

    Returns
    -------
    dict[str, ImageInfo]
        The written image of each head.
    """
    node = as_node(node)
    if node.writing:
        return _finalize(node, partial, commit, memory_budget, workers, progress)
    # Node.open() would re-initialise the node (its params are unknown here and would not
    # match, so the parts would go): an update only finishes what the node holds.
    with node.update() as update:
        if update.committed:
            raise FinalizedError(
                f"node {node.url} is committed already: there is nothing to finalise"
            )
        return _finalize(node, partial, commit, memory_budget, workers, progress)


def _finalize(
    node: Node,
    partial: bool,
    commit: bool,
    memory_budget: int | str | None,
    workers: int,
    progress: bool,
) -> dict[str, ImageInfo]:
    loc = node.location
    plan = require_plan(loc)
    spec = spec_from_plan(plan)
    planned = [(tid, digest) for tid, digest in plan.meta["tasks"]]
    parts = run_parts(loc)
    done = done_markers(parts, planned)
    missing = [tid for tid, _ in planned if tid not in done]
    spills = {p.name: p for p in parts if p.kind == SPILL_KIND}
    adopt = [spills[n] for tid, _ in planned if tid in done for n in done[tid].meta["spill_parts"]]
    if missing and not partial:
        raise IncompleteRunError(
            f"{len(missing)} of {len(planned)} tasks of {loc.url} have no result yet "
            f"(e.g. {missing[:5]}): run merge_distributed again (it runs only those), or "
            "finalise with partial=True to leave their patches out"
        )
    if missing:
        log.warning("%s: finalising without %d tasks: %s", loc.url, len(missing), missing[:10])
    canvas = Canvas(
        node,
        spec.shape,
        spec.heads,
        memory_budget=memory_budget,
        workers=workers,
        progress=progress,
        adopt=adopt,
        **spec.canvas_kwargs(),
    )
    try:
        infos = canvas.finalize(commit=commit)
    except BaseException:
        canvas.close()
        raise
    removed = discard_run(loc)
    parts_dir = parts_location(loc)
    if not [n for n in parts_dir.ls() if TMP_MARK not in n]:
        parts_dir.remove()
    log.info(
        "finalised the canvas of %s from %d tasks; removed %d parts", loc.url, len(planned), removed
    )
    return infos
