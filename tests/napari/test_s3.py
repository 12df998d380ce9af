"""The browser and the Combine widget on a tree whose parts live on S3 (moto on loopback)."""

from __future__ import annotations

import numpy as np
import pytest

from cachetree import CacheTree, Status
from cachetree.napari._actions import CombineWidget
from cachetree.napari._browser import CacheTreeBrowser
from cachetree.napari._node_tree import ROLE
from cachetree.results import add_part, set_combiner

from .conftest import wait_idle

pytestmark = pytest.mark.gui


def test_browser_shows_and_combines_parts_on_s3(make_napari_viewer, qtbot, s3_root):
    root = f"{s3_root}/run"
    tree = CacheTree(root)
    node = tree.node("counts", params={"region": 64}).open()
    set_combiner(node, "sum")
    node.abandon()
    for worker in range(3):
        add_part(node.url, key="density", arrays={"data": np.full((4, 4), worker, np.float32)})

    viewer = make_napari_viewer()
    browser = CacheTreeBrowser(viewer, root=root)
    viewer.window.add_dock_widget(browser)
    qtbot.waitUntil(lambda: browser.row("counts") is not None, timeout=20_000)
    wait_idle(qtbot, browser)
    assert browser.row("counts").data(0, ROLE).info.state == "has parts"

    browser.select("counts")
    combine = CombineWidget(viewer)
    viewer.window.add_dock_widget(combine)
    assert combine.run_button.isEnabled()
    combine.run_button.click()
    wait_idle(qtbot, combine, timeout=30_000)

    assert tree.node("counts").status is Status.COMMITTED
    np.testing.assert_array_equal(tree.node("counts").keyed()["density"], np.full((4, 4), 3.0))
    browser.refresh()
    qtbot.waitUntil(
        lambda: (
            browser.row("counts") is not None
            and browser.row("counts").data(0, ROLE).info.state == "committed"
        ),
        timeout=20_000,
    )
