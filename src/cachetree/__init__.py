"""cachetree: crash-safe cache trees for large-image pipelines.

The core (everything importable from here) needs only numpy, zarr, dask, fsspec, psutil and
tqdm; the napari plugin lives in :mod:`cachetree.napari`. ``import cachetree`` is light: the
canvas, combine, keyed stores and the writer (which bring in zarr and dask) are loaded on
first use of their names. (``combine`` itself is :func:`cachetree.combine.combine`: the module
of that name would shadow a top-level function.)
"""

import importlib
from typing import Any

from ._version import __version__
from .cdir import CacheQuery, cache_node_for, cdir_commit, cdir_init, cdir_query
from .clean import CleanPlan
from .errors import CacheTreeError
from .manifest import Manifest, Status
from .node import Node, OpenMode
from .storage import Location
from .tree import CacheTree
from .walk import NodeInfo

_LAZY = {
    "AsyncWriter": "cachetree.writer",
    "Canvas": "cachetree.canvas",
    "KeyedStore": "cachetree.keyed",
    "add_part": "cachetree.combine",
    "merge": "cachetree.combine",
    "split": "cachetree.combine",
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
