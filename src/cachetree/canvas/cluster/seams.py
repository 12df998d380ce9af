"""Finalising the segments no task owns: seams summed from the tasks' parts, empty ones
filled."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from ...tree.parts import PartInfo
from ..normalise import normalise_tile
from ..ranges import ValueRanges
from ..spec import CanvasSpec
from ..spill import SpillRef, add_spilled_tile
from ..tiles import TileBuffers, TileKey
from .output import OutputImages

__all__ = ["write_seams"]


def write_seams(
    spec: CanvasSpec,
    output: OutputImages,
    owners: np.ndarray,
    parts: Sequence[PartInfo],
    ranges: ValueRanges,
    *,
    workers: int = 2,
    progress: bool = False,
) -> int:
    """Write every segment whose owner is negative (a seam, or empty) into ``output``.

    A seam's tiles are the sums of the contributions ``parts`` hold for them (in the order
    of ``parts``), normalised; tiles no part holds get the fill value. Only the parts'
    tiles in such segments are read. Values are folded into ``ranges``.

    Returns
    -------
    int
        Segments written.
    """
    segment = output.segment
    refs: dict[TileKey, list[tuple[PartInfo, SpillRef]]] = {}
    for part in parts:
        for ty, tx, y0, x0, y1, x1 in part.meta["tiles"]:
            if owners[ty, tx // segment] < 0:
                refs.setdefault((ty, tx), []).append((part, SpillRef(part.name, y0, x0, y1, x1)))
    todo = [(int(ty), int(sx)) for ty, sx in np.argwhere(owners < 0)]

    def write(ty: int, sx: int) -> None:
        tiles = {
            tx: _seam_tile(spec, (ty, tx), refs.get((ty, tx))) for tx in output.segment_columns(sx)
        }
        output.write_segment(ty, sx, tiles, ranges)

    with (
        concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool,
        tqdm(total=len(todo), desc="canvas seams", unit="segment", disable=not progress) as bar,
    ):
        for future in [pool.submit(write, ty, sx) for ty, sx in todo]:
            future.result()
            bar.update()
    return len(todo)


def _seam_tile(
    spec: CanvasSpec, key: TileKey, refs: list[tuple[PartInfo, SpillRef]] | None
) -> dict[str, np.ndarray] | None:
    """One tile summed from its spilled contributions and normalised; None without any."""
    if not refs:
        return None
    buf = TileBuffers(spec.tile, spec.heads)
    for part, ref in refs:
        add_spilled_tile(part, ref, key, spec.tile, buf.weight, buf.sums)
    return normalise_tile(spec, buf, *key)
