"""Merge throughput on a dask LocalCluster, 1 to N worker processes, and the cost of S3 (W1).

Run ``python benchmarks/distributed.py`` (``--help`` for options; ``--size 4096`` for a quick
run). Workload W1: an 8192x8192 canvas, 256-px patches at stride 192 (row-major, edge
patches overhang), two heads of 4 and 1 float32 channels, batches of 32. The patches come
from a small pool of random batches built once per process (outside the timing), so the
"model" costs nothing and the figures are those of the merge; ``--model-ms`` adds simulated
model time per patch (sleeping, as a model waiting for a GPU or a service would).

What the distributed merge costs besides the accumulation itself: the client writes a plan
and the empty output images; every task (a band of ``--band`` rows, see
:func:`cachetree.canvas.cluster.band_tasks`) runs the model also on the patch row that
crosses each of its edges, writes its band of level 0 and of the pyramid levels that lie
inside the band, and fsyncs a marker; finalising builds the coarser levels on the cluster
and publishes the images. Bands share no tile, so no seam parts are written ("parts"
columns). A single process writes the same output.

Variants, each run in its own subprocess:

* ``single``      — one process, ``Canvas(order="row-major")`` with the default budget,
  ``finalize()`` included: the one-machine reference;
* ``cluster-<n>`` — :func:`cachetree.canvas.cluster.merge_distributed` on a ``LocalCluster`` of
  ``n`` worker processes (one thread each), band tasks of ``--band`` rows, finalised with
  the client (its default); the tree on local disk;
* ``local-<N>`` / ``s3-<N>`` — the same with N workers at ``--s3-size``, on local disk and on
  an S3 server (moto, in its own process on loopback), for the overhead of object storage.
  Every S3 run gets a bucket of its own, removed after it: moto lists a bucket by scanning
  all its keys, so the objects of earlier runs would slow the later ones.

Timed: from opening the node to the committed node (cluster start-up and imports excluded),
split into the tasks (on the workers) and finalising. Throughput is the canvas' patches (each
once) per second; scaling is relative to ``cluster-1``. The largest sensible N is the number
of cores: on a 2-core machine N=2 is the honest maximum (more processes only time-share the
cores, which the client and scheduler share too).
"""

from __future__ import annotations

import os
import sys

# This file is called distributed.py: keep its folder off sys.path, or `import distributed`
# would import this script instead of dask.distributed (worker processes inherit sys.path).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Iterator  # noqa: E402

MiB = 1024**2
HEADS = {"a": 4, "b": 1}
_LOCAL_POOL: dict = {}


# -- the workload ---------------------------------------------------------------------------
def _pool_holder() -> dict:
    """Where this process keeps its patch pool: the dask worker, or a module global."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return _LOCAL_POOL
    if not hasattr(worker, "_w1_pool"):
        worker._w1_pool = {}
    return worker._w1_pool


def patch_pool(patch: int, batch: int) -> list:
    """Two random batches per head, made once per process."""
    import numpy as np

    holder = _pool_holder()
    if (patch, batch) not in holder:
        rng = np.random.default_rng(0)
        holder[(patch, batch)] = [
            {
                name: rng.random((batch, patch, patch, c), dtype=np.float32)
                for name, c in HEADS.items()
            }
            for _ in range(2)
        ]
    return holder[(patch, batch)]


class PoolModel:
    """``model(task, boxes)``: a batch from the pool, chosen by the batch's first box.

    ``model_ms`` > 0 adds that many milliseconds per patch, sleeping, like a model that
    waits for an accelerator or a remote service (the CPU stays free for merging).
    """

    def __init__(self, patch: int, stride: int, batch: int, model_ms: float = 0.0):
        self.patch, self.stride, self.batch = patch, stride, batch
        self.model_ms = model_ms

    def __call__(self, task, boxes):
        if self.model_ms:
            time.sleep(self.model_ms * len(boxes) / 1000)
        pool = patch_pool(self.patch, self.batch)
        which = (int(boxes[0, 0]) // self.stride + int(boxes[0, 1]) // self.stride) % 2
        n = len(boxes)
        return {name: values[:n] for name, values in pool[which].items()}

    def warm(self) -> int:
        """Make the pool and import the task's code in this process (as `single` has both
        before its timing starts)."""
        import cachetree.canvas.cluster.run  # noqa: F401

        patch_pool(self.patch, self.batch)
        return os.getpid()


def all_boxes(args: argparse.Namespace, size: int):
    """The cluster's tasks (bands of ``--band`` rows) and every patch box once."""
    from cachetree.canvas.cluster import band_tasks, grid_tasks

    tasks = band_tasks((size, size), args.patch, args.stride, band=args.band, tile=args.tile)
    (once,) = grid_tasks((size, size), args.patch, args.stride, rows_per_task=size)
    return tasks, once.boxes


# -- variants (each in a child process) -----------------------------------------------------
def run_single(args: argparse.Namespace, root: str) -> dict:
    from cachetree import CacheTree
    from cachetree.canvas import Canvas

    _, boxes = all_boxes(args, args.size)
    model = PoolModel(args.patch, args.stride, args.batch, args.model_ms)
    model.warm()
    tree = CacheTree(root)
    start = time.perf_counter()
    with tree.node("w1") as node:
        canvas = Canvas(
            node, (args.size, args.size), HEADS, order="row-major", tile=args.tile, workers=2
        )
        for i in range(0, len(boxes), args.batch):
            batch = boxes[i : i + args.batch]
            canvas.add(model(None, batch), batch)
        stats = canvas.stats
        canvas.finalize()
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "tasks_s": seconds,
        "final_s": 0.0,
        "patches": len(boxes),
        "spilled": stats["spilled_bytes"],
        "parts": 0,
        "workers": 1,
    }


def run_cluster(args: argparse.Namespace, root: str, workers: int, size: int) -> dict:
    from distributed import Client, LocalCluster

    from cachetree import CacheTree
    from cachetree.canvas import CanvasSpec
    from cachetree.canvas.cluster import merge_distributed

    tasks, boxes = all_boxes(args, size)
    spec = CanvasSpec((size, size), HEADS, tile=args.tile)
    model = PoolModel(args.patch, args.stride, args.batch, args.model_ms)
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            memory_limit=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(model.warm)  # pool and imports outside the timing, as for `single`
        tree = CacheTree(root)  # for S3: s3fs imported, as the workers have it
        start = time.perf_counter()
        with tree.node("w1") as node:
            report = merge_distributed(
                node,
                tasks,
                model,
                spec,
                client=client,
                batch_size=args.batch,
                worker_memory_budget=args.worker_budget,
                progress=False,
            )
        seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "tasks_s": report.seconds_tasks,
        "final_s": report.seconds_finalize,
        "patches": len(boxes),
        "spilled": report.spilled_bytes,
        "parts": report.spilled_bytes,
        "workers": len(report.workers),
        "peak_task": report.peak_task_resident_bytes,
    }


def child_main(args: argparse.Namespace) -> None:
    kind, _, n = args.child.partition("-")
    root = args.out
    if kind == "single":
        result = run_single(args, root)
    elif kind == "cluster":
        result = run_cluster(args, root, int(n), args.size)
    elif kind == "local":
        result = run_cluster(args, root, int(n), args.s3_size)
    else:  # s3
        result = run_cluster(args, args.s3_url + "/" + os.path.basename(root), int(n), args.s3_size)
    print(json.dumps(result))


# -- the S3 server ----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    """moto's S3 server in its own process (so it does not share the client's GIL)."""
    port = free_port()
    code = (
        "import time; from moto.server import ThreadedMotoServer; "
        f"ThreadedMotoServer(ip_address='127.0.0.1', port={port}, verbose=False).start(); "
        "time.sleep(10**9)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the moto S3 server did not start")


def _cpu_seconds(process: subprocess.Popen | None) -> float:
    """User and system CPU seconds of ``process`` so far (0 without one)."""
    if process is None:
        return 0.0
    import psutil

    times = psutil.Process(process.pid).cpu_times()
    return times.user + times.system


def s3_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "FSSPEC_S3_ENDPOINT_URL": endpoint,
        "FSSPEC_S3_KEY": "bench",
        "FSSPEC_S3_SECRET": "bench",
    }


@contextlib.contextmanager
def fresh_bucket(fs) -> Iterator[str]:
    """A new bucket's URL; the bucket and everything in it are removed afterwards."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    fs.mkdir(name)
    try:
        yield f"s3://{name}"
    finally:
        fs.rm(name, recursive=True)


# -- driver -----------------------------------------------------------------------------------
def child(
    variant: str, args: argparse.Namespace, env: dict[str, str], s3_url: str | None = None
) -> dict:
    out = tempfile.mkdtemp(prefix=f"dist-{variant}-", dir=args.tmp)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, "--out", out]
    keys = ("size", "s3_size", "patch", "stride", "batch", "tile", "band", "model_ms")
    for key in keys:
        cmd.append(f"--{key.replace('_', '-')}={getattr(args, key)}")
    if args.worker_budget:
        cmd.append(f"--worker-budget={args.worker_budget}")
    if s3_url:
        cmd.append(f"--s3-url={s3_url}")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if done.returncode:
            raise SystemExit(f"{variant} failed:\n{done.stderr[-4000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(out, ignore_errors=True)


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8192, help="canvas edge for the scaling")
    parser.add_argument(
        "--s3-size", type=int, default=4096, help="canvas edge for local disk vs S3"
    )
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--stride", type=int, default=192)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument(
        "--band",
        type=int,
        default=4096,
        help="canvas rows per task, a multiple of --tile (default: band_tasks' default)",
    )
    parser.add_argument(
        "--worker-profile",
        action="store_true",
        help="leave dask's statistical profiler on in the workers (off by default, as "
        "docs/cluster.md advises for merge clusters)",
    )
    parser.add_argument(
        "--model-ms",
        type=float,
        default=0.0,
        help="simulated model time per patch, sleeping (default 0: the merge alone)",
    )
    parser.add_argument(
        "--max-workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="largest cluster (default: the cores, at most 2)",
    )
    parser.add_argument(
        "--worker-budget", default=None, help="accumulator budget per worker (default 1 GiB)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant (median)")
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 comparison")
    parser.add_argument("--tmp", default=None, help="directory for local trees")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--s3-url", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return

    n_max = args.max_workers
    scaling = ["single", *(f"cluster-{n}" for n in range(1, n_max + 1))]
    s3_variants = [] if args.no_s3 else [f"local-{n_max}", f"s3-{n_max}"]
    results: dict[str, list[dict]] = {v: [] for v in scaling + s3_variants}
    env = dict(os.environ)
    if not args.worker_profile:  # see "Settings for a merge cluster" in docs/cluster.md
        env["DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"] = "False"
    moto = fs = None
    if s3_variants:
        import fsspec

        moto, endpoint = start_moto()
        env.update(s3_env(endpoint))
        fs = fsspec.filesystem(
            "s3", endpoint_url=endpoint, key="bench", secret="bench", skip_instance_cache=True
        )
    try:
        for _ in range(args.repeat):  # interleaved, so load changes hit every variant alike
            for variant in scaling + s3_variants:
                with (
                    fresh_bucket(fs) if variant.startswith("s3") else contextlib.nullcontext()
                ) as s3_url:
                    server_cpu = _cpu_seconds(moto)
                    results[variant].append(child(variant, args, env, s3_url))
                    results[variant][-1]["server_cpu_s"] = _cpu_seconds(moto) - server_cpu
                print(f"  {variant}: {results[variant][-1]['seconds']:.1f} s", file=sys.stderr)
    finally:
        if moto is not None:
            moto.kill()
            moto.wait()

    tasks, boxes = all_boxes(args, args.size)
    print(
        f"W1: {args.size}x{args.size} canvas, {len(boxes)} patches of {args.patch}px at "
        f"stride {args.stride}, heads 4+1 float32, batches of {args.batch}, tile {args.tile}; "
        f"{len(tasks)} band tasks of {args.band} rows ({sum(len(t) for t in tasks)} patches "
        f"with those crossing a band edge twice); model {args.model_ms:g} ms "
        f"per patch; worker processes with 1 thread, dask's profiler "
        f"{'on' if args.worker_profile else 'off'}; {os.cpu_count()} cores; median of "
        f"{args.repeat} run(s)"
    )
    base = median(results["cluster-1"], "seconds")
    single = median(results["single"], "seconds")
    print(
        f"{'variant':<11}{'total s':>9}{'tasks s':>9}{'final s':>9}{'patches/s':>11}"
        f"{'x 1 worker':>12}{'x single':>10}{'parts MiB':>11}{'parts %':>9}"
    )
    canvas_bytes = args.size * args.size * sum(HEADS.values()) * 4  # float32 heads
    for variant in scaling:
        t = median(results[variant], "seconds")
        runs = results[variant]
        print(
            f"{variant:<11}{t:>9.1f}{median(runs, 'tasks_s'):>9.1f}"
            f"{median(runs, 'final_s'):>9.1f}{runs[0]['patches'] / t:>11.1f}"
            f"{base / t:>12.2f}{single / t:>10.2f}{runs[0]['parts'] / MiB:>11.0f}"
            f"{100 * runs[0]['parts'] / canvas_bytes:>9.1f}"
        )
    print(
        "(x 1 worker: throughput relative to cluster-1; x single: relative to one process "
        f"without dask. With {os.cpu_count()} cores, {n_max} workers is the most that can "
        "run in parallel. parts: bytes the tasks wrote as spill parts (seams, and anything "
        "over the worker budget), and their share of the canvas' float32 size.)"
    )
    if s3_variants:
        local = median(results[f"local-{n_max}"], "seconds")
        print(
            f"\nlocal disk vs S3 (moto server on loopback, own process): "
            f"{args.s3_size}x{args.s3_size} canvas, {n_max} workers"
        )
        print(
            f"{'storage':<11}{'total s':>9}{'tasks s':>9}{'final s':>9}{'x local':>9}"
            f"{'server CPU s':>14}"
        )
        for variant in s3_variants:
            runs = results[variant]
            t = median(runs, "seconds")
            name = "local" if variant.startswith("local") else "s3 (moto)"
            print(
                f"{name:<11}{t:>9.1f}{median(runs, 'tasks_s'):>9.1f}"
                f"{median(runs, 'final_s'):>9.1f}{t / local:>9.2f}"
                f"{median(runs, 'server_cpu_s'):>14.1f}"
            )
        print(
            "(server CPU: seconds the moto process computed during the run, on the same cores "
            "as the workers and the client.)"
        )
    if os.environ.get("DIST_BENCH_JSON"):
        print(json.dumps(results))


if __name__ == "__main__":
    main()
