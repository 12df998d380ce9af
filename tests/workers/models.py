"""A tiny deterministic two-head patch model for the distributed tests.

Dask worker processes import it by name (``tests.workers.models``), so the tests put the
repository root on the workers' ``PYTHONPATH``. A patch's values depend only on its box:
smooth in canvas coordinates plus a per-patch offset, so overlapping patches disagree and
the averaging is really exercised.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

HEADS = {"prob": 3, "mask": 1}
"""Head name to channel count (float32)."""


def patches(boxes: np.ndarray, channels: int, salt: float) -> np.ndarray:
    """``(n, h, w, channels)`` float32 values of the patches at ``boxes``."""
    boxes = np.asarray(boxes, np.int64)
    h = int(boxes[0, 3] - boxes[0, 1])
    w = int(boxes[0, 2] - boxes[0, 0])
    ys = boxes[:, 1, None] + np.arange(h)  # (n, h) canvas rows
    xs = boxes[:, 0, None] + np.arange(w)  # (n, w)
    offset = ((boxes[:, 0] * 31 + boxes[:, 1] * 17) % 13) / 13.0  # differs per patch
    base = (
        np.sin(0.05 * ys + salt)[:, :, None]
        + np.cos(0.07 * xs - salt)[:, None, :]
        + offset[:, None, None]
    )
    scale = np.arange(1, channels + 1, dtype=np.float64)
    return (base[..., None] * scale).astype(np.float32)


def model(task: Any, boxes: np.ndarray, *, sleep: float = 0.0) -> dict[str, np.ndarray]:
    """The patches of ``boxes`` for every head; ``sleep`` seconds per call (slow model)."""
    if sleep:
        time.sleep(sleep)
    return {name: patches(boxes, c, salt=i) for i, (name, c) in enumerate(HEADS.items())}


def flaky_model(
    task: Any, boxes: np.ndarray, *, flags: str, fail: tuple[str, ...] = (), sleep: float = 0.0
) -> dict[str, np.ndarray]:
    """:func:`model`, but the first attempt of each task in ``fail`` raises at its last batch.

    ``flags`` is a directory all workers share: a file per task records that it failed once.
    By then the attempt has spilled parts, which no marker will ever name.
    """
    last = bool((boxes == task.boxes[-1]).all(axis=1).any())  # the batch of the last box
    if task.id in fail and last:
        flag = os.path.join(flags, task.id)
        if not os.path.exists(flag):
            open(flag, "w").close()
            raise RuntimeError(f"task {task.id} fails once, on purpose")
    return model(task, boxes, sleep=sleep)


def broken_model(task: Any, boxes: np.ndarray, *, broken: str) -> dict[str, np.ndarray]:
    """:func:`model`, but task ``broken`` always raises."""
    if task.id == broken:
        raise RuntimeError(f"task {task.id} is broken")
    return model(task, boxes)
