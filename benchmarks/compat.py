"""TIAToolbox 2.1.3's own multi-task loop with its merge functions and with cachetree's (W1).

Run ``python benchmarks/compat.py`` (``--help`` for options); it needs TIAToolbox 2.1.3 as
installed by ``scripts/bootstrap.sh``. Workload W1: an 8192x8192 canvas, 256-px patches at
stride 192 (row-major; edge patches overhang and are clipped), two heads of 4 and 1 float32
channels, batches of 32. A fake model returns slices of two precomputed random batches, so
producing predictions costs next to nothing.

Every variant runs in its own subprocess, so each peak RSS (``VmHWM`` of that process,
imports included) is measured alone:

* ``naive``      — the same data loader and model; every patch is added into full-size
  float32 sums and a float32 count held in RAM, then divided in place;
* ``tiatoolbox`` — ``MultiTaskSegmentor.infer_wsi`` of TIAToolbox 2.1.3 as shipped;
* ``cachetree``  — the same ``infer_wsi`` with the four merge functions rebound to those of
  :mod:`cachetree.compat` in its module (nothing else changes).

The two loops run at each ``--thresholds`` value (``memory_threshold``: 80 is TIAToolbox's
default; at 1 TIAToolbox's loop spills the row blocks after every row and the result goes
to Zarr; at 0 everything goes through Zarr). The timed region is ``infer_wsi`` plus reading
each head's result into a numpy array, one head at a time; imports and the fake data set-up
are outside it. Ratios below 1 are faster / smaller.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1024**2
REPO = Path(__file__).resolve().parents[1]


def peak_rss() -> int:
    """This process' peak resident set size in bytes (VmHWM)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def workload(args: argparse.Namespace):
    """Grid locations, which are sent (all), and a predict(index) over a small random pool."""
    import numpy as np

    sys.path.insert(0, str(REPO))
    from tests import tiatoolbox_loop as tl

    shape = (args.size, args.size)
    locs = tl.grid(shape, args.patch, args.stride)
    rng = np.random.default_rng(0)
    pool = [
        [rng.random((args.batch, args.patch, args.patch, c), np.float32) for c in (4, 1)]
        for _ in range(2)
    ]
    calls = [0]

    def predict(index):
        calls[0] += 1
        return tuple(head[: len(index)] for head in pool[calls[0] % 2])

    return tl, shape, locs, np.ones(len(locs), bool), predict


def run_variant(args: argparse.Namespace) -> dict:
    import numpy as np

    tl, shape, locs, sent, predict = workload(args)
    tl.engine_module()  # imports TIAToolbox before the clock starts
    import cachetree.compat

    scratch = Path(tempfile.mkdtemp(prefix="bench-compat-", dir=args.tmp))
    try:
        start = time.perf_counter()
        if args.variant == "naive":
            model = tl.make_model(predict)
            loader = tl.make_dataloader(locs, sent, shape, args.batch)
            p = args.patch
            sums = [np.zeros((shape[0] + p, shape[1] + p, c), np.float32) for c in (4, 1)]
            hits = np.zeros((shape[0] + p, shape[1] + p, 1), np.float32)
            for batch in loader:
                outputs = model.infer_batch(model, batch["image"], device="cpu")
                for j, (x0, y0, x1, y1) in enumerate(batch["output_locs"].numpy().tolist()):
                    for total, out in zip(sums, outputs, strict=True):
                        total[y0:y1, x0:x1] += out[j]
                    hits[y0:y1, x0:x1] += 1
            np.maximum(hits, 1, out=hits)
            checksum = 0.0
            for total in sums:
                result = total[: shape[0], : shape[1]]
                result /= hits[: shape[0], : shape[1]]
                checksum += float(result[::97, ::89].sum())
        else:
            functions = cachetree.compat if args.variant == "cachetree" else None
            out = tl.run_infer_wsi(
                predict,
                locs,
                sent,
                shape,
                scratch / "slide.zarr",
                batch_size=args.batch,
                memory_threshold=args.threshold,
                functions=functions,
            )
            checksum = 0.0
            probabilities = out["probabilities"]
            while probabilities:
                result = np.asarray(probabilities.pop(0).compute())
                checksum += float(result[::97, ::89].sum())
                del result
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"seconds": seconds, "peak_rss": peak_rss(), "checksum": checksum}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--stride", type=int, default=192)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--thresholds", default="80,1,0", help="memory_threshold values")
    parser.add_argument("--tmp", default=None, help="scratch directory (default: system temp)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--threshold", type=int, default=80, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return

    def spawn(variant: str, threshold: int) -> dict:
        cmd = [
            sys.executable,
            __file__,
            f"--variant={variant}",
            f"--threshold={threshold}",
            f"--size={args.size}",
            f"--patch={args.patch}",
            f"--stride={args.stride}",
            f"--batch={args.batch}",
        ] + ([f"--tmp={args.tmp}"] if args.tmp else [])
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if done.returncode:
            raise SystemExit(f"{variant} at {threshold} failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    print(
        f"W1-like: {args.size}x{args.size}, patch {args.patch}, stride {args.stride}, "
        f"heads 4+1 float32, batch {args.batch}"
    )
    naive = spawn("naive", 0)
    print(f"naive in-RAM merge: {naive['seconds']:.2f} s, {naive['peak_rss'] / MiB:.0f} MiB")
    header = "threshold  variant      time s  peak MiB  time/tia  rss/tia  time/naive  rss/naive"
    print(header)
    for threshold in (int(t) for t in args.thresholds.split(",")):
        rows = {v: spawn(v, threshold) for v in ("tiatoolbox", "cachetree")}
        if abs(rows["tiatoolbox"]["checksum"] - rows["cachetree"]["checksum"]) > 1e-3:
            raise SystemExit(f"results differ at threshold {threshold}: {rows}")
        for variant, r in rows.items():
            tia = rows["tiatoolbox"]
            print(
                f"{threshold:>9}  {variant:<11} {r['seconds']:>7.2f}  "
                f"{r['peak_rss'] / MiB:>8.0f}  {r['seconds'] / tia['seconds']:>8.2f}  "
                f"{r['peak_rss'] / tia['peak_rss']:>7.2f}  "
                f"{r['seconds'] / naive['seconds']:>10.2f}  "
                f"{r['peak_rss'] / naive['peak_rss']:>9.2f}"
            )


if __name__ == "__main__":
    main()
