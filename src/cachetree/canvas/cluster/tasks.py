"""What a cluster merge computes: tasks of patch boxes, what a task reports, and the names of
the parts a task writes."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import InvalidDataError
from ...tree.fingerprint import to_jsonable

__all__ = [
    "ATTEMPT_PREFIX",
    "TASK_PREFIX",
    "Model",
    "Task",
    "TaskResult",
    "as_tasks",
    "band_tasks",
    "grid_tasks",
    "marker_name",
]

TASK_PREFIX = "canvas-task-"
"""Name prefix of task markers: ``canvas-task-<id>``."""
ATTEMPT_PREFIX = "task-"
"""Name prefix of the spill parts of one task attempt: ``task-<id>-<attempt>-<seq>``."""

_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

Model = Callable[["Task", np.ndarray], Any]
"""``model(task, boxes)`` returns the patches at ``boxes`` (``(n, 4)`` int64 ``[x0, y0, x1,
y1]``): a mapping of head name to ``(n, h, w, C)`` array, as :meth:`Canvas.add
<cachetree.canvas.Canvas.add>` takes."""


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
    region
        ``(x0, y0, x1, y1)``: the canvas pixels the task's patches count in (e.g. its band,
        see :func:`band_tasks`); their parts outside it are left to the tasks whose region
        holds them. None: everywhere.
    """

    id: str
    boxes: Any
    params: Mapping[str, Any] = field(default_factory=dict)
    region: tuple[int, int, int, int] | None = None

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
        if self.region is not None:
            region = tuple(int(v) for v in self.region)
            if len(region) != 4 or region[0] >= region[2] or region[1] >= region[3]:
                raise InvalidDataError(
                    f"task {self.id!r}: region must be (x0, y0, x1, y1) with x0 < x1 and "
                    f"y0 < y1, got {self.region!r}"
                )
            object.__setattr__(self, "region", region)

    @property
    def digest(self) -> str:
        """Fingerprint of the boxes and params: a marker of other content does not count."""
        h = hashlib.sha1(np.ascontiguousarray(self.boxes).tobytes())
        h.update(json.dumps(to_jsonable(dict(self.params)), sort_keys=True).encode())
        if self.region is not None:
            h.update(json.dumps(list(self.region)).encode())
        return h.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.boxes)


def _origins(size: int, patch: int, stride: int) -> list[int]:
    """Patch origins ``0, stride, ...`` up to the first patch reaching ``size``."""
    out = [0]
    while out[-1] + patch < size:
        out.append(out[-1] + stride)
    return out


def _patch_geometry(
    shape: tuple[int, int], patch: int | tuple[int, int], stride: int | tuple[int, int]
) -> tuple[int, int, int, int, int, int]:
    (H, W) = (int(v) for v in shape)
    ph, pw = (patch, patch) if isinstance(patch, int) else (int(patch[0]), int(patch[1]))
    sy, sx = (stride, stride) if isinstance(stride, int) else (int(stride[0]), int(stride[1]))
    if min(H, W, ph, pw, sy, sx) < 1:
        raise InvalidDataError("shape, patch and stride must be positive")
    return H, W, ph, pw, sy, sx


def band_tasks(
    shape: tuple[int, int],
    patch: int | tuple[int, int],
    stride: int | tuple[int, int],
    *,
    band: int = 4096,
    tile: int = 512,
    prefix: str = "band",
) -> list[Task]:
    """Sliding-window patches over a canvas, one task per horizontal band of ``band`` rows.

    The patches are those of :func:`grid_tasks`. A band's task holds every patch that
    reaches into the band and counts them only inside it (its ``region``), so no
    output tile is shared between tasks: each task writes its band of the final image
    itself and nothing has to be summed afterwards. The patch rows that cross a band edge
    are computed by both tasks (one patch row per edge).

    Parameters
    ----------
    band
        Rows per band, a multiple of ``tile`` (the canvas' tile edge), so bands meet at
        output chunk edges.
    tile
        The canvas' tile edge.

    Returns
    -------
    list[Task]
        Top to bottom; ids ``<prefix>-<first row>`` (zero-padded).
    """
    H, W, ph, pw, sy, sx = _patch_geometry(shape, patch, stride)
    if tile < 1 or band < tile or band % tile:
        raise InvalidDataError(
            f"band ({band}) must be a positive multiple of the tile edge ({tile})"
        )
    ys, xs = np.array(_origins(H, ph, sy)), _origins(W, pw, sx)
    digits = len(str(H))
    tasks = []
    for top in range(0, H, band):
        bottom = min(top + band, H)
        rows = ys[(ys < bottom) & (ys + ph > top)]
        boxes = np.array([[x, y, x + pw, y + ph] for y in rows for x in xs], np.int64)
        tasks.append(Task(f"{prefix}-{top:0{digits}d}", boxes, region=(0, top, W, bottom)))
    return tasks


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
    H, W, ph, pw, sy, sx = _patch_geometry(shape, patch, stride)
    if rows_per_task < 1:
        raise InvalidDataError("rows_per_task must be positive")
    ys, xs = _origins(H, ph, sy), _origins(W, pw, sx)
    digits = len(str(len(ys)))
    tasks = []
    for i in range(0, len(ys), rows_per_task):
        rows = ys[i : i + rows_per_task]
        boxes = np.array([[x, y, x + pw, y + ph] for y in rows for x in xs], np.int64)
        tasks.append(Task(f"{prefix}-{i:0{digits}d}", boxes))
    return tasks


def as_tasks(tasks: Iterable[Task | Any]) -> list[Task]:
    """:class:`Task` objects of what :func:`~cachetree.canvas.cluster.merge_distributed`
    accepts: tasks, ``(id, boxes)`` pairs, or box arrays (their ids are their positions)."""
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


@dataclass(frozen=True)
class TaskResult:
    """What one task did (returned by :func:`~cachetree.canvas.cluster.run_task` to the
    client)."""

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
    preview: tuple[tuple[int, int], dict[str, np.ndarray]] | None = None
    """The task's preview block sums: first cell and arrays (see
    :meth:`~cachetree.canvas.WorkerCanvas.preview_reached`); None for a skipped task."""
    shards: int = 0
    """Level-0 shards the task wrote straight into the output images."""


def marker_name(task_id: str) -> str:
    """Part name of the marker of task ``task_id``."""
    return f"{TASK_PREFIX}{task_id}"
