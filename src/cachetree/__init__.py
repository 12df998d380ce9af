"""cachetree: crash-safe cache trees for large-image pipelines.

The core (everything importable from here) needs only numpy, zarr, dask, fsspec, psutil and
tqdm; the napari plugin lives in :mod:`cachetree.napari`.
"""

from ._version import __version__
from .cdir import CacheQuery, cache_node_for, cdir_commit, cdir_init, cdir_query
from .clean import CleanPlan
from .errors import CacheTreeError
from .manifest import Manifest, Status
from .node import Node, OpenMode
from .storage import Location
from .tree import CacheTree
from .walk import NodeInfo

__all__ = [
    "CacheQuery",
    "CacheTree",
    "CacheTreeError",
    "CleanPlan",
    "Location",
    "Manifest",
    "Node",
    "NodeInfo",
    "OpenMode",
    "Status",
    "__version__",
    "cache_node_for",
    "cdir_commit",
    "cdir_init",
    "cdir_query",
]
