"""The cache tree: commit, resume, stale detection, locks, walk and clean on local disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cachetree import (
    OpenMode,
    Status,
    cache_node_for,
    cdir_commit,
    cdir_init,
    cdir_query,
)
from cachetree.errors import (
    LockHeldError,
    StaleNodeError,
    StorageError,
    UncommittedChildrenError,
)
from cachetree.tree.layout import LOCK, MANIFEST, PARTS


def test_node_context_commits_on_success(tree):
    with tree.node("step", params={"sigma": 2.0}) as node:
        assert node.open_mode is OpenMode.NEW
        assert node.committed is None
        node.save_json("metrics", {"count": np.int64(3), "mean": np.float32(0.5)})
        node.save_text("notes", "all good")
    assert node.committed is not None
    manifest = node.manifest
    assert manifest.status is Status.COMMITTED
    assert set(manifest.items) == {"metrics.json", "notes.txt"}
    assert manifest.items["metrics.json"]["kind"] == "json"
    assert manifest.params == {"sigma": 2.0}
    assert tree.node("step").load_json("metrics") == {"count": 3, "mean": 0.5}


def test_node_context_stays_uncommitted_on_error(tree):
    with pytest.raises(RuntimeError, match="boom"), tree.node("step") as node:
        node.save_text("partial", "half")
        raise RuntimeError("boom")
    assert node.status is Status.OPEN
    assert not node.location.raw_child(LOCK).exists()  # the lock is released
    again = tree.node("step").open()
    assert again.open_mode is OpenMode.RESUMED
    assert again.item_names() == []  # the partial file was discarded


def test_committed_node_is_reused_and_not_rewritten(tree):
    with tree.node("step", params=1) as node:
        node.save_text("a", "first")
    first_time = node.committed
    with tree.node("step", params=1) as node:
        assert node.open_mode is OpenMode.REUSED
        assert not node.writing
    assert node.committed == first_time
    assert node.load_text("a.txt") == "first"


def test_cdir_functional_api_and_nested_children(tmp_path):
    root = str(tmp_path / "root")
    query = cdir_init(root)
    assert not query.commit and query.mode is OpenMode.NEW
    sub = cdir_init(f"{root}/subdir")
    assert not sub.commit
    sub.node.save_text("log", "sub step")
    with pytest.raises(UncommittedChildrenError, match="subdir"):
        cdir_commit(root)
    cdir_commit(f"{root}/subdir")
    cdir_commit(root)
    again = cdir_init(root)
    assert again.commit and again.mode is OpenMode.REUSED
    assert cdir_query(f"{root}/subdir").commit is not None
    assert cdir_query(f"{root}/never").status is Status.MISSING


def test_cache_url_convention(tmp_path):
    def process(x, context_args):
        node = cache_node_for(context_args, params={"factor": 2})
        if node is not None and node.committed:
            return node.load_json("result")
        result = [v * 2 for v in x]
        if node is not None:
            node.save_json("result", result)
            node.commit()
        return result

    assert process([1, 2], {"cache_url": None}) == [2, 4]
    assert not os.listdir(tmp_path)
    url = str(tmp_path / "cache")
    assert process([1, 2], {"cache_url": url}) == [2, 4]
    assert process([9, 9], {"cache_url": url}) == [2, 4]  # served from the cache


def test_resume_keeps_committed_children(tree):
    parent = tree.node("parent", params={"p": 1}).open()
    with parent.child("done", params=1) as child:
        child.save_text("x", "kept")
    parent.save_text("own", "partial")
    parent.abandon()  # as if the run had crashed here

    parent = tree.node("parent", params={"p": 1}).open()
    assert parent.open_mode is OpenMode.RESUMED
    assert "own.txt" not in parent.item_names()
    child = parent.child("done", params=1).open()
    assert child.open_mode is OpenMode.REUSED
    assert child.load_text("x.txt") == "kept"


def test_parts_survive_resume_with_same_params_only(tree):
    node = tree.node("n", params=1).open()
    node.location.raw_child(PARTS).makedirs()
    node.location.raw_child(PARTS).raw_child("p0").write_bytes(b"part")
    node.abandon()
    assert tree.node("n", params=1).open().location.raw_child(PARTS).exists()
    tree.node("n", params=1).abandon()
    assert not tree.node("n", params=2).open().location.raw_child(PARTS).exists()


def test_stale_params_recompute_and_raise(tree):
    with tree.node("step", params={"t": 0.5}) as node:
        node.save_text("v", "old")
    with pytest.raises(StaleNodeError, match="different parameters"):
        tree.node("step", params={"t": 0.7}, on_stale="raise").open()
    assert tree.node("step").load_text("v.txt") == "old"  # raising changed nothing
    with tree.node("step", params={"t": 0.7}) as node:
        assert node.open_mode is OpenMode.RECOMPUTE
        assert "different parameters" in node.stale_reason
        assert node.item_names() == []
        node.save_text("v", "new")
    assert tree.node("step").load_text("v.txt") == "new"


def test_parent_recompute_makes_children_stale(tree):
    with tree.node("a", params=1) as a, a.child("b", params=1) as b:
        b.save_text("x", "1")
    with tree.node("a", params=2) as a:
        infos = {i.path: i for i in tree.walk()}
        assert infos["a/b"].stale and infos["a/b"].state == "stale"
        b = a.child("b", params=1).open()
        assert b.open_mode is OpenMode.RECOMPUTE
        assert b.stale_reason == "its parent node was recomputed"
        b.commit()
    assert not {i.path: i for i in tree.walk()}["a/b"].stale


def test_depends_on_propagates_changes_to_siblings(tree):
    with tree.node("input", params=1) as inp:
        inp.save_text("x", "1")
    with tree.node("derived", depends_on=[tree.node("input")]) as out:
        out.save_text("y", "2")
    assert tree.node("derived", depends_on=[tree.node("input")]).open().open_mode is OpenMode.REUSED
    with tree.node("input", params=2) as inp:
        inp.save_text("x", "2")
    node = tree.node("derived", depends_on=[tree.node("input")]).open()
    assert node.open_mode is OpenMode.RECOMPUTE


HOLD_LOCK = """
import sys, time
from cachetree import CacheTree
node = CacheTree(sys.argv[1]).node("busy").open()
print("locked", flush=True)
time.sleep(60)
"""


def test_lock_held_by_live_process_and_stale_lock_broken(tree):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, tree.url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(LockHeldError, match=f"pid {proc.pid}"):
            tree.node("busy").open()
        infos = {i.path: i for i in tree.walk()}
        assert infos["busy"].state == "in progress"
    finally:
        proc.kill()
        proc.wait()
    infos = {i.path: i for i in tree.walk()}
    assert infos["busy"].state == "uncommitted"  # the writer is gone
    node = tree.node("busy").open()  # the stale lock is broken
    assert node.open_mode is OpenMode.RESUMED
    node.commit()
    assert node.status is Status.COMMITTED


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"status": "weird"}'])
def test_corrupt_manifest_is_reported_and_recovered(tree, content):
    with tree.node("step") as node:
        node.save_text("x", "1")
    node.location.raw_child(MANIFEST).write_bytes(content)
    assert cdir_query(node.url).status is Status.CORRUPT
    info = {i.path: i for i in tree.walk()}["step"]
    assert info.state == "corrupt" and "open the node again" in info.error
    reopened = tree.node("step").open()
    assert reopened.open_mode is OpenMode.RECOMPUTE
    assert reopened.item_names() == []
    reopened.commit()
    assert reopened.status is Status.COMMITTED


def test_walk_lists_status_kind_size_time(tree):
    with tree.node("a") as a:
        a.save_json("m", {"v": 1})
        with a.child("b") as b:
            b.save_text("log", "hello")
    tree.node("c").open().abandon()
    infos = list(tree.walk())
    assert [i.path for i in infos] == ["", "a", "a/b", "c"]
    by = {i.path: i for i in infos}
    assert by["a"].state == "committed" and by["a"].children == ("b",)
    assert by["a/b"].kind == "node: log" and by["a/b"].bytes == len("hello")
    assert by["c"].state == "uncommitted" and by["c"].bytes is None
    assert all(i.time for i in infos)
    assert [i.path for i in tree.walk(max_depth=1)] == ["", "a", "c"]


def test_clean_dry_run_lists_then_deletes_only_leftovers(tree):
    with tree.node("keep") as keep:
        keep.save_text("x", "important")
    leftover = tree.node("crashed").open()
    leftover.save_text("half", "x" * 1000)
    leftover.abandon()
    with tree.node("old", params=1) as old, old.child("kid") as kid:
        kid.save_text("k", "y" * 500)
    with tree.node("old", params=2):
        pass  # old/kid is now stale
    keep.location.raw_child(".junk.tmp-abc").write_bytes(b"z" * 10)

    plan = tree.clean(dry_run=True)
    reasons = {e.url: e.reason for e in plan.entries}
    assert reasons[tree.node("crashed").url] == "uncommitted leftover"
    assert reasons[tree.node("old/kid").url].startswith("stale")
    assert reasons[keep.location.raw_child(".junk.tmp-abc").url] == "temporary file"
    assert plan.total_bytes >= 1500 + 10
    assert "total" in str(plan)
    assert tree.node("crashed").status is Status.OPEN  # dry run deleted nothing

    tree.clean(dry_run=False)
    assert tree.node("keep").load_text("x.txt") == "important"
    assert "crashed" not in tree and "old/kid" not in tree
    assert not keep.location.raw_child(".junk.tmp-abc").exists()
    assert len(tree.clean()) == 0

    plan = tree.clean(dry_run=False, remove=["keep"])
    assert [e.reason for e in plan.entries] == ["asked by name"]
    assert "keep" not in tree


def test_inventory_records_arrays(tree):
    with tree.node("arrays") as node:
        node.save_array("dense", np.arange(12, dtype="int16").reshape(3, 4))
    item = node.manifest.items["dense.zarr"]
    assert item["kind"] == "array" and item["shape"] == [3, 4] and "int16" in item["dtype"]
    np.testing.assert_array_equal(node.open_array("dense").compute(), np.arange(12).reshape(3, 4))
    raw = json.loads(node.location.raw_child(MANIFEST).read_text())
    assert raw["status"] == "committed" and raw["version"]


@pytest.mark.parametrize("fmt", ["0.5", "0.4"])
def test_inventory_records_standalone_labels_in_either_layout(tree, fmt):
    from cachetree.images.ngff import write_image

    labels = np.zeros((40, 48), np.uint16)
    labels[4:9, 5:20] = 3
    with tree.node("labels") as node:
        info = node.save_labels("mask", labels, format=fmt)  # mask.ome.zarr/labels/mask
        # the layout of earlier versions: the item itself is the labels image
        write_image(node.item("earlier.ome.zarr"), labels, labels=True, format=fmt)
    assert info.version == fmt and info.labels and info.name == "mask"
    assert node.item_names() == ["earlier.ome.zarr", "mask.ome.zarr"]
    for name in ("mask", "earlier"):
        item = node.manifest.items[f"{name}.ome.zarr"]
        summary = {key: item[key] for key in ("kind", "shape", "levels", "ngff")}
        assert summary == {"kind": "labels", "shape": [40, 48], "levels": 1, "ngff": fmt}, name
        assert "labels" not in item  # labels, not an image with labels under it
        np.testing.assert_array_equal(node.open_image(name)[0], labels)


def test_node_writer_is_flushed_before_commit(tree):
    big = np.arange(200_000, dtype=np.float64)  # above the writer's synchronous threshold
    with tree.node("async") as node:
        for i in range(5):
            node.writer.write(f"pred_{i}", big + i)
        node.writer.write("heads", {"a": big, "b": big[:10]})
    items = node.manifest.items
    assert {f"pred_{i}.npy" for i in range(5)} | {"heads_a.npy", "heads_b.npy"} == set(items)
    assert all(item["kind"] == "array" for item in items.values())
    np.testing.assert_array_equal(np.load(node.item("pred_4.npy").path), big + 4)


def test_node_writer_failure_keeps_node_uncommitted(tree):
    node = tree.node("fails").open()
    node.item("clash.npy").makedirs()  # a directory where the file should go
    node.writer.write("clash", np.zeros(100_000))
    with pytest.raises(StorageError, match="clash"):
        node.commit()
    assert node.status is Status.OPEN
