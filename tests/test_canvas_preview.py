"""The preview of a canvas in progress: coarse levels and display ranges always on disk."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from cachetree import CacheTree
from cachetree.canvas import Canvas, HeadSpec
from cachetree.canvas.preview import PREVIEW_MAX_BYTES, preview_factor
from cachetree.canvas.spec import CanvasSpec
from cachetree.canvas.view import canvas_state, open_canvas, open_canvas_pyramid

SHAPE = (300, 520)
HEADS = {"prob": HeadSpec(2), "count": HeadSpec(1, "uint16")}
PATCH = 64


def batches(order: str, rows: int = SHAPE[0]) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Patches of 64 px at stride 40 over the top ``rows`` rows, with varying values."""
    rng = np.random.default_rng(7)
    boxes = np.array(
        [[x, y, x + PATCH, y + PATCH] for y in range(0, rows - 24, 40) for x in range(0, 500, 40)]
    )
    if order == "any":
        boxes = boxes[rng.permutation(len(boxes))]
    out = []
    for i in range(0, len(boxes), 9):
        chunk = boxes[i : i + 9]
        n = len(chunk)
        prob = rng.uniform(-1, 3, (n, PATCH, PATCH, 2)).astype(np.float32)
        count = rng.integers(10, 200, (n, PATCH, PATCH, 1)).astype(np.uint16)
        out.append(({"prob": prob, "count": count}, chunk))
    return out


def block_means(sent, factor: int, final_rows: int = 0) -> dict[str, np.ndarray]:
    """The expected preview of everything sent: per F x F block, the ratio of the weighted
    sums and weights; for the blocks of the first ``final_rows`` canvas rows (written as
    final), the mean of the normalised pixels, as in the image's pyramid."""
    weight = np.zeros(SHAPE, np.float64)
    sums = {"prob": np.zeros((*SHAPE, 2)), "count": np.zeros((*SHAPE, 1))}
    for values, boxes in sent:
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            h, w = min(y1, SHAPE[0]) - y0, min(x1, SHAPE[1]) - x0
            weight[y0 : y0 + h, x0 : x0 + w] += 1
            for head, acc in sums.items():
                acc[y0 : y0 + h, x0 : x0 + w] += values[head][i, :h, :w]
    ch, cw = -(-SHAPE[0] // factor), -(-SHAPE[1] // factor)

    def blocks(a: np.ndarray) -> np.ndarray:
        padded = np.zeros((ch * factor, cw * factor, *a.shape[2:]))
        padded[: SHAPE[0], : SHAPE[1]] = a
        return padded.reshape(ch, factor, cw, factor, *a.shape[2:]).sum(axis=(1, 3))

    w = blocks(weight)
    pixels = blocks(np.ones(SHAPE))
    final = (np.arange(ch) < final_rows // factor)[:, None]
    out = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for head, acc in sums.items():
            weighted = np.where(w > 0, np.moveaxis(blocks(acc) / w[..., None], -1, 0), 0)
            normalised = np.where(weight[..., None] > 0, acc / weight[..., None], 0)
            if head == "count":
                normalised = np.rint(normalised)
            pixel_mean = np.moveaxis(blocks(normalised) / pixels[..., None], -1, 0)
            out[head] = np.where(final, pixel_mean, weighted)
    return out


def preview_level(node, head: str) -> np.ndarray:
    """The finest stored preview level of ``head`` as ``(C, h, w)``."""
    pyramid = open_canvas_pyramid(node.location)
    factor = pyramid.state.preview["factor"]
    level = pyramid.levels[head][int(math.log2(factor))]
    data = np.asarray(level)
    return data if data.ndim == 3 else data[np.newaxis]


@pytest.mark.parametrize(
    ("order", "budget"),
    [("row-major", None), ("row-major", 60_000), ("any", None), ("any", 60_000)],
)
def test_the_preview_holds_block_means_of_everything_on_disk(tmp_path, order, budget):
    tree = CacheTree(tmp_path / "root")
    node = tree.node("c").open()
    canvas = Canvas(node, SHAPE, HEADS, tile=32, order=order, memory_budget=budget)
    sent = batches(order, rows=200)
    for values, boxes in sent:
        canvas.add(values, boxes)
    canvas.checkpoint()
    state = canvas_state(node.location)
    factor = state.preview["factor"]
    assert factor == preview_factor(canvas.spec, canvas.memory_budget)
    assert (state.rows_final > 0) == (order == "row-major")
    expected = block_means(sent, factor, canvas.rows_written)
    np.testing.assert_allclose(preview_level(node, "prob"), expected["prob"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(preview_level(node, "count"), np.rint(expected["count"]), atol=1)
    # display ranges: never NaN, within the values sent
    (low, high), (low1, high1) = state.value_range("prob")
    assert -1 <= low < high <= 3 and -1 <= low1 < high1 <= 3
    ((clow, chigh),) = state.value_range("count")
    assert 10 <= clow <= chigh < 200
    assert 0.5 < state.merged < 0.8  # the top 200 of 300 rows
    canvas.close()


def test_a_new_canvas_has_a_preview_at_once_and_a_finalised_one_its_pyramid(tmp_path):
    tree = CacheTree(tmp_path / "root")
    with tree.node("c") as node:
        canvas = Canvas(node, SHAPE, HEADS, tile=32, order="any")
        state = canvas_state(node.location)
        assert state.preview is not None and state.merged == 0
        assert state.value_range("prob") == [[0.0, 0.0], [0.0, 0.0]]  # the fill value
        for values, boxes in batches("any"):
            canvas.add(values, boxes)
        canvas.finalize(commit=False)
    pyramid = open_canvas_pyramid(node.location)
    assert pyramid.state.finalized and pyramid.state.merged == 1
    final = np.asarray(pyramid.levels["prob"][0])
    np.testing.assert_array_equal(final, np.asarray(open_canvas(node.location)["prob"]))
    assert not [p for p in Path(node.location.path).rglob("*") if "preview" in p.name]


def test_coarse_levels_read_only_the_preview(tmp_path):
    """Levels from the preview factor on show the canvas without reading level-0 data."""
    tree = CacheTree(tmp_path / "root")
    node = tree.node("c").open()
    canvas = Canvas(node, SHAPE, HEADS, tile=32, order="any", memory_budget=60_000)
    sent = batches("any")
    for values, boxes in sent:
        canvas.add(values, boxes)
    canvas.checkpoint()
    canvas.close()
    pyramid = open_canvas_pyramid(node.location)
    factor = pyramid.state.preview["factor"]
    levels = pyramid.levels["prob"]
    assert [lv.shape[-2:] for lv in levels] == [
        (-(-SHAPE[0] // 2**k), -(-SHAPE[1] // 2**k)) for k in range(len(levels))
    ]
    # every spill part gone: level 0 cannot be read any more, the coarse levels still can
    parts = Path(node.location.path) / ".cachetree-parts"
    for spill in parts.glob("canvas-spill-*"):
        shutil.rmtree(spill)
    expected = block_means(sent, factor)["prob"]
    k = int(math.log2(factor))
    np.testing.assert_allclose(np.asarray(levels[k]), expected, rtol=1e-4, atol=1e-5)
    # a finer level repeats the preview's blocks
    finer = np.asarray(levels[k - 1])
    np.testing.assert_allclose(finer[:, ::2, ::2], expected, rtol=1e-4, atol=1e-5)


def test_a_resumed_canvas_keeps_its_preview(tmp_path):
    sent = batches("any")
    half = len(sent) // 2
    tree = CacheTree(tmp_path / "root")
    node = tree.node("c").open()
    canvas = Canvas(node, SHAPE, HEADS, tile=32, order="any", memory_budget=60_000)
    for values, boxes in sent[:half]:
        canvas.add(values, boxes)
    canvas.checkpoint()
    canvas.add(*sent[half])  # lost: after the checkpoint
    canvas.close()
    node.abandon()
    node = tree.node("c").open()
    canvas = Canvas(node, SHAPE, HEADS, tile=32, order="any", memory_budget=60_000, resume=True)
    assert canvas.batches_done == half
    for values, boxes in sent[half:]:
        canvas.add(values, boxes)
    canvas.checkpoint()
    factor = canvas_state(node.location).preview["factor"]
    expected = block_means(sent, factor)["prob"]
    np.testing.assert_allclose(preview_level(node, "prob"), expected, rtol=1e-4, atol=1e-5)
    canvas.close()


def test_the_preview_stays_small_whatever_the_canvas_size():
    heads = {"a": HeadSpec(4), "b": HeadSpec(1)}
    for edge in (2_048, 8_192, 32_768, 100_000, 1_000_000):
        spec = CanvasSpec((edge, edge), heads)
        factor = preview_factor(spec, 1024**3)
        cells = math.ceil(edge / factor) ** 2
        assert cells * 4 * (1 + 4 + 1) <= PREVIEW_MAX_BYTES
        assert factor == 2 or cells * 4 * 4 * 6 > PREVIEW_MAX_BYTES  # the finest that fits
    assert preview_factor(CanvasSpec((8192, 8192), heads), 1024**3) == 16
    # a small budget makes it coarser: at most a sixteenth of the budget
    assert preview_factor(CanvasSpec((8192, 8192), heads), 32 * 1024**2) == 32


def test_the_preview_of_a_canvas_on_s3(s3_root):
    tree = CacheTree(s3_root)
    node = tree.node("c").open()
    canvas = Canvas(node, SHAPE, HEADS, tile=32, order="row-major", memory_budget=60_000)
    sent = batches("row-major", rows=200)
    for values, boxes in sent:
        canvas.add(values, boxes)
    canvas.checkpoint()
    node.location.fs.invalidate_cache()
    state = canvas_state(node.url)
    expected = block_means(sent, state.preview["factor"], canvas.rows_written)["prob"]
    np.testing.assert_allclose(preview_level(node, "prob"), expected, rtol=1e-4, atol=1e-5)
    assert all(math.isfinite(v) for pair in state.value_range("prob") for v in pair)
    canvas.close()


def _preview_pointer(node):
    from cachetree.canvas.kinds import STAGING
    from cachetree.canvas.preview import read_preview_pointer
    from cachetree.tree.parts import parts_location

    return read_preview_pointer(parts_location(node.location).raw_child(STAGING))


def test_a_preview_write_told_to_stop_leaves_the_pointer_as_it_was(tmp_path):
    """write_preview checks its stop event before every chunk: set, it returns False and
    preview.json still names the preview before it."""
    import threading

    from cachetree.canvas.kinds import STAGING
    from cachetree.canvas.preview import PreviewAccumulator, write_preview
    from cachetree.tree.parts import parts_location

    node = CacheTree(tmp_path / "root").node("c").open()
    spec = CanvasSpec(SHAPE, HEADS, tile=64)
    staging = parts_location(node.location).raw_child(STAGING)
    accumulator = PreviewAccumulator(spec, 4)
    stop = threading.Event()
    assert write_preview(staging, 0, accumulator, {}, {"seq": 0}, stop) is True
    assert _preview_pointer(node)["folder"].endswith("00000000")
    stop.set()
    assert write_preview(staging, 1, accumulator, {}, {"seq": 1}, stop) is False
    assert _preview_pointer(node)["folder"].endswith("00000000")


def test_a_cluster_preview_closed_for_finalising_drops_writes_not_begun(tmp_path):
    """RunPreview.close(abandon=True), as merge_distributed calls it before finalising: a
    write still queued is dropped (the finished images replace the preview at once), and
    closing raises nothing."""
    import threading

    from cachetree.canvas.cluster.preview import RunPreview

    node = CacheTree(tmp_path / "root").node("c").open()
    spec = CanvasSpec(SHAPE, HEADS, tile=64)
    preview = RunPreview(node.location, spec, 4)
    gate = threading.Event()
    preview._writer.submit(gate.wait)  # the writer's one thread is busy ...
    preview.write(0.5, now=True)  # ... so this write waits in its queue
    closing = threading.Thread(target=preview.close, kwargs={"abandon": True})
    closing.start()
    assert preview._stop.wait(timeout=30)
    gate.set()
    closing.join(timeout=30)
    assert not closing.is_alive()
    queued = preview._writes[0]  # dropped from the queue, or stopped before its first chunk
    assert queued.cancelled() or queued.result() is False
    assert _preview_pointer(node) is None  # never written
