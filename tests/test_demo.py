"""The demo pipeline: real steps, real spilling, real worker processes and combine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cachetree.canvas.view import canvas_state
from cachetree.demo import DemoParams, load_sample_image, patch_boxes, patch_model, run_demo
from tests.images.test_ngff_formats import assert_valid


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    lines: list[str] = []
    tree = run_demo(tmp_path_factory.mktemp("demo") / "tree", report=lines.append)
    return tree, lines


def test_every_step_is_a_committed_node(demo):
    tree, lines = demo
    assert lines == ["input:   new", "model:   new", "nuclei:  new", "density: new"]
    states = {info.path: info.state for info in tree.walk()}
    assert states == {
        "": "root",
        "input": "committed",
        "model": "committed",
        "nuclei": "committed",
        "density": "committed",
        "density/counts": "committed",
    }
    kinds = {info.path: info.kind for info in tree.walk()}
    assert kinds["density"] == "node: image, json, log, plot"
    assert kinds["nuclei"] == "node: image, log"  # the labels are stored under the image


def test_every_image_validates_as_ome_ngff_0_5(demo):
    tree, _ = demo
    images = sorted(Path(tree.root.path).rglob("*.ome.zarr"))
    assert {p.name for p in images} >= {"ihc.ome.zarr", "stains.ome.zarr", "density.ome.zarr"}
    for image in images:
        assert_valid(image, "0.5")
    assert_valid(
        Path(tree.root.path) / "nuclei/hematoxylin.ome.zarr/labels/nuclei", "0.5", labels=True
    )


def test_model_canvas_spilled_and_matches_a_dense_merge(demo):
    tree, _ = demo
    node = tree.node("model")
    assert "MiB of accumulators spilled" in node.load_text("log.txt")
    assert not node.load_text("log.txt").count(" 0.0 MiB of accumulators spilled")
    assert canvas_state(node.location).finalized
    rgb = load_sample_image()
    params = DemoParams()
    boxes = patch_boxes(rgb.shape[:2], params.patch, params.stride)
    # dense float64 reference with the same Gaussian weights
    from cachetree.canvas import weight_window

    window = weight_window("gaussian", (params.patch, params.patch)).astype(np.float64)
    total = np.zeros((*rgb.shape[:2], 1))
    weight = np.zeros(rgb.shape[:2])
    padded = np.pad(rgb, ((0, params.patch), (0, params.patch), (0, 0)), constant_values=255)
    for x0, y0, x1, y1 in boxes:
        patch = padded[y0:y1, x0:x1][None]
        fg = patch_model(patch)["foreground"][0].astype(np.float64)
        h, w = min(y1, rgb.shape[0]) - y0, min(x1, rgb.shape[1]) - x0
        total[y0 : y0 + h, x0 : x0 + w] += fg[:h, :w] * window[:h, :w, None]
        weight[y0 : y0 + h, x0 : x0 + w] += window[:h, :w]
    expected = total[..., 0] / weight
    merged = node.open_image("foreground")[0].compute()
    np.testing.assert_allclose(merged, expected, rtol=1e-4, atol=1e-5)


def test_density_parts_came_from_two_workers_and_were_combined(demo):
    tree, _ = demo
    log = tree.node("density").load_text("log.txt")
    assert "written by 2 worker processes" in log
    counts = tree.node("density/counts")
    assert counts.manifest.meta["combined"]
    density = tree.node("density").open_image("density")[0].compute()
    assert density.shape == (8, 8)
    metrics = tree.node("density").load_json("metrics")
    nuclei = tree.node("nuclei").open_image("nuclei", image="hematoxylin")[0].compute()
    assert metrics["nuclei"] == int(density.sum()) == int(nuclei.max()) > 50
    assert tree.node("density").load_bytes("density.png")[:4] == b"\x89PNG"
