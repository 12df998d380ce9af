"""A deterministic synthetic whole slide, built tile by tile from the shipped sample image.

:class:`SyntheticSlide` describes an ``N x N`` RGB slide: a few tissue sections (wobbly
ellipses) on a bright, slightly noisy background. Inside the tissue every 512-px tile is the
sample image turned by a multiple of 90 degrees, maybe mirrored, with its hematoxylin,
eosin and DAB amounts scaled by a few percent ("stain jitter"). Everything is derived from
the seed and the tile position, so any tile can be made on its own, in any order, in any
process: :meth:`SyntheticSlide.to_dask` is a lazy array that is never held whole in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import dask.array as da
import numpy as np

from .quick import load_sample_image

__all__ = ["STAIN_OD", "SyntheticSlide", "rgb_to_stains"]

STAIN_OD = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float32)
"""Optical density of pure hematoxylin, eosin and DAB (rows) in red, green and blue."""
_RGB_TO_STAINS = np.linalg.inv(STAIN_OD).astype(np.float32)
_JITTER = 0.12
"""Largest relative change of a stain amount from one tile to the next."""
_TISSUE_STEP = 4
"""The tissue outline is evaluated every this many pixels."""
_LN10 = np.float32(math.log(10))


def rgb_to_stains(rgb: np.ndarray) -> np.ndarray:
    """Stain amounts (hematoxylin, eosin, DAB) of uint8 RGB pixels ``(..., 3)``, float32."""
    od = -np.log10(np.maximum(rgb.astype(np.float32), 1.0) / 255.0)
    return od @ _RGB_TO_STAINS


@dataclass(frozen=True)
class SyntheticSlide:
    """An ``size x size`` synthetic RGB slide; the same ``seed`` gives the same pixels."""

    size: int
    seed: int = 0
    tile: int = 512
    """Edge of the mosaic tiles (the sample is cropped to it)."""

    def __post_init__(self) -> None:
        if self.size < 64 or self.tile < 16:
            raise ValueError(f"a synthetic slide needs size >= 64, got {self.size}")

    @cached_property
    def _stains(self) -> np.ndarray:
        """The sample's stain amounts, ``(3, tile, tile)`` float32 (one plane per stain)."""
        sample = load_sample_image()[: self.tile, : self.tile]
        return np.ascontiguousarray(np.moveaxis(rgb_to_stains(sample), -1, 0))

    @cached_property
    def sections(self) -> np.ndarray:
        """Tissue sections, one row each: centre y, x, radii, angle and two wobble phases."""
        rng = np.random.default_rng([self.seed, 7])
        count = int(rng.integers(3, 6))
        n = self.size
        centre = rng.uniform(0.22, 0.78, (count, 2)) * n
        radii = rng.uniform(0.12, 0.3, (count, 2)) * n
        angle = rng.uniform(0, math.pi, (count, 1))
        phases = rng.uniform(0, 2 * math.pi, (count, 2))
        return np.hstack([centre, radii, angle, phases])

    def tissue(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Whether the pixels at rows ``y`` and columns ``x`` (broadcast) lie in tissue."""
        inside = np.zeros(np.broadcast_shapes(y.shape, x.shape), bool)
        for cy, cx, ry, rx, angle, p1, p2 in self.sections:
            dy, dx = y - cy, x - cx
            u = dx * math.cos(angle) + dy * math.sin(angle)
            v = -dx * math.sin(angle) + dy * math.cos(angle)
            theta = np.arctan2(v, u)
            wobble = 1 + 0.08 * np.sin(3 * theta + p1) + 0.05 * np.sin(7 * theta + p2)
            inside |= (u / rx) ** 2 + (v / ry) ** 2 <= wobble**2
        return inside

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` as ``(3, h, w)`` uint8 (channels first)."""
        out = np.empty((3, y1 - y0, x1 - x0), np.uint8)
        t = self.tile
        for ty in range(y0 // t, -(-y1 // t)):
            for tx in range(x0 // t, -(-x1 // t)):
                ya, yb = max(y0, ty * t), min(y1, (ty + 1) * t)
                xa, xb = max(x0, tx * t), min(x1, (tx + 1) * t)
                tile = self._tile(ty, tx)
                out[:, ya - y0 : yb - y0, xa - x0 : xb - x0] = tile[
                    :, ya - ty * t : yb - ty * t, xa - tx * t : xb - tx * t
                ]
        return out

    def _tile(self, ty: int, tx: int) -> np.ndarray:
        """Mosaic tile ``(ty, tx)``, ``(3, tile, tile)`` uint8 (cropped at the slide edge)."""
        t = self.tile
        h, w = min(t, self.size - ty * t), min(t, self.size - tx * t)
        rng = np.random.default_rng([self.seed, ty, tx])
        turns, mirror = int(rng.integers(4)), bool(rng.integers(2))
        jitter = rng.uniform(1 - _JITTER, 1 + _JITTER, 3).astype(np.float32)
        background = rng.integers(240, 252, (1, h, w), dtype=np.uint8)
        inside = self._tissue_tile(ty * t, tx * t, h, w)
        if not inside.any():
            return np.repeat(background, 3, axis=0)
        stains = np.rot90(self._stains, turns, axes=(1, 2))
        stains = (stains[:, :, ::-1] if mirror else stains)[:, :h, :w]
        out = np.empty((3, h, w), np.uint8)
        for channel in range(3):  # optical density of the channel, then back to intensity
            weights = jitter * STAIN_OD[:, channel] * -_LN10
            od = weights[0] * stains[0] + weights[1] * stains[1] + weights[2] * stains[2]
            rgb = np.clip(255.0 * np.exp(od), 0, 255).astype(np.uint8)
            out[channel] = np.where(inside, rgb, background[0])
        return out

    def _tissue_tile(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """:meth:`tissue` of a tile, evaluated every ``_TISSUE_STEP`` px and repeated."""
        step = _TISSUE_STEP
        ys = np.arange(y0, y0 + h, step, dtype=np.float32)[:, None] + step / 2
        xs = np.arange(x0, x0 + w, step, dtype=np.float32)[None, :] + step / 2
        coarse = self.tissue(ys, xs)
        return np.repeat(np.repeat(coarse, step, axis=0), step, axis=1)[:h, :w]

    def to_dask(self, chunk: int = 512) -> da.Array:
        """The slide as a lazy ``(3, size, size)`` uint8 dask array of ``chunk``-px blocks."""
        whole, rest = divmod(self.size, chunk)
        sizes = (chunk,) * whole + ((rest,) if rest else ())
        return da.map_blocks(
            self._block,
            chunks=((3,), sizes, sizes),
            dtype=np.uint8,
            meta=np.empty((0, 0, 0), np.uint8),
            name=f"synthetic-slide-{self.size}-{self.seed}-{self.tile}-{chunk}",
        )

    def _block(self, block_info: dict[Any, Any] | None = None) -> np.ndarray:
        (_, _), (y0, y1), (x0, x1) = block_info[None]["array-location"]
        return self.region(y0, y1, x0, x1)
