"""The zarr metadata files of an image group, made by zarr-python in memory.

zarr-python writes metadata one file at a time and looks around first (is there a group, an
array, a v2 document?), which on an object store costs a request each. Here zarr makes the
same documents in a :class:`zarr.storage.MemoryStore`, and the caller writes them all at
once with :meth:`~cachetree.fs.location.Location.write_files` (one batch of concurrent puts
on an object store); :func:`stored_array` reads an array's metadata with one read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import zarr

from ..errors import NodeNotFoundError
from ..fs.location import Location
from .layout import LevelLayout

__all__ = ["group_documents", "image_documents", "stored_array"]


def _documents(
    zarr_format: int, attributes: Mapping[str, Any], levels: Sequence[LevelLayout]
) -> dict[str, bytes]:
    store: dict[str, Any] = {}
    group = zarr.open_group(
        zarr.storage.MemoryStore(store),
        mode="w",
        zarr_format=zarr_format,
        attributes=dict(attributes),
    )
    for layout in levels:
        layout.create(group)
    return {key: buffer.to_bytes() for key, buffer in store.items()}


def image_documents(levels: Sequence[LevelLayout]) -> dict[str, bytes]:
    """Every metadata file of an empty image group holding ``levels`` (group and arrays),
    by path relative to the group."""
    return _documents(levels[0].zarr_format, {}, levels)


def group_documents(
    location: Location, zarr_format: int, attributes: Mapping[str, Any]
) -> dict[str, bytes]:
    """The metadata files of the group at ``location`` with ``attributes`` added to those
    it stores (read from its one attributes file; none when it has none)."""
    name = "zarr.json" if zarr_format == 3 else ".zattrs"
    try:
        document = json.loads(location.raw_child(name).read_bytes())
    except NodeNotFoundError:
        document = {}
    stored = document.get("attributes", {}) if zarr_format == 3 else document
    return _documents(zarr_format, {**stored, **attributes}, ())


def stored_array(location: Location, path: str) -> zarr.Array:
    """The array ``path`` of the group at ``location`` as zarr opens it from its metadata
    file alone, read into memory (one read on zarr v3, two on v2; no data behind it).

    Raises
    ------
    NodeNotFoundError
        There is no array metadata there.
    """
    from zarr.core.buffer import default_buffer_prototype

    array = location.raw_child(path)
    for name in ("zarr.json", ".zarray"):
        try:
            raw = array.raw_child(name).read_bytes()
        except NodeNotFoundError:
            continue
        store = {name: default_buffer_prototype().buffer.from_bytes(raw)}
        return zarr.open_array(zarr.storage.MemoryStore(store), mode="r")
    raise NodeNotFoundError(f"no zarr array at {array.url}")
