"""Canvases still merging in the browser: opened without freezing the GUI, updated live."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from qtpy.QtCore import QTimer

from cachetree import CacheTree
from cachetree.canvas import Canvas
from cachetree.napari._browser import CacheTreeBrowser
from tests.paths import WORKERS

from .conftest import wait_idle

pytestmark = pytest.mark.gui

STALL = 0.25
"""A gap of the event loop this long (seconds) counts as a stall."""
NAPARI_SHOWS = 2
"""Stalls napari itself causes showing one layer: building its controls, then its first draw
(about 0.55 s each on a 2-core VM under a load of 8; the canvas' chunks take tens of
milliseconds of that). Before layers were made in a worker thread, opening this canvas
stalled the loop once, for 3.8 s."""
WORST = 2.0
"""Longest stall accepted, in seconds (napari's own, on a loaded machine)."""


class StallMeter:
    """Counts gaps in a 10 ms timer: how long the event loop went without turning."""

    def __init__(self):
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.last = time.perf_counter()
        self.gaps: list[float] = []

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self.last)
        self.last = now

    def __enter__(self) -> StallMeter:
        self.last = time.perf_counter()
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.stop()

    def stalls(self) -> list[float]:
        return [gap for gap in self.gaps if gap >= STALL]


def huge_unfinished_canvas(root) -> None:
    """A 32 768² canvas merged in a few places and stopped (spilled, order "any")."""
    tree = CacheTree(root)
    node = tree.node("huge", params={"edge": 32768}).open()
    canvas = Canvas(node, (32768, 32768), {"prob": 1}, order="any", memory_budget="16MiB")
    rng = np.random.default_rng(0)
    for y, x in ((1000, 1000), (16000, 20000), (30000, 5000)):
        boxes = np.array(
            [[x + dx, y + dy, x + dx + 256, y + dy + 256] for dy in (0, 192) for dx in (0, 192)]
        )
        canvas.add({"prob": rng.random((len(boxes), 256, 256, 1), np.float32)}, boxes)
    canvas.checkpoint()
    canvas.close()
    node.abandon()


def test_opening_a_huge_unfinished_canvas_never_stalls_the_gui(make_napari_viewer, qtbot, tmp_path):
    root = tmp_path / "tree"
    huge_unfinished_canvas(root)
    viewer = make_napari_viewer()
    browser = CacheTreeBrowser(viewer, root=str(root))
    qtbot.waitUntil(lambda: browser.row("huge") is not None, timeout=30_000)
    wait_idle(qtbot, browser)
    with StallMeter() as meter:
        browser.tree.itemDoubleClicked.emit(browser.select("huge"), 0)
        qtbot.waitUntil(lambda: len(viewer.layers) == 1 and not browser.busy, timeout=60_000)
        qtbot.wait(300)  # the first frames are drawn
    (layer,) = viewer.layers
    assert layer.name == "huge:prob (0 % merged)"  # three patches of a 32 768² canvas
    assert layer.multiscale and layer.data[0].shape == (32768, 32768)
    assert len(meter.gaps) > 20
    stalls = meter.stalls()
    assert len(stalls) <= NAPARI_SHOWS and max(meter.gaps) < WORST, stalls


def test_open_layers_follow_a_canvas_merging_in_another_process(
    make_napari_viewer, qtbot, tmp_path
):
    root, flags = tmp_path / "tree", tmp_path / "flags"
    flags.mkdir()
    writer = subprocess.Popen(
        [sys.executable, str(WORKERS / "merge_live.py"), str(root), str(flags)]
    )
    try:
        qtbot.waitUntil(lambda: (flags / "done-1").exists(), timeout=60_000)
        viewer = make_napari_viewer()
        browser = CacheTreeBrowser(viewer, root=str(root))
        qtbot.waitUntil(lambda: browser.row("live") is not None, timeout=30_000)
        wait_idle(qtbot, browser)
        browser.tree.itemDoubleClicked.emit(browser.select("live"), 0)
        qtbot.waitUntil(lambda: len(viewer.layers) == 1 and not browser.busy, timeout=30_000)
        (layer,) = viewer.layers
        assert layer.name == "live:prob (33 % merged)"
        level0 = layer.data[0]
        assert np.asarray(level0[100, 100]) == 0.25 and np.asarray(level0[200, 100]) == 0
        # the user's display settings
        layer.contrast_limits = (0.1, 0.9)
        layer.colormap = "viridis"
        layer.opacity = 0.5

        ticks = []
        browser._timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
        browser.set_live(True, interval=0.5)
        (flags / "go-1").touch()
        qtbot.waitUntil(lambda: (flags / "done-2").exists(), timeout=60_000)
        seen = len(ticks)
        qtbot.waitUntil(lambda: np.asarray(layer.data[0][200, 100]) == 0.75, timeout=30_000)
        assert len(ticks) - seen <= 2, "new rows took more than two refresh intervals"
        qtbot.waitUntil(lambda: layer.name == "live:prob (66 % merged)", timeout=30_000)
        assert len(viewer.layers) == 1
        assert tuple(layer.contrast_limits) == (0.1, 0.9)
        assert layer.colormap.name == "viridis" and layer.opacity == 0.5

        (flags / "go-2").touch()
        qtbot.waitUntil(lambda: (flags / "done-3").exists(), timeout=60_000)
        qtbot.waitUntil(lambda: layer.name == "live:prob", timeout=30_000)
        assert len(viewer.layers) == 1 and layer in viewer.layers
        assert layer.metadata["cachetree"]["item"] == "prob.ome.zarr"
        np.testing.assert_allclose(np.asarray(layer.data[0][300, 100]), 0.5)
        assert tuple(layer.contrast_limits) == (0.1, 0.9)
        browser.set_live(False)
        wait_idle(qtbot, browser)
        browser.tree.itemDoubleClicked.emit(browser.select("live"), 0)  # again: no duplicate
        wait_idle(qtbot, browser)
        assert [lyr.name for lyr in viewer.layers] == ["live:prob"]
    finally:
        for step in (1, 2):
            (flags / f"go-{step}").touch()
        assert writer.wait(timeout=120) == 0
