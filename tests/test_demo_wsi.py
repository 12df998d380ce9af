"""The whole-slide demo: the pipeline at 4096 px, blockwise labelling, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage

from cachetree import CacheTree
from cachetree.cli import main
from cachetree.demo.density import count_strip
from cachetree.demo.levels import Plane
from cachetree.demo.model import merge_model, read_patches, tissue_boxes
from cachetree.demo.nuclei import NucleusMask, label_blockwise, nucleus_mask
from cachetree.demo.slide import SyntheticSlide
from cachetree.demo.wsi import WsiParams, run_wsi
from cachetree.tree.parts import list_parts

WORKER = Path(__file__).parent / "workers" / "wsi_demo.py"
STAGES = ["slide", "tissue", "model", "nuclei", "density"]


@pytest.fixture(scope="module")
def wsi(tmp_path_factory):
    lines: list[str] = []
    tree, clock = run_wsi(
        str(tmp_path_factory.mktemp("wsi") / "tree"), WsiParams(size=4096), report=lines.append
    )
    return tree, clock, lines


def test_every_stage_is_a_committed_node(wsi):
    tree, _, lines = wsi
    assert [line.split()[:2] for line in lines] == [
        *([f"{s}:", "new"] for s in STAGES),
        ["report:", "new"],
    ]
    states = {info.path: info.state for info in tree.walk()}
    assert states == {
        "": "root",
        **dict.fromkeys([*STAGES, "density/counts", "report"], "committed"),
    }
    assert "blocks.zarr" not in tree.node("nuclei").item_names()  # scratch removed


def test_slide_is_the_deterministic_mosaic(wsi):
    tree, _, _ = wsi
    level0 = tree.node("slide").open_image("slide")[0]
    assert level0.shape == (3, 4096, 4096) and level0.dtype == np.uint8
    slide = SyntheticSlide(4096, seed=0)
    for y, x in [(0, 0), (1500, 2100), (3800, 3900)]:
        window = np.asarray(level0[:, y : y + 296, x : x + 196])
        np.testing.assert_array_equal(window, slide.region(y, y + 296, x, x + 196)[:, :, :196])
    assert not np.array_equal(
        slide.region(0, 512, 0, 512), SyntheticSlide(4096, 1).region(0, 512, 0, 512)
    )


def test_patches_cover_only_tissue_so_the_grid_has_gaps(wsi):
    tree, _, _ = wsi
    p = WsiParams(size=4096)
    tissue = tree.node("tissue")
    fraction = tissue.load_json("tissue")["fraction"]
    assert 0.1 < fraction < 0.9
    mask = tissue.open_image("tissue")[0].compute()
    rows = tissue_boxes(mask, tissue.load_json("tissue")["factor"], p.size, p.patch, p.stride)
    run = sum(len(r) for r in rows)
    full = len(range(0, p.size - p.patch + p.stride, p.stride)) ** 2
    assert 0 < run < full
    assert f"{run} patches of 256 px" in tree.node("model").load_text("log.txt")
    foreground = np.asarray(tree.node("model").open_image("foreground")[0][::16, ::16])
    assert foreground.min() == 0 and foreground.max() == 255  # no patch there: fill value


class RecordedSlide:
    """A ``(3, h, w)`` slide in memory that records the bytes of every read."""

    def __init__(self, pixels: np.ndarray):
        self.pixels, self.reads = pixels, []

    @property
    def shape(self) -> tuple[int, ...]:
        return self.pixels.shape

    def __getitem__(self, index):
        out = self.pixels[index]
        self.reads.append(out.nbytes)
        return out


def test_patches_are_read_in_runs_of_touching_boxes_padded_past_the_edge():
    pixels = SyntheticSlide(1500, 0).region(0, 1500, 0, 1500)
    slide = RecordedSlide(pixels)
    xs = np.array([0, 224, 448, 1120, 1344])  # a gap between 704 and 1120; the last overhangs
    boxes = np.column_stack([xs, np.full(5, 1400), xs + 256, np.full(5, 1656)])
    patches = read_patches(slide, boxes)
    padded = np.pad(pixels, ((0, 0), (0, 256), (0, 256)), constant_values=255)
    for patch, (x0, y0, x1, y1) in zip(patches, boxes, strict=True):
        np.testing.assert_array_equal(patch, np.moveaxis(padded[:, y0:y1, x0:x1], 0, -1))
    assert slide.reads == [3 * 100 * 704, 3 * 100 * (1500 - 1120)]  # the gap is not read


def no_bar(items, **_):
    return items


def test_the_model_reads_the_slide_batch_by_batch_never_a_whole_row(tree):
    p = WsiParams(size=3000, batch=4)
    slide = RecordedSlide(SyntheticSlide(p.size, 0).region(0, 600, 0, p.size))
    mask = np.ones((600 // 32 + 1, p.size // 32 + 1), np.uint8)
    rows = tissue_boxes(mask, 32, p.size, p.patch, p.stride)[:2]
    with tree.node("model") as node:
        done = merge_model(
            node, slide, rows, batch=p.batch, checkpoint_rows=1, memory_budget=None, bar=no_bar
        )
    assert done["patches"] == sum(len(boxes) for boxes in rows) == 2 * 14
    batch_span = (p.batch - 1) * p.stride + p.patch
    assert max(slide.reads) == 3 * p.patch * batch_span < 3 * p.patch * p.size // 2
    assert sum(slide.reads) < 2 * 3 * p.patch * p.size * 1.2  # overlaps read again, no more
    foreground = tree.node("model").open_image("foreground")[0]
    assert foreground.shape == (600, p.size)


def test_nuclei_ids_are_those_of_a_whole_slide_labelling(wsi):
    tree, _, _ = wsi
    model = tree.node("model")
    hematoxylin = np.asarray(model.open_image("stains")[0][0])
    foreground = np.asarray(model.open_image("foreground")[0])
    mask = nucleus_mask(hematoxylin, foreground, 0.5, 1.0)  # the whole slide at once
    expected, count = ndimage.label(mask)
    labels = tree.node("nuclei").open_image("nuclei")[0].compute()
    assert tree.node("nuclei").load_json("nuclei")["count"] == count > 500
    np.testing.assert_array_equal(labels, expected)


def test_nucleus_mask_of_a_region_equals_the_whole_slide_mask(wsi):
    tree, _, _ = wsi
    model = tree.node("model")
    hematoxylin, foreground = model.open_image("stains")[0][0], model.open_image("foreground")[0]
    whole = nucleus_mask(np.asarray(hematoxylin), np.asarray(foreground), 0.5, 1.0)
    read = NucleusMask(Plane.of(model, "stains"), Plane.of(model, "foreground"), 0.5, 1.0)
    for y0, y1, x0, x1 in [(0, 700, 0, 900), (1500, 2100, 2000, 2600), (3000, 4096, 3333, 4096)]:
        np.testing.assert_array_equal(read(y0, y1, x0, x1), whole[y0:y1, x0:x1])


def test_density_counts_every_nucleus_once(wsi):
    tree, _, _ = wsi
    density = tree.node("density").open_image("density")[0].compute()
    assert density.shape == (16, 16)
    count = tree.node("nuclei").load_json("nuclei")["count"]
    assert int(density.sum()) == tree.node("density").load_json("metrics")["nuclei"] == count
    counts = tree.node("density/counts")
    assert counts.manifest.meta["combined"] and not list_parts(counts.location, kind="part")
    assert "2 strips counted by 2 worker processes" in counts.load_text("log.txt")


def count_strip_in_memory(tree, width: int) -> tuple[int, dict[str, np.ndarray]]:
    """Peak bytes allocated while counting rows 256-512 of ``width`` px of nuclei labels (an
    8 x 8 px nucleus every 64 px, those starting on row 256 touching the strip's top edge),
    and the part written."""

    def nuclei(y, x):
        ids = (y // 64) * (width // 64) + x // 64 + 1
        return np.where((y % 64 < 8) & (x % 64 < 8), ids, 0).astype(np.uint32)

    shape = (768, width)
    with tree.node(f"nuclei-{width}") as node:
        node.save_labels("nuclei", da.fromfunction(nuclei, shape=shape, dtype=np.uint32))
    with tree.node(f"counts-{width}") as counts:
        tracemalloc.start()
        try:
            count_strip(counts.url, node.url, 256, (256, 512), 0)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        (part,) = list_parts(counts.location, kind="part")
        return peak, {name: part.read(name) for name in ("counts", "boundary")}


def test_a_density_strip_holds_one_block_of_labels_whatever_the_width(tree):
    block = 256 * 4096 * 4  # rows of the strip x columns read at a time x uint32
    narrow, counted = count_strip_in_memory(tree, 2 * 4096)
    wide, _ = count_strip_in_memory(tree, 8 * 4096)
    assert wide - narrow < block  # 6 blocks wider, not even one block more held
    assert counted["counts"].shape == (3, 32)
    assert counted["counts"].sum() == 3 * 128  # the nuclei starting on rows 320, 384, 448
    assert list(counted["boundary"][:, 1]) == [64.0] * 128  # on the edge: those of row 256


def test_report_has_timings_peak_memory_and_a_plot(wsi):
    tree, clock, _ = wsi
    report = tree.node("report")
    stages = report.load_json("stages")
    assert [s["name"] for s in stages["stages"]] == STAGES
    assert all(s["status"] == "new" and s["seconds"] > 0 for s in stages["stages"])
    assert stages["peak_rss"] == clock.peak_rss > 50 * 2**20
    assert report.load_bytes("stages.png")[:4] == b"\x89PNG"


@pytest.mark.parametrize("block", [(64, 100), (300, 37), 1000])
def test_blockwise_labels_equal_a_whole_image_labelling(tree, block):
    rng = np.random.default_rng(3)
    mask = ndimage.binary_opening(ndimage.gaussian_filter(rng.random((300, 420)), 3) > 0.5)
    mask[:, 130] = True  # one component spanning every block row
    mask[64:, 199:201] = True  # one touching a block face along its length
    reads = []

    def read(y0, y1, x0, x1):
        reads.append((y0, y1, x0, x1))
        return mask[y0:y1, x0:x1]

    with tree.node("labels") as node:
        labels, count = label_blockwise(read, mask.shape, block, node)
        labels = labels.compute()
    expected, expected_count = ndimage.label(mask)
    assert count == expected_count > 20
    np.testing.assert_array_equal(labels, expected)
    assert len(reads) == len(set(reads))  # every block is read once
    assert sum((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in reads) == mask.size


def test_cli_runs_the_whole_slide_demo(tmp_path, capsys):
    assert main(["demo", "--size", "512", "--out", str(tmp_path / "t"), "--no-view", "-q"]) == 0
    out = capsys.readouterr().out
    assert "report" in out and "committed" in out
    with pytest.raises(SystemExit):
        main(["demo", "--size", "12"])


MAPPED_ON_THEIR_OWN = """
import ctypes, ctypes.util
import numpy as np
from cachetree.demo.stages import return_large_blocks_at_once


class MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd",
        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
return_large_blocks_at_once()
large = np.ones(8 * 2**20, np.uint8)  # freed, it makes glibc alone raise its threshold
del large
mapped = libc.mallinfo2().hblkhd
block = np.ones(2**20, np.uint8)
grown = libc.mallinfo2().hblkhd - mapped
del block
print(grown, libc.mallinfo2().hblkhd - mapped)
"""


def test_large_arrays_leave_the_process_as_soon_as_they_are_freed():
    # a fresh process: in a long-lived one a free block of the heap may serve the array
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", MAPPED_ON_THEIR_OWN], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    grown, left = (int(v) for v in out.stdout.split())
    assert grown >= 2**20  # mapped on its own, not taken from a heap
    assert left == 0  # and unmapped when freed


# -- kill and resume ---------------------------------------------------------------------------
def tree_content(root: Path) -> dict[str, object]:
    """Every node's state, params and data (images level by level, JSON, keyed results),
    without the logs, plots and report timings that differ from run to run."""
    tree = CacheTree(str(root), create=False)
    content: dict[str, object] = {}
    for info in tree.walk():
        node = tree.node(info.path) if info.path else None
        if node is None or info.path == "report":
            content[info.path] = info.state
            continue
        content[info.path] = (info.state, json.dumps(node.manifest.params, sort_keys=True))
        for item in node.item_names():
            key = f"{info.path}/{item}"
            if item.endswith(".ome.zarr"):
                content[key] = [np.asarray(level) for level in node.open_image(item)]
            elif item.endswith(".json"):
                content[key] = node.load_json(item)
        if info.path == "density/counts":
            content["counts"] = node.keyed()["density"]
    return content


def assert_same_content(a: dict[str, object], b: dict[str, object]) -> None:
    assert sorted(a) == sorted(b)
    for key, value in a.items():
        if isinstance(value, list):
            assert len(value) == len(b[key])
            for x, y in zip(value, b[key], strict=True):
                np.testing.assert_array_equal(x, y, err_msg=key)
        elif isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, b[key], err_msg=key)
        else:
            assert value == b[key], key


def start(root: Path, pause: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(root), str(pause)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    """SIGKILL the worker's process group as soon as ``ready()``; it must still be running."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the run ended before the kill point"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def has_parts(node: Path, kind: str) -> bool:
    from cachetree.fs.location import Location

    return (node / ".cachetree-parts").exists() and bool(
        list_parts(Location.from_url(str(node)), kind=kind)
    )


@pytest.mark.slow
def test_killed_runs_resume_to_the_uninterrupted_result(tmp_path):
    reference = start(tmp_path / "reference", 0.0)
    assert reference.wait(timeout=600) == 0, reference.stdout.read()

    root = tmp_path / "killed"
    kill_when(start(root, 0.3), lambda: has_parts(root / "model", "canvas-checkpoint"))
    assert (root / "slide" / ".cachetree.json").exists()
    kill_when(start(root, 0.3), lambda: has_parts(root / "density" / "counts", "part"))
    last = start(root, 0.0)
    out, _ = last.communicate(timeout=600)
    assert last.returncode == 0, out
    statuses = {line.split()[0]: line.split()[1] for line in out.splitlines()}
    assert statuses == {
        "slide:": "reused",
        "tissue:": "reused",
        "model:": "reused",
        "nuclei:": "reused",
        "density:": "resumed",
        "report:": "new",
    }
    model_log = CacheTree(str(root)).node("model").load_text("log.txt")
    assert "(0 batches done before a resume)" not in model_log  # the canvas resumed
    counts_log = CacheTree(str(root)).node("density/counts").load_text("log.txt")
    assert "(0 were done before a resume)" not in counts_log
    assert_same_content(tree_content(root), tree_content(tmp_path / "reference"))
