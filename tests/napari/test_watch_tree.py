"""``cachetree demo --size N --view``: napari opens at the start, the nodes appear live and the
viewer follows them: each is opened once, a canvas while it is still merging."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from cachetree import CacheTree
from cachetree.canvas import Canvas

from .conftest import on_screen, screenshot

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

    viewer = watch_tree(root, work, interval=0.2, follow=False, run=False)
    browser = viewer.window.dock_widgets["Cache tree browser (cachetree)"]
    assert browser.root_edit.text() == root
    assert browser.live_box.isChecked()
    qtbot.waitUntil(lambda: browser.row("first") is not None, timeout=20000)
    assert browser.row("second") is None
    second.set()
    qtbot.waitUntil(lambda: said == ["first", "second"], timeout=20000)
    qtbot.waitUntil(lambda: browser.row("second") is not None, timeout=20000)
    browser.set_live(False)
    assert len(viewer.layers) == 0  # not following: nothing opens without a double-click


SHAPE = (2048, 1024)
TILE = 256
FIRST_ROWS = 1024
"""Canvas rows merged (value 0.25) and checkpointed before the test lets the rest (0.75) go."""


def merge_rows(canvas: Canvas, top: int, bottom: int, value: float) -> None:
    boxes = np.array(
        [
            [x, y, x + TILE, y + TILE]
            for y in range(top, bottom, TILE)
            for x in range(0, SHAPE[1], TILE)
        ]
    )
    canvas.add({"prob": np.full((len(boxes), TILE, TILE, 1), value, np.float32)}, boxes)


SLIDE = np.tile((np.arange(SHAPE[1]) // 8).astype(np.uint8), (SHAPE[0], 1))
"""A grey ramp from left to right."""


def level0(layer):
    return layer.data[0] if layer.multiscale else layer.data


def named(viewer, prefix):
    return [layer for layer in viewer.layers if layer.name.startswith(prefix)]


def test_watch_tree_opens_each_node_once_and_the_canvas_while_it_merges(
    make_napari_viewer, qtbot, tmp_path, monkeypatch, notifications
):
    import napari
    from cachetree.napari import watch_tree

    shown = {"show": True}  # drawn, for the screenshot
    monkeypatch.setattr(napari, "Viewer", lambda **kwargs: make_napari_viewer(**shown, **kwargs))
    root = str(tmp_path / "tree")
    rest = threading.Event()
    done = threading.Event()

    def work(say):
        tree = CacheTree(root)
        with tree.node("slide") as node:
            node.save_image("slide", SLIDE)
        with tree.node("notes") as node:  # nothing to show as layers: not opened
            node.save_json("notes", {"ok": True})
        with tree.node("model") as node:
            canvas = Canvas(node, SHAPE, {"prob": 1}, tile=TILE, order="row-major")
            merge_rows(canvas, 0, FIRST_ROWS, 0.25)
            canvas.checkpoint()  # what was merged so far is on disk for other readers
            rest.wait(120)
            merge_rows(canvas, FIRST_ROWS, SHAPE[0], 0.75)
            canvas.finalize()
        done.set()

    viewer = watch_tree(root, work, interval=0.2, run=False)
    browser = viewer.window.dock_widgets["Cache tree browser (cachetree)"]
    ticks = []
    browser._timer.timeout.connect(lambda: ticks.append(len(ticks)))

    # the slide opens without a double-click, then the canvas while it is still merging
    qtbot.waitUntil(lambda: len(named(viewer, "slide:slide")) == 1, timeout=60_000)
    qtbot.waitUntil(lambda: len(named(viewer, "model:prob")) == 1, timeout=60_000)
    (layer,) = named(viewer, "model:prob")
    assert "% merged" in layer.name and not done.is_set()
    assert layer.metadata["canvas_head"] == "prob"
    # the layer may open before the first rows' checkpoint lands; it shows them once it does
    qtbot.waitUntil(lambda: np.asarray(level0(layer)[100, 500]) == 0.25, timeout=60_000)
    assert np.asarray(level0(layer)[1800, 500]) == 0  # not merged yet: the fill value
    assert [lyr.name for lyr in viewer.layers] == ["slide:slide", layer.name]

    rest.set()
    qtbot.waitUntil(done.is_set, timeout=60_000)
    # the same layer shows the rows merged since, then becomes the finished pyramid
    qtbot.waitUntil(lambda: np.asarray(level0(layer)[1800, 500]) == 0.75, timeout=60_000)
    qtbot.waitUntil(lambda: layer.name == "model:prob", timeout=60_000)
    assert layer.metadata["cachetree"]["item"] == "prob.ome.zarr"
    np.testing.assert_allclose(np.asarray(level0(layer)[[100, 1800], 500]), [0.25, 0.75])

    # later listings open nothing again
    qtbot.waitUntil(lambda: browser.row("model").text(1) == "committed", timeout=60_000)
    seen = len(ticks)
    qtbot.waitUntil(lambda: len(ticks) >= seen + 5 and not browser.busy, timeout=60_000)
    assert [lyr.name for lyr in viewer.layers] == ["slide:slide", "model:prob"]
    assert viewer.layers[1] is layer
    messages = [message for _, message in notifications()]
    assert not [m for m in messages if "cannot" in m or "nothing to show" in m], messages

    # a napari user sees the merged canvas over the slide: brighter where more was predicted
    shot = screenshot(viewer)
    top, bottom = on_screen(viewer, shot, 100, 500), on_screen(viewer, shot, 1800, 500)
    assert bottom.sum() > top.sum() > 0
    browser.set_live(False)


def test_watch_tree_does_not_open_again_a_node_the_user_closed(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    import napari
    from cachetree.napari import watch_tree

    monkeypatch.setattr(napari, "Viewer", lambda **kwargs: make_napari_viewer(**kwargs))
    root = str(tmp_path / "tree")
    later = threading.Event()

    def work(say):
        tree = CacheTree(root)
        with tree.node("slide") as node:
            node.save_image("slide", SLIDE)
        later.wait(120)
        with tree.node("later") as node:
            node.save_labels("cells", (SLIDE > 64).astype(np.uint8))

    viewer = watch_tree(root, work, interval=0.2, run=False)
    browser = viewer.window.dock_widgets["Cache tree browser (cachetree)"]
    ticks = []
    browser._timer.timeout.connect(lambda: ticks.append(len(ticks)))
    qtbot.waitUntil(lambda: len(named(viewer, "slide:slide")) == 1, timeout=60_000)
    viewer.layers.remove(named(viewer, "slide:slide")[0])  # the user closes it
    seen = len(ticks)
    qtbot.waitUntil(lambda: len(ticks) >= seen + 5 and not browser.busy, timeout=60_000)
    assert len(viewer.layers) == 0
    later.set()  # still following: the next node opens, the closed one stays closed
    qtbot.waitUntil(lambda: len(named(viewer, "later:cells")) == 1, timeout=60_000)
    seen = len(ticks)
    qtbot.waitUntil(lambda: len(ticks) >= seen + 5 and not browser.busy, timeout=60_000)
    assert [lyr.name for lyr in viewer.layers] == ["later:cells"]
    browser.set_live(False)
