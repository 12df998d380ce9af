"""Cache-tree walk and commit latency, each next to a plain-filesystem baseline.

    python benchmarks/tree.py [--nodes 10000] [--fanout 100]

* walk: ``CacheTree.walk()`` over N nodes (reads every manifest, status and lock) versus
  ``os.walk`` of the same directories plus ``json.load`` of each manifest;
* commit: opening + committing a node with one small item versus writing the same item and
  a JSON file with plain ``open().write()`` (no fsync, no rename).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from cachetree import CacheTree
from cachetree.tree.layout import MANIFEST


def build(root: Path, nodes: int, fanout: int) -> CacheTree:
    tree = CacheTree(root)
    groups = max(1, nodes // fanout)
    for g in range(groups):
        with tree.node(f"g{g:04d}") as group:
            for i in range(fanout):
                with group.child(f"n{i:04d}", params={"i": i}) as node:
                    node.save_text("log", "x")
    return tree


def baseline_walk(root: Path) -> int:
    count = 0
    for dirpath, _dirs, files in os.walk(root):
        if MANIFEST in files:
            with open(os.path.join(dirpath, MANIFEST)) as fh:
                json.load(fh)
            count += 1
    return count


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--fanout", type=int, default=100)
    parser.add_argument("--commits", type=int, default=300)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "tree"
        start = time.perf_counter()
        tree = build(root, args.nodes, args.fanout)
        build_s = time.perf_counter() - start
        walk_s, infos = timed(lambda: list(tree.walk()))
        base_s, count = timed(lambda: baseline_walk(root))
        assert len(infos) == count, (len(infos), count)

        commit_root = CacheTree(Path(tmp) / "commits")
        start = time.perf_counter()
        for i in range(args.commits):
            with commit_root.node(f"c{i}", params={"i": i}) as node:
                node.save_text("log", "x")
        commit_s = (time.perf_counter() - start) / args.commits
        plain = Path(tmp) / "plain"
        start = time.perf_counter()
        for i in range(args.commits):
            d = plain / f"c{i}"
            d.mkdir(parents=True)
            (d / "log.txt").write_text("x")
            (d / "state.json").write_text(json.dumps({"i": i, "status": "committed"}))
        plain_s = (time.perf_counter() - start) / args.commits

    print(f"built {count} nodes in {build_s:.1f} s ({build_s / count * 1e3:.2f} ms per node)")
    print(f"{'case':<34}{'baseline':>12}{'cachetree':>12}{'ratio':>8}")
    print(
        f"{'walk ' + str(count) + ' nodes':<34}{base_s:>11.3f}s{walk_s:>11.3f}s"
        f"{walk_s / base_s:>8.2f}"
    )
    print(
        f"{'open+commit one node':<34}{plain_s * 1e3:>10.2f}ms{commit_s * 1e3:>10.2f}ms"
        f"{commit_s / plain_s:>8.2f}"
    )


if __name__ == "__main__":
    main()
