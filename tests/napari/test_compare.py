"""Compare two nodes: parameters side by side, lazy differences of their images."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from qtpy.QtCore import Qt

from cachetree import CacheTree
from cachetree.napari._browser import TREE_ROWS, CacheTreeBrowser

from .conftest import wait_idle

pytestmark = pytest.mark.gui


@pytest.fixture
def two_runs(tree_root):
    """``segment`` again, as ``segment-b``: threshold changed, its probabilities halved."""
    image = np.zeros((2, 300, 400), np.float32)
    image[0, 100:200, 100:300] = 0.5
    image[1] = np.linspace(0, 5, 400, dtype=np.float32) / 2
    with CacheTree(tree_root).node("segment-b", params={"level": 2}) as node:
        node.save_image(
            "probability",
            image,
            axes="cyx",
            scale=(0.5, 0.25),
            translation=(10.0, 20.0),
            channel_names=["tumour", "stroma"],
            min_size=128,
        )
        node.save_image("other", np.zeros((10, 10), np.uint8))
    return tree_root


def ctrl_click(qtbot, browser, path):
    row = browser.row(path)
    rect = browser.tree.visualItemRect(row)
    qtbot.mouseClick(
        browser.tree.viewport(),
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.ControlModifier,
        rect.center(),
    )


def test_two_selected_nodes_compare_side_by_side_with_lazy_differences(
    make_napari_viewer, qtbot, two_runs
):
    viewer = make_napari_viewer(show=True)
    browser = CacheTreeBrowser(viewer, root=str(two_runs))
    viewer.window.add_dock_widget(browser)
    qtbot.waitUntil(lambda: browser.row("segment-b") is not None)
    wait_idle(qtbot, browser)
    browser.select("segment")
    assert not browser.compare_button.isEnabled()
    ctrl_click(qtbot, browser, "segment-b")
    assert browser.selected_nodes() == ["segment", "segment-b"]
    assert browser.compare_button.isEnabled()
    browser.compare_button.click()
    wait_idle(qtbot, browser)

    text = browser.text_pane.toPlainText()
    lines = text.splitlines()
    # the pane grows to show the comparison, as long as the tree keeps its rows
    pane, tree = browser.text_pane, browser.tree
    shown_lines = pane.viewport().height() / pane.fontMetrics().lineSpacing()
    tree_rows = tree.viewport().height() / tree.sizeHintForRow(0)
    assert tree_rows >= TREE_ROWS
    assert shown_lines >= len(lines) or tree_rows < TREE_ROWS + 1
    assert lines[0] == "compare  segment  with  segment-b"
    assert lines[2].split() == ["parameter", "segment", "segment-b"]
    assert lines[4].split() == ["level", "1", "2"]  # side by side, only what differs
    assert "  other.ome.zarr: only in segment-b" in text
    tumour = viewer.layers["segment - segment-b:probability [tumour]"]
    stroma = viewer.layers["segment - segment-b:probability [stroma]"]
    assert tumour.multiscale and isinstance(tumour.data[0], da.Array)  # lazy: dask
    np.testing.assert_allclose(tumour.scale, (0.5, 0.25))
    np.testing.assert_allclose(np.asarray(tumour.data[0][150, 200]), 0.5)  # 1.0 - 0.5
    np.testing.assert_allclose(np.asarray(tumour.data[0][10, 10]), 0.0)
    np.testing.assert_allclose(
        np.asarray(stroma.data[0][0]), np.linspace(0, 5, 400) / 2, rtol=1e-5, atol=1e-6
    )
    # zero in the middle of the diverging colormap, transparent there; the window is the
    # largest difference of the coarsest level (read up front; the rest as napari draws it)
    lo, hi = stroma.contrast_limits
    assert lo == -hi and hi == pytest.approx(2.5, rel=0.05)
    np.testing.assert_allclose(tumour.contrast_limits, (-0.5, 0.5))
    assert tumour.colormap.name == "cachetree difference" and tumour.blending == "translucent"
    assert tumour.colormap.map(np.array([0.5]))[0][3] == 0  # a == b: transparent
