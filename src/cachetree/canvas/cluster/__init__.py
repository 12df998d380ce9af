"""Merge patch predictions on a dask.distributed cluster into one cache node.

The work is cut into **tasks**: each has a stable id and a list of patch boxes (e.g. a band
of patch rows, see :func:`grid_tasks`). :func:`merge_distributed` sends every task that is
not done yet to the cluster; on a worker, :func:`run_task` calls the model on the task's
boxes batch by batch, accumulates the patches in a :class:`~cachetree.canvas.WorkerCanvas`
bounded by the per-worker memory budget, writes its state as immutable spill parts into the
node and finally writes a **task marker** naming exactly those parts. The client process
then sums, for every tile, the contributions the markers list, normalises them, writes them
and the pyramids into the output images, writes their metadata, commits the node and removes
the parts (:func:`finalize_canvas`).

Workers take no lock: the process that opened the node holds it, workers only add parts (each
its own directory, committed by its ``part.json``) and write shards into the output images,
which the client created in place in the node and claimed for the run (see
:func:`~cachetree.tree.parts.claim_items`). The node can live on a disk every worker mounts
or on an object store (``s3://``, ``gs://``, ...), as long as every worker reaches it with
the same URL.

Faults: parts of an attempt that died (worker killed, task error) are never named by a
marker, so they are ignored and removed after the commit; dask re-runs the lost task (the
nanny restarts the worker, the scheduler reschedules the task) under a new attempt token.
A task whose marker exists is skipped, so calling :func:`merge_distributed` again after an
interruption computes only what is missing. The result does not depend on which worker ran
what, nor on retries: contributions are summed in plan order.

On-disk layout inside the node, besides what :class:`~cachetree.canvas.Canvas` writes::

    <head>.ome.zarr                                the output images (every level, written in
                                                   place; metadata last, when finalising)
    .cachetree-parts/_claimed-items/part.json      the claim of the output images: hidden from
                                                   the node's listing until finalised, removed
                                                   with the run when it is discarded
    .cachetree-parts/canvas-plan/                  the plan (kind "canvas-plan"): canvas spec,
        part.json, weights.npy or shape.npy        finalize options, [task id, digest] list
    .cachetree-parts/task-<id>-<attempt>-<seq>/    spill part (kind "canvas-spill") of one
        <ty>_<tx>/weight.npy, <ty>_<tx>/<head>/sum.npy       attempt of a task
    .cachetree-parts/canvas-task-<id>/             task marker (kind "canvas-task"): meta
        part.json, boxes.npy, preview/...          lists the attempt's spill parts; boxes.npy
                                                   holds the task's patch boxes, preview/
                                                   its preview block sums
    .cachetree-parts/canvas-staging/               the preview the client writes while the
        preview.json, preview-<seq>/               tasks run (see cluster.preview)

A node left unfinalised is inspected and finalised later by the command line::

    cachetree canvas-status s3://bucket/run/merge
    cachetree combine s3://bucket/run/merge

One module per job: ``tasks`` (what to compute: :class:`Task`, :func:`grid_tasks`, the
names of a task's parts), ``run`` (what a worker executes: :func:`run_task`), ``plan`` (the
plan and the run's parts on storage), ``status`` (which tasks are done: :func:`task_status`,
:func:`run_status`), ``preview`` (the preview the client keeps while tasks run), ``merge``
(the client: :func:`merge_distributed`) and ``finalize`` (:func:`finalize_canvas`).
"""

from .finalize import IncompleteRunError, finalize_canvas
from .merge import MergeReport, merge_distributed
from .plan import PLAN_PART
from .run import run_task
from .status import (
    RunStatus,
    TaskProgress,
    is_distributed_canvas,
    run_status,
    task_progress,
    task_status,
)
from .tasks import Task, TaskResult, band_tasks, grid_tasks

__all__ = [
    "PLAN_PART",
    "IncompleteRunError",
    "MergeReport",
    "RunStatus",
    "Task",
    "TaskProgress",
    "TaskResult",
    "band_tasks",
    "finalize_canvas",
    "grid_tasks",
    "is_distributed_canvas",
    "merge_distributed",
    "run_status",
    "run_task",
    "task_progress",
    "task_status",
]
