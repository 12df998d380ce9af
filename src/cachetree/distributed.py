"""Old home of :mod:`cachetree.canvas.cluster`; its names are re-exported here.

``python -m cachetree.distributed status|finalize NODE`` runs ``cachetree canvas-status``
or ``cachetree combine``.
"""

import sys

from .canvas.cluster import (
    PLAN_PART,
    IncompleteRunError,
    MergeReport,
    Task,
    TaskResult,
    finalize_canvas,
    grid_tasks,
    is_distributed_canvas,
    merge_distributed,
    run_task,
    task_status,
)
from .canvas.spec import CanvasSpec

__all__ = [
    "PLAN_PART",
    "CanvasSpec",
    "IncompleteRunError",
    "MergeReport",
    "Task",
    "TaskResult",
    "finalize_canvas",
    "grid_tasks",
    "is_distributed_canvas",
    "merge_distributed",
    "run_task",
    "task_status",
]

if __name__ == "__main__":
    from .cli import main

    command, *rest = sys.argv[1:] or [""]
    command = {"status": "canvas-status", "finalize": "combine"}.get(command, command)
    sys.exit(main([command, *rest]))
