"""User combiners for the combine tests, and a worker run as a subprocess by them.

Usage as a worker:

    python -m tests.workers.combiners write-parts NODE_URL WORKER_ID
    python -m tests.workers.combiners combine NODE_URL PAUSE_SECONDS
"""

from __future__ import annotations

import sys
import time

import numpy as np

KEYS = (0.1, 0.2, 0.3)
SHAPE = (2, 6, 5)


def scaled_sum(parts, *, key, shared, factor=1.0):
    """Sum of the parts' ``data`` times the shared ``thresholds/scale`` and ``factor``."""
    total = sum(np.asarray(p["data"], dtype=np.float64) for p in parts)
    return total * shared["thresholds"]["scale"] * factor + key


def slow_mean(parts, *, key, shared, pause=0.0):
    """The canvas mean, announcing each key and pausing (crash tests kill it meanwhile)."""
    from cachetree.results import combine_canvas_mean

    print(f"combining {key}", flush=True)
    time.sleep(pause)
    return combine_canvas_mean(parts, key=key, shared=shared)


not_callable = 42


def part_arrays(worker: int, key_index: int) -> dict[str, np.ndarray]:
    """Deterministic canvas part of ``worker`` for ``KEYS[key_index]``: a weighted sum and
    weights that are zero in some places."""
    rng = np.random.default_rng(1000 * worker + key_index)
    weight = rng.integers(0, 3, size=SHAPE[1:]).astype(np.float32)
    values = rng.normal(size=SHAPE).astype(np.float32)
    return {"sum": values * weight, "weight": weight}


def part_key(worker: int, key_index: int) -> float:
    """Odd workers compute the key so that it is not bit-identical (0.1 + 0.2 != 0.3)."""
    key = KEYS[key_index]
    if worker % 2 and key_index == 2:
        return 0.1 + 0.2
    return key


def expected_mean(workers: list[int], key_index: int) -> np.ndarray:
    """numpy reference of the canvas mean of the parts of ``workers`` for one key."""
    parts = [part_arrays(w, key_index) for w in workers]
    total = sum(p["sum"].astype(np.float64) for p in parts)
    weight = sum(p["weight"].astype(np.float64) for p in parts)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 0, total / weight, 0.0).astype(np.float32)


def write_parts(url: str, worker: int) -> None:
    from cachetree.results import add_part

    for i in range(len(KEYS)):
        add_part(url, part_key(worker, i), part_arrays(worker, i), name=f"w{worker}-k{i}")
        print(f"worker {worker} wrote key {i}", flush=True)


def run_combine(url: str, pause: float) -> None:
    from cachetree.results import combining as combine_module

    def hook(stage: str) -> None:
        print(stage, flush=True)
        time.sleep(pause)

    combine_module._STAGE_HOOK = hook
    combine_module.combine(url)
    print("done", flush=True)


if __name__ == "__main__":
    command, url = sys.argv[1], sys.argv[2]
    if command == "write-parts":
        write_parts(url, int(sys.argv[3]))
    elif command == "combine":
        run_combine(url, float(sys.argv[3]))
    else:
        raise SystemExit(f"unknown command {command}")
