"""cachetree: crash-safe cache trees for large-image pipelines.

The core (everything importable from here) needs only numpy, zarr, dask, fsspec, psutil and
tqdm; the napari plugin lives in :mod:`cachetree.napari`. ``import cachetree`` is light: the
canvas, combine, keyed stores and the writer (which bring in zarr and dask) are loaded on
first use of their names. (``combine`` itself is :func:`cachetree.results.combine`: the alias
kept for the old path of its module would shadow a top-level function of that name.)
"""

import importlib
from typing import Any

from ._version import __version__
from .errors import CacheTreeError
from .fs.location import Location
from .tree import CacheTree
from .tree.cdir import CacheQuery, cache_node_for, cdir_commit, cdir_init, cdir_query
from .tree.clean import CleanPlan
from .tree.manifest import Manifest, Status
from .tree.node import Node, OpenMode
from .tree.walk import NodeInfo

_LAZY = {
    "AsyncWriter": "cachetree.fs.writer",
    "Canvas": "cachetree.canvas",
    "KeyedStore": "cachetree.tree.keyed",
    "add_part": "cachetree.results",
    "merge": "cachetree.results",
    "split": "cachetree.results",
}


def __getattr__(name: str) -> Any:
    """Import the heavier parts of the API when their names are first used."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cachetree' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "AsyncWriter",
    "CacheQuery",
    "CacheTree",
    "CacheTreeError",
    "Canvas",
    "CleanPlan",
    "KeyedStore",
    "Location",
    "Manifest",
    "Node",
    "NodeInfo",
    "OpenMode",
    "Status",
    "__version__",
    "add_part",
    "cache_node_for",
    "cdir_commit",
    "cdir_init",
    "cdir_query",
    "merge",
    "split",
]
