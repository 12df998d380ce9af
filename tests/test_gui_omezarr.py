"""An OME-Zarr written by the cache tree shows in a real napari viewer as a lazy pyramid."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from cachetree import CacheTree

pytestmark = pytest.mark.gui


@pytest.fixture
def image_node(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(10, 4000, size=(2, 700, 600), dtype=np.uint16)
    tree = CacheTree(tmp_path / "tree")
    with tree.node("step") as node:
        info = node.save_image("raw", data, axes="cyx", channel_names=["dapi", "gfp"])
    return node, data, info


def test_cache_tree_ome_zarr_as_lazy_multiscale_layer(make_napari_viewer, image_node):
    node, data, info = image_node
    pyramid = node.open_image("raw")
    assert len(pyramid) == len(info.levels) == 3  # 700 -> 350 -> 175 (<= 256)
    assert all(isinstance(level, da.Array) for level in pyramid)

    viewer = make_napari_viewer(show=True)  # a hidden canvas renders nothing to screenshot
    layers = viewer.add_image(
        pyramid,
        multiscale=True,
        channel_axis=0,
        name=["dapi", "gfp"],
        contrast_limits=info.contrast_limits,
    )
    assert [layer.name for layer in layers] == ["dapi", "gfp"]
    for c, layer in enumerate(layers):
        assert layer.multiscale and len(layer.data) == 3
        assert layer.data[0].shape == (700, 600) and layer.data[2].shape == (175, 150)
        assert isinstance(layer.data[0], da.Array)  # still lazy
        lo, hi = layer.contrast_limits
        assert (lo, hi) == (float(data[c].min()), float(data[c].max()))
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot[..., :3].max() > 0  # something was drawn from the pyramid


def test_napari_ome_zarr_plugin_opens_it(make_napari_viewer, image_node):
    node, data, _ = image_node
    viewer = make_napari_viewer()
    layers = viewer.open(node.item("raw.ome.zarr").path, plugin="napari-ome-zarr")
    assert len(layers) == 2  # one per channel
    assert layers[0].multiscale and layers[0].data[0].shape == (700, 600)
    np.testing.assert_array_equal(np.asarray(layers[1].data[0][:5, :5]), data[1, :5, :5])
