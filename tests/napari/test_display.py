"""What napari users expect to see: true colours, visible labels, data never hidden."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cachetree import CacheTree

from .conftest import on_screen, screenshot

pytestmark = pytest.mark.gui

BLOCKS = {  # (top, left) of a 32 x 32 block -> its true colour
    (0, 0): (200, 30, 30),
    (0, 32): (20, 180, 60),
    (0, 64): (40, 60, 220),
    (32, 0): (250, 250, 250),
    (32, 32): (120, 90, 10),
    (32, 64): (0, 0, 0),
}


@pytest.fixture
def rgb_node(tmp_path):
    rgb = np.zeros((64, 96, 3), np.uint8)
    for (top, left), colour in BLOCKS.items():
        rgb[top : top + 32, left : left + 32] = colour
    tree = CacheTree(tmp_path / "tree")
    with tree.node("input") as node:
        node.save_image(
            "slide", np.moveaxis(rgb, -1, 0), axes="cyx", channel_names=["red", "green", "blue"]
        )
    return node, rgb


def _block_colours(viewer, shot) -> dict[tuple[int, int], np.ndarray]:
    return {corner: on_screen(viewer, shot, corner[0] + 16, corner[1] + 16) for corner in BLOCKS}


def test_omero_colours_of_rgb_channels_are_the_true_ones(rgb_node):
    node, _ = rgb_node
    attrs = json.loads(Path(node.item("slide.ome.zarr").path, ".zattrs").read_text())
    channels = attrs["omero"]["channels"]
    assert [ch["color"] for ch in channels] == ["FF0000", "00FF00", "0000FF"]
    # the display window is the full uint8 range: no channel is stretched on its own
    assert [(ch["window"]["start"], ch["window"]["end"]) for ch in channels] == [(0, 255)] * 3
    assert [(ch["window"]["min"], ch["window"]["max"]) for ch in channels] == [
        (0, 250),
        (0, 250),
        (0, 250),
    ]


def test_rgb_opens_as_one_rgb_layer_in_the_colours_napari_ome_zarr_shows(
    make_napari_viewer, rgb_node
):
    node, rgb = rgb_node
    viewer = make_napari_viewer(show=True)
    (layer,) = viewer.open(node.location.path, plugin="cachetree")
    assert layer.rgb and layer.name == "input:slide"
    assert layer.data.shape == (64, 96, 3)
    np.testing.assert_array_equal(np.asarray(layer.data), rgb)
    ours = screenshot(viewer)
    ours_blocks = _block_colours(viewer, ours)
    for corner, colour in BLOCKS.items():  # true colours on screen, within rounding
        assert np.abs(ours_blocks[corner] - colour).max() <= 2, (corner, ours_blocks[corner])

    viewer.layers.clear()
    theirs_layers = viewer.open(node.item("slide.ome.zarr").path, plugin="napari-ome-zarr")
    assert len(theirs_layers) == 3  # napari-ome-zarr splits channels, coloured from omero
    theirs = screenshot(viewer)
    theirs_blocks = _block_colours(viewer, theirs)
    for corner in BLOCKS:
        diff = np.abs(theirs_blocks[corner] - ours_blocks[corner]).max()
        assert diff <= 3, (corner, theirs_blocks[corner], ours_blocks[corner])
