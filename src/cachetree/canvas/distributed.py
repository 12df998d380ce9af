"""Old home of :mod:`cachetree.canvas.cluster`; its names are re-exported here."""

from .cluster import (
    PLAN_PART,
    IncompleteRunError,
    MergeReport,
    RunStatus,
    Task,
    TaskResult,
    finalize_canvas,
    grid_tasks,
    is_distributed_canvas,
    merge_distributed,
    run_status,
    run_task,
    task_status,
)
from .spec import CanvasSpec

__all__ = [
    "PLAN_PART",
    "CanvasSpec",
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
