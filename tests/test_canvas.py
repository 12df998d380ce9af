"""Canvas: patch merging against a dense float64 reference, bad input, spilling, lazy view."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachetree import CacheTree
from cachetree.canvas import (
    CANVAS_JSON,
    Canvas,
    CanvasSpec,
    HeadSpec,
    WorkerCanvas,
    normalise_block,
    parse_memory_budget,
    weight_window,
)
from cachetree.canvas.spill import read_spill_part
from cachetree.canvas.view import canvas_state, is_canvas, open_canvas
from cachetree.errors import (
    BoxOutOfBoundsError,
    DTypeMismatchError,
    FinalizedError,
    IncompatibleError,
    InvalidDataError,
    InvalidNameError,
    KeyLookupError,
    NonFiniteValueError,
    ShapeMismatchError,
)
from cachetree.images.ngff import open_image, read_image
from cachetree.images.pyramid import ImageWriter, PyramidAssembler, build_pyramid
from cachetree.tree.parts import list_parts

# -- reference ------------------------------------------------------------------------------


def dense_reference(shape, heads, batches, weights="uniform", nan_policy="raise", fill=0.0):
    """Per head, the merged canvas ``(C, H, W)`` computed densely in float64.

    ``batches`` is a list of ``(values_by_head, boxes)`` or ``(sums, weights, boxes)``
    (pre-weighted). Values are not rounded (see :func:`assert_matches`).
    """
    H, W = shape
    sums = {n: np.zeros((H, W, s.channels)) for n, s in heads.items()}
    weight = np.zeros((H, W))
    for batch in batches:
        if len(batch) == 3:
            values, pre, boxes = batch
        else:
            (values, boxes), pre = batch, None
        for i, (x0, y0, x1, y1) in enumerate(np.asarray(boxes).tolist()):
            patches = {n: np.asarray(v[i], np.float64) for n, v in values.items()}
            patches = {n: p[..., None] if p.ndim == 2 else p for n, p in patches.items()}
            h, w = y1 - y0, x1 - x0
            win = (
                np.asarray(pre[i], np.float64)
                if pre is not None
                else weight_window(weights, (h, w)).astype(np.float64)
            )
            bad = np.zeros((h, w), bool)
            for p in patches.values():
                bad |= ~np.isfinite(p).all(axis=2)
            if bad.any():
                assert nan_policy == "ignore"
                win = np.where(bad, 0.0, win)
            cy0, cy1, cx0, cx1 = max(y0, 0), min(y1, H), max(x0, 0), min(x1, W)
            if cy1 <= cy0 or cx1 <= cx0:
                continue
            region = (slice(cy0, cy1), slice(cx0, cx1))
            local = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
            weight[region] += win[local]
            for n, p in patches.items():
                clean = np.where(bad[..., None], 0.0, p)
                factor = 1.0 if pre is not None else win[..., None]
                sums[n][region] += (clean * factor)[local]
    out = {}
    for n in heads:
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = sums[n] / weight[..., None]
        mean = np.moveaxis(mean, -1, 0)
        mean[:, weight <= 0] = fill
        out[n] = mean
    return out


def read_head(node, name, channels):
    level0 = np.asarray(open_image(node.item(f"{name}.ome.zarr"))[0].compute())
    return level0 if channels > 1 else level0[np.newaxis]


def assert_matches(result, expected, dtype):
    """``result`` equals the unrounded float64 ``expected`` up to float32 accumulation error.

    Integer results must be a rounding of the (clipped) reference: within 0.5 plus the
    float32 error, so a value at x.5 may go either way.
    """
    dtype = np.dtype(dtype)
    assert result.shape == expected.shape
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        clipped = np.clip(expected, info.min, info.max)
        err = np.abs(result.astype(np.float64) - clipped)
        bound = 0.5 + 1e-4 * np.maximum(1, np.abs(clipped))
        assert (err <= bound).all(), f"max error {err.max()} at {np.argmax(err - bound)}"
    else:
        scale = max(1.0, float(np.nanmax(np.abs(expected), initial=0)))
        tol = 2e-3 if dtype == np.float16 else 1e-4
        np.testing.assert_allclose(
            result.astype(np.float64), expected, rtol=tol, atol=tol * scale, equal_nan=True
        )


def make_values(rng, heads, n, h, w):
    values = {}
    for name, spec in heads.items():
        if spec.dtype.kind in "iu":
            info = np.iinfo(spec.dtype)
            lo, hi = max(info.min, -1000), min(info.max, 1000)
            values[name] = rng.integers(lo, hi + 1, (n, h, w, spec.channels)).astype(spec.dtype)
        else:
            values[name] = rng.uniform(-2, 3, (n, h, w, spec.channels)).astype(spec.dtype)
    return values


def grid_boxes(shape, patch, stride, offset):
    (H, W), (h, w), (sy, sx), (oy, ox) = shape, patch, stride, offset
    ys = range(oy, H, sy)
    xs = range(ox, W, sx)
    return np.array([[x, y, x + w, y + h] for y in ys for x in xs], np.int64)


# -- properties -----------------------------------------------------------------------------
HEAD_SETS = [
    {"p": HeadSpec(1)},
    {"prob": HeadSpec(3), "mask": HeadSpec(1, np.uint8)},
    {"a": HeadSpec(2, np.float64), "b": HeadSpec(1, np.int16), "c": HeadSpec(4, np.float16)},
]


@st.composite
def scenarios(draw):
    H = draw(st.integers(1, 56))
    W = draw(st.integers(1, 56))
    h = draw(st.integers(1, 20))
    w = draw(st.integers(1, 20))
    sy = draw(st.integers(1, h))
    sx = draw(st.integers(1, w))
    oy = draw(st.integers(-h + 1, 0))
    ox = draw(st.integers(-w + 1, 0))
    n = len(range(oy, H, sy)) * len(range(ox, W, sx))
    if n > 500:  # keep examples fast: coarsen the stride
        sy, sx = h, w
    return {
        "shape": (H, W),
        "patch": (h, w),
        "stride": (sy, sx),
        "offset": (oy, ox),
        "heads": draw(st.sampled_from(range(len(HEAD_SETS)))),
        "order": draw(st.sampled_from(["any", "row-major"])),
        "weights": draw(st.sampled_from(["uniform", "gaussian"])),
        "keep": draw(st.floats(0.3, 1.0)),
        "zeros": draw(st.floats(0.0, 0.3)),
        "batch": draw(st.integers(1, 40)),
        "budget": draw(st.sampled_from([None, 1, 20_000])),
        "tile": draw(st.sampled_from([8, 16, 32])),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenarios())
def test_matches_dense_reference(sc):
    """Any size, stride, overhang, order, gaps, zeros, heads, budget: equals float64 reference."""
    rng = np.random.default_rng(sc["seed"])
    heads = HEAD_SETS[sc["heads"]]
    boxes = grid_boxes(sc["shape"], sc["patch"], sc["stride"], sc["offset"])
    keep = rng.random(len(boxes)) < sc["keep"]  # masked-out locations are never sent
    boxes = boxes[keep]
    values = make_values(rng, heads, len(boxes), *sc["patch"])
    zero = rng.random(len(boxes)) < sc["zeros"]  # all-zero patches count
    for v in values.values():
        v[zero] = 0
    if sc["order"] == "any":
        perm = rng.permutation(len(boxes))
        boxes, values = boxes[perm], {k: v[perm] for k, v in values.items()}
    batches = [
        ({k: v[i : i + sc["batch"]] for k, v in values.items()}, boxes[i : i + sc["batch"]])
        for i in range(0, len(boxes), sc["batch"])
    ]
    with tempfile.TemporaryDirectory() as tmp:
        tree = CacheTree(Path(tmp) / "t")
        with tree.node("n") as node:
            canvas = Canvas(
                node,
                sc["shape"],
                heads,
                weights=sc["weights"],
                order=sc["order"],
                tile=sc["tile"],
                memory_budget=sc["budget"],
            )
            for vals, bx in batches:
                canvas.add(vals, bx)
            infos = canvas.finalize()
            expected = dense_reference(sc["shape"], heads, batches, sc["weights"])
            for name, spec in heads.items():
                result = read_head(node, name, spec.channels)
                assert str(result.dtype) == str(spec.dtype)
                assert_matches(result, expected[name], spec.dtype)
                assert infos[name].shape == (
                    sc["shape"] if spec.channels == 1 else (spec.channels, *sc["shape"])
                )
            assert not list_parts(node.location)  # spill data removed


def test_more_than_255_hits_and_all_zero_patches(tree):
    """A pixel hit 289 times; a uint8 head averages exactly (a uint8 count would wrap)."""
    H = W = 40
    p = 17
    boxes = grid_boxes((H, W), (p, p), (1, 1), (-p + 1, -p + 1))
    rng = np.random.default_rng(3)
    values = {"m": rng.integers(0, 256, (len(boxes), p, p, 1)).astype(np.uint8)}
    values["m"][::7] = 0
    heads = {"m": HeadSpec(1, np.uint8)}
    with tree.node("hits") as node:
        canvas = Canvas(node, (H, W), heads, order="row-major", tile=16)
        batches = []
        for i in range(0, len(boxes), 100):
            batch = ({"m": values["m"][i : i + 100]}, boxes[i : i + 100])
            canvas.add(*batch)
            batches.append(batch)
        canvas.finalize()
        expected = dense_reference((H, W), heads, batches)["m"]
        assert_matches(read_head(node, "m", 1), expected, np.uint8)
    counts = np.zeros((H, W))
    for x0, y0, x1, y1 in boxes.tolist():
        counts[max(y0, 0) : y1, max(x0, 0) : x1] += 1
    assert counts.max() == p * p > 255


def test_custom_weights_and_nan_ignore(tree):
    """An array of weights and nan_policy='ignore' (non-finite pixels get zero weight)."""
    rng = np.random.default_rng(5)
    H, W, p = 30, 33, 10
    boxes = grid_boxes((H, W), (p, p), (4, 3), (-2, -5))
    heads = {"a": HeadSpec(2), "b": HeadSpec(1, np.float64)}
    values = make_values(rng, heads, len(boxes), p, p)
    values["a"][0, 3, 4, 1] = np.nan
    values["b"][5, :, 2] = np.inf
    values["a"][7] = np.nan  # a whole patch of NaN contributes nothing
    custom = rng.uniform(0.1, 1.0, (p, p))
    with tree.node("w") as node:
        canvas = Canvas(node, (H, W), heads, weights=custom, nan_policy="ignore", tile=8)
        canvas.add(values, boxes)
        canvas.finalize()
        expected = dense_reference((H, W), heads, [(values, boxes)], custom, "ignore")
        for name, spec in heads.items():
            assert_matches(read_head(node, name, spec.channels), expected[name], spec.dtype)


def test_huge_finite_values_are_not_taken_for_infinite(tree):
    """The finite check sums a batch in one pass; a sum that overflows on values that are
    all finite must not reject them."""
    values = {"a": np.full((1, 4, 4, 1), 3e38, np.float32)}
    assert not np.isfinite(values["a"].sum())  # the sum overflows
    with tree.node("huge") as node:
        canvas = Canvas(node, (4, 4), {"a": 1}, tile=8)
        canvas.add(values, [[0, 0, 4, 4]])
        canvas.finalize()
        np.testing.assert_array_equal(read_head(node, "a", 1)[0], values["a"][0, ..., 0])


def test_add_weighted_sums(tree):
    """Pre-weighted sums and weight sums are added as they are."""
    rng = np.random.default_rng(9)
    boxes = np.array([[0, 0, 12, 8], [5, 3, 17, 11], [-4, 10, 8, 18]])
    sums = {"s": rng.uniform(0, 5, (3, 8, 12, 2))}
    weights = rng.uniform(0, 3, (3, 8, 12))
    weights[0, :2] = 0
    with tree.node("ws") as node:
        canvas = Canvas(node, (16, 16), {"s": 2}, tile=8)
        canvas.add_weighted(sums, weights, boxes)
        canvas.finalize()
        expected = dense_reference((16, 16), {"s": HeadSpec(2)}, [(sums, weights, boxes)])
        assert_matches(read_head(node, "s", 2), expected["s"], np.float32)


def test_fill_value_where_nothing_landed(tree):
    with tree.node("fill") as node:
        canvas = Canvas(node, (40, 40), {"a": 2, "i": (1, "int16")}, tile=16, fill_value=-1)
        canvas.add(
            {"a": np.ones((1, 4, 4, 2), np.float32), "i": np.full((1, 4, 4, 1), 7, np.int16)},
            [[30, 30, 34, 34]],
        )
        canvas.finalize()
        a = read_head(node, "a", 2)
        i = read_head(node, "i", 1)
    assert (a[:, 30:34, 30:34] == 1).all() and (i[:, 30:34, 30:34] == 7).all()
    assert (a[:, :30] == -1).all() and (i[:, :, :30] == -1).all()
    assert read_image(node.item("a.ome.zarr")).contrast_limits == [(-1.0, 1.0), (-1.0, 1.0)]


# -- bad input ------------------------------------------------------------------------------
GOOD_A = np.ones((2, 6, 6, 3), np.float32)
GOOD_B = np.ones((2, 6, 6, 1), np.uint8)
GOOD_BOX = np.array([[0, 0, 6, 6], [10, 4, 16, 10]])

BAD_INPUTS = [
    ("fewer boxes than patches", {"a": GOOD_A, "b": GOOD_B}, GOOD_BOX[:1], ShapeMismatchError),
    (
        "box of wrong size",
        {"a": GOOD_A, "b": GOOD_B},
        [[0, 0, 6, 6], [0, 0, 7, 6]],
        ShapeMismatchError,
    ),
    (
        "box outside the canvas",
        {"a": GOOD_A, "b": GOOD_B},
        [[0, 0, 6, 6], [40, 0, 46, 6]],
        BoxOutOfBoundsError,
    ),
    (
        "box above the canvas",
        {"a": GOOD_A, "b": GOOD_B},
        [[0, -6, 6, 0], [0, 0, 6, 6]],
        BoxOutOfBoundsError,
    ),
    (
        "fractional box",
        {"a": GOOD_A, "b": GOOD_B},
        [[0, 0, 6, 6], [0.5, 0, 6.5, 6]],
        BoxOutOfBoundsError,
    ),
    ("boxes not (N, 4)", {"a": GOOD_A, "b": GOOD_B}, [[0, 0, 6], [0, 0, 6]], ShapeMismatchError),
    ("unknown head", {"a": GOOD_A, "b": GOOD_B, "c": GOOD_B}, GOOD_BOX, KeyLookupError),
    ("missing head", {"a": GOOD_A}, GOOD_BOX, KeyLookupError),
    ("wrong number of heads", [GOOD_A], GOOD_BOX, KeyLookupError),
    ("channel mismatch", {"a": GOOD_A[..., :2], "b": GOOD_B}, GOOD_BOX, ShapeMismatchError),
    ("patch count differs", {"a": GOOD_A, "b": GOOD_B[:1]}, GOOD_BOX, ShapeMismatchError),
    ("not 4-D", {"a": GOOD_A[0], "b": GOOD_B}, GOOD_BOX, ShapeMismatchError),
    (
        "float into uint8 head",
        {"a": GOOD_A, "b": GOOD_B.astype(np.float32)},
        GOOD_BOX,
        DTypeMismatchError,
    ),
    (
        "complex values",
        {"a": GOOD_A.astype(np.complex64), "b": GOOD_B},
        GOOD_BOX,
        DTypeMismatchError,
    ),
    (
        "NaN",
        {"a": np.where(np.arange(3) == 1, np.nan, GOOD_A).astype(np.float32), "b": GOOD_B},
        GOOD_BOX,
        NonFiniteValueError,
    ),
    ("infinity", {"a": np.full_like(GOOD_A, np.inf), "b": GOOD_B}, GOOD_BOX, NonFiniteValueError),
    ("not an array", {"a": "patches", "b": GOOD_B}, GOOD_BOX, InvalidDataError),
]


@pytest.mark.parametrize(
    ("case", "outputs", "boxes", "error"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_raises_and_leaves_canvas_unchanged(tree, case, outputs, boxes, error):
    heads = {"a": HeadSpec(3), "b": HeadSpec(1, np.uint8)}
    rng = np.random.default_rng(1)
    good1 = (make_values(rng, heads, 2, 6, 6), GOOD_BOX)
    good2 = (make_values(rng, heads, 2, 6, 6), GOOD_BOX + np.array([4, 2, 4, 2]))
    with tree.node("bad") as node:
        canvas = Canvas(node, (20, 20), heads, tile=8, order="row-major")
        canvas.add(*good1)
        with pytest.raises(error) as info:
            canvas.add(outputs, boxes)
        assert len(str(info.value)) > 20  # says what is wrong
        assert canvas.batches_done == 1
        canvas.add(*good2)
        canvas.finalize()
        expected = dense_reference((20, 20), heads, [good1, good2])
        for name, spec in heads.items():
            assert_matches(read_head(node, name, spec.channels), expected[name], spec.dtype)


def test_bad_construction_and_use(tree):
    with tree.node("c") as node:
        with pytest.raises(ShapeMismatchError):
            Canvas(node, (0, 10), {"a": 1})
        with pytest.raises(ShapeMismatchError):
            Canvas(node, (10,), {"a": 1})
        with pytest.raises(InvalidDataError):
            Canvas(node, (10, 10), {})
        with pytest.raises(DTypeMismatchError):
            Canvas(node, (10, 10), {"a": (1, "complex64")})
        with pytest.raises(DTypeMismatchError):
            Canvas(node, (10, 10), {"a": (1, "uint8")}, fill_value=np.nan)
        with pytest.raises(InvalidDataError):
            Canvas(node, (10, 10), {"a": 1}, order="diagonal")
        with pytest.raises(InvalidDataError):
            Canvas(node, (10, 10), {"a": 1}, nan_policy="sometimes")
        with pytest.raises(InvalidDataError):
            Canvas(node, (10, 10), {"a": 1}, weights="triangle")
        with pytest.raises(InvalidDataError):
            Canvas(node, (10, 10), {"a": 1}, memory_budget="lots")
        with pytest.raises(InvalidDataError):
            Canvas(node, (10, 10), {"a": 1}, tile=9)
        with pytest.raises(InvalidNameError):
            Canvas(node, (10, 10), {"a/b": 1})
        canvas = Canvas(node, (10, 10), {"a": 1}, weights=np.ones((4, 4)), tile=8)
        with pytest.raises(ShapeMismatchError):
            canvas.add(np.ones((1, 5, 5, 1), np.float32), [[0, 0, 5, 5]])
        canvas.add(np.ones((1, 4, 4, 1), np.float32), [[0, 0, 4, 4]])
        canvas.finalize()
        with pytest.raises(FinalizedError, match="finalized"):
            canvas.add(np.ones((1, 4, 4, 1), np.float32), [[0, 0, 4, 4]])
        with pytest.raises(FinalizedError):
            canvas.finalize()
    with pytest.raises(FinalizedError, match="not open for writing"):
        Canvas(tree.node("c"), (10, 10), {"a": 1})  # committed node


def test_row_major_patch_above_frontier_is_rejected(tree):
    with tree.node("rm") as node:
        canvas = Canvas(node, (64, 64), {"a": 1}, order="row-major", tile=8)
        patch = np.ones((1, 8, 8, 1), np.float32)
        canvas.add(patch, [[0, 20, 8, 28]])
        with pytest.raises(BoxOutOfBoundsError, match="order='any'"):
            canvas.add(patch, [[0, 12, 8, 20]])
        canvas.add(patch, [[8, 20, 16, 28]])  # same row is fine
        canvas.close()


def test_parse_memory_budget():
    assert parse_memory_budget(1000) == 1000
    assert parse_memory_budget("512MiB") == 512 * 2**20
    assert parse_memory_budget("2GB") == 2 * 10**9
    assert parse_memory_budget("1.5 GiB") == int(1.5 * 2**30)
    assert 0 < parse_memory_budget("25%") < parse_memory_budget("50%")
    assert 0 < parse_memory_budget(None) <= 2**30
    for bad in (0, -5, "0%", "150%", "many", True, 1.5):
        with pytest.raises(InvalidDataError):
            parse_memory_budget(bad)


def test_weight_window():
    assert (weight_window("uniform", (3, 4)) == 1).all()
    g = weight_window("gaussian", (9, 7))
    assert g.dtype == np.float32 and g.max() == 1 and g[4, 3] == 1 and (g > 0).all()
    assert g[0, 0] < g[4, 0] < g[4, 3]
    with pytest.raises(ShapeMismatchError):
        weight_window(np.ones((3, 3)), (4, 4))
    with pytest.raises(InvalidDataError):
        weight_window(-np.ones((3, 3)), (3, 3))


# -- row-major streaming, spilling, views -------------------------------------------------
def test_row_major_writes_rows_before_finalize(tree):
    rng = np.random.default_rng(2)
    H, W, p = 96, 80, 16
    boxes = grid_boxes((H, W), (p, p), (12, 12), (0, 0))
    heads = {"a": HeadSpec(2)}
    values = make_values(rng, heads, len(boxes), p, p)
    with tree.node("rows") as node:
        canvas = Canvas(node, (H, W), heads, order="row-major", tile=16)
        seen = []
        for i in range(0, len(boxes), 7):
            canvas.add({"a": values["a"][i : i + 7]}, boxes[i : i + 7])
            seen.append(({"a": values["a"][i : i + 7]}, boxes[i : i + 7]))
            if canvas.rows_written >= 48:
                break
        canvas.checkpoint()  # waits for the writes of the rows written so far
        written = canvas.rows_written
        assert written >= 48
        assert canvas.stats["tiles_in_memory"] == 0
        state = canvas_state(node.location)
        assert state.rows_final * 16 == written and not state.finalized
        view = open_canvas(node.location)["a"][:, :written].compute()
        expected = dense_reference((H, W), heads, seen)["a"][:, :written]
        assert_matches(view, expected, np.float32)
        canvas.close()


@pytest.mark.parametrize("order", ["any", "row-major"])
def test_tiny_budget_spills_and_gives_the_same_result(tree, order):
    rng = np.random.default_rng(4)
    H, W, p = 70, 90, 12
    heads = {"a": HeadSpec(3), "b": HeadSpec(1, np.uint8)}
    boxes = grid_boxes((H, W), (p, p), (5, 7), (-3, -4))
    if order == "any":
        boxes = boxes[rng.permutation(len(boxes))]
    values = make_values(rng, heads, len(boxes), p, p)
    results = {}
    tile_bytes = 16 * 16 * 4 * 5  # weight + 3 + 1 channels, float32
    small = 6 * tile_bytes
    for budget in (None, small):  # room for six 16x16 tiles of 48
        with tree.node(f"spill-{order}-{budget}") as node:
            canvas = Canvas(node, (H, W), heads, order=order, tile=16, memory_budget=budget)
            for i in range(0, len(boxes), 11):
                canvas.add({k: v[i : i + 11] for k, v in values.items()}, boxes[i : i + 11])
                assert canvas.resident_bytes <= max(canvas.memory_budget, 4 * tile_bytes)
            stats = canvas.stats
            canvas.finalize()
            results[budget] = {n: read_head(node, n, s.channels) for n, s in heads.items()}
            assert not list_parts(node.location)
        if budget is not None:
            assert stats["spill_events"] > 10 and stats["spilled_bytes"] > 0
        else:
            assert stats["spill_events"] == 0
    expected = dense_reference((H, W), heads, [(values, boxes)])
    for name, spec in heads.items():
        assert_matches(results[None][name], expected[name], spec.dtype)
        spilled, kept = results[small][name], results[None][name]
        if spec.dtype.kind == "f":  # only the float32 summation order differs
            np.testing.assert_allclose(spilled, kept, rtol=1e-5, atol=1e-6)
        else:
            assert np.abs(spilled.astype(int) - kept.astype(int)).max() <= 1


@pytest.mark.parametrize("order", ["any", "row-major"])
def test_lazy_view_before_finalize_matches_reference(tree, order):
    rng = np.random.default_rng(6)
    H, W, p = 60, 75, 14
    heads = {"a": HeadSpec(2), "m": HeadSpec(1, np.uint8)}
    boxes = grid_boxes((H, W), (p, p), (6, 9), (-5, 0))
    if order == "any":
        boxes = boxes[rng.permutation(len(boxes))]
    values = make_values(rng, heads, len(boxes), p, p)
    half = len(boxes) // 2
    with tree.node(f"view-{order}") as node:
        canvas = Canvas(node, (H, W), heads, order=order, tile=16, memory_budget=40_000)
        sent = []
        for i in range(0, half, 9):
            batch = (
                {k: v[i : min(i + 9, half)] for k, v in values.items()},
                boxes[i : min(i + 9, half)],
            )
            canvas.add(*batch)
            sent.append(batch)
        canvas.checkpoint()
        assert is_canvas(node.location)
        views = open_canvas(node.location)
        expected = dense_reference((H, W), heads, sent)
        assert views["a"].shape == (2, H, W) and views["m"].shape == (H, W)
        assert views["m"].dtype == np.uint8
        assert_matches(views["a"].compute(), expected["a"], np.float32)
        assert_matches(views["m"].compute()[np.newaxis], expected["m"], np.uint8)
        # a region across tiles, and the rest of the run afterwards
        assert_matches(views["a"][1, 10:50, 5:70].compute(), expected["a"][1, 10:50, 5:70], "f4")
        for i in range(half, len(boxes), 9):
            canvas.add({k: v[i : i + 9] for k, v in values.items()}, boxes[i : i + 9])
        canvas.checkpoint()
        unread = open_canvas(node.location)  # made while merging, first read when finished
        canvas.finalize()
        final = open_canvas(node.location)
        np.testing.assert_array_equal(unread["a"].compute(), final["a"].compute())
        np.testing.assert_array_equal(unread["m"].compute(), final["m"].compute())
        expected = dense_reference((H, W), heads, [(values, boxes)])
        assert_matches(final["a"].compute(), expected["a"], np.float32)
        assert canvas_state(node.location).finalized


def test_view_of_a_node_without_canvas(tree):
    with tree.node("empty") as node:
        node.save_json("x", {"a": 1})
    assert not is_canvas(node.location)
    with pytest.raises(Exception, match="no canvas"):
        open_canvas(node.location)


# -- output ---------------------------------------------------------------------------------
def test_output_is_ome_zarr_with_pyramid(tree):
    rng = np.random.default_rng(8)
    H, W, p = 300, 271, 40
    heads = {"prob": HeadSpec(3), "mask": HeadSpec(1, np.uint8)}
    boxes = grid_boxes((H, W), (p, p), (30, 30), (0, 0))
    values = make_values(rng, heads, len(boxes), p, p)
    with tree.node("ome") as node:
        canvas = Canvas(node, (H, W), heads, tile=64, channel_names={"prob": ["x", "y", "z"]})
        canvas.add(values, boxes)
        infos = canvas.finalize()
    assert node.committed
    assert node.load_json(CANVAS_JSON)["images"] == {
        "prob": "prob.ome.zarr",
        "mask": "mask.ome.zarr",
    }
    items = node.manifest.items
    assert items["prob.ome.zarr"]["kind"] == "image" and items["mask.ome.zarr"]["kind"] == "image"
    info = read_image(node.item("prob.ome.zarr"))
    assert info.axes == ("c", "y", "x") and info.shape == (3, H, W)
    assert info.levels == [(3, 300, 271), (3, 150, 136)]
    assert info.channel_names == ("x", "y", "z")
    assert infos["mask"].axes == ("y", "x") and infos["mask"].dtype == "uint8"
    levels = open_image(node.item("prob.ome.zarr"))
    level0 = levels[0].compute()
    lo, hi = np.nanmin(level0, axis=(1, 2)), np.nanmax(level0, axis=(1, 2))
    np.testing.assert_allclose(np.array(info.contrast_limits), np.stack([lo, hi], 1), rtol=1e-6)
    # level 1 is the 2x2 mean of level 0 (edge replicated at odd sizes)
    pad = np.pad(level0.astype(np.float64), ((0, 0), (0, H % 2), (0, W % 2)), mode="edge")
    mean = (pad[:, ::2, ::2] + pad[:, 1::2, ::2] + pad[:, ::2, 1::2] + pad[:, 1::2, 1::2]) / 4
    np.testing.assert_allclose(levels[1].compute(), mean, rtol=1e-6, atol=1e-6)
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    reader = Reader(parse_url(str(node.item("prob.ome.zarr").path)))
    image = next(iter(reader()))
    assert len(image.data) == 2 and tuple(image.data[0].shape) == (3, H, W)


@pytest.mark.parametrize(
    ("shape", "dtype", "fill"), [((3, 70, 45), "float32", 0.0), ((37, 70), "uint16", 3)]
)
def test_incremental_pyramid_equals_rebuilt_pyramid(tmp_path, shape, dtype, fill):
    """Levels built while level 0 streams in equal levels rebuilt from level 0, bit for bit."""
    rng = np.random.default_rng(0)
    data = (rng.random(shape) * 1000).astype(dtype)
    streamed = ImageWriter.create(
        tmp_path / "a.ome.zarr", shape, dtype, chunk=8, min_size=4, fill_value=fill
    )
    rebuilt = ImageWriter.create(
        tmp_path / "b.ome.zarr", shape, dtype, chunk=8, min_size=4, fill_value=fill
    )
    assembler = PyramidAssembler(streamed)
    grid = streamed.grid(0)
    indices = list(np.ndindex(*grid))
    rng.shuffle(indices)
    for index in indices:
        h, w = streamed.chunk_extent(0, index)
        ty, tx = index[-2:]
        block = data[(*index[:-2], slice(ty * 8, ty * 8 + h), slice(tx * 8, tx * 8 + w))]
        if (ty + tx) % 5 == 0:  # left at the fill value
            data[(*index[:-2], slice(ty * 8, ty * 8 + h), slice(tx * 8, tx * 8 + w))] = fill
            assembler.add(0, index, None)
            continue
        streamed.write_chunk(0, index, block)
        rebuilt.write_chunk(0, index, block)
        assembler.add(0, index, block)
    assert assembler.complete()
    rebuilt.build_levels(workers=2)
    streamed.finish(low=0, high=1) if len(shape) == 2 else streamed.finish(
        low=[0] * 3, high=[1] * 3
    )
    info = build_pyramid(rebuilt.location, min_size=4)
    a, b = open_image(streamed.location), open_image(rebuilt.location)
    assert len(a) == len(b) == len(info.levels) > 2
    np.testing.assert_array_equal(a[0].compute(), data)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.compute(), y.compute())


def test_normalise_block_casts_and_fills():
    sums = np.array([[[3.0, 1.0], [0.0, 0.0]]], np.float32)  # (1, 2, 2)
    weight = np.array([[2.0, 0.0]], np.float32)
    out = normalise_block(sums, weight, np.uint8, 9)
    assert out.shape == (2, 1, 2) and out.dtype == np.uint8
    assert out[:, 0, 0].tolist() == [2, 0] and out[:, 0, 1].tolist() == [9, 9]
    f = normalise_block(sums, weight, np.float32, math.nan)
    assert f[0, 0, 0] == 1.5 and np.isnan(f[:, 0, 1]).all()


def test_resume_refuses_another_spec(tree):
    with tree.node("spec", params={"v": 1}) as node:
        canvas = Canvas(node, (20, 20), {"a": 1}, tile=8)
        canvas.add(np.ones((1, 4, 4, 1), np.float32), [[0, 0, 4, 4]])
        canvas.checkpoint()
        canvas.close()
        with pytest.raises(IncompatibleError, match="tile"):
            Canvas(node, (20, 20), {"a": 1}, tile=16, resume=True)
        resumed = Canvas(node, (20, 20), {"a": 1}, tile=8, resume=True)
        assert resumed.batches_done == 1
        resumed.finalize()
    assert (read_head(node, "a", 1)[0, :4, :4] == 1).all()


# -- the spec, the worker canvas and spill decoding -------------------------------------------
def test_canvas_spec_validates_without_a_canvas_and_round_trips(tree):
    with pytest.raises(InvalidDataError, match="tile"):
        CanvasSpec((10, 10), {"a": 1}, tile=9)
    with pytest.raises(KeyLookupError):
        CanvasSpec((10, 10), {"a": 1}, channel_names={"b": ["x"]})
    with pytest.raises(ShapeMismatchError):
        CanvasSpec((10, 10), {"a": 2}, channel_names={"a": ["x"]})
    weights = weight_window("gaussian", (6, 6)) + 0.5
    spec = CanvasSpec((30, 20), {"a": (2, "uint8"), "b": 1}, weights=weights, tile=8)
    assert spec.heads == {"a": HeadSpec(2, np.uint8), "b": HeadSpec(1)}
    assert spec.grid == (4, 3) and spec.tile_bytes == 8 * 8 * 4 + 8 * 8 * 3 * 4
    json_form = spec.to_json()
    assert json_form["weights"].startswith("array:6x6:") and json_form["order"] == "row-major"
    again = CanvasSpec.from_json(json_form, weights=weights)
    assert again.to_json() == json_form
    with tree.node("spec") as node:  # a canvas stores the same JSON form
        canvas = Canvas(node, (30, 20), {"a": (2, "uint8"), "b": 1}, **spec.canvas_kwargs())
        canvas.add(
            {"a": np.full((1, 6, 6, 2), 3, np.uint8), "b": np.ones((1, 6, 6), np.float32)},
            [[0, 0, 6, 6]],
        )
        canvas.finalize()
        stored = json.loads((Path(node.location.path) / CANVAS_JSON).read_text())
        assert {k: stored[k] for k in json_form} == json_form


def test_worker_canvas_spill_parts_decode_to_the_merged_values(tree):
    spec = CanvasSpec((40, 40), {"p": 2}, tile=16)
    patch = np.stack([np.full((10, 10), 2.0), np.full((10, 10), 4.0)], axis=-1)[np.newaxis]
    node = tree.node("worker").open()
    worker = WorkerCanvas(node.url, spec, part_prefix="w0", memory_budget=10**6)
    with pytest.raises(InvalidDataError, match="worker canvas"):
        worker.finalize()
    worker.add(patch.astype(np.float32), [[5, 5, 15, 15]])
    worker.add(2 * patch.astype(np.float32), [[10, 10, 20, 20]])
    names = worker.flush_parts()
    assert worker.finalized and names == ["w0-00000000"]
    (part,) = [p for p in list_parts(node.location) if p.name in names]
    contents = read_spill_part(part)
    assert (contents.top, contents.left) == (5, 5)
    assert contents.weight.shape == (15, 15) and contents.sums["p"].shape == (2, 15, 15)
    with np.errstate(invalid="ignore"):
        mean = contents.sums["p"] / contents.weight
    np.testing.assert_allclose(mean[:, 0, 0], [2, 4])  # first patch only
    np.testing.assert_allclose(mean[:, 7, 7], [3, 6])  # both patches overlap here
    np.testing.assert_allclose(mean[:, 14, 14], [4, 8])  # second patch only
    assert np.isnan(contents.weight[0, 14])  # covered by neither patch
    node.abandon()
