"""File > Open Sample > Demo cache tree: the demo cache tree, built locally from ``sample_data/``.

The tree is built by :func:`cachetree.demo.run_demo` into a folder that persists between
sessions (``$CACHETREE_DEMO_DIR``, else ``<temp>/cachetree-demo-<user>``). Nothing is
downloaded. The build never blocks the viewer: the sample returns the slide at once (read
from the shipped file), then builds the tree (or, when it exists, reuses every committed
node) in a worker thread with a napari progress bar (one step per pipeline node), and adds
the other steps' layers when it is done, one per event loop turn.
"""

from __future__ import annotations

import getpass
import logging
import os
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from cachetree.fs.location import Location

from ._layers import LayerData, Opened, open_location
from ._threads import add_in_steps, run_task

log = logging.getLogger("cachetree.napari")

SLIDE = ("input", "ihc.ome.zarr")
"""The node and item of the demo's input slide, shown before the tree is built."""
_BUILDS: dict[str, Any] = {}
"""Builds under way, by demo folder: a second Open Sample joins the running build."""


def demo_dir() -> Path:
    """Where the demo tree is built."""
    configured = os.environ.get("CACHETREE_DEMO_DIR")
    if configured:
        return Path(configured).expanduser()
    try:
        user = getpass.getuser()
    except Exception:  # no user name in some containers
        user = "user"
    return Path(tempfile.gettempdir()) / f"cachetree-demo-{user}"


def slide_layer(root: Path) -> LayerData:
    """The demo's input slide from the shipped file, named as the tree will show it.

    Reads the file directly: importing :mod:`cachetree.demo` here would wait for the worker
    thread, which is importing it (and its dependencies) at the same moment.
    """
    node, item = SLIDE
    with np.load(resources.files("cachetree") / "sample_data" / "ihc.npz") as archive:
        pixels = archive["image"]
    metadata = {"cachetree": {"root": str(root), "node": node, "item": item}}
    kwargs = {"name": f"{node}:ihc", "metadata": metadata, "rgb": True}
    return pixels, {**kwargs, "contrast_limits": [0, 255]}, "image"


STEPS = 4
"""Steps of the demo pipeline (input, model, nuclei, density), for the progress bar."""


def build(root: Path, report: Callable[..., None] | None = None) -> Opened:
    """Build (or reuse) the demo tree at ``root`` and list its layers (any thread).

    ``report(done, total, text)`` hears of each step as it ends.
    """
    from cachetree.demo import run_demo

    done = []

    def step(line: str) -> None:
        log.info(line)
        done.append(line)
        if report is not None:
            report(len(done), STEPS, " ".join(line.split()))

    run_demo(root, progress=False, report=step)
    return open_location(Location.from_url(root))


def demo_tree() -> list[LayerData]:
    """Show the demo slide now; build the tree in a worker thread and add its layers later.

    The layers remember the tree's root, so the Cache tree browser opened afterwards shows
    this tree right away. Without a viewer (no Qt event loop to come back to) the tree is
    built first and all its layers are returned.
    """
    import napari

    root = demo_dir()
    viewer = napari.current_viewer()
    if viewer is None:
        opened = build(root)
        _report(opened)
        return opened.layers
    if str(root) not in _BUILDS:
        _BUILDS[str(root)] = _start_build(viewer, root)
    return [slide_layer(root)]


def _start_build(viewer: Any, root: Path) -> Any:
    """Build in a worker thread, with a napari progress bar updated on the GUI thread."""
    from napari.utils.notifications import show_error
    from qtpy.QtCore import QObject, QTimer

    owner = QObject()

    def done(opened: Opened) -> None:
        add_in_steps(viewer, opened.layers, then=lambda _shown: _report(opened))

    def start() -> None:
        run_task(
            owner,
            "Building the demo cache tree",
            build,
            root,
            on_return=done,
            on_error=lambda exc: show_error(f"cachetree demo: the build failed: {exc}"),
            on_finish=lambda: _BUILDS.pop(str(root), None),
        )

    QTimer.singleShot(0, start)  # after the slide is shown: not competing with it
    return owner


def _report(opened: Opened) -> None:
    from napari.utils.notifications import show_warning

    for problem in opened.problems:
        show_warning(f"cachetree demo: cannot show {problem}")
