"""The whole-slide demo: the quick demo's pipeline on a synthetic N x N slide.

Run it with ``cachetree demo --size N`` (or :func:`run_wsi`). Every stage is a cache node;
nothing the size of the slide is ever held in memory:

1. ``slide``    the synthetic slide (:class:`~cachetree.demo.slide.SyntheticSlide`), written
   tile by tile as an OME-Zarr pyramid;
2. ``tissue``   the tissue mask, computed on a low-resolution level of the pyramid;
3. ``model``    the two-head patch model over the patches touching tissue (a grid with
   gaps), merged by a row-major :class:`~cachetree.canvas.Canvas` with the default memory
   budget, checkpointed every few patch rows;
4. ``nuclei``   nuclei labelled blockwise with consistent ids
   (``cachetree.demo.nuclei``);
5. ``density``  nuclei per region counted by worker processes, one part per strip of rows
   in the child node ``density/counts``, then combined (``cachetree.demo.density``);
6. ``report``   wall time, megapixels per second and peak memory (this process and its
   children) of every stage of this run, as JSON, a log and a plot.

Killed at any point (Ctrl-C, SIGKILL), the same call resumes: committed nodes are reused,
the canvas continues from its last checkpoint and density strips already written are not
counted again; the result equals that of an uninterrupted run.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..fs.allocator import release_free_memory
from ..results import combine, set_combiner
from ..tree import CacheTree
from ..tree.node import Node
from ..tree.parts import list_parts
from .density import COMBINER, count_strip
from .levels import Plane, full_resolution
from .model import merge_model, tissue_boxes
from .quick import Progress, _bar_class, density_figure
from .slide import SyntheticSlide, rgb_to_stains
from .stages import StageClock, return_large_blocks_at_once, stages_figure

__all__ = ["WsiParams", "run_wsi"]


@dataclass(frozen=True)
class WsiParams:
    """Parameters of the whole-slide demo."""

    size: int = 32768
    """Edge of the square synthetic slide in pixels."""
    seed: int = 0
    """Seed of the synthetic slide."""
    patch: int = 256
    """Edge of the model's square patches."""
    stride: int = 224
    """Step between patches (they overlap by ``patch - stride``)."""
    batch: int = 32
    """Patches per model batch."""
    mask_factor: int = 32
    """Downsampling of the level the tissue mask is computed on (at most the coarsest)."""
    tissue_density: float = 0.2
    """Summed optical density above which a pixel of the mask level is tissue."""
    nuclei_threshold: float = 0.5
    """Smoothed hematoxylin probability above which a tissue pixel belongs to a nucleus."""
    sigma: float = 1.0
    """Gaussian smoothing of the hematoxylin probability, in pixels."""
    block: int = 2048
    """Edge of the blocks nuclei are labelled in."""
    region: int = 256
    """Side of the square regions of the density heatmap."""
    strip: int = 2048
    """Rows of labels per density worker task (a multiple of ``region``)."""
    checkpoint_rows: int = 16
    """The canvas is checkpointed after every this many patch rows."""


def _mpx(params: WsiParams) -> float:
    return params.size * params.size / 1e6


def run_wsi(
    out: str,
    params: WsiParams | None = None,
    *,
    memory_budget: int | str | None = None,
    workers: int = 2,
    progress: Progress = False,
    report: Callable[[str], None] = print,
) -> tuple[CacheTree, StageClock]:
    """Run (or resume) the whole-slide demo into the cache tree at ``out``.

    Parameters
    ----------
    out
        Root of the cache tree (local path or fsspec URL).
    params
        Pipeline parameters; defaults to :class:`WsiParams` (a 32 768 px slide).
    memory_budget
        Memory for the model canvas's accumulators (None: the canvas default).
    workers
        Worker processes counting nuclei.
    progress
        Progress bars: ``True`` for tqdm, or a tqdm-like class.
    report
        Called with one line per stage: what the cache did, time and peak memory.

    Returns
    -------
    tree, clock
        The tree and the stage timings of this run.

    Notes
    -----
    The run fixes glibc's mmap threshold of this process at 256 KiB
    (:func:`~cachetree.demo.stages.return_large_blocks_at_once`), so the arrays a stage's
    threads free leave the process instead of staying in per-thread heaps.
    """
    params = params or WsiParams()
    if params.strip % params.region:
        raise ValueError(f"strip ({params.strip}) must be a multiple of region ({params.region})")
    bar = _bar_class(progress)
    return_large_blocks_at_once()  # freed arrays leave the process: see its docstring
    tree = CacheTree(out)
    clock = StageClock()
    run = _Run(tree, params, clock, bar, report)
    run.progress = progress is not False
    try:
        run.slide()
        run.tissue()
        run.model(memory_budget)
        run.nuclei()
        run.density(workers)
        run.report()
    finally:
        clock.stop()
    return tree, clock


class _Run:
    """The stages of one run of the whole-slide demo."""

    def __init__(
        self,
        tree: CacheTree,
        params: WsiParams,
        clock: StageClock,
        bar: Callable[..., Any],
        report: Callable[[str], None],
    ):
        self.tree, self.params, self.clock, self.bar, self.say = tree, params, clock, bar, report
        self.nodes: dict[str, Node] = {}
        self.progress = False

    def _node(self, name: str, params: dict[str, Any], *after: str) -> Node:
        node = self.tree.node(name, params=params, depends_on=[self.nodes[a] for a in after])
        self.nodes[name] = node
        return node

    def _done(self, record: Any, node: Node) -> None:
        release_free_memory()  # what the stage freed does not weigh on the next ones
        record.status = node.open_mode.value if node.open_mode else "?"
        self.say(
            f"{record.name + ':':<9}{record.status:<9}{record.seconds:8.1f} s "
            f"({record.cpu_seconds:.1f} s CPU)  peak RSS {record.peak_rss / 2**20:6.0f} MiB"
        )

    def slide(self) -> None:
        p = self.params
        params = {"size": p.size, "seed": p.seed, "sample": "ihc"}
        with self.clock.stage("slide", _mpx(p)) as record, self._node("slide", params) as node:
            if node.writing:
                slide = SyntheticSlide(p.size, p.seed)
                node.save_image(
                    "slide",
                    slide.to_dask(),
                    axes="cyx",
                    channel_names=["red", "green", "blue"],
                    progress=self.progress,
                )
                node.log(f"synthetic {p.size} x {p.size} slide, seed {p.seed}")
        self._done(record, node)

    def tissue(self) -> None:
        p = self.params
        with self.clock.stage("tissue") as record:
            params = {"mask_factor": p.mask_factor, "density": p.tissue_density}
            with self._node("tissue", params, "slide") as node:
                if node.writing:
                    pyramid = self.nodes["slide"].open_image("slide")
                    level = min(int(math.log2(p.mask_factor)), len(pyramid) - 1)
                    factor = 2**level
                    rgb = np.moveaxis(np.asarray(pyramid[level].compute()), 0, -1)
                    mask = (rgb_to_stains(rgb).sum(axis=-1) > p.tissue_density).astype(np.uint8)
                    offset = (factor - 1) / 2
                    node.save_labels(
                        "tissue", mask, scale=(factor, factor), translation=(offset, offset)
                    )
                    node.save_json("tissue", {"factor": factor, "fraction": float(mask.mean())})
                    node.log(f"tissue covers {mask.mean():.1%} of the slide (mask 1/{factor})")
        self._done(record, node)

    def model(self, memory_budget: int | str | None) -> None:
        p = self.params
        with self.clock.stage("model", _mpx(p)) as record:
            params = {"patch": p.patch, "stride": p.stride, "weights": "gaussian"}
            with self._node("model", params, "slide", "tissue") as node:
                if node.writing:
                    tissue = self.nodes["tissue"]
                    factor = tissue.load_json("tissue")["factor"]
                    mask = np.asarray(tissue.open_image("tissue")[0].compute())
                    rows = tissue_boxes(mask, factor, p.size, p.patch, p.stride)
                    slide = full_resolution(self.nodes["slide"], "slide")
                    done = merge_model(
                        node,
                        slide,
                        rows,
                        batch=p.batch,
                        checkpoint_rows=p.checkpoint_rows,
                        memory_budget=memory_budget,
                        bar=self.bar,
                    )
                    node.log(
                        f"{done['patches']} patches of {p.patch} px at stride {p.stride} over "
                        f"tissue ({done['skipped_batches']} batches done before a resume); "
                        f"{done['spilled_bytes'] / 2**20:.1f} MiB of accumulators spilled"
                    )
        self._done(record, node)

    def nuclei(self) -> None:
        from .nuclei import BLOCKS_ITEM, NucleusMask, label_blockwise

        p = self.params
        with self.clock.stage("nuclei", _mpx(p)) as record:
            params = {"threshold": p.nuclei_threshold, "sigma": p.sigma, "block": p.block}
            with self._node("nuclei", params, "model") as node:
                if node.writing:
                    model = self.nodes["model"]
                    hematoxylin, foreground = (
                        Plane.of(model, "stains"),
                        Plane.of(model, "foreground"),
                    )
                    mask = NucleusMask(hematoxylin, foreground, p.nuclei_threshold, p.sigma)
                    labels, count = label_blockwise(mask, (p.size, p.size), p.block, node)
                    node.save_labels("nuclei", labels)
                    node.item(f"{BLOCKS_ITEM}.zarr").remove()
                    node.save_json("nuclei", {"count": count})
                    node.log(f"{count} nuclei labelled in {p.block} px blocks")
        self._done(record, node)

    def density(self, workers: int) -> None:
        p = self.params
        params = {"region": p.region, "strip": p.strip}
        with (
            self.clock.stage("density", _mpx(p)) as record,
            self._node("density", params, "nuclei") as node,
        ):
            if node.writing:
                counts = node.child("counts").open()
                if counts.writing:
                    self._count_strips(counts, workers)
                    combine(counts, progress=False)
                density = counts.keyed()["density"]
                node.save_image(
                    "density",
                    density,
                    scale=(p.region, p.region),
                    translation=((p.region - 1) / 2,) * 2,
                )
                node.save_json(
                    "metrics",
                    {
                        "nuclei": int(density.sum()),
                        "max_per_region": int(density.max()),
                        "mean_per_region": float(density.mean()),
                    },
                )
                node.save_figure("density", density_figure(density, p.region))
                node.log(f"densest region holds {density.max()} nuclei")
        self._done(record, node)

    def _count_strips(self, counts: Node, workers: int) -> None:
        p = self.params
        set_combiner(counts, COMBINER, region=p.region)
        done = {part.meta.get("strip") for part in list_parts(counts.location, kind="part")}
        strips = [
            (index, (y0, min(y0 + p.strip, p.size)))
            for index, y0 in enumerate(range(0, p.size, p.strip))
            if index not in done
        ]
        nuclei_url = self.nodes["nuclei"].url
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=spawn) as pool:
            jobs = [
                pool.submit(count_strip, counts.url, nuclei_url, p.region, rows, index)
                for index, rows in strips
            ]
            for job in self.bar(jobs, desc="density strips", unit="strip"):
                job.result()
        counts.log(
            f"{len(strips)} strips counted by {workers} worker processes "
            f"({len(done)} were done before a resume)"
        )

    def report(self) -> None:
        p = self.params
        with self._node("report", asdict(p), "density") as node:
            if node.writing:
                node.save_json("stages", self.clock.to_json())
                title = f"whole-slide demo, {p.size} x {p.size} px"
                node.save_figure("stages", stages_figure(self.clock, title))
                for s in self.clock.stages:
                    node.log(
                        f"{s.name}: {s.status}, {s.seconds:.1f} s ({s.cpu_seconds:.1f} s CPU), "
                        f"{s.throughput:.2f} Mpx/s, peak RSS {s.peak_rss / 2**20:.0f} MiB"
                    )
                node.log(f"peak RSS of the run {self.clock.peak_rss / 2**20:.0f} MiB")
        self.say(f"report:  {node.open_mode.value if node.open_mode else '?'}")
