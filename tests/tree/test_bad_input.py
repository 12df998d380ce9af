"""Wrong inputs give specific exceptions with messages that say what to do."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from cachetree import CacheTree, cdir_commit, cdir_query
from cachetree.errors import (
    CorruptManifestError,
    FinalizedError,
    InvalidDataError,
    InvalidNameError,
    ItemNotFoundError,
    LockHeldError,
    NodeNotFoundError,
    NotCommittedError,
)
from cachetree.tree.layout import MANIFEST


@pytest.fixture
def tree(tmp_path):
    t = CacheTree(tmp_path / "root")
    with t.node("done") as node:
        node.save_text("x", "1")
    broken = t.node("broken").open()
    broken.commit()
    broken.location.raw_child(MANIFEST).write_bytes(b"")
    return t


def _hold_lock(tree):
    code = (
        "import sys, time; from cachetree import CacheTree; "
        "CacheTree(sys.argv[1]).node('held').open(); print('ok', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, tree.url], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ok"
    return proc


CASES = [
    ("dotdot", lambda t: t.node("../escape"), InvalidNameError, r"'\.\.' is not allowed"),
    ("dotdot inside", lambda t: t.node("a/../../b"), InvalidNameError, "not allowed"),
    ("absolute", lambda t: t.node("/etc/passwd"), InvalidNameError, "absolute"),
    ("windows absolute", lambda t: t.node("C:/x"), InvalidNameError, "absolute"),
    ("backslash", lambda t: t.node("a\\b"), InvalidNameError, "separator"),
    ("empty segment", lambda t: t.node("a//b"), InvalidNameError, "not allowed"),
    ("reserved", lambda t: t.node(".cachetree.json"), InvalidNameError, "reserved"),
    ("not a string", lambda t: t.node(42), InvalidNameError, "must be a string"),
    ("item escapes", lambda t: t.node("done").item("../x"), InvalidNameError, "separator"),
    ("missing node", lambda t: t["nope"], NodeNotFoundError, "no node 'nope'"),
    (
        "commit missing",
        lambda t: cdir_commit(t.root.join("nope").url),
        NodeNotFoundError,
        "no cache node",
    ),
    (
        "missing item",
        lambda t: t.node("done").load_text("nope"),
        ItemNotFoundError,
        "has no item 'nope'",
    ),
    ("corrupt manifest", lambda t: t.node("broken").manifest, CorruptManifestError, "empty"),
    (
        "corrupt require",
        lambda t: cdir_query(t.root.join("broken").url).node.require_committed(),
        CorruptManifestError,
        "open the node again",
    ),
    ("write committed", lambda t: t.node("done").save_text("y", "2"), FinalizedError, "committed"),
    (
        "not committed",
        lambda t: t.node("fresh").open().require_committed(),
        NotCommittedError,
        "not committed",
    ),
    (
        "array of str",
        lambda t: t.node("w").open().save_array("a", "text"),
        InvalidDataError,
        "numpy or dask array",
    ),
    (
        "object array",
        lambda t: t.node("w").open().save_array("a", np.array([{}, []], dtype=object)),
        InvalidDataError,
        "object arrays",
    ),
    (
        "text not str",
        lambda t: t.node("w").open().save_text("a", b"bytes"),
        InvalidDataError,
        "needs a str",
    ),
    ("figure", lambda t: t.node("w").open().save_figure("a", 3), InvalidDataError, "savefig"),
    (
        "unhashable param",
        lambda t: t.node("p", params={"f": object()}).open(),
        InvalidDataError,
        "cannot encode",
    ),
    ("bad on_stale", lambda t: t.node("p", on_stale="ignore"), InvalidDataError, "on_stale"),
]


@pytest.mark.parametrize(
    ("action", "error", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input(tree, action, error, message):
    with pytest.raises(error, match=message):
        action(tree)


def test_lock_held(tree):
    proc = _hold_lock(tree)
    try:
        with pytest.raises(LockHeldError, match="being written by pid"):
            tree.node("held").open()
        with pytest.raises(LockHeldError, match="cannot commit"):
            tree.node("held").commit()
    finally:
        proc.kill()
        proc.wait()
