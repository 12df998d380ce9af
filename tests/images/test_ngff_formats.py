"""OME-NGFF 0.5 (sharded zarr v3) and 0.4 (zarr v2): validation, tree defaults, shards.

Every output is validated with ``ome-zarr-models`` as the version it claims, and must fail
validation as the other one.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from ome_zarr_models import v04, v05

from cachetree import CacheTree
from cachetree.canvas import Canvas
from cachetree.errors import InvalidDataError
from cachetree.images.ngff import (
    is_ome_zarr,
    open_image,
    read_image,
    write_image,
    write_labels,
    write_standalone_labels,
)
from cachetree.images.pyramid import ImageWriter, PyramidAssembler

MODELS = {"0.4": v04, "0.5": v05}


def assert_valid(path, version: str, *, labels: bool = False) -> None:
    """``path`` validates as OME-NGFF ``version`` (image, or image-label) and not the other."""
    group = zarr.open_group(str(path), mode="r")
    kind = "ImageLabel" if labels else "Image"
    getattr(MODELS[version], kind).from_zarr(group)
    other = "0.4" if version == "0.5" else "0.5"
    with pytest.raises(Exception):  # noqa: B017 - any validation error will do
        getattr(MODELS[other], kind).from_zarr(group)


@pytest.mark.parametrize("fmt", ["0.5", "0.4"])
def test_images_and_labels_validate_as_their_version(tmp_path, fmt):
    path = tmp_path / "img.ome.zarr"
    data = np.random.default_rng(0).random((2, 300, 200)).astype(np.float32)
    write_image(path, data, chunks=64, scale=(0.5, 0.5), units="um", format=fmt)
    info = write_labels(path, "cells", np.ones((300, 200), np.uint16))
    assert info.version == fmt and info.units == ("micrometer", "micrometer")
    assert_valid(path, fmt)
    assert_valid(path / "labels" / "cells", fmt, labels=True)
    MODELS[fmt].Labels.from_zarr(zarr.open_group(str(path / "labels"), mode="r"))
    other = "0.4" if fmt == "0.5" else "0.5"
    with pytest.raises(InvalidDataError, match="must be"):  # labels follow their image
        write_labels(path, "nuclei", np.ones((300, 200), np.uint16), format=other)


@pytest.mark.parametrize("fmt", ["0.5", "0.4"])
def test_standalone_labels_validate_as_their_version(tmp_path, fmt):
    """Labels of no image: a plain group whose ``labels`` group validates, with the labels."""
    path = tmp_path / "cells.ome.zarr"
    write_image(path, np.ones((30, 20), np.uint8), labels=True)  # the earlier layout, replaced
    data = np.arange(300 * 200, dtype=np.uint16).reshape(300, 200) % 7
    info = write_standalone_labels(path, data, scale=(0.5, 0.5), units="um", format=fmt)
    assert info.version == fmt and info.labels and info.shape == (300, 200)
    assert info.url.endswith("cells.ome.zarr/labels/cells") and read_image(path) == info
    assert is_ome_zarr(path) and not is_ome_zarr(path / "labels")
    np.testing.assert_array_equal(open_image(path)[0], data)
    group = zarr.open_group(str(path), mode="r")
    assert group.metadata.zarr_format == (3 if fmt == "0.5" else 2)
    assert group.attrs.asdict() == {} and sorted(group.keys()) == ["labels"]
    MODELS[fmt].Labels.from_zarr(group["labels"])  # checks the labels images it lists too
    assert_valid(path / "labels" / "cells", fmt, labels=True)
    for models in MODELS.values():  # the group claims no image
        with pytest.raises(Exception):  # noqa: B017 - any validation error will do
            models.Image.from_zarr(group)
    assert [p.name for p in tmp_path.iterdir()] == ["cells.ome.zarr"]  # no temp left


@pytest.mark.parametrize("fmt", ["0.5", "0.4"])
def test_canvas_heads_validate_and_carry_the_pixel_size(tmp_path, fmt):
    tree = CacheTree(tmp_path / "tree", ngff_format=fmt)
    with tree.node("merge") as node:
        canvas = Canvas(
            node,
            (96, 80),
            {"prob": 2, "mask": (1, "uint8")},
            tile=16,
            min_size=16,
            pixel_size=0.25,
            units="um",
            output_stride=4,
        )
        ones = np.ones((1, 32, 32, 2), np.float32)
        canvas.add({"prob": ones, "mask": np.ones((1, 32, 32, 1), np.uint8)}, [[0, 0, 32, 32]])
        infos = canvas.finalize()
    for head in ("prob", "mask"):
        info = read_image(node.item(f"{head}.ome.zarr"))
        assert info == infos[head] and info.version == fmt
        assert info.scale[-2:] == (1.0, 1.0)  # 0.25 um input pixels, 4 per canvas pixel
        assert info.units[-2:] == ("micrometer", "micrometer")
        assert_valid(node.item(f"{head}.ome.zarr").path, fmt)
    assert node.manifest.items["prob.ome.zarr"]["ngff"] == fmt


def test_tree_default_format_a_call_can_override_and_a_tree_can_mix(tmp_path):
    old = CacheTree(tmp_path / "tree", ngff_format="0.4")
    with old.node("a") as node:
        node.save_image("v04", np.zeros((40, 40), np.uint8))
        node.save_image("v05", np.ones((40, 40), np.uint8), format="0.5")
        node.save_labels("seg", np.ones((40, 40), np.uint8), image="v05")
        child = node.child("b")
        assert child.ngff_format == "0.4"
    assert read_image(node.item("v04.ome.zarr")).version == "0.4"
    assert read_image(node.item("v05.ome.zarr")).version == "0.5"
    assert read_image(node.item("v05.ome.zarr").join("labels", "seg")).version == "0.5"
    items = CacheTree(tmp_path / "tree").node("a").manifest.items
    assert items["v04.ome.zarr"]["ngff"] == "0.4" and items["v05.ome.zarr"]["ngff"] == "0.5"
    assert items["v05.ome.zarr"]["labels"] == ["seg"]
    reader = CacheTree(tmp_path / "tree").node("a")
    assert int(reader.open_image("v05")[0].max()) == 1
    assert int(reader.open_image("seg", image="v05")[0].min()) == 1
    with pytest.raises(InvalidDataError, match="OME-NGFF format"):
        CacheTree(tmp_path / "other", ngff_format="0.3")


class CountingWriter(ImageWriter):
    """Counts the shards stored and the files read back (the writer's own I/O hooks)."""

    puts: list[str]
    gets: list[str]

    def _store(self, key, entry):
        self.puts.append(key)
        return super()._store(key, entry)

    def _get(self, path: str) -> bytes | None:
        self.gets.append(path)
        return super()._get(path)


def test_streamed_rows_write_every_shard_once_and_read_none_back(tmp_path):
    """Chunks arriving row by row fill shards one chunk high: each is put once, whole."""
    shape, chunk = (3, 70, 300), 16
    data = np.random.default_rng(1).random(shape).astype(np.float32)
    writer = CountingWriter.create(tmp_path / "img", shape, data.dtype, chunk=chunk, min_size=8)
    writer.puts, writer.gets = [], []
    assert writer.levels[0].shards == (1, 16, 304)  # a whole row of 19 chunks, 19 KiB each
    assembler = PyramidAssembler(writer)
    for c, ty, tx in np.ndindex(*writer.grid(0)):
        block = data[c, ty * chunk : (ty + 1) * chunk, tx * chunk : (tx + 1) * chunk]
        writer.write_chunk(0, (c, ty, tx), block)
        assembler.add(0, (c, ty, tx), block)
    assert assembler.complete()
    writer.finish(low=[0] * 3, high=[1] * 3)
    shards = sum(int(np.prod(level.shard_grid)) for level in writer.levels)
    assert sorted(writer.puts) == sorted(set(writer.puts)) and len(writer.puts) == shards
    assert writer.gets == []
    levels = open_image(writer.location)
    np.testing.assert_array_equal(levels[0].compute(), data)
    rebuilt = tmp_path / "rebuilt"
    write_image(rebuilt, data, chunks=chunk, min_size=8)
    for a, b in zip(levels, open_image(rebuilt), strict=True):
        np.testing.assert_array_equal(a.compute(), b.compute())
    assert_valid(writer.location.path, "0.5")


class RangeCountingWriter(ImageWriter):
    """Records the byte ranges read back (the writer's own I/O hook)."""

    ranges: list[bytes | None]

    def _get_range(self, path: str, start: int, end: int | None) -> bytes | None:
        data = super()._get_range(path, start, end)
        self.ranges.append(data)
        return data


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_stored_chunk_is_read_back_alone_as_zarr_reads_it(tmp_path, where, request):
    """read_chunk reads a shard's index and the chunk's bytes, nothing more, and gives the
    values zarr reads: clipped at the edges, the fill value where nothing was written."""
    root = request.getfixturevalue("s3_root") if where == "s3" else str(tmp_path)
    shape, chunk = (2, 40, 100), 16
    data = np.random.default_rng(2).random(shape).astype(np.float32)
    writer = RangeCountingWriter.create(
        f"{root}/img", shape, data.dtype, chunk=chunk, fill_value=-1, min_size=8
    )
    grid = writer.grid(0)
    skipped = {(c, ty, tx) for c, ty, tx in np.ndindex(*grid) if (ty + tx) % 3 == 0}
    for index in np.ndindex(*grid):
        if index not in skipped:
            c, ty, tx = index
            writer.write_chunk(0, index, data[c, ty * 16 : ty * 16 + 16, tx * 16 : tx * 16 + 16])
    writer.flush()
    level0 = zarr.open_array(writer.location.raw_child("0").zarr_store(read_only=True), mode="r")
    layout = writer.levels[0]
    for index in np.ndindex(*grid):
        writer.ranges = []
        block = writer.read_chunk(0, index)
        stored = np.asarray(level0[layout.chunk_region(index)])
        np.testing.assert_array_equal(block, stored[0])
        if index in skipped:
            assert (block == -1).all()
        index_bytes, *chunk_bytes = writer.ranges  # the shard's index, then the chunk only
        assert len(index_bytes) == layout.index_size
        assert chunk_bytes == ([] if index in skipped else [layout.encode_chunk(stored)])
    assert writer.read_chunk(0, (0, 0, 1)).flags.writeable


def test_a_chunk_written_again_after_its_shard_keeps_the_others(tmp_path):
    writer = ImageWriter.create(tmp_path / "img", (8, 32), np.uint8, chunk=8, min_size=32)
    for tx in range(4):
        writer.write_chunk(0, (0, tx), np.full((8, 8), tx + 1, np.uint8))
    writer.write_chunk(0, (0, 2), np.full((8, 8), 9, np.uint8))  # its shard is stored already
    writer.finish(low=1, high=9)
    np.testing.assert_array_equal(open_image(writer.location)[0][0, ::8].compute(), [1, 2, 9, 4])


SPOOL_WRITER = """
import sys, time
import numpy as np
from cachetree.images.pyramid import ImageWriter

writer = ImageWriter.create(sys.argv[1], (8, 32), np.uint8, chunk=8, min_size=32)
writer.write_chunk(0, (0, 0), np.ones((8, 8), np.uint8))  # its shard waits for 3 more
print("spooling", flush=True)
time.sleep(120)
"""


def test_a_killed_writer_leaves_no_spool_file_for_an_object_store(s3_root, tmp_path):
    """Shards for S3 are spooled in anonymous temp files: SIGKILL leaves nothing behind."""
    import os
    import signal
    import subprocess
    import sys

    spool_dir = tmp_path / "tmp"
    spool_dir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", SPOOL_WRITER, f"{s3_root}/img"],
        env={**os.environ, "TMPDIR": str(spool_dir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "spooling", proc.stderr.read()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert list(spool_dir.iterdir()) == []
    writer = ImageWriter.create(f"{s3_root}/img", (8, 32), np.uint8, chunk=8, min_size=32)
    for tx in range(4):  # the same writer, not killed, stores the shard in one put
        writer.write_chunk(0, (0, tx), np.full((8, 8), tx + 1, np.uint8))
    writer.finish(low=1, high=4)
    np.testing.assert_array_equal(open_image(writer.location)[0][0, ::8].compute(), [1, 2, 3, 4])
