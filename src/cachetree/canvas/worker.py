"""A worker canvas: one of several processes merging the same canvas, writing spill parts only."""

from __future__ import annotations

from typing import Any, NoReturn

from ..errors import InvalidDataError
from ..fs.location import validate_name
from ..tree.node import NodeLike, location_of
from .base import CanvasBase
from .spec import CanvasSpec

__all__ = ["WorkerCanvas"]


class WorkerCanvas(CanvasBase):
    """Accumulates patches like a :class:`~cachetree.canvas.Canvas` but only writes spill parts.

    One of several processes merging the same canvas (see
    :mod:`cachetree.canvas.cluster`). It needs no lock and writes nothing but spill
    parts named ``<part_prefix>-<seq>`` into the node's parts area; :meth:`flush_parts`
    ends it, and a :class:`~cachetree.canvas.Canvas` that adopts the parts finalises them.
    With ``order="row-major"`` it spills rows no later patch can reach at once.

    Parameters
    ----------
    node
        The node, its location or its URL; it need not be open for writing here (the
        process that opened it holds its lock).
    spec
        The canvas.
    part_prefix
        Name prefix of the spill parts, unique per worker attempt.
    memory_budget
        Bytes of accumulators held in RAM, as for :class:`~cachetree.canvas.Canvas`.
    workers
        Threads writing spill parts.
    preview
        Factor of the canvas' preview block sums (:meth:`preview_reached`); default: the
        one a :class:`~cachetree.canvas.Canvas` of this budget uses.

    Raises
    ------
    InvalidDataError
        Malformed arguments.
    """

    role = "worker"
    """The old ``Canvas(..., role="worker")`` name of this kind of canvas."""

    def __init__(
        self,
        node: NodeLike,
        spec: CanvasSpec,
        *,
        part_prefix: str,
        memory_budget: int | str | None = None,
        workers: int = 2,
        preview: int | None = None,
    ):
        if part_prefix is None:
            raise InvalidDataError(
                "a worker canvas needs part_prefix, unique per worker attempt "
                "(e.g. 'task-0007-3f9a2c1b')"
            )
        validate_name(part_prefix, what="part prefix")
        super().__init__(
            location_of(node),
            spec,
            memory_budget=memory_budget,
            workers=workers,
            spill_prefix=part_prefix,
            preview=preview,
        )

    def _rows_passed(self, upto: int) -> None:
        """Spill the tiles of rows above ``upto``, which no patch reaches now."""
        done = [key for key in self._store.resident if key[0] < upto]
        if done:
            self._spill(done)

    def flush_parts(self) -> list[str]:
        """Spill every tile still in memory and end the canvas.

        Every spill part is written and (locally) fsynced before this returns, so a marker
        written next may refer to them.

        Returns
        -------
        list[str]
            Names of all spill parts this canvas wrote, in the order they were made.
        """
        self._check_open()
        try:
            self._spill_all()
        finally:
            self._shutdown()
        self._finalized = True
        return list(self._spills.parts)

    _finish = flush_parts

    def checkpoint(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Not available: a worker canvas ends with :meth:`flush_parts`."""
        raise self._only_spills("checkpoint()")

    def finalize(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Not available: a worker canvas ends with :meth:`flush_parts`."""
        raise self._only_spills("finalize()")

    @staticmethod
    def _only_spills(what: str) -> InvalidDataError:
        return InvalidDataError(
            f"{what} is not available on a worker canvas: it writes spill parts only; "
            "call flush_parts() and finalise them with a canvas that adopts them"
        )
