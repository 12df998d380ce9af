"""One image policy: a whole-image write and a chunk-streamed write give the same pyramid."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from cachetree.fs.location import Location
from cachetree.images.ngff import open_image, write_image
from cachetree.images.policy import mean_2x2
from cachetree.images.pyramid import ImageWriter


def _streamed(loc: Location, data: np.ndarray, chunk: int, fmt: str) -> None:
    writer = ImageWriter.create(loc, data.shape, data.dtype, chunk=chunk, min_size=16, format=fmt)
    for ty in range(-(-data.shape[0] // chunk)):
        for tx in range(-(-data.shape[1] // chunk)):
            block = data[ty * chunk : (ty + 1) * chunk, tx * chunk : (tx + 1) * chunk]
            writer.write_chunk(0, (ty, tx), block)
    writer.build_levels(workers=2)
    writer.finish(low=data.min(), high=data.max())


@pytest.mark.parametrize("fmt", ["0.5", "0.4"])
@pytest.mark.parametrize("dtype", ["bool", "uint8", "uint16", "float32"])
def test_every_writer_gives_the_same_pyramid(tmp_path, dtype, fmt):
    rng = np.random.default_rng(7)
    data = (rng.random((101, 77)) * (1 if dtype in ("bool", "float32") else 200)).astype(dtype)
    if dtype == "bool":
        data = rng.random((101, 77)) > 0.5
    whole, streamed = (
        Location.from_url(tmp_path / "whole"),
        Location.from_url(tmp_path / "streamed"),
    )
    write_image(whole, data, chunks=32, min_size=16, format=fmt)
    _streamed(streamed, data, chunk=32, fmt=fmt)
    a, b = open_image(whole), open_image(streamed)
    assert [lvl.shape for lvl in a] == [lvl.shape for lvl in b] and len(a) >= 3
    for level_a, level_b in zip(a, b, strict=True):
        np.testing.assert_array_equal(level_a.compute(), level_b.compute())
    codecs = []
    for loc in (whole, streamed):
        meta = zarr.open_array(loc.raw_child("1").zarr_store(read_only=True), mode="r").metadata
        layout = meta.to_dict()
        codecs.append(json.dumps(layout.get("codecs", layout.get("compressor")), sort_keys=True))
    assert codecs[0] == codecs[1] and '"lz4"' in codecs[0]


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16", "int32", "uint32"])
def test_integer_means_round_half_to_even_like_the_float_mean(dtype):
    info = np.iinfo(dtype)
    near = [info.min, info.min + 1, info.min + 2, -1, 0, 1, 2, 3, info.max - 1, info.max]
    values = np.array(sorted({v for v in near if info.min <= v}), dtype)
    quads = np.stack(np.meshgrid(values, values, values, values), -1).reshape(-1, 4)
    block = quads.reshape(-1, 2, 2).transpose(1, 0, 2).reshape(2, -1)  # 2x2 blocks side by side
    block = np.concatenate([block, block[:1]])  # an odd row, averaged with itself
    exact = np.rint(quads.astype(np.float64).mean(axis=1))
    odd_row = np.rint(quads[:, :2].astype(np.float64).mean(axis=1))
    means = mean_2x2(block)
    assert means.dtype == np.dtype(dtype) and means.shape == (2, len(quads))
    np.testing.assert_array_equal(means[0], exact.astype(dtype))
    np.testing.assert_array_equal(means[1], odd_row.astype(dtype))
