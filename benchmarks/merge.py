"""Patch-merge throughput and peak memory of Canvas against a naive all-in-RAM merge (W1).

Run ``python benchmarks/merge.py`` (``--help`` for options). Workload W1: an 8192x8192
canvas, 256-px patches at stride 192 (row-major, edge patches overhang and are clipped),
two heads of 4 and 1 float32 channels, batches of 32. Patch data is a few precomputed
random batches reused in turn, so generating it costs nothing during the timed part.

Every variant runs in its own subprocess, so each peak RSS (``VmHWM`` of that process,
imports included) is measured alone:

* ``naive``        — allocate full float32 sum arrays for both heads and a float32 count,
  accumulate every patch, divide in place, write each head to a Zarr array (same Blosc
  lz4 compressor and 512x512 chunks as cachetree's output, channels last as accumulated);
* ``canvas``       — ``Canvas(order="row-major")`` with the default memory budget, including
  ``finalize()``: OME-Zarr level 0, pyramid, metadata, node commit;
* ``canvas-spill`` — the same with a 96 MiB budget, under half of the ~200 MB the live tile
  rows need at their peak, so tiles are spilled to disk and merged back all along.

The timed region is the merge itself (allocation, accumulation, normalisation, writing);
imports and patch generation are outside it. Ratios are variant / naive (time below 1 is
faster, RSS below 1 is smaller). The targets are a time ratio <= 1.5 and an RSS ratio
<= 0.25 for both canvas variants.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1024**2


def make_batches(args: argparse.Namespace):
    """Boxes of every batch, row-major, and a small pool of random patch batches."""
    import numpy as np

    rng = np.random.default_rng(0)
    p, s = args.patch, args.stride
    starts = range(0, args.size, s)
    boxes = np.array([[x, y, x + p, y + p] for y in starts for x in starts], np.int64)
    batches = [boxes[i : i + args.batch] for i in range(0, len(boxes), args.batch)]
    pool = [
        (
            rng.random((args.batch, p, p, 4), dtype=np.float32),
            rng.random((args.batch, p, p, 1), dtype=np.float32),
        )
        for _ in range(2)
    ]
    return batches, pool


def run_naive(args: argparse.Namespace, out: Path) -> None:
    import numpy as np
    import zarr

    from cachetree.images.policy import compressor

    batches, pool = make_batches(args)
    H = W = args.size
    start = time.perf_counter()
    sums = {"a": np.zeros((H, W, 4), np.float32), "b": np.zeros((H, W, 1), np.float32)}
    count = np.zeros((H, W, 1), np.float32)
    for i, boxes in enumerate(batches):
        pa, pb = pool[i % len(pool)]
        for j, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            ys, xs = slice(y0, min(y1, H)), slice(x0, min(x1, W))
            h, w = ys.stop - y0, xs.stop - x0
            sums["a"][ys, xs] += pa[j, :h, :w]
            sums["b"][ys, xs] += pb[j, :h, :w]
            count[ys, xs] += 1
    covered = count > 0
    for name, arr in sums.items():
        np.divide(arr, count, out=arr, where=covered)
        target = zarr.create_array(
            str(out / f"{name}.zarr"),
            shape=arr.shape,
            chunks=(512, 512, arr.shape[2]),
            dtype=arr.dtype,
            compressors=compressor(arr.dtype),
            zarr_format=2,
            overwrite=True,
        )
        target[:] = arr
    report(start, len(batches), out)


def run_canvas(args: argparse.Namespace, out: Path, budget: str | None) -> None:
    from cachetree import CacheTree
    from cachetree.canvas import Canvas

    batches, pool = make_batches(args)
    start = time.perf_counter()
    tree = CacheTree(out)
    with tree.node("w1", params={"budget": budget}) as node:
        canvas = Canvas(
            node,
            (args.size, args.size),
            {"a": 4, "b": 1},
            order="row-major",
            tile=args.tile,
            memory_budget=budget,
            workers=args.workers,
        )
        for i, boxes in enumerate(batches):
            pa, pb = pool[i % len(pool)]
            n = len(boxes)
            canvas.add({"a": pa[:n], "b": pb[:n]}, boxes)
        stats = canvas.stats
        canvas.finalize()
    report(start, len(batches), out, stats)


def peak_rss() -> int:
    """Peak resident bytes of this process: ``VmHWM`` on Linux.

    (``ru_maxrss`` of a child starts at the parent's high-water mark on Linux, so it is
    only the fallback.)
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def report(start: float, n_batches: int, out: Path, stats: dict | None = None) -> None:
    seconds = time.perf_counter() - start
    peak = peak_rss()
    disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(json.dumps({"seconds": seconds, "peak_rss": peak, "disk": disk, "stats": stats}))


def child(variant: str, args: argparse.Namespace) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"merge-{variant}-", dir=args.tmp))
    cmd = [
        sys.executable,
        __file__,
        "--child",
        variant,
        "--out",
        str(out),
        *(f"--{k}={v}" for k, v in _sizes(args).items()),
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"{variant} failed:\n{done.stderr}")
        return json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _sizes(args: argparse.Namespace) -> dict:
    keys = ("size", "patch", "stride", "batch", "tile", "workers", "small_budget")
    return {k.replace("_", "-"): getattr(args, k) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8192, help="canvas edge (px)")
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--stride", type=int, default=192)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tile", type=int, default=512, help="canvas tile / output chunk")
    parser.add_argument("--workers", type=int, default=2, help="canvas writer threads")
    parser.add_argument(
        "--small-budget", default="96MiB", help="budget of the canvas-spill variant"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant (median)")
    parser.add_argument("--tmp", default=None, help="directory for outputs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        out = Path(args.out)
        if args.child == "naive":
            run_naive(args, out)
        elif args.child == "canvas":
            run_canvas(args, out, None)
        else:
            run_canvas(args, out, args.small_budget)
        return

    variants = ["naive", "canvas", "canvas-spill"]
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for _ in range(args.repeat):  # interleaved, so load changes hit every variant alike
        for variant in variants:
            results[variant].append(child(variant, args))
    n = len(range(0, args.size, args.stride)) ** 2
    patch_mb = n * args.patch**2 * (4 + 1) * 4 / 1e6
    base_t = statistics.median(r["seconds"] for r in results["naive"])
    base_m = statistics.median(r["peak_rss"] for r in results["naive"])
    print(
        f"W1: {args.size}x{args.size} canvas, {n} patches of {args.patch}px at stride "
        f"{args.stride}, heads 4+1 float32, batches of {args.batch}, tile {args.tile}, "
        f"{args.repeat} runs each (median); patch data {patch_mb:.0f} MB; "
        f"small budget {args.small_budget}"
    )
    header = f"{'variant':<14}{'time s':>9}{'x naive':>9}{'peak RSS MiB':>14}{'x naive':>9}"
    print(header + f"{'MB/s':>9}{'spilled MiB':>13}")
    for variant in variants:
        t = statistics.median(r["seconds"] for r in results[variant])
        m = statistics.median(r["peak_rss"] for r in results[variant])
        stats = results[variant][0].get("stats") or {}
        spilled = stats.get("spilled_bytes", 0) / MiB
        print(
            f"{variant:<14}{t:>9.2f}{t / base_t:>9.2f}{m / MiB:>14.0f}{m / base_m:>9.2f}"
            f"{patch_mb / t:>9.0f}{spilled:>13.0f}"
        )
    if os.environ.get("MERGE_BENCH_JSON"):
        print(json.dumps(results))


if __name__ == "__main__":
    main()
