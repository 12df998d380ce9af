"""Sums and means over square blocks of canvas pixels (the preview's arithmetic)."""

from __future__ import annotations

import numpy as np

__all__ = ["block_mean", "block_sum"]


def block_sum(values: np.ndarray, y0: int, x0: int, factor: int) -> np.ndarray:
    """Sums of ``values`` (placed at canvas ``y0, x0``) over the canvas' F x F blocks.

    The region is widened with zeros to whole blocks, then summed along y and along x in
    turn (two contiguous reductions: several times faster than one over both axes).
    """
    h, w = values.shape[:2]
    top, left = y0 % factor, x0 % factor
    rows, cols = -(-(top + h) // factor), -(-(left + w) // factor)
    if (top, left) != (0, 0) or (rows * factor, cols * factor) != (h, w):
        padded = np.zeros((rows * factor, cols * factor, *values.shape[2:]), values.dtype)
        padded[top : top + h, left : left + w] = values
        values = padded
    rest = values.shape[2:]
    by_rows = np.add.reduce(values.reshape(rows, factor, -1), axis=1)
    by_cols = np.add.reduce(by_rows.reshape(rows * cols, factor, -1), axis=1)
    return by_cols.reshape(rows, cols, *rest)


def block_mean(values: np.ndarray, factor: int) -> np.ndarray:
    """Means of ``(C, h, w)`` values over ``factor x factor`` blocks (edge blocks: their
    pixels only)."""
    work = np.result_type(values.dtype, np.float32)
    if factor == 1:
        return values.astype(work)
    _, h, w = values.shape
    counts = block_sum(np.ones((h, w), work), 0, 0, factor)
    sums = np.stack([block_sum(plane.astype(work, copy=False), 0, 0, factor) for plane in values])
    return sums / counts
