"""The Cache tree browser: lazy tree with states, filter, refresh, live mode, opening content."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from qtpy.QtCore import QTimer

from cachetree import CacheTree
from cachetree.napari import _browser
from cachetree.napari._browser import CacheTreeBrowser
from cachetree.napari._node_tree import KIND, NAME, ROLE, STATUS
from cachetree.napari._selection import selection_for

from .conftest import wait_idle

pytestmark = pytest.mark.gui


def child_names(row):
    return [row.child(i).text(NAME) for i in range(row.childCount())]


def expand(qtbot, browser, path):
    browser.row(path).setExpanded(True)
    wait_idle(qtbot, browser)


def test_tree_shows_states_and_loads_children_only_when_expanded(qtbot, browser, tree_root):
    root = browser.row("")
    assert child_names(root) == ["broken", "merge", "merged", "segment", "unfinished", "workers"]
    states = {
        p: browser.row(p).text(STATUS) for p in ("broken", "segment", "unfinished", "workers")
    }
    assert states == {
        "broken": "corrupt",
        "segment": "committed",
        "unfinished": "uncommitted",
        "workers": "has parts",
    }
    assert browser.row("segment").text(KIND) == "image, json, log, plot"
    assert browser.row("segment/cells") is None  # not listed before "segment" is expanded

    # recompute "segment" with other parameters: its committed child becomes stale
    with CacheTree(tree_root).node("segment", params={"level": 2}) as node:
        node.save_json("metrics", {"area": 1})
    expand(qtbot, browser, "segment")
    assert child_names(browser.row("segment")) == ["metrics.json", "cells"]
    assert browser.row("segment/cells").text(STATUS) == "stale"

    expand(qtbot, browser, "workers")
    parts = browser.row("workers").child(0)
    assert parts.text(NAME) == "parts"
    assert child_names(parts) == ["w0", "w1"]  # internal parts (_combiner) are not listed


def test_listing_runs_off_the_gui_thread(make_napari_viewer, qtbot, tree_root, monkeypatch):
    real = _browser.list_node

    def slow_list_node(root, path):
        time.sleep(0.6)
        return real(root, path)

    monkeypatch.setattr(_browser, "list_node", slow_list_node)
    viewer = make_napari_viewer()
    widget = CacheTreeBrowser(viewer)
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)
    start = time.perf_counter()
    widget.set_root(str(tree_root))
    assert time.perf_counter() - start < 0.3  # returned at once, the listing goes on
    qtbot.waitUntil(lambda: widget.row("segment") is not None, timeout=10_000)
    timer.stop()
    assert len(ticks) >= 10, "the event loop stalled while the tree was listed"
    wait_idle(qtbot, widget)


def test_filter_keeps_matches_and_their_ancestors(qtbot, browser):
    expand(qtbot, browser, "segment")
    browser.filter_edit.setText("corrupt")
    children = ("broken", "merge", "segment", "unfinished", "workers")
    visible = [p for p in children if not browser.row(p).isHidden()]
    assert visible == ["broken"]
    browser.filter_edit.setText("cells")
    assert not browser.row("segment").isHidden()  # ancestor of a match
    assert not browser.row("segment/cells").isHidden()
    assert browser.row("workers").isHidden()
    browser.filter_edit.clear()
    assert not browser.row("workers").isHidden()


def test_refresh_updates_rows_in_place(qtbot, browser, tree_root):
    expand(qtbot, browser, "segment")
    segment_row = browser.row("segment")
    with CacheTree(tree_root).node("segment/extra") as node:
        node.save_json("x", {"a": 1})
    CacheTree(tree_root).node("unfinished").commit()
    browser.refresh()
    wait_idle(qtbot, browser)
    assert browser.row("segment") is segment_row and segment_row.isExpanded()
    assert browser.row("segment/extra").text(STATUS) == "committed"
    assert browser.row("unfinished").text(STATUS) == "committed"


_WRITER = textwrap.dedent(
    """
    import pathlib, sys, time
    from cachetree import CacheTree

    root, go = sys.argv[1], pathlib.Path(sys.argv[2])
    with CacheTree(root).node("live", params={"run": 1}) as node:
        node.save_json("progress", {"step": 1})
        deadline = time.time() + 60
        while not go.exists() and time.time() < deadline:
            time.sleep(0.05)
    """
)


def test_live_mode_picks_up_a_node_a_pipeline_is_writing(qtbot, browser, tree_root, tmp_path):
    browser.set_live(True, interval=0.2)
    go = tmp_path / "go"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(tree_root), str(go)])
    try:
        qtbot.waitUntil(
            lambda: (
                browser.row("live") is not None
                and browser.row("live").text(STATUS) == "in progress"
            ),
            timeout=30_000,
        )
        go.touch()  # let the pipeline commit
        qtbot.waitUntil(lambda: browser.row("live").text(STATUS) == "committed", timeout=30_000)
    finally:
        go.touch()
        assert writer.wait(timeout=60) == 0


def open_item(qtbot, browser, path, item=None):
    row = browser.select(path, item)
    assert row is not None, (path, item)
    browser.tree.itemDoubleClicked.emit(row, 0)
    wait_idle(qtbot, browser)


def test_double_click_opens_content_once(qtbot, browser):
    viewer = browser.viewer
    open_item(qtbot, browser, "segment")
    names = [layer.name for layer in viewer.layers]
    assert names == ["segment:probability [tumour]", "segment:probability [stroma]"]
    assert viewer.layers[0].multiscale
    open_item(qtbot, browser, "segment")  # again: reused, not duplicated
    expand(qtbot, browser, "segment")
    open_item(qtbot, browser, "segment", "probability.ome.zarr")
    assert [layer.name for layer in viewer.layers] == names


def test_logs_and_json_show_in_the_text_pane(qtbot, browser):
    expand(qtbot, browser, "segment")
    open_item(qtbot, browser, "segment", "metrics.json")
    assert '"dice": 0.91' in browser.text_pane.toPlainText()
    open_item(qtbot, browser, "segment", "log.txt")
    assert "thresholded at 0.5" in browser.text_pane.toPlainText()
    assert len(browser.viewer.layers) == 0


def test_plots_open_in_the_plot_pane_never_as_layers(qtbot, browser):
    expand(qtbot, browser, "segment")
    open_item(qtbot, browser, "segment", "curve.png")
    assert len(browser.viewer.layers) == 0
    assert browser.lower_pane.currentWidget() is browser.plot_pane
    image = browser.plot_pane.image
    assert (image.width(), image.height()) == (32, 24)
    assert image.pixelColor(0, 0).getRgb()[:3] == (255, 0, 0)  # red left half
    assert image.pixelColor(31, 23).getRgb()[:3] == (0, 0, 255)  # blue right half
    assert browser.status_label.text() == "plot shown below"
    browser.select("segment", "log.txt")  # details of another row: text again
    assert browser.lower_pane.currentWidget() is browser.text_pane


def test_arrays_labels_and_parts_open_as_layers(qtbot, browser):
    viewer = browser.viewer
    expand(qtbot, browser, "segment")

    expand(qtbot, browser, "segment/cells")
    open_item(qtbot, browser, "segment/cells", "cells.ome.zarr")
    assert type(viewer.layers["segment/cells:cells"]).__name__ == "Labels"
    open_item(qtbot, browser, "segment/cells", "raw.zarr")
    assert viewer.layers["segment/cells:raw"].data.shape == (12, 16)

    expand(qtbot, browser, "workers")
    parts = browser.row("workers").child(0)
    parts.setExpanded(True)
    browser.tree.setCurrentItem(parts.child(1))  # w1
    browser.open_selected()
    wait_idle(qtbot, browser)
    tile = viewer.layers["workers:parts/w1/tile"]
    np.testing.assert_array_equal(np.asarray(tile.data), np.full((8, 8), 2, np.float32))


def test_a_canvas_spill_part_shows_where_it_sits_on_the_canvas(qtbot, browser):
    viewer = browser.viewer
    expand(qtbot, browser, "merge")
    parts = browser.row("merge").child(0)
    spills = [parts.child(i) for i in range(parts.childCount())]
    spill = next(row for row in spills if row.text(NAME).startswith("canvas-spill"))
    browser.tree.setCurrentItem(spill)
    browser.open_selected()
    wait_idle(qtbot, browser)
    name = f"merge:parts/{spill.text(NAME)}"
    weight = viewer.layers[f"{name}/weight"]
    tumour = viewer.layers[f"{name}/prob [0]"]
    meta_tiles = spill.data(NAME, ROLE).part.meta["tiles"]
    top, left = min(t[2] for t in meta_tiles), min(t[3] for t in meta_tiles)
    np.testing.assert_allclose(weight.translate, (top, left))
    covered = np.isfinite(tumour.data)
    assert covered.any()
    np.testing.assert_allclose(tumour.data[covered], 0.25, rtol=1e-6)


def test_clicking_a_row_selects_its_node_for_the_actions(qtbot, browser):
    selection = selection_for(browser.viewer)
    browser.select("workers")
    assert selection.path == "workers" and selection.info.has_parts
    expand(qtbot, browser, "segment")
    browser.select("segment", "log.txt")
    assert selection.path == "segment"
    assert "node:      segment" not in browser.text_pane.toPlainText()
    assert "item:   log.txt" in browser.text_pane.toPlainText()


def test_root_comes_from_layers_opened_from_a_tree(make_napari_viewer, qtbot, tree_root):
    viewer = make_napari_viewer()
    viewer.open(str(tree_root / "segment"), plugin="cachetree")
    widget = CacheTreeBrowser(viewer)
    assert widget.root_edit.text() == str(tree_root)
    qtbot.waitUntil(lambda: widget.row("segment") is not None)
    wait_idle(qtbot, widget)


def test_a_missing_root_is_reported_not_raised(make_napari_viewer, qtbot, tmp_path, notifications):
    viewer = make_napari_viewer()
    widget = CacheTreeBrowser(viewer, root=str(tmp_path / "nothing"))
    wait_idle(qtbot, widget)
    assert "is not a cache tree" in widget.status_label.text()
    assert any("is not a cache tree" in message for _, message in notifications())


def test_switching_to_another_root_replaces_the_rows(qtbot, browser, tmp_path):
    """A second root (Open / Enter in the root field) replaces the listed tree."""
    other = CacheTree(tmp_path / "other")
    with other.node("elsewhere") as node:
        node.save_json("value", {"a": 1})
    expand(qtbot, browser, "segment")
    assert browser.row("segment") is not None
    browser.set_root(str(tmp_path / "other"))
    qtbot.waitUntil(lambda: browser.row("elsewhere") is not None)
    wait_idle(qtbot, browser)
    assert browser.row("segment") is None
    assert child_names(browser.tree.topLevelItem(0)) == ["elsewhere"]
