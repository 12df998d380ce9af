"""Disk full and read-only storage surface as StorageError naming the path; nothing committed lost.

Each test mounts a small tmpfs (the test command runs as root on the CI machine).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from cachetree import CacheTree, Status
from cachetree.canvas import Canvas
from cachetree.errors import StorageError


def _mount(path: Path, *options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    opts = ",".join(("size=1m", *options))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], check=False)
    assert done.returncode == 0, "these tests mount a tmpfs: run them as root"


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB file system holding a tree with one committed node."""
    mount = tmp_path / "disk"
    _mount(mount)
    tree = CacheTree(mount / "root")
    with tree.node("kept") as node:
        node.save_json("x", {"a": 1})
    yield tree
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> None:
    """Write until the file system is full."""
    with open(directory / "ballast", "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass


def _assert_kept(tree: CacheTree) -> None:
    node = tree.node("kept")
    assert node.status is Status.COMMITTED and node.load_json("x") == {"a": 1}


BIG = np.random.default_rng(0).random((1024, 1024)).astype(np.float32)  # 4 MiB


@pytest.mark.parametrize(
    "save",
    [
        lambda n: n.save_array("a", BIG),
        lambda n: n.save_image("img", BIG),
        lambda n: n.save_labels("lab", (BIG * 1000).astype(np.int32)),
    ],
    ids=["save_array", "save_image", "save_labels"],
)
def test_disk_full_on_save(small_disk, save):
    node = small_disk.node("big").open()
    with pytest.raises(StorageError, match="no space left") as exc:
        save(node)
    assert small_disk.root.path in str(exc.value)
    node.abandon()
    _assert_kept(small_disk)


def _canvas_batches():
    rng = np.random.default_rng(1)
    for y in range(0, 1024 - 64, 48):
        patches = rng.random((20, 64, 64, 1), dtype=np.float32)
        boxes = [[x, y, x + 64, y + 64] for x in range(0, 960, 48)]
        yield {"p": patches}, boxes


def test_disk_full_while_spilling(small_disk):
    node = small_disk.node("canvas").open()
    canvas = Canvas(node, (1024, 1024), {"p": 1}, memory_budget=256 * 1024, tile=64)
    with pytest.raises(StorageError, match="no space left"):
        for outputs, boxes in _canvas_batches():
            canvas.add(outputs, boxes)
        canvas.finalize()
    node.abandon()
    _assert_kept(small_disk)


def test_disk_full_on_finalize(small_disk):
    node = small_disk.node("canvas").open()
    canvas = Canvas(node, (1024, 1024), {"p": 1}, memory_budget="64MiB", tile=64)
    for outputs, boxes in _canvas_batches():
        canvas.add(outputs, boxes)
    with pytest.raises(StorageError, match="no space left"):
        canvas.finalize()
    node.abandon()
    _assert_kept(small_disk)


def test_disk_full_on_lock_creation(small_disk):
    _fill(Path(small_disk.root.path))
    with pytest.raises(StorageError, match="no space left") as exc:
        small_disk.node("new").open()
    assert "new" in str(exc.value)
    _assert_kept(small_disk)


def test_read_only_file_system(small_disk):
    mount = Path(small_disk.root.path).parent
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    with pytest.raises(StorageError, match="read-only"):
        small_disk.node("new").open()
    with pytest.raises(StorageError, match="read-only"):
        small_disk.node("kept", params={"changed": 1}).open()  # stale: would recompute
    _assert_kept(small_disk)
    assert small_disk.clean().entries == []
