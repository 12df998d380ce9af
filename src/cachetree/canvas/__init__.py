"""Merge overlapping patch predictions of several model heads with bounded memory.

A :class:`Canvas` covers an output image of a given shape. :meth:`Canvas.add` takes a
batch of patches per head, ``(N, h, w, C)``, and their boxes ``[x0, y0, x1, y1]`` in canvas
pixels; overlapping patches are averaged as ``sum(weight * value) / sum(weight)`` with
uniform, Gaussian or user-given blending weights. :meth:`Canvas.finalize` writes each head's
average as an OME-Zarr image with a pyramid into the cache node.

Memory stays within a budget. The canvas is split into square tiles (also the chunks of
the output images); a tile gets accumulators (one weighted sum per head and one weight
plane shared by all heads) when a patch first touches it. With ``order="row-major"`` a
tile row is normalised and written as soon as no later patch can reach it. When the
accumulators would exceed the budget, the least recently touched tiles are written to disk
as immutable *spill parts* and dropped; a tile touched again starts from zero, and every
contribution is summed when the tile is finalised. :meth:`Canvas.checkpoint` makes the state
on disk complete, so a killed run can resume (``resume=True``) and only the batches after
the checkpoint need to be sent again. :func:`cachetree.canvas.view.open_canvas` shows the
state on disk, normalised on the fly, from any process.

On-disk layout inside the node (``.cachetree-parts`` survives a re-open of an uncommitted
node with unchanged parameters)::

    .cachetree-parts/canvas-staging/           part (kind "canvas-staging"): the spec
        progress.json                          tile rows whose level 0 is complete
        <head>.ome.zarr/0/...                  level 0 of each head, row by row
        preview.json                           the newest preview: folder, factor, ranges
        preview-00000004/<head>.ome.zarr       the preview pyramid (coarse block means)
    .cachetree-parts/canvas-spill-00000007/    part (kind "canvas-spill"): some tiles
        <ty>_<tx>/weight.npy                   weight sum of the tile's touched box
        <ty>_<tx>/<head>/sum.npy               weighted value sum, (h, w, C)
    .cachetree-parts/canvas-checkpoint-00000009/   part (kind "canvas-checkpoint")
        stats/<head>.npy                       running (min, max) per channel
        preview/weight.npy, preview/sum/<head>.npy   the preview's block sums
    <head>.ome.zarr, canvas.json               after finalize()

Several processes can merge one canvas (see :mod:`cachetree.canvas.cluster`): each
runs a :class:`WorkerCanvas` that writes only spill parts, named with its own prefix, and
never touches the node's lock, staging area or images; one canvas then *adopts* the spill
parts that finished tasks list (``adopt=[...]``) and finalises them::

    .cachetree-parts/canvas-plan/                  part (kind "canvas-plan"): spec, task ids
    .cachetree-parts/task-<id>-<attempt>-00000002/ part (kind "canvas-spill") of one attempt
    .cachetree-parts/canvas-task-<id>/             part (kind "canvas-task"): the spill parts
                                                   of the task's successful attempt

One module per job: ``spec`` (the validated :class:`CanvasSpec`, the one description of a
canvas), ``batch`` (checking a batch), ``tiles`` (the resident tiles, their buffer pool and
the eviction policy), :mod:`~cachetree.canvas.spill` (spill parts: writing, reading back,
decoding), :mod:`~cachetree.canvas.checkpoint`,
``resuming`` (checkpointing and resuming a canvas), :mod:`~cachetree.canvas.preview` (the
coarse preview kept on disk while merging), ``rows`` (normalising finished rows into the
output images), ``base``, ``core`` and ``worker`` (the canvases; background writes run on
a :class:`~cachetree.fs.pool.BoundedPool`), :mod:`~cachetree.canvas.view` (what is on disk,
from any process), :mod:`~cachetree.canvas.cluster` (merging on a dask cluster) and
``finish`` (:func:`finish_node`: finalise a canvas merged on a cluster, or combine a node's
parts).
"""

from .core import Canvas, Role
from .finish import FinishReport, finish_node
from .kinds import (
    CANVAS_JSON,
    CHECKPOINT_KIND,
    PLAN_KIND,
    SPILL_KIND,
    STAGING_KIND,
    TASK_KIND,
)
from .normalise import normalise_block
from .spec import CanvasSpec, HeadSpec, NanPolicy, Order, parse_memory_budget, weight_window
from .worker import WorkerCanvas

__all__ = [
    "CANVAS_JSON",
    "CHECKPOINT_KIND",
    "PLAN_KIND",
    "SPILL_KIND",
    "STAGING_KIND",
    "TASK_KIND",
    "Canvas",
    "CanvasSpec",
    "FinishReport",
    "HeadSpec",
    "NanPolicy",
    "Order",
    "Role",
    "WorkerCanvas",
    "finish_node",
    "normalise_block",
    "parse_memory_budget",
    "weight_window",
]

# Documented and pickled under the package name, where users import them from.
for _public in (
    Canvas,
    CanvasSpec,
    FinishReport,
    HeadSpec,
    WorkerCanvas,
    finish_node,
    normalise_block,
    parse_memory_budget,
    weight_window,
):
    _public.__module__ = __name__
del _public
