"""End to end (W2): the whole-slide demo against a naive all-in-RAM run of the same stages.

Run ``python benchmarks/wsi.py`` (``--help`` for options; default 8192 px, where the naive
run still fits in memory). Each variant runs in its own subprocess:

* ``cachetree`` — :func:`cachetree.demo.wsi.run_wsi`: the slide built tile by tile into an
  OME-Zarr pyramid, the tissue mask, the two-head model merged by a canvas with the default
  memory budget, blockwise nuclei labels, density counted by two worker processes, the
  report. Per-stage peak RSS includes the worker processes.
* ``naive`` — the same stages on whole numpy arrays: the slide made in one piece, the mask
  from a strided subsample, the model's weighted sums and weights accumulated in full-size
  float32 arrays then divided, :func:`scipy.ndimage.label` on the whole mask, centroids by
  ``bincount``; the slide and model outputs are written to Zarr arrays (same compressor and
  512-px chunks), without pyramids.

Printed per stage: wall time, CPU seconds, megapixels per second and the peak RSS reached
by the end of the stage; then the ratios cachetree / naive of the totals (time below 1 is
faster, RSS below 1 is smaller). Peak RSS of the naive variant is its ``VmHWM``. The machine
load (``os.getloadavg``) is printed with the figures: on a shared machine the wall times
move with it, the CPU seconds much less.
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


def vm_hwm() -> int:
    """Peak resident bytes of this process (``VmHWM``)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def run_cachetree(args: argparse.Namespace, out: Path) -> dict:
    from cachetree.demo.wsi import WsiParams, run_wsi

    _, clock = run_wsi(str(out), WsiParams(size=args.size), report=lambda line: None)
    figures = clock.to_json()
    return {"stages": figures["stages"], "peak_rss": figures["peak_rss"]}


class _Stages:
    def __init__(self, size: int):
        self.size, self.stages = size, []

    def run(self, name: str, func, *args, pixels: bool = True):
        start, cpu = time.perf_counter(), time.process_time()
        result = func(*args)
        seconds = time.perf_counter() - start
        self.stages.append(
            {
                "name": name,
                "seconds": seconds,
                "cpu_seconds": time.process_time() - cpu,
                "peak_rss": vm_hwm(),
                "megapixels_per_s": self.size**2 / 1e6 / seconds if pixels else 0.0,
            }
        )
        return result


def run_naive(args: argparse.Namespace, out: Path) -> dict:
    import numpy as np
    import zarr
    from scipy import ndimage

    from cachetree.demo.model import HEADS, tissue_boxes
    from cachetree.demo.quick import patch_model
    from cachetree.demo.slide import SyntheticSlide, rgb_to_stains
    from cachetree.demo.wsi import WsiParams
    from cachetree.images.policy import compressor

    p = WsiParams(size=args.size)
    n = p.size
    stages = _Stages(n)

    def save(name: str, array) -> None:
        target = zarr.create_array(
            str(out / f"{name}.zarr"),
            shape=array.shape,
            chunks=(1, 512, 512),
            dtype=array.dtype,
            compressors=compressor(array.dtype),
            zarr_format=2,
        )
        target[:] = array

    def slide():
        rgb = SyntheticSlide(n, p.seed).region(0, n, 0, n)
        save("slide", rgb)
        return rgb

    def tissue(rgb):
        factor = p.mask_factor
        small = np.moveaxis(rgb[:, factor // 2 :: factor, factor // 2 :: factor], 0, -1)
        return (rgb_to_stains(small).sum(axis=-1) > p.tissue_density), factor

    def model(rgb, mask, factor):
        heads = {name: np.zeros((n, n, h.channels), np.float32) for name, h in HEADS.items()}
        weight = np.zeros((n, n, 1), np.float32)
        from cachetree.canvas import weight_window

        window = weight_window("gaussian", (p.patch, p.patch))[..., None]
        padded = np.pad(rgb, ((0, 0), (0, p.patch), (0, p.patch)), constant_values=255)
        for row in tissue_boxes(mask, factor, n, p.patch, p.stride):
            for start in range(0, len(row), p.batch):
                boxes = row[start : start + p.batch]
                pixels = np.stack(
                    [np.moveaxis(padded[:, y0:y1, x0:x1], 0, -1) for x0, y0, x1, y1 in boxes]
                )
                outputs = patch_model(pixels)
                for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
                    h, w = min(y1, n) - y0, min(x1, n) - x0
                    for name, value in outputs.items():
                        heads[name][y0 : y0 + h, x0 : x0 + w] += (value[i] * window)[:h, :w]
                    weight[y0 : y0 + h, x0 : x0 + w] += window[:h, :w]
        out_arrays = {}
        for name, acc in heads.items():
            np.divide(acc, weight, out=acc, where=weight > 0)
            out_arrays[name] = np.rint(np.moveaxis(acc, -1, 0) * 255).astype(np.uint8)
            save(name, out_arrays[name])
            del acc
        return out_arrays

    def nuclei(outputs):
        smooth = ndimage.gaussian_filter(outputs["stains"][0].astype(np.float32), p.sigma)
        mask = (smooth > p.nuclei_threshold * 255) & (outputs["foreground"][0] > 127)
        disk = ndimage.iterate_structure(ndimage.generate_binary_structure(2, 1), 2)
        labels, count = ndimage.label(ndimage.binary_opening(mask, structure=disk))
        return labels, count

    def density(labels):
        ids = labels.ravel()
        keep = np.flatnonzero(ids)
        ys, xs = np.divmod(keep, n)
        count = np.bincount(ids[keep])
        present = count > 0
        cy = np.bincount(ids[keep], weights=ys)[present] / count[present] // p.region
        cx = np.bincount(ids[keep], weights=xs)[present] / count[present] // p.region
        grid = np.zeros((-(-n // p.region),) * 2, np.uint32)
        np.add.at(grid, (cy.astype(int), cx.astype(int)), 1)
        return grid

    rgb = stages.run("slide", slide)
    mask, factor = stages.run("tissue", tissue, rgb, pixels=False)
    outputs = stages.run("model", model, rgb, mask, factor)
    del rgb
    labels, count = stages.run("nuclei", nuclei, outputs)
    grid = stages.run("density", density, labels)
    assert int(grid.sum()) == count
    return {"stages": stages.stages, "peak_rss": vm_hwm()}


def child(variant: str, args: argparse.Namespace) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"wsi-{variant}-", dir=args.tmp))
    cmd = [sys.executable, __file__, "--child", variant, "--out", str(out), f"--size={args.size}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"{variant} failed:\n{done.stderr}")
        return json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _table(variant: str, result: dict) -> None:
    print(f"\n{variant}")
    print(f"  {'stage':<9}{'seconds':>9}{'CPU s':>9}{'Mpx/s':>9}{'peak RSS':>12}")
    for s in result["stages"]:
        print(
            f"  {s['name']:<9}{s['seconds']:9.1f}{s['cpu_seconds']:9.1f}"
            f"{s['megapixels_per_s']:9.2f}{s['peak_rss'] / MiB:9.0f} MiB"
        )
    total = sum(s["seconds"] for s in result["stages"])
    print(f"  {'total':<9}{total:9.1f}{'':18}{result['peak_rss'] / MiB:9.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8192, help="slide edge (px)")
    parser.add_argument(
        "--no-naive", action="store_true", help="skip the naive run (sizes where it cannot fit)"
    )
    parser.add_argument("--tmp", default=None, help="directory for outputs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        run = run_naive if args.child == "naive" else run_cachetree
        print(json.dumps(run(args, Path(args.out))))
        return

    load = os.getloadavg()
    print(f"W2 at {args.size} x {args.size} px; load average {load[0]:.1f} {load[1]:.1f}")
    variants = ["cachetree"] if args.no_naive else ["cachetree", "naive"]
    results = {}
    for variant in variants:
        results[variant] = child(variant, args)
        _table(variant, results[variant])
    if "naive" in results:
        mine, naive = results["cachetree"], results["naive"]
        seconds = [sum(s["seconds"] for s in r["stages"]) for r in (mine, naive)]
        print(
            f"\ncachetree / naive: time {seconds[0] / seconds[1]:.2f}x, "
            f"peak RSS {mine['peak_rss'] / naive['peak_rss']:.2f}x"
        )
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
