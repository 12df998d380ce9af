"""Fixtures of the napari plugin tests: small cache trees with every kind of content.

Every test here needs a real napari viewer (Qt6 under Xvfb, started by pytest-xvfb when no
DISPLAY is set); napari's ``make_napari_viewer`` fixture comes from its pytest plugin.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from cachetree import CacheTree
from cachetree.results import add_part, set_combiner
from cachetree.tree.layout import MANIFEST


def png_bytes(height: int = 24, width: int = 32) -> bytes:
    """A small RGB PNG: red left half, blue right half."""
    import imageio.v3 as iio

    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2, 0] = 255
    pixels[:, width // 2 :, 2] = 255
    return iio.imwrite("<bytes>", pixels, extension=".png")


def build_tree(root: Path) -> Path:
    """A tree with images, labels, a log, JSON, a plot, parts, an open and a corrupt node."""
    tree = CacheTree(root)
    image = np.zeros((2, 300, 400), np.float32)
    image[0, 100:200, 100:300] = 1.0
    image[1] = np.linspace(0, 5, 400, dtype=np.float32)
    with tree.node("segment", params={"level": 1}) as node:
        node.save_image(
            "probability",
            image,
            axes="cyx",
            scale=(0.5, 0.25),
            translation=(10.0, 20.0),
            channel_names=["tumour", "stroma"],
            min_size=128,
        )
        node.log("thresholded at 0.5")
        node.save_json("metrics", {"area": 123, "dice": 0.91})
        node.save_figure("curve", png_bytes())
    labels = np.zeros((300, 400), np.uint16)
    labels[50:80, 60:90] = 3
    with tree.node("segment/cells") as node:
        node.save_labels("cells", labels, min_size=128)
        node.save_array("raw", np.arange(12 * 16, dtype=np.float32).reshape(12, 16))
    # a node whose workers wrote parts that were not combined yet (left open)
    workers = tree.node("workers", params={"tiles": 2}).open()
    set_combiner(workers, "sum", array="tile")
    workers.abandon()
    for i in range(2):
        tile = np.full((8, 8), i + 1, np.float32)
        add_part(workers.url, key=i, arrays={"tile": tile, "count": np.array([i])}, name=f"w{i}")
    build_canvases(tree)
    # an uncommitted leftover and a corrupt manifest (valid JSON, fields of the wrong type)
    tree.node("unfinished").open().abandon()
    (root / "broken").mkdir()
    (root / "broken" / MANIFEST).write_text('{"status": "committed", "items": "oops"}')
    return root


CANVAS_SHAPE = (300, 520)
PROB = (0.25, 0.75)


def canvas_batch(rows: range) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Constant patches (prob = PROB, mask = 1) of 64 px at stride 48 over the given rows."""
    boxes = np.array(
        [[x, y, x + 64, y + 64] for y in rows for x in range(0, CANVAS_SHAPE[1] - 16, 48)]
    )
    n = len(boxes)
    prob = np.broadcast_to(np.array(PROB, np.float32), (n, 64, 64, 2)).copy()
    return {"prob": prob, "mask": np.ones((n, 64, 64, 1), np.float32)}, boxes


def build_canvases(tree: CacheTree) -> None:
    """``merge``: a canvas spilled to disk and left unfinished (top half merged only);
    ``merged``: the same canvas finalised (OME-Zarr heads with pyramids)."""
    from cachetree.canvas import Canvas, HeadSpec

    heads = {"prob": HeadSpec(2), "mask": HeadSpec(1)}
    node = tree.node("merge", params={"canvas": 1}).open()
    canvas = Canvas(node, CANVAS_SHAPE, heads, tile=64, memory_budget=100_000)
    canvas.add(*canvas_batch(range(0, 100, 48)))
    canvas.checkpoint()
    canvas.close()
    node.abandon()
    with tree.node("merged", params={"canvas": 1}) as node:
        names = {"prob": ["tumour", "stroma"]}
        with Canvas(node, CANVAS_SHAPE, heads, tile=64, channel_names=names) as canvas:
            canvas.add(*canvas_batch(range(0, CANVAS_SHAPE[0] - 16, 48)))


@pytest.fixture(scope="session")
def _tree_template(tmp_path_factory) -> Path:
    return build_tree(tmp_path_factory.mktemp("template") / "tree")


@pytest.fixture
def tree_root(_tree_template, tmp_path) -> Path:
    """A fresh copy of the test tree (tests may modify it)."""
    return Path(shutil.copytree(_tree_template, tmp_path / "tree", symlinks=True))


@pytest.fixture
def notifications():
    """napari notifications dispatched during the test, as (severity, message) pairs."""
    from napari.utils.notifications import notification_manager

    start = len(notification_manager.records)
    yield lambda: [(str(n.severity), n.message) for n in notification_manager.records[start:]]


def wait_idle(qtbot, *widgets, timeout: int = 10_000) -> None:
    """Process events until no worker of ``widgets`` runs any more."""
    qtbot.waitUntil(lambda: not any(w.busy for w in widgets), timeout=timeout)


def elapsed(start: float) -> float:
    return time.perf_counter() - start


def screenshot(viewer) -> np.ndarray:
    """The canvas as RGB ``int`` pixels, after fitting the view to the layers."""
    viewer.reset_view()
    return viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)


def on_screen(viewer, shot: np.ndarray, y: float, x: float) -> np.ndarray:
    """The RGB pixel of ``shot`` where the data point ``(y, x)`` (world coordinates) is drawn."""
    camera = viewer.scene.camera
    cy, cx = camera.center[-2:]
    zoom = camera.zoom
    h, w = shot.shape[:2]
    return shot[round(h / 2 + (y - cy) * zoom), round(w / 2 + (x - cx) * zoom)]


@pytest.fixture
def browser(make_napari_viewer, qtbot, tree_root):
    """The cache-tree browser docked in a viewer, showing ``tree_root``, idle."""
    from cachetree.napari._browser import CacheTreeBrowser

    viewer = make_napari_viewer()
    widget = CacheTreeBrowser(viewer, root=str(tree_root))
    viewer.window.add_dock_widget(widget, name="Cache tree browser")
    qtbot.waitUntil(lambda: widget.row("segment") is not None)
    wait_idle(qtbot, widget)
    yield widget
    widget.set_live(False)
    wait_idle(qtbot, widget)
