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
    attrs = json.loads(Path(node.item("slide.ome.zarr").path, "zarr.json").read_text())
    channels = attrs["attributes"]["ome"]["omero"]["channels"]  # OME-NGFF 0.5
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


# -- display defaults that never hide data ---------------------------------------------------
PINK, WHITE = (230, 120, 170), (245, 245, 245)


@pytest.fixture
def pipeline(tmp_path):
    """An RGB slide (pink left half, white right half), a two-head canvas, a heatmap."""
    from cachetree.canvas import Canvas, HeadSpec

    rgb = np.empty((128, 128, 3), np.uint8)
    rgb[:, :64], rgb[:, 64:] = PINK, WHITE
    tree = CacheTree(tmp_path / "tree")
    with tree.node("input") as node:
        node.save_image("slide", np.moveaxis(rgb, -1, 0), channel_names=["red", "green", "blue"])
    with tree.node("model") as node:  # head a: left half, head b: top half
        boxes = np.array(
            [[x, y, x + 32, y + 32] for y in range(0, 128, 32) for x in range(0, 128, 32)]
        )
        a = np.array([[float(x < 64)] for x, _, _, _ in boxes], np.float32)
        b = np.array([[float(y < 64)] for _, y, _, _ in boxes], np.float32)
        patches = {
            "a": np.broadcast_to(a[:, None, None, :], (len(boxes), 32, 32, 1)).copy(),
            "b": np.broadcast_to(b[:, None, None, :], (len(boxes), 32, 32, 1)).copy(),
        }
        with Canvas(node, (128, 128), {"a": HeadSpec(1), "b": HeadSpec(1)}, tile=32) as canvas:
            canvas.add(patches, boxes)
    density = np.zeros((4, 4), np.uint16)
    density[2, 1:3] = 9  # rows 64..96, columns 32..96: over pink and over white
    with tree.node("density") as node:
        node.save_image("density", density, scale=(32, 32), translation=(15.5, 15.5))
    return tree


def test_heads_of_one_canvas_are_all_visible_at_once(make_napari_viewer, pipeline):
    viewer = make_napari_viewer(show=True)
    a, b = viewer.open(pipeline.node("model").location.path, plugin="cachetree")
    assert (a.name, b.name) == ("model:a", "model:b")
    assert a.colormap.name != b.colormap.name  # heads opened together get different colours
    shot = screenshot(viewer)
    at = {
        "a only": on_screen(viewer, shot, 96, 16),
        "b only": on_screen(viewer, shot, 16, 96),
        "both": on_screen(viewer, shot, 16, 16),
        "neither": on_screen(viewer, shot, 96, 96),
    }
    assert at["neither"].max() < 10  # transparent where the heads are 0
    assert np.abs(at["a only"] - at["b only"]).max() > 100  # two distinct colours
    # where both heads are high, the lower one still shows through the upper one
    assert np.abs(at["both"] - at["b only"]).max() > 30, at
    assert np.abs(at["both"] - at["a only"]).max() > 30, at


def test_a_heatmap_over_the_slide_lets_the_slide_show_through(make_napari_viewer, pipeline):
    viewer = make_napari_viewer(show=True)
    viewer.open(pipeline.node("input").location.path, plugin="cachetree")
    (heat,) = viewer.open(pipeline.node("density").location.path, plugin="cachetree")
    assert heat.blending == "translucent" and heat.opacity < 1
    shot = screenshot(viewer)
    # no heat: the slide exactly as it is
    assert np.abs(on_screen(viewer, shot, 16, 16) - PINK).max() <= 3
    assert np.abs(on_screen(viewer, shot, 16, 112) - WHITE).max() <= 3
    # hottest cells: coloured, and the slide under them still tells pink from white
    hot_pink, hot_white = on_screen(viewer, shot, 80, 48), on_screen(viewer, shot, 80, 80)
    assert np.abs(hot_pink - PINK).max() > 40 and np.abs(hot_white - WHITE).max() > 40
    assert np.abs(hot_pink - hot_white).max() > 20, (hot_pink, hot_white)


def test_a_spill_part_stands_out_from_its_canvas(make_napari_viewer, qtbot, tree_root):
    from cachetree.canvas import SPILL_KIND
    from cachetree.fs.location import Location
    from cachetree.napari._layers import open_part
    from cachetree.tree.node import Node
    from cachetree.tree.parts import list_parts

    viewer = make_napari_viewer(show=True)
    layers = viewer.open(str(tree_root / "merge"), plugin="cachetree")
    head = viewer.layers["merge:prob [0] (50 % merged)"]
    root = Location.from_url(str(tree_root))
    node = Node(root.join("merge"), root=root)
    part = next(p for p in list_parts(node.location) if p.kind == SPILL_KIND)
    for data, kwargs, layer_type in open_part(node, root, part).layers:
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    spill = viewer.layers[f"merge:parts/{part.name}/prob [0]"]
    assert spill.colormap.name != head.colormap.name
    _, _, y0, x0, y1, x1 = part.meta["tiles"][0]
    y, x = (y0 + y1) / 2, (x0 + x1) / 2
    for layer in [*layers, *viewer.layers]:
        layer.visible = layer is head
    canvas_only = on_screen(viewer, screenshot(viewer), y, x)
    for layer in viewer.layers:
        layer.visible = layer is spill
    part_only = on_screen(viewer, screenshot(viewer), y, x)
    assert canvas_only.max() > 20 and part_only.max() > 20  # both draw the 0.25 there
    # drawn in another hue (brightness follows each layer's own window, so compare direction)
    a, b = (v.astype(float) / np.linalg.norm(v) for v in (canvas_only, part_only))
    assert float(a @ b) < 0.9, (canvas_only, part_only)
