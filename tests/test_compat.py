"""The seed-compatible helpers, driven the way a whole-slide inference loop drives them."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr

from cachetree.compat import (
    merge_multitask_horizontal,
    merge_multitask_vertical_chunkwise,
    prepare_multitask_full_batch,
    save_multitask_to_cache,
)
from cachetree.errors import KeyLookupError, ShapeMismatchError

CHANNELS = (3, 1)  # two heads


def locations(shape, patch, stride):
    """Output boxes of a row-major patch grid; the last ones overhang the canvas."""
    H, W = shape
    return np.array(
        [[x, y, x + patch, y + patch] for y in range(0, H, stride) for x in range(0, W, stride)],
        np.int64,
    )


def predictions(index: int, patch: int) -> tuple[np.ndarray, ...]:
    """What the model says at location ``index`` (deterministic, one array per head)."""
    rng = np.random.default_rng(index)
    return tuple(rng.random((patch, patch, c), dtype=np.float32) for c in CHANNELS)


def dense_reference(shape, locs, sent, patch):
    """Seed semantics: locations never sent count as patches of zeros."""
    H, W = shape
    sums = [np.zeros((H + patch, W + patch, c)) for c in CHANNELS]
    count = np.zeros((H + patch, W + patch, 1))
    for i, (x0, y0, x1, y1) in enumerate(locs.tolist()):
        if sent[i]:
            for s, p in zip(sums, predictions(i, patch), strict=True):
                s[y0:y1, x0:x1] += p
        count[y0:y1, x0:x1] += 1
    return [s[:H, :W] / count[:H, :W] for s in sums]


def inference_loop(tmp_path, shape, patch, stride, batch_size, keep, threshold, spill_every):
    """The seed's loop: align batches, merge rows on row changes, spill, merge vertically."""
    locs = locations(shape, patch, stride)
    rng = np.random.default_rng(0)
    sent = rng.random(len(locs)) < keep  # masked-out locations are never sent
    sent[0] = True
    order = np.flatnonzero(sent)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    heads = len(CHANNELS)
    canvas, count = [None] * heads, [None] * heads
    canvas_np = [None] * heads
    canvas_zarr, count_zarr = [None] * heads, [None] * heads
    full_output_locs, output_locs, output_locs_y_ = locs, None, None
    on_disk = 0
    merges = 0
    for b, index in enumerate(batches):
        batch_output = tuple(
            np.stack([predictions(i, patch)[h] for i in index]) for h in range(heads)
        )
        full_batch, full_output_locs, output_locs = prepare_multitask_full_batch(
            batch_output,
            locs[index],
            full_output_locs,
            output_locs,
            canvas_np=canvas_np,
            save_path=tmp_path / "fullbatch",
            memory_threshold=threshold(b),
            is_last=b == len(batches) - 1,
        )
        on_disk += isinstance(full_batch[0], zarr.Array)
        for h in range(heads):
            new = np.asarray(full_batch[h])
            canvas_np[h] = new if canvas_np[h] is None else np.concatenate([canvas_np[h], new])
        change = np.where(np.diff(output_locs[:, 1]) != 0)[0] + 1
        if change.size:
            canvas, count, canvas_np, output_locs, output_locs_y_ = merge_multitask_horizontal(
                canvas, count, output_locs_y_, canvas_np, output_locs, change
            )
            merges += 1
            if merges % spill_every == 0:  # the memory check said "spill"
                canvas_zarr, count_zarr = save_multitask_to_cache(
                    canvas, count, canvas_zarr, count_zarr, tmp_path / "cache.zarr", verbose=False
                )
                canvas, count = [None] * heads, [None] * heads
    assert len(full_output_locs) == 0 and len(output_locs) == len(canvas_np[0])
    canvas, count, _, _, output_locs_y_ = merge_multitask_horizontal(
        canvas, count, output_locs_y_, canvas_np, output_locs, [len(output_locs)]
    )
    group = None
    if canvas_zarr[0] is not None:
        canvas_zarr, count_zarr = save_multitask_to_cache(
            canvas, count, canvas_zarr, count_zarr, tmp_path / "cache.zarr", verbose=False
        )
        canvas = [da.from_zarr(z) for z in canvas_zarr]
        count = [da.from_zarr(z) for z in count_zarr]
        group = zarr.open_group(tmp_path / "cache.zarr", mode="a")
    result = merge_multitask_vertical_chunkwise(
        canvas, count, output_locs_y_, group, tmp_path, 50, shape=shape, tile=64
    )
    return result, dense_reference(shape, locs, sent, patch), on_disk, group


@pytest.mark.parametrize(
    ("shape", "patch", "stride", "batch_size", "spill_every"),
    [
        ((150, 170), 32, 10, 16, 2),  # a row overlaps the next three rows
        ((97, 130), 24, 24, 7, 1),  # no overlap, odd sizes
        ((120, 90), 30, 17, 13, 1000),  # never spills; batches span several rows
    ],
)
def test_seed_style_inference_loop_matches_dense_reference(
    tmp_path, shape, patch, stride, batch_size, spill_every
):
    result, expected, on_disk, group = inference_loop(
        tmp_path,
        shape,
        patch,
        stride,
        batch_size,
        keep=0.8,
        threshold=lambda b: 0 if b % 3 == 1 else 100,  # every third batch: "memory short"
        spill_every=spill_every,
    )
    assert on_disk > 0  # the aligned batch was kept on disk when memory was short
    assert len(result) == 2
    for got, want in zip(result, expected, strict=True):
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got.compute(), want, rtol=1e-5, atol=1e-6)
    if group is not None:  # the temporary row datasets were cleared
        assert "canvas" not in group and "count" not in group


def test_prepare_aligns_pads_and_consumes_from_the_front():
    locs = np.array([[x, 0, x + 4, 4] for x in range(0, 40, 4)])
    out = (np.ones((3, 4, 4, 2), np.float32), np.full((3, 4, 4, 1), 7, np.uint8))
    batch_locs = locs[[1, 4, 2]]  # gaps at 0 and 3; order within the batch is free
    full, rest, done = prepare_multitask_full_batch(out, batch_locs, locs, None, is_last=False)
    assert [f.shape for f in full] == [(5, 4, 4, 2), (5, 4, 4, 1)]
    assert full[1].dtype == np.uint8
    assert full[0][[1, 2, 4]].min() == 1 and full[0][[0, 3]].max() == 0
    np.testing.assert_array_equal(done, locs[:5])
    np.testing.assert_array_equal(rest, locs[5:])
    assert np.shares_memory(rest, locs)  # a view: nothing copied
    full, rest, done = prepare_multitask_full_batch(
        tuple(o[:1] for o in out), locs[[6]], rest, done, is_last=True
    )
    assert full[0].shape == (5, 4, 4, 2) and full[1].dtype == np.uint8  # padded to the end
    assert full[0][1].min() == 1 and full[0][[0, 2, 3, 4]].max() == 0
    assert len(rest) == 0
    np.testing.assert_array_equal(done, locs)


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
    prepare_multitask_full_batch(out, locs[[20, 25]], rest, done, is_last=False)
    assert Spy.furthest < 11 + 200


def test_prepare_rejects_unknown_locations_and_mismatches():
    locs = np.array([[x, 0, x + 4, 4] for x in range(0, 40, 4)])
    out = (np.ones((2, 4, 4, 1), np.float32),)
    with pytest.raises(KeyLookupError, match="not among"):
        prepare_multitask_full_batch(
            out, np.array([[0, 0, 4, 4], [1, 1, 5, 5]]), locs, None, is_last=False
        )
    with pytest.raises(ShapeMismatchError):
        prepare_multitask_full_batch(out, locs[:3], locs, None, is_last=False)


def test_prepare_keeps_the_batch_on_disk_when_memory_is_short(tmp_path):
    locs = np.array([[x, 0, x + 4, 4] for x in range(0, 40, 4)])
    out = (np.ones((2, 4, 4, 2), np.float32),)
    full, _, _ = prepare_multitask_full_batch(
        out,
        locs[[0, 2]],
        locs,
        None,
        save_path=tmp_path / "fb",
        memory_threshold=0,
        is_last=True,
    )
    assert isinstance(full[0], zarr.Array) and full[0].shape == (10, 4, 4, 2)
    assert np.asarray(full[0][[0, 2]]).min() == 1 and np.asarray(full[0][1]).max() == 0
    assert str(tmp_path / "fb") in str(full[0].store)


def test_save_to_cache_creates_then_appends(tmp_path):
    rows = da.from_array(
        np.arange(2 * 4 * 6 * 2, dtype=np.float32).reshape(2, 4, 6, 2), chunks=(1, 4, 6, 2)
    )
    hits = da.ones((2, 4, 6, 1), dtype=np.uint8, chunks=(1, 4, 6, 1))
    cz, kz = save_multitask_to_cache(
        [rows], [hits], [None], [None], tmp_path / "c.zarr", verbose=False
    )
    assert cz[0].shape == (2, 4, 6, 2) and kz[0].dtype == np.float32  # counts never wrap
    assert cz[0].chunks[0] == 1
    cz2, kz2 = save_multitask_to_cache(
        [rows + 1], [hits], cz, kz, tmp_path / "c.zarr", verbose=False
    )
    assert cz2[0].shape == (4, 4, 6, 2) and kz2[0].shape == (4, 4, 6, 1)
    np.testing.assert_array_equal(cz2[0][2:], rows.compute() + 1)
    group = zarr.open_group(tmp_path / "c.zarr", mode="r")
    assert set(group["canvas"]) == {"0"} and set(group["count"]) == {"0"}


def test_vertical_merge_handles_rows_overlapping_many_rows(tmp_path):
    """Rows every 5 px of 20 px height: each row overlaps the next three."""
    rng = np.random.default_rng(2)
    n, h, w = 9, 20, 30
    sums = rng.random((n, h, w, 2)).astype(np.float32)
    counts = rng.integers(1, 4, (n, h, w, 1)).astype(np.float32)
    spans = np.array([[5 * i, 5 * i + h] for i in range(n)])
    repeated = np.repeat(spans, 3, axis=0)  # the seed appended one span per patch
    (result,) = merge_multitask_vertical_chunkwise(
        [da.from_array(sums, chunks=(4, h, w, 2))], [counts], repeated, None, tmp_path
    )
    total = np.zeros((5 * (n - 1) + h, w, 2))
    weight = np.zeros((5 * (n - 1) + h, w, 1))
    for i in range(n):
        total[5 * i : 5 * i + h] += sums[i]
        weight[5 * i : 5 * i + h] += counts[i]
    np.testing.assert_allclose(result.compute(), total / weight, rtol=1e-5)
    with pytest.raises(ShapeMismatchError):
        merge_multitask_vertical_chunkwise([sums], [counts], spans[:4], None, tmp_path)
