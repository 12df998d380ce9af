"""finish_node: a canvas merged by cluster tasks is finalised, a node of parts is combined.

The cluster's side is played in this process: the plan is written and every task runs as a
worker would run it (:func:`~cachetree.canvas.cluster.run_task`), leaving the node with the
parts a real cluster leaves.
"""

from __future__ import annotations

import numpy as np
import pytest

from cachetree import CacheTree, Status
from cachetree.canvas import Canvas, CanvasSpec, FinishReport, finish_node
from cachetree.canvas.cluster import finalize_canvas, grid_tasks, is_distributed_canvas, run_task
from cachetree.canvas.cluster.plan import write_plan
from cachetree.errors import FinalizedError
from cachetree.results import add_part, set_combiner
from cachetree.tree.lock import read_lock
from tests.workers import models

SHAPE = (150, 200)
TASKS = grid_tasks(SHAPE, 48, 36, rows_per_task=2)
SPEC = CanvasSpec(SHAPE, models.HEADS, weights="gaussian", tile=64, min_size=64)


def single_process_merge(tree: CacheTree) -> dict[str, np.ndarray]:
    kwargs = SPEC.canvas_kwargs()
    with tree.node("reference") as node:
        canvas = Canvas(node, SHAPE, models.HEADS, **kwargs)
        for task in TASKS:
            canvas.add(models.model(task, task.boxes), task.boxes)
        canvas.finalize()
    return {h: np.asarray(node.open_image(h)[0]) for h in models.HEADS}


def test_a_canvas_merged_by_tasks_is_finalised(tmp_path):
    tree = CacheTree(tmp_path / "tree")
    node = tree.node("merge", params={"v": 1}).open()
    write_plan(node.location, SPEC, SPEC.to_json(), TASKS)
    for task in TASKS:
        run_task(task, node.url, SPEC, models.model, memory_budget=4 * 64 * 64 * 4 * 5)
    node.abandon()  # another process finishes it, as `cachetree combine` would
    assert is_distributed_canvas(node.url)

    steps = []
    report = finish_node(node.url, progress=lambda *step: steps.append(step))
    assert isinstance(report, FinishReport) and report.combined is None
    assert report.heads == ["mask", "prob"]
    assert str(report) == f"finalised canvas {node.url}: heads mask, prob"
    assert steps == [(0, 1, "finalising canvas"), (1, 1, "finalising canvas")]
    node = tree.node("merge")
    assert node.status is Status.COMMITTED and read_lock(node.location) is None
    assert not is_distributed_canvas(node)
    for head, want in single_process_merge(tree).items():
        np.testing.assert_allclose(np.asarray(node.open_image(head)[0]), want, rtol=1e-5)

    with pytest.raises(FinalizedError, match="committed already"):
        finalize_canvas(node.url)
    assert read_lock(node.location) is None


def test_a_node_of_parts_is_combined(tmp_path):
    tree = CacheTree(tmp_path / "tree")
    node = tree.node("density", params={"k": 1}).open()
    set_combiner(node, "sum")
    node.abandon()
    values = [np.full((4, 4), i, np.float32) for i in range(4)]
    for i, value in enumerate(values):
        add_part(node.url, i % 2, value, name=f"w{i}")

    report = finish_node(node, progress=False)
    assert report.images is None and report.heads == []
    assert report.combined is not None and report.combined.parts_combined == 4
    assert str(report) == str(report.combined)
    assert "combined 4 parts into 2 keys" in str(report)
    results = tree.node("density").keyed("results")
    np.testing.assert_array_equal(results[0], values[0] + values[2])
    np.testing.assert_array_equal(results[1], values[1] + values[3])
