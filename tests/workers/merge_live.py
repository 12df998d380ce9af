"""Merge a canvas in steps, waiting for the test between them (a pipeline still running).

Usage: python merge_live.py ROOT FLAGS_DIR

Step 1 merges the top rows (value 0.25) and checkpoints; step 2 the middle rows (0.75) and
checkpoints; step 3 the rest, then finalises and commits. After step N it creates
``FLAGS_DIR/done-N`` and waits for ``FLAGS_DIR/go-N`` (steps 1 and 2).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from cachetree import CacheTree
from cachetree.canvas import Canvas

SHAPE = (384, 512)
TILE = 64
STEPS = ((0, 128, 0.25), (128, 256, 0.75), (256, 384, 0.5))


def rows(canvas: Canvas, top: int, bottom: int, value: float) -> None:
    boxes = np.array(
        [[x, y, x + 64, y + 64] for y in range(top, bottom, 64) for x in range(0, 512, 64)]
    )
    canvas.add({"prob": np.full((len(boxes), 64, 64, 1), value, np.float32)}, boxes)


def wait_for(flag: Path) -> None:
    deadline = time.monotonic() + 120
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def main(root: str, flags: str) -> None:
    flags_dir = Path(flags)
    tree = CacheTree(root)
    node = tree.node("live", params={"run": 1}).open()
    canvas = Canvas(node, SHAPE, {"prob": 1}, tile=TILE, order="row-major")
    for step, (top, bottom, value) in enumerate(STEPS, start=1):
        rows(canvas, top, bottom, value)
        if step < len(STEPS):
            canvas.checkpoint()
            (flags_dir / f"done-{step}").touch()
            wait_for(flags_dir / f"go-{step}")
    canvas.finalize(commit=False)
    node.commit()
    (flags_dir / "done-3").touch()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
