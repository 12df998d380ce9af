"""``cachetree demo --size N --view``: napari opens at the start and the nodes appear live."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from cachetree import CacheTree

pytestmark = pytest.mark.gui


def test_watch_tree_shows_nodes_as_the_pipeline_commits_them(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    import napari
    from cachetree.napari import watch_tree

    monkeypatch.setattr(napari, "Viewer", lambda **kwargs: make_napari_viewer(**kwargs))
    root = str(tmp_path / "tree")
    second = threading.Event()
    said: list[str] = []

    def work(say):
        tree = CacheTree(root)
        with tree.node("first") as node:
            node.save_image("image", np.zeros((64, 64), np.uint8))
        say("first:   new")
        said.append("first")
        second.wait(60)
        with tree.node("second") as node:
            node.save_json("metrics", {"ok": True})
        said.append("second")

    viewer = watch_tree(root, work, interval=0.2, run=False)
    browser = viewer.window.dock_widgets["Cache tree browser (cachetree)"]
    assert browser.root_edit.text() == root
    assert browser.live_box.isChecked()
    qtbot.waitUntil(lambda: browser.row("first") is not None, timeout=20000)
    assert browser.row("second") is None
    second.set()
    qtbot.waitUntil(lambda: said == ["first", "second"], timeout=20000)
    qtbot.waitUntil(lambda: browser.row("second") is not None, timeout=20000)
    browser.set_live(False)
