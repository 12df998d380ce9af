"""The ``cachetree`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from . import __version__
from .demo import DemoParams
from .errors import CacheTreeError, CorruptManifestError
from .fs.location import Location
from .tree import CacheTree
from .tree.clean import LOCK_GRACE, PART_GRACE, format_bytes, plan_clean
from .tree.manifest import Status
from .tree.node import Node
from .tree.walk import NodeInfo, walk

__all__ = ["build_parser", "main"]


def _tree_line(info: NodeInfo) -> str:
    label = ("  " * info.depth) + (info.name or "/")
    time = (info.time or "")[:19].replace("T", " ")
    return f"{label:<40} {info.state:<12} {info.kind:<28} {format_bytes(info.bytes):>10}  {time}"


def cmd_ls(args: argparse.Namespace) -> int:
    """Print the tree with status, kind, size and time."""
    root = Location.from_url(args.root)
    infos = list(walk(root, max_depth=args.depth))
    if not infos:
        raise CacheTreeError(f"{args.root} is not a cache tree (no manifest found)")
    if args.json:
        print(json.dumps([_info_dict(i) for i in infos], indent=1))
        return 0
    print(f"{'node':<40} {'status':<12} {'kind':<28} {'size':>10}  time")
    for info in infos:
        print(_tree_line(info))
    return 0


def _info_dict(info: NodeInfo) -> dict:
    return {
        "path": info.path,
        "url": info.url,
        "state": info.state,
        "kind": info.kind,
        "bytes": info.bytes,
        "time": info.time,
        "children": list(info.children),
    }


def cmd_info(args: argparse.Namespace) -> int:
    """Print one node's manifest (or why it cannot be read)."""
    node = Node(Location.from_url(args.node))
    try:
        manifest = node.manifest
    except CorruptManifestError as exc:
        if args.json:
            print(json.dumps({"url": node.url, "status": "corrupt", "error": str(exc)}))
            return 0
        print(f"node:        {node.url}")
        print("status:      corrupt")
        print(f"problem:     {exc}")
        print(f"children:    {', '.join(node.child_names()) or '-'}")
        return 0
    if args.json:
        print(manifest.to_json())
        return 0
    print(f"node:        {node.url}")
    print(f"status:      {manifest.status.value}")
    print(f"kind:        {manifest.kind}")
    print(f"created:     {manifest.created}")
    print(f"committed:   {manifest.committed or '-'}")
    print(f"fingerprint: {manifest.fingerprint}")
    print(f"params:      {json.dumps(manifest.params)}")
    print(f"children:    {', '.join(node.child_names()) or '-'}")
    print("items:")
    for name, item in sorted(manifest.items.items()):
        shape = f" {tuple(item['shape'])} {item.get('dtype', '')}" if "shape" in item else ""
        ngff = f" OME-NGFF {item['ngff']}" if "ngff" in item else ""
        labels = f" + labels {', '.join(item['labels'])}" if item.get("labels") else ""
        print(
            f"  {name:<30} {item.get('kind', '?'):<8} {format_bytes(item.get('bytes')):>10}"
            f"{shape}{ngff}{labels}"
        )
    return 0


def cmd_commit(args: argparse.Namespace) -> int:
    """Commit a node."""
    node = Node(Location.from_url(args.node))
    if node.status is Status.MISSING:
        raise CacheTreeError(f"no cache node at {args.node}")
    node.commit()
    print(f"committed {node.url}")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    """List (and unless --dry-run, delete) what the tree no longer needs."""
    tree = CacheTree(args.root, create=False)
    plan = plan_clean(
        tree.root, remove=args.remove, part_grace=args.part_grace, lock_grace=args.lock_grace
    )
    print(plan)
    if args.dry_run or not plan.entries:
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            print("nothing deleted: pass --yes to delete without a prompt")
            return 1
        answer = input(f"delete {len(plan)} entries ({format_bytes(plan.total_bytes)})? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    freed = plan.execute(progress=not args.quiet)
    for entry, why in plan.skipped:
        print(f"kept {entry.url}: {why}")
    print(f"freed {format_bytes(freed)}")
    return 0


def cmd_combine(args: argparse.Namespace) -> int:
    """Combine a node's parts into its final results, then commit it.

    A canvas merged on a cluster (its spill parts written by workers) is finalised into its
    OME-Zarr heads; other nodes go through their combiner.
    """
    from .canvas import finish_node

    node = Node(Location.from_url(args.node))
    if node.status is Status.MISSING:
        raise CacheTreeError(f"no cache node at {args.node}")
    report = finish_node(
        node,
        partial=args.partial,
        combiner=args.combiner,
        store=args.store,
        progress=not args.quiet,
    )
    print(report)
    return 0


def cmd_canvas_status(args: argparse.Namespace) -> int:
    """Print the tasks done (each planned task, in plan order) and the seam parts of a canvas
    merged on a cluster."""
    from .canvas.cluster import run_status

    run = run_status(args.node)
    if run.canvas is None:
        print(f"{run.url}: {run.status}, no distributed canvas plan")
        return 0
    canvas = run.canvas
    heads = ", ".join(f"{n}:{h['channels']}" for n, h in canvas["heads"].items())
    print(f"node:         {run.url} ({run.status})")
    print(
        f"canvas:       {canvas['shape'][0]}x{canvas['shape'][1]}, heads {heads}, "
        f"tile {canvas['tile']}"
    )
    print(f"tasks done:   {run.tasks_done} of {run.tasks_total}")
    print(
        f"seam parts:   {run.listed_parts} listed by tasks, {run.orphan_parts} of "
        "unfinished or failed attempts"
    )
    for task in run.tasks:
        print(f"  {task}")
    return 0


def cmd_unlock(args: argparse.Namespace) -> int:
    """Break a node's owner lock."""
    held = CacheTree(args.root, create=False).unlock(args.path, force=args.force)
    print(f"removed lock held by {held.describe()}" if held else "node was not locked")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run a demo pipeline, list the tree, and optionally open napari on it.

    Without ``--size`` the quick demo runs on the 512 x 512 sample image and napari opens on
    the result; with ``--size N`` the whole-slide demo runs on a synthetic N x N slide, and
    napari opens at the start, its browser in live mode, to watch the nodes fill in.
    """
    view = args.view if args.view is not None else bool(os.environ.get("DISPLAY"))
    if args.size is not None:
        return _wsi_demo(args, view)
    from .demo import DemoParams, run_demo

    params = DemoParams(nuclei_threshold=args.nuclei_threshold, region=args.region)
    tree = run_demo(
        args.out,
        params,
        memory_budget=args.memory_budget or "1MiB",
        progress=not args.quiet,
        report=(lambda line: None) if args.quiet else print,
    )
    print()
    cmd_ls(argparse.Namespace(root=tree.url, depth=None, json=False))
    if view:
        from .napari import view_tree

        view_tree(tree.url)
    else:
        print(f"\nopen it in napari: cachetree demo --out {args.out} --view")
    return 0


def _wsi_demo(args: argparse.Namespace, view: bool) -> int:
    """``cachetree demo --size N``: the whole-slide demo, watched live in napari if asked."""
    from .demo.wsi import WsiParams, run_wsi

    params = WsiParams(size=args.size, seed=args.seed)

    def work(say: Callable[[str], None]) -> None:
        def report(line: str) -> None:
            say(line)
            if not args.quiet:
                print(line)

        run_wsi(
            args.out,
            params,
            memory_budget=args.memory_budget,
            progress=not args.quiet,
            report=report,
        )

    if view:
        from .napari import watch_tree

        watch_tree(args.out, work)
        return 0
    work(lambda line: None)
    print()
    cmd_ls(argparse.Namespace(root=args.out, depth=None, json=False))
    return 0


def _non_negative(kind: Callable[[str], float]) -> Callable[[str], float]:
    """An argparse type accepting numbers >= 0 of ``kind``."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value >= 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type accepting integers >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        return value

    parse.__name__ = "int"
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``cachetree`` command."""
    parser = argparse.ArgumentParser(
        prog="cachetree",
        description="List, inspect, commit, combine and clean cache trees; run the demo.",
    )
    parser.add_argument("--version", action="version", version=f"cachetree {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        p.add_argument(
            "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars"
        )
        return p

    p = add("ls", cmd_ls, "list a cache tree with status, kind, size and time")
    p.add_argument("root", help="root path or fsspec URL of the tree (or any node in it)")
    p.add_argument(
        "--depth", type=_non_negative(int), default=None, help="descend at most this many levels"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = add("info", cmd_info, "show one node's manifest and items")
    p.add_argument("node", help="path or URL of the node")
    p.add_argument("--json", action="store_true", help="print the raw manifest")

    p = add("commit", cmd_commit, "mark a node complete")
    p.add_argument("node", help="path or URL of the node")

    p = add("clean", cmd_clean, "remove leftovers, stale nodes, temp files and combined parts")
    p.add_argument("root", help="root path or URL of the tree")
    p.add_argument("-n", "--dry-run", action="store_true", help="only list what would go")
    p.add_argument(
        "--remove",
        action="append",
        default=[],
        metavar="PATH",
        help="also remove this committed node (repeatable)",
    )
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "--part-grace",
        type=_non_negative(float),
        default=PART_GRACE,
        metavar="SECONDS",
        help="unfinished parts whose writer cannot be checked count as abandoned after this "
        "long without change (default: %(default)s)",
    )
    p.add_argument(
        "--lock-grace",
        type=_non_negative(float),
        default=LOCK_GRACE,
        metavar="SECONDS",
        help="a node locked by a process on another host counts as in use for this long "
        "(default: %(default)s)",
    )

    p = add("combine", cmd_combine, "combine a node's parts into its results, then commit it")
    p.add_argument("node", help="path or URL of the node")
    p.add_argument(
        "--combiner",
        default=None,
        help="combiner name or 'package.module:function' (default: the one set for the node)",
    )
    p.add_argument("--store", default="results", help="keyed store receiving the results")
    p.add_argument(
        "--partial",
        action="store_true",
        help="finalise a canvas merged on a cluster even if some of its tasks have no result",
    )

    p = add(
        "canvas-status",
        cmd_canvas_status,
        "show the tasks done and the spill parts of a canvas merged on a cluster",
    )
    p.add_argument("node", help="path or URL of the node")

    p = add("demo", cmd_demo, "run the demo pipeline on the shipped sample data")
    p.add_argument("--out", default="cachetree-demo", help="cache tree root (default: %(default)s)")
    p.add_argument(
        "--size",
        type=_at_least(64),
        default=None,
        metavar="N",
        help="run the whole-slide demo on a synthetic N x N slide built from the sample "
        "(default: the quick demo on the 512 x 512 sample itself)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the synthetic slide (default: %(default)s)"
    )
    p.add_argument(
        "--memory-budget",
        default=None,
        help="memory for the model canvas, e.g. 1MiB, 64MB, 5%% (default: 1MiB for the quick "
        "demo, so it spills; the canvas default for --size)",
    )
    p.add_argument(
        "--nuclei-threshold",
        type=float,
        default=DemoParams.nuclei_threshold,
        help="hematoxylin probability of a nucleus pixel (default: %(default)s)",
    )
    p.add_argument(
        "--region",
        type=int,
        default=DemoParams.region,
        help="side of the density heatmap regions in pixels (default: %(default)s)",
    )
    p.add_argument(
        "--view",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="open napari on the result, or with --size at the start, to watch the nodes "
        "appear (default: when a display exists)",
    )

    p = add("unlock", cmd_unlock, "break the owner lock of a node whose writer is gone")
    p.add_argument("root", help="root path or URL of the tree")
    p.add_argument("path", nargs="?", default="", help="node path relative to the root")
    p.add_argument(
        "--force",
        action="store_true",
        help="also remove the lock of a process of this host that is still running",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CacheTreeError as exc:
        print(f"cachetree: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
