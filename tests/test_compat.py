"""cachetree.compat against TIAToolbox 2.1.3: same signatures, same loop, same results.

TIAToolbox 2.1.3 is installed by scripts/bootstrap.sh; tests/tiatoolbox_loop.py imports its
engine module (stubbing only unrelated heavy imports) and drives its own
``MultiTaskSegmentor.infer_wsi``.
"""

from __future__ import annotations

import inspect

import dask.array as da
import numpy as np
import pytest
import zarr

import cachetree.compat as compat
from cachetree.compat import (
    merge_multitask_horizontal,
    merge_multitask_vertical_chunkwise,
    prepare_multitask_full_batch,
    save_multitask_to_cache,
)
from cachetree.errors import KeyLookupError, ShapeMismatchError
from tests import tiatoolbox_loop as tl

# TIAToolbox's engine turns a batch's torch tensor of coordinates into numpy the old way.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CHANNELS = (3, 1, 2)  # three heads
PATCH = 256


@pytest.fixture(scope="module")
def tia():
    """TIAToolbox 2.1.3's multi_task_segmentor module (its real functions)."""
    return tl.engine_module()


def predict(index) -> tuple[np.ndarray, ...]:
    """What the fake model says at the grid locations ``index`` (deterministic per location)."""
    rngs = [[np.random.default_rng([int(i), c]) for i in index] for c in CHANNELS]
    return tuple(
        np.stack([rng.random((PATCH, PATCH, c), np.float32) for rng in heads])
        for heads, c in zip(rngs, CHANNELS, strict=True)
    )


def test_signatures_are_tiatoolbox_213s(tia):
    for name in tl.FUNCTIONS:
        ours = inspect.signature(getattr(compat, name))
        theirs = inspect.signature(getattr(tia, name))
        assert ours == theirs, (name, str(ours), str(theirs))
        assert [p.kind for p in ours.parameters.values()] == [
            p.kind for p in theirs.parameters.values()
        ]


def test_stubs_stay_inside_tiatoolbox(tia):
    """The stand-ins for unrelated heavy imports are gone from sys.modules after the import,
    and no module but TIAToolbox's refers to one."""
    import sys

    assert not [n for n, m in sys.modules.items() if type(m) is tl._Stub]
    holders = {  # type(), not isinstance(): that would load TIAToolbox's lazy modules
        name
        for name, module in list(sys.modules.items())
        if module is not None
        for value in list(vars(module).values())
        if type(value) is tl._Stub
    }
    assert holders and all(name.startswith("tiatoolbox.") for name in holders)


# ------------------------------------------------------------------ TIAToolbox's own loop


def tissue(locs: np.ndarray, shape) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Locations sent on a masked slide (an ellipse of tissue with holes) and its bounds."""
    height, width = shape
    cx, cy = (locs[:, 0] + locs[:, 2]) / 2, (locs[:, 1] + locs[:, 3]) / 2
    inside = ((cx - width / 2) / (0.45 * width)) ** 2 + ((cy - height / 2) / (0.5 * height)) ** 2
    sent = (inside < 1) & (np.random.default_rng(3).random(len(locs)) < 0.8)
    boxes = locs[sent]
    bounds = (boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max())
    return sent, tuple(int(b) for b in bounds)


def dense_reference(locs, sent, shape, bounds):
    """Float64 mean of the sent patches per pixel (0 where none), in TIAToolbox's frame.

    With mask bounds TIAToolbox keeps the grid locations touching them, shifts the origin to
    their top-left corner and crops the output to them (and to the slide).
    """
    height, width = shape
    sums = [np.zeros((height + PATCH, width + PATCH, c)) for c in CHANNELS]
    hits = np.zeros((height + PATCH, width + PATCH, 1))
    for i in np.flatnonzero(sent):
        x0, y0, x1, y1 = locs[i]
        for total, values in zip(sums, predict([i]), strict=True):
            total[y0:y1, x0:x1] += values[0]
        hits[y0:y1, x0:x1] += 1
    mx0, my0, mx1, my1 = bounds if bounds is not None else (0, 0, width, height)
    near = ~((locs[:, 2] < mx0) | (locs[:, 0] > mx1) | (locs[:, 3] < my0) | (locs[:, 1] > my1))
    x0, y0 = locs[near, 0].min(), locs[near, 1].min()
    x1, y1 = min(locs[near, 2].max(), width), min(locs[near, 3].max(), height)
    mean = [np.divide(s, hits, out=np.zeros_like(s), where=hits > 0) for s in sums]
    return [m[y0:y1, x0:x1] for m in mean]


@pytest.mark.parametrize("threshold", [80, 0])
@pytest.mark.parametrize("stride", [256, 192, 96])
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_tiatoolbox_infer_wsi_runs_unchanged_with_cachetree_functions(
    tia, tmp_path, masked, stride, threshold
):
    shape = (560, 720)
    locs = tl.grid(shape, PATCH, stride)
    sent, bounds = tissue(locs, shape) if masked else (np.ones(len(locs), bool), None)
    assert not masked or 0 < sent.sum() < len(locs)

    def run(functions, name):
        save_path = tmp_path / name / "slide.zarr"
        out = tl.run_infer_wsi(
            predict,
            locs,
            sent,
            shape,
            save_path,
            batch_size=7,
            memory_threshold=threshold,
            functions=functions,
            mask_bounds=bounds,
        )
        return out["probabilities"], save_path

    ours, save_path = run(compat, "cachetree")
    assert isinstance(ours, list) and len(ours) == len(CHANNELS)
    assert all(isinstance(p, da.Array) and p.dtype == np.float32 for p in ours)
    got = [np.asarray(p.compute()) for p in ours]
    expected = dense_reference(locs, sent, shape, bounds)
    for g, e, c in zip(got, expected, CHANNELS, strict=True):
        assert g.shape == e.shape and g.shape[2] == c
        np.testing.assert_allclose(g, e, rtol=2e-6, atol=1e-6)
    # Nothing of ours is left under the caller's save_path but a spilled result.
    assert not save_path.with_name("full_batch_tmp").exists()
    if threshold == 80:
        assert not save_path.exists()
    else:
        assert list(zarr.open_group(save_path, mode="r").keys()) == ["probabilities"]

    if stride == 96:  # TIAToolbox only adds a row into the one above it
        with pytest.raises(ValueError, match="could not be broadcast"):
            run(None, "tiatoolbox")
        return
    theirs, _ = run(None, "tiatoolbox")
    for g, t in zip(got, theirs, strict=True):
        t = np.asarray(t.compute())
        assert g.shape == t.shape and g.dtype == t.dtype
        assert g.tobytes() == t.tobytes()  # bit for bit


# ------------------------------------------------------------------ function by function


def batches_of(locs, sent, size):
    order = np.flatnonzero(sent)
    return [order[i : i + size] for i in range(0, len(order), size)]


def test_prepare_gives_tiatoolbox_results(tia, tmp_path):
    locs = tl.grid((64, 96), 16, 16)  # 4 rows of 6
    sent = np.ones(len(locs), bool)
    sent[[0, 3, 4, 9, 21, 22, 23]] = False  # gaps, including the first slot and the tail
    outs = {"ours": prepare_multitask_full_batch, "tia": tia.prepare_multitask_full_batch}
    state = {k: (locs, None, [None, None]) for k in outs}
    batches = batches_of(locs, sent, 5)
    for b, index in enumerate(batches):
        head0 = np.random.default_rng(b).random((len(index), 16, 16, 2), np.float32)
        head1 = np.full((len(index), 16, 16, 1), 7, np.uint8)
        result = {}
        for k, fn in outs.items():
            full, output_locs, canvas_np = state[k]
            result[k] = fn(
                (head0, head1),
                locs[index],
                full,
                output_locs,
                canvas_np=canvas_np,
                save_path=tmp_path / k,
                memory_threshold=80,
                is_last=b == len(batches) - 1,
            )
            state[k] = (result[k][1], None, canvas_np)
        (ours, rest, done), (theirs, their_rest, their_done) = result["ours"], result["tia"]
        assert isinstance(ours, list) and len(ours) == 2
        np.testing.assert_array_equal(rest, their_rest)
        np.testing.assert_array_equal(done, their_done)
        assert isinstance(done, np.ndarray) and done.dtype == their_done.dtype
        for o, t in zip(ours, theirs, strict=True):
            assert type(o) is type(t) is np.ndarray and o.dtype == t.dtype
            assert o.shape[0] == len(done)  # one row per consumed location
            np.testing.assert_array_equal(o, t[: len(o)])
            assert not t[len(o) :].any()  # TIAToolbox: extra zero rows on the last batch
            if b < len(batches) - 1:
                assert o.shape == t.shape
    assert len(rest) == 0 and len(their_rest) == 0


def test_prepare_spills_by_tiatoolbox_memory_rule(tmp_path, monkeypatch):
    """In RAM while twice (batch + pending) fits in threshold% of the available memory."""
    import cachetree.compat._batch as batch_module

    class Memory:
        available = 10_000

    monkeypatch.setattr(batch_module.psutil, "virtual_memory", lambda: Memory)
    locs = tl.grid((4, 40), 4, 4)
    out = (np.ones((2, 4, 4, 2), np.float32),)  # 3 locations consumed: 384 bytes
    args = (out, locs[[0, 2]], locs, None)
    small = [np.zeros(1000, np.uint8)]
    full, _, _ = prepare_multitask_full_batch(*args, small, tmp_path, 28, is_last=False)
    assert isinstance(full[0], np.ndarray)  # 2 * (384 + 1000) = 2768 < 2800
    full, _, _ = prepare_multitask_full_batch(*args, small, tmp_path, 27, is_last=False)
    assert isinstance(full[0], zarr.Array) and full[0].shape == (3, 4, 4, 2)
    assert np.asarray(full[0][[0, 2]]).min() == 1 and np.asarray(full[0][1]).max() == 0
    assert full[0].store.root.parent == tmp_path
    assert full[0].store.root.name.startswith("full_batch_tmp_")


def test_prepare_looks_only_at_the_front_of_the_locations():
    """Per-batch work does not grow with the number of locations still to come."""

    class Spy(np.ndarray):
        """Records how far into the array rows were actually read."""

        furthest = 0

        def __getitem__(self, key):
            result = super().__getitem__(key)
            if isinstance(key, slice) and isinstance(result, Spy):
                result._offset = self._offset + range(len(self))[key].start
            elif isinstance(key, int | np.integer):
                Spy.furthest = max(Spy.furthest, self._offset + int(key) + 1)
            else:
                Spy.furthest = 10**12  # fancy indexing: could read anything
            return result

        def __array_finalize__(self, obj):
            self._offset = getattr(obj, "_offset", 0)

        def tolist(self):
            Spy.furthest = max(Spy.furthest, self._offset + len(self))
            return np.asarray(self).tolist()

        def __array__(self, dtype=None, copy=None):
            return self.view(np.ndarray)

    n = 1_000_000
    locs = np.zeros((n, 4), np.int64)
    locs[:, 0] = np.arange(n)
    locs[:, 2] = locs[:, 0] + 1
    locs[:, 3] = 1
    spy = locs.view(Spy)
    out = (np.ones((2, 1, 1, 1), np.float32),)
    full, rest, done = prepare_multitask_full_batch(out, locs[[3, 10]], spy, None, is_last=False)
    assert full[0].shape[0] == 11 and len(rest) == n - 11
    assert Spy.furthest < 200  # a million locations, a couple of hundred looked at
    Spy.furthest = 0
    prepare_multitask_full_batch(out, locs[[20, 25]], rest.view(Spy), done, is_last=False)
    assert Spy.furthest < 11 + 200


def test_prepare_rejects_unknown_locations_and_mismatches():
    locs = tl.grid((4, 40), 4, 4)
    out = (np.ones((2, 4, 4, 1), np.float32),)
    with pytest.raises(KeyError, match="not among") as caught:
        prepare_multitask_full_batch(
            out, np.array([[0, 0, 4, 4], [1, 1, 5, 5]]), locs, None, is_last=False
        )
    assert isinstance(caught.value, KeyLookupError)
    with pytest.raises(ShapeMismatchError):
        prepare_multitask_full_batch(out, locs[:3], locs, None, is_last=False)


def row_inputs(locs, sent, channels=(2, 1)):
    """Aligned patches and locations for one call of the horizontal merge."""
    rng = np.random.default_rng(5)
    canvas_np = [rng.random((len(locs), 8, 8, c), np.float32) for c in channels]
    for patches in canvas_np:
        patches[~sent] = 0
    return canvas_np


def test_horizontal_and_spill_match_tiatoolbox(tia, tmp_path):
    locs = tl.grid((16, 30), 8, 6)  # 3 rows of 5, the last patch of a row overhangs
    sent = np.ones(len(locs), bool)
    sent[[1, 7]] = False
    change = np.where(np.diff(locs[:, 1]) != 0)[0] + 1
    results = {}
    for name, module in (("ours", compat), ("tia", tia)):
        canvas, count, canvas_np = [None, None], [None, None], row_inputs(locs, sent)
        canvas_np[0] = canvas_np[0][:-2]  # pending patches may be fewer than the locations
        canvas_np[1] = canvas_np[1][:-2]
        lists = (canvas, count, canvas_np)
        out = module.merge_multitask_horizontal(
            canvas, count, None, canvas_np, locs[:-2].copy(), change, canvas_width=30
        )
        assert all(o is lst for o, lst in zip(out[:3], lists, strict=False))  # in place
        canvas_zarr, count_zarr = [None, None], [None, None]
        spilled = module.save_multitask_to_cache(
            out[0], out[1], canvas_zarr, count_zarr, tmp_path / name / "c.zarr", verbose=False
        )
        assert spilled[0] is canvas_zarr and spilled[1] is count_zarr  # in place
        results[name] = (out, spilled)
    (ours, ours_z), (theirs, theirs_z) = results["ours"], results["tia"]
    for o, t in zip(ours[0] + ours[1], theirs[0] + theirs[1], strict=True):
        assert isinstance(o, da.Array) and o.shape == t.shape and o.dtype == t.dtype
        assert o.chunks == t.chunks  # one chunk per row
        assert o.compute().tobytes() == t.compute().tobytes()
    for o, t in zip(ours[2], theirs[2], strict=True):  # what is left to merge
        np.testing.assert_array_equal(o, t)
    np.testing.assert_array_equal(ours[3], theirs[3])
    np.testing.assert_array_equal(ours[4], theirs[4])  # [y0, y1] of every merged patch
    assert ours[4].shape == theirs[4].shape == (10, 2)
    for o, t in zip(ours_z[0] + ours_z[1], theirs_z[0] + theirs_z[1], strict=True):
        assert isinstance(o, zarr.Array) and o.shape == t.shape and o.dtype == t.dtype
        assert o.chunks == t.chunks
        np.testing.assert_array_equal(o[:], t[:])


def test_vertical_merges_tiatoolbox_row_blocks_bit_for_bit(tia, tmp_path):
    """Row blocks made by TIAToolbox, merged by TIAToolbox and by us, from RAM and Zarr."""
    locs = tl.grid((40, 30), 8, 6)
    sent = np.random.default_rng(1).random(len(locs)) < 0.7
    canvas, count, canvas_np = [None, None], [None, None], row_inputs(locs, sent)
    change = np.where(np.diff(locs[:, 1]) != 0)[0] + 1
    canvas, count, canvas_np, rest, spans = tia.merge_multitask_horizontal(
        canvas, count, None, canvas_np, locs.copy(), change, canvas_width=30
    )
    canvas, count, _, _, spans = tia.merge_multitask_horizontal(
        canvas, count, spans, canvas_np, rest, [len(rest)], canvas_width=30
    )
    theirs = tia.merge_multitask_vertical_chunkwise(
        canvas, count, spans, None, tmp_path / "t", 80, (40, 30), verbose=False
    )
    ours = merge_multitask_vertical_chunkwise(
        canvas, count, spans, None, tmp_path / "o", 80, (40, 30), verbose=False
    )
    group = zarr.open_group(tmp_path / "z.zarr", mode="a")
    cz, kz = tia.save_multitask_to_cache(canvas, count, [None] * 2, [None] * 2, group.store.root)
    spilled = merge_multitask_vertical_chunkwise(
        [da.from_zarr(z) for z in cz],
        [da.from_zarr(z) for z in kz],
        spans,
        group,
        tmp_path / "z.zarr",
        0,  # no memory: the result goes to probabilities/<idx> of the group
        (40, 30),
        verbose=False,
    )
    assert not (tmp_path / "o").exists()  # in memory: nothing written
    assert set(group.keys()) == {"probabilities"}  # the spilled rows were deleted
    for o, s, t in zip(ours, spilled, theirs, strict=True):
        assert isinstance(o, da.Array) and o.shape == t.shape and o.dtype == t.dtype
        assert o.compute().tobytes() == t.compute().tobytes()
        assert s.compute().tobytes() == t.compute().tobytes()


def test_vertical_merge_removes_the_spill_group_it_no_longer_needs(tmp_path):
    locs = tl.grid((16, 30), 8, 6)
    canvas, count, canvas_np = [None, None], [None, None], row_inputs(locs, np.ones(15, bool))
    canvas, count, _, _, spans = merge_multitask_horizontal(
        canvas, count, None, canvas_np, locs, [5, 10, 15], canvas_width=30
    )
    save_path = tmp_path / "out" / "slide.zarr"
    cz, kz = save_multitask_to_cache(canvas, count, [None] * 2, [None] * 2, save_path)
    assert set(zarr.open_group(save_path).keys()) == {"canvas", "count"}
    group = zarr.open(cz[0].store.root, mode="a")  # what TIAToolbox's loop passes
    result = merge_multitask_vertical_chunkwise(
        [da.from_zarr(z) for z in cz], [da.from_zarr(z) for z in kz], spans, group, save_path
    )
    assert not save_path.exists()  # created by the spill, empty after the merge: removed
    assert [r.shape for r in result] == [(20, 30, 2), (20, 30, 1)]
    assert result[0].compute().min() > 0  # every pixel covered by a patch


def test_gaps_get_no_weight_and_predicted_zeros_do(tia):
    """One row of three overlapping patches: A, an all-zero prediction, C; then a gap."""
    locs = np.array([[0, 0, 8, 8], [4, 0, 12, 8], [8, 0, 16, 8], [12, 0, 20, 8]])
    a, c = np.full((8, 8, 1), 2.0, np.float32), np.full((8, 8, 1), 4.0, np.float32)
    batch = (np.stack([a, np.zeros_like(a), c]),)

    def merged(module, *, plain=False):
        full, _, output_locs = module.prepare_multitask_full_batch(
            batch, locs[:3], locs, None, [None], is_last=True
        )
        if plain:
            output_locs = np.array(output_locs)  # an array of the caller's own
        canvas, count, _, _, spans = module.merge_multitask_horizontal(
            [None], [None], None, [np.asarray(full[0])], output_locs, [4], canvas_width=20
        )
        (out,) = module.merge_multitask_vertical_chunkwise(
            canvas, count, spans, None, "unused", output_shape=(8, 20), verbose=False
        )
        return out.compute()[0, :, 0]

    ours, theirs = merged(compat), merged(tia)
    # x 4..8: A and the zero prediction; x 8..12: zero prediction and C; x 16..20: the gap
    np.testing.assert_array_equal(ours[[0, 5, 9, 13, 17]], [2, 1, 2, 4, 0])
    np.testing.assert_array_equal(theirs[[0, 5, 9, 13, 17]], [2, 2, 4, 4, 0])
    np.testing.assert_array_equal(merged(compat, plain=True), theirs)  # TIAToolbox's rule


def test_output_locs_y_grows_in_place():
    locs = tl.grid((48, 12), 4, 4)  # 12 rows of 3
    canvas, count = [None], [None]
    canvas_np = [np.ones((len(locs), 4, 4, 1), np.float32)]
    spans, rest, previous = None, locs, []
    for _ in range(12):
        canvas, count, canvas_np, rest, spans = merge_multitask_horizontal(
            canvas, count, spans, canvas_np, rest, [3]
        )
        previous.append(spans)
    assert spans.shape == (36, 2) and type(spans) is np.ndarray
    np.testing.assert_array_equal(spans, locs[:, (1, 3)])
    assert np.shares_memory(previous[-1], previous[-2])  # appended, not copied
    np.testing.assert_array_equal(previous[0], locs[:3, (1, 3)])  # earlier results unchanged


def test_hand_written_loop_with_rows_overlapping_several_rows(tmp_path):
    """A loop of the caller's own: small stride, spills every other row, gaps."""
    shape, patch, stride = (150, 170), 32, 10  # a row overlaps the next three rows
    locs = tl.grid(shape, patch, stride)
    sent = np.random.default_rng(0).random(len(locs)) < 0.8
    rng = np.random.default_rng(1)
    values = rng.random((len(locs), patch, patch, 2), np.float32)
    canvas, count, canvas_np, canvas_zarr, count_zarr = ([None] for _ in range(5))
    full, output_locs, spans = locs, None, None
    batches = batches_of(locs, sent, 16)
    for b, index in enumerate(batches):
        aligned, full, output_locs = prepare_multitask_full_batch(
            (values[index],),
            locs[index],
            full,
            output_locs,
            canvas_np,
            tmp_path / "fb",
            0 if b % 3 == 1 else 80,
            is_last=b == len(batches) - 1,
        )
        new = np.asarray(aligned[0])
        canvas_np[0] = new if canvas_np[0] is None else np.concatenate([canvas_np[0], new])
        change = np.where(np.diff(output_locs[:, 1]) != 0)[0] + 1
        if change.size:
            canvas, count, canvas_np, output_locs, spans = merge_multitask_horizontal(
                canvas, count, spans, canvas_np, output_locs, change, shape[1]
            )
            if b % 2:
                save_multitask_to_cache(canvas, count, canvas_zarr, count_zarr, tmp_path / "c")
                canvas, count = [None], [None]
    canvas, count, _, _, spans = merge_multitask_horizontal(
        canvas, count, spans, canvas_np, output_locs, [len(output_locs)], shape[1]
    )
    save_multitask_to_cache(canvas, count, canvas_zarr, count_zarr, tmp_path / "c")
    (result,) = merge_multitask_vertical_chunkwise(
        [da.from_zarr(canvas_zarr[0])],
        [da.from_zarr(count_zarr[0])],
        spans,
        zarr.open_group(tmp_path / "c"),
        tmp_path / "c",
        output_shape=shape,
        verbose=False,
    )
    total = np.zeros((shape[0] + patch, shape[1] + patch, 2))
    hits = np.zeros((shape[0] + patch, shape[1] + patch, 1))
    for i in np.flatnonzero(sent):
        x0, y0, x1, y1 = locs[i]
        total[y0:y1, x0:x1] += values[i]
        hits[y0:y1, x0:x1] += 1
    expected = np.divide(total, hits, out=np.zeros_like(total), where=hits > 0)
    np.testing.assert_allclose(result.compute(), expected[: shape[0], : shape[1]], rtol=2e-6)
    assert not (tmp_path / "c").exists()  # the spilled rows are gone, and their group
