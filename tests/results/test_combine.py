"""Parts, combine, merge, split and clean of keyed outputs (incl. concurrent writers, SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from cachetree import CacheTree, Status
from cachetree.cli import main
from cachetree.errors import (
    IncompatibleError,
    InvalidDataError,
    KeyLookupError,
    NotCommittedError,
    ShapeMismatchError,
    UnknownCombinerError,
)
from cachetree.results import (
    add_part,
    add_shared,
    check_merge,
    combine,
    get_combiner,
    merge,
    set_combiner,
    split,
)
from cachetree.results import combining as combine_module
from cachetree.tree.clean import plan_clean
from cachetree.tree.layout import PARTS
from cachetree.tree.lock import LockInfo
from cachetree.tree.parts import list_parts
from tests.paths import REPO
from tests.workers.combiners import KEYS, expected_mean, part_arrays, part_key

USER = "tests.workers.combiners"


@pytest.fixture
def no_hook():
    yield
    combine_module._STAGE_HOOK = None


def canvas_node(tree, name, workers=(0, 1, 2), params=None, combiner="canvas-mean", **options):
    """An open node with canvas parts of ``workers`` for every key, then released."""
    node = tree.node(name, params=params or {"grid": "q2"}).open()
    set_combiner(node, combiner, **options)
    for w in workers:
        for i in range(len(KEYS)):
            add_part(node.url, part_key(w, i), part_arrays(w, i), name=f"w{w}-k{i}")
    node.abandon()
    return node


def data_parts(node):
    return [p for p in list_parts(node.location) if p.kind == "part"]


def snapshot(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def check_canvas_results(node, workers=(0, 1, 2)):
    store = node.keyed()
    assert list(store) == list(KEYS)
    for i, key in enumerate(KEYS):
        np.testing.assert_allclose(store[key], expected_mean(list(workers), i), rtol=1e-6)
        assert store[key].dtype == np.float32


# -- built-in combiners -----------------------------------------------------------------------
def test_canvas_mean_matches_numpy_and_parts_go_only_after_commit(tree, no_hook):
    node = canvas_node(tree, "canvas")
    seen = {}

    def hook(stage):
        if stage not in seen:
            seen[stage] = (tree.node("canvas").status, len(data_parts(node)))

    combine_module._STAGE_HOOK = hook
    report = combine(node.url)
    assert seen["stored"] == (Status.OPEN, 9)  # results written, node not committed yet
    assert seen["committed"] == (Status.COMMITTED, 9)  # committed, parts still there
    assert report.keys == list(KEYS) and report.parts_combined == report.parts_removed == 9
    assert report.committed and report.combiner == "canvas-mean"
    assert data_parts(node) == []
    check_canvas_results(tree.node("canvas"))
    manifest = tree.node("canvas").manifest
    assert manifest.meta["combiner"] == "canvas-mean"
    assert manifest.items["results.keyed"]["keys"] == 3
    # each result records the parts it came from
    assert len(tree.node("canvas").keyed().info(0.3)["parts"]) == 3


def test_sum_and_concatenate(tree):
    node = tree.node("s").open()
    set_combiner(node, "sum")
    for w in range(3):
        add_part(node, "a", np.full((2, 2), w + 1, dtype=np.int32))
        add_part(node, "b", np.arange(3, dtype=np.int64) * w)
    combine(node)
    store = tree.node("s").keyed()
    np.testing.assert_array_equal(store["a"], np.full((2, 2), 6, dtype=np.int32))
    np.testing.assert_array_equal(store["b"], np.arange(3) * 3)

    node = tree.node("c").open()
    set_combiner(node, "concatenate", axis=0)
    for row in (2, 0, 1):  # arrival order does not matter: order= does
        add_part(node, 7, {"rows": np.full((1 + row, 3), row)}, order=row)
    combine(node)
    expected = np.concatenate([np.full((1 + r, 3), r) for r in (0, 1, 2)])
    np.testing.assert_array_equal(tree.node("c").keyed()[7], expected)


def test_builtin_combiners_check_their_input(tree):
    node = tree.node("bad").open()
    set_combiner(node, "sum")
    add_part(node, 1, np.zeros((2, 2)))
    add_part(node, 1, np.zeros((3, 2)))
    with pytest.raises(ShapeMismatchError, match="shapes"):
        combine(node)
    assert len(data_parts(node)) == 2 and node.status is Status.OPEN  # nothing lost
    with pytest.raises(InvalidDataError, match="'sum'"):
        combine(node, combiner="canvas-mean")
    node.abandon()


# -- user combiners and shared inputs ---------------------------------------------------------
def test_user_combiner_by_import_path_with_shared_inputs(tree):
    node = tree.node("user", params=3).open()
    set_combiner(node, f"{USER}:scaled_sum", factor=2.0)
    assert get_combiner(node) == (f"{USER}:scaled_sum", {"factor": 2.0})
    add_shared(node, "thresholds", {"scale": np.array(0.5)})
    for key in (1, 2):
        for w in range(2):
            add_part(node.url, key, np.full(4, 10.0 * key + w))
    node.abandon()
    combine(node.url)
    store = tree.node("user").keyed()
    for key in (1, 2):
        expected = (10.0 * key + 10.0 * key + 1) * 0.5 * 2.0 + key
        np.testing.assert_allclose(store[key], np.full(4, expected))
    assert tree.node("user").manifest.meta["combiner_options"] == {"factor": 2.0}
    kinds = sorted(p.kind for p in list_parts(node.location))
    assert kinds == ["config", "shared"]  # kept after combine: later parts may need them


@pytest.mark.parametrize(
    "name",
    ["nope", "tests.workers.no_such_module:f", f"{USER}:missing", f"{USER}:not_callable", ""],
)
def test_unknown_combiner(tree, name):
    node = tree.node("u").open()
    with pytest.raises(UnknownCombinerError, match=r"canvas-mean.*concatenate.*sum"):
        set_combiner(node, name)
    add_part(node, 1, np.zeros(2))
    before = snapshot(Path(node.url))
    with pytest.raises(UnknownCombinerError):
        combine(node, combiner=name)
    assert snapshot(Path(node.url)) == before  # nothing modified
    node.abandon()


def test_combine_without_combiner_or_parts(tree):
    node = tree.node("none").open()
    report = combine(node)
    assert "nothing to combine" in str(report) and node.status is Status.OPEN
    add_part(node, 1, np.zeros(2))
    with pytest.raises(UnknownCombinerError, match="no combiner is set"):
        combine(node)
    node.abandon()


def test_parts_need_an_existing_node_and_a_key(tree):
    with pytest.raises(FileNotFoundError, match="open the node"):
        add_part(tree.node("missing").url, 1, np.zeros(2))
    node = tree.node("k").open()
    with pytest.raises(InvalidDataError):
        add_part(node, None, np.zeros(2))
    node.abandon()


def test_new_parts_on_a_committed_node(tree):
    node = canvas_node(tree, "later", workers=(0,))
    combine(node.url)
    add_part(node.url, 0.4, part_arrays(5, 0))
    assert tree.node("later").status is Status.COMMITTED
    report = combine(node.url)
    assert report.keys == [0.4]
    store = tree.node("later").keyed()
    assert list(store) == [*KEYS, 0.4]
    np.testing.assert_allclose(store[0.4], expected_mean([5], 0), rtol=1e-6)
    assert tree.node("later").status is Status.COMMITTED

    add_part(node.url, 0.1 + 1e-15, part_arrays(6, 0))  # a key already combined
    before = snapshot(Path(node.url))
    with pytest.raises(IncompatibleError, match="already has a combined result"):
        combine(node.url)
    assert snapshot(Path(node.url)) == before


# -- merge ------------------------------------------------------------------------------------
def keyed_node(tree, name, keys, params=None, dtype=np.float32, shape=(2, 3)):
    with tree.node(name, params=params if params is not None else {"p": 1}) as node:
        set_combiner(node, "sum")
        add_shared(node, "thresholds", {"t": np.arange(3)})
        with node.keyed() as store:
            for k in keys:
                store.write(k, np.full(shape, k, dtype=dtype))
    return tree.node(name)


def test_merge_compatible_outputs(tree):
    a = keyed_node(tree, "a", [0.1, 0.2])
    b = keyed_node(tree, "b", [0.3, 0.4])
    before_b = snapshot(Path(b.url))
    assert check_merge(a, b) == []
    merge(a, b)
    store = tree.node("a").keyed()
    assert list(store) == [0.1, 0.2, 0.3, 0.4]
    np.testing.assert_array_equal(store[0.4], np.full((2, 3), 0.4, dtype=np.float32))
    assert tree.node("a").status is Status.COMMITTED
    assert tree.node("a").manifest.meta["merged_from"] == [b.url]
    assert tree.node("a").manifest.items["results.keyed"]["keys"] == 4
    assert snapshot(Path(b.url)) == before_b  # the source is never modified


def test_merge_into_an_open_node_commits_it(tree):
    b = keyed_node(tree, "b", [1, 2])
    target = tree.node("target", params={"p": 1}).open()
    target.abandon()
    merge(target.url, b.url)
    assert tree.node("target").status is Status.COMMITTED
    assert list(tree.node("target").keyed()) == [1, 2]
    assert get_combiner(target.url) == ("sum", {})
    assert [p.name for p in list_parts(target.location) if p.kind == "shared"] == ["thresholds"]


def test_incompatible_merge_lists_every_difference_and_changes_nothing(tree):
    a = keyed_node(tree, "a", [0.1, 0.2], params={"p": 1, "q": "x"})
    b = keyed_node(tree, "b", [0.2 + 1e-12, 0.5], params={"p": 2, "q": "x"}, dtype=np.float64)
    with tree.node("c", params={"p": 1, "q": "x"}) as c, c.keyed() as store:
        store.write(0.1, np.zeros((4, 4), dtype=np.float32))
    before = snapshot(Path(a.url)), snapshot(Path(b.url))
    with pytest.raises(IncompatibleError) as info:
        merge(a, b)
    diffs = info.value.differences
    text = "\n".join(diffs)
    assert "parameter 'p': target 1, source 2" in text
    assert "every key has dtype float32 in the target but float64 in the source" in text
    assert "key 0.2" in text and "dtype float32 in the target, float64 in the source" in text
    assert "exists in both" in text
    assert len(diffs) == 4
    assert str(info.value).count("\n  - ") == 4  # one error listing them all
    assert (snapshot(Path(a.url)), snapshot(Path(b.url))) == before

    with pytest.raises(IncompatibleError, match=r"shape \(2, 3\) in the target, \(4, 4\)"):
        merge(a, tree.node("c"), on_conflict="skip")
    assert (snapshot(Path(a.url)), snapshot(Path(b.url))) == before
    with pytest.raises(NotCommittedError):
        merge(a, tree.node("open").open())
    with pytest.raises(InvalidDataError, match="on_conflict"):
        merge(a, b, on_conflict="maybe")


def test_merge_overlap_policies(tree):
    a = keyed_node(tree, "a", [1, 2])
    with tree.node("b", params={"p": 1}) as b, b.keyed() as store:
        store.write(2, np.full((2, 3), 20, dtype=np.float32))
        store.write(3, np.full((2, 3), 30, dtype=np.float32))
    merge(a, tree.node("b"), on_conflict="skip")
    store = tree.node("a").keyed()
    assert list(store) == [1, 2, 3] and store[2][0, 0] == 2
    merge(a, tree.node("b"), on_conflict="replace")
    assert tree.node("a").keyed()[2][0, 0] == 20
    assert check_merge(a, tree.node("b"), check_params=False) != []  # overlap is an error


# -- split ------------------------------------------------------------------------------------
def test_split_by_key(tree):
    src = keyed_node(tree, "all", [0.1, 0.2, 0.3, 0.4])
    before = snapshot(Path(src.url))
    outputs = split(src, {"low": [0.1, 0.2], "high": [0.1 + 0.2, 0.4]})
    assert sorted(outputs) == ["high", "low"]
    low, high = tree.node("low"), tree.node("high")
    assert low.status is high.status is Status.COMMITTED
    assert list(low.keyed()) == [0.1, 0.2] and list(high.keyed()) == [0.3, 0.4]
    np.testing.assert_array_equal(high.keyed()[0.3], src.keyed()[0.3])
    assert low.manifest.params == src.manifest.params
    assert get_combiner(low) == ("sum", {})
    assert [p.name for p in list_parts(low.location)] == ["_combiner", "thresholds"]
    assert snapshot(Path(src.url)) == before
    # split outputs merge back into the original content
    merge(low, high)
    assert list(tree.node("low").keyed()) == [0.1, 0.2, 0.3, 0.4]


def test_split_errors_create_nothing(tree):
    src = keyed_node(tree, "all", [1, 2, 3])
    with pytest.raises(KeyLookupError, match=r"no key 7.*no key 8"):
        split(src, {"x": [1, 7], "y": [8]})
    with pytest.raises(InvalidDataError, match="given to both"):
        split(src, {"x": [1, 2], "y": [2]})
    keyed_node(tree, "taken", [9])
    with pytest.raises(InvalidDataError, match="already exists and is committed"):
        split(src, {"x": [1], "taken": [2]})
    assert sorted(i.path for i in tree.walk()) == ["", "all", "taken"]
    with pytest.raises(NotCommittedError):
        split(tree.node("open").open(), {"x": [1]})


# -- clean ------------------------------------------------------------------------------------
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def unfinished_part(node, name, pid=None):
    """A part directory without its marker, as a writer that died leaves it."""
    part = Path(node.url) / PARTS / name
    part.mkdir(parents=True)
    (part / "sum.npy").write_bytes(b"x" * 100)
    if pid is not None:
        info = asdict(LockInfo.mine()) if pid == os.getpid() else {"pid": pid, "started": 1.0}
        info["host"] = socket.gethostname()
        (part / "writer.json").write_text(json.dumps(info))
    return part


def test_combine_removes_the_parts_dead_workers_left_half_written(tree):
    node = canvas_node(tree, "n", workers=(0,))
    dead = unfinished_part(node, "dead", pid=dead_pid())
    alive = unfinished_part(node, "alive", pid=os.getpid())  # still writing: kept
    unknown = unfinished_part(node, "unknown")  # no writer record: left to clean
    combine(node.url)
    assert tree.node("n").status is Status.COMMITTED
    assert not dead.exists() and alive.exists() and unknown.exists()
    check_canvas_results(tree.node("n"), workers=(0,))


def test_clean_parts_with_dry_run(tree, no_hook):
    node = canvas_node(tree, "n", workers=(0,))

    def die_after_commit(stage):
        if stage == "committed":
            raise KeyboardInterrupt  # as if killed between commit and removing the parts

    combine_module._STAGE_HOOK = die_after_commit
    with pytest.raises(KeyboardInterrupt):
        combine(node.url)
    combine_module._STAGE_HOOK = None
    pending = add_part(node.url, 0.9, part_arrays(1, 0), name="late")
    dead = unfinished_part(node, "dead", pid=dead_pid())
    alive = unfinished_part(node, "alive", pid=os.getpid())
    unknown = unfinished_part(node, "unknown")  # no writer record: judged by age

    plan = plan_clean(tree.root)
    reasons = {Path(e.url).name: e.reason for e in plan.entries}
    assert reasons == {
        "w0-k0": "part already combined",
        "w0-k1": "part already combined",
        "w0-k2": "part already combined",
        "dead": "unfinished part whose writer is gone",
    }  # pending, live, recent parts and the shared inputs they need are kept
    assert plan.total_bytes > 0
    assert len(data_parts(node)) == 4 and dead.exists()  # a dry run deletes nothing
    assert "unknown" in {Path(e.url).name for e in plan_clean(tree.root, part_grace=0).entries}

    plan.execute()
    assert [p.name for p in data_parts(node)] == ["late"]
    assert not dead.exists() and alive.exists() and unknown.exists()
    check_canvas_results(tree.node("n"), workers=(0,))

    combine(node.url)  # the late part
    assert pending.name not in [p.name for p in list_parts(node.location)]
    for d in (alive, unknown):
        for f in d.iterdir():
            f.unlink()
        d.rmdir()
    plan = plan_clean(tree.root)
    assert [(Path(e.url).name, e.reason) for e in plan.entries] == [
        (PARTS, "parts no longer needed: combiner setting no remaining part needs")
    ]
    plan.execute()
    assert not (Path(node.url) / PARTS).exists()
    assert {i.path: i.state for i in tree.walk()}["n"] == "committed"
    assert list(tree.node("n").keyed()) == [*KEYS, 0.9]


def test_clean_keeps_parts_of_uncommitted_nodes_and_drops_dead_leftovers(tree):
    node = canvas_node(tree, "open", workers=(0,))
    dead = unfinished_part(node, "dead", pid=dead_pid())
    (Path(node.url) / "half.txt").write_text("leftover")
    plan = plan_clean(tree.root)
    reasons = {Path(e.url).name: e.reason for e in plan.entries}
    assert reasons == {
        "half.txt": "uncommitted leftover",
        "dead": "unfinished part whose writer is gone",
    }
    plan.execute()
    assert len(data_parts(node)) == 3 and not dead.exists()
    combine(node.url)
    check_canvas_results(tree.node("open"), workers=(0,))


def test_clean_drops_keyed_files_missing_from_the_inventory(tree):
    node = keyed_node(tree, "k", [1])
    stray = Path(node.url) / "results.keyed" / "k-2-0123456789.npy"
    stray.write_bytes(b"x")
    plan = plan_clean(tree.root)
    assert [(Path(e.url).name, e.reason) for e in plan.entries] == [
        (stray.name, "keyed file not in the inventory"),
        (
            PARTS,
            "parts no longer needed: combiner setting no remaining part needs, shared input "
            "no remaining part needs",
        ),
    ]
    plan.execute()
    assert not stray.exists() and list(tree.node("k").keyed()) == [1]
    assert len(plan_clean(tree.root)) == 0


# -- processes --------------------------------------------------------------------------------
def worker(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", USER, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
    )


@pytest.mark.slow
def test_concurrent_writer_processes_then_combine(tree):
    node = tree.node("shared", params={"grid": "q2"}).open()
    set_combiner(node, "canvas-mean")
    procs = [worker("write-parts", node.url, str(w)) for w in range(4)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    assert len(data_parts(node)) == 12
    report = combine(node)  # the process that opened the node combines it
    assert report.keys == list(KEYS)  # 0.1 + 0.2 from odd workers grouped with 0.3
    check_canvas_results(tree.node("shared"), workers=(0, 1, 2, 3))
    assert data_parts(node) == []


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["combining 0.2", "stored", "committed", "removed"])
def test_sigkill_during_combine_then_rerun(tree, kill_at):
    reference = canvas_node(tree, "reference", combiner=f"{USER}:slow_mean")
    combine(reference.url)
    node = canvas_node(tree, "victim", combiner=f"{USER}:slow_mean", pause=0.2)

    proc = worker("combine", node.url, "0.2")
    seen = []
    for line in proc.stdout:
        seen.append(line.strip())
        if seen[-1] == kill_at:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, seen

    victim = tree.node("victim")
    if kill_at in ("combining 0.2", "stored"):
        assert victim.status is Status.OPEN
        assert len(data_parts(node)) == 9  # parts intact
    else:
        assert victim.status is Status.COMMITTED  # committed results are complete
        check_canvas_results(victim)

    combine(node.url)
    assert victim.status is Status.COMMITTED and data_parts(node) == []
    ref_store, store = reference.keyed(), victim.keyed()
    assert list(store) == list(ref_store)
    for key in ref_store:
        np.testing.assert_array_equal(store[key], ref_store[key])
    check_canvas_results(victim)


# -- command line -----------------------------------------------------------------------------
def test_cli_combine_and_clean(tree, capsys):
    node = canvas_node(tree, "cli", workers=(0, 1))
    assert main(["-q", "combine", node.url]) == 0
    out, err = capsys.readouterr()
    assert "combined 6 parts into 3 keys" in out and "%|" not in err
    check_canvas_results(tree.node("cli"), workers=(0, 1))

    add_part(node.url, 0.7, part_arrays(0, 0))
    assert main(["combine", node.url, "--combiner", "canvas-mean"]) == 0
    out, err = capsys.readouterr()
    assert "combined 1 parts into 1 keys" in out and "100%" in err

    assert main(["combine", node.url, "--quiet"]) == 0
    assert "nothing to combine" in capsys.readouterr().out
    assert main(["combine", node.url, "--combiner", "nope"]) == 0  # nothing to do, no check
    assert main(["combine", str(Path(node.url).parent / "missing")]) == 2

    unfinished_part(node, "old")
    assert main(["clean", tree.url, "--dry-run", "--part-grace", "0"]) == 0
    out = capsys.readouterr().out
    assert "unfinished part whose writer is gone" in out
    assert (Path(node.url) / PARTS / "old").exists()

    bad = canvas_node(tree, "bad", workers=(0,))
    assert main(["combine", bad.url, "--combiner", "nope"]) == 2
    assert "unknown combiner 'nope'" in capsys.readouterr().err


def test_memory_filesystem_combine_and_merge():
    tree = CacheTree("memory://combine-test")
    node = canvas_node(tree, "m", workers=(0, 1))
    combine(node.url)
    check_canvas_results(tree.node("m"), workers=(0, 1))
    other = tree.node("m2", params={"grid": "q2"}).open()
    add_part(other, 0.5, part_arrays(2, 0))
    set_combiner(other, "canvas-mean")
    combine(other)
    merge(tree.node("m"), tree.node("m2"))
    assert list(tree.node("m").keyed()) == [*KEYS, 0.5]


def test_walk_state_has_parts_only_while_parts_wait(tmp_path):
    from cachetree import CacheTree
    from cachetree.results import add_part, add_shared, combine, set_combiner

    tree = CacheTree(tmp_path / "t")
    node = tree.node("n").open()
    set_combiner(node, "sum")
    add_shared(node, "thresholds", {"t": np.ones(2)})
    add_part(node, "k", {"data": np.ones(2)})
    node.abandon()
    assert {i.path: i.state for i in tree.walk()}["n"] == "has parts"
    combine(tree.node("n"))
    assert {i.path: i.state for i in tree.walk()}["n"] == "committed"
