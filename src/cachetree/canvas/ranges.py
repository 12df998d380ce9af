"""Running value ranges of a canvas' heads: what the display windows are made of."""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from .spec import CanvasSpec

__all__ = ["ValueRanges"]


class ValueRanges:
    """Running (min, max) of the finite values of each head, per channel (thread safe)."""

    def __init__(self, spec: CanvasSpec):
        self._low = {n: np.full(h.channels, np.nan) for n, h in spec.heads.items()}
        self._high = {n: np.full(h.channels, np.nan) for n, h in spec.heads.items()}
        self._lock = threading.Lock()

    def add(self, head: str, low: Any, high: Any) -> None:
        """Fold in per-channel minima and maxima (NaN: none)."""
        with self._lock:
            np.fmin(self._low[head], np.asarray(low, np.float64), out=self._low[head])
            np.fmax(self._high[head], np.asarray(high, np.float64), out=self._high[head])

    def add_json(self, ranges: Mapping[str, Any]) -> None:
        """Fold in ranges of :meth:`to_json`."""
        for head, (low, high) in ranges.items():
            self.add(head, _floats(low), _floats(high))

    def get(self, head: str) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)`` per channel of ``head``."""
        with self._lock:
            return self._low[head].copy(), self._high[head].copy()

    def stacked(self) -> dict[str, np.ndarray]:
        """Head name to its ``(2, C)`` (low, high) per channel."""
        with self._lock:
            return {h: np.stack([self._low[h], self._high[h]]) for h in self._low}

    def restore(self, ranges: Mapping[str, Any]) -> None:
        """Continue from the ranges of :meth:`stacked`."""
        with self._lock:
            for head, low_high in ranges.items():
                low_high = np.asarray(low_high, np.float64)
                self._low[head], self._high[head] = low_high[0].copy(), low_high[1].copy()

    def to_json(self) -> dict[str, list[list[float | None]]]:
        """Head to ``[low, high]`` lists per channel, None where there is no value."""
        with self._lock:
            return {
                head: [_nullable(self._low[head]), _nullable(self._high[head])]
                for head in self._low
            }


def _nullable(values: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values]


def _floats(values: list[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], np.float64)
