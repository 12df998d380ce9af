"""Write time and size of OME-NGFF 0.5 images under candidate codecs (the image policy's).

Run ``python benchmarks/codec.py`` (``--help`` for options). In one invocation it writes two
images with :func:`cachetree.images.ngff.write_image` (OME-NGFF 0.5 on sharded zarr v3, the
default, full pyramid) once per codec, ``--repeat`` times each, interleaved:

* ``W1 head`` — the 4-channel float32 head of workload W1 (``benchmarks/merge.py``): random
  256-px patches at stride 192 averaged where they overlap, ``--size`` px a side;
* ``slide`` — the demo's synthetic whole slide (:class:`cachetree.demo.slide.SyntheticSlide`,
  uint8 RGB, channels first), ``--size`` px a side.

For each it prints the median write time, the bytes on disk and both as ratios to the
policy's codec (Blosc lz4 level 5; time below 1 is faster, size below 1 is smaller).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from numcodecs import Blosc

from cachetree.images import policy
from cachetree.images.ngff import write_image

CODECS = {
    "lz4-5 (policy)": ("lz4", 5),
    "lz4-1": ("lz4", 1),
    "zstd-1": ("zstd", 1),
    "zstd-3": ("zstd", 3),
    "zstd-5": ("zstd", 5),
}


def w1_head(size: int) -> np.ndarray:
    """W1's 4-channel head: random patches of 256 px at stride 192, averaged, ``(4, H, W)``."""
    rng = np.random.default_rng(0)
    sums = np.zeros((4, size, size), np.float32)
    count = np.zeros((size, size), np.float32)
    pool = rng.random((8, 4, 256, 256), dtype=np.float32)
    for i, (y, x) in enumerate((y, x) for y in range(0, size, 192) for x in range(0, size, 192)):
        h, w = min(256, size - y), min(256, size - x)
        sums[:, y : y + h, x : x + w] += pool[i % len(pool), :, :h, :w]
        count[y : y + h, x : x + w] += 1
    return sums / count


def slide(size: int) -> np.ndarray:
    """The demo's synthetic slide, ``(3, H, W)`` uint8."""
    from cachetree.demo.slide import SyntheticSlide

    return SyntheticSlide(size).region(0, size, 0, size)


def codec_for(cname: str, clevel: int):
    def compressor(dtype: np.dtype) -> Blosc:
        shuffle = Blosc.BITSHUFFLE if np.dtype(dtype).itemsize == 1 else Blosc.SHUFFLE
        return Blosc(cname=cname, clevel=clevel, shuffle=shuffle)

    return compressor


def write_once(data: np.ndarray, out: Path, cname: str, clevel: int) -> tuple[float, int]:
    """Seconds to write ``data`` with the codec, and bytes on disk."""
    saved = policy.compressor
    policy.compressor = codec_for(cname, clevel)  # read by every level layout
    try:
        start = time.perf_counter()
        write_image(out, data, axes="cyx", format="0.5")
        seconds = time.perf_counter() - start
    finally:
        policy.compressor = saved
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    shutil.rmtree(out)
    return seconds, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="image edge (px)")
    parser.add_argument("--repeat", type=int, default=3, help="writes per codec (median)")
    parser.add_argument("--tmp", default=None, help="directory for outputs")
    args = parser.parse_args()

    images = {"W1 head": w1_head(args.size), "slide": slide(args.size)}
    tmp = Path(tempfile.mkdtemp(prefix="cachetree-codec-", dir=args.tmp))
    try:
        for label, data in images.items():
            results: dict[str, list[tuple[float, int]]] = {name: [] for name in CODECS}
            for _ in range(args.repeat):  # interleaved, so load changes hit every codec alike
                for name, (cname, clevel) in CODECS.items():
                    results[name].append(write_once(data, tmp / "image", cname, clevel))
            print(f"\n{label}: {data.shape} {data.dtype}, {data.nbytes / 2**20:.0f} MiB raw")
            print(f"{'codec':<16}{'write s':>9}{'x policy':>10}{'MiB':>9}{'x policy':>10}")
            base_t = statistics.median(t for t, _ in results["lz4-5 (policy)"])
            base_b = results["lz4-5 (policy)"][0][1]
            for name, runs in results.items():
                t = statistics.median(t for t, _ in runs)
                b = runs[0][1]
                print(f"{name:<16}{t:>9.2f}{t / base_t:>10.2f}{b / 2**20:>9.1f}{b / base_b:>10.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
