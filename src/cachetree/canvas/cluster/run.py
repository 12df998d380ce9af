"""What a worker executes: one task merged into the output images (the segments it owns)
and spill parts (its seams), then its marker."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import contextvars
import functools
import logging
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from ...errors import InvalidDataError
from ...fs.allocator import keep_freed_memory, set_mmap_threshold
from ...fs.location import Location
from ...tree.parts import write_part
from ..kinds import TASK_KIND
from ..preview import preview_factor
from ..spec import CanvasSpec, parse_memory_budget
from .band import BandCanvas
from .output import OutputImages
from .plan import owned_segments, planned_digest, require_plan
from .status import valid_marker
from .tasks import ATTEMPT_PREFIX, Model, Task, TaskResult, marker_name

__all__ = ["run_task"]

log = logging.getLogger("cachetree")


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


def _threads_here() -> int:
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return 1


MMAP_THRESHOLD = 64 * 2**20
"""Size from which glibc maps an allocation on its own on the workers (see
:func:`_reusing_freed_arrays`)."""
KEPT_FREE = 256 * 2**20
"""Freed memory each heap of a worker keeps for reuse while a task runs (see
:func:`_reusing_freed_arrays`)."""


@functools.cache
def _raise_mmap_threshold() -> bool:
    return set_mmap_threshold(MMAP_THRESHOLD)


@contextlib.contextmanager
def _reusing_freed_arrays() -> Iterator[None]:
    """While a task runs, let glibc reuse the arrays it frees instead of mapping fresh pages.

    dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also turns off
    glibc's adaptive mmap threshold: every array over 128 KiB is then mapped afresh and its
    pages fault in on first touch, which made a band task about 30 % slower than the same
    task outside dask (2.4 s against 3.1 s on W1). So the mmap threshold is raised to
    :data:`MMAP_THRESHOLD` (once per process), and during the task each heap keeps up to
    :data:`KEPT_FREE` of freed memory rather than trimming it at once
    (:func:`~cachetree.fs.allocator.keep_freed_memory`): that halved a W1 band task's page
    faults again (about 200 000 to 90 000) and cut its kernel time by a third (0.5 s). The free
    memory goes back to the system when the worker's last running task ends.
    """
    _raise_mmap_threshold()
    with keep_freed_memory(KEPT_FREE):
        yield


MODEL_AHEAD = 4
"""Batches the model is called on ahead of the merge (see :func:`_model_ahead`). With two
tasks sharing two cores, four rather than two took 0.3 s (5 %) off a W1 run with a 5 ms
model: the merge falls behind the model in bursts (the end of a tile row), and a longer
queue lets the model keep going through them."""


def _model_ahead(
    model: Model, task: Task, boxes: np.ndarray, batch_size: int
) -> Iterator[tuple[np.ndarray, Any]]:
    """Each batch of ``boxes`` with its patches, the model called on the next
    :data:`MODEL_AHEAD` batches (one call at a time, on a thread of its own) while the caller
    merges this one: a model waiting for an accelerator or a service overlaps the merge
    instead of taking turns with it, and keeps working through a slow merge step (the end
    of a tile row, where a row of output is normalised)."""
    batches = [boxes[i : i + batch_size] for i in range(0, len(boxes), batch_size)]

    def call(batch: np.ndarray) -> concurrent.futures.Future:
        # in the caller's context: ``distributed.get_worker()`` works in the model as in a task
        return ahead.submit(contextvars.copy_context().run, model, task, batch)

    with concurrent.futures.ThreadPoolExecutor(1, "cachetree-model") as ahead:
        pending = collections.deque(call(batch) for batch in batches[:MODEL_AHEAD])
        for k, batch in enumerate(batches):
            patches = pending.popleft().result()
            if k + MODEL_AHEAD < len(batches):
                pending.append(call(batches[k + MODEL_AHEAD]))
            yield batch, patches


def run_task(
    task: Task,
    node_url: str,
    spec: CanvasSpec,
    model: Model,
    *,
    batch_size: int = 32,
    memory_budget: int | str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    io_threads: int = 2,
    preview: int | None = None,
) -> TaskResult:
    """Merge one task's patches into the node's output images and seam parts, then write
    its marker.

    Runs on a worker (any process that reaches ``node_url``); needs no lock. A task whose
    marker already names complete parts for the same boxes is skipped. Otherwise the model
    is called on the boxes ``batch_size`` at a time, top to bottom (on a thread of its own,
    up to four batches ahead of the merge, so five batches of patches may be in memory),
    and the patches accumulate in a ``BandCanvas`` (``cachetree.canvas.cluster.band``)
    within the budget: the level-0 segments the plan gives this task alone are written,
    normalised, straight into the output images as soon as the patches have passed them (a
    retry writes the same shards again, each replaced in one step); the tiles of seams
    shared with other tasks go to spill parts ``task-<id>-<attempt>-<seq>``. Once
    everything is on storage the marker ``canvas-task-<id>`` is written last. A failure or a
    kill before that leaves parts no marker names, which do not count.

    Parameters
    ----------
    task
        The task.
    node_url
        URL (or shared path) of the node, opened for writing by the client.
    spec
        The canvas.
    model
        ``model(task, boxes)`` returns the patches of ``boxes``.
    batch_size
        Boxes per model call.
    memory_budget
        Accumulator memory of this worker process (bytes, ``"512MiB"``, ``"10%"``), shared
        by the tasks its threads run at once; None: the canvas default.
    storage_options
        fsspec options to reach ``node_url``.
    io_threads
        Threads encoding and writing output shards and spill parts.
    preview
        Factor of the preview block sums the task returns and stores in its marker
        (``preview/weight``, ``preview/sum/<head>``, over the cells its patches reached);
        default: the one a canvas of this budget uses.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidDataError(f"batch_size must be a positive integer, got {batch_size!r}")
    loc = Location.from_url(node_url, **dict(storage_options or {}))
    worker = _worker_name()
    plan = require_plan(loc)
    owned = owned_segments(plan, task.id)
    digest = planned_digest(task, owned)
    if [task.id, digest] not in plan.meta["tasks"]:
        raise InvalidDataError(
            f"task {task.id!r} is not in the plan of {loc.url} as given: plan it with "
            "merge_distributed (or write_plan) first"
        )
    done = valid_marker(loc, task.id, digest)
    if done is not None:
        log.info("task %s is done already (attempt %s)", task.id, done.get("attempt"))
        return TaskResult(
            task.id, True, tuple(done["spill_parts"]), worker=worker, attempt=done["attempt"]
        )
    start = time.perf_counter()
    budget = max(1, parse_memory_budget(memory_budget) // _threads_here())
    attempt = uuid.uuid4().hex[:8]
    boxes = task.boxes
    boxes = boxes[np.argsort(np.maximum(boxes[:, 1], 0), kind="stable")]
    factor = preview_factor(spec, budget) if preview is None else preview
    with _reusing_freed_arrays():
        canvas = BandCanvas(
            loc,
            spec,
            output=OutputImages.open(loc, spec, pyramid=True),
            owned=owned,
            region=task.region,
            part_prefix=f"{ATTEMPT_PREFIX}{task.id}-{attempt}",
            memory_budget=budget,
            workers=io_threads,
            preview=factor,
        )
        try:
            for batch, patches in _model_ahead(model, task, boxes, batch_size):
                canvas.add(patches, batch)
            parts = canvas.flush_parts()
            stats = canvas.stats
            origin, block_sums = canvas.preview_reached()
            ranges = canvas.ranges.to_json()
        except BaseException:
            canvas.close()
            raise
    seconds = time.perf_counter() - start
    write_part(
        loc,
        marker_name(task.id),
        {"boxes": np.asarray(task.boxes), **{f"preview/{k}": v for k, v in block_sums.items()}},
        kind=TASK_KIND,
        meta={
            "task": task.id,
            "digest": digest,
            "attempt": attempt,
            "spill_parts": parts,
            "canvas": spec.to_json(),
            "patches": len(boxes),
            "seconds": round(seconds, 3),
            "worker": worker,
            "spilled_bytes": stats["spilled_bytes"],
            "peak_resident_bytes": stats["peak_resident_bytes"],
            "preview": {"factor": factor, "origin": list(origin)},
            "ranges": ranges,
            "shards": canvas.shards_written,
        },
    )
    return TaskResult(
        task.id,
        False,
        tuple(parts),
        patches=len(boxes),
        spilled_bytes=stats["spilled_bytes"],
        peak_resident_bytes=stats["peak_resident_bytes"],
        memory_budget=budget,
        seconds=seconds,
        worker=worker,
        attempt=attempt,
        preview=(origin, block_sums),
        shards=canvas.shards_written,
    )
