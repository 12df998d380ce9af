"""The demo pipeline: a histology image analysed step by step, every step a cache node.

Run it with ``cachetree demo`` (or :func:`run_demo`). It is written against the public API
only, so it doubles as an example of how a pipeline uses cachetree:

1. ``input``      the sample image saved as an OME-Zarr (channels first);
2. ``stains``     colour deconvolution into hematoxylin and DAB optical densities;
3. ``nuclei``     hematoxylin thresholded and labelled (an OME-Zarr labels image);
4. ``density``    nuclei per region as a heatmap, with a log, JSON metrics and a plot.

Running it again reuses every committed node; changing a parameter recomputes only the
nodes that depend on it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .tree import CacheTree

SAMPLE_DATA_DIR = Path(__file__).resolve().parent / "sample_data"
"""Folder of the shipped sample data (``ihc.npz``)."""

# Stain vectors (optical density per RGB channel) of hematoxylin, eosin and DAB.
_HED_FROM_RGB = np.linalg.inv(
    np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64)
)


@dataclass(frozen=True)
class DemoParams:
    """Parameters of the demo pipeline; change one to see which nodes are recomputed."""

    nuclei_threshold: float = 0.25
    """Hematoxylin optical density above which a pixel belongs to a nucleus."""
    min_nucleus_pixels: int = 20
    """Smaller connected components are dropped."""
    region: int = 64
    """Side, in pixels, of the square regions of the density heatmap."""


def load_sample_image() -> np.ndarray:
    """The shipped 512 x 512 RGB immunohistochemistry image (uint8, ``(y, x, 3)``)."""
    with np.load(SAMPLE_DATA_DIR / "ihc.npz") as archive:
        return archive["image"]


def separate_stains(rgb: np.ndarray) -> np.ndarray:
    """Hematoxylin, eosin and DAB optical densities, ``(3, y, x)`` float32."""
    od = -np.log10(np.maximum(rgb.astype(np.float64), 1.0) / 255.0)
    return np.clip(np.einsum("yxc,cs->syx", od, _HED_FROM_RGB), 0, None).astype(np.float32)


def label_nuclei(hematoxylin: np.ndarray, threshold: float, min_pixels: int) -> np.ndarray:
    """Connected components of ``hematoxylin > threshold`` larger than ``min_pixels``."""
    from scipy import ndimage

    labels, _ = ndimage.label(hematoxylin > threshold)
    sizes = np.bincount(labels.ravel())
    labels[sizes[labels] < min_pixels] = 0
    _, relabelled = np.unique(labels, return_inverse=True)
    return relabelled.reshape(labels.shape).astype(np.uint32)


def nuclei_density(labels: np.ndarray, region: int) -> np.ndarray:
    """Number of nucleus centroids in each ``region`` x ``region`` block."""
    ids = labels.ravel()
    ys, xs = np.divmod(np.arange(ids.size), labels.shape[1])
    keep = ids > 0
    count = np.bincount(ids[keep])
    cy = np.bincount(ids[keep], weights=ys[keep])[1:] / count[1:]
    cx = np.bincount(ids[keep], weights=xs[keep])[1:] / count[1:]
    grid = np.zeros((-(-labels.shape[0] // region), -(-labels.shape[1] // region)), np.uint16)
    np.add.at(grid, ((cy // region).astype(int), (cx // region).astype(int)), 1)
    return grid


def density_figure(density: np.ndarray, region: int):
    """A matplotlib figure of the heatmap."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3.4), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(density, cmap="magma")
    ax.set_title(f"nuclei per {region}x{region} px region")
    fig.colorbar(im, ax=ax, label="nuclei")
    return fig


def run_demo(
    out: str | os.PathLike[str],
    params: DemoParams | None = None,
    *,
    report: Callable[[str], None] = print,
) -> CacheTree:
    """Run (or resume) the demo pipeline into the cache tree at ``out``.

    Parameters
    ----------
    out
        Root of the cache tree (local path or fsspec URL).
    params
        Pipeline parameters; defaults to :class:`DemoParams`.
    report
        Called with one line per step saying whether it was computed or reused.
    """
    params = params or DemoParams()
    tree = CacheTree(out)
    rgb = load_sample_image()

    with tree.node("input", params={"sample": "ihc"}) as node:
        if node.writing:
            node.save_image(
                "ihc", np.moveaxis(rgb, -1, 0), axes="cyx", channel_names=["red", "green", "blue"]
            )
        report(f"input:   {node.open_mode.value}")

    with tree.node("stains", depends_on=[tree.node("input")]) as node:
        if node.writing:
            node.save_image(
                "hed",
                separate_stains(rgb),
                axes="cyx",
                channel_names=["hematoxylin", "eosin", "DAB"],
            )
            node.log("colour deconvolution with the Ruifrok-Johnston H&E-DAB vectors")
        report(f"stains:  {node.open_mode.value}")
        hematoxylin = node.open_image("hed")[0][0].compute()

    nuclei_params = {"threshold": params.nuclei_threshold, "min_pixels": params.min_nucleus_pixels}
    with tree.node("nuclei", params=nuclei_params, depends_on=[tree.node("stains")]) as node:
        if node.writing:
            labels = label_nuclei(hematoxylin, params.nuclei_threshold, params.min_nucleus_pixels)
            node.save_labels("nuclei", labels)
            node.log(f"{labels.max()} nuclei above OD {params.nuclei_threshold}")
        report(f"nuclei:  {node.open_mode.value}")
        labels = node.open_image("nuclei")[0].compute()

    with tree.node(
        "density", params={"region": params.region}, depends_on=[tree.node("nuclei")]
    ) as node:
        if node.writing:
            density = nuclei_density(labels, params.region)
            node.save_image(
                "density",
                density,
                scale=(params.region, params.region),
                translation=((params.region - 1) / 2,) * 2,
            )
            node.save_json(
                "metrics",
                {
                    "nuclei": int(labels.max()),
                    "params": asdict(params),
                    "max_per_region": int(density.max()),
                    "mean_per_region": float(density.mean()),
                },
            )
            node.save_figure("density", density_figure(density, params.region))
            node.log(f"densest region holds {density.max()} nuclei")
        report(f"density: {node.open_mode.value}")
    return tree
