"""Labels where OME-Zarr readers find them, leaving no trace: under the image they annotate,
or (saved without an image) under a group of their own, ``<name>.ome.zarr/labels/<name>``."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cachetree import CacheTree
from cachetree.images.ngff import write_image

pytestmark = pytest.mark.gui


def _labels() -> dict[str, np.ndarray]:
    cells = np.zeros((64, 96), np.uint16)
    cells[8:24, 8:40] = 1
    cells[40:60, 50:90] = 2
    nuclei = np.zeros((64, 96), np.uint32)
    nuclei[12:18, 12:18] = 7
    return {"cells": cells, "nuclei": nuclei}


@pytest.fixture(params=["0.5", "0.4"])
def labelled(tmp_path, request) -> Path:
    """A node with an RGB image and two labels under it, in either OME-NGFF version."""
    rgb = np.full((3, 64, 96), 200, np.uint8)
    rgb[0, :, :48] = 30
    tree = CacheTree(tmp_path / "tree", ngff_format=request.param)
    with tree.node("segment", params={"threshold": 0.5}) as node:
        node.save_image("slide", rgb, channel_names=["red", "green", "blue"], scale=(0.5, 0.5))
        for name, labels in _labels().items():
            node.save_labels(name, labels, image="slide")
    return Path(node.location.path)


@pytest.fixture(params=["0.5", "0.4"])
def standalone(tmp_path, request) -> Path:
    """A node with labels saved without an image, in either OME-NGFF version."""
    tree = CacheTree(tmp_path / "tree", ngff_format=request.param)
    with tree.node("segment", params={"threshold": 0.5}) as node:
        node.save_labels("cells", _labels()["cells"], scale=(0.5, 0.5), units="um")
    return Path(node.location.path)


def _level0(layer) -> np.ndarray:
    return np.asarray(layer.data[0] if layer.multiscale else layer.data)


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@contextlib.contextmanager
def _refused_as_no_zarr_group() -> Iterator[None]:
    """napari-ome-zarr refusing a folder that is no zarr group (a node), with its warning."""
    with (
        pytest.raises(ValueError, match="napari-ome-zarr"),
        pytest.warns(UserWarning, match="Failed to open Zarr group"),
    ):
        yield


def _ome(group: Path) -> dict:
    """The OME attributes of a group: under ``ome`` in zarr.json (0.5) or .zattrs (0.4)."""
    if (group / "zarr.json").is_file():
        ome = json.loads((group / "zarr.json").read_text())["attributes"]["ome"]
        assert ome.pop("version") == "0.5"
        return ome
    assert (group / ".zgroup").is_file()
    return json.loads((group / ".zattrs").read_text())


def test_labels_are_stored_under_their_image_as_ngff_says(labelled):
    image = labelled / "slide.ome.zarr"
    assert _ome(image / "labels") == {"labels": ["cells", "nuclei"]}
    for name in ("cells", "nuclei"):
        attrs = _ome(image / "labels" / name)
        assert attrs["image-label"]["source"] == {"image": "../../"}
        scale = attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]
        assert scale == {"type": "scale", "scale": [0.5, 0.5]}  # the image's pixel size
    manifest = json.loads((labelled / ".cachetree.json").read_text())
    assert manifest["items"]["slide.ome.zarr"]["labels"] == ["cells", "nuclei"]
    node = CacheTree(labelled.parent).node("segment")
    np.testing.assert_array_equal(node.open_image("cells", image="slide")[0], _labels()["cells"])


def test_our_reader_shows_the_labels_over_their_image(make_napari_viewer, labelled):
    viewer = make_napari_viewer()
    layers = viewer.open(str(labelled), plugin="cachetree")
    assert [(layer.name, type(layer).__name__, layer.visible) for layer in layers] == [
        ("segment:slide", "Image", True),
        ("segment:slide/cells", "Labels", True),
        ("segment:slide/nuclei", "Labels", True),
    ]
    for layer, (name, expected) in zip(layers[1:], _labels().items(), strict=True):
        np.testing.assert_array_equal(_level0(layer), expected, err_msg=name)
        np.testing.assert_array_equal(layer.scale, layers[0].scale)


def test_napari_ome_zarr_and_ome_zarr_py_find_the_labels(make_napari_viewer, labelled):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    image = labelled / "slide.ome.zarr"
    viewer = make_napari_viewer()
    layers = viewer.open(str(image), plugin="napari-ome-zarr")
    labels = [layer for layer in layers if type(layer).__name__ == "Labels"]
    assert len(layers) == 5 and len(labels) == 2  # 3 channels and the 2 labels
    for layer, expected in zip(labels, _labels().values(), strict=True):
        np.testing.assert_array_equal(_level0(layer), expected)
        np.testing.assert_allclose(layer.scale, layers[0].scale)

    nodes = list(Reader(parse_url(str(image)))())
    found = {node.metadata["name"]: node for node in nodes if node.load(Label) is not None}
    assert set(found) == {"cells", "nuclei"}
    for name, expected in _labels().items():
        np.testing.assert_array_equal(np.asarray(found[name].data[0]), expected)


def test_opening_with_other_readers_leaves_the_tree_byte_identical(make_napari_viewer, labelled):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    root = labelled.parent
    before = _hashes(root)
    image = labelled / "slide.ome.zarr"
    paths = [image, image / "labels", image / "labels" / "cells", image / "labels" / "nuclei"]
    viewer = make_napari_viewer()
    for path in paths:
        shown = viewer.open(str(path), plugin="napari-ome-zarr")
        assert "Labels" in [type(layer).__name__ for layer in shown], path
        assert list(Reader(parse_url(str(path)))()), path
        viewer.layers.clear()
    with _refused_as_no_zarr_group():
        viewer.open(str(labelled), plugin="napari-ome-zarr")
    assert parse_url(str(labelled)) is None
    assert _hashes(root) == before
    assert not (root / "zarr.json").exists() and not (labelled / "zarr.json").exists()


def test_standalone_labels_are_a_labels_group_in_a_group_of_their_own(standalone):
    import zarr

    group = standalone / "cells.ome.zarr"
    assert zarr.open_group(str(group), mode="r").attrs.asdict() == {}  # no image of its own
    assert _ome(group / "labels") == {"labels": ["cells"]}
    attrs = _ome(group / "labels" / "cells")
    assert "source" not in attrs["image-label"]  # no image to point back at
    scale = attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]
    assert scale == {"type": "scale", "scale": [0.5, 0.5]}
    assert sorted(p.name for p in standalone.iterdir()) == [".cachetree.json", "cells.ome.zarr"]
    node = CacheTree(standalone.parent).node("segment")
    np.testing.assert_array_equal(node.open_image("cells")[0], _labels()["cells"])


def test_our_reader_shows_standalone_labels_visible(make_napari_viewer, standalone):
    group = standalone / "cells.ome.zarr"
    viewer = make_napari_viewer()
    for path, name in [
        (standalone, "segment:cells"),
        (group, "segment:cells"),
        (group / "labels" / "cells", "cells"),
    ]:
        layers = viewer.open(str(path), plugin="cachetree")
        assert [(layer.name, type(layer).__name__, layer.visible) for layer in layers] == [
            (name, "Labels", True)
        ], path
        np.testing.assert_array_equal(_level0(layers[0]), _labels()["cells"])
        np.testing.assert_allclose(layers[0].scale, [0.5, 0.5])
        assert [str(u) for u in layers[0].units] == ["micrometer"] * 2
        viewer.layers.clear()


def test_other_readers_find_standalone_labels_and_change_no_file(make_napari_viewer, standalone):
    """napari-ome-zarr and ome-zarr-py show the labels from their ``labels`` group or the labels
    image; the group holding them is no image, so there (and at the node) they show nothing.
    Wherever they are pointed, they open no folder above the labels for writing."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    root = standalone.parent
    before = _hashes(root)
    group = standalone / "cells.ome.zarr"
    viewer = make_napari_viewer()
    for path in (group / "labels", group / "labels" / "cells"):
        layers = viewer.open(str(path), plugin="napari-ome-zarr")
        assert [type(layer).__name__ for layer in layers] == ["Labels"], path
        np.testing.assert_array_equal(_level0(layers[0]), _labels()["cells"])
        np.testing.assert_allclose(layers[0].scale, [0.5, 0.5])
        viewer.layers.clear()
        nodes = [node for node in Reader(parse_url(str(path)))() if node.load(Label)]
        assert [node.metadata["name"] for node in nodes] == ["cells"], path
        np.testing.assert_array_equal(np.asarray(nodes[0].data[0]), _labels()["cells"])
    with _refused_as_no_zarr_group():
        viewer.open(str(standalone), plugin="napari-ome-zarr")
    with pytest.raises(ValueError, match="returned no data"):
        viewer.open(str(group), plugin="napari-ome-zarr")
    assert parse_url(str(standalone)) is None  # no zarr group: ome-zarr-py does not open it
    assert list(Reader(parse_url(str(group)))()) == []
    assert _hashes(root) == before
    assert not (root / "zarr.json").exists() and not (standalone / "zarr.json").exists()


def test_standalone_labels_of_the_earlier_layout_still_open(make_napari_viewer, tmp_path):
    """Trees written before keep standalone labels as a labels image ``<name>.ome.zarr``."""
    tree = CacheTree(tmp_path / "tree")
    with tree.node("segment") as node:
        write_image(node.item("cells.ome.zarr"), _labels()["cells"], labels=True, name="cells")
    node = tree.node("segment")
    assert node.manifest.items["cells.ome.zarr"]["kind"] == "labels"
    np.testing.assert_array_equal(node.open_image("cells")[0], _labels()["cells"])
    viewer = make_napari_viewer()
    for path in (node.location.path, node.item("cells.ome.zarr").path):
        layers = viewer.open(path, plugin="cachetree")
        assert [(layer.name, type(layer).__name__, layer.visible) for layer in layers] == [
            ("segment:cells", "Labels", True)
        ]
        np.testing.assert_array_equal(_level0(layers[0]), _labels()["cells"])
        viewer.layers.clear()


def test_images_of_two_resolutions_overlay_in_physical_units(make_napari_viewer, tmp_path):
    """A 0.25 um image and a canvas at 4x its pixel size cover the same micrometres."""
    from cachetree.canvas import Canvas

    tree = CacheTree(tmp_path / "tree")
    with tree.node("slide") as node:
        node.save_image("stain", np.zeros((128, 160), np.uint8), scale=(0.25, 0.25), units="um")
        canvas = Canvas(
            node, (32, 40), {"prob": 1}, tile=16, pixel_size=0.25, units="um", output_stride=4
        )
        canvas.add({"prob": np.ones((1, 32, 40, 1), np.float32)}, [[0, 0, 40, 32]])
        canvas.finalize()
    viewer = make_napari_viewer()
    layers = {
        layer.name: layer for layer in viewer.open(str(node.location.path), plugin="cachetree")
    }
    stain, prob = layers["slide:stain"], layers["slide:prob"]
    np.testing.assert_allclose(stain.scale, [0.25, 0.25])
    np.testing.assert_allclose(prob.scale, [1.0, 1.0])
    assert [str(u) for u in stain.units] == [str(u) for u in prob.units] == ["micrometer"] * 2
    for layer in (stain, prob):  # both span 32 x 40 micrometres
        (y0, x0), (y1, x1) = layer.extent.world
        assert (y1 - y0, x1 - x0) == pytest.approx((32.0, 40.0), abs=1.0)


def test_a_canvas_in_progress_and_its_spill_parts_have_the_physical_scale(
    make_napari_viewer, tmp_path
):
    """Before finalise too, canvas layers (and a spill part's) are placed in micrometres."""
    from cachetree.canvas import SPILL_KIND, Canvas
    from cachetree.canvas.spill import read_spill_part
    from cachetree.napari._layers import spill_part_layers
    from cachetree.tree.parts import list_parts

    tree = CacheTree(tmp_path / "tree")
    viewer = make_napari_viewer()
    with tree.node("slide") as node:
        canvas = Canvas(
            node,
            (32, 48),
            {"prob": 1},
            tile=16,
            order="any",
            memory_budget=2 * 16 * 16 * 8,
            pixel_size=0.25,
            units="um",
            output_stride=2,
        )
        for left in (0, 16, 32):  # three tiles of the top row; two of them are spilled
            canvas.add({"prob": np.ones((1, 16, 16, 1), np.float32)}, [[left, 0, left + 16, 16]])
        canvas.checkpoint()
        (prob,) = viewer.open(str(node.location.path), plugin="cachetree")
        assert prob.name.startswith("slide:prob (")  # in progress: the share merged is shown
        np.testing.assert_allclose(prob.scale, [0.5, 0.5])
        assert [str(u) for u in prob.units] == ["micrometer"] * 2
        (y0, x0), (y1, x1) = prob.extent.world
        assert (y1 - y0, x1 - x0) == pytest.approx((16.0, 24.0), abs=0.5)
        spills = list_parts(node.location, kind=SPILL_KIND)
        assert spills
        contents = read_spill_part(spills[0])
        for _, kwargs, _ in spill_part_layers(spills[0], "slide", {}):  # weight and prob
            assert kwargs["scale"] == (0.5, 0.5)  # 2 x 0.25 um
            assert kwargs["translate"] == (contents.top * 0.5, contents.left * 0.5)
        canvas.finalize()
