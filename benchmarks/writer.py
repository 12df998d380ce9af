"""Throughput of AsyncWriter (npy) against plain synchronous writes, in one invocation.

Run ``python benchmarks/writer.py`` (``--help`` for sizes). Each case writes the same arrays
three ways, each into a fresh temporary directory:

* ``np.save``         — plain ``np.save(path, arr)`` in a loop: no fsync, not atomic. Its
  data may still sit in the page cache when the clock stops, so it is a lower bound.
* ``+fsync+rename``   — the same loop doing what atomicity needs, synchronously: temp file,
  ``fsync``, ``os.replace``, ``fsync`` of the directory.
* ``cachetree``       — ``AsyncWriter(save_format="npy")``, timed from the first ``write`` to
  the end of ``close()`` (everything fsynced and renamed into place).

The default cases exercise both paths of the writer: many small arrays below
``small_sync_bytes`` (written on the calling thread), many medium arrays above it (thread
pool), and a few large arrays (thread pool, bandwidth-bound). Ratios are cachetree time
divided by baseline time (below 1 means cachetree is faster).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cachetree.fs.location import fsync_path, temp_name
from cachetree.fs.writer import AsyncWriter

MiB = 1024**2


def make_arrays(count: int, nbytes: int, distinct: int = 4) -> list[np.ndarray]:
    """``count`` float32 arrays of ``nbytes`` each, cycling over a few distinct buffers."""
    rng = np.random.default_rng(0)
    pool = [
        rng.standard_normal(max(nbytes // 4, 1), dtype=np.float32)
        for _ in range(min(count, distinct))
    ]
    return [pool[i % len(pool)] for i in range(count)]


def write_np_save(out: Path, arrays: list[np.ndarray]) -> None:
    for i, arr in enumerate(arrays):
        np.save(out / f"a_{i:06d}.npy", arr, allow_pickle=False)


def write_np_save_fsync_rename(out: Path, arrays: list[np.ndarray]) -> None:
    for i, arr in enumerate(arrays):
        final = str(out / f"a_{i:06d}.npy")
        tmp = temp_name(final)
        with open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        fsync_path(str(out))


def make_cachetree(workers: int, max_inflight: int, small_sync_bytes: int):
    def write_cachetree(out: Path, arrays: list[np.ndarray]) -> None:
        writer = AsyncWriter(
            out,
            save_format="npy",
            workers=workers,
            max_inflight=max_inflight,
            small_sync_bytes=small_sync_bytes,
        )
        with writer:
            for i, arr in enumerate(arrays):
                writer.write(f"a_{i:06d}", arr)

    return write_cachetree


def timed(fn: Callable[[Path, list[np.ndarray]], None], arrays, base: Path, repeat: int) -> float:
    """Median wall time of ``repeat`` runs, each into a fresh directory (deleted afterwards).

    The page cache is flushed (``os.sync``) before each run, outside the timed region.
    """
    times = []
    for _ in range(repeat):
        out = Path(tempfile.mkdtemp(prefix="ct-bench-", dir=base))
        try:
            if hasattr(os, "sync"):
                os.sync()  # start from a clean page cache: earlier runs' dirty pages cost here
            t0 = time.perf_counter()
            fn(out, arrays)
            times.append(time.perf_counter() - t0)
            written = len(os.listdir(out))
            if written != len(arrays):
                raise RuntimeError(f"{fn.__name__} wrote {written} files, not {len(arrays)}")
        finally:
            shutil.rmtree(out, ignore_errors=True)
    return statistics.median(times)


def parse_case(text: str) -> tuple[int, int]:
    """``"2000x16k"`` → (2000, 16384); units k (KiB), m (MiB), or plain bytes."""
    count, _, size = text.lower().partition("x")
    factor = {"k": 1024, "m": MiB}.get(size[-1:], 1)
    return int(count), int(size.rstrip("km")) * factor


def human(nbytes: int) -> str:
    return f"{nbytes / MiB:g} MiB" if nbytes >= MiB else f"{nbytes / 1024:g} KiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--case",
        action="append",
        type=parse_case,
        help="COUNTxSIZE, e.g. 2000x16k or 16x64m (repeatable; default: 2000x16k 2000x256k 16x64m)",
    )
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--max-inflight", type=int, default=64)
    parser.add_argument("--small-sync-bytes", type=int, default=64_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--dir", default=None, help="where to write (default: system temp dir)")
    args = parser.parse_args(argv)
    cases = args.case or [(2000, 16 * 1024), (2000, 256 * 1024), (16, 64 * MiB)]
    base = Path(args.dir or tempfile.gettempdir())

    print(
        f"AsyncWriter npy benchmark: {os.cpu_count()} CPUs, workers={args.workers}, "
        f"max_inflight={args.max_inflight}, small_sync_bytes={args.small_sync_bytes}, "
        f"repeat={args.repeat}, dir={base}"
    )
    header = (
        f"{'case':<18} {'path':<5} {'np.save s':>10} {'+fsync+rename s':>16} {'cachetree s':>12} "
        f"{'ratio/np.save':>14} {'ratio/fsync':>12} {'cachetree MB/s':>15}"
    )
    print(header)
    print("-" * len(header))
    cachetree = make_cachetree(args.workers, args.max_inflight, args.small_sync_bytes)
    for count, nbytes in cases:
        arrays = make_arrays(count, nbytes)
        total = sum(a.nbytes for a in arrays)
        t_save = timed(write_np_save, arrays, base, args.repeat)
        t_fsync = timed(write_np_save_fsync_rename, arrays, base, args.repeat)
        t_ct = timed(cachetree, arrays, base, args.repeat)
        path = "sync" if arrays[0].nbytes < args.small_sync_bytes else "pool"
        print(
            f"{f'{count} x {human(nbytes)}':<18} {path:<5} {t_save:>10.3f} {t_fsync:>16.3f} "
            f"{t_ct:>12.3f} {t_ct / t_save:>14.2f} {t_ct / t_fsync:>12.2f} "
            f"{total / 1e6 / t_ct:>15.1f}"
        )
        del arrays
    return 0


if __name__ == "__main__":
    sys.exit(main())
