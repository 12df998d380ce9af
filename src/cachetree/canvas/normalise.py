"""Normalising accumulated tiles: weighted sums divided by their weights, in the head dtype."""

from __future__ import annotations

from typing import Any

import numpy as np

from .spec import CanvasSpec
from .tiles import TileBuffers

__all__ = ["normalise_block", "normalise_tile"]


def normalise_block(
    sums: np.ndarray, weight: np.ndarray, dtype: Any, fill_value: float
) -> np.ndarray:
    """Weighted average of accumulated sums.

    Parameters
    ----------
    sums
        ``(h, w, C)`` weighted value sums.
    weight
        ``(h, w)`` weight sums.
    dtype
        Output dtype; integers are rounded and clipped to their range.
    fill_value
        Output where the weight is zero.

    Returns
    -------
    numpy.ndarray
        ``(C, h, w)`` of ``dtype``.
    """
    dtype = np.dtype(dtype)
    h, w, channels = sums.shape
    out = np.empty((channels, h, w), dtype)
    empty = weight <= 0
    any_empty = bool(empty.any())
    direct = dtype == sums.dtype
    tmp = None if direct else np.empty((h, w), sums.dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        for c in range(channels):
            target = out[c] if direct else tmp
            np.divide(sums[..., c], weight, out=target)
            if not direct:
                if any_empty:
                    target[empty] = 0
                if dtype.kind in "iu":
                    info = np.iinfo(dtype)
                    np.rint(target, out=target)
                    np.clip(target, info.min, info.max, out=target)
                out[c] = target
            if any_empty:
                out[c][empty] = fill_value
    return out


def normalise_tile(spec: CanvasSpec, buf: TileBuffers, ty: int, tx: int) -> dict[str, np.ndarray]:
    """``sum / weight`` of tile ``(ty, tx)`` per head as ``(C, th, tw)`` in the head dtype
    (edge tiles clipped to the canvas); the fill value where the weight is 0."""
    tile = spec.tile
    th, tw = min(tile, spec.shape[0] - ty * tile), min(tile, spec.shape[1] - tx * tile)
    weight = buf.weight[:th, :tw]
    return {
        name: normalise_block(buf.sums[name][:th, :tw], weight, head.dtype, spec.fill_value)
        for name, head in spec.heads.items()
    }
