"""Finalising a cluster merge: the seams the task markers list are summed into the output
images, their pyramids built and metadata written, the node committed and the run's parts
removed."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import CacheTreeError, FinalizedError
from ...fs.location import TMP_MARK
from ...images.ngff import ImageInfo
from ...tree.layout import CANVAS_JSON
from ...tree.node import Node, NodeLike, as_node
from ...tree.parts import parts_location
from ..kinds import SPILL_KIND, STAGING
from ..ranges import ValueRanges
from .output import OutputImages
from .ownership import EMPTY
from .plan import discard_run, require_plan, run_parts, spec_from_plan
from .seams import write_seams
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
    workers: int = 2,
    progress: bool = False,
    client: Any = None,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, ImageInfo]:
    """Complete the output images from the seams, commit, and remove the run's parts.

    The tasks wrote the level-0 segments they own into the output images themselves; here
    the segments that are not owned are written: seams from the spill parts the task
    markers list (only those, in plan order, so parts of killed or failed attempts never
    count) and empty segments with the fill value. Then the coarse pyramid shards no task
    could make are built (on the cluster of ``client``, in about four tasks per worker,
    except the small top levels; or else in ``workers`` threads here), the metadata of the
    images (the node's items ``<head>.ome.zarr`` from the start) and ``canvas.json`` are
    written, the node is committed and every part of the run is removed, the images' claim
    last. Killed before the commit, it can simply be run again.

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
    workers
        Threads writing seams (and building the pyramids without a client).
    progress
        Show progress bars.
    client
        A ``distributed.Client`` whose workers reach the node: the pyramids are built there.
    storage_options
        fsspec options the workers use to reach the node (default: the node's).

    Returns
    -------
    dict[str, ImageInfo]
        The written image of each head.
    """
    node = as_node(node)
    options = _Options(partial, commit, workers, progress, client, storage_options)
    if node.writing:
        return _finalize(node, options)
    # Node.open() would re-initialise the node (its params are unknown here and would not
    # match, so the parts would go): an update only finishes what the node holds.
    with node.update() as update:
        if update.committed:
            raise FinalizedError(
                f"node {node.url} is committed already: there is nothing to finalise"
            )
        return _finalize(node, options)


@dataclass(frozen=True)
class _Options:
    partial: bool
    commit: bool
    workers: int
    progress: bool
    client: Any
    storage_options: Mapping[str, Any] | None


def _finalize(node: Node, options: _Options) -> dict[str, ImageInfo]:
    loc = node.location
    plan = require_plan(loc)
    spec = spec_from_plan(plan)
    planned = [(tid, digest) for tid, digest in plan.meta["tasks"]]
    parts = run_parts(loc)
    done = done_markers(parts, planned)
    missing = [tid for tid, _ in planned if tid not in done]
    if missing and not options.partial:
        raise IncompleteRunError(
            f"{len(missing)} of {len(planned)} tasks of {loc.url} have no result yet "
            f"(e.g. {missing[:5]}): run merge_distributed again (it runs only those), or "
            "finalise with partial=True to leave their patches out"
        )
    if missing:
        log.warning("%s: finalising without %d tasks: %s", loc.url, len(missing), missing[:10])
    output = OutputImages.open(loc, spec)
    owners = np.array(plan.read("owners"))  # a copy: missing tasks own nothing
    for index, (tid, _) in enumerate(planned):
        if tid in missing:
            owners[owners == index] = EMPTY  # what a dead attempt wrote there does not count
    ranges = ValueRanges(spec)
    for marker in done.values():
        ranges.add_json(marker.meta.get("ranges") or {})
    spills = {p.name: p for p in parts if p.kind == SPILL_KIND}
    seam_parts = [
        spills[n] for tid, _ in planned if tid in done for n in done[tid].meta["spill_parts"]
    ]
    write_seams(
        spec, output, owners, seam_parts, ranges, workers=options.workers, progress=options.progress
    )
    output.build_coarse_levels(
        owners,
        client=options.client,
        storage_options=options.storage_options,
        workers=options.workers,
        progress=options.progress,
    )
    infos = output.write_metadata(ranges)
    node.save_json(
        CANVAS_JSON,
        {
            "kind": "canvas",
            **spec.to_json(),
            "images": {name: f"{name}.ome.zarr" for name in spec.heads},
            "tasks": len(planned) - len(missing),
        },
    )
    if options.commit:
        node.commit()
    removed = discard_run(loc, keep_images=True)
    parts_location(loc).raw_child(STAGING).remove()
    parts_dir = parts_location(loc)
    if not [n for n in parts_dir.ls() if TMP_MARK not in n]:
        parts_dir.remove()
    log.info(
        "finalised the canvas of %s from %d tasks; removed %d parts", loc.url, len(planned), removed
    )
    return infos
