"""A cluster merge in progress in the browser: where every band task stands."""

from __future__ import annotations

import pytest

from cachetree import CacheTree
from cachetree.canvas import CanvasSpec
from cachetree.canvas.cluster import band_tasks, run_task
from cachetree.canvas.cluster.plan import write_plan
from cachetree.napari._browser import CacheTreeBrowser
from cachetree.napari._node_tree import KIND, NAME
from tests.workers import models

from .conftest import wait_idle

pytestmark = pytest.mark.gui


def test_the_browser_shows_the_progress_of_each_band(make_napari_viewer, qtbot, tmp_path):
    """Two of three band tasks are done (run as a worker would): the parts row says so and
    its details list every band."""
    root = tmp_path / "tree"
    spec = CanvasSpec((300, 420), models.HEADS, tile=64, min_size=64)
    tasks = band_tasks(spec.shape, 48, 36, band=128, tile=64)
    node = CacheTree(root).node("merge", params={"v": 1}).open()
    write_plan(node.location, spec, spec.to_json(), tasks)
    for task in tasks[:2]:
        run_task(task, node.url, spec, models.model)
    node.abandon()

    viewer = make_napari_viewer()
    browser = CacheTreeBrowser(viewer, root=str(root))
    qtbot.waitUntil(lambda: browser.row("merge") is not None, timeout=30_000)
    browser.row("merge").setExpanded(True)
    wait_idle(qtbot, browser)
    row = browser.row("merge")
    parts = next(
        row.child(i) for i in range(row.childCount()) if row.child(i).text(NAME) == "parts"
    )
    assert parts.text(KIND) == "cluster merge: 2 of 3 tasks done"
    browser.tree.setCurrentItem(parts)
    text = browser.text_pane.toPlainText()
    lines = text.splitlines()
    assert lines[0] == "cluster merge: 2 of 3 tasks done"
    assert lines[1].startswith("  band-000  done in ") and lines[2].startswith(
        "  band-128  done in "
    )
    assert lines[3] == "  band-256  not done"
