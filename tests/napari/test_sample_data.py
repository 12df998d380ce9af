"""File > Open Sample > cachetree > demo: the demo tree built locally, shown as lazy layers."""

from __future__ import annotations

import time

import numpy as np
import pytest
from qtpy.QtCore import QTimer

from cachetree.demo import load_sample_image
from cachetree.fs.location import Location
from cachetree.napari._browser import CacheTreeBrowser
from cachetree.tree.manifest import Status
from cachetree.tree.walk import walk

from .conftest import wait_idle

pytestmark = pytest.mark.gui

STALL = 1.0
"""Seconds without the event loop running that count as a stall of the GUI (rendering a
layer with software OpenGL on a loaded machine takes a good part of one: adding layers is
napari's own work, the build must never get in the way)."""


class Heartbeat:
    """Counts the ticks of a 20 ms timer on the GUI thread while layers are added."""

    def __init__(self, viewer) -> None:
        self.ticks: list[float] = []
        self.at_insert: list[int] = []  # ticks seen when each layer was added
        self.timer = QTimer()
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))
        self.timer.start(20)
        self.layers = viewer.layers
        self.layers.events.inserted.connect(self._inserted)

    def _inserted(self, _event) -> None:
        self.at_insert.append(len(self.ticks))

    def build_phase(self) -> tuple[int, int, float]:
        """Ticks, stalls and the longest gap (s) before the first layer of the tree came."""
        self.timer.stop()
        self.layers.events.inserted.disconnect(self._inserted)
        ticks = self.ticks[: self.at_insert[0]] if self.at_insert else self.ticks
        gaps = np.diff(ticks) if len(ticks) > 1 else np.zeros(1)
        return len(ticks), int((gaps > STALL).sum()), float(gaps.max())


def sample_done(viewer) -> bool:
    """Whether the last step's layer was added (layers come in pipeline order)."""
    return "density:density" in viewer.layers


def test_open_sample_shows_the_slide_at_once_and_builds_the_tree_in_a_worker(
    make_napari_viewer, qtbot, tmp_path, monkeypatch, caplog
):
    demo = tmp_path / "demo"
    monkeypatch.setenv("CACHETREE_DEMO_DIR", str(demo))
    viewer = make_napari_viewer()
    (slide,) = viewer.open_sample("cachetree", "demo")  # returns with the slide only
    heartbeat = Heartbeat(viewer)  # the build, from here on, must leave the event loop running
    assert slide.name == "input:ihc" and slide.rgb
    np.testing.assert_array_equal(slide.data, load_sample_image())
    assert not (demo / "density" / ".cachetree.json").exists()  # built later, in a worker
    qtbot.waitUntil(lambda: sample_done(viewer), timeout=300_000)
    ticks, stalls, longest = heartbeat.build_phase()
    print(f"first build: {ticks} GUI ticks, {stalls} stalls, longest gap {longest:.3f} s")
    assert stalls == 0 and ticks >= 20  # the event loop kept running all along

    nuclei = viewer.layers["nuclei:hematoxylin/nuclei"]  # labels under the image they annotate
    assert type(nuclei).__name__ == "Labels" and nuclei.visible
    assert [layer.name for layer in viewer.layers].count("input:ihc") == 1
    # progress widgets are made on the GUI thread only (Qt objects must not cross threads)
    assert not [r for r in caplog.records if "different thread" in r.getMessage()]
    nodes = {info.path: info.status for info in walk(Location.from_url(demo))}
    assert all(status is Status.COMMITTED for path, status in nodes.items() if path)

    # the browser opened next shows the demo tree without being told where it is
    browser = CacheTreeBrowser(viewer)
    assert browser.root_edit.text() == str(demo)
    qtbot.waitUntil(lambda: browser.row("density") is not None)
    wait_idle(qtbot, browser)

    # opening the sample again reuses the committed nodes, again without blocking
    before = (demo / "input" / ".cachetree.json").read_bytes()
    viewer.layers.clear()
    viewer.open_sample("cachetree", "demo")
    heartbeat = Heartbeat(viewer)
    qtbot.waitUntil(lambda: sample_done(viewer), timeout=120_000)
    ticks, stalls, longest = heartbeat.build_phase()
    print(f"reuse: {ticks} GUI ticks, {stalls} stalls, longest gap {longest:.3f} s")
    assert stalls == 0
    assert (demo / "input" / ".cachetree.json").read_bytes() == before
