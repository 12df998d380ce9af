"""Names and kinds of the parts a canvas writes into its node (see :mod:`cachetree.canvas`)."""

from __future__ import annotations

from ..tree.layout import CANVAS_JSON

__all__ = [
    "CANVAS_JSON",
    "CHECKPOINT_KIND",
    "PLAN_KIND",
    "PROGRESS",
    "SPILL_KIND",
    "STAGING",
    "STAGING_KIND",
    "TASK_KIND",
]

SPILL_KIND = "canvas-spill"
"""Part kind of spilled accumulators."""
CHECKPOINT_KIND = "canvas-checkpoint"
"""Part kind of a checkpoint (the state a resumed run starts from)."""
STAGING_KIND = "canvas-staging"
"""Part kind of the staging area: canvas spec and the level 0 written so far."""
STAGING = "canvas-staging"
"""Name of the staging part."""
TASK_KIND = "canvas-task"
"""Part kind of a task marker: the spill parts one task's successful attempt wrote."""
PLAN_KIND = "canvas-plan"
"""Part kind of the plan of a canvas merged by several processes: its spec and task ids."""
PROGRESS = "progress.json"
"""File of the staging area naming the tile rows whose level 0 is complete."""
