"""A user combiner (named by import path) slow enough to watch the GUI while it runs."""

from __future__ import annotations

import time

import numpy as np


def slow_sum(parts, *, key, shared, delay: float = 0.1):
    """Sum the ``tile`` arrays of the parts, sleeping ``delay`` seconds per part."""
    total = None
    for part in parts:
        time.sleep(delay)
        tile = np.asarray(part["tile"], dtype=np.float64)
        total = tile if total is None else total + tile
    return total
