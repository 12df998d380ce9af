"""Create and commit many nodes (some nested in groups) while clean may run beside it.

usage: churn_nodes.py ROOT COUNT [PASSES_FILE]
Prints one line per committed node; exits non-zero on any error. With PASSES_FILE (where
clean_loop.py counts its passes), every 50th node waits, open, until a clean pass more has
finished, so clean runs beside the writer however fast either is.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from cachetree import CacheTree


def node_path(i: int) -> str:
    """Flat nodes, nodes in a group, and nodes in nested groups created on the fly."""
    if i % 3 == 0:
        return f"n{i:03d}"
    if i % 3 == 1:
        return f"g{i % 4}/n{i:03d}"
    return f"deep{i:03d}/a/n{i:03d}"


def content(i: int) -> np.ndarray:
    return np.full((8, 8), i, dtype=np.int32)


def clean_passes(passes_file: Path) -> int:
    try:
        return int(passes_file.read_text())
    except (FileNotFoundError, ValueError):
        return 0


def wait_for_a_clean_pass(passes_file: Path, timeout: float = 120.0) -> None:
    seen = clean_passes(passes_file)
    deadline = time.monotonic() + timeout
    while clean_passes(passes_file) <= seen:
        if time.monotonic() > deadline:
            raise SystemExit(f"no clean pass finished in {timeout} s")
        time.sleep(0.02)


def main(root: str, count: int, passes_file: str | None = None) -> None:
    tree = CacheTree(root)
    for i in range(count):
        with tree.node(node_path(i), params={"i": i}) as node:
            node.save_json("meta", {"i": i})
            if passes_file is not None and i % 50 == 25:
                wait_for_a_clean_pass(Path(passes_file))  # a clean pass sees this node open
            node.writer.write("data", content(i))
        print(node_path(i), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:4])
