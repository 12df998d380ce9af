"""Merge patch predictions on a dask.distributed cluster into one cache node.

The work is cut into **tasks**: each has a stable id and a list of patch boxes (e.g. a band
of patch rows, see :func:`grid_tasks`). :func:`merge_distributed` sends every task that is
not done yet to the cluster; on a worker, :func:`run_task` calls the model on the task's
boxes batch by batch, accumulates the patches in a :class:`~cachetree.canvas.WorkerCanvas`
bounded by the per-worker memory budget, writes its state as immutable spill parts into the
node and finally writes a **task marker** naming exactly those parts. The client process
then sums, for every tile, the contributions the markers list, normalises them and writes
each head as OME-Zarr with a pyramid into the node, commits it and removes the parts
(:func:`finalize_canvas`).

Workers take no lock and never write outside ``.cachetree-parts``: the process that opened
the node holds its lock, workers only add parts (each its own directory, committed by its
``part.json``). The node can live on a disk every worker mounts or on an object store
(``s3://``, ``gs://``, ...), as long as every worker reaches it with the same URL.

Faults: parts of an attempt that died (worker killed, task error) are never named by a
marker, so they are ignored and removed after the commit; dask re-runs the lost task (the
nanny restarts the worker, the scheduler reschedules the task) under a new attempt token.
A task whose marker exists is skipped, so calling :func:`merge_distributed` again after an
interruption computes only what is missing. The result does not depend on which worker ran
what, nor on retries: contributions are summed in plan order.

On-disk layout inside the node, besides what :class:`~cachetree.canvas.Canvas` writes::

    .cachetree-parts/canvas-plan/                  the plan (kind "canvas-plan"): canvas spec,
        part.json, weights.npy or shape.npy        finalize options, [task id, digest] list
    .cachetree-parts/task-<id>-<attempt>-<seq>/    spill part (kind "canvas-spill") of one
        <ty>_<tx>/weight.npy, <ty>_<tx>/<head>/sum.npy       attempt of a task
    .cachetree-parts/canvas-task-<id>/             task marker (kind "canvas-task"): meta
        part.json, boxes.npy                       lists the attempt's spill parts; boxes.npy
                                                   holds the task's patch boxes

A node left unfinalised is inspected and finalised later by the command line::

    cachetree canvas-status s3://bucket/run/merge
    cachetree combine s3://bucket/run/merge
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..errors import (
    CacheTreeError,
    FinalizedError,
    IncompatibleError,
    InvalidDataError,
    NodeNotFoundError,
)
from ..fs.location import TMP_MARK, Location
from ..images.ngff import ImageInfo
from ..tree.fingerprint import to_jsonable
from ..tree.lock import acquire_lock
from ..tree.manifest import Status, read_manifest
from ..tree.node import Node
from ..tree.parts import (
    PART_MARKER,
    PartInfo,
    list_parts,
    parts_location,
    remove_parts,
    write_part,
)
from .core import Canvas
from .kinds import PLAN_KIND, SPILL_KIND, TASK_KIND
from .spec import CanvasSpec, parse_memory_budget
from .worker import WorkerCanvas

__all__ = [
    "PLAN_PART",
    "IncompleteRunError",
    "MergeReport",
    "RunStatus",
    "Task",
    "TaskResult",
    "finalize_canvas",
    "grid_tasks",
    "is_distributed_canvas",
    "merge_distributed",
    "run_status",
    "run_task",
    "task_status",
]

log = logging.getLogger("cachetree")

PLAN_PART = "canvas-plan"
"""Name of the plan part."""
TASK_PREFIX = "canvas-task-"
"""Name prefix of task markers: ``canvas-task-<id>``."""
ATTEMPT_PREFIX = "task-"
"""Name prefix of the spill parts of one task attempt: ``task-<id>-<attempt>-<seq>``."""
PLAN_VERSION = 1

_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

Model = Callable[["Task", np.ndarray], Any]
"""``model(task, boxes)`` returns the patches at ``boxes`` (``(n, 4)`` int64 ``[x0, y0, x1,
y1]``): a mapping of head name to ``(n, h, w, C)`` array, as :meth:`Canvas.add` takes."""


class IncompleteRunError(CacheTreeError):
    """Finalising was asked for while some planned tasks have no result yet."""


# -- what to compute --------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """One unit of work: a stable id and the patch boxes it merges.

    Parameters
    ----------
    id
        Stable name of the task (letters, digits, ``.``, ``_``, ``-``; at most 100
        characters); a finished task is recognised by it when the run is repeated.
    boxes
        ``(n, 4)`` integer boxes ``[x0, y0, x1, y1]`` in canvas pixels.
    params
        JSON-compatible extras for the model (e.g. the slide region to read).
    """

    id: str
    boxes: Any
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _TASK_ID.fullmatch(self.id):
            raise InvalidDataError(
                f"task id {self.id!r} is not allowed: use 1-100 letters, digits, '.', '_' "
                "or '-', starting with a letter or digit"
            )
        boxes = np.asarray(self.boxes)
        if boxes.size == 0:
            boxes = np.zeros((0, 4), np.int64)
        if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.dtype.kind not in "iu":
            raise InvalidDataError(
                f"task {self.id!r}: boxes must be an (n, 4) integer array of [x0, y0, x1, y1], "
                f"got shape {boxes.shape} of {boxes.dtype}"
            )
        boxes = boxes.astype(np.int64)
        boxes.setflags(write=False)
        object.__setattr__(self, "boxes", boxes)
        if not isinstance(self.params, Mapping):
            raise InvalidDataError(f"task {self.id!r}: params must be a mapping")

    @property
    def digest(self) -> str:
        """Fingerprint of the boxes and params: a marker of other content does not count."""
        h = hashlib.sha1(np.ascontiguousarray(self.boxes).tobytes())
        h.update(json.dumps(to_jsonable(dict(self.params)), sort_keys=True).encode())
        return h.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.boxes)


def grid_tasks(
    shape: tuple[int, int],
    patch: int | tuple[int, int],
    stride: int | tuple[int, int],
    *,
    rows_per_task: int = 1,
    prefix: str = "rows",
) -> list[Task]:
    """Sliding-window patches over a canvas, grouped into tasks of whole patch rows.

    Patch origins are ``0, stride, 2 * stride, ...`` along each axis, up to the first patch
    reaching the canvas edge (it may overhang; the canvas clips it). Each task holds
    ``rows_per_task`` consecutive patch rows, left to right, top to bottom; its id is
    ``<prefix>-<first row>`` (zero-padded).

    Returns
    -------
    list[Task]
        Top to bottom.
    """
    (H, W) = (int(v) for v in shape)
    ph, pw = (patch, patch) if isinstance(patch, int) else (int(patch[0]), int(patch[1]))
    sy, sx = (stride, stride) if isinstance(stride, int) else (int(stride[0]), int(stride[1]))
    if min(H, W, ph, pw, sy, sx, rows_per_task) < 1:
        raise InvalidDataError("shape, patch, stride and rows_per_task must be positive")

    def origins(size: int, p: int, s: int) -> list[int]:
        out = [0]
        while out[-1] + p < size:
            out.append(out[-1] + s)
        return out

    ys, xs = origins(H, ph, sy), origins(W, pw, sx)
    digits = len(str(len(ys)))
    tasks = []
    for i in range(0, len(ys), rows_per_task):
        rows = ys[i : i + rows_per_task]
        boxes = np.array([[x, y, x + pw, y + ph] for y in rows for x in xs], np.int64)
        tasks.append(Task(f"{prefix}-{i:0{digits}d}", boxes))
    return tasks


# -- on the worker ----------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskResult:
    """What one task did (returned by :func:`run_task` to the client)."""

    id: str
    skipped: bool
    parts: tuple[str, ...]
    patches: int = 0
    spilled_bytes: int = 0
    peak_resident_bytes: int = 0
    memory_budget: int = 0
    seconds: float = 0.0
    worker: str = ""
    attempt: str = ""


def marker_name(task_id: str) -> str:
    """Part name of the marker of task ``task_id``."""
    return f"{TASK_PREFIX}{task_id}"


def _read_json_file(loc: Location) -> dict[str, Any] | None:
    try:
        value = json.loads(loc.read_bytes())
    except (NodeNotFoundError, OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _committed(loc: Location, names: Sequence[str]) -> set[str]:
    """Which of the named parts of the node at ``loc`` have their marker (fresh, not cached)."""
    root = parts_location(loc)
    paths = {root.raw_child(n).raw_child(PART_MARKER).path: n for n in names}
    if not paths:
        return set()
    if loc.is_local:
        return {n for p, n in paths.items() if os.path.exists(p)}
    found = loc.fs.cat(list(paths), on_error="omit")
    if not isinstance(found, dict):
        found = {next(iter(paths)): found}
    return {paths[p] for p in found if p in paths}


def _valid_marker(loc: Location, task: Task) -> dict[str, Any] | None:
    """The marker of ``task`` when it is for the same boxes and all its parts exist."""
    info = _read_json_file(
        parts_location(loc).raw_child(marker_name(task.id)).raw_child(PART_MARKER)
    )
    if info is None or info.get("kind") != TASK_KIND:
        return None
    meta = info.get("meta") or {}
    if meta.get("digest") != task.digest:
        return None
    listed = list(meta.get("spill_parts", []))
    if len(_committed(loc, listed)) != len(set(listed)):
        return None
    return meta


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
) -> TaskResult:
    """Merge one task's patches into spill parts of the node and write its marker.

    Runs on a worker (any process that reaches ``node_url``); needs no lock. A task whose
    marker already names complete parts for the same boxes is skipped. Otherwise the model
    is called on the boxes ``batch_size`` at a time, patches accumulate in a worker canvas
    that spills to parts ``task-<id>-<attempt>-<seq>`` whenever it would exceed its budget,
    and once everything is on storage the marker ``canvas-task-<id>`` is written last. A
    failure or a kill before that leaves parts no marker names, which do not count.

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
        Threads writing spill parts.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidDataError(f"batch_size must be a positive integer, got {batch_size!r}")
    loc = Location.from_url(node_url, **dict(storage_options or {}))
    worker = _worker_name()
    done = _valid_marker(loc, task)
    if done is not None:
        log.info("task %s is done already (attempt %s)", task.id, done.get("attempt"))
        return TaskResult(
            task.id, True, tuple(done["spill_parts"]), worker=worker, attempt=done["attempt"]
        )
    start = time.perf_counter()
    budget = max(1, parse_memory_budget(memory_budget) // _threads_here())
    attempt = uuid.uuid4().hex[:8]
    boxes = task.boxes
    if spec.order == "row-major":
        boxes = boxes[np.argsort(np.maximum(boxes[:, 1], 0), kind="stable")]
    canvas = WorkerCanvas(
        loc,
        spec,
        part_prefix=f"{ATTEMPT_PREFIX}{task.id}-{attempt}",
        memory_budget=budget,
        workers=io_threads,
    )
    try:
        for i in range(0, len(boxes), batch_size):
            batch = boxes[i : i + batch_size]
            canvas.add(model(task, batch), batch)
        parts = canvas.flush_parts()
        stats = canvas.stats
    except BaseException:
        canvas.close()
        raise
    seconds = time.perf_counter() - start
    write_part(
        loc,
        marker_name(task.id),
        {"boxes": np.asarray(task.boxes)},
        kind=TASK_KIND,
        meta={
            "task": task.id,
            "digest": task.digest,
            "attempt": attempt,
            "spill_parts": parts,
            "canvas": spec.to_json(),
            "patches": len(boxes),
            "seconds": round(seconds, 3),
            "worker": worker,
            "spilled_bytes": stats["spilled_bytes"],
            "peak_resident_bytes": stats["peak_resident_bytes"],
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
    )


# -- the plan and the state on storage --------------------------------------------------------
def _plan_location(loc: Location) -> Location:
    return parts_location(loc).raw_child(PLAN_PART)


def _read_plan(loc: Location) -> PartInfo | None:
    info = _read_json_file(_plan_location(loc).raw_child(PART_MARKER))
    if info is None or info.get("kind") != PLAN_KIND:
        return None
    return PartInfo(_plan_location(loc), PLAN_PART, **info)


def _write_plan(loc: Location, spec: CanvasSpec, canvas_json: dict, tasks: Sequence[Task]) -> None:
    arrays: dict[str, Any] = {"shape": np.asarray(spec.shape, np.int64)}
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
            "tasks": [[t.id, t.digest] for t in tasks],
        },
    )


def _spec_from_plan(plan: PartInfo) -> CanvasSpec:
    return CanvasSpec.from_json(
        plan.meta["canvas"],
        weights=np.asarray(plan.read("weights")) if "weights" in plan.arrays else None,
        channel_names=plan.meta.get("channel_names") or None,
        min_size=int(plan.meta.get("min_size", 256)),
    )


def _distributed_parts(loc: Location) -> list[PartInfo]:
    loc.fs.invalidate_cache(parts_location(loc).path)
    return [
        p
        for p in list_parts(loc, kind=(PLAN_KIND, TASK_KIND, SPILL_KIND))
        if p.kind != SPILL_KIND or p.name.startswith(ATTEMPT_PREFIX)
    ]


def _discard_run(loc: Location) -> int:
    """Remove the plan, every task marker and every task spill part (committed or not)."""
    root = parts_location(loc)
    loc.fs.invalidate_cache(root.path)
    names = [
        n
        for n in root.ls()
        if n == PLAN_PART or n.startswith(ATTEMPT_PREFIX) or n.startswith(TASK_PREFIX)
    ]
    remove_parts(root, names)
    return len(names)


def _done_markers(
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


def task_status(node: Node | Location | str, tasks: Iterable[Task]) -> dict[str, PartInfo]:
    """Markers of the given tasks that count: same boxes, and every part they name exists.

    Returns
    -------
    dict[str, PartInfo]
        Task id to its marker, for the tasks that are done.
    """
    parts = _distributed_parts(_as_location(node))
    return _done_markers(parts, ((t.id, t.digest) for t in tasks))


def is_distributed_canvas(node: Node | Location | str) -> bool:
    """Whether the node holds a canvas merged by :func:`merge_distributed` and not yet
    finalised (its plan part exists): :func:`finalize_canvas` is what combines it."""
    try:
        return _read_plan(_as_location(node)) is not None
    except Exception:
        return False


def _as_location(node: Node | Location | str) -> Location:
    if isinstance(node, Node):
        return node.location
    return Location.from_url(node)


# -- the client side --------------------------------------------------------------------------
@dataclass
class MergeReport:
    """What :func:`merge_distributed` did."""

    url: str
    tasks: int = 0
    skipped: int = 0
    computed: int = 0
    patches: int = 0
    spill_parts: int = 0
    spilled_bytes: int = 0
    peak_task_resident_bytes: int = 0
    task_memory_budget: int = 0
    workers: dict[str, int] = field(default_factory=dict)
    seconds_tasks: float = 0.0
    seconds_finalize: float = 0.0
    images: dict[str, ImageInfo] | None = None
    results: list[TaskResult] = field(default_factory=list)

    def __str__(self) -> str:
        text = (
            f"{self.url}: {self.computed} tasks merged ({self.patches} patches) on "
            f"{len(self.workers)} workers in {self.seconds_tasks:.1f} s, {self.skipped} were "
            f"done already; {self.spill_parts} spill parts"
        )
        if self.images is not None:
            text += f"; finalised in {self.seconds_finalize:.1f} s"
        return text


def _get_client(client: Any) -> Any:
    if client is not None:
        return client
    try:
        from distributed import get_client
    except ImportError as exc:  # pragma: no cover - dask.distributed is a test dependency
        raise InvalidDataError(
            "merge_distributed needs dask.distributed: pip install 'distributed'"
        ) from exc
    try:
        return get_client()
    except ValueError as exc:
        raise InvalidDataError(
            "no dask client: pass client=..., or create one first, e.g. "
            "`client = distributed.Client(cluster)`"
        ) from exc


def _as_tasks(tasks: Iterable[Task | Any]) -> list[Task]:
    out = []
    for i, task in enumerate(tasks):
        if isinstance(task, Task):
            out.append(task)
        elif isinstance(task, tuple) and len(task) == 2 and isinstance(task[0], str):
            out.append(Task(task[0], task[1]))
        else:
            out.append(Task(f"{i:06d}", task))
    ids = [t.id for t in out]
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise InvalidDataError(f"task ids must be unique; repeated: {twice[:10]}")
    if not out:
        raise InvalidDataError("no tasks given")
    return out


def _check_reachable(loc: Location, client: Any) -> None:
    protocols = loc.fs.protocol if isinstance(loc.fs.protocol, tuple) else (loc.fs.protocol,)
    if "memory" in protocols:
        pids = set(client.run(os.getpid).values())
        if pids != {os.getpid()}:
            raise InvalidDataError(
                f"{loc.url} is in this process' memory, which worker processes cannot see: "
                "put the cache tree on a disk all workers share or on an object store"
            )


def merge_distributed(
    node: Node,
    tasks: Iterable[Task | Any],
    model: Model,
    spec: CanvasSpec,
    *,
    client: Any = None,
    batch_size: int = 32,
    worker_memory_budget: int | str | None = None,
    retries: int = 2,
    finalize: bool = True,
    progress: bool = True,
    storage_options: Mapping[str, Any] | None = None,
    io_threads: int = 2,
    finalize_workers: int = 2,
) -> MergeReport:
    """Merge the patches of many tasks on a dask cluster into the canvas of ``node``.

    Tasks already done in the node (their marker names complete parts for the same boxes)
    are skipped; the others run as :func:`run_task` on the workers, in parallel, each
    worker writing its own spill parts into the node. When all are done and ``finalize``
    is true, :func:`finalize_canvas` merges the parts into ``<head>.ome.zarr`` images with
    pyramids (in this process, one tile row in memory at a time), commits the node and
    removes the parts.

    Parameters
    ----------
    node
        Node open for writing (``with tree.node(path, params=...) as node:``); this process
        holds its lock. Its location must be reachable from every worker under the same
        URL: a shared disk, or an object store.
    tasks
        :class:`Task` objects (or ``(id, boxes)`` pairs, or box arrays: their ids are then
        their positions, ``"000000"``, ``"000001"``, ..., so keep the order stable across
        runs).
    model
        ``model(task, boxes)`` returns the patches of a batch of boxes as a mapping of head
        name to ``(n, h, w, C)`` array. It runs on the workers, so it must be picklable
        (a module-level function, or one cloudpickle can ship); it is sent with every
        task, so load large weights inside it, once per worker process, rather than
        capturing them.
    spec
        The canvas (:class:`~cachetree.canvas.CanvasSpec`).
    client
        The ``distributed.Client``; default: the current one (``distributed.get_client()``).
    batch_size
        Boxes per model call.
    worker_memory_budget
        Accumulator memory per worker process, shared by its threads (bytes, ``"1GiB"``,
        ``"10%"`` of that machine's RAM); None: min(1 GiB, 10 % of RAM). The model's own
        memory (a batch of inputs and outputs) comes on top.
    retries
        Times a task that raised is tried again (a killed worker's task is rescheduled by
        dask anyway, up to ``distributed.scheduler.allowed-failures``).
    finalize
        Finalise the canvas and commit the node when every task is done.
    progress
        Show progress bars.
    storage_options
        fsspec options the workers use to reach the node; default: those of the node's
        filesystem (credentials included, sent with each task: prefer giving workers their
        own credentials, e.g. environment variables, and pass ``{}``).
    io_threads
        Threads per task writing spill parts.
    finalize_workers
        Threads encoding and writing output chunks while finalising.

    Returns
    -------
    MergeReport
        Counts, time and the written images (when finalised).

    Raises
    ------
    FinalizedError
        The node is not open for writing.
    InvalidDataError
        No client, bad tasks, or a node location the workers cannot reach.
    Exception
        The first task failure (after its retries); tasks finished so far keep their
        results, and a new call skips them.
    """
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InvalidDataError(f"retries must be an integer >= 0, got {retries!r}")
    if not isinstance(node, Node) or not node.writing:
        raise FinalizedError(
            "merge_distributed needs a node open for writing, e.g. "
            "`with tree.node(path, params=...) as node:` (and only when it is not committed)"
        )
    from distributed import as_completed

    client = _get_client(client)
    loc = node.location
    task_list = _as_tasks(tasks)
    canvas_json = spec.to_json()
    _check_reachable(loc, client)
    options = dict(loc.fs.storage_options) if storage_options is None else dict(storage_options)
    plan = _read_plan(loc)
    if plan is not None and json.dumps(plan.meta.get("canvas"), sort_keys=True) != json.dumps(
        canvas_json, sort_keys=True
    ):
        removed = _discard_run(loc)
        log.warning(
            "%s held a distributed canvas of another spec: discarded its %d parts",
            loc.url,
            removed,
        )
    _write_plan(loc, spec, canvas_json, task_list)
    done = task_status(loc, task_list)
    todo = [t for t in task_list if t.id not in done]
    report = MergeReport(node.url, tasks=len(task_list), skipped=len(done))
    report.task_memory_budget = parse_memory_budget(worker_memory_budget)
    log.info(
        "%s: %d tasks, %d done already, %d to run", loc.url, len(task_list), len(done), len(todo)
    )
    start = time.perf_counter()
    token = uuid.uuid4().hex[:8]
    futures = [
        client.submit(
            run_task,
            task,
            node.url,
            spec,
            model,
            batch_size=batch_size,
            memory_budget=worker_memory_budget,
            storage_options=options,
            io_threads=io_threads,
            key=f"cachetree-task-{task.id}-{token}",
            pure=False,
            retries=retries,
        )
        for task in todo
    ]
    bar = tqdm(total=len(todo), desc="canvas tasks", unit="task", disable=not progress)
    try:
        for future in as_completed(futures):
            result: TaskResult = future.result()
            _account(report, result)
            bar.update()
    except BaseException as exc:
        client.cancel(futures)
        finished = len(report.results) + report.skipped
        exc.add_note(
            f"{finished} of {len(task_list)} tasks of {node.url} are done and kept: calling "
            "merge_distributed again on the node (same params) runs only the others"
        )
        raise
    finally:
        bar.close()
    report.seconds_tasks = time.perf_counter() - start
    if finalize:
        start = time.perf_counter()
        report.images = finalize_canvas(node, progress=progress, workers=finalize_workers)
        report.seconds_finalize = time.perf_counter() - start
    log.info("%s", report)
    return report


def _account(report: MergeReport, result: TaskResult) -> None:
    report.results.append(result)
    if result.skipped:  # finished by an earlier attempt the scheduler lost track of
        report.skipped += 1
        return
    report.computed += 1
    report.patches += result.patches
    report.spill_parts += len(result.parts)
    report.spilled_bytes += result.spilled_bytes
    report.peak_task_resident_bytes = max(
        report.peak_task_resident_bytes, result.peak_resident_bytes
    )
    report.task_memory_budget = result.memory_budget or report.task_memory_budget
    report.workers[result.worker] = report.workers.get(result.worker, 0) + 1


def _open_for_finalize(url: str | Location) -> Node:
    """A writing handle on an uncommitted node, taking its lock (never discarding parts)."""
    loc = Location.from_url(url)
    manifest = read_manifest(loc)
    if manifest.status is Status.COMMITTED:
        raise FinalizedError(f"node {loc.url} is committed already: there is nothing to finalise")
    acquire_lock(loc)
    node = Node(loc, kind=manifest.kind)
    # Node.open() would re-initialise the node (its params are unknown here and would not
    # match, so the parts would go): this handle only finishes what the node holds.
    node._writing = True
    return node


def finalize_canvas(
    node: Node | Location | str,
    *,
    partial: bool = False,
    commit: bool = True,
    memory_budget: int | str | None = None,
    workers: int = 2,
    progress: bool = False,
) -> dict[str, ImageInfo]:
    """Merge the tasks' spill parts into the final images, commit and remove the parts.

    The plan written by :func:`merge_distributed` gives the canvas and the tasks; each
    task's marker names the spill parts of its successful attempt, and only those are
    summed (in plan order), so parts of killed or failed attempts never count. Every head
    is written as ``<head>.ome.zarr`` with a pyramid, plus ``canvas.json``; then the node
    is committed and every part of the run is removed (also those of failed attempts).
    Killed before the commit, it can simply be run again.

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
    own = not isinstance(node, Node) or not node.writing
    if own:
        handle = _open_for_finalize(node.location if isinstance(node, Node) else node)
    else:
        assert isinstance(node, Node)
        handle = node
    try:
        infos = _finalize(handle, partial, commit, memory_budget, workers, progress)
    except BaseException:
        if own and handle.writing:
            handle.abandon()
        raise
    if own and handle.writing:
        handle.abandon()
    return infos


def _finalize(
    node: Node,
    partial: bool,
    commit: bool,
    memory_budget: int | str | None,
    workers: int,
    progress: bool,
) -> dict[str, ImageInfo]:
    loc = node.location
    plan = _read_plan(loc)
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
    spec = _spec_from_plan(plan)
    planned = [(tid, digest) for tid, digest in plan.meta["tasks"]]
    parts = _distributed_parts(loc)
    done = _done_markers(parts, planned)
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
    removed = _discard_run(loc)
    parts_dir = parts_location(loc)
    if not [n for n in parts_dir.ls() if TMP_MARK not in n]:
        parts_dir.remove()
    log.info(
        "finalised the canvas of %s from %d tasks; removed %d parts", loc.url, len(planned), removed
    )
    return infos


# -- state of a run ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RunStatus:
    """What a node holds of a canvas merged by :func:`merge_distributed`."""

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


def run_status(node: Node | Location | str) -> RunStatus:
    """The plan, tasks and parts of the distributed canvas in ``node`` (reads metadata only)."""
    loc = _as_location(node)
    plan = _read_plan(loc)
    status = read_manifest(loc).status.value
    if plan is None:
        return RunStatus(loc.url, status, None)
    parts = _distributed_parts(loc)
    done = _done_markers(parts, [(tid, digest) for tid, digest in plan.meta["tasks"]])
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
    )
