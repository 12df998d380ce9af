"""Fuzz the small state files: whatever they hold, no public entry point shows a traceback.

Manifests, lock files, part markers and keyed-store inventories get random bytes, random
JSON and truncated copies of real ones. Every public entry point and CLI command must either
work (reporting the node as corrupt where that applies) or raise a ``CacheTreeError``.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachetree import CacheTree
from cachetree.cli import main as cli
from cachetree.errors import CacheTreeError
from cachetree.results import add_part, combine, set_combiner
from cachetree.tree.layout import LOCK, MANIFEST, PARTS
from cachetree.tree.parts import list_parts

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _real_objects(template: dict) -> st.SearchStrategy[dict]:
    """The real record with some fields replaced by random JSON values."""
    return st.dictionaries(st.sampled_from(sorted(template)), json_values, max_size=3).map(
        lambda changes: {**template, **changes}
    )


def contents(template: bytes) -> st.SearchStrategy[bytes]:
    real = json.loads(template)
    return st.one_of(
        st.binary(max_size=64),
        json_values.map(lambda v: json.dumps(v).encode()),
        _real_objects(real).map(lambda v: json.dumps(v).encode()),
        st.integers(0, len(template)).map(lambda n: template[:n]),
    )


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A tree with a committed node, a node with parts and a keyed store, and a lock."""
    root = tmp_path_factory.mktemp("pristine") / "root"
    tree = CacheTree(root)
    with tree.node("done") as node:
        store = node.keyed("results")
        store.write(1, np.arange(3))
        node.save_json("m", {"a": 1})
    parts = tree.node("parts").open()
    set_combiner(parts, "sum")
    add_part(parts, "k", np.ones(4), name="p1")
    parts.abandon()
    busy = tree.node("busy").open()
    lock = (Path(busy.location.path) / LOCK).read_bytes()
    busy.abandon()
    (Path(busy.location.path) / LOCK).write_bytes(lock)
    return root


FILES = {
    "manifest": "done/" + MANIFEST,
    "root manifest": MANIFEST,
    "lock": "busy/" + LOCK,
    "marker": f"parts/{PARTS}/p1/part.json",
    "inventory": "done/results.keyed/keys.json",
}


def _exercise(root: Path) -> None:
    """Call every public entry point; only CacheTreeErrors may come out."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        for argv in (["ls", str(root)], ["clean", str(root), "--dry-run"]):
            assert cli(argv) in (0, 2), (argv, out.getvalue())
        for node in ("done", "parts", "busy"):
            assert cli(["info", str(root / node)]) in (0, 2), out.getvalue()
    tree = CacheTree(root)
    list(tree.walk())
    tree.clean(dry_run=True)
    for call in (
        lambda: tree.node("done").item_names(),
        lambda: tree.node("done").keyed("results").load([1]),
        lambda: list_parts(tree.node("parts").location),
        lambda: combine(tree.node("parts"), progress=False),
        lambda: tree.node("done", params=None).open().abandon(),
        lambda: tree.node("busy").open().abandon(),
    ):
        with contextlib.suppress(CacheTreeError):
            call()


@pytest.mark.slow
@pytest.mark.parametrize("which", sorted(FILES))
def test_fuzzed_state_files(pristine, tmp_path_factory, which):
    template = (pristine / FILES[which]).read_bytes()

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(data=contents(template))
    def check(data):
        root = tmp_path_factory.mktemp("fuzz") / "root"
        shutil.copytree(pristine, root)
        (root / FILES[which]).write_bytes(data)
        _exercise(root)

    check()
