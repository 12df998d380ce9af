"""Bounded memory: peak RSS of a merge stays under the budget plus a fixed overhead.

Each case runs in a fresh process (this module run as a script). The child warms up (a tiny
canvas, so lazily imported modules and thread pools exist), notes its resident memory,
merges a canvas whose float32 accumulators are several times the budget, in random order
(so tiles are spilled and merged back) or row-major (so rows are finalised early), and
reports its peak RSS from the OS (``VmHWM``, the high-water mark of its resident memory).
The growth must stay below ``budget + OVERHEAD`` whatever the canvas size.

OVERHEAD is the memory the canvas uses beside its accumulator budget, stated here:
output chunks being encoded and written (2 x workers tiles), half a chunk row per head
and pyramid level waiting for its other half (about ``tile / 2 x width x channels x 4``
bytes: 3 MiB at 3072 px), a batch of patches being validated, spill reads at finalise
(memory-mapped, a tile at a time) and allocator slack.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

MiB = 2**20
BUDGET = 8 * MiB
OVERHEAD = 32 * MiB  # measured 8-12 MiB on Linux x86-64
PATCH, STRIDE, BATCH, TILE = 256, 192, 16, 256
HEADS = {"prob": 3, "mask": 1}  # 4 channels + the shared weight: 20 bytes per pixel


def child(size: int, order: str, out: str) -> None:
    import numpy as np
    import psutil

    from cachetree import CacheTree
    from cachetree.canvas import Canvas

    tree = CacheTree(out)
    with tree.node("warmup") as node:  # import and start everything once
        warm = Canvas(node, (64, 64), HEADS, tile=32, memory_budget=32 * 32 * 20 * 2)
        warm.add(
            {k: np.ones((4, 16, 16, c), np.float32) for k, c in HEADS.items()},
            [[0, 0, 16, 16], [40, 40, 56, 56], [0, 40, 16, 56], [40, 0, 56, 16]],
        )
        warm.checkpoint()
        warm.finalize()

    rng = np.random.default_rng(0)
    pool = {k: rng.random((BATCH, PATCH, PATCH, c), dtype=np.float32) for k, c in HEADS.items()}
    starts = range(-PATCH // 4, size, STRIDE)
    boxes = np.array([[x, y, x + PATCH, y + PATCH] for y in starts for x in starts])
    if order == "any":
        boxes = boxes[rng.permutation(len(boxes))]
    before = psutil.Process().memory_info().rss
    with tree.node("merge") as node:
        canvas = Canvas(node, (size, size), HEADS, order=order, tile=TILE, memory_budget=BUDGET)
        for i in range(0, len(boxes), BATCH):
            chunk = boxes[i : i + BATCH]
            canvas.add({k: v[: len(chunk)] for k, v in pool.items()}, chunk)
        stats = canvas.stats
        canvas.finalize()
    print(json.dumps({"before": before, "peak": peak_rss(), "stats": stats}))


def peak_rss() -> int:
    """Peak resident bytes of this process's own memory.

    ``VmHWM`` of ``/proc/self/status``: ``ru_maxrss`` is not used on Linux because a child
    inherits the high-water mark of the (larger) parent it was forked from.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(tmp_path: Path, size: int, order: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    done = subprocess.run(
        [sys.executable, __file__, str(size), order, str(tmp_path / f"{order}-{size}")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("order", ["any", "row-major"])
def test_peak_rss_stays_within_budget_whatever_the_canvas_size(tmp_path, order):
    growth = {}
    for size in (1536, 3072):
        accumulators = size * size * 20
        assert accumulators > 5 * BUDGET  # several times the budget (5.6x and 22x)
        result = run_child(tmp_path, size, order)
        growth[size] = result["peak"] - result["before"]
        stats = result["stats"]
        assert stats["peak_resident_bytes"] <= BUDGET
        if order == "any":
            assert stats["spilled_bytes"] > 0
        else:
            assert stats["rows_written"] > 0  # rows were finalised while merging
        assert growth[size] <= BUDGET + OVERHEAD, (
            f"{order} {size}px: peak RSS grew {growth[size] / MiB:.0f} MiB, more than the "
            f"{BUDGET / MiB:.0f} MiB budget + {OVERHEAD / MiB:.0f} MiB overhead ({result})"
        )
    # four times the pixels, about the same memory
    assert growth[3072] - growth[1536] < 16 * MiB


if __name__ == "__main__":
    child(int(sys.argv[1]), sys.argv[2], sys.argv[3])
