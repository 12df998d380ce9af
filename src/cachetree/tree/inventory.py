"""Recognise what a node holds: OME-Zarr images and labels, arrays, logs, metrics, plots."""

from __future__ import annotations

import posixpath
from typing import Any

from ..fs.location import TMP_MARK, Location
from ..images.meta import label_names, ome_attrs, standalone_labels, zarr_attrs
from .layout import LOCK, MANIFEST, PARTS

__all__ = [
    "classify_dir",
    "classify_file",
    "is_own_entry",
    "scan_items",
]


_SUFFIX_KINDS = {
    ".txt": "log",
    ".log": "log",
    ".json": "json",
    ".png": "plot",
    ".svg": "plot",
    ".jpg": "plot",
    ".jpeg": "plot",
    ".pdf": "plot",
    ".npy": "array",
    ".npz": "array",
}


def classify_dir(loc: Location) -> dict[str, Any]:
    """Kind and array summary of a directory item (reads only small metadata files).

    Standalone labels (a group holding only ``labels/<name>``) are a ``labels`` item
    summarised by their labels image.
    """
    node_type, attrs, array = zarr_attrs(loc)
    tagged = (
        attrs.get("cachetree", {}).get("kind") if isinstance(attrs.get("cachetree"), dict) else None
    )
    if tagged:
        return {"kind": tagged}
    ome, version = ome_attrs(attrs)
    if "multiscales" in ome:
        info = _multiscale_info(loc, ome, version)
        labels = label_names(loc)
        if labels and info["kind"] == "image":
            info["labels"] = labels
        return info
    if node_type == "array" and array is not None:
        dtype = array.get("data_type", array.get("dtype"))
        return {"kind": "array", "shape": list(array["shape"]), "dtype": str(dtype)}
    if node_type == "group":
        labels_image = standalone_labels(loc)
        if labels_image is not None:
            inner, inner_version = ome_attrs(zarr_attrs(labels_image)[1])
            if "multiscales" in inner:
                return _multiscale_info(labels_image, inner, inner_version)
        return {"kind": "zarr"}
    return {"kind": "dir"}


def _multiscale_info(loc: Location, ome: dict[str, Any], version: str) -> dict[str, Any]:
    """Kind, level-0 shape and dtype, level count and version of a multiscale image."""
    info: dict[str, Any] = {"kind": "labels" if "image-label" in ome else "image"}
    multiscale = ome["multiscales"][0]
    _, _, level0 = zarr_attrs(loc.raw_child(multiscale["datasets"][0]["path"]))
    if level0:
        dtype = level0.get("data_type", level0.get("dtype", ""))
        info.update(shape=list(level0["shape"]), dtype=str(dtype))
    info["levels"] = len(multiscale["datasets"])
    info["ngff"] = version
    return info


def classify_file(name: str) -> dict[str, Any]:
    """Kind of a file item, from its suffix."""
    return {"kind": _SUFFIX_KINDS.get(posixpath.splitext(name)[1].lower(), "file")}


def is_own_entry(name: str) -> bool:
    """Whether a directory entry is the library's own bookkeeping or a temp file."""
    return name in (MANIFEST, LOCK, PARTS) or TMP_MARK in name


def scan_items(node: Location, child_nodes: set[str]) -> dict[str, dict[str, Any]]:
    """Inventory of a node directory: every entry that is not a child node or bookkeeping."""
    items: dict[str, dict[str, Any]] = {}
    for entry in node.ls(detail=True):
        name = posixpath.basename(entry["name"].rstrip("/"))
        if name in child_nodes or is_own_entry(name):
            continue
        loc = node.raw_child(name)
        if entry["type"] == "directory":
            info = classify_dir(loc)
            info["bytes"] = loc.du()
        else:
            info = classify_file(name)
            info["bytes"] = int(entry.get("size") or 0)
        items[name] = info
    return items
