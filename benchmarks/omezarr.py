"""Files written, write time and listing time of a canvas in OME-NGFF 0.4 and 0.5 + shards.

Run ``python benchmarks/omezarr.py`` (``--help`` for options). In one invocation it merges
the same two-head canvas (default 32768 x 32768 pixels: a float32 probability head and a
uint8 mask head, 512-px tiles) with the public :class:`~cachetree.canvas.Canvas` API and a
cheap synthetic model (smooth values computed from the patch position, no overlap), once
per format and storage:

* ``0.4`` — OME-NGFF 0.4 on zarr v2, one file per 512x512 chunk;
* ``0.5`` — OME-NGFF 0.5 on zarr v3 (the default), chunks stored in shards one chunk row
  high and up to 16 MiB of pixels wide;

on local disk and on a moto S3 server on loopback (the one the tests use). For each it
reports the files (objects) of the node, the time from the first patch to the committed
node (merge, pyramid, metadata, commit), and the time to list every file of the node from
a fresh filesystem instance. Ratios are 0.5 / 0.4 (below 1: the 0.5 run is smaller or
faster).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def patches(boxes: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """The synthetic model: smooth values from each patch's canvas position."""
    n = len(boxes)
    h = int(boxes[0, 3] - boxes[0, 1])
    w = int(boxes[0, 2] - boxes[0, 0])
    ys = boxes[:, 1, None] + np.arange(h)[None, :]  # (n, h)
    xs = boxes[:, 0, None] + np.arange(w)[None, :]  # (n, w)
    prob = 0.5 + 0.5 * np.sin(ys[:, :, None] / 311.0) * np.cos(xs[:, None, :] / 197.0)
    prob = prob.astype(np.float32)[..., None]
    mask = (prob > 0.5).astype(np.uint8)
    assert prob.shape == (n, h, w, 1)
    return {"prob": prob, "mask": mask}


def merge(root: str, fmt: str, args: argparse.Namespace) -> tuple[float, str]:
    """Merge the canvas into a new node of a tree at ``root``; seconds and node URL."""
    from cachetree import CacheTree
    from cachetree.canvas import Canvas

    size, p = args.size, args.patch
    starts = range(0, size, p)
    boxes = np.array([[x, y, x + p, y + p] for y in starts for x in starts], np.int64)
    start = time.perf_counter()
    tree = CacheTree(root, ngff_format=fmt)
    with tree.node("canvas", params={"format": fmt}) as node:
        canvas = Canvas(
            node,
            (size, size),
            {"prob": 1, "mask": (1, "uint8")},
            order="row-major",
            tile=args.tile,
            workers=args.workers,
            pixel_size=0.25,
            units="micrometer",
            output_stride=4,
        )
        for i in range(0, len(boxes), args.batch):
            batch = boxes[i : i + args.batch]
            canvas.add(patches(batch, size), batch)
        canvas.finalize()
    return time.perf_counter() - start, node.url


def listing(url: str) -> tuple[int, float]:
    """Files under ``url`` and the seconds to list them from a fresh filesystem instance."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, skip_instance_cache=True)
    start = time.perf_counter()
    files = fs.find(path)
    return len(files), time.perf_counter() - start


def run(storage: str, fmt: str, args: argparse.Namespace) -> dict[str, float]:
    if storage == "local":
        base = tempfile.mkdtemp(prefix=f"omezarr-{fmt}-", dir=args.tmp)
        root = str(Path(base) / "tree")
    else:
        import fsspec

        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        fs.mkdir(bucket)
        root = f"s3://{bucket}/tree"
    try:
        seconds, url = merge(root, fmt, args)
        files, list_seconds = listing(url)
    finally:
        if storage == "local":
            shutil.rmtree(base, ignore_errors=True)
        else:
            fs.rm(bucket, recursive=True)
    return {"files": files, "write": seconds, "list": list_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=32768, help="canvas edge (px)")
    parser.add_argument("--patch", type=int, default=1024, help="patch edge = stride (px)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tile", type=int, default=512, help="canvas tile / output chunk")
    parser.add_argument("--workers", type=int, default=2, help="canvas writer threads")
    parser.add_argument("--storage", nargs="+", default=["local", "s3"], choices=["local", "s3"])
    parser.add_argument("--tmp", default=None, help="directory for local outputs")
    args = parser.parse_args()

    from s3server import s3_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the S3 server's request log

    print(
        f"canvas {args.size}x{args.size}, heads prob (float32) + mask (uint8), tile {args.tile}, "
        f"patches {args.patch} px, batches of {args.batch}"
    )
    print(f"{'storage':<8}{'format':<8}{'files':>8}{'write s':>10}{'list s':>10}")
    results: dict[tuple[str, str], dict[str, float]] = {}
    for storage in args.storage:
        with s3_server() if storage == "s3" else _nothing():
            for fmt in ("0.4", "0.5"):
                r = results[storage, fmt] = run(storage, fmt, args)
                print(f"{storage:<8}{fmt:<8}{r['files']:>8}{r['write']:>10.2f}{r['list']:>10.3f}")
                sys.stdout.flush()
    print("ratios 0.5 / 0.4:")
    for storage in args.storage:
        old, new = results[storage, "0.4"], results[storage, "0.5"]
        ratios = ", ".join(f"{k} {new[k] / old[k]:.3f}" for k in ("files", "write", "list"))
        print(f"  {storage:<6} {ratios}")


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    main()
