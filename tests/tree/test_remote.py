"""The cache tree on fsspec filesystems: memory:// and s3:// against a real S3 server."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from cachetree import CacheTree, OpenMode, Status, cdir_commit, cdir_init, cdir_query
from cachetree.errors import LockHeldError
from cachetree.fs.location import Location, cat_existing
from cachetree.tree.lock import LockInfo, acquire_lock, break_lock, lock_location, read_lock


@pytest.fixture(params=["memory", "s3"])
def root_url(request):
    if request.param == "memory":
        return f"memory://cachetree-{uuid.uuid4().hex}"
    return request.getfixturevalue("s3_root") + "/run"


def test_full_cycle_on_remote(root_url):
    tree = CacheTree(root_url)
    with tree.node("seg", params={"t": 1}) as node:
        node.save_json("metrics", {"n": 3})
        node.save_image("prob", np.linspace(0, 1, 64 * 48, dtype="float32").reshape(64, 48))
        with node.child("detail") as child:
            child.save_text("log", "hello")
    assert tree.node("seg").status is Status.COMMITTED
    reopened = tree.node("seg", params={"t": 1}).open()
    assert reopened.open_mode is OpenMode.REUSED
    assert reopened.load_json("metrics") == {"n": 3}
    level0 = reopened.open_image("prob")[0].compute()
    assert level0.shape == (64, 48) and level0[-1, -1] == 1.0
    infos = {i.path: i for i in tree.walk()}
    assert infos["seg"].state == "committed" and infos["seg/detail"].kind == "node: log"
    assert infos["seg"].manifest.items["prob.ome.zarr"]["kind"] == "image"

    stale = tree.node("seg", params={"t": 2}).open()
    assert stale.open_mode is OpenMode.RECOMPUTE
    stale.commit()
    plan = tree.clean(dry_run=False)
    assert [e.reason for e in plan.entries] == ["stale: its parent was recomputed"]
    assert "seg/detail" not in tree


def test_functional_api_on_remote(root_url):
    assert not cdir_init(root_url).commit
    assert not cdir_init(f"{root_url}/sub").commit
    cdir_commit(f"{root_url}/sub")
    cdir_commit(root_url)
    assert cdir_query(root_url).commit
    assert cdir_init(f"{root_url}/sub").mode is OpenMode.REUSED


def test_remote_lock_is_exclusive(root_url):
    tree = CacheTree(root_url)
    location = tree.node("n").location
    location.makedirs()
    foreign = LockInfo(host="another-host", pid=1, started=0.0, token="t")
    lock_location(location).write_bytes(foreign.to_json())
    assert not foreign.is_stale()  # a lock of another host is never assumed dead
    with pytest.raises(LockHeldError, match="another-host"):
        acquire_lock(location)
    assert break_lock(location) == foreign
    mine = acquire_lock(location)
    assert mine.is_mine() and acquire_lock(location) == mine  # re-entrant, stored once


def _s3_calls(fs) -> list[str]:
    """The S3 operations ``fs`` sends from now on (botocore's own events, on its client)."""
    calls: list[str] = []
    fs.s3.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    return calls


def test_reads_on_s3_are_one_get_each_with_no_existence_check(s3_root):
    tree = CacheTree(s3_root + "/run")
    with tree.node("seg", params={"t": 1}) as node:
        node.save_json("metrics", {"n": 3})
        node.save_image("prob", np.zeros((64, 48), np.float32))
    node = tree.node("seg", params={"t": 1})
    loc = node.location
    calls = _s3_calls(loc.fs)

    assert node.status is Status.COMMITTED  # reads the manifest
    assert calls == ["GetObject"]
    calls.clear()
    assert read_lock(loc) is None  # no lock once committed: one 404
    assert calls == ["GetObject"]
    calls.clear()
    image = loc.raw_child("prob.ome.zarr")
    found = cat_existing(loc.fs, [image.raw_child("zarr.json").path, image.raw_child("x").path])
    assert list(found) == [image.raw_child("zarr.json").path]
    assert json.loads(found[image.raw_child("zarr.json").path])["zarr_format"] == 3
    assert sorted(calls) == ["GetObject", "GetObject"]
    calls.clear()  # arrays may be big: s3fs may read them in concurrent ranges, size first
    metrics = loc.raw_child("metrics.json")
    assert json.loads(metrics.read_bytes(large=True)) == {"n": 3}
    assert calls == ["HeadObject", "GetObject"]


def test_removing_on_s3_lists_once_and_deletes_in_one_batch(s3_root):
    loc = Location.from_url(s3_root + "/run")
    loc.fs.pipe({f"{loc.path}/tree/{i}/f": b"1" for i in range(3)} | {f"{loc.path}/file": b"2"})
    calls = _s3_calls(loc.fs)
    loc.raw_child("tree").remove()
    assert calls == ["ListObjectsV2", "DeleteObjects"]
    calls.clear()
    loc.raw_child("missing").remove()  # the listing is empty: is it a file? (HEAD, listing)
    assert calls == ["ListObjectsV2", "HeadObject", "ListObjectsV2"]
    calls.clear()
    loc.raw_child("file").remove()
    assert calls == ["ListObjectsV2", "HeadObject", "DeleteObjects"]
    assert loc.fs.find(loc.path, refresh=True) == []
