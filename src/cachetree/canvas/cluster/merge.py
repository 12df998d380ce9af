"""The client side of a cluster merge: plan the run, send the tasks that are not done to the
dask cluster, collect what they did and finalise."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from ...errors import FinalizedError, InvalidDataError
from ...fs.location import Location
from ...images.ngff import ImageInfo
from ...tree.node import Node
from ..preview import preview_factor
from ..spec import CanvasSpec, parse_memory_budget
from .finalize import finalize_canvas
from .plan import PLAN_VERSION, discard_run, read_plan, write_plan
from .preview import RunPreview, marker_block_sums
from .run import run_task
from .status import task_status
from .tasks import Model, Task, TaskResult, as_tasks

__all__ = ["MergeReport", "merge_distributed"]

log = logging.getLogger("cachetree")


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
    shards: int = 0
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
            f"done already; {self.shards} output shards written by the tasks, "
            f"{self.spill_parts} seam parts"
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
        capturing them. A task calls it up to four batches ahead of the merge, on a thread
        of its own (one call at a time).
    spec
        The canvas (:class:`~cachetree.canvas.CanvasSpec`).
    client
        The ``distributed.Client``; default: the current one (``distributed.get_client()``).
    batch_size
        Boxes per model call.
    worker_memory_budget
        Accumulator memory per worker process, shared by its threads (bytes, ``"1GiB"``,
        ``"10%"`` of that machine's RAM); None: min(1 GiB, 10 % of RAM). The model's own
        memory (five batches of inputs and outputs) comes on top.
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
    task_list = as_tasks(tasks)
    canvas_json = spec.to_json()
    _check_reachable(loc, client)
    options = dict(loc.fs.storage_options) if storage_options is None else dict(storage_options)
    plan = read_plan(loc)
    if plan is not None and (
        plan.meta.get("version") != PLAN_VERSION
        or json.dumps(plan.meta.get("canvas"), sort_keys=True)
        != json.dumps(canvas_json, sort_keys=True)
    ):
        removed = discard_run(loc)
        log.warning(
            "%s held a distributed canvas of another spec or plan version: discarded its %d parts",
            loc.url,
            removed,
        )
    write_plan(loc, spec, canvas_json, task_list, ngff_format=node.ngff_format)
    done = task_status(loc, task_list)
    todo = [t for t in task_list if t.id not in done]
    factor = preview_factor(spec, parse_memory_budget(None))
    preview = RunPreview(loc, spec, factor)
    for marker in done.values():
        if (marker.meta.get("preview") or {}).get("factor") == factor:
            preview.add(marker_block_sums(marker))
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
            preview=factor,
            key=f"cachetree-task-{task.id}-{token}",
            pure=False,
            retries=retries,
        )
        for task in todo
    ]
    preview.write(len(done) / len(task_list), now=True)  # while the first tasks run
    bar = tqdm(total=len(todo), desc="canvas tasks", unit="task", disable=not progress)
    try:
        for future in as_completed(futures):
            result: TaskResult = future.result()
            _account(report, result)
            preview.add(result.preview)
            preview.write((report.skipped + report.computed) / len(task_list))
            bar.update()
    except BaseException as exc:
        client.cancel(futures)
        preview.close(check=False)
        finished = len(report.results) + report.skipped
        exc.add_note(
            f"{finished} of {len(task_list)} tasks of {node.url} are done and kept: calling "
            "merge_distributed again on the node (same params) runs only the others"
        )
        raise
    finally:
        bar.close()
    report.seconds_tasks = time.perf_counter() - start
    if not finalize:  # with finalize, the finished images replace the preview at once
        preview.write((report.skipped + report.computed) / len(task_list), now=True)
    preview.close(abandon=finalize)  # with finalize, a write still going is not waited for
    if finalize:
        start = time.perf_counter()
        report.images = finalize_canvas(
            node,
            progress=progress,
            workers=finalize_workers,
            client=client,
            storage_options=options,
        )
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
    report.shards += result.shards
    report.peak_task_resident_bytes = max(
        report.peak_task_resident_bytes, result.peak_resident_bytes
    )
    report.task_memory_budget = result.memory_budget or report.task_memory_budget
    report.workers[result.worker] = report.workers.get(result.worker, 0) + 1
