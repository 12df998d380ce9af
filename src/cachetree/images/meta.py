"""Zarr and OME-NGFF metadata read as small JSON files, without importing zarr.

The cache tree's inventory and listings use these to tell images, labels and arrays apart
cheaply; :mod:`cachetree.images.ngff` uses them for the labels under an image and for
standalone labels (labels of no image: a zarr group holding only ``labels/<name>``).
"""

from __future__ import annotations

import json
import os
import posixpath
from typing import Any

from ..errors import InvalidNameError
from ..fs.location import Location, cat_whole

__all__ = ["LABELS_GROUP", "label_names", "ome_attrs", "standalone_labels", "zarr_attrs"]

LABELS_GROUP = "labels"
"""Name of the group under an image that holds its label images (OME-NGFF)."""


def _read_json(loc: Location, name: str) -> dict[str, Any] | None:
    try:
        return json.loads(cat_whole(loc.fs, posixpath.join(loc.path, name)))
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None


def zarr_attrs(loc: Location) -> tuple[str | None, dict[str, Any], dict[str, Any] | None]:
    """Zarr node type (``"array"``, ``"group"`` or None), its attributes and array metadata."""
    meta = _read_json(loc, "zarr.json")
    if meta is not None:  # zarr format 3
        attrs = meta.get("attributes", {})
        return meta.get("node_type"), attrs, meta if meta.get("node_type") == "array" else None
    attrs = _read_json(loc, ".zattrs") or {}
    array = _read_json(loc, ".zarray")
    if array is not None:
        return "array", attrs, array
    if _read_json(loc, ".zgroup") is not None:
        return "group", attrs, None
    return None, {}, None


def ome_attrs(attrs: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The OME-NGFF part of a group's attributes and its version.

    OME-NGFF 0.5 keeps it under ``ome`` with the version beside it; 0.4 keeps it at the top
    level with the version inside each entry (``multiscales``, ``image-label``, ...).
    """
    ome = attrs.get("ome")
    if isinstance(ome, dict):
        return ome, str(ome.get("version", "0.5"))
    for key in ("multiscales", "image-label", "plate", "well"):
        entry = attrs.get(key)
        entry = entry[0] if isinstance(entry, list) and entry else entry
        if isinstance(entry, dict) and "version" in entry:
            return attrs, str(entry["version"])
    return attrs, "0.4"


def label_names(image: Location | str | os.PathLike[str]) -> list[str]:
    """Names of the OME-NGFF labels stored under the image at ``image`` (reads one or two
    small files)."""
    group = Location.from_url(image).raw_child(LABELS_GROUP)
    meta = _read_json(group, "zarr.json")
    attrs = meta.get("attributes", {}) if meta is not None else _read_json(group, ".zattrs") or {}
    names = ome_attrs(attrs)[0].get("labels")
    return [str(n) for n in names] if isinstance(names, list) else []


def standalone_labels(group: Location | str | os.PathLike[str]) -> Location | None:
    """The labels image of the standalone labels at ``group``, or None.

    Labels saved without an image are a zarr group with no image of its own whose ``labels``
    group lists one labels image, ``<group>/labels/<name>``: where OME-NGFF readers look
    for labels, with a parent group for them to find. Reads a few small files (two when
    there are no labels).
    """
    loc = Location.from_url(group)
    names = label_names(loc)
    if not names:
        return None
    node_type, attrs, _ = zarr_attrs(loc)
    if node_type != "group" or "multiscales" in ome_attrs(attrs)[0]:
        return None
    try:
        return loc.join(LABELS_GROUP, names[0])
    except InvalidNameError:  # not a name cachetree writes: not cachetree's labels
        return None
