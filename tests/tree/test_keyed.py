"""Keyed stores: one lazily loaded array per key, float keys matched with a tolerance."""

from __future__ import annotations

import gc
import json
import weakref

import numpy as np
import pytest

import cachetree.tree.keyed as keyed_module
from cachetree import CacheTree, Status
from cachetree.errors import FinalizedError, InvalidDataError, KeyLookupError, ShapeMismatchError
from cachetree.tree.keyed import INVENTORY, KeyedStore, canonical_key, key_filename


def arr(i: int, shape=(3, 4)) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + i


@pytest.fixture
def filled(tree):
    with tree.node("out", params={"grid": "q2"}) as node, node.keyed() as store:
        for i, key in enumerate([10.0, 0.3, 100, "head-a", ("tile", 2, 0.5)]):
            store.write(key, arr(i))
    return tree.node("out")


def test_roundtrip_and_inventory(filled):
    store = filled.keyed()
    assert len(store) == 5
    assert list(store) == [0.3, 10.0, 100, "head-a", ("tile", 2, 0.5)]  # numbers, str, tuples
    np.testing.assert_array_equal(store[10.0], arr(0))
    np.testing.assert_array_equal(store["head-a"], arr(3))
    np.testing.assert_array_equal(store[["tile", 2, 0.5]], arr(4))  # a list is a tuple key
    assert store.info(100)["shape"] == [3, 4] and store.info(100)["dtype"] == "<f4"

    manifest = filled.manifest
    assert manifest.status is Status.COMMITTED
    item = manifest.items["results.keyed"]
    assert item["kind"] == "keyed" and item["keys"] == 5 and item["dtype"] == "float32"
    files = store.location.ls()
    assert INVENTORY in files and len(files) == 6
    assert all(f.startswith("k-") and f.endswith(".npy") for f in files if f != INVENTORY)


def test_filenames_are_safe_deterministic_and_distinct():
    keys = [1, 1.0, "1", (1,), "../../etc/passwd", "a/b\\c:d", "x" * 300, ("a", "b"), "a_b"]
    names = [key_filename(canonical_key(k)) for k in keys]
    assert len(set(names)) == len(names)
    assert names == [key_filename(canonical_key(k)) for k in keys]
    for name in names:
        assert "/" not in name and "\\" not in name and ".." not in name and len(name) < 64


def test_float_keys_match_with_tolerance(filled):
    store = filled.keyed()
    np.testing.assert_array_equal(store[0.1 + 0.2], arr(1))  # 0.30000000000000004
    np.testing.assert_array_equal(store[np.float32(10.0)], arr(0))
    np.testing.assert_array_equal(store[("tile", 2, 0.5 + 1e-13)], arr(4))
    np.testing.assert_array_equal(store[100.0], arr(2))  # an int key found by a close float
    assert 0.3 + 1e-12 in store and 0.31 not in store and "nope" not in store
    assert store.resolve(0.1 + 0.2) == 0.3
    with pytest.raises(KeyLookupError, match=r"no key 0\.31"):
        store[0.31]
    with pytest.raises(KeyLookupError, match=r"no key \('tile', 3, 0.5\)"):
        store[("tile", 3, 0.5)]
    with pytest.raises(KeyError):  # KeyLookupError is a KeyError
        store["missing"]


def test_ambiguous_float_key_lists_candidates(tree):
    with tree.node("amb") as node, node.keyed(rel_tol=1e-12) as store:
        store.write(1.0, arr(0))
        store.write(1.0 + 1e-10, arr(1))  # distinct at this tolerance
    loose = tree.node("amb").keyed(rel_tol=1e-6)
    with pytest.raises(KeyLookupError, match="ambiguous") as info:
        loose[1.0 + 5e-11]
    assert "1.0, 1.0000000001" in str(info.value)
    np.testing.assert_array_equal(loose[1.0], arr(0))  # an exact match is not ambiguous


def test_writing_a_close_key_replaces_it(tree):
    with tree.node("rep") as node, node.keyed() as store:
        store.write(0.3, arr(0))
        assert store.write(0.1 + 0.2, arr(5)) == 0.3
        np.testing.assert_array_equal(store[0.3], arr(5))  # read back before flush
    assert list(tree.node("rep").keyed()) == [0.3]


def test_subset_loads_only_those_files(filled, monkeypatch):
    store = filled.keyed()
    loaded = []
    real = keyed_module._load_file
    monkeypatch.setattr(
        keyed_module, "_load_file", lambda loc, **kw: loaded.append(loc.name) or real(loc, **kw)
    )
    # delete one key's file: loading others must not touch it
    store.raw_file("head-a").remove()
    subset = store.load([0.3, 100])
    assert list(subset) == [0.3, 100] and len(loaded) == 2
    np.testing.assert_array_equal(subset[100], arr(2))
    stacked = store.load([10.0, 0.3], stack=True)
    assert stacked.shape == (2, 3, 4)
    np.testing.assert_array_equal(stacked[1], arr(1))
    with pytest.raises(KeyLookupError):  # every key is resolved before anything is read
        store.load([0.3, 0.77])


def test_iteration_holds_one_array_at_a_time(filled):
    store = filled.keyed()
    previous = None
    seen = 0
    for _key, value in store.items():
        if previous is not None:
            gc.collect()
            assert previous() is None  # the earlier array was dropped
        previous = weakref.ref(value)
        seen += 1
        del value
    assert seen == 5


def test_stack_needs_equal_shapes(tree):
    with tree.node("mixed") as node, node.keyed() as store:
        store.write(1, np.zeros((2, 2)))
        store.write(2, np.zeros((3, 2)))
    with pytest.raises(ShapeMismatchError, match="different shapes"):
        tree.node("mixed").keyed().load(stack=True)


@pytest.mark.parametrize("key", [None, True, float("nan"), float("inf"), (), {"a": 1}, b"x"])
def test_bad_keys_are_rejected(tree, key):
    with tree.node("bad") as node, node.keyed() as store:
        with pytest.raises(InvalidDataError):
            store.write(key, np.zeros(2))
        store.write("ok", np.zeros(2))


def test_object_arrays_are_rejected(tree):
    with tree.node("obj") as node, node.keyed() as store:
        with pytest.raises(InvalidDataError, match="object"):
            store.write(1, np.array([{}, None], dtype=object))
        store.write(1, np.zeros(1))


def test_read_only_unless_node_open(filled):
    with pytest.raises(FinalizedError, match="committed"):
        filled.keyed().write(1.5, np.zeros(2))
    with pytest.raises(FinalizedError, match="read only"):
        KeyedStore(filled.url).write(1.5, np.zeros(2))
    assert len(KeyedStore(filled.url)) == 5  # reading from a path works


def test_inventory_is_written_only_after_the_arrays(tree, monkeypatch):
    node = tree.node("atomic").open()
    store = node.keyed()
    store.write("a", np.ones(100_000))  # large: goes to the writer's pool
    assert not store.exists  # nothing published yet
    store.flush()
    doc = json.loads(store.location.raw_child(INVENTORY).read_text())
    assert [e["key"] for e in doc["entries"]] == ["a"]
    assert store.location.raw_child(doc["entries"][0]["file"]).exists()
    store.close()
    node.commit()


def test_failed_body_publishes_no_inventory(tree):
    node = tree.node("fail").open()
    with pytest.raises(RuntimeError), node.keyed() as store:
        store.write(1, np.zeros(3))
        raise RuntimeError("boom")
    assert not store.exists
    node.abandon()


def test_memory_filesystem_roundtrip():
    tree = CacheTree("memory://keyed-test")
    with tree.node("m", params=1) as node, node.keyed("heads") as store:
        store.write(("head", 0), np.arange(4))
        store.write(("head", 1), np.arange(4) * 2)
    store = tree.node("m").keyed("heads")
    assert list(store) == [("head", 0), ("head", 1)]
    np.testing.assert_array_equal(store[("head", 1)], np.arange(4) * 2)
    assert store.load(stack=True).shape == (2, 4)


def test_commit_flushes_open_keyed_stores(tmp_path):
    from cachetree import CacheTree

    tree = CacheTree(tmp_path / "t")
    with tree.node("k") as node:
        store = node.keyed()
        assert node.keyed() is store  # one store object per name while writing
        for q2 in (1.5, 2.5):
            store.write(q2, np.full((3, 3), q2))
    reread = tree.node("k").keyed()
    assert sorted(reread.keys()) == [1.5, 2.5]
    np.testing.assert_array_equal(reread[2.5 + 1e-12], np.full((3, 3), 2.5))
    assert node.manifest.items["results.keyed"]["kind"] == "keyed"
