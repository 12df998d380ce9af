"""napari reader: a cache root, a node, a canvas node, an OME-Zarr image or labels as layers.

:func:`get_reader` is offered every folder napari opens, so it decides from a few small
metadata files (the node manifest, or the zarr attributes of the folder and of its
``labels`` group, for standalone labels) and returns None for anything else; it never
raises. What a node opens as is decided by :func:`cachetree.napari._layers.open_node`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from cachetree.fs.location import Location
from cachetree.images import ngff
from cachetree.tree.layout import MANIFEST

from ._layers import LayerData, open_location

ReaderFunction = Callable[[Any], list[LayerData]]


def _target(path: Any) -> Location | None:
    """The folder to open for ``path``, or None when it is not cachetree content."""
    if isinstance(path, list | tuple):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, str | os.PathLike):
        return None
    path = os.fspath(path)
    if os.path.basename(path.rstrip("/")) == MANIFEST:  # a node's manifest file
        path = os.path.dirname(path.rstrip("/"))
    location = Location.from_url(path)
    if location.raw_child(MANIFEST).exists():
        return location
    if ngff.is_ome_zarr(location):
        return location
    return None


def get_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """Return :func:`read_cachetree` when ``path`` is cachetree content, else None.

    Quick for unrelated folders (a few small file reads) and never raises.
    """
    try:
        target = _target(path)
    except Exception:  # unreadable, odd URL, permission denied: not ours
        return None
    return None if target is None else read_cachetree


def read_cachetree(path: str | Sequence[str]) -> list[LayerData]:
    """Layers of the cache root, node, canvas or OME-Zarr image at ``path`` (lazily loaded).

    Items that cannot be shown are reported as warnings (napari shows them as
    notifications); everything else still opens.
    """
    target = _target(path)
    if target is None:
        return []
    opened = open_location(target)
    for problem in opened.problems:
        warnings.warn(f"cachetree: cannot show {problem}", stacklevel=2)
    return opened.layers
