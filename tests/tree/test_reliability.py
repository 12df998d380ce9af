"""Clean beside live writers, corrupt state that never blocks the tree, and small CLI rules."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cachetree import CacheTree, Status
from cachetree.cli import main as cli
from cachetree.errors import (
    CorruptManifestError,
    InvalidDataError,
    InvalidNameError,
    LockHeldError,
)
from cachetree.tree.layout import LOCK, MANIFEST, PARTS
from cachetree.tree.lock import acquire_lock, read_lock
from tests.paths import REPO, WORKERS
from tests.workers.churn_nodes import content, node_path

ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
}


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )


# -- 1. clean never removes a live writer's work ---------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["api", "cli"])
def test_clean_in_a_loop_never_removes_committed_nodes(tmp_path, mode):
    root = tmp_path / "root"
    CacheTree(root)
    stop = tmp_path / "stop"
    count = 150
    cleaner = _spawn(str(WORKERS / "clean_loop.py"), str(root), str(stop), mode)
    passes_file = f"{stop}.passes"  # the writer waits for clean passes while a node is open
    writer = _spawn(str(WORKERS / "churn_nodes.py"), str(root), str(count), passes_file)
    out, err = writer.communicate(timeout=600)
    stop.touch()
    c_out, c_err = cleaner.communicate(timeout=120)
    assert writer.returncode == 0, err
    assert cleaner.returncode == 0, c_err
    assert "passes=" in c_out
    passes = int(c_out.split("passes=")[1].split()[0])
    assert passes >= 3, f"clean ran only {passes} times beside the writer"
    assert len(out.split()) == count
    tree = CacheTree(root)
    for i in range(count):
        node = tree.node(node_path(i), params={"i": i})
        assert node.status is Status.COMMITTED, node_path(i)
        assert node.load_json("meta") == {"i": i}
        np.testing.assert_array_equal(np.load(node.item("data.npy").path), content(i))
    # and once the writer is done, a clean finds nothing of its to delete
    assert [
        e for e in tree.clean(dry_run=True).entries if e.reason != "lock of a dead process"
    ] == []


def test_clean_keeps_a_node_a_live_process_holds(tree):
    node = tree.node("busy").open()
    node.save_json("x", {"a": 1})
    plan = tree.clean()
    assert not any("busy" in e.url for e in plan.entries)
    node.commit()


def test_execute_rechecks_under_the_lock(tree):
    """A node planned as a leftover but committed before execute is kept."""
    node = tree.node("late").open()
    node.abandon()  # uncommitted, no lock: a leftover now
    plan = tree.clean()
    assert [e.reason for e in plan.entries] == ["uncommitted leftover"]
    with tree.node("late") as again:
        again.save_json("x", {"a": 1})
    assert plan.execute() == 0
    assert [why for _, why in plan.skipped] == [
        "the node was committed or opened again since the plan"
    ]
    assert tree.node("late").load_json("x") == {"a": 1}


def test_writer_waits_for_a_clean_claim_and_recreates_a_removed_directory(tree):
    loc = tree.root.join("claimed")
    loc.makedirs()
    claim = acquire_lock(loc, purpose="clean", create_dirs=False)
    assert claim.purpose == "clean"
    # this process holds the claim, so a writer here would wait on itself: use a child process
    code = (
        "import sys; from cachetree import CacheTree\n"
        f"t = CacheTree({str(tree.root.path)!r})\n"
        "with t.node('claimed') as n: n.save_json('x', {'ok': 1})\n"
    )
    proc = _spawn("-c", code)
    # while the claim holds, the writer cannot start; remove the directory as clean would
    import time

    time.sleep(0.5)
    assert tree.node("claimed").status is Status.MISSING
    # a big leftover keeps the delete running across many of the writer's polls, each of which
    # creates a file in the directory: the delete must not fail with "directory not empty"
    for k in range(3000):
        (Path(loc.path) / f"leftover-{k}").touch()
    loc.remove()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert tree.node("claimed").load_json("x") == {"ok": 1}


def test_a_young_empty_folder_may_be_a_node_being_created(tree):
    (Path(tree.root.path) / "fresh").mkdir()
    assert tree.clean().entries == []


# -- 2. names that address nothing -----------------------------------------------------------
@pytest.mark.parametrize("name", ["", "."])
def test_empty_child_and_node_names_are_refused(tree, name):
    with tree.node("parent") as parent:
        parent.save_json("item", {"keep": True})
        with pytest.raises(InvalidNameError, match="names no node"):
            parent.child(name)
    with pytest.raises(InvalidNameError, match="names no node"):
        tree.node(name)
    assert tree.node("parent").load_json("item") == {"keep": True}


# -- 3. corrupt manifests never block the tree -----------------------------------------------
BAD_MANIFESTS = {
    "items-string": {"items": "oops"},
    "items-list": {"items": [1, 2]},
    "item-not-object": {"items": {"a": 3}},
    "committed-not-date": {"committed": "yesterday"},
    "status-unknown": {"status": "done"},
    "kind-number": {"kind": 3},
    "meta-list": {"meta": []},
}


def _write_good_then(tree: CacheTree, path: str) -> Path:
    with tree.node(path) as node:
        node.save_json("x", {"a": 1})
    return Path(node.location.path) / MANIFEST


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_wrong_typed_manifest_is_corrupt_and_listed(tree, case, capsys):
    manifest = _write_good_then(tree, "bad")
    _write_good_then(tree, "good")
    raw = json.loads(manifest.read_text())
    raw.update(BAD_MANIFESTS[case])
    manifest.write_text(json.dumps(raw))
    field = next(iter(BAD_MANIFESTS[case]))
    with pytest.raises(CorruptManifestError, match=f"field {field!r}"):
        _ = tree.node("bad").manifest
    states = {i.path: i.state for i in tree.walk()}
    assert states == {"": "root", "bad": "corrupt", "good": "committed"}
    root = tree.root.path
    assert cli(["ls", root]) == 0
    assert cli(["info", os.path.join(root, "bad")]) == 0
    assert "corrupt" in capsys.readouterr().out
    assert cli(["clean", root, "--dry-run"]) == 0
    assert "corrupt manifest" in capsys.readouterr().out


@pytest.mark.parametrize("content_", [b"{}", b"[]", b"null", b"\xff\xfe", b'{"status": "open"'])
def test_empty_object_and_garbage_manifests_are_corrupt(tree, content_):
    manifest = _write_good_then(tree, "bad")
    manifest.write_bytes(content_)
    assert tree.node("bad").status is Status.CORRUPT
    assert {i.path: i.state for i in tree.walk()}["bad"] == "corrupt"


def test_manifest_that_is_a_directory(tree, capsys):
    manifest = _write_good_then(tree, "bad")
    manifest.unlink()
    manifest.mkdir()
    info = {i.path: i for i in tree.walk()}["bad"]
    assert info.state == "corrupt" and "is a directory" in info.error
    assert cli(["ls", tree.root.path]) == 0
    # the remedy the message recommends works
    assert cli(["clean", tree.root.path, "--yes", "-q"]) == 0
    assert "bad" not in {i.path for i in tree.walk()}


def test_corrupt_node_remedies_work(tree):
    """Both remedies named in the message: re-open the node, or clean --remove it."""
    for path in ("a", "b"):
        _write_good_then(tree, path).write_text('{"items": 5}')
        with tree.node(f"{path}/child") as child:  # a committed child keeps a corrupt parent
            child.save_json("y", {"b": 2})
    with pytest.raises(CorruptManifestError) as exc:
        _ = tree.node("a").manifest
    message = str(exc.value)
    assert "open the node again" in message and "--remove PATH" in message
    with tree.node("a") as node:
        assert node.writing
        node.save_json("x", {"again": 1})
    assert tree.node("a").status is Status.COMMITTED
    assert cli(["clean", tree.root.path, "--remove", "b", "--yes", "-q"]) == 0
    # (a/child was made under the corrupt "a", so recomputing "a" made it stale: clean took it)
    assert {i.path for i in tree.walk()} == {"", "a"}


# -- 4. lock files --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw", [b"", b"garbage", b'{"pid": -1}', b'{"host": "h", "pid": "7"}', b"[1]"]
)
def test_unreadable_lock_never_blocks_its_node(tree, raw):
    node = tree.node("n").open()
    node.abandon()
    (Path(node.location.path) / LOCK).write_bytes(raw)
    info = {i.path: i for i in tree.walk()}["n"]
    assert info.state == "uncommitted" and info.writer is not None and info.writer.error
    plan = tree.clean()
    assert any(e.reason == "uncommitted leftover" for e in plan.entries)
    with tree.node("n") as again:  # the unreadable lock is broken, not a blocker
        again.save_json("x", {"ok": 1})
    assert tree.node("n").status is Status.COMMITTED
    assert read_lock(tree.node("n").location) is None


def test_lock_is_created_complete(tree):
    """Many processes opening one node: the lock is never seen empty or torn."""
    code = (
        "import sys; from cachetree import CacheTree; from cachetree.errors import LockHeldError\n"
        f"t = CacheTree({str(tree.root.path)!r})\n"
        "try:\n"
        "    n = t.node('race').open()\n"
        "    import time; time.sleep(0.3); n.abandon(); print('got')\n"
        "except LockHeldError as e: print('held')\n"
    )
    procs = [_spawn("-c", code) for _ in range(12)]
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1] for r in results]
    outs = [r[0].strip() for r in results]
    assert set(outs) <= {"got", "held"} and "got" in outs
    assert not any("unreadable lock" in r[1] for r in results)


# -- 5. the root manifest ---------------------------------------------------------------------
@pytest.mark.parametrize("raw", [b"", b"{", b'{"items": 1}'])
def test_corrupt_root_manifest_is_repaired_on_open(tmp_path, raw):
    root = tmp_path / "root"
    with CacheTree(root).node("kept") as node:
        node.save_json("x", {"a": 1})
    (root / MANIFEST).write_bytes(raw)
    assert cli(["clean", str(root), "--dry-run"]) == 0  # what the message recommends
    tree = CacheTree(root)
    assert {i.path: i.state for i in tree.walk()} == {"": "root", "kept": "committed"}


# -- 7. a canvas killed while removing its spill after commit ---------------------------------
def test_spill_left_by_a_canvas_killed_after_commit_is_cleaned(tmp_path):
    root = tmp_path / "root"
    code = f"""
import os, signal
import numpy as np
import cachetree.canvas.core as cv
from cachetree import CacheTree
from cachetree.canvas import Canvas

def die(parts_root, names):
    for name in names[:1]:  # remove one marker, as the removal does first, then die
        os.remove(os.path.join(parts_root.path, name, "part.json"))
    os.kill(os.getpid(), signal.SIGKILL)

cv.remove_parts = die
tree = CacheTree({str(root)!r})
with tree.node("canvas") as node:
    canvas = Canvas(node, (256, 256), {{"p": 1}}, memory_budget=64 * 1024, tile=64,
                    order="any", progress=False, checkpoint_every=4)
    rng = np.random.default_rng(0)
    for y in range(0, 192, 32):
        for x in range(0, 192, 32):
            patch = rng.random((1, 64, 64, 1), dtype=np.float32)
            canvas.add({{"p": patch}}, [[x, y, x + 64, y + 64]])
    canvas.finalize()
"""
    proc = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    parts = Path(root, "canvas", PARTS)
    assert len(list(parts.iterdir())) >= 3
    tree = CacheTree(root)
    assert tree.node("canvas").status is Status.COMMITTED
    plan = tree.clean()
    assert plan.entries and all(e.url.startswith(str(parts)) for e in plan.entries)
    plan.execute()
    assert not parts.exists() or not list(parts.iterdir())
    assert {i.path: i.state for i in tree.walk()}["canvas"] == "committed"


# -- 8. smaller ones ---------------------------------------------------------------------------
def test_unlock_refuses_a_live_local_writer(tree, capsys):
    node = tree.node("busy").open()
    assert cli(["unlock", tree.root.path, "busy"]) == 2
    assert "still running" in capsys.readouterr().err
    assert read_lock(node.location) is not None
    with pytest.raises(LockHeldError):
        tree.unlock("busy")
    assert cli(["unlock", tree.root.path, "busy", "--force"]) == 0
    assert read_lock(node.location) is None


@pytest.mark.parametrize(
    "argv",
    [
        ["ls", "R", "--depth", "-1"],
        ["clean", "R", "--part-grace", "-5"],
        ["clean", "R", "--lock-grace", "x"],
    ],
)
def test_negative_numbers_are_refused(tree, argv, capsys):
    argv = [tree.root.path if a == "R" else a for a in argv]
    with pytest.raises(SystemExit) as exc:
        cli(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "must be >= 0" in err or "not a number" in err


def test_quiet_works_after_every_command(tree):
    with tree.node("a") as node:
        node.save_json("x", {})
    for argv in (["ls", "-q"], ["clean", "--dry-run", "-q"], ["info", "-q"]):
        target = tree.root.path if argv[0] != "info" else os.path.join(tree.root.path, "a")
        assert cli([argv[0], target, *argv[1:]]) == 0


def test_grace_periods_must_not_be_negative(tree):
    with pytest.raises(InvalidDataError, match="part_grace"):
        tree.clean(part_grace=-5)


def test_save_json_error_names_the_value_not_a_parameter(tree):
    with tree.node("j") as node, pytest.raises(InvalidDataError) as exc:
        node.save_json("m", {"x": object()})
    assert "parameter of type" not in str(exc.value)
    assert "cannot encode a value of type object" in str(exc.value)
    node.abandon()


def test_emptied_group_goes_in_the_same_pass(tree):
    for name in ("g/a", "g/b"):
        tree.node(name).open().abandon()
    plan = tree.clean(dry_run=False)
    assert "group node emptied by this clean" in {e.reason for e in plan.entries}
    assert {i.path for i in tree.walk()} == {""}
    assert tree.clean().entries == []
