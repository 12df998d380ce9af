"""The preview of a cluster merge while it runs, summed by the client from the tasks' own.

Each task returns (and stores in its marker) the preview block sums of the cells its patches
reached, at the factor the client chose. The client adds them up as tasks finish and writes
the same preview a :class:`~cachetree.canvas.Canvas` writes (``preview.json`` and its
``preview-<seq>/`` folder in the staging area), so a viewer shows a cluster merge in
progress exactly as a single-process one. The block sums are tiny next to the canvas, and
the client reads nothing else while tasks run. The preview is written on a thread of its
own, so collecting results (and, on an object store, every request of a write) never waits
for it.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Any

import numpy as np

from ...fs.location import Location
from ...tree.parts import PartInfo, parts_location, remove_parts
from ..core import PREVIEW_INTERVAL
from ..kinds import STAGING
from ..preview import PreviewAccumulator, write_preview
from ..spec import CanvasSpec

__all__ = ["RunPreview", "marker_block_sums"]

_PREFIX = "preview/"
"""Prefix of the preview arrays in a task marker."""


def marker_block_sums(marker: PartInfo) -> tuple[tuple[int, int], dict[str, np.ndarray]]:
    """The preview block sums a task marker holds: first cell and arrays (none if it has
    none, e.g. a marker written before previews existed)."""
    origin = (marker.meta.get("preview") or {}).get("origin")
    names = [n for n in marker.arrays if n.startswith(_PREFIX)]
    if origin is None or not names:
        return (0, 0), {}
    return (int(origin[0]), int(origin[1])), {
        n.removeprefix(_PREFIX): np.asarray(marker.read(n)) for n in names
    }


class RunPreview:
    """The preview pyramid of a canvas merged by several processes, written by the client.

    Parameters
    ----------
    location
        The node.
    spec
        The canvas.
    factor
        The preview factor every task uses.
    """

    def __init__(self, location: Location, spec: CanvasSpec, factor: int):
        self.accumulator = PreviewAccumulator(spec, factor)
        root = parts_location(location)
        remove_parts(root, [STAGING])  # a staging area of an earlier canvas of the node
        self._staging = root.raw_child(STAGING)
        self._seq = 0
        self._written_at = -float("inf")
        self._writer = concurrent.futures.ThreadPoolExecutor(1, "cachetree-preview")
        self._writes: list[concurrent.futures.Future] = []
        self._stop = threading.Event()

    def add(self, block_sums: tuple[tuple[int, int], dict[str, Any]] | None) -> None:
        """Add one task's block sums (``(first cell, arrays)``; None adds nothing)."""
        if block_sums is not None:
            self.accumulator.add_reached(*block_sums)

    def write(self, merged: float, *, now: bool = False) -> None:
        """Write the preview with the share of tasks done, in the background: at most every
        :data:`~cachetree.canvas.core.PREVIEW_INTERVAL` seconds and never while the last
        write is still running, unless ``now`` (which writes after it)."""
        busy = bool(self._writes) and not self._writes[-1].done()  # one thread: in order
        if not now and (busy or time.monotonic() - self._written_at < PREVIEW_INTERVAL):
            return
        status = {"seq": self._seq, "merged": merged}
        snapshot = self.accumulator.copy()
        self._writes.append(
            self._writer.submit(
                write_preview, self._staging, self._seq, snapshot, {}, status, self._stop
            )
        )
        self._seq += 1
        self._written_at = time.monotonic()

    def close(self, *, check: bool = True, abandon: bool = False) -> None:
        """Wait for the writes asked for; with ``check``, raise the first that failed.

        With ``abandon`` (the finished images are about to replace the preview), writes
        not begun are dropped and one under way stops at its next chunk, leaving
        ``preview.json`` as it was.
        """
        if abandon:
            self._stop.set()
        self._writer.shutdown(wait=True, cancel_futures=abandon)
        for write in self._writes if check else ():
            if not write.cancelled():
                write.result()
