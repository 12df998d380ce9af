"""Tests of cachetree.fs.writer.AsyncWriter: formats, atomicity, backpressure, errors, SIGKILL."""

from __future__ import annotations

import collections
import importlib.util
import io
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import zarr

from cachetree.errors import FinalizedError, InvalidDataError, InvalidNameError, StorageError
from cachetree.fs.location import TMP_MARK, Location
from cachetree.fs.payloads import OutputFormat
from cachetree.fs.writer import AsyncWriter, DictMode, SaveFormat

HAS_TORCH = importlib.util.find_spec("torch") is not None
WAIT = 30.0  # generous upper bound for anything that should happen "soon"


def small(i: int = 0) -> np.ndarray:
    return np.arange(12, dtype=np.int16).reshape(3, 4) + i


def big(i: int = 0) -> np.ndarray:
    return np.arange(20_000, dtype=np.float64).reshape(100, 200) + i  # 160 kB


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if TMP_MARK in p.name]


def load(path: Path):
    if path.suffix == ".zarr":
        node = zarr.open(str(path), mode="r")
        if isinstance(node, zarr.Group):
            return {k: v[...] for k, v in node.arrays()}
        return node[...]
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


class GatedWriter(AsyncWriter):
    """A writer whose background writes really stall until ``gate`` is set.

    Writes on the thread that built the writer (the synchronous path) are not gated.
    ``started`` receives the target's file name each time a write begins, and ``threads``
    records which thread ran it.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.started: queue.Queue[str] = queue.Queue()
        self.threads: dict[str, str] = {}
        self._owner = threading.get_ident()

    def _write_one(self, target, payload):
        self.threads[target.name] = threading.current_thread().name
        self.started.put(target.name)
        if threading.get_ident() != self._owner:
            assert self.gate.wait(WAIT), "test gate never opened"
        super()._write_one(target, payload)


# -- 1. round trips --------------------------------------------------------------------------
ROUND_TRIPS = [
    # (format, dict_mode, kind, {file name: expected content})
    ("npy", "single", "array", {"out.npy": "a"}),
    ("npz", "single", "array", {"out.npz": {"arr_0": "a"}}),
    ("zarr", "single", "array", {"out.zarr": "a"}),
    ("npz", "single", "mapping", {"out.npz": {"flow": "a", "pressure": "b"}}),
    ("zarr", "single", "mapping", {"out.zarr": {"flow": "a", "pressure": "b"}}),
    ("npy", "split", "mapping", {"out_flow.npy": "a", "out_pressure.npy": "b"}),
    (
        "npz",
        "split",
        "mapping",
        {"out_flow.npz": {"arr_0": "a"}, "out_pressure.npz": {"arr_0": "b"}},
    ),
    ("zarr", "split", "mapping", {"out_flow.zarr": "a", "out_pressure.zarr": "b"}),
    ("npz", "single", "sequence", {"out.npz": {"arr_0": "a", "arr_1": "b"}}),
    ("zarr", "single", "sequence", {"out.zarr": {"0": "a", "1": "b"}}),
    ("npy", "split", "sequence", {"out_0.npy": "a", "out_1.npy": "b"}),
    ("npy", "single", "array-like", {"out.npy": "a"}),
]


class ArrayLike:
    def __init__(self, arr):
        self.arr = arr

    def __array__(self, dtype=None, copy=None):
        return self.arr if dtype is None else self.arr.astype(dtype)


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "pool"])
@pytest.mark.parametrize(("fmt", "mode", "kind", "expected"), ROUND_TRIPS)
def test_round_trip(tmp_path, fmt, mode, kind, expected, sync):
    a = big(1)[:, ::2]  # non-contiguous on purpose
    b = np.linspace(0, 1, 50, dtype=np.float32).reshape(5, 10)
    if sync:
        a, b = small(1), small(2).astype(np.uint8)
    to_save = {
        "array": a,
        "array-like": ArrayLike(a),
        "mapping": {"flow": a, "pressure": b},
        "sequence": [a, b],
    }[kind]
    values = {"a": a, "b": b}
    with AsyncWriter(
        tmp_path, save_format=fmt, dict_mode=mode, small_sync_bytes=10**9 if sync else 0
    ) as writer:
        writer.write("sub/dir/out", to_save)
    out = tmp_path / "sub" / "dir"
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    for name, want in expected.items():
        got = load(out / name)
        if isinstance(want, dict):
            assert sorted(got) == sorted(want)
            for key, ref in want.items():
                np.testing.assert_array_equal(got[key], values[ref])
                assert got[key].dtype == values[ref].dtype
        else:
            np.testing.assert_array_equal(got, values[want])
            assert got.dtype == values[want].dtype
    assert sorted(writer.written) == sorted(str(out / n) for n in expected)
    assert leftovers(tmp_path) == []


def test_enum_values_and_names_accepted(tmp_path):
    writer = AsyncWriter(tmp_path, save_format=".NPZ", dict_mode="SPLIT")
    assert writer.save_format is SaveFormat.NUMPY_NPZ
    assert writer.dict_mode is DictMode.SPLIT
    writer.close()
    assert AsyncWriter(tmp_path, save_format="numpy_npy").save_format is SaveFormat.NUMPY_NPY


def test_scalars_and_odd_dtypes(tmp_path):
    with AsyncWriter(tmp_path, save_format="npz", small_sync_bytes=0) as writer:
        writer.write("scalar", np.float32(2.5))
        writer.write("bool", np.array([True, False]))
        writer.write("text", {"s": np.array(["ab", "c"]), "big_endian": np.arange(3, dtype=">i4")})
        writer.write("empty", {"e": np.zeros((0, 3))})
    assert load(tmp_path / "scalar.npz")["arr_0"] == np.float32(2.5)
    text = load(tmp_path / "text.npz")
    assert text["s"].tolist() == ["ab", "c"]
    assert text["big_endian"].dtype == np.dtype(">i4")
    assert load(tmp_path / "empty.npz")["e"].shape == (0, 3)


def test_npz_keys_numpy_savez_cannot_take(tmp_path):
    arrays = {"file": small(0), "allow_pickle": small(1)}
    with AsyncWriter(tmp_path, save_format="npz") as writer:
        writer.write("x", arrays)
    got = load(tmp_path / "x.npz")
    for key, value in arrays.items():
        np.testing.assert_array_equal(got[key], value)


@pytest.mark.parametrize("fmt", ["npy", "npz", "zarr"])
def test_overwrite_replaces(tmp_path, fmt):
    with AsyncWriter(tmp_path, save_format=fmt, small_sync_bytes=0) as writer:
        writer.write("x", big(0))
        writer.flush()
        writer.write("x", small(5))
    got = load(tmp_path / f"x.{fmt}")
    got = got["arr_0"] if fmt == "npz" else got
    np.testing.assert_array_equal(got, small(5))
    assert [p.name for p in tmp_path.iterdir()] == [f"x.{fmt}"]


def test_mapping_into_one_npy_is_refused(tmp_path):
    writer = AsyncWriter(tmp_path, save_format="npy", dict_mode="single")
    with pytest.raises(InvalidDataError, match="split"):
        writer.write("x", {"a": small()})
    with pytest.raises(InvalidDataError, match="npz"):
        writer.write("x", [small()])
    writer.close()
    assert list(tmp_path.iterdir()) == []


def test_pt_without_torch_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails as if absent
    with pytest.raises(InvalidDataError, match="needs PyTorch"):
        AsyncWriter(tmp_path, save_format=SaveFormat.PYTORCH_PT)
    with pytest.raises(InvalidDataError, match="torch"):
        AsyncWriter(tmp_path, save_format="pt")


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
@pytest.mark.parametrize("mode", ["single", "split"])
def test_pt_round_trip(tmp_path, mode):
    import torch

    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    with AsyncWriter(tmp_path, save_format="pt", dict_mode=mode, small_sync_bytes=0) as writer:
        writer.write("t", t)
        writer.write("m", {"a": t, "b": np.arange(3)})
        writer.write("view", torch.arange(10**6)[:4])
    assert torch.equal(torch.load(tmp_path / "t.pt"), t)
    assert torch.load(tmp_path / "view.pt").untyped_storage().nbytes() == 4 * 8
    if mode == "single":
        m = torch.load(tmp_path / "m.pt")
        assert torch.equal(m["a"], t) and torch.equal(m["b"], torch.arange(3))
    else:
        assert torch.equal(torch.load(tmp_path / "m_a.pt"), t)


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
def test_torch_tensors_saved_as_numpy(tmp_path):
    import torch

    t = torch.arange(6, dtype=torch.float32, requires_grad=True)
    with AsyncWriter(tmp_path) as writer:
        writer.write("t", t * 2)
    np.testing.assert_array_equal(np.load(tmp_path / "t.npy"), np.arange(6) * 2.0)


# -- 2. backpressure -------------------------------------------------------------------------
def test_backpressure_blocks_until_a_slot_frees(tmp_path):
    writer = GatedWriter(tmp_path, workers=1, max_inflight=2, small_sync_bytes=0)
    writer.write("a", big(0))
    writer.write("b", big(1))  # two in flight: the worker is stuck on "a", "b" is queued
    assert writer.started.get(timeout=WAIT) == "a.npy"

    third_returned = threading.Event()
    errors: list[BaseException] = []

    def third() -> None:
        try:
            writer.write("c", big(2))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            third_returned.set()

    thread = threading.Thread(target=third)
    thread.start()
    # While both slots are held, the third write must not return.
    assert not third_returned.wait(1.0)
    assert not (tmp_path / "a.npy").exists()
    assert writer.started.empty()  # "b" has not even started: one worker, still stuck on "a"

    writer.gate.set()
    assert third_returned.wait(WAIT)
    thread.join(WAIT)
    assert errors == []
    writer.close()
    for i, name in enumerate("abc"):
        np.testing.assert_array_equal(np.load(tmp_path / f"{name}.npy"), big(i))


# -- 3. errors -------------------------------------------------------------------------------
def _drain(writer: AsyncWriter) -> None:
    """With one worker, a no-op submitted now runs after everything already queued."""
    writer.pool.submit(lambda: None).result(timeout=WAIT)


def test_background_error_is_raised_at_next_write_and_close(tmp_path):
    (tmp_path / "x.npy").mkdir()  # a real collision: the final name is a directory
    writer = AsyncWriter(tmp_path, workers=1, small_sync_bytes=0)
    writer.write("x", big())  # returns: the failure happens in the background
    _drain(writer)

    with pytest.raises(StorageError, match=r"x\.npy") as at_write:
        writer.write("y", big())
    assert isinstance(at_write.value.__cause__, OSError)
    with pytest.raises(StorageError) as at_flush:
        writer.flush()
    with pytest.raises(StorageError) as at_close:
        writer.close()
    assert at_write.value is at_flush.value is at_close.value  # the original exception object
    writer.close()  # idempotent, does not raise twice
    assert writer.written == []
    assert not (tmp_path / "y.npy").exists()
    assert leftovers(tmp_path) == []
    assert (tmp_path / "x.npy").is_dir()


def test_synchronous_error_raises_at_once_and_keeps_writer_usable(tmp_path):
    (tmp_path / "x.npy").mkdir()
    with AsyncWriter(tmp_path) as writer:
        with pytest.raises(StorageError):
            writer.write("x", small())
        writer.write("y", small())
    assert (tmp_path / "y.npy").is_file()
    assert leftovers(tmp_path) == []


def test_zarr_collision_with_a_file(tmp_path):
    (tmp_path / "z.zarr").write_bytes(b"not a store")
    writer = AsyncWriter(tmp_path, save_format="zarr", workers=1, small_sync_bytes=0)
    writer.write("z", big())
    with pytest.raises(StorageError, match="not a directory"):
        writer.close()
    assert (tmp_path / "z.zarr").read_bytes() == b"not a store"
    assert leftovers(tmp_path) == []


class FailingSerialisation(OutputFormat):
    """Serialisation writes half the data, then fails."""

    def _serialise(self, fh, payload):
        fh.write(b"\x93NUMPY partial")
        raise RuntimeError("serialisation exploded")


class FailingSerialiser(AsyncWriter):
    def _write_one(self, target, payload):
        FailingSerialisation(self.save_format, self.dict_mode).write(target, payload)


@pytest.mark.parametrize("fmt", ["npy", "npz"])
def test_failed_serialisation_removes_temp_file(tmp_path, fmt):
    writer = FailingSerialiser(tmp_path, save_format=fmt, small_sync_bytes=0)
    writer.write("x", big())
    with pytest.raises(RuntimeError, match="exploded"):
        writer.flush()
    with pytest.raises(RuntimeError, match="exploded"):
        writer.write("y", big())  # refused with the same error
    with pytest.raises(RuntimeError, match="exploded"):
        writer.close()
    with pytest.raises(FinalizedError):
        writer.write("y", big())
    assert list(tmp_path.iterdir()) == []


def test_failed_zarr_write_removes_temp_dir(tmp_path):
    class BoomFormat(OutputFormat):
        @staticmethod
        def _fill_zarr(store, payload):
            zarr.create_array(store, shape=(4,), dtype="i4")  # something is on disk already
            raise RuntimeError("zarr exploded")

    class Boom(AsyncWriter):
        def _write_one(self, target, payload):
            BoomFormat(self.save_format, self.dict_mode).write(target, payload)

    writer = Boom(tmp_path, save_format="zarr", small_sync_bytes=0)
    writer.write("z", big())
    with pytest.raises(RuntimeError, match="zarr exploded"):
        writer.close()
    assert list(tmp_path.iterdir()) == []


def test_context_manager_does_not_mask_body_exception(tmp_path):
    (tmp_path / "x.npy").mkdir()
    with (
        pytest.raises(KeyError, match="body") as info,
        AsyncWriter(tmp_path, small_sync_bytes=0) as writer,
    ):
        writer.write("ok", big(1))
        writer.write("x", big())  # the last write: its failure cannot surface in the body
        raise KeyError("body")
    assert writer.closed
    assert any("StorageError" in note for note in info.value.__notes__)
    np.testing.assert_array_equal(np.load(tmp_path / "ok.npy"), big(1))  # waited for


def test_context_manager_raises_background_error_on_clean_exit(tmp_path):
    (tmp_path / "x.npy").mkdir()
    with pytest.raises(StorageError), AsyncWriter(tmp_path, small_sync_bytes=0) as writer:
        writer.write("x", big())
    assert writer.closed


# -- 4. small items synchronously, large ones on the pool ------------------------------------
def test_small_sync_large_on_pool(tmp_path):
    writer = GatedWriter(tmp_path, small_sync_bytes=1_000)
    writer.write("tiny", small())  # 24 bytes: written before write() returns
    assert (tmp_path / "tiny.npy").is_file()
    np.testing.assert_array_equal(np.load(tmp_path / "tiny.npy"), small())
    assert writer.threads["tiny.npy"] == threading.current_thread().name

    writer.write("large", big())  # 160 kB: handed to the pool, which is held at the gate
    assert writer.started.get(timeout=WAIT) == "tiny.npy"
    assert writer.started.get(timeout=WAIT) == "large.npy"
    assert writer.threads["large.npy"].startswith("cachetree-writer")
    assert not (tmp_path / "large.npy").exists()
    writer.gate.set()
    writer.flush()
    np.testing.assert_array_equal(np.load(tmp_path / "large.npy"), big())
    writer.close()


def test_threshold_counts_the_whole_item(tmp_path):
    # Each array alone is under the threshold, together they are not: the item goes to the pool.
    writer = GatedWriter(tmp_path, dict_mode="split", small_sync_bytes=40)
    writer.write("m", {"a": small(), "b": small()})  # 2 x 24 bytes
    assert {writer.started.get(timeout=WAIT), writer.started.get(timeout=WAIT)} == {
        "m_a.npy",
        "m_b.npy",
    }
    assert all(writer.threads[n].startswith("cachetree-writer") for n in ("m_a.npy", "m_b.npy"))
    writer.gate.set()
    writer.close()


# -- 5. upload queue -------------------------------------------------------------------------
def test_upload_queue_gets_every_final_path_once(tmp_path):
    uploads: queue.Queue[str] = queue.Queue()
    with AsyncWriter(
        tmp_path, dict_mode="split", small_sync_bytes=1_000, upload_queue=uploads, workers=3
    ) as writer:
        writer.write("a", small())
        writer.write("b", big())
        writer.write("deep/m", {"x": big(1), "y": small(1)})
        writer.write("s", [small(2), small(3)])
        for i in range(20):
            writer.write(f"many/{i}", big(i))
    got = []
    while not uploads.empty():
        got.append(uploads.get_nowait())
    expected = [
        tmp_path / "a.npy",
        tmp_path / "b.npy",
        tmp_path / "deep" / "m_x.npy",
        tmp_path / "deep" / "m_y.npy",
        tmp_path / "s_0.npy",
        tmp_path / "s_1.npy",
        *(tmp_path / "many" / f"{i}.npy" for i in range(20)),
    ]
    assert collections.Counter(got) == collections.Counter(str(p) for p in expected)
    assert sorted(writer.written) == sorted(got)
    assert all(Path(p).is_file() for p in got)


# -- 6. fsspec memory:// ---------------------------------------------------------------------
@pytest.fixture
def memory_root():
    url = f"memory://cachetree-writer-{uuid.uuid4().hex}/out"
    yield url
    fs = fsspec.filesystem("memory")
    fs.rm(Location.from_url(url).path, recursive=True)


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "pool"])
def test_memory_root(memory_root, sync):
    threshold = 10**9 if sync else 0
    root = Location.from_url(memory_root)
    uploads: queue.Queue[str] = queue.Queue()
    with AsyncWriter(memory_root, small_sync_bytes=threshold, upload_queue=uploads) as w:
        w.write("a/x", big(1))
    with AsyncWriter(root, save_format="npz", small_sync_bytes=threshold) as w:
        w.write("a/m", {"p": small(1), "q": big(2)})
    with AsyncWriter(root, save_format="zarr", small_sync_bytes=threshold) as wz:
        wz.write("z", big(3))
        wz.write("g", {"p": small(4)})

    x = np.load(io.BytesIO(root.join("a/x.npy").read_bytes()), allow_pickle=False)
    np.testing.assert_array_equal(x, big(1))
    with np.load(io.BytesIO(root.join("a/m.npz").read_bytes()), allow_pickle=False) as m:
        np.testing.assert_array_equal(m["p"], small(1))
        np.testing.assert_array_equal(m["q"], big(2))
    z = zarr.open_array(root.join("z.zarr").zarr_store(read_only=True), mode="r")
    np.testing.assert_array_equal(z[...], big(3))
    g = zarr.open_group(root.join("g.zarr").zarr_store(read_only=True), mode="r")
    np.testing.assert_array_equal(g["p"][...], small(4))

    url = uploads.get_nowait()
    assert url == root.join("a/x.npy").url and url.startswith("memory://")
    # every finished item once; the pool finishes them in any order
    assert sorted(wz.written) == sorted([root.join("z.zarr").url, root.join("g.zarr").url])
    assert not any(TMP_MARK in p for p in root.fs.find(root.path))


# -- 7. SIGKILL mid-write --------------------------------------------------------------------
KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from cachetree.fs.writer import AsyncWriter

    n = int(sys.argv[2])
    writer = AsyncWriter(sys.argv[1], workers=2, max_inflight=4, small_sync_bytes=0)
    for i in range(200):
        writer.write(f"arr_{i:04d}", np.arange(n, dtype=np.float64) + i)
        print(i, flush=True)
    writer.close()
    print("done", flush=True)
    """
)


def test_sigkill_mid_write_leaves_only_complete_files(tmp_path):
    n = 1_000_000  # 8 MB per array
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(out), str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = 0
    try:
        while lines < 8:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"writer process ended early: {proc.stderr.read()}")
            assert line.strip() != "done"
            lines += 1
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=WAIT)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    finals, temps = [], []
    for path in out.iterdir():
        (temps if TMP_MARK in path.name else finals).append(path)
    for path in finals:
        assert path.suffix == ".npy" and path.name.startswith("arr_"), path
        i = int(path.stem.removeprefix("arr_"))
        np.testing.assert_array_equal(np.load(path, allow_pickle=False), np.arange(n) + float(i))
    # write() number k returned only once at most max_inflight writes were still pending.
    assert len(finals) >= lines - 4
    assert all(p.name.startswith(".arr_") for p in temps)


# -- 8. misuse -------------------------------------------------------------------------------
def test_write_after_close(tmp_path):
    writer = AsyncWriter(tmp_path)
    writer.close()
    with pytest.raises(FinalizedError, match="closed"):
        writer.write("x", small())
    writer.flush()  # harmless


@pytest.mark.parametrize(
    "bad",
    [
        "a string",
        b"bytes",
        3,
        2.5,
        None,
        object(),
        {1: np.zeros(3)},
        {"a": "not an array"},
        {"a": {"nested": np.zeros(3)}},
        [np.zeros(3), [np.zeros(3)]],
        [1, 2, 3],
        np.array([{"x": 1}], dtype=object),
        {"a": np.array(["x", None], dtype=object)},
        [],
        {},
    ],
    ids=repr,
)
def test_bad_data_is_refused_synchronously(tmp_path, bad):
    writer = AsyncWriter(tmp_path, save_format="npz", small_sync_bytes=0)
    with pytest.raises(InvalidDataError):
        writer.write("x", bad)
    writer.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path", ["../escape", "a/../../b", "/abs/path", "", ".", "a//b", "a/"])
def test_bad_paths_are_refused(tmp_path, path):
    writer = AsyncWriter(tmp_path / "root")
    with pytest.raises(InvalidNameError):
        writer.write(path, small())
    writer.close()
    assert list(tmp_path.iterdir()) == []


def test_bad_mapping_key_name(tmp_path):
    with AsyncWriter(tmp_path, dict_mode="split") as writer:
        with pytest.raises(InvalidNameError):
            writer.write("x", {"../up": small()})
        with pytest.raises(InvalidNameError):
            writer.write("x", {"a/b": small()})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"save_format": "tiff"},
        {"dict_mode": "merge"},
        {"workers": 0},
        {"max_inflight": 0},
        {"small_sync_bytes": -1},
        {"workers": 2.0},
    ],
)
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(InvalidDataError):
        AsyncWriter(tmp_path, **kwargs)


def test_many_producer_threads(tmp_path):
    uploads: queue.Queue[str] = queue.Queue()
    with AsyncWriter(
        tmp_path, workers=2, max_inflight=3, small_sync_bytes=100, upload_queue=uploads
    ) as writer:

        def produce(t: int) -> None:
            for i in range(15):
                writer.write(f"t{t}/{i}", big(i) if i % 2 else small(i))

        threads = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
    assert uploads.qsize() == len(writer.written) == len(set(writer.written)) == 60
    for t in range(4):
        for i in range(15):
            want = big(i) if i % 2 else small(i)
            np.testing.assert_array_equal(np.load(tmp_path / f"t{t}" / f"{i}.npy"), want)
