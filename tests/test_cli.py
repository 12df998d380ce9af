"""The ``cachetree`` command line, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cachetree import CacheTree, Status


def cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cachetree.cli", *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=120,
    )


@pytest.fixture
def tree(tmp_path):
    tree = CacheTree(tmp_path / "root")
    with tree.node("seg", params={"t": 1}) as node:
        node.save_json("metrics", {"n": 1})
        with node.child("detail") as child:
            child.save_text("log", "x" * 2048)
    tree.node("half").open().abandon()
    return tree


def test_ls_shows_status_kind_size_time(tree):
    out = cli("ls", tree.url)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:4] == ["node", "status", "kind", "size"]
    seg = next(line for line in lines if line.strip().startswith("seg"))
    assert "committed" in seg and "node: json" in seg and "2026" not in seg.split()[0]
    detail = next(line for line in lines if "detail" in line)
    assert detail.startswith("    detail") and "2.0 KiB" in detail
    assert "uncommitted" in next(line for line in lines if "half" in line)


def test_ls_json_and_depth(tree):
    data = json.loads(cli("ls", tree.url, "--json").stdout)
    assert {d["path"]: d["state"] for d in data} == {
        "": "root",
        "half": "uncommitted",
        "seg": "committed",
        "seg/detail": "committed",
    }
    shallow = json.loads(cli("ls", tree.url, "--json", "--depth", "1").stdout)
    assert "seg/detail" not in {d["path"] for d in shallow}


def test_info_and_commit(tree):
    out = cli("info", tree.node("seg").url)
    assert out.returncode == 0
    assert "status:      committed" in out.stdout and "metrics.json" in out.stdout
    assert '"t": 1' in out.stdout
    out = cli("commit", tree.node("half").url)
    assert out.returncode == 0 and "committed" in out.stdout
    assert tree.node("half").status is Status.COMMITTED


def test_info_names_the_ome_ngff_version_of_each_image(tmp_path):
    import numpy as np

    tree = CacheTree(tmp_path / "root", ngff_format="0.4")
    with tree.node("images") as node:
        node.save_image("old", np.zeros((8, 8), np.uint8))
        node.save_image("new", np.zeros((8, 8), np.uint8), format="0.5")
        node.save_labels("cells", np.zeros((8, 8), np.uint8), image="new")
        node.save_labels("mask", np.ones((8, 8), np.uint8))
    out = cli("info", node.url)
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if ".ome.zarr" in line}
    assert lines["old.ome.zarr"].endswith("OME-NGFF 0.4")
    assert lines["new.ome.zarr"].endswith("OME-NGFF 0.5 + labels cells")
    assert lines["mask.ome.zarr"].split()[1] == "labels"
    assert lines["mask.ome.zarr"].endswith("OME-NGFF 0.4") and "(8, 8)" in lines["mask.ome.zarr"]


def test_clean_dry_run_then_clean(tree):
    leftover = tree.node("crash").open()
    leftover.save_text("junk", "y" * 4096)
    leftover.abandon()
    out = cli("clean", tree.url, "--dry-run")
    assert out.returncode == 0
    assert "uncommitted leftover" in out.stdout and "total" in out.stdout
    assert tree.node("crash").status is Status.OPEN
    out = cli("clean", tree.url)  # no terminal to ask: nothing is deleted without --yes
    assert out.returncode == 1 and "pass --yes" in out.stdout
    assert tree.node("crash").status is Status.OPEN
    out = cli("clean", tree.url, "--yes")
    assert out.returncode == 0 and "freed" in out.stdout
    assert "crash" not in tree and "seg" in tree
    out = cli("clean", tree.url, "--remove", "seg", "--yes")
    assert "asked by name" in out.stdout and "seg" not in tree


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("ls", "/definitely/not/here"), "not a cache tree"),
        (("clean", "/definitely/not/here", "--dry-run"), "not a cache tree"),
        (("unlock", "/definitely/not/here"), "not a cache tree"),
        (("info", "/definitely/not/here"), "no cache node"),
        (("commit", "/definitely/not/here"), "no cache node"),
        (("clean", "ROOT", "--remove", "../x"), "not allowed"),
        (("clean", "ROOT", "--remove", "nope"), "no node 'nope'"),
    ],
)
def test_bad_input_exits_non_zero_with_message(tree, args, message):
    args = tuple(tree.url if a == "ROOT" else a for a in args)
    out = cli(*args)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def test_unknown_command_is_a_usage_error():
    out = cli("frobnicate")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_demo_runs_then_reuses_then_recomputes_what_a_parameter_changes(tmp_path):
    out = cli("demo", "--out", str(tmp_path / "demo"), "--no-view")
    assert out.returncode == 0, out.stderr
    assert "density: new" in out.stdout and "committed" in out.stdout
    assert "model patches" in out.stderr  # a progress bar
    again = cli("demo", "--out", str(tmp_path / "demo"), "--no-view")
    assert "density: reused" in again.stdout and "input:   reused" in again.stdout
    changed = cli("demo", "--out", str(tmp_path / "demo"), "--no-view", "--region", "32")
    lines = changed.stdout.splitlines()
    assert {"input:   reused", "model:   reused", "nuclei:  reused", "density: recompute"} <= set(
        lines
    )
    quiet = cli("demo", "--out", str(tmp_path / "demo"), "--no-view", "--quiet")
    assert quiet.returncode == 0 and "reused" not in quiet.stdout and "%|" not in quiet.stderr
