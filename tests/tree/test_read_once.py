"""Read once: how many times operations open manifests (counted with an audit hook)."""

from __future__ import annotations

import contextlib
import sys

import numpy as np
import pytest

from cachetree.results import add_part, combine, set_combiner
from cachetree.tree.layout import MANIFEST

_counting: list[list[str]] = []


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _counting:
        path, mode = args[0], args[1]
        if isinstance(path, str) and path.endswith(MANIFEST) and "r" in str(mode or "r"):
            _counting[-1].append(path)


sys.addaudithook(_audit)


@contextlib.contextmanager
def manifest_reads():
    reads: list[str] = []
    _counting.append(reads)
    try:
        yield reads
    finally:
        _counting.remove(reads)


@pytest.fixture
def deep(tree):
    with tree.node("a/b/c/d", params={"x": 1}) as node:
        node.save_json("m", {"v": 1})
    return tree


def test_reopening_a_committed_node_reads_two_manifests(deep):
    node = deep.node("a/b/c/d", params={"x": 1})
    with manifest_reads() as reads:
        node.open()
    assert node.open_mode.value == "reused"
    assert len(reads) == 2  # its parent's and its own, whatever the depth


def test_opening_a_new_node_reads_each_manifest_at_most_twice(deep):
    node = deep.node("a/b/c/e", params={"x": 2})
    with manifest_reads() as reads:
        node.open()
    assert node.writing
    assert len(reads) == 4  # parent and own, before and under the lock
    with manifest_reads() as reads:
        node.commit()
    assert len(reads) == 1


def test_walk_reads_each_manifest_once(tree):
    for i in range(20):
        with tree.node(f"g{i % 4}/n{i}") as node:
            node.save_json("m", {"i": i})
    with manifest_reads() as reads:
        infos = list(tree.walk())
    assert len(infos) == 1 + 4 + 20
    assert len(reads) == len(set(reads)) == len(infos)


def test_combine_reads_few_manifests(tree):
    node = tree.node("parts").open()
    set_combiner(node, "sum")
    node.abandon()
    for i in range(3):
        add_part(node.url, "k", np.full(4, i, np.float32), name=f"p{i}")
    with manifest_reads() as reads:
        combine(node.url, progress=False)
    assert tree.node("parts").keyed().load(["k"])["k"].tolist() == [3.0] * 4
    assert len(reads) <= 4
