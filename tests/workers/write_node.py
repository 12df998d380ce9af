"""Write a small pipeline into a cache tree, announcing each step (killed by tests on purpose).

Usage: python write_node.py ROOT [PAUSE_SECONDS]
"""

from __future__ import annotations

import sys
import time

import numpy as np

from cachetree import CacheTree


def expected_image(i: int) -> np.ndarray:
    """Deterministic test data for item ``i``."""
    rng = np.random.default_rng(i)
    return rng.integers(0, 1000, size=(2, 300, 260), dtype=np.uint16)


def step(message: str, pause: float) -> None:
    print(message, flush=True)
    time.sleep(pause)


def main(root: str, pause: float) -> None:
    tree = CacheTree(root)
    with tree.node("pipeline", params={"n": 3}) as pipeline:
        step(f"pipeline {pipeline.open_mode.value}", pause)
        for i in range(3):
            with pipeline.child(f"tile{i}", params={"i": i}) as tile:
                step(f"tile{i} {tile.open_mode.value}", pause)
                if tile.writing:
                    tile.save_image("image", expected_image(i), axes="cyx")
                    step(f"tile{i} image written", pause)
                    tile.save_array("raw", expected_image(i)[0])
                    tile.save_json("stats", {"sum": int(expected_image(i).sum())})
                    step(f"tile{i} committing", pause)
        if pipeline.writing:
            pipeline.save_text("summary", "3 tiles")
            step("pipeline committing", pause)
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 0.0)
