"""The canvas of one cluster task: owned segments straight to the output, seams as parts."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterable

from ...fs.location import Location
from ..ranges import ValueRanges
from ..spec import CanvasSpec
from ..tiles import TileKey
from ..worker import WorkerCanvas
from .output import OutputImages

__all__ = ["BandCanvas"]


class BandCanvas(WorkerCanvas):
    """Accumulates one task's patches; writes the segments it owns as final output.

    Patches are taken top to bottom (the task sorts its boxes), so once the patches have
    passed a tile row, that row of every owned segment is normalised and written into the
    :class:`~cachetree.canvas.cluster.output.OutputImages` (whole shards, in the
    background), and its other tiles, which belong to seams, are spilled as parts named
    ``<part_prefix>-<seq>`` for finalising to sum. Only what falls inside ``region`` counts.

    Parameters
    ----------
    location
        The node.
    spec
        The canvas.
    output
        The run's output images.
    owned
        ``(row, segment)`` of every segment this task owns.
    region
        ``(x0, y0, x1, y1)`` canvas pixels the task's patches count in; None: everywhere.
    part_prefix, memory_budget, workers, preview
        As for :class:`~cachetree.canvas.WorkerCanvas`.
    """

    def __init__(
        self,
        location: Location,
        spec: CanvasSpec,
        *,
        output: OutputImages,
        owned: Iterable[tuple[int, int]],
        region: tuple[int, int, int, int] | None,
        part_prefix: str,
        memory_budget: int,
        workers: int,
        preview: int,
    ):
        super().__init__(
            location,
            spec,
            part_prefix=part_prefix,
            memory_budget=memory_budget,
            workers=workers,
            preview=preview,
        )
        self._streams = True
        self._region = region
        self._output = output
        self._owned = {(int(r), int(s)) for r, s in owned}
        self._segments = -(-output.images_columns // output.segment)
        self._next_row = 0
        self.ranges = ValueRanges(spec)
        """Value range of the segments written so far."""
        self._writes: list[concurrent.futures.Future[int]] = []

    def _rows_passed(self, upto: int) -> None:
        for ty in range(self._next_row, min(upto, self.spec.grid[0])):
            self._end_row(ty)
            self._next_row = ty + 1

    def _end_row(self, ty: int) -> None:
        """Write the owned segments of tile row ``ty``; spill its seam tiles."""
        seams: list[TileKey] = []
        for sx in range(self._segments):
            columns = self._output.segment_columns(sx)
            if (ty, sx) in self._owned:
                protect = {(ty, tx) for tx in columns}
                tiles = {tx: self._final_tile((ty, tx), protect, preview=True) for tx in columns}
                self._writes += [  # one plane per job: the I/O threads encode side by side
                    self._pool.submit(self._output.write_plane, ty, sx, plane, tiles, self.ranges)
                    for plane in self._output.planes
                ]
            else:
                seams += [(ty, tx) for tx in columns if (ty, tx) in self._store.resident]
        self._spill(seams)
        self._collect()

    @property
    def shards_written(self) -> int:
        """Level-0 shards written into the output images so far."""
        return sum(f.result() for f in self._writes if f.done() and not f.exception())

    def flush_parts(self) -> list[str]:
        """Write every owned segment left, spill every seam tile left, wait for all writes.

        Returns
        -------
        list[str]
            The spill parts holding seam tiles, in the order they were made.
        """
        self._check_open()
        try:
            self._rows_passed(self.spec.grid[0])
        except BaseException:
            self.close()
            raise
        return super().flush_parts()

    _finish = flush_parts
