"""The browser stays usable: room for the tree, columns that fit, keyboard, no internals."""

from __future__ import annotations

import pytest
from qtpy.QtCore import Qt

from cachetree import CacheTree
from cachetree.napari._browser import CacheTreeBrowser
from cachetree.napari._node_tree import NAME
from cachetree.napari._params import stale_explanation
from cachetree.tree.layout import PARTS

from .conftest import wait_idle

pytestmark = pytest.mark.gui

DOCKS = ("Cache tree browser", "Commit", "Combine", "Clean")


def test_with_every_dock_open_the_tree_keeps_ten_rows_and_its_columns_fit(
    make_napari_viewer, qtbot, tree_root
):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1280, 800)
    docked = {name: viewer.window.add_plugin_dock_widget("cachetree", name) for name in DOCKS}
    browser: CacheTreeBrowser = docked["Cache tree browser"][1]
    browser.set_root(str(tree_root))
    qtbot.waitUntil(lambda: browser.row("segment") is not None)
    browser.row("segment").setExpanded(True)
    wait_idle(qtbot, browser)
    qtbot.wait(200)  # let the docks settle

    commit_dock = docked["Commit"][0]
    tabbed = set(window.tabifiedDockWidgets(commit_dock))
    assert {docked["Combine"][0], docked["Clean"][0]} <= tabbed  # the actions share one dock
    tree = browser.tree
    rows = tree.viewport().height() / tree.sizeHintForRow(0)
    assert rows >= 10, f"only {rows:.1f} rows of the tree are visible"
    header = tree.header()
    right_edge = max(header.sectionPosition(c) + header.sectionSize(c) for c in range(5))
    assert right_edge <= tree.viewport().width(), (right_edge, tree.viewport().width())
    assert not tree.horizontalScrollBar().isVisible()


@pytest.mark.parametrize("key", [Qt.Key.Key_Return, Qt.Key.Key_Enter, Qt.Key.Key_Space])
def test_enter_and_space_open_the_current_row(qtbot, browser, key):
    browser.select("segment")
    qtbot.keyClick(browser.tree, key)
    wait_idle(qtbot, browser)
    assert [layer.name for layer in browser.viewer.layers] == [
        "segment:probability [tumour]",
        "segment:probability [stroma]",
    ]
    browser.row("segment").setExpanded(True)
    wait_idle(qtbot, browser)
    browser.select("segment", "log.txt")
    qtbot.keyClick(browser.tree, key)
    wait_idle(qtbot, browser)
    assert "thresholded at 0.5" in browser.text_pane.toPlainText()


def test_internal_parts_are_not_listed(qtbot, browser, tree_root):
    assert (tree_root / "workers" / PARTS / "_combiner").is_dir()  # the combiner setting
    browser.row("workers").setExpanded(True)
    wait_idle(qtbot, browser)
    parts = browser.row("workers").child(0)
    names = [parts.child(i).text(NAME) for i in range(parts.childCount())]
    assert names == ["w0", "w1"]
    assert parts.text(2) == "2 parts"


def test_the_details_of_a_stale_node_say_which_parameter_change_made_it_stale(
    qtbot, browser, tree_root
):
    with CacheTree(tree_root).node("segment", params={"level": 2}) as node:
        node.save_json("metrics", {"area": 1})
    browser.refresh()
    wait_idle(qtbot, browser)
    browser.row("segment").setExpanded(True)
    wait_idle(qtbot, browser)
    browser.select("segment/cells")
    details = browser.text_pane.toPlainText()
    assert "why:       parent 'segment' recomputed with other parameters:" in details
    assert "level: 1 -> 2" in details


def test_a_node_made_before_parent_params_were_recorded_says_so():
    from cachetree.tree.manifest import Manifest, Status
    from cachetree.tree.walk import NodeInfo

    child = NodeInfo(
        "a/b", "u", Status.COMMITTED, 2, stale=True, manifest=Manifest(parent_fingerprint="f" * 16)
    )
    parent = NodeInfo("a", "u", Status.COMMITTED, 1, manifest=Manifest(fingerprint="e" * 16))
    lines = stale_explanation(child, parent)
    assert "parameters then were not recorded" in lines[0]
    assert "ffffffffffff" in lines[0] and "eeeeeeeeeeee" in lines[0]
    assert stale_explanation(parent, None) == []  # not stale: nothing to explain


def test_a_row_that_cannot_be_opened_says_so_in_the_status_line(
    qtbot, browser, tree_root, notifications
):
    browser.row("segment").setExpanded(True)
    wait_idle(qtbot, browser)
    (tree_root / "segment" / "probability.ome.zarr" / "zarr.json").unlink()  # damaged meanwhile
    browser.select("segment", "probability.ome.zarr")
    qtbot.keyClick(browser.tree, Qt.Key.Key_Return)
    wait_idle(qtbot, browser)
    status = browser.status_label.text()
    assert status.startswith("cannot open probability.ome.zarr: "), status
    assert any(message == status for _, message in notifications())
    assert len(browser.viewer.layers) == 0
