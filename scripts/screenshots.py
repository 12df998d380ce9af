"""Take the screenshots of docs/napari.md from the running plugin.

Run it under an X server from the repository root::

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshots.py

It builds the demo tree (File > Open Sample > Demo cache tree), adds the nodes the guide's
walkthrough uses (a spilled, unfinished canvas; a node with parts to combine; a crashed
node whose writer died; a stale node; a second run of the model to compare; leftovers to
clean), then drives the real widgets and saves PNG files into
``docs/screenshots/``. Every step waits for the widget's worker threads, so what is saved
is what a user would see.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


# -- the walkthrough's extra nodes (the guide shows the same code) ----------------------------
def spilled_canvas(root: Path, rows_sent: int = 300) -> None:
    """A patch merger that spilled to disk and stopped before finishing (as after a crash).

    A stand-in "model" predicts two heads on 128 px patches at stride 96 of the demo image:
    ``dab`` (one channel: DAB probability) and ``stains`` (hematoxylin and DAB). Only
    the patches above ``rows_sent`` are sent; the memory budget forces spilling.
    """
    from cachetree import CacheTree
    from cachetree.canvas import Canvas, HeadSpec

    tree = CacheTree(root)
    hed = tree.node("model").open_image("stains")[0].compute()  # (3, 512, 512): H, E, DAB
    node = tree.node("predict", params={"model": "dab-v1", "patch": 128}).open()
    canvas = Canvas(
        node,
        hed.shape[1:],
        {"dab": HeadSpec(1), "stains": HeadSpec(2)},
        weights="gaussian",
        memory_budget="512 KiB",
        tile=64,
    )
    for y in range(0, rows_sent - 127, 96):
        boxes = np.array([[x, y, x + 128, y + 128] for x in range(0, 512 - 127, 96)])
        patches = np.stack([hed[:, y : y + 128, x : x + 128] for x, y, _, _ in boxes])
        dab = patches[:, 2, :, :, None]  # (N, 128, 128, 1): DAB probability
        stains = np.moveaxis(patches[:, [0, 2]], 1, -1)  # (N, 128, 128, 2)
        canvas.add({"dab": dab, "stains": stains}, boxes)
    canvas.checkpoint()  # everything merged so far is on disk now
    canvas.close()  # ... and the run stops here, unfinished
    node.abandon()


def parts_to_combine(root: Path) -> None:
    """Four workers count nuclei per 64 px region in their quarter of the image, as parts."""
    from cachetree import CacheTree
    from cachetree.results import add_part, set_combiner

    tree = CacheTree(root)
    labels = tree.node("nuclei").open_image("nuclei", image="hematoxylin")[0].compute()
    node = tree.node("counts", params={"region": 64}).open()
    set_combiner(node, "sum")
    node.abandon()  # the workers, in other processes, add parts; combine runs later
    for worker, (ys, xs) in enumerate([(0, 0), (0, 256), (256, 0), (256, 256)]):
        counts = np.zeros((8, 8), np.float32)
        quarter = labels[ys : ys + 256, xs : xs + 256]
        for label in np.unique(quarter[quarter > 0]):
            y, x = np.argwhere(quarter == label).mean(axis=0)
            counts[int(ys + y) // 64, int(xs + x) // 64] += 1
        add_part(
            node.url, key="nuclei per region", arrays={"counts": counts}, name=f"worker-{worker}"
        )


def leftovers(root: Path) -> None:
    """A run whose process died before committing, and an older run's leftover."""
    import subprocess
    import sys

    code = (
        "import os\n"
        "from cachetree import CacheTree\n"
        f"node = CacheTree({str(root)!r}).node('report', params={{'format': 'json'}}).open()\n"
        "node.save_json('summary', {'nuclei': 55, 'status': 'written, never committed'})\n"
        "os._exit(1)  # the process dies here: its lock stays, the node is not committed\n"
    )
    subprocess.run([sys.executable, "-c", code], check=False)
    from cachetree import CacheTree

    old = CacheTree(root).node("old-run").open()
    old.save_array("scratch", np.zeros((512, 512), np.float32))
    old.abandon()


def stale_child(root: Path) -> None:
    """A quality-control step with a child, then the step recomputed: the child is stale."""
    from cachetree import CacheTree

    tree = CacheTree(root)
    for min_area in (20, 40):
        with tree.node("qc", params={"min_area": min_area, "channel": "DAB"}) as node:
            node.save_json("summary", {"min_area": min_area})
        if min_area == 20:
            with tree.node("qc/per-region", params={"region": 64}) as child:
                child.save_json("counts", {"regions": 64})


def second_model_run(root: Path, stride: int = 64) -> None:
    """The demo's patch model again at another stride: two runs of one step to compare."""
    from cachetree import CacheTree
    from cachetree.canvas import Canvas
    from cachetree.demo.quick import _batches, load_sample_image, patch_boxes, patch_model

    tree = CacheTree(root)
    rgb = load_sample_image()
    params = {"patch": 128, "stride": stride, "weights": "gaussian"}
    with tree.node(f"model-stride{stride}", params=params) as node:
        canvas = Canvas(
            node,
            rgb.shape[:2],
            {"stains": 3, "foreground": 1},
            weights="gaussian",
            tile=128,
            channel_names={"stains": ["hematoxylin", "eosin", "DAB"]},
        )
        for patches, boxes in _batches(rgb, patch_boxes(rgb.shape[:2], 128, stride), 8):
            canvas.add(patch_model(patches), boxes)
        canvas.finalize(commit=False)


# -- driving napari ---------------------------------------------------------------------------
def wait(condition, timeout: float = 30.0) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        QApplication.processEvents()
        if condition():
            for _ in range(5):  # let the last repaints happen
                QApplication.processEvents()
                time.sleep(0.02)
            return
        time.sleep(0.02)
    raise TimeoutError("the widget did not finish in time")


def layer_names(viewer) -> list[str]:
    return [layer.name for layer in viewer.layers]


def save(image: np.ndarray, path: Path) -> None:
    import imageio.v3 as iio

    iio.imwrite(path, image)
    print(f"wrote {path.relative_to(REPO)} {image.shape[1]}x{image.shape[0]}")


def grab(widget, path: Path) -> None:
    """Save a dock widget, cut below its content (docks are taller than what they hold)."""
    from qtpy.QtCore import QRect

    height = min(widget.height(), widget.sizeHint().height() + 8)
    widget.grab(QRect(0, 0, widget.width(), height)).save(str(path))
    print(f"wrote {path.relative_to(REPO)} {widget.width()}x{height}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="cachetree-screens-"))
    demo = tmp / "cachetree-demo"
    os.environ["CACHETREE_DEMO_DIR"] = str(demo)

    import napari
    from cachetree.napari._node_tree import ROLE

    viewer = napari.Viewer(title="napari + cachetree")
    viewer.window._qt_window.resize(1500, 940)
    wait(lambda: True)

    # 1. File > Open Sample > Demo cache tree: the slide at once, the tree built in a worker
    viewer.open_sample("cachetree", "demo")
    wait(lambda: "density:density" in viewer.layers, timeout=300)
    save(viewer.screenshot(canvas_only=False, flash=False), args.out / "sample.png")

    spilled_canvas(demo)
    parts_to_combine(demo)
    leftovers(demo)
    stale_child(demo)
    second_model_run(demo)

    # 2. the browser: the density heatmap over the slide, its plot in the plot pane
    _, browser = viewer.window.add_plugin_dock_widget("cachetree", "Cache tree browser")
    wait(lambda: browser.row("density") is not None and not browser.busy)
    for layer in viewer.layers:
        layer.visible = layer.name in ("input:ihc", "density:density")
    for path in ("density",):
        browser.row(path).setExpanded(True)
    wait(lambda: not browser.busy)
    browser.open_row(browser.select("density", "density.png"))
    wait(lambda: not browser.busy)
    viewer.reset_view()
    wait(lambda: True)
    save(viewer.screenshot(canvas_only=False, flash=False), args.out / "browser.png")

    # 3. the spilled, unfinished canvas over the slide, normalised lazily (default display)
    for layer in viewer.layers:
        layer.visible = layer.name == "input:ihc"
    browser.open_row(browser.select("predict"))
    wait(  # named with the share merged: "predict:dab (NN % merged)"
        lambda: not browser.busy and any(n.startswith("predict:dab") for n in layer_names(viewer))
    )
    viewer.reset_view()
    wait(lambda: True)
    save(viewer.screenshot(canvas_only=False, flash=False), args.out / "spilled-canvas.png")

    # 4. one spill part, where it sits on the canvas (its own colormap)
    browser.row("predict").setExpanded(True)
    wait(lambda: not browser.busy)
    parts = browser.row("predict").child(0)
    parts.setExpanded(True)
    spills = [
        parts.child(i)
        for i in range(parts.childCount())
        if parts.child(i).text(0).startswith("canvas-spill")
    ]
    spill = max(spills, key=lambda row: row.data(0, ROLE).part.nbytes)  # the largest
    browser.tree.setCurrentItem(spill)
    browser.tree.scrollToItem(spill)
    browser.open_selected()
    part_layer = f"predict:parts/{spill.text(0)}/dab"
    wait(lambda: not browser.busy and part_layer in viewer.layers)
    for layer in viewer.layers:
        if layer.name.startswith(("predict:stains", f"predict:parts/{spill.text(0)}/stains")):
            layer.visible = False
    wait(lambda: True)
    save(viewer.screenshot(canvas_only=False, flash=False), args.out / "spill-part.png")
    browser.row("predict").setExpanded(False)

    # 5. a stale node: the details say which parameter change made it stale
    browser.row("qc").setExpanded(True)
    wait(lambda: not browser.busy and browser.row("qc/per-region") is not None)
    browser.select("qc/per-region")
    wait(lambda: True)
    browser.grab().save(str(args.out / "stale.png"))
    print(f"wrote {(args.out / 'stale.png').relative_to(REPO)}")

    # 6. Commit the node whose writer died: it asks first, saying what is missing
    _, commit = viewer.window.add_plugin_dock_widget("cachetree", "Commit")
    browser.refresh()
    wait(lambda: not browser.busy and browser.row("report") is not None)
    browser.select("report")
    wait(lambda: commit.run_button.isEnabled())
    commit.run()
    wait(lambda: commit.confirm_box is not None and commit.confirm_box.isVisible())
    commit.confirm_box.grab().save(str(args.out / "commit-confirm.png"))
    print(f"wrote {(args.out / 'commit-confirm.png').relative_to(REPO)}")
    commit.confirm_box.button(commit.confirm_box.StandardButton.Yes).click()
    wait(lambda: not commit.busy and commit.confirm_box is None)
    wait(lambda: not commit.busy)
    grab(commit, args.out / "commit.png")

    # 7. Combine the workers' parts
    _, combine = viewer.window.add_plugin_dock_widget("cachetree", "Combine")
    browser.select("counts")
    wait(lambda: combine.run_button.isEnabled())
    combine.run()
    wait(lambda: not combine.busy)
    grab(combine, args.out / "combine.png")

    # 8. Clean: the dry run, waiting for confirmation
    _, clean = viewer.window.add_plugin_dock_widget("cachetree", "Clean")
    browser.select("")
    wait(lambda: not browser.busy)
    clean.run()
    wait(lambda: not clean.busy and clean.plan is not None)
    grab(clean, args.out / "clean.png")

    # 9. Compare two runs of the model step: parameters side by side, lazy differences
    for layer in list(viewer.layers):
        layer.visible = False
    browser.select("model")
    browser.row("model-stride64").setSelected(True)
    wait(lambda: browser.compare_button.isEnabled())
    browser.compare_selected()
    wait(lambda: not browser.busy and "model - model-stride64:foreground" in viewer.layers)
    for layer in viewer.layers:
        layer.visible = layer.name == "model - model-stride64:foreground"
    viewer.reset_view()
    wait(lambda: True)
    save(viewer.screenshot(canvas_only=False, flash=False), args.out / "compare.png")

    viewer.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
