"""The napari manifest: valid for npe2, shipped in the package, every contribution importable."""

from __future__ import annotations

import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest

pytestmark = pytest.mark.gui

REPO = Path(__file__).resolve().parents[2]


def test_npe2_validate_passes_with_imports():
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from npe2.cli import main; main()",
            "validate",
            "cachetree",
            "--imports",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in proc.stdout


def test_manifest_is_shipped_in_the_package_and_is_the_top_level_one():
    shipped = files("cachetree").joinpath("napari.yaml")
    assert shipped.is_file()
    assert shipped.read_text() == (REPO / "napari.yaml").read_text()


def test_contributions_are_declared():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("cachetree")
    contributions = manifest.contributions
    assert [r.command for r in contributions.readers] == ["cachetree.get_reader"]
    assert contributions.readers[0].accepts_directories
    assert {w.display_name for w in contributions.widgets} == {
        "Cache tree browser",
        "Commit",
        "Combine",
        "Clean",
    }
    assert [s.key for s in contributions.sample_data] == ["demo"]
    assert "napari/file/io_utilities" in contributions.menus
    in_menu = {item.command for item in contributions.menus["cachetree.menu"]}
    assert in_menu == {w.command for w in contributions.widgets}


def test_widgets_dock_from_the_plugin_and_share_one_selection(make_napari_viewer):
    from cachetree.napari._selection import selection_for

    viewer = make_napari_viewer()
    widgets = [
        viewer.window.add_plugin_dock_widget("cachetree", name)[1]
        for name in ("Cache tree browser", "Commit", "Combine", "Clean")
    ]
    # napari gives each plugin widget its own proxy of the viewer: one selection for all
    assert all(w.selection is selection_for(viewer) for w in widgets)


def test_view_tree_opens_a_tree_with_the_browser_docked(
    make_napari_viewer, qtbot, tree_root, monkeypatch
):
    import napari
    from cachetree.napari import view_tree

    monkeypatch.setattr(napari, "Viewer", lambda **kwargs: make_napari_viewer(**kwargs))
    viewer = view_tree(str(tree_root), run=False)
    assert "segment:probability [tumour]" in viewer.layers
    browser = viewer.window.dock_widgets["Cache tree browser (cachetree)"]
    assert browser.root_edit.text() == str(tree_root)
    qtbot.waitUntil(lambda: browser.row("segment") is not None)
    qtbot.waitUntil(lambda: not browser.busy)
