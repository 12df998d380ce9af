"""Resume: SIGKILL a merging process, restart it, and get exactly the uninterrupted result.

The worker is this module run as a script: it opens the node, builds the canvas with
``resume=True``, sends the batches from ``canvas.batches_done`` on (batch data depends only
on the batch index, like a dataloader that can seek), prints a line after each batch and
finalises. The test kills it several times at different points and compares every
pyramid level and the display metadata with a run that was never interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

SHAPE = (96, 300)
PATCH = 24
STRIDE = 11  # overlap above half a patch
BATCH = 16
CHECKPOINT_EVERY = 3
TILE = 32
BUDGET = 12 * TILE * TILE * 4 * 5  # twelve of 3x10 tiles: spills all the time


def boxes_for(order: str) -> np.ndarray:
    ys = range(-6, SHAPE[0], STRIDE)
    xs = range(-4, SHAPE[1], STRIDE)
    boxes = np.array([[x, y, x + PATCH, y + PATCH] for y in ys for x in xs], np.int64)
    if order == "any":
        boxes = boxes[np.random.default_rng(7).permutation(len(boxes))]
    return boxes


def batch(order: str, i: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    boxes = boxes_for(order)[i * BATCH : (i + 1) * BATCH]
    rng = np.random.default_rng(1000 + i)
    n = len(boxes)
    values = {
        "prob": rng.random((n, PATCH, PATCH, 3), dtype=np.float32),
        "mask": rng.integers(0, 256, (n, PATCH, PATCH, 1)).astype(np.uint8),
    }
    return values, boxes


def n_batches(order: str) -> int:
    return -(-len(boxes_for(order)) // BATCH)


def worker(root: str, order: str, delay: float) -> None:
    from cachetree import CacheTree, OpenMode
    from cachetree.canvas import Canvas

    node = CacheTree(root).node("merge", params={"order": order}).open()
    if node.open_mode is OpenMode.REUSED:
        print("reused", flush=True)
        return
    canvas = Canvas(
        node,
        SHAPE,
        {"prob": 3, "mask": (1, "uint8")},
        weights="gaussian",
        order=order,
        tile=TILE,
        memory_budget=BUDGET,
        checkpoint_every=CHECKPOINT_EVERY,
        resume=True,
        min_size=64,
    )
    print(f"start {canvas.batches_done} {canvas.rows_written}", flush=True)
    for i in range(canvas.batches_done, n_batches(order)):
        canvas.add(*batch(order, i))
        print(f"batch {i}", flush=True)
        if delay:
            time.sleep(delay)
    canvas.finalize()
    print("finished", flush=True)


def start(root: Path, order: str, delay: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    return subprocess.Popen(
        [sys.executable, __file__, str(root), order, str(delay)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def run_to_end(root: Path, order: str) -> list[str]:
    proc = start(root, order, 0.0)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out.splitlines()


def kill_after(root: Path, order: str, batch_index: int, extra: float) -> tuple[int, int]:
    """Run until the worker reports ``batch_index``, wait ``extra`` s, SIGKILL it.

    Returns the batch the run started from and the last batch it reported.
    """
    proc = start(root, order, 0.004)
    first = proc.stdout.readline().split()
    assert first[0] == "start", [*first, proc.stderr.read()]
    last = -1
    for line in proc.stdout:
        if line.startswith("batch"):
            last = int(line.split()[1])
            if last >= batch_index:
                break
    time.sleep(extra)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()
    return int(first[1]), last


def read_result(root: Path) -> tuple[dict, dict]:
    from cachetree import CacheTree
    from cachetree.images.ngff import open_image, read_image

    node = CacheTree(root).node("merge")
    assert node.committed
    levels = {
        name: [np.asarray(level.compute()) for level in open_image(node.item(f"{name}.ome.zarr"))]
        for name in ("prob", "mask")
    }
    meta = {name: read_image(node.item(f"{name}.ome.zarr")) for name in ("prob", "mask")}
    return levels, meta


@pytest.mark.parametrize("order", ["any", "row-major"])
def test_sigkill_mid_merge_then_resume_gives_identical_result(tmp_path, order):
    reference = tmp_path / "reference"
    assert run_to_end(reference, order)[-1] == "finished"

    interrupted = tmp_path / "interrupted"
    total = n_batches(order)
    kills = [(2, 0.0), (total // 3, 0.003), (2 * total // 3, 0.011)]
    resumed_from = []
    for target, extra in kills:
        started, last = kill_after(interrupted, order, target, extra)
        resumed_from.append(started)
        assert started % CHECKPOINT_EVERY == 0  # whole checkpoints only
        assert started <= last + 1  # never claims batches it did not see
    lines = run_to_end(interrupted, order)
    start_line = lines[0].split()
    final_start, rows_written = int(start_line[1]), int(start_line[2])
    resumed_from.append(final_start)
    assert lines[-1] == "finished"
    # the later runs really resumed: they skipped batches covered by a checkpoint
    assert resumed_from[1] > 0 and resumed_from[-1] >= resumed_from[1]
    assert final_start >= 2 * total // 3 - CHECKPOINT_EVERY
    if order == "row-major":
        assert rows_written > 0  # rows finalised before the kill count as done

    got, got_meta = read_result(interrupted)
    want, want_meta = read_result(reference)
    for name in ("prob", "mask"):
        assert len(got[name]) == len(want[name]) >= 2
        for a, b in zip(got[name], want[name], strict=True):
            np.testing.assert_array_equal(a, b)  # bit for bit, every pyramid level
        assert got_meta[name].contrast_limits == want_meta[name].contrast_limits

    from cachetree import CacheTree
    from cachetree.tree.parts import list_parts

    node = CacheTree(interrupted).node("merge")
    assert not list_parts(node.location)  # spill and checkpoint parts are gone
    assert json.loads(node.item("canvas.json").read_text())["batches"] == total


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2], float(sys.argv[3]))
