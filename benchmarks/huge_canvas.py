"""Time to the first rendered frame of a huge canvas in napari, against a small one.

Run under an X server (``xvfb-run -a python benchmarks/huge_canvas.py``; ``--help`` for
sizes). In one invocation it

1. builds a cache tree with two canvas nodes, each holding one head as an OME-Zarr pyramid
   (NGFF 0.4, zarr format 2, 512 x 512 float32 chunks, levels halved down to 256 px):
   ``small`` of 2 000 x 2 000 and ``huge`` of 100 000 x 100 000 pixels. The huge one is
   *sparse*: only the chunks that touch a few tissue-like islands are written (zarr reads a
   missing chunk as the fill value), so the 40 GB canvas costs a few MB of disk;
2. opens a real napari viewer and, for each canvas in turn, times ``viewer.open(node,
   plugin="cachetree")`` up to the first frame drawn with data (``viewer.screenshot``),
   with napari's chunk cache off so every trial reads from storage;
3. reports the median times and their ratio (huge / small). Flat in canvas size means a
   ratio near 1: only the pyramid level on screen is read, whatever the size of level 0.

A frame counts as drawn when the screenshot shows data pixels (not only background).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from numcodecs import Blosc

TILE = 512
MIN_SIZE = 256


def island_value(y: np.ndarray, x: np.ndarray, islands: list[tuple[float, float, float]]):
    """Smooth blobs (a stand-in for a probability map) at level-0 pixel coordinates."""
    out = np.zeros(np.broadcast_shapes(y.shape, x.shape), np.float32)
    for cy, cx, radius in islands:
        d2 = ((y - cy) ** 2 + (x - cx) ** 2) / radius**2
        out += np.where(d2 < 1, (1 - d2) * (0.6 + 0.4 * np.cos(x / 37.0) * np.sin(y / 53.0)), 0)
    return np.clip(out, 0, 1).astype(np.float32)


def level_shapes(size: int) -> list[int]:
    """Edge of every pyramid level: halved (rounding up) until at most MIN_SIZE."""
    sizes = [size]
    while sizes[-1] > MIN_SIZE:
        sizes.append(-(-sizes[-1] // 2))
    return sizes


def write_sparse_pyramid(path: Path, size: int, islands: list[tuple[float, float, float]]):
    """Write an OME-Zarr pyramid where only the chunks touching ``islands`` exist.

    Returns the number of chunks written.
    """
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    sizes = level_shapes(size)
    written = 0
    for level, edge in enumerate(sizes):
        factor = 2**level
        array = group.create_array(
            str(level),
            shape=(edge, edge),
            chunks=(min(TILE, edge),) * 2,
            dtype="f4",
            fill_value=0,
            compressors=Blosc(cname="zstd", clevel=3, shuffle=Blosc.SHUFFLE),
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )
        chunk = array.chunks[0]
        wanted: set[tuple[int, int]] = set()
        for cy, cx, radius in islands:  # chunks whose box meets an island's bounding box
            lo = [max(0, int((c - radius) / factor) // chunk) for c in (cy, cx)]
            hi = [min(edge - 1, int((c + radius) / factor)) // chunk for c in (cy, cx)]
            wanted |= {(i, j) for i in range(lo[0], hi[0] + 1) for j in range(lo[1], hi[1] + 1)}
        for i, j in sorted(wanted):
            ys = np.arange(i * chunk, min((i + 1) * chunk, edge))
            xs = np.arange(j * chunk, min((j + 1) * chunk, edge))
            # value at the level-0 position of each pixel centre (point-sampled pyramid)
            block = island_value(
                ((ys + 0.5) * factor - 0.5)[:, None], ((xs + 0.5) * factor - 0.5)[None, :], islands
            )
            array[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1] = block
            written += 1
    datasets = []
    for level in range(len(sizes)):
        factor = 2**level
        shift = (factor - 1) / 2
        datasets.append(
            {
                "path": str(level),
                "coordinateTransformations": [
                    {"type": "scale", "scale": [float(factor)] * 2},
                    *([{"type": "translation", "translation": [shift] * 2}] if level else []),
                ],
            }
        )
    group.attrs.update(
        {
            "multiscales": [
                {
                    "version": "0.4",
                    "name": path.name.removesuffix(".ome.zarr"),
                    "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
                    "datasets": datasets,
                    "type": "mean",
                }
            ],
            "omero": {
                "version": "0.4",
                "channels": [
                    {
                        "label": "tumour",
                        "color": "FFFFFF",
                        "active": True,
                        "window": {"min": 0.0, "max": 1.0, "start": 0.0, "end": 1.0},
                    }
                ],
            },
        }
    )
    return written


def islands_for(size: int) -> list[tuple[float, float, float]]:
    """Five islands spread over the canvas, each about 2 000 px wide (or a fifth of a small one)."""
    radius = min(1000.0, size / 10)
    spots = [(0.5, 0.5), (0.25, 0.3), (0.7, 0.2), (0.3, 0.75), (0.8, 0.8)]
    return [(fy * size, fx * size, radius) for fy, fx in spots]


def build_tree(root: Path, sizes: dict[str, int]) -> dict[str, tuple[Path, int]]:
    """A cache tree with one committed canvas node per size; node path and chunks written."""
    from cachetree import CacheTree

    tree = CacheTree(root)
    out = {}
    for name, size in sizes.items():
        with tree.node(name, params={"size": size}, kind="canvas") as node:
            if node.writing:
                chunks = write_sparse_pyramid(
                    Path(node.item("tumour.ome.zarr").path), size, islands_for(size)
                )
        out[name] = (root / name, chunks)
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
    parser.add_argument("--huge", type=int, default=100_000, help="edge of the huge canvas")
    parser.add_argument("--small", type=int, default=2_000, help="edge of the small canvas")
    parser.add_argument("--repeat", type=int, default=5, help="trials per canvas")
    parser.add_argument("--save-frames", type=Path, help="folder to save the last frames in")
    args = parser.parse_args(argv)

    from qtpy.QtWidgets import QApplication

    import napari

    with tempfile.TemporaryDirectory(prefix="cachetree-huge-canvas-") as tmp:
        start = time.perf_counter()
        nodes = build_tree(Path(tmp) / "tree", {"small": args.small, "huge": args.huge})
        print(f"built the tree in {time.perf_counter() - start:.1f} s")
        for name, (_path, chunks) in nodes.items():
            size = args.small if name == "small" else args.huge
            levels = len(level_shapes(size))
            total = sum(math.ceil(e / TILE) ** 2 for e in level_shapes(size))
            print(
                f"  {name:>5}: {size} x {size} px, {levels} levels, {chunks} of {total} chunks "
                f"written ({size * size * 4 / 1e9:.3g} GB as dense float32)"
            )

        napari.utils.resize_dask_cache(0)  # every trial reads from storage
        viewer = napari.Viewer(show=True)
        viewer.window._qt_window.resize(1200, 900)
        QApplication.processEvents()
        first_frame_seconds(viewer, nodes["small"][0])  # warm up GL, imports, the reader
        times: dict[str, list[float]] = {"small": [], "huge": []}
        shown: dict[str, tuple[int, int]] = {}
        for _ in range(args.repeat):
            for name in ("small", "huge"):  # interleaved, so drift hits both alike
                seconds, level, chunks = first_frame_seconds(
                    viewer, nodes[name][0], args.save_frames
                )
                times[name].append(seconds)
                shown[name] = (level, chunks)
        viewer.close()

    print(f"\ntime to first rendered frame (median of {args.repeat}, napari chunk cache off)")
    for name, size in (("small", args.small), ("huge", args.huge)):
        level, chunks = shown[name]
        print(
            f"  {name:>5} {size:>7} x {size:<7} {statistics.median(times[name]):6.3f} s   "
            f"(level {level} on screen, {chunks} chunk(s) of it visible; "
            f"min {min(times[name]):.3f} s, max {max(times[name]):.3f} s)"
        )
    ratio = statistics.median(times["huge"]) / statistics.median(times["small"])
    print(f"  ratio huge / small: {ratio:.2f}  (flat in canvas size means near 1)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
