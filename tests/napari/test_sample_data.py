"""File > Open Sample > cachetree > demo: the demo tree built locally, shown as lazy layers."""

from __future__ import annotations

import pytest

from cachetree.manifest import Status
from cachetree.napari._browser import CacheTreeBrowser
from cachetree.storage import Location
from cachetree.walk import walk

from .conftest import wait_idle

pytestmark = pytest.mark.gui


def test_open_sample_builds_the_demo_tree_and_shows_it(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    demo = tmp_path / "demo"
    monkeypatch.setenv("CACHETREE_DEMO_DIR", str(demo))
    viewer = make_napari_viewer()
    viewer.open_sample("cachetree", "demo")
    assert viewer.layers["input:ihc"].rgb  # the RGB slide as one layer, in its true colours
    nuclei = viewer.layers["nuclei:hematoxylin/nuclei"]  # labels under the image they annotate
    assert type(nuclei).__name__ == "Labels" and nuclei.visible
    nodes = {info.path: info.status for info in walk(Location.from_url(demo))}
    assert all(status is Status.COMMITTED for path, status in nodes.items() if path)

    # the browser opened next shows the demo tree without being told where it is
    browser = CacheTreeBrowser(viewer)
    assert browser.root_edit.text() == str(demo)
    qtbot.waitUntil(lambda: browser.row("density") is not None)
    wait_idle(qtbot, browser)

    # opening the sample again reuses the committed nodes
    before = (demo / "input" / ".cachetree.json").read_bytes()
    viewer.open_sample("cachetree", "demo")
    assert (demo / "input" / ".cachetree.json").read_bytes() == before
