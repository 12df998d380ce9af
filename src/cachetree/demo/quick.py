"""The quick demo: the 512 x 512 sample image analysed step by step, every step a cache node.

Run it with ``cachetree demo`` (or :func:`run_demo`). It uses the public API only, so it
doubles as an example of a pipeline built on cachetree:

1. ``input``    the sample image saved as an OME-Zarr (channels first);
2. ``model``    a small patch "model" with two heads (stain probabilities for hematoxylin,
   eosin and DAB, and a foreground probability) run over overlapping patches and merged by a
   :class:`~cachetree.canvas.Canvas` whose accumulators do not fit the memory budget, so it
   spills to disk while it runs;
3. ``nuclei``   nuclei labelled from the merged hematoxylin probability (OME-Zarr labels,
   stored under that probability image where OME-Zarr viewers find them);
4. ``density``  nuclei per region: two independent worker processes each count part of the
   image and write a part into the child node ``density/counts``, a combine step joins them;
   the heatmap is saved with a log, JSON metrics and a plot.

Running it again reuses every committed node; changing a parameter recomputes only the
nodes that depend on it.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..canvas import Canvas
from ..results import add_part, combine, set_combiner
from ..tree import CacheTree
from ..tree.cdir import cdir_query

__all__ = [
    "SAMPLE_DATA_DIR",
    "DemoParams",
    "Progress",
    "count_nuclei",
    "density_figure",
    "density_worker",
    "label_nuclei",
    "load_sample_image",
    "patch_boxes",
    "patch_model",
    "run_demo",
]


SAMPLE_DATA_DIR = Path(__file__).resolve().parent.parent / "sample_data"
"""Folder of the shipped sample data (``ihc.npz``)."""

# Optical density of pure hematoxylin, eosin and DAB in red, green and blue.
_STAIN_OD = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_TO_STAINS = np.linalg.inv(_STAIN_OD)
_OD_OF_UINT8 = -np.log10(np.maximum(np.arange(256, dtype=np.float32), 1.0) / 255.0)

Progress = bool | Callable[..., Any]
"""``False`` (no bars), ``True`` (tqdm) or a tqdm-compatible class such as napari's
``progress``."""


@dataclass(frozen=True)
class DemoParams:
    """Parameters of the demo pipeline; change one to see which nodes are recomputed."""

    patch: int = 128
    """Edge of the square patches the model sees."""
    stride: int = 96
    """Step between patches (smaller than ``patch``: patches overlap)."""
    nuclei_threshold: float = 0.5
    """Hematoxylin probability above which a foreground pixel belongs to a nucleus."""
    min_nucleus_pixels: int = 20
    """Smaller connected components are dropped."""
    region: int = 64
    """Side, in pixels, of the square regions of the density heatmap."""


def load_sample_image() -> np.ndarray:
    """The shipped 512 x 512 RGB immunohistochemistry image (uint8, ``(y, x, 3)``)."""
    with np.load(SAMPLE_DATA_DIR / "ihc.npz") as archive:
        return archive["image"]


def patch_model(rgb_patches: np.ndarray) -> dict[str, np.ndarray]:
    """A stand-in for a trained network: two heads computed from colour alone.

    Parameters
    ----------
    rgb_patches
        ``(N, h, w, 3)`` uint8 patches.

    Returns
    -------
    dict
        ``"stains"``: ``(N, h, w, 3)`` probabilities of hematoxylin, eosin and DAB (softmax
        of the optical densities); ``"foreground"``: ``(N, h, w, 1)`` tissue probability.
    """
    od = _OD_OF_UINT8[rgb_patches]  # -log10(max(v, 1) / 255) of each uint8 value
    foreground = 1.0 / (1.0 + np.exp(-25.0 * (_channel_reduce(np.add, od) - 0.25)))
    logits = od @ _RGB_TO_STAINS.astype(np.float32)  # stain amounts, then 12 x them
    del od  # the stains' steps below work in place: two arrays of the batch's size at most
    np.clip(logits, 0, None, out=logits)
    logits *= 12.0
    logits -= _channel_reduce(np.maximum, logits)
    probabilities = np.exp(logits, out=logits)
    probabilities /= _channel_reduce(np.add, probabilities)
    return {"stains": probabilities, "foreground": foreground.astype(np.float32, copy=False)}


def _channel_reduce(ufunc: np.ufunc, values: np.ndarray) -> np.ndarray:
    """``ufunc`` over the last axis of three channels, kept as a length-1 axis (much faster
    than a ``reduce`` over so short an axis)."""
    return ufunc(ufunc(values[..., 0:1], values[..., 1:2]), values[..., 2:3])


def patch_boxes(shape: tuple[int, int], patch: int, stride: int) -> np.ndarray:
    """Row-major ``[x0, y0, x1, y1]`` boxes covering ``shape`` (the last ones overhang)."""
    ys = range(0, max(shape[0] - patch, 0) + stride, stride)
    xs = range(0, max(shape[1] - patch, 0) + stride, stride)
    return np.array([[x, y, x + patch, y + patch] for y in ys for x in xs], dtype=np.int64)


def _batches(
    rgb: np.ndarray, boxes: np.ndarray, size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    patch = int(boxes[0, 2] - boxes[0, 0])
    padded = np.pad(rgb, ((0, patch), (0, patch), (0, 0)), constant_values=255)
    for start in range(0, len(boxes), size):
        chunk = boxes[start : start + size]
        yield np.stack([padded[y0 : y0 + patch, x0 : x0 + patch] for x0, y0, _, _ in chunk]), chunk


def label_nuclei(
    hematoxylin: np.ndarray, foreground: np.ndarray, threshold: float, min_pixels: int
) -> np.ndarray:
    """Connected components of nucleus pixels larger than ``min_pixels``."""
    from scipy import ndimage

    labels, _ = ndimage.label((hematoxylin > threshold) & (foreground > 0.5))
    sizes = np.bincount(labels.ravel())
    labels[sizes[labels] < min_pixels] = 0
    _, relabelled = np.unique(labels, return_inverse=True)
    return relabelled.reshape(labels.shape).astype(np.uint32)


def count_nuclei(labels: np.ndarray, region: int, rows: tuple[int, int]) -> np.ndarray:
    """Nucleus centroids per ``region`` x ``region`` block, for the block rows ``rows``."""
    ids = labels.ravel()
    keep = ids > 0
    ys, xs = np.divmod(np.nonzero(keep)[0], labels.shape[1])
    ids = ids[keep]
    count = np.bincount(ids)
    present = count > 0
    cy = (np.bincount(ids, weights=ys)[present] / count[present]) // region
    cx = (np.bincount(ids, weights=xs)[present] / count[present]) // region
    grid = np.zeros((rows[1] - rows[0], -(-labels.shape[1] // region)), np.uint16)
    mine = (cy >= rows[0]) & (cy < rows[1])
    np.add.at(grid, ((cy[mine] - rows[0]).astype(int), cx[mine].astype(int)), 1)
    return grid


def density_worker(node_url: str, nuclei_url: str, region: int, rows: tuple[int, int]) -> str:
    """Run in a separate process: count the nuclei of some block rows and write a part."""
    labels = cdir_query(nuclei_url).node.open_image("nuclei", image="hematoxylin")[0].compute()
    part = add_part(
        node_url, "density", {"data": count_nuclei(labels, region, rows)}, order=rows[0]
    )
    return part.name


def density_figure(density: np.ndarray, region: int) -> Any:
    """A matplotlib figure of the heatmap."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3.4), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(density, cmap="magma")
    ax.set_title(f"nuclei per {region}x{region} px region")
    fig.colorbar(im, ax=ax, label="nuclei")
    return fig


def _bar_class(progress: Progress) -> Callable[..., Any]:
    if progress is True:
        return tqdm
    if progress is False:
        return lambda iterable=None, **kwargs: tqdm(iterable, disable=True, **kwargs)
    return progress


def run_demo(
    out: str | os.PathLike[str],
    params: DemoParams | None = None,
    *,
    memory_budget: int | str = "1MiB",
    progress: Progress = False,
    report: Callable[[str], None] = print,
) -> CacheTree:
    """Run (or resume) the demo pipeline into the cache tree at ``out``.

    Parameters
    ----------
    out
        Root of the cache tree (local path or fsspec URL).
    params
        Pipeline parameters; defaults to :class:`DemoParams`.
    memory_budget
        Memory for the model canvas's accumulators (``"1MiB"`` makes it spill).
    progress
        Progress bars: ``True`` for tqdm, or a tqdm-like class (napari's ``progress``).
    report
        Called with one line per step saying whether it was computed or reused.
    """
    params = params or DemoParams()
    bar = _bar_class(progress)
    tree = CacheTree(out)
    rgb = load_sample_image()

    with tree.node("input", params={"sample": "ihc"}) as node:
        if node.writing:
            node.save_image(
                "ihc", np.moveaxis(rgb, -1, 0), axes="cyx", channel_names=["red", "green", "blue"]
            )
        report(f"input:   {node.open_mode.value}")

    model_params = {"patch": params.patch, "stride": params.stride, "weights": "gaussian"}
    with tree.node("model", params=model_params, depends_on=[tree.node("input")]) as node:
        if node.writing:
            boxes = patch_boxes(rgb.shape[:2], params.patch, params.stride)
            canvas = Canvas(
                node,
                rgb.shape[:2],
                {"stains": 3, "foreground": 1},
                weights="gaussian",
                memory_budget=memory_budget,
                order="row-major",
                tile=128,
                channel_names={"stains": ["hematoxylin", "eosin", "DAB"]},
            )
            for patches, batch in bar(
                _batches(rgb, boxes, 8),
                total=-(-len(boxes) // 8),
                desc="model patches",
                unit="batch",
            ):
                canvas.add(patch_model(patches), batch)
            spilled = canvas.stats["spilled_bytes"]
            canvas.finalize(commit=False)
            node.log(
                f"{len(boxes)} patches of {params.patch} px at stride {params.stride}; "
                f"{spilled / 2**20:.1f} MiB of accumulators spilled under a "
                f"{memory_budget} budget"
            )
        report(f"model:   {node.open_mode.value}")
        hematoxylin = node.open_image("stains")[0][0].compute()
        foreground = node.open_image("foreground")[0].compute()

    nuclei_params = {"threshold": params.nuclei_threshold, "min_pixels": params.min_nucleus_pixels}
    with tree.node("nuclei", params=nuclei_params, depends_on=[tree.node("model")]) as node:
        if node.writing:
            labels = label_nuclei(
                hematoxylin, foreground, params.nuclei_threshold, params.min_nucleus_pixels
            )
            node.save_image("hematoxylin", hematoxylin)
            node.save_labels("nuclei", labels, image="hematoxylin")
            node.log(
                f"{labels.max()} nuclei with hematoxylin probability > {params.nuclei_threshold}"
            )
        report(f"nuclei:  {node.open_mode.value}")

    with tree.node(
        "density", params={"region": params.region}, depends_on=[tree.node("nuclei")]
    ) as node:
        if node.writing:
            counts = node.child("counts").open()
            set_combiner(counts, "concatenate")
            block_rows = -(-rgb.shape[0] // params.region)
            halves = [(0, block_rows // 2), (block_rows // 2, block_rows)]
            spawn = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(len(halves), mp_context=spawn) as pool:
                jobs = [
                    pool.submit(
                        density_worker, counts.url, tree.node("nuclei").url, params.region, rows
                    )
                    for rows in halves
                ]
                parts = [job.result() for job in bar(jobs, desc="density workers", unit="part")]
            node.log(f"parts {parts} written by {len(halves)} worker processes")
            combine(counts, progress=progress is not False)
            density = counts.keyed()["density"]
            node.save_image(
                "density",
                density,
                scale=(params.region, params.region),
                translation=((params.region - 1) / 2,) * 2,
            )
            node.save_json(
                "metrics",
                {
                    "nuclei": int(density.sum()),
                    "params": asdict(params),
                    "max_per_region": int(density.max()),
                    "mean_per_region": float(density.mean()),
                },
            )
            node.save_figure("density", density_figure(density, params.region))
            node.log(f"densest region holds {density.max()} nuclei")
        report(f"density: {node.open_mode.value}")
    return tree
