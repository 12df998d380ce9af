"""The reader: cache roots, nodes, canvases and OME-Zarr images open as lazy layers."""

from __future__ import annotations

import time

import dask.array as da
import numpy as np
import pytest
import zarr

from cachetree.napari._reader import get_reader

pytestmark = pytest.mark.gui


def test_unrelated_paths_are_rejected_quickly_and_never_raise(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("hello")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w").create_array(
        "a", shape=(4, 4), dtype="u1"
    )
    (tmp_path / "bad.zarr").mkdir()
    (tmp_path / "bad.zarr" / ".zattrs").write_text("{not json")
    (tmp_path / "bad3.zarr").mkdir()
    (tmp_path / "bad3.zarr" / "zarr.json").write_text("{not json")
    candidates = [
        plain,
        str(plain / "notes.txt"),
        str(tmp_path / "missing"),
        str(tmp_path / "plain.zarr"),
        str(tmp_path / "bad.zarr"),
        str(tmp_path / "bad3.zarr"),
        [str(plain), str(plain)],
        [],
        None,
        42,
        "memory://nothing/here",
        "\x00bad",
    ]
    for candidate in candidates:
        start = time.perf_counter()
        assert get_reader(candidate) is None, candidate
        assert time.perf_counter() - start < 0.1, candidate


def test_opening_a_root_shows_its_nodes_images_in_pipeline_order(make_napari_viewer, tree_root):
    viewer = make_napari_viewer()
    layers = viewer.open(str(tree_root), plugin="cachetree")
    shown = {layer.name: layer.visible for layer in layers}
    assert list(shown) == [  # nodes in the order they were made, breadth first
        "segment:probability [tumour]",
        "segment:probability [stroma]",
        "merge:mask (50 % merged)",
        "merge:prob [0] (50 % merged)",
        "merge:prob [1] (50 % merged)",
        "merged:mask",
        "merged:prob [tumour]",
        "merged:prob [stroma]",
        "segment/cells:cells",
    ]
    # images cover each other: only the first node's are visible; labels are overlays
    visible = [name for name, on in shown.items() if on]
    assert visible == [
        "segment:probability [tumour]",
        "segment:probability [stroma]",
        "segment/cells:cells",
    ]
    # plots, logs, JSON and plain arrays open one at a time from the browser
    assert all(layer.metadata["cachetree"]["root"] == str(tree_root) for layer in layers)


def test_a_spilled_unfinished_canvas_opens_normalised_and_lazy(make_napari_viewer, tree_root):
    from .conftest import CANVAS_SHAPE, PROB

    viewer = make_napari_viewer()
    mask, prob0, prob1 = viewer.open(str(tree_root / "merge"), plugin="cachetree")
    # named with the share merged so far: the top 160 of 300 rows (in 32-px preview blocks)
    assert prob0.name == "merge:prob [0] (50 % merged)"
    assert prob1.name == "merge:prob [1] (50 % merged)"
    assert prob0.multiscale and prob0.data[0].shape == CANVAS_SHAPE
    np.testing.assert_allclose(prob0.contrast_limits, (0, 1))  # from the preview, no scan
    assert isinstance(prob0.data[0], da.Array)
    # the merged top rows hold the normalised mean, rows no patch reached the fill value
    np.testing.assert_allclose(np.asarray(prob0.data[0][:100, :480]), PROB[0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(prob1.data[0][:100, :480]), PROB[1], rtol=1e-6)
    assert not np.asarray(prob0.data[0][200:, :]).any()
    np.testing.assert_allclose(np.asarray(mask.data[0][:100, :480]), 1.0)
    viewer.reset_view()
    assert viewer.screenshot(canvas_only=True, flash=False).any()  # it draws


def test_a_finalised_canvas_opens_as_its_head_images(make_napari_viewer, tree_root):
    viewer = make_napari_viewer()
    _mask, tumour, stroma = viewer.open(str(tree_root / "merged"), plugin="cachetree")
    assert (tumour.name, stroma.name) == ("merged:prob [tumour]", "merged:prob [stroma]")
    assert tumour.multiscale and isinstance(tumour.data[0], da.Array)
    np.testing.assert_allclose(tumour.contrast_limits, (0, 1))  # a probability, as such
    np.testing.assert_allclose(np.asarray(stroma.data[0][10, 10]), 0.75)


def test_a_node_opens_as_lazy_multiscale_layers_from_metadata(make_napari_viewer, tree_root):
    viewer = make_napari_viewer()
    tumour, stroma = viewer.open(str(tree_root / "segment"), plugin="cachetree")
    assert tumour.multiscale and len(tumour.data) == 3  # 400 -> 200 -> 100
    assert isinstance(tumour.data[0], da.Array)  # nothing loaded up front
    assert tumour.data[0].shape == (300, 400)
    np.testing.assert_allclose(tumour.scale, (0.5, 0.25))
    np.testing.assert_allclose(tumour.translate, (10.0, 20.0))
    assert tuple(tumour.contrast_limits) == (0.0, 1.0)  # omero window, no data scan
    np.testing.assert_allclose(stroma.contrast_limits, (0.0, 5.0))
    # derived data shows what is under it: transparent at 0, coloured and translucent above
    for layer, colour in ((tumour, "#FF00FF"), (stroma, "#00FF00")):  # omero colours
        assert (layer.blending, layer.opacity) == ("translucent", 0.6)
        assert layer.colormap.name == f"cachetree {colour} ramp"
        assert layer.colormap.colors[0][3] == 0 and layer.colormap.colors[-1][3] == 1
    assert tumour.metadata["cachetree"] == {
        "root": str(tree_root),
        "node": "segment",
        "item": "probability.ome.zarr",
    }


def test_an_ome_zarr_item_opens_alone(make_napari_viewer, tree_root):
    viewer = make_napari_viewer()
    (labels,) = viewer.open(
        str(tree_root / "segment" / "cells" / "cells.ome.zarr"), plugin="cachetree"
    )
    assert type(labels).__name__ == "Labels"
    assert labels.name == "segment/cells:cells"
    assert labels.multiscale
    assert int(labels.data[0][60, 70]) == 3


def test_a_manifest_file_opens_its_node(make_napari_viewer, tree_root):
    viewer = make_napari_viewer()
    layers = viewer.open(
        str(tree_root / "segment" / "cells" / ".cachetree.json"), plugin="cachetree"
    )
    names = [layer.name for layer in layers]
    assert "segment/cells:cells" in names
    assert not any(name.startswith("segment:probability") for name in names)


def test_an_unreadable_item_is_reported_and_the_rest_still_opens(make_napari_viewer, tree_root):
    viewer = make_napari_viewer()
    level0 = tree_root / "segment" / "probability.ome.zarr" / "0"
    (level0 / "zarr.json").write_text("{broken")  # the array metadata of OME-NGFF 0.5
    with pytest.warns(UserWarning, match="cannot show segment:probability"):
        layers = viewer.open(str(tree_root), plugin="cachetree")
    names = [layer.name for layer in layers]
    assert "segment/cells:cells" in names
    assert not any(name.startswith("segment:probability") for name in names)
