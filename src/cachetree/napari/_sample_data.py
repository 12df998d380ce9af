"""File > Open Sample > Demo cache tree: the demo cache tree, built locally from ``sample_data/``.

The tree is built by :func:`cachetree.demo.run_demo` into a folder that persists between
sessions (``$CACHETREE_DEMO_DIR``, else ``<temp>/cachetree-demo-<user>``): the first time
every node is computed (a second or two), later every committed node is reused. Nothing is
downloaded.
"""

from __future__ import annotations

import getpass
import logging
import os
import tempfile
import warnings
from pathlib import Path

from cachetree.fs.location import Location

from ._layers import LayerData, open_location

log = logging.getLogger("cachetree.napari")


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


def demo_tree() -> list[LayerData]:
    """Build (or reuse) the demo tree and return its images and labels as lazy layers.

    The layers remember the tree's root, so the Cache tree browser opened afterwards shows
    this tree right away.
    """
    from napari.utils import progress

    from cachetree.demo import run_demo

    root = demo_dir()
    run_demo(root, progress=progress, report=log.info)
    opened = open_location(Location.from_url(root))
    for problem in opened.problems:
        warnings.warn(f"cachetree demo: cannot show {problem}", stacklevel=2)
    return opened.layers
