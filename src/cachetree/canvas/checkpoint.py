"""Checkpoint parts: the state a killed canvas resumes from.

A checkpoint part (kind ``"canvas-checkpoint"``) holds each head's running value range as
``stats/<head>.npy`` (``(2, C)``: min and max per channel), the preview accumulators as
``preview/weight.npy`` and ``preview/sum/<head>.npy``, and in its meta the batch count,
the tile rows final, the row-major frontier, the next part sequence number and the spill
parts it covers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..fs.location import Location
from ..tree.parts import PartInfo, write_part
from .kinds import CHECKPOINT_KIND

__all__ = [
    "checkpoint_preview",
    "checkpoint_value_range",
    "newest_checkpoint",
    "write_checkpoint",
]


def write_checkpoint(
    location: Location,
    seq: int,
    spec_json: Mapping[str, Any],
    state: Mapping[str, int],
    spill_parts: Sequence[str],
    ranges: Mapping[str, np.ndarray],
    preview: Mapping[str, np.ndarray] | None = None,
) -> PartInfo:
    """Write checkpoint ``canvas-checkpoint-<seq>`` of the node at ``location``.

    ``state`` gives ``batches_done``, ``rows_final``, ``frontier`` and ``next_seq``;
    ``ranges`` each head's ``(2, C)`` value range; ``preview`` the preview accumulators
    (:meth:`~cachetree.canvas.preview.PreviewAccumulator.arrays`).
    """
    arrays = {f"stats/{head}": low_high for head, low_high in ranges.items()}
    arrays.update({f"preview/{name}": array for name, array in (preview or {}).items()})
    return write_part(
        location,
        f"{CHECKPOINT_KIND}-{seq:08d}",
        arrays,
        kind=CHECKPOINT_KIND,
        meta={
            "canvas": dict(spec_json),
            "seq": seq,
            "batches_done": state["batches_done"],
            "rows_final": state["rows_final"],
            "frontier": state["frontier"],
            "next_seq": state["next_seq"],
            "spill_parts": list(spill_parts),
        },
    )


def newest_checkpoint(parts: Iterable[PartInfo]) -> PartInfo | None:
    """The checkpoint with the highest sequence number among ``parts``, if any."""
    checkpoints = [p for p in parts if p.kind == CHECKPOINT_KIND]
    return max(checkpoints, key=lambda p: p.meta.get("seq", -1)) if checkpoints else None


def checkpoint_value_range(part: PartInfo, head: str) -> np.ndarray | None:
    """``(2, C)`` float64 min and max per channel of ``head`` in a checkpoint, if it has them."""
    if f"stats/{head}" not in part.arrays:
        return None
    return np.asarray(part.read(f"stats/{head}"), np.float64)


def checkpoint_preview(part: PartInfo) -> dict[str, np.ndarray]:
    """The preview accumulators stored in a checkpoint (empty for older checkpoints)."""
    prefix = "preview/"
    return {
        name[len(prefix) :]: np.asarray(part.read(name))
        for name in part.arrays
        if name.startswith(prefix)
    }
