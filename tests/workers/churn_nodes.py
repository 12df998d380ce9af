"""Create and commit many nodes (some nested in groups) while clean may run beside it.

usage: churn_nodes.py ROOT COUNT
Prints one line per committed node; exits non-zero on any error.
"""

from __future__ import annotations

import sys

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


def main(root: str, count: int) -> None:
    tree = CacheTree(root)
    for i in range(count):
        with tree.node(node_path(i), params={"i": i}) as node:
            node.save_json("meta", {"i": i})
            node.writer.write("data", content(i))
        print(node_path(i), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
