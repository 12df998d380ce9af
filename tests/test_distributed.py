"""Merging on a real dask.distributed cluster: worker processes, local disk and S3 (moto).

One ``LocalCluster`` of two worker processes (one thread each) serves the module. It starts
after the S3 server fixture, so the workers inherit ``FSSPEC_S3_*`` and reach it, and with
the repository root on ``PYTHONPATH``, so they import the test model from
``tests.workers.models``. Every distributed result is compared with a single-process
:class:`~cachetree.canvas.Canvas` merge of the same patches.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import distributed
import numpy as np
import pytest

from cachetree import CacheTree, OpenMode, Status
from cachetree.canvas import SPILL_KIND, Canvas, CanvasSpec, WorkerCanvas
from cachetree.canvas.cluster import (
    IncompleteRunError,
    band_tasks,
    finalize_canvas,
    grid_tasks,
    is_distributed_canvas,
    merge_distributed,
    run_status,
    task_status,
)
from cachetree.canvas.cluster import output as cluster_output
from cachetree.canvas.cluster.ownership import SEAM, segment_owners
from cachetree.canvas.cluster.plan import discard_run
from cachetree.canvas.preview import PreviewAccumulator
from cachetree.canvas.view import open_canvas, open_canvas_pyramid
from cachetree.cli import main as cli_main
from cachetree.errors import IncompatibleError, InvalidDataError, KeyLookupError
from cachetree.fs.location import Location
from cachetree.images.ngff import open_image
from cachetree.tree.node import Node
from cachetree.tree.parts import list_parts, parts_location, remove_part
from tests.workers import models

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SHAPE = (300, 420)
PATCH, STRIDE = 48, 36
TASKS = grid_tasks(SHAPE, PATCH, STRIDE)  # 8 tasks, one patch row (12 patches) each
SPEC = CanvasSpec(SHAPE, models.HEADS, weights="gaussian", tile=64, min_size=64)
# Larger tiles on S3, where every file costs requests (the values do not depend on them).
SPEC_S3 = CanvasSpec(SHAPE, models.HEADS, weights="gaussian", tile=128, min_size=64)


def tile_bytes(spec: CanvasSpec) -> int:
    return spec.tile * spec.tile * 4 * (1 + 3 + 1)  # weight + 3 + 1 channels, float32


# Budgets below what a task's rows need (7-14 tiles of 64, 4-8 of 128): it spills all along.
BUDGETS = {"local": (SPEC, 4 * tile_bytes(SPEC)), "s3": (SPEC_S3, 2 * tile_bytes(SPEC_S3))}
PARAMS = {"model": "tests.workers.models", "v": 1}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def client(s3_endpoint):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", _env()["PYTHONPATH"])
        cluster = distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            env={"PYTHONPATH": _env()["PYTHONPATH"]},
        )
    with cluster, distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def expected(tmp_path_factory):
    """Every pyramid level of each head, merged by one Canvas in this process."""
    tree = CacheTree(tmp_path_factory.mktemp("reference"))
    with tree.node("merge") as node:
        canvas = Canvas(node, SHAPE, models.HEADS, order="row-major", **_kwargs())
        boxes = np.concatenate([t.boxes for t in TASKS])
        for i in range(0, len(boxes), 32):
            canvas.add(models.model(None, boxes[i : i + 32]), boxes[i : i + 32])
        canvas.finalize()
    return {h: [np.asarray(a) for a in node.open_image(h)] for h in models.HEADS}


def _kwargs() -> dict:
    kwargs = SPEC.canvas_kwargs()
    kwargs.pop("order")
    return kwargs


def assert_matches(node_loc: Location, expected) -> None:
    for head, levels in expected.items():
        got = open_image(node_loc.join(f"{head}.ome.zarr"))
        assert len(got) == len(levels)
        for level, want in zip(got, levels, strict=True):
            np.testing.assert_allclose(np.asarray(level), want, rtol=1e-5, atol=1e-5)


def parts_left(loc: Location) -> list[str]:
    root = parts_location(loc)
    loc.fs.invalidate_cache(root.path)
    return root.ls()


def unlisted_spills(loc: Location) -> list[str]:
    """Spill parts no task marker names (attempts that failed or were killed)."""
    loc.fs.invalidate_cache(parts_location(loc).path)
    parts = list_parts(loc)
    listed = {n for p in parts if p.kind == "canvas-task" for n in p.meta["spill_parts"]}
    return sorted(p.name for p in parts if p.kind == SPILL_KIND and p.name not in listed)


def assert_preview_of_everything(loc: Location, spec: CanvasSpec, scratch: Path) -> None:
    """While not finalised, the node shows the preview a single worker canvas that merged
    every patch would have: the tasks' block sums, summed by the client."""
    pyramid = open_canvas_pyramid(loc)
    assert pyramid.state.merged == 1.0 and pyramid.state.preview is not None
    factor = pyramid.state.preview["factor"]
    single = WorkerCanvas(Location.from_url(scratch), spec, part_prefix="all", preview=factor)
    boxes = np.concatenate([t.boxes for t in TASKS])
    for i in range(0, len(boxes), 32):
        single.add(models.model(None, boxes[i : i + 32]), boxes[i : i + 32])
    single.flush_parts()
    reference = PreviewAccumulator(spec, factor)
    reference.add_reached(*single.preview_reached())
    for head, levels in pyramid.levels.items():
        assert len(levels) > int(math.log2(factor))  # level 0, enlarged levels, the preview
        got = np.asarray(levels[int(math.log2(factor))])
        want = reference.levels(head)[0]
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-6)


def wait_idle(client, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while any(client.processing().values()):
        assert time.monotonic() < deadline, "the cluster did not go idle"
        time.sleep(0.05)


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    """Root URL, canvas spec and worker memory budget for each storage."""
    if request.param == "local":
        return (str(tmp_path / "tree"), *BUDGETS["local"])
    return (request.getfixturevalue("s3_root") + "/tree", *BUDGETS["s3"])


def test_cluster_merge_equals_single_process(client, expected, storage, tmp_path):
    """Two tasks fail once after spilling; dask retries them; orphans never count."""
    root, spec, budget = storage
    tree = CacheTree(root)
    flags = tmp_path / "flags"
    flags.mkdir()
    model = functools.partial(
        models.flaky_model, flags=str(flags), fail=("rows-2", "rows-5"), sleep=0.05
    )
    node = tree.node("merge", params=PARAMS).open()
    report = merge_distributed(
        node,
        TASKS,
        model,
        spec,
        client=client,
        batch_size=4,
        worker_memory_budget=budget,
        retries=2,
        finalize=False,
        progress=False,
    )
    assert (report.tasks, report.computed, report.skipped) == (8, 8, 0)
    assert report.patches == sum(len(t) for t in TASKS)
    assert len(report.workers) == 2  # both worker processes merged
    assert report.spill_parts > 2 * len(TASKS)  # the budget forced spilling
    assert report.task_memory_budget == budget
    # bounded: the budget, plus the tiles of the patch being added (up to 4)
    assert report.peak_task_resident_bytes <= budget + 4 * tile_bytes(spec)
    orphans = unlisted_spills(node.location)
    assert {n.split("-")[2] for n in orphans} == {"2", "5"}  # task-rows-<i>-<attempt>-<seq>
    assert sorted(os.listdir(flags)) == ["rows-2", "rows-5"]
    assert_preview_of_everything(node.location, spec, tmp_path / "reference")

    infos = finalize_canvas(node)
    assert set(infos) == set(models.HEADS)
    assert node.status is Status.COMMITTED
    assert_matches(node.location, expected)
    assert ".cachetree-parts" not in node.location.ls()
    canvas_json = node.load_json("canvas")
    assert canvas_json["shape"] == list(SHAPE) and set(canvas_json["images"]) == set(models.HEADS)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_band_tasks_write_the_output_themselves(
    client, expected, where, tmp_path, request, monkeypatch
):
    """Band tasks own their bands: no seam parts, finalising sums nothing and builds the
    pyramids on the cluster; a task failing after writing some of its band is retried."""
    root = str(tmp_path / "tree") if where == "local" else request.getfixturevalue("s3_root")
    spec, budget = BUDGETS[where]
    tasks = band_tasks(SHAPE, PATCH, STRIDE, band=128, tile=spec.tile)
    assert [t.region for t in tasks] == [(0, 0, 420, 128), (0, 128, 420, 256), (0, 256, 420, 300)]
    flags = tmp_path / "flags"
    flags.mkdir()
    model = functools.partial(models.flaky_model, flags=str(flags), fail=(tasks[1].id,))
    node = CacheTree(root).node("merge", params=PARAMS).open()
    report = merge_distributed(
        node,
        tasks,
        model,
        spec,
        client=client,
        batch_size=4,
        worker_memory_budget=budget,
        retries=1,
        finalize=False,
        progress=False,
    )
    assert sorted(os.listdir(flags)) == [tasks[1].id]  # it failed once, after some rows
    assert (report.computed, report.spill_parts) == (3, 0)  # what the budget spilled came back
    rows = -(-SHAPE[0] // spec.tile)
    assert report.shards == rows * sum(models.HEADS.values())  # a shard per row and channel
    # before finalising, a viewer reads the bands from the output images
    for head, view in open_canvas(node).items():
        np.testing.assert_allclose(np.asarray(view), expected[head][0], rtol=1e-5, atol=1e-5)
    progress = run_status(node).tasks
    assert [(t.id, t.done) for t in progress] == [(t.id, True) for t in tasks]

    # These levels are far too small for a cluster round: locally they are made here; on S3
    # every level is sent to the workers, as large ones would be.
    if where == "s3":
        monkeypatch.setattr(cluster_output, "CLUSTER_LEVEL_BYTES", 0)
    with distributed.get_task_stream(client) as stream:
        finalize_canvas(node, client=client)
    assert node.status is Status.COMMITTED
    assert_matches(node.location, expected)
    built = [task["key"] for task in stream.data if "_downsample_group" in str(task["key"])]
    if where == "s3":
        assert len(built) >= len(models.HEADS)  # the coarse levels were built by the workers
    else:
        assert built == []


def test_finalising_band_tasks_on_s3_copies_no_image_data(client, expected, s3_root):
    """The band tasks write level 0 in place in the node: finalising writes the metadata
    and the coarse levels no task could make, and never puts a level-0 object (the bucket
    keeps every version of every object, so a rewrite or a copy would show)."""
    import boto3

    bucket = s3_root.removeprefix("s3://")
    s3 = boto3.client("s3", endpoint_url=os.environ["FSSPEC_S3_ENDPOINT_URL"])
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})

    def level0_versions() -> set[tuple[str, str]]:
        pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket)
        return {
            (v["Key"], v["VersionId"])
            for page in pages
            for v in page.get("Versions", [])
            if ".ome.zarr/0/c/" in v["Key"] and "/canvas-staging/" not in v["Key"]  # preview
        }

    tasks = band_tasks(SHAPE, PATCH, STRIDE, band=128, tile=SPEC_S3.tile)
    node = CacheTree(s3_root).node("merge", params=PARAMS).open()
    merge_distributed(
        node, tasks, models.model, SPEC_S3, client=client, finalize=False, progress=False
    )
    before = level0_versions()
    assert {key.split("/")[1] for key, _ in before} == {f"{h}.ome.zarr" for h in models.HEADS}
    finalize_canvas(node, client=client)
    assert node.status is Status.COMMITTED
    assert level0_versions() == before
    assert_matches(node.location, expected)


def test_output_images_are_hidden_until_the_commit_and_go_with_a_discarded_run(
    client, expected, tmp_path
):
    from cachetree.napari._listing import node_items

    tasks = band_tasks(SHAPE, PATCH, STRIDE, band=128, tile=SPEC.tile)
    heads = {f"{h}.ome.zarr" for h in models.HEADS}
    node = CacheTree(tmp_path / "tree").node("merge", params=PARAMS).open()
    merge_distributed(
        node, tasks, models.model, SPEC, client=client, finalize=False, progress=False
    )
    assert heads <= set(os.listdir(tmp_path / "tree" / "merge"))  # written in place...
    assert node.item_names() == [] and node_items(node) == []  # ...not the node's items yet
    discard_run(node.location)
    assert not heads & set(os.listdir(tmp_path / "tree" / "merge"))

    merge_distributed(node, tasks, models.model, SPEC, client=client, progress=False)
    assert node.status is Status.COMMITTED
    assert set(node.item_names()) == {*heads, "canvas.json"}
    assert_matches(node.location, expected)
    assert ".cachetree-parts" not in parts_left(node.location)


def test_a_finalize_stopped_before_its_commit_is_run_again(client, expected, tmp_path, monkeypatch):
    """Finalising stops after writing the images' metadata, before the commit: the node
    opened again keeps the images (claimed, still hidden) and a new call finishes it."""
    tasks = band_tasks(SHAPE, PATCH, STRIDE, band=128, tile=SPEC.tile)
    tree = CacheTree(tmp_path / "tree")
    node = tree.node("merge", params=PARAMS).open()

    class Stopped(Exception):
        pass

    def stop(self):
        raise Stopped

    with monkeypatch.context() as patched:
        patched.setattr(Node, "commit", stop)
        with pytest.raises(Stopped):
            merge_distributed(node, tasks, models.model, SPEC, client=client, progress=False)
    node.abandon()

    node = tree.node("merge", params=PARAMS).open()
    assert node.open_mode is OpenMode.RESUMED
    assert node.item_names() == []  # canvas.json was the node's own; the images are claimed
    report = merge_distributed(node, tasks, models.model, SPEC, client=client, progress=False)
    assert (report.computed, report.skipped) == (0, len(tasks))
    assert node.status is Status.COMMITTED
    assert set(node.item_names()) == {*(f"{h}.ome.zarr" for h in models.HEADS), "canvas.json"}
    assert_matches(node.location, expected)


def test_a_killed_band_worker_leaves_its_band_to_the_retry(client, expected, tmp_path):
    """SIGKILL the worker of a band task once it has written shards of its band: the
    retry writes them again and the result equals the clean one."""
    tasks = band_tasks(SHAPE, PATCH, STRIDE, band=128, tile=SPEC.tile)
    node = CacheTree(tmp_path / "tree").node("merge", params=PARAMS).open()
    pids = client.run(os.getpid)
    model = functools.partial(models.model, sleep=0.2)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["report"] = merge_distributed(
                node, tasks, model, SPEC, client=client, batch_size=3, progress=False
            )
        except BaseException as exc:  # reported by the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    level0 = tmp_path / "tree" / "merge" / "mask.ome.zarr"
    victim = None
    deadline = time.monotonic() + 60
    while victim is None and time.monotonic() < deadline:
        time.sleep(0.05)
        shards = list((level0 / "0" / "c").glob("*/*")) if (level0 / "0" / "c").exists() else []
        busy = [address for address, keys in client.processing().items() if keys]
        if shards and busy:
            victim = busy[0]
    assert victim is not None, "no band was seen half written"
    os.kill(pids[victim], signal.SIGKILL)
    thread.join(180)
    assert not thread.is_alive()
    if "error" in outcome:
        raise outcome["error"]
    assert node.status is Status.COMMITTED
    assert_matches(node.location, expected)
    client.wait_for_workers(2, timeout=60)
    assert len(set(client.run(os.getpid).values()) - set(pids.values())) == 1  # restarted


def test_a_plan_mixes_owned_segments_and_seams(client, expected, tmp_path):
    """Tasks of several patch rows own the tile rows only they reach; the rows two tasks
    reach are seams, summed from parts at the end: the result is the same."""
    tasks = grid_tasks(SHAPE, PATCH, STRIDE, rows_per_task=4)
    with CacheTree(tmp_path / "tree").node("merge", params=PARAMS) as node:
        report = merge_distributed(node, tasks, models.model, SPEC, client=client, progress=False)
        owners = segment_owners(tasks, SHAPE, SPEC.tile, 1)
    assert (owners >= 0).any() and (owners == SEAM).any()
    assert report.shards > 0 and report.spill_parts > 0
    assert_matches(node.location, expected)


def test_killed_worker_does_not_corrupt_the_node(client, expected, s3_root):
    """SIGKILL a worker process while it merges a task; the result equals the clean one."""
    tree = CacheTree(s3_root + "/tree")
    node = tree.node("merge", params=PARAMS).open()
    pids = set(client.run(os.getpid).values())
    assert len(pids) == 2
    model = functools.partial(models.model, sleep=0.25)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["report"] = merge_distributed(
                node,
                TASKS,
                model,
                SPEC_S3,
                client=client,
                batch_size=3,
                worker_memory_budget=BUDGETS["s3"][1],
                finalize=False,
                progress=False,
            )
        except BaseException as exc:  # reported by the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    # Kill the writer of a spill part whose task has no marker yet: it is mid-task.
    victim = None
    deadline = time.monotonic() + 30
    while victim is None and time.monotonic() < deadline:
        time.sleep(0.05)
        node.location.fs.invalidate_cache(parts_location(node.location).path)
        parts = list_parts(node.location)
        marked = {p.meta["task"] for p in parts if p.kind == "canvas-task"}
        for p in parts:
            task_id = "-".join(p.name.split("-")[1:3])  # task-<rows-i>-<attempt>-<seq>
            if p.kind == SPILL_KIND and task_id not in marked and p.writer["pid"] in pids:
                victim = p
                break
    assert victim is not None, "no task was seen mid-run"
    os.kill(victim.writer["pid"], signal.SIGKILL)
    thread.join(120)
    assert not thread.is_alive()
    if "error" in outcome:
        raise outcome["error"]
    report = outcome["report"]
    assert report.computed + report.skipped == len(TASKS)

    killed_attempt = victim.name.split("-")[3]
    task_id = "-".join(victim.name.split("-")[1:3])
    done = task_status(node, TASKS)
    assert set(done) == {t.id for t in TASKS}
    assert done[task_id].meta["attempt"] != killed_attempt  # the lost task was recomputed
    assert victim.name in unlisted_spills(node.location)  # and the killed attempt's parts
    finalize_canvas(node)  # are ignored by the merge...
    assert node.status is Status.COMMITTED
    assert_matches(node.location, expected)
    assert ".cachetree-parts" not in parts_left(node.location)  # ...and removed
    client.wait_for_workers(2, timeout=60)
    assert len(set(client.run(os.getpid).values()) - pids) == 1  # the nanny restarted it


def test_rerun_runs_only_what_is_missing(client, expected, tmp_path):
    tree = CacheTree(tmp_path / "tree")
    node = tree.node("merge", params=PARAMS).open()
    broken = functools.partial(models.broken_model, broken="rows-3")
    with pytest.raises(RuntimeError, match="task rows-3 is broken") as info:
        merge_distributed(node, TASKS, broken, SPEC, client=client, retries=0, progress=False)
    assert any("runs only the others" in note for note in info.value.__notes__)
    assert node.status is Status.OPEN
    wait_idle(client)

    first = merge_distributed(
        node, TASKS, models.model, SPEC, client=client, finalize=False, progress=False
    )
    assert first.computed + first.skipped == 8 and "rows-3" in {r.id for r in first.results}
    node.abandon()

    # damage two finished tasks: a lost marker, and a marker naming a lost part
    loc = node.location
    parts = {p.name: p for p in list_parts(loc)}
    remove_part(parts["canvas-task-rows-1"])
    remove_part(parts[parts["canvas-task-rows-4"].meta["spill_parts"][0]])

    node = tree.node("merge", params=PARAMS).open()
    assert node.open_mode is OpenMode.RESUMED  # same params: the parts are kept
    with pytest.raises(IncompleteRunError, match="2 of 8 tasks"):
        finalize_canvas(node, commit=False)
    report = merge_distributed(node, TASKS, models.model, SPEC, client=client, progress=False)
    assert (report.computed, report.skipped) == (2, 6)
    assert {r.id for r in report.results} == {"rows-1", "rows-4"}
    assert node.status is Status.COMMITTED
    assert_matches(node.location, expected)
    assert tree.node("merge", params=PARAMS).open().open_mode is OpenMode.REUSED


def test_cli_and_napari_on_s3(client, expected, s3_root, tmp_path):
    """A node whose parts live on S3: listed and finalised by the command line (other
    processes), shown by the napari reader while in progress and once finalised."""
    from cachetree.napari._layers import canvas_in_progress
    from cachetree.napari._reader import get_reader

    root = s3_root + "/tree"
    tree = CacheTree(root)
    node = tree.node("merge", params=PARAMS).open()
    merge_distributed(
        node, TASKS, models.model, SPEC_S3, client=client, finalize=False, progress=False
    )
    node.abandon()  # let another process finalise it

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", *args], env=_env(), capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    listing = json.loads(cli("cachetree.cli", "ls", root, "--json"))
    states = {row["path"]: row["state"] for row in listing}
    assert states["merge"] == "has parts"
    status = cli("cachetree.distributed", "status", f"{root}/merge")
    assert "tasks done:   8 of 8" in status
    assert is_distributed_canvas(f"{root}/merge")

    # napari, headless: the reader shows the canvas in progress, normalised lazily
    node.location.fs.invalidate_cache()  # a fresh viewer sees what the workers wrote
    state = canvas_in_progress(node)
    assert state is not None and (state.tasks_done, state.tasks_total) == (8, 8)
    reader = get_reader(f"{root}/merge")
    assert reader is not None
    layers = {
        (kw["metadata"] if isinstance(kw["metadata"], dict) else kw["metadata"][0])[
            "canvas_head"
        ]: data
        for data, kw, _ in reader(f"{root}/merge")
    }
    for head, levels in expected.items():
        level0 = layers[head][0] if isinstance(layers[head], list) else layers[head]
        np.testing.assert_allclose(np.asarray(level0), levels[0], rtol=1e-5, atol=1e-5)

    out = cli("cachetree.cli", "combine", f"{root}/merge", "-q")
    assert "finalised canvas" in out and "prob" in out
    info = cli("cachetree.cli", "info", f"{root}/merge")
    assert "status:      committed" in info and "prob.ome.zarr" in info
    assert ".cachetree-parts" not in parts_left(node.location)
    assert not is_distributed_canvas(f"{root}/merge")
    node.location.fs.invalidate_cache()
    layers = reader(f"{root}/merge")
    shown = {kw["name"] if isinstance(kw["name"], str) else kw["name"][0] for _, kw, _ in layers}
    assert any("mask" in n for n in shown) and any("prob" in n for n in shown)
    assert_matches(node.location, expected)

    # keyed parts written by cluster workers into an S3 node, combined by `cachetree combine`
    from cachetree.results import add_part, set_combiner

    keyed = tree.node("density", params={"k": 1}).open()
    set_combiner(keyed, "canvas-mean")
    keyed.abandon()
    rng = np.random.default_rng(0)
    sums = [rng.random((2, 16, 16)).astype(np.float32) for _ in range(4)]
    weights = [rng.random((16, 16)).astype(np.float32) + 0.5 for _ in range(4)]
    futures = [
        client.submit(add_part, keyed.url, i % 2, {"sum": s, "weight": w}, name=f"w{i}")
        for i, (s, w) in enumerate(zip(sums, weights, strict=True))
    ]
    distributed.wait(futures)
    assert all(f.status == "finished" for f in futures)
    out = cli("cachetree.cli", "combine", keyed.url, "-q")
    assert "combined 4 parts into 2 keys" in out
    keyed.location.fs.invalidate_cache()
    results = tree.node("density").keyed("results")
    for key in (0, 1):
        want = (sums[key] + sums[key + 2]) / (weights[key] + weights[key + 2])
        np.testing.assert_allclose(results[key], want, rtol=1e-6)


def test_cli_status_and_partial_combine(client, tmp_path, capsys):
    """`cachetree canvas-status` counts the tasks done; `cachetree combine` finalises only
    a complete run, unless given --partial."""
    tree = CacheTree(tmp_path / "tree")
    node = tree.node("merge", params=PARAMS).open()
    merge_distributed(
        node, TASKS[:2], models.model, SPEC, client=client, finalize=False, progress=False
    )
    node.abandon()
    remove_part({p.name: p for p in list_parts(node.location)}["canvas-task-rows-1"])
    assert cli_main(["canvas-status", node.url]) == 0
    out = capsys.readouterr().out
    assert "tasks done:   1 of 2" in out and "canvas:       300x420" in out
    assert cli_main(["-q", "combine", node.url]) == 2
    assert "1 of 2 tasks" in capsys.readouterr().err
    assert node.status is Status.OPEN
    assert cli_main(["-q", "combine", node.url, "--partial"]) == 0
    assert "finalised canvas" in capsys.readouterr().out
    assert node.status is Status.COMMITTED
    assert cli_main(["canvas-status", node.url]) == 0
    assert "no distributed canvas plan" in capsys.readouterr().out


def test_changed_canvas_discards_the_old_parts(client, expected, tmp_path, caplog):
    tree = CacheTree(tmp_path / "tree")
    node = tree.node("merge", params=PARAMS).open()
    other = CanvasSpec(SHAPE, models.HEADS, weights="uniform", tile=64, min_size=64)
    first = merge_distributed(
        node, TASKS, models.model, other, client=client, finalize=False, progress=False
    )
    assert first.computed == 8
    report = merge_distributed(node, TASKS, models.model, SPEC, client=client, progress=False)
    assert (report.computed, report.skipped) == (8, 0)  # nothing of the other canvas counts
    assert "another spec" in caplog.text
    assert_matches(node.location, expected)


def test_process_private_storage_is_refused(client):
    tree = CacheTree(f"memory://cachetree-{os.getpid()}-{time.monotonic_ns()}")
    node = tree.node("merge").open()
    with pytest.raises(InvalidDataError, match="worker processes cannot see"):
        merge_distributed(node, TASKS, models.model, SPEC, client=client, progress=False)
    node.abandon()


def test_old_module_paths_export_the_cluster_api():
    import cachetree.canvas.cluster as cluster
    import cachetree.canvas.distributed as old
    import cachetree.distributed as oldest

    for module in (old, oldest):
        for name in module.__all__:
            assert getattr(module, name) is getattr(cluster, name, None) or name == "CanvasSpec"
        assert module.CanvasSpec is CanvasSpec
    assert set(cluster.__all__) <= set(old.__all__)


def test_worker_canvas_and_adopt(expected, tmp_path):
    """The Canvas pieces underneath, in one process: worker canvases, then one that adopts."""
    tree = CacheTree(tmp_path / "tree")
    node = tree.node("merge").open()
    kwargs = _kwargs()
    with pytest.raises(InvalidDataError, match="part_prefix"):
        Canvas(node.url, SHAPE, models.HEADS, role="worker", **kwargs)
    names = []
    for i, task in enumerate(TASKS):
        worker = Canvas(
            node.url,
            SHAPE,
            models.HEADS,
            role="worker",
            part_prefix=f"w{i}",
            order="row-major",
            memory_budget=4 * tile_bytes(SPEC),
            **kwargs,
        )
        with pytest.raises(InvalidDataError, match="worker canvas"):
            worker.checkpoint()
        worker.add(models.model(task, task.boxes), task.boxes)
        names += worker.flush_parts()
        with pytest.raises(InvalidDataError, match="worker canvas"):
            worker.finalize()
    assert len(names) > len(TASKS) and all(n.startswith("w") for n in names)
    assert not os.path.exists(f"{node.location.path}/prob.ome.zarr")  # workers write no image

    wrong = CanvasSpec(SHAPE, models.HEADS, weights="uniform", tile=64).canvas_kwargs()
    wrong.pop("order")
    with pytest.raises(IncompatibleError, match="another spec"):
        Canvas(node, SHAPE, models.HEADS, adopt=names, **wrong)
    with pytest.raises(KeyLookupError, match="not in"):
        Canvas(node, SHAPE, models.HEADS, adopt=[*names, "w9-00000000"], **kwargs)
    canvas = Canvas(node, SHAPE, models.HEADS, adopt=names, **kwargs)
    with pytest.raises(InvalidDataError, match="flush_parts"):
        canvas.flush_parts()
    canvas.finalize()
    assert node.status is Status.COMMITTED
    assert_matches(node.location, expected)
    assert parts_left(node.location) == []  # adopted parts go once the node is committed


def test_a_task_calls_the_model_on_the_next_batches_while_it_merges_one():
    """The model runs MODEL_AHEAD batches ahead, on a thread of its own: while the merge holds
    batch k, the calls for batches k + 1 to k + MODEL_AHEAD have started; every batch comes
    with its own patches, in order, the calls never overlap each other, and they see the
    caller's context variables (``distributed.get_worker()`` reads one)."""
    import contextvars

    from cachetree.canvas.cluster.run import MODEL_AHEAD, _model_ahead

    assert MODEL_AHEAD >= 2
    n = MODEL_AHEAD + 3
    boxes = np.arange((2 * n - 1) * 4, dtype=np.int64).reshape(2 * n - 1, 4)  # batches of 2
    started = [threading.Event() for _ in range(n)]
    running = []
    caller = contextvars.ContextVar("caller")
    caller.set("the task")

    def model(task, batch):
        assert caller.get(None) == "the task"
        running.append(threading.get_ident())
        assert len(running) == 1  # one call at a time
        started[int(batch[0, 0]) // 8].set()
        running.pop()
        return {"x": batch * 10}

    seen = []
    for k, (batch, patches) in enumerate(_model_ahead(model, None, boxes, 2)):
        for ahead in range(k + 1, k + 1 + MODEL_AHEAD):  # started while this batch is merged
            if ahead < len(started):
                assert started[ahead].wait(timeout=30)
        np.testing.assert_array_equal(patches["x"], batch * 10)
        seen.append(batch)
    np.testing.assert_array_equal(np.concatenate(seen), boxes)
