"""Time to the first rendered frame of canvases of any size in napari, finished or still merging.

Run under an X server (``xvfb-run -a python benchmarks/huge_canvas.py``; ``--help`` for
sizes). In one invocation it

1. builds a cache tree with, for each size (2 048², 32 768² and 100 000² by default), two
   canvas nodes merged with the public :class:`~cachetree.canvas.Canvas` API from the same
   patches (256 px, one float32 head, in any order) over five tissue-like islands:
   ``finished-<size>``, finalised (OME-Zarr pyramid, 512 x 512 chunks), and
   ``unfinished-<size>``, stopped after 90 % of its batches (a checkpoint, then the process
   lets go: spill parts, staging area and preview on disk, as a killed run leaves them).
   Only the islands are merged (a masked slide), so a 100 000² canvas costs a few MB of disk;
2. opens a real napari viewer and, for each node in turn, times ``viewer.open(node,
   plugin="cachetree")`` up to the first frame drawn with data (``viewer.screenshot``),
   with napari's chunk cache off so every trial reads from storage;
3. reports the median times, the level on screen and its chunks in view, and the ratios
   unfinished / finished per size (the target is at most 1.5) and largest / smallest per
   state (flat in canvas size means near 1).

A frame counts as drawn when the screenshot shows data pixels (not only background).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

TILE = 512
PATCH = 256


def island_value(y: np.ndarray, x: np.ndarray, islands: list[tuple[float, float, float]]):
    """Smooth blobs (a stand-in for a probability map) at level-0 pixel coordinates."""
    out = np.zeros(np.broadcast_shapes(y.shape, x.shape), np.float32)
    for cy, cx, radius in islands:
        d2 = ((y - cy) ** 2 + (x - cx) ** 2) / radius**2
        out += np.where(d2 < 1, (1 - d2) * (0.6 + 0.4 * np.cos(x / 37.0) * np.sin(y / 53.0)), 0)
    return np.clip(out, 0, 1).astype(np.float32)


def islands_for(size: int) -> list[tuple[float, float, float]]:
    """Five islands spread over the canvas, each about 2 000 px wide (or a fifth of a small one)."""
    radius = min(1000.0, size / 10)
    spots = [(0.5, 0.5), (0.25, 0.3), (0.7, 0.2), (0.3, 0.75), (0.8, 0.8)]
    return [(fy * size, fx * size, radius) for fy, fx in spots]


def island_patches(size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Batches of 32 patches (values, boxes) covering the islands, in a shuffled order."""
    islands = islands_for(size)
    boxes = set()
    for cy, cx, radius in islands:
        for y in range(max(0, int(cy - radius)) // 192 * 192, min(size, int(cy + radius)), 192):
            for x in range(max(0, int(cx - radius)) // 192 * 192, min(size, int(cx + radius)), 192):
                boxes.add((x, y, x + PATCH, y + PATCH))
    order = np.random.default_rng(0).permutation(len(boxes))
    ordered = np.array(sorted(boxes), np.int64)[order]
    batches = []
    for i in range(0, len(ordered), 32):
        chunk = ordered[i : i + 32]
        ys = chunk[:, 1, None, None] + np.arange(PATCH)[None, :, None] + 0.0
        xs = chunk[:, 0, None, None] + np.arange(PATCH)[None, None, :] + 0.0
        values = island_value(ys, xs, islands)[..., None]
        batches.append((values, chunk))
    return batches


def build_tree(root: Path, sizes: list[int]) -> dict[str, tuple[Path, int]]:
    """Finished and unfinished canvas nodes of every size; node path and batches merged."""
    from cachetree import CacheTree
    from cachetree.canvas import Canvas

    tree = CacheTree(root)
    out = {}
    for size in sizes:
        batches = island_patches(size)
        for state in ("finished", "unfinished"):
            name = f"{state}-{size}"
            node = tree.node(name, params={"size": size}).open()
            canvas = Canvas(node, (size, size), {"tumour": 1}, tile=TILE, order="any")
            sent = batches if state == "finished" else batches[: max(1, len(batches) * 9 // 10)]
            for values, boxes in sent:
                canvas.add({"tumour": values}, boxes)
            if state == "finished":
                canvas.finalize()
            else:
                canvas.checkpoint()
                canvas.close()
                node.abandon()
            out[name] = (root / name, len(sent))
    return out


def first_frame_seconds(viewer, node: Path, save: Path | None = None) -> tuple[float, int, int]:
    """Seconds from ``viewer.open`` to a drawn frame with data; the level shown; its chunks."""
    viewer.layers.clear()
    start = time.perf_counter()
    (layer,) = viewer.open(str(node), plugin="cachetree")
    shot = viewer.screenshot(canvas_only=True, flash=False)
    seconds = time.perf_counter() - start
    rgb = shot[..., :3].astype(int)
    if not (np.abs(rgb - rgb[0, 0]).sum(axis=-1) > 60).any():
        raise RuntimeError(f"the frame of {node.name} shows no data")
    if save is not None:
        import imageio.v3 as iio

        iio.imwrite(save / f"first-frame-{node.name}.png", shot)
    level = layer.data_level
    (y0, x0), (y1, x1) = np.asarray(layer.corner_pixels)[:, -2:]
    chunk = layer.data[level].chunksize[-1]
    chunks = (y1 // chunk - y0 // chunk + 1) * (x1 // chunk - x0 // chunk + 1)
    return seconds, int(level), int(chunks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[2_048, 32_768, 100_000], help="canvas edges"
    )
    parser.add_argument("--repeat", type=int, default=5, help="trials per canvas")
    parser.add_argument("--save-frames", type=Path, help="folder to save the last frames in")
    args = parser.parse_args(argv)

    from qtpy.QtWidgets import QApplication

    import napari

    with tempfile.TemporaryDirectory(prefix="cachetree-huge-canvas-") as tmp:
        start = time.perf_counter()
        nodes = build_tree(Path(tmp) / "tree", args.sizes)
        print(f"built the tree in {time.perf_counter() - start:.1f} s")
        for name, (path, batches) in nodes.items():
            disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            print(f"  {name:>18}: {batches} batches merged, {disk / 1e6:.1f} MB on disk")

        napari.utils.resize_dask_cache(0)  # every trial reads from storage
        viewer = napari.Viewer(show=True)
        viewer.window._qt_window.resize(1200, 900)
        QApplication.processEvents()
        warm = nodes[f"finished-{args.sizes[0]}"][0]
        first_frame_seconds(viewer, warm)  # warm up GL, imports, the reader
        times: dict[str, list[float]] = {name: [] for name in nodes}
        shown: dict[str, tuple[int, int]] = {}
        for _ in range(args.repeat):
            for name, (path, _batches) in nodes.items():  # interleaved: drift hits all alike
                seconds, level, chunks = first_frame_seconds(viewer, path, args.save_frames)
                times[name].append(seconds)
                shown[name] = (level, chunks)
        viewer.close()

    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"\ntime to first rendered frame (median of {args.repeat}, napari chunk cache off)")
    for name in nodes:
        level, chunks = shown[name]
        print(
            f"  {name:>18} {median[name]:6.3f} s   (level {level} on screen, {chunks} chunk(s) "
            f"of it in view; min {min(times[name]):.3f} s, max {max(times[name]):.3f} s)"
        )
    print("ratio unfinished / finished (target <= 1.5)")
    for size in args.sizes:
        ratio = median[f"unfinished-{size}"] / median[f"finished-{size}"]
        print(f"  {size:>7} x {size:<7} {ratio:.2f}")
    small, large = min(args.sizes), max(args.sizes)
    for state in ("finished", "unfinished"):
        ratio = median[f"{state}-{large}"] / median[f"{state}-{small}"]
        print(f"ratio {state} {large}² / {small}²: {ratio:.2f}  (flat in canvas size: near 1)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
