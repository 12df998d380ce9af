"""Crash safety: SIGKILL a writer at many points, re-run, compare with an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from cachetree import CacheTree, Status
from cachetree.errors import CacheTreeError
from tests.paths import REPO, WORKERS
from tests.workers.write_node import expected_image

WORKER = WORKERS / "write_node.py"


def run_worker(root: Path, pause: float = 0.0) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(root), str(pause)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def check_committed_nodes_complete(root: Path) -> int:
    """Every committed node holds complete, correct data; returns how many were checked."""
    tree = CacheTree(root)
    checked = 0
    for info in tree.walk():
        if info.status is not Status.COMMITTED or not info.path.startswith("pipeline/tile"):
            continue
        i = int(info.path[-1])
        node = tree.node(info.path)
        np.testing.assert_array_equal(node.open_image("image")[0].compute(), expected_image(i))
        np.testing.assert_array_equal(node.open_array("raw").compute(), expected_image(i)[0])
        assert node.load_json("stats") == {"sum": int(expected_image(i).sum())}
        checked += 1
    return checked


class Watcher(threading.Thread):
    """Keeps checking that no committed node is ever seen incomplete while a writer runs."""

    def __init__(self, root: Path):
        super().__init__(daemon=True)
        self.root, self.stop, self.errors, self.checks = root, threading.Event(), [], 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.checks += check_committed_nodes_complete(self.root)
            except CacheTreeError:
                pass  # the root itself may not exist yet
            except AssertionError as exc:  # pragma: no cover - this is the failure we look for
                self.errors.append(exc)


def snapshot(root: Path) -> dict:
    tree = CacheTree(root)
    result = {}
    for info in tree.walk():
        manifest = info.manifest
        items = {
            k: {f: v for f, v in item.items() if f != "bytes"} for k, item in manifest.items.items()
        }
        result[info.path] = (info.state, manifest.fingerprint, items)
    return result


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill_after", ["tile0 image written", "tile1 committing", "tile2 new", "pipeline committing"]
)
def test_sigkill_mid_write_then_rerun_matches_uninterrupted(tmp_path, kill_after):
    reference = tmp_path / "reference"
    proc = run_worker(reference)
    assert proc.communicate()[0].strip().endswith("done")

    root = tmp_path / "killed"
    watcher = Watcher(root)
    watcher.start()
    proc = run_worker(root, pause=0.3)
    for line in proc.stdout:
        if line.strip() == kill_after:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert CacheTree(root).node("pipeline").status is Status.OPEN

    rerun = run_worker(root)
    lines = rerun.communicate()[0].split("\n")
    watcher.stop.set()
    watcher.join()
    assert not watcher.errors
    assert "pipeline resumed" in lines and "done" in lines
    if kill_after == "tile1 committing":
        assert "tile0 reused" in lines and "tile1 resumed" in lines
    assert check_committed_nodes_complete(root) == 3
    assert snapshot(root) == snapshot(reference)
