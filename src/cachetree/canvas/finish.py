"""Finishing a node whose results arrived as parts: a canvas merged on a cluster is
finalised into its images, any other node's parts go through its combiner."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..images.ngff import ImageInfo
from ..results.combining import CombineReport, combine
from ..tree.node import NodeLike, as_node
from .cluster.finalize import finalize_canvas
from .cluster.status import is_distributed_canvas

__all__ = ["FinishReport", "finish_node"]

FINALISING = "finalising canvas"
"""What a progress callable is told while a cluster canvas is finalised."""


@dataclass(frozen=True)
class FinishReport:
    """What :func:`finish_node` did: either ``images`` or ``combined`` is set."""

    url: str
    """URL of the node."""
    images: dict[str, ImageInfo] | None = None
    """The image of each head, when a canvas merged on a cluster was finalised."""
    combined: CombineReport | None = None
    """What :func:`~cachetree.results.combine` did, when the node's parts were combined."""

    @property
    def heads(self) -> list[str]:
        """Names of the finalised canvas's heads, sorted (empty after a combine)."""
        return sorted(self.images or ())

    def __str__(self) -> str:
        if self.combined is not None:
            return str(self.combined)
        return f"finalised canvas {self.url}: heads {', '.join(self.heads)}"


def finish_node(
    node: NodeLike,
    *,
    partial: bool = False,
    combiner: str | None = None,
    store: str = "results",
    progress: bool | Callable[[int, int, str], None] = False,
) -> FinishReport:
    """Turn a node's parts into its final results and commit it.

    A canvas merged on a cluster (:func:`~cachetree.canvas.cluster.merge_distributed` left
    its plan in the node) is finalised into its OME-Zarr heads with
    :func:`~cachetree.canvas.cluster.finalize_canvas`; any other node is combined with
    :func:`~cachetree.results.combine`. The command line's ``cachetree combine`` and the
    napari *Combine* widget call this.

    Parameters
    ----------
    node
        Node handle, path or URL.
    partial
        Of a cluster canvas: finalise even when some planned tasks have no result.
    combiner, store
        Of other nodes: as for :func:`~cachetree.results.combine`.
    progress
        True shows tqdm progress bars; a callable is called as ``progress(done, total,
        description)`` as the work advances (GUIs use this).

    Returns
    -------
    FinishReport
        What was done; ``str()`` of it is one line saying so.
    """
    node = as_node(node)
    if not is_distributed_canvas(node):
        return FinishReport(
            node.url, combined=combine(node, combiner=combiner, store=store, progress=progress)
        )
    report = progress if callable(progress) else None
    if report is not None:
        report(0, 1, FINALISING)
    images = finalize_canvas(node, partial=partial, progress=progress is True)
    if report is not None:
        report(1, 1, FINALISING)
    return FinishReport(node.url, images=images)
