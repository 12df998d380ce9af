"""Commit, Combine and Clean widgets: worker threads, progress, notifications, confirmation."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from napari.utils import progress
from qtpy.QtCore import QTimer

from cachetree import CacheTree
from cachetree.napari._actions import CleanWidget, CombineWidget, CommitWidget
from cachetree.napari._browser import CacheTreeBrowser
from cachetree.napari._node_tree import ROLE, STATUS
from cachetree.napari._selection import selection_for
from cachetree.results import add_part, set_combiner
from cachetree.tree.keyed import KeyedStore
from cachetree.tree.manifest import Status

from .conftest import wait_idle

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def browser(viewer, qtbot, tree_root):
    widget = CacheTreeBrowser(viewer, root=str(tree_root))
    viewer.window.add_dock_widget(widget)
    qtbot.waitUntil(lambda: widget.row("segment") is not None)
    wait_idle(qtbot, widget)
    return widget


def dock(viewer, cls):
    widget = cls(viewer)
    viewer.window.add_dock_widget(widget)
    return widget


def test_commit_marks_the_selected_node_committed(viewer, qtbot, browser, tree_root, notifications):
    commit = dock(viewer, CommitWidget)
    assert selection_for(viewer).path == ""  # the root, which is never committed itself
    assert not commit.run_button.isEnabled()
    browser.select("unfinished")
    assert commit.run_button.isEnabled()
    assert "unfinished" in commit.node_label.text()
    commit.run_button.click()
    wait_idle(qtbot, commit)
    assert CacheTree(tree_root).node("unfinished").status is Status.COMMITTED
    qtbot.waitUntil(lambda: browser.row("unfinished").text(STATUS) == "committed")
    assert ("info", "Commit of unfinished done") in notifications()
    assert not commit.run_button.isEnabled()  # a committed node needs no commit


def test_a_failed_commit_is_a_notification_and_changes_nothing(
    viewer, qtbot, browser, tree_root, notifications
):
    tree = CacheTree(tree_root)
    tree.node("unfinished/child").open().abandon()  # an uncommitted child blocks the commit
    commit = dock(viewer, CommitWidget)
    browser.select("unfinished")
    commit.run()
    wait_idle(qtbot, commit)
    errors = [message for severity, message in notifications() if severity == "error"]
    assert len(errors) == 1
    assert "Commit of unfinished failed" in errors[0] and "not committed" in errors[0]
    assert errors[0] in commit.result_label.text()
    assert tree.node("unfinished").status is Status.OPEN


def test_combine_runs_in_a_worker_with_progress_and_the_gui_responsive(
    viewer, qtbot, browser, tree_root, notifications
):
    tree = CacheTree(tree_root)
    node = tree.node("tiles", params={"n": 4}).open()
    set_combiner(node, "tests.napari.combiners:slow_sum", delay=0.1)
    node.abandon()
    for key in range(4):
        for _worker in range(2):
            add_part(node.url, key=key, arrays={"tile": np.full((16, 16), key, np.float32)})
    browser.refresh()
    qtbot.waitUntil(lambda: browser.row("tiles") is not None)
    browser.select("tiles")
    combine = dock(viewer, CombineWidget)
    assert combine.run_button.isEnabled()

    ticks, bars = [], set()
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.timeout.connect(lambda: bars.update(p.desc for p in progress._all_instances))
    timer.start(20)
    start = time.perf_counter()
    combine.run_button.click()
    assert time.perf_counter() - start < 0.3  # the click returns while the combine runs
    wait_idle(qtbot, combine)
    duration = time.perf_counter() - start
    timer.stop()

    assert duration > 0.7  # 8 parts x 0.1 s
    assert len(ticks) >= 0.5 * duration / 0.02, "the event loop stalled during the combine"
    assert any(desc.startswith("Combine tiles") for desc in bars)
    assert not list(progress._all_instances)  # the bar is closed afterwards
    store = KeyedStore(tree_root / "tiles")
    assert sorted(store) == [0, 1, 2, 3]
    np.testing.assert_array_equal(store[3], np.full((16, 16), 6.0))
    assert tree.node("tiles").status is Status.COMMITTED
    assert any("combined 8 parts into 4 keys" in m for _, m in notifications())
    # (the combiner setting stays with the node until clean, so it still "has parts")
    qtbot.waitUntil(lambda: browser.row("tiles").data(0, ROLE).info.status is Status.COMMITTED)

    # the combined results open as one lazy layer with a slider over the keys
    browser.row("tiles").setExpanded(True)
    wait_idle(qtbot, browser)
    browser.open_row(browser.select("tiles", "results.keyed"))
    wait_idle(qtbot, browser)
    results = viewer.layers["tiles:results.keyed"]
    assert results.data.shape == (4, 16, 16)
    assert "0: (16, 16) float64" in browser.text_pane.toPlainText()


def test_a_failed_combine_leaves_the_parts_alone(viewer, qtbot, browser, tree_root, notifications):
    tree = CacheTree(tree_root)
    node = tree.node("nocombiner").open()
    node.abandon()
    add_part(node.url, key=0, arrays={"tile": np.ones((4, 4))}, name="p0")
    browser.refresh()
    qtbot.waitUntil(lambda: browser.row("nocombiner") is not None)
    browser.select("nocombiner")
    combine = dock(viewer, CombineWidget)
    combine.run()
    wait_idle(qtbot, combine)
    errors = [m for severity, m in notifications() if severity == "error"]
    assert len(errors) == 1 and "Combine of nocombiner failed" in errors[0]
    assert "combiner" in errors[0]
    assert (tree_root / "nocombiner" / ".cachetree-parts" / "p0" / "part.json").exists()
    assert tree.node("nocombiner").status is Status.OPEN


def test_clean_lists_a_dry_run_and_deletes_only_after_confirmation(
    viewer, qtbot, browser, tree_root, notifications
):
    clean = dock(viewer, CleanWidget)
    browser.select("")  # the whole tree
    clean.run_button.click()
    wait_idle(qtbot, clean)
    listed = {
        clean.entries.topLevelItem(i).text(1) for i in range(clean.entries.topLevelItemCount())
    }
    assert {"broken", "unfinished"} <= listed
    assert "entries" in clean.total_label.text() and "would be freed" in clean.total_label.text()
    assert (tree_root / "broken").exists()  # dry run: nothing deleted
    assert clean.confirm_button.isEnabled()
    assert clean.confirm_button.text().startswith(f"Delete these {len(clean.plan)} entries")

    clean.confirm_button.click()
    wait_idle(qtbot, clean)
    assert not (tree_root / "broken").exists()
    assert not (tree_root / "unfinished").exists()
    assert (tree_root / "segment" / "probability.ome.zarr").exists()  # committed: kept
    assert any(m.startswith("Clean of /: deleted") for _, m in notifications())
    assert clean.entries.topLevelItemCount() == 0 and not clean.confirm_button.isEnabled()
    qtbot.waitUntil(lambda: browser.row("broken") is None)


def test_clean_keeps_what_became_needed_after_the_dry_run(viewer, qtbot, browser, tree_root):
    clean = dock(viewer, CleanWidget)
    browser.select("")
    clean.run()
    wait_idle(qtbot, clean)
    # between the dry run and the confirmation, a run resumes the unfinished node and holds it
    resumed = CacheTree(tree_root).node("unfinished").open()
    try:
        clean.confirm()
        wait_idle(qtbot, clean)
        assert (tree_root / "unfinished").exists()
        assert "were kept" in clean.result_label.text()
    finally:
        resumed.abandon()


def test_clean_can_delete_the_selected_node_when_asked(viewer, qtbot, browser, tree_root):
    clean = dock(viewer, CleanWidget)
    browser.select("segment")
    clean.run()
    wait_idle(qtbot, clean)
    assert clean.entries.topLevelItemCount() == 0  # a committed, current node: nothing to clean
    clean.remove_box.setChecked(True)
    clean.run()
    wait_idle(qtbot, clean)
    assert clean.entries.topLevelItem(0).text(2) == "asked by name"
    clean.confirm()
    wait_idle(qtbot, clean)
    assert not (tree_root / "segment").exists()


def test_changing_the_selection_drops_a_pending_plan(viewer, qtbot, browser):
    clean = dock(viewer, CleanWidget)
    browser.select("")
    clean.run()
    wait_idle(qtbot, clean)
    assert clean.confirm_button.isEnabled()
    browser.select("segment")
    assert not clean.confirm_button.isEnabled() and clean.plan is None
    assert selection_for(viewer).path == "segment"


def crash_a_writer(root) -> None:
    """A process opens a node, writes one item and dies before committing (lock left)."""
    code = textwrap.dedent(
        f"""
        import os
        from cachetree import CacheTree
        node = CacheTree({str(root)!r}).node("crashed", params={{"run": 1}}).open()
        node.save_json("summary", {{"nuclei": 55}})
        os._exit(1)
        """
    )
    subprocess.run([sys.executable, "-c", code], check=False, timeout=120)


def test_committing_a_node_whose_writer_died_asks_first_and_says_what_is_missing(
    viewer, qtbot, browser, tree_root
):
    from qtpy.QtWidgets import QMessageBox

    crash_a_writer(tree_root)
    browser.refresh()
    wait_idle(qtbot, browser)
    qtbot.waitUntil(lambda: browser.row("crashed") is not None)
    browser.select("crashed")
    commit = dock(viewer, CommitWidget)
    assert selection_for(viewer).info.writer is not None
    assert not selection_for(viewer).info.writer_alive

    for answer in (QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes):
        commit.run()
        qtbot.waitUntil(lambda: commit.confirm_box is not None and commit.confirm_box.isVisible())
        text = commit.confirm_box.text()
        assert "Commit 'crashed' although its writer died?" in text
        assert "died before committing it" in text
        assert "it holds only what was written: summary.json" in text
        assert CacheTree(tree_root).node("crashed").status is Status.OPEN  # nothing happened yet
        commit.confirm_box.button(answer).click()
        wait_idle(qtbot, commit)
    assert CacheTree(tree_root).node("crashed").status is Status.COMMITTED  # only after "Yes"
