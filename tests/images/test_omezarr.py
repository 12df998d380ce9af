"""OME-Zarr writing and reading: pyramid values, single computation, metadata, readers."""

from __future__ import annotations

import itertools
import json
import math
import threading
import uuid
from collections import Counter

import dask.array as da
import fsspec
import numpy as np
import pytest
import zarr

from cachetree.errors import (
    DTypeMismatchError,
    InvalidDataError,
    NodeNotFoundError,
    ShapeMismatchError,
)
from cachetree.fs.location import Location
from cachetree.images.ngff import ImageInfo, is_ome_zarr, open_image, read_image, write_image
from cachetree.images.pyramid import ImageWriter


def _ref_mean(a: np.ndarray) -> np.ndarray:
    """2x2 mean over the last two axes in float64; edge pixels average what exists."""
    a = a.astype(np.float64)
    h, w = a.shape[-2:]
    out = np.empty((*a.shape[:-2], math.ceil(h / 2), math.ceil(w / 2)))
    for i in range(out.shape[-2]):
        for j in range(out.shape[-1]):
            out[..., i, j] = a[..., 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(axis=(-2, -1))
    return out


def _expected_next(level: np.ndarray) -> np.ndarray:
    """The next pyramid level of an image level, in the level's dtype."""
    mean = _ref_mean(level)
    if not np.issubdtype(level.dtype, np.floating):
        mean = np.rint(mean)
    return mean.astype(level.dtype)


def _attrs(path) -> dict:
    """The group attributes of either version, with the OME part at the top as in 0.4."""
    if (path / "zarr.json").is_file():
        attrs = json.loads((path / "zarr.json").read_text())["attributes"]
        return {**attrs, **attrs.pop("ome")}
    return json.loads((path / ".zattrs").read_text())


FORMATS = pytest.mark.parametrize("fmt", ["0.5", "0.4"])


def _rng_data(shape, dtype) -> np.ndarray:
    rng = np.random.default_rng(42)
    if np.issubdtype(dtype, np.floating):
        return rng.normal(10, 5, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


# -- round trips -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "dtype", "axes"),
    [
        ((70, 45), np.uint8, "yx"),
        ((2, 33, 50), np.float32, "cyx"),
        ((2, 3, 40, 31), np.uint16, "czyx"),
        ((2, 2, 2, 21, 37), np.int16, "tczyx"),
    ],
)
@FORMATS
def test_image_round_trip(tmp_path, shape, dtype, axes, fmt):
    data = _rng_data(shape, dtype)
    path = tmp_path / "img.ome.zarr"
    info = write_image(path, data, chunks=8, min_size=8, format=fmt)
    assert info.version == fmt

    assert info.axes == tuple(axes)
    assert info.shape == shape
    assert info.dtype == np.dtype(dtype).name
    assert not info.labels
    expected_shapes = [shape]
    while max(expected_shapes[-1][-2:]) > 8:
        *rest, y, x = expected_shapes[-1]
        expected_shapes.append((*rest, math.ceil(y / 2), math.ceil(x / 2)))
    assert info.levels == expected_shapes
    assert info == read_image(path)

    levels = [np.asarray(level) for level in open_image(path)]
    assert [lv.shape for lv in levels] == expected_shapes
    assert all(lv.dtype == dtype for lv in levels)
    np.testing.assert_array_equal(levels[0], data)
    for lower, upper in itertools.pairwise(levels):
        np.testing.assert_allclose(upper, _expected_next(lower), rtol=1e-6)
    # level 1 is the float64 mean of the source, up to rounding to the dtype
    tolerance = {"rtol": 1e-6} if np.issubdtype(dtype, np.floating) else {"atol": 0.5}
    np.testing.assert_allclose(levels[1], _ref_mean(data), **tolerance)


@pytest.mark.parametrize(("shape", "axes"), [((37, 50), "yx"), ((3, 41, 29), "zyx")])
@FORMATS
def test_labels_round_trip_uses_nearest(tmp_path, shape, axes, fmt):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 5, shape).astype(np.uint32)
    path = tmp_path / "seg.ome.zarr"
    info = write_image(path, data, labels=True, chunks=8, min_size=8, format=fmt)

    assert info.labels
    assert info.axes == tuple(axes)
    assert info.contrast_limits is None
    attrs = _attrs(path)
    assert attrs["image-label"]["version"] == fmt
    assert "omero" not in attrs
    assert attrs["multiscales"][0]["type"] == "nearest"
    for k, level in enumerate(open_image(path)):
        np.testing.assert_array_equal(level.compute(), data[..., :: 2**k, :: 2**k])


def test_default_axes_and_chunks(tmp_path):
    info = write_image(tmp_path / "a.zarr", np.zeros((3, 600, 1100), np.uint8), max_levels=2)
    assert info.axes == ("c", "y", "x")
    z0 = zarr.open_array(str(tmp_path / "a.zarr" / "0"), mode="r")
    z1 = zarr.open_array(str(tmp_path / "a.zarr" / "1"), mode="r")
    assert z0.chunks == (1, 512, 512)
    assert z1.chunks == (1, 300, 512)
    assert z0.metadata.zarr_format == 3
    assert z0.shards == (1, 512, 1536)  # one row of the 3 chunks across
    assert z0.metadata.dimension_names == ("c", "y", "x")
    assert z0.metadata.codecs[0].codecs[-1].cname.value == "lz4"  # images.policy
    write_image(tmp_path / "v2.zarr", np.zeros((3, 600, 1100), np.uint8), format="0.4")
    v2 = zarr.open_array(str(tmp_path / "v2.zarr" / "0"), mode="r")
    assert v2.metadata.zarr_format == 2 and v2.chunks == (1, 512, 512)
    assert v2.metadata.dimension_separator == "/"
    assert v2.metadata.compressor.cname == "lz4"
    assert write_image(tmp_path / "l.zarr", np.zeros((2, 9, 9), np.int32), labels=True).axes == (
        "z",
        "y",
        "x",
    )
    full = write_image(tmp_path / "f.zarr", np.zeros((4, 20, 30), np.uint8), chunks=(2, 5, 7))
    assert zarr.open_array(str(tmp_path / "f.zarr" / "0"), mode="r").chunks == (2, 5, 7)
    assert full.levels == [(4, 20, 30)]


def test_min_size_and_max_levels(tmp_path):
    data = np.zeros((1000, 300), np.uint8)
    assert write_image(tmp_path / "a.zarr", data).levels == [(1000, 300), (500, 150), (250, 75)]
    assert write_image(tmp_path / "b.zarr", data, max_levels=2).levels == [
        (1000, 300),
        (500, 150),
    ]
    assert write_image(tmp_path / "c.zarr", data, min_size=1000).levels == [(1000, 300)]


# -- single computation and contrast limits --------------------------------------------------
def test_dask_source_is_computed_exactly_once(tmp_path):
    calls: Counter = Counter()
    lock = threading.Lock()
    expected = np.arange(2 * 100 * 90, dtype=np.uint16).reshape(2, 100, 90)

    def make_block(block_info=None):
        location = tuple(block_info[None]["array-location"])
        with lock:
            calls[location] += 1
        return expected[tuple(slice(*loc) for loc in location)]

    # source chunks (1, 30, 40) do not line up with the written (1, 32, 32) tiles
    source = da.map_blocks(make_block, chunks=((1, 1), (30,) * 3 + (10,), (40, 40, 10)), dtype="u2")
    info = write_image(tmp_path / "img.zarr", source, chunks=32, min_size=16)

    assert len(info.levels) == 4
    assert len(calls) == source.npartitions == 2 * 4 * 3
    assert set(calls.values()) == {1}
    np.testing.assert_array_equal(open_image(tmp_path / "img.zarr")[0].compute(), expected)
    assert info.contrast_limits == [
        (int(expected[0].min()), int(expected[0].max())),
        (int(expected[1].min()), int(expected[1].max())),
    ]


def test_contrast_limits_per_channel_ignore_non_finite(tmp_path):
    data = _rng_data((3, 40, 50), np.float32)
    data[1, 5, 5] = np.nan
    data[1, 6, 6] = np.inf
    data[2] = 7.0  # a constant channel
    info = write_image(tmp_path / "img.zarr", data, chunks=16, channel_names=["a", "b", "c"])

    finite = np.where(np.isfinite(data), data, np.nan)
    lows, highs = np.nanmin(finite, axis=(1, 2)), np.nanmax(finite, axis=(1, 2))
    channels = _attrs(tmp_path / "img.zarr")["omero"]["channels"]
    assert [ch["label"] for ch in channels] == ["a", "b", "c"]
    assert info.channel_names == ("a", "b", "c")
    for ch, low, high in zip(channels, lows, highs, strict=True):
        assert ch["window"]["min"] == pytest.approx(float(low))
        assert ch["window"]["max"] == pytest.approx(float(high))
    assert info.contrast_limits[:2] == [
        pytest.approx((float(lows[0]), float(highs[0]))),
        pytest.approx((float(lows[1]), float(highs[1]))),
    ]
    # viewers need start < end: a constant channel gets a window one unit wide
    assert channels[2]["window"] == {"min": 7.0, "max": 7.0, "start": 7.0, "end": 8.0}


def test_contrast_limits_without_channel_axis(tmp_path):
    data = _rng_data((30, 20), np.int16)
    info = write_image(tmp_path / "img.zarr", data, chunks=8)
    assert info.contrast_limits == (int(data.min()), int(data.max()))
    assert info.channel_names is None


RGB_HEX = ["FF0000", "00FF00", "0000FF"]


@pytest.mark.parametrize(
    ("names", "dtype", "colours", "full_window"),
    [
        (["red", "green", "blue"], np.uint8, ["FF0000", "00FF00", "0000FF"], True),
        (["Red", "Green", "Blue", "alpha"], np.uint8, [*RGB_HEX, "FFFF00"], True),
        (["red", "green", "blue"], np.uint16, ["FF0000", "00FF00", "0000FF"], False),
        (["dapi", "gfp", "yellow"], np.uint8, ["FF00FF", "00FF00", "FFFF00"], False),
    ],
)
def test_channel_colours_follow_colour_names(tmp_path, names, dtype, colours, full_window):
    data = np.full((len(names), 8, 8), 7, dtype)
    data[:, 0, 0] = 9
    write_image(tmp_path / "img.zarr", data, channel_names=names)
    channels = _attrs(tmp_path / "img.zarr")["omero"]["channels"]
    assert [ch["color"] for ch in channels] == colours
    window = (0, 255) if full_window else (7, 9)  # RGB(A) uint8: never stretched per channel
    assert {(ch["window"]["start"], ch["window"]["end"]) for ch in channels} == {window}
    assert {(ch["window"]["min"], ch["window"]["max"]) for ch in channels} == {(7, 9)}
    assert [ch["active"] for ch in channels] == [name != "alpha" for name in names]


# -- metadata ---------------------------------------------------------------------------------
@FORMATS
def test_multiscales_metadata(tmp_path, fmt):
    path = tmp_path / "img.zarr"
    write_image(
        path,
        np.zeros((2, 5, 40, 40), np.uint8),
        scale=(2.0, 0.5, 0.25),
        translation=(10.0, 20.0, 30.0),
        units="um",
        min_size=10,
        name="my image",
        extra_attrs={"cachetree": {"kind": "image"}},
        format=fmt,
    )
    attrs = _attrs(path)
    assert attrs["cachetree"] == {"kind": "image"}
    (ms,) = attrs["multiscales"]
    assert ms.get("version") == ("0.4" if fmt == "0.4" else None)
    assert attrs.get("version") == ("0.5" if fmt == "0.5" else None)
    assert ms["name"] == "my image"
    assert ms["type"] == "mean"
    assert ms["axes"] == [
        {"name": "c", "type": "channel"},
        {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2"]
    level2 = ms["datasets"][2]["coordinateTransformations"]
    assert level2[0] == {"type": "scale", "scale": [1.0, 2.0, 2.0, 1.0]}
    # pixel centres line up: shift by (2**k - 1) / 2 base pixels in y and x
    assert level2[1] == {"type": "translation", "translation": [0.0, 10.0, 20.75, 30.375]}
    info = read_image(path)
    assert info.scale == (1.0, 2.0, 0.5, 0.25)
    assert info.translation == (0.0, 10.0, 20.0, 30.0)
    assert info.units == (None, "micrometer", "micrometer", "micrometer")
    assert info.name == "my image" and info.version == fmt


def test_units_per_axis_and_bad_units(tmp_path):
    info = write_image(
        tmp_path / "t.zarr",
        np.zeros((3, 8, 8), np.uint8),
        axes="tyx",
        units={"t": "s", "y": "nanometer", "x": "nanometer"},
    )
    assert info.units == ("second", "nanometer", "nanometer")
    with pytest.raises(InvalidDataError, match="not an OME-NGFF unit"):
        write_image(tmp_path / "b.zarr", np.zeros((8, 8), np.uint8), units="furlong")
    with pytest.raises(InvalidDataError, match="OME-NGFF format"):
        write_image(tmp_path / "b.zarr", np.zeros((8, 8), np.uint8), format="0.3")


def test_replaces_existing_image_and_leaves_no_temp(tmp_path):
    path = tmp_path / "img.zarr"
    write_image(path, np.ones((64, 64), np.uint8), min_size=8)
    info = write_image(path, np.full((20, 20), 3, np.uint8), min_size=64)
    assert info.levels == [(20, 20)]
    assert sorted(p.name for p in path.iterdir()) == ["0", "zarr.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["img.zarr"]
    assert int(open_image(path)[0].max().compute()) == 3


def test_failed_write_keeps_old_image_and_leaves_no_temp(tmp_path):
    path = tmp_path / "img.zarr"
    write_image(path, np.ones((32, 32), np.uint8))

    def explode(block, block_info=None):
        if block_info[0]["chunk-location"] == (1, 1):
            raise RuntimeError("boom")
        return block

    source = da.zeros((32, 32), chunks=16, dtype=np.uint8).map_blocks(explode, dtype=np.uint8)
    with pytest.raises(RuntimeError, match="boom"):
        write_image(path, source, chunks=16)
    assert [p.name for p in tmp_path.iterdir()] == ["img.zarr"]
    assert int(open_image(path)[0].min().compute()) == 1

    with pytest.raises(RuntimeError, match="boom"):
        write_image(tmp_path / "new.zarr", source, chunks=16)
    assert [p.name for p in tmp_path.iterdir()] == ["img.zarr"]


def test_memory_url_round_trip(capsys):
    url = f"memory://omezarr-{uuid.uuid4().hex}/img.ome.zarr"
    data = _rng_data((2, 50, 37), np.uint16)
    try:
        info = write_image(url, data, chunks=16, min_size=16, progress=True)
        assert "8/8" in capsys.readouterr().err  # every level-0 shard: 2 channels x 4 rows
        assert info.url == url.replace("memory://", "memory:///")
        assert info.levels == [(2, 50, 37), (2, 25, 19), (2, 13, 10)]
        assert is_ome_zarr(url)
        levels = open_image(url)
        np.testing.assert_array_equal(levels[0].compute(), data)
        np.testing.assert_array_equal(levels[1].compute(), _expected_next(data))
        # rewriting in place drops the old levels
        assert write_image(url, data, max_levels=1).levels == [(2, 50, 37)]
        fs = fsspec.filesystem("memory")
        assert not fs.exists(url.split("://")[1] + "/1")
    finally:
        fsspec.filesystem("memory").rm(url.split("://")[1].rsplit("/", 1)[0], recursive=True)


# -- other readers ----------------------------------------------------------------------------
@FORMATS
def test_ome_zarr_py_reader(tmp_path, fmt):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    data = _rng_data((2, 3, 40, 33), np.uint16)
    path = tmp_path / "img.zarr"
    write_image(path, data, chunks=16, min_size=16, channel_names=["dapi", "gfp"], format=fmt)

    nodes = list(Reader(parse_url(str(path)))())
    assert len(nodes) == 1
    node = nodes[0]
    assert node.load(Multiscales) is not None
    assert [d.shape for d in node.data] == [(2, 3, 40, 33), (2, 3, 20, 17), (2, 3, 10, 9)]
    np.testing.assert_array_equal(np.asarray(node.data[0]), data)
    np.testing.assert_array_equal(np.asarray(node.data[1]), _expected_next(data))
    assert [a["name"] for a in node.metadata["axes"]] == ["c", "z", "y", "x"]
    assert node.metadata["channel_names"] == ["dapi", "gfp"]
    assert node.metadata["contrast_limits"] == [
        [int(data[0].min()), int(data[0].max())],
        [int(data[1].min()), int(data[1].max())],
    ]


@FORMATS
def test_napari_ome_zarr_reader_image(tmp_path, fmt):
    import napari_ome_zarr

    data = _rng_data((2, 40, 33), np.float32)
    path = tmp_path / "img.zarr"
    write_image(path, data, chunks=16, min_size=16, scale=(0.5, 0.5), units="um", format=fmt)

    reader = napari_ome_zarr.napari_get_reader(str(path))
    assert callable(reader)
    (layer,) = reader(str(path))
    arrays, meta, layer_type = layer
    assert layer_type == "image"
    assert [a.shape for a in arrays] == [(2, 40, 33), (2, 20, 17), (2, 10, 9)]
    np.testing.assert_array_equal(np.asarray(arrays[0]), data)
    assert meta["channel_axis"] == 0
    assert meta["scale"] == [0.5, 0.5]
    assert meta["units"] == ("micrometer", "micrometer")
    np.testing.assert_allclose(
        meta["contrast_limits"], [[data[c].min(), data[c].max()] for c in range(2)], rtol=1e-6
    )


@FORMATS
def test_napari_ome_zarr_reader_labels(tmp_path, fmt):
    import napari_ome_zarr

    data = np.random.default_rng(3).integers(0, 9, (3, 40, 33)).astype(np.uint16)
    # the reader looks for a parent image two directories up: keep that inside tmp_path
    path = tmp_path / "image" / "labels" / "seg.zarr"
    write_image(path, data, labels=True, chunks=16, min_size=16, format=fmt)

    (layer,) = napari_ome_zarr.napari_get_reader(str(path))(str(path))
    arrays, meta, layer_type = layer
    assert layer_type == "labels"
    assert [a.shape for a in arrays] == [(3, 40, 33), (3, 20, 17), (3, 10, 9)]
    np.testing.assert_array_equal(np.asarray(arrays[1]), data[:, ::2, ::2])
    assert "channel_axis" not in meta


# -- bad input and detection ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "kwargs", "error", "match"),
    [
        ([[1, 2], [3, 4]], {}, InvalidDataError, "numpy or dask array"),
        ("image", {}, InvalidDataError, "numpy or dask array"),
        (np.zeros(5), {}, ShapeMismatchError, "2-D to 5-D"),
        (np.zeros((1,) * 6), {}, ShapeMismatchError, "2-D to 5-D"),
        (np.zeros((2, 4, 4)), {"axes": "yx"}, ShapeMismatchError, "one axis name per dimension"),
        (np.zeros((2, 4, 4)), {"axes": "qyx"}, InvalidDataError, "unknown axis"),
        (np.zeros((2, 4, 4)), {"axes": "yyx"}, InvalidDataError, "repeat"),
        (np.zeros((2, 4, 4)), {"axes": "ycx"}, InvalidDataError, "order"),
        (np.zeros((2, 4, 4)), {"axes": "czy"}, InvalidDataError, "order"),
        (np.zeros((2, 4, 4)), {"axes": 3}, InvalidDataError, "axes must be"),
        (np.zeros((4, 4)), {"labels": True}, DTypeMismatchError, "integer dtype"),
        (np.zeros((2, 4, 4), int), {"labels": True, "axes": "cyx"}, InvalidDataError, "channel"),
        (np.zeros((1, 2, 2, 4, 4), int), {"labels": True}, ShapeMismatchError, "at most 4-D"),
        (np.zeros((4, 4), complex), {}, DTypeMismatchError, "not supported"),
        (np.zeros((0, 4)), {}, ShapeMismatchError, "empty"),
        (np.zeros((2, 4, 4)), {"scale": (1, 2, 3, 4)}, ShapeMismatchError, "scale has 4"),
        (np.zeros((2, 4, 4)), {"scale": (0, 1)}, InvalidDataError, "positive"),
        (np.zeros((2, 4, 4)), {"channel_names": ["a"]}, ShapeMismatchError, "1 channel names"),
        (np.zeros((4, 4)), {"channel_names": ["a"]}, InvalidDataError, "'c' axis"),
        (np.zeros((4, 4)), {"chunks": (4,)}, ShapeMismatchError, "chunks"),
        (np.zeros((4, 4)), {"chunks": 0}, InvalidDataError, "positive"),
        (np.zeros((4, 4)), {"extra_attrs": {"omero": {}}}, InvalidDataError, "OME-Zarr keys"),
        (np.zeros((4, 4)), {"extra_attrs": {"x": object()}}, InvalidDataError, "JSON"),
        (np.zeros((4, 4)), {"min_size": 0}, InvalidDataError, "at least 1"),
    ],
)
def test_bad_input_raises(tmp_path, data, kwargs, error, match):
    with pytest.raises(error, match=match):
        write_image(tmp_path / "bad.zarr", data, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_is_ome_zarr(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("hello")
    zarr.create_array(str(tmp_path / "plain2.zarr"), shape=(4,), dtype="u1", zarr_format=2)
    zarr.create_array(str(tmp_path / "plain3.zarr"), shape=(4,), dtype="u1", zarr_format=3)
    write_image(tmp_path / "img.zarr", np.zeros((4, 4), np.uint8))

    assert not is_ome_zarr(tmp_path / "empty")
    assert not is_ome_zarr(tmp_path / "file.txt")
    assert not is_ome_zarr(tmp_path / "plain2.zarr")
    assert not is_ome_zarr(tmp_path / "plain3.zarr")
    assert not is_ome_zarr(tmp_path / "missing")
    assert not is_ome_zarr("memory://nothing-here/x.zarr")
    assert is_ome_zarr(tmp_path / "img.zarr")
    assert is_ome_zarr(str(tmp_path / "img.zarr"))


def test_read_errors(tmp_path):
    with pytest.raises(NodeNotFoundError):
        read_image(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidDataError, match="not an OME-Zarr"):
        open_image(tmp_path / "empty")


def test_image_info_is_frozen(tmp_path):
    info = write_image(tmp_path / "a.zarr", np.zeros((4, 4), np.uint8))
    assert isinstance(info, ImageInfo)
    with pytest.raises(AttributeError):
        info.dtype = "float32"  # type: ignore[misc]


def test_labels_under_an_image_must_match_its_extent(tmp_path):
    from cachetree.images.ngff import label_names, write_labels

    write_image(tmp_path / "img.zarr", np.zeros((2, 40, 30), np.uint8), scale=(2.0, 3.0))
    assert label_names(tmp_path / "img.zarr") == []
    with pytest.raises(ShapeMismatchError, match="do not match"):
        write_labels(tmp_path / "img.zarr", "cells", np.zeros((40, 31), np.uint8))
    with pytest.raises(NodeNotFoundError):
        write_labels(tmp_path / "none.zarr", "cells", np.zeros((40, 30), np.uint8))
    info = write_labels(tmp_path / "img.zarr", "cells", np.ones((40, 30), np.uint8))
    assert info.labels and info.scale == (2.0, 3.0)
    write_labels(tmp_path / "img.zarr", "nuclei", np.ones((40, 30), np.uint8))
    write_labels(tmp_path / "img.zarr", "cells", np.full((40, 30), 2, np.uint8))  # replaced
    assert label_names(tmp_path / "img.zarr") == ["nuclei", "cells"]
    np.testing.assert_array_equal(open_image(tmp_path / "img.zarr" / "labels" / "cells")[0], 2)


@FORMATS
@pytest.mark.parametrize("where", ["local", "s3"])
def test_writer_metadata_is_what_readers_read(tmp_path, request, fmt, where):
    """ImageWriter writes the zarr metadata itself (made by zarr in memory, written in one
    batch): zarr opens every level as planned, ``finish`` returns what ``read_image`` reads
    back, and attributes stored before ``finish`` are kept."""
    root = request.getfixturevalue("s3_root") if where == "s3" else str(tmp_path)
    location = Location.from_url(f"{root}/img.ome.zarr")
    data = np.arange(3 * 70 * 90, dtype=np.float32).reshape(3, 70, 90)
    writer = ImageWriter.create(location, data.shape, data.dtype, chunk=32, min_size=16, format=fmt)
    group = zarr.open_group(location.zarr_store(read_only=True), mode="r")
    assert [tuple(group[str(i)].shape) for i in range(len(writer.levels))] == writer.shapes
    assert writer.shapes == [(3, 70, 90), (3, 35, 45), (3, 18, 23), (3, 9, 12)]
    zarr.open_group(location.zarr_store(), mode="r+").attrs["kept"] = {"by": "test"}
    for shard in np.ndindex(*writer.levels[0].shard_grid):
        writer.write_shard(0, shard, data[writer.levels[0].shard_region(shard)])
    writer.build_levels()
    info = writer.finish(low=[0, 1, 2], high=[5, 6, 7], channel_names=["a", "b", "c"])
    assert info == read_image(location)
    assert info.levels == writer.shapes and info.dtype == "float32"
    assert info.contrast_limits == [(0, 5), (1, 6), (2, 7)]
    reopened = zarr.open_group(location.zarr_store(read_only=True), mode="r")
    assert reopened.attrs["kept"] == {"by": "test"}
    np.testing.assert_array_equal(np.asarray(reopened["0"]), data)
