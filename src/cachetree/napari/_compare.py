"""Compare two nodes: their parameters side by side, and lazy differences of their images.

Typically two runs of one step with different parameters. Images present in both nodes with
the same name and shape become a difference layer ``a - b`` (one per channel), computed by
dask tile by tile as napari draws it: nothing is read up front. Pure functions (no Qt).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from cachetree import omezarr
from cachetree.node import Node
from cachetree.storage import Location

from ._layers import LayerData, Opened, node_label
from ._listing import ItemEntry, node_items
from ._params import MISSING, flatten, show

DIFF_COLORMAP = "PiYG"
"""Diverging colormap of difference layers: 0 in the middle, a > b and a < b on either side."""


def side_by_side(rows: list[tuple[str, str, str]], titles: tuple[str, str, str]) -> str:
    """A plain-text table of three columns."""
    table = [titles, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def param_rows(a: Any, b: Any, *, all_keys: bool = False) -> list[tuple[str, str, str]]:
    """``(key, value in a, value in b)`` for the keys that differ (or all of them)."""
    flat_a, flat_b = flatten(a), flatten(b)
    rows = []
    for key in sorted(set(flat_a) | set(flat_b)):
        x, y = flat_a.get(key, MISSING), flat_b.get(key, MISSING)
        if all_keys or x is MISSING or y is MISSING or x != y:
            rows.append((key, show(x), show(y)))
    return rows


def _images(node: Node) -> dict[str, ItemEntry]:
    return {e.name: e for e in node_items(node) if e.kind == "image"}


def difference_layer(
    a: Location, b: Location, name: str, metadata: dict[str, Any]
) -> LayerData | None:
    """``a - b`` of two OME-Zarr images of one shape as a lazy layer; None if they differ."""
    info_a, info_b = omezarr.read_image(a), omezarr.read_image(b)
    if info_a.shape != info_b.shape or info_a.axes != info_b.axes:
        return None
    levels_a, levels_b = omezarr.open_image(a), omezarr.open_image(b)
    if [x.shape for x in levels_a] != [y.shape for y in levels_b]:
        levels_a, levels_b = levels_a[:1], levels_b[:1]
    diffs = [
        x.astype(np.float32) - y.astype(np.float32)
        for x, y in zip(levels_a, levels_b, strict=True)
    ]
    axes, scale = list(info_a.axes), list(info_a.scale)
    translate = list(info_a.translation)
    kwargs: dict[str, Any] = {"name": name, "metadata": metadata, "multiscale": len(diffs) > 1}
    spans = _spans(info_a.value_range, info_b.value_range)
    if "c" in axes:
        c = axes.index("c")
        del axes[c], scale[c], translate[c]
        names = info_a.channel_names or tuple(str(i) for i in range(info_a.shape[c]))
        kwargs.update(
            channel_axis=c,
            name=[f"{name} [{n}]" for n in names],
            colormap=[DIFF_COLORMAP] * len(names),
        )
        if spans is not None:
            kwargs["contrast_limits"] = [[-s, s] for s in spans]
    else:
        kwargs["colormap"] = DIFF_COLORMAP
        if spans is not None:
            kwargs["contrast_limits"] = [-spans[0], spans[0]]
    kwargs.update(scale=scale, translate=translate, axis_labels=axes)
    data: Any = diffs if len(diffs) > 1 else diffs[0]
    return data, kwargs, "image"


def _spans(range_a: Any, range_b: Any) -> list[float] | None:
    """Per channel, the largest possible ``|a - b|`` from the recorded value ranges."""
    if range_a is None or range_b is None:
        return None
    pairs_a = range_a if isinstance(range_a, list) else [range_a]
    pairs_b = range_b if isinstance(range_b, list) else [range_b]
    spans = []
    for (lo_a, hi_a), (lo_b, hi_b) in zip(pairs_a, pairs_b, strict=True):
        span = max(abs(hi_a - lo_b), abs(hi_b - lo_a))
        spans.append(float(span) if span > 0 else 1.0)
    return spans


def compare_nodes(root: Location, path_a: str, path_b: str) -> Opened:
    """Parameters side by side (as text) and difference layers of the images both hold."""
    node_a = Node(root.join(path_a) if path_a else root, root=root)
    node_b = Node(root.join(path_b) if path_b else root, root=root)
    label_a, label_b = node_label(root, node_a.location), node_label(root, node_b.location)
    man_a, man_b = node_a.manifest, node_b.manifest
    lines = [f"compare  {label_a}  with  {label_b}", ""]
    changed = param_rows(man_a.params, man_b.params)
    if changed:
        lines.append(side_by_side(changed, ("parameter", label_a, label_b)))
    else:
        lines.append("same parameters: " + json.dumps(man_a.params, default=str))
    same_parent = man_a.parent_fingerprint == man_b.parent_fingerprint
    lines.append("")
    lines.append("inputs: same parent" if same_parent else "inputs: different parents")
    images_a, images_b = _images(node_a), _images(node_b)
    opened = Opened()
    lines += ["", "images:"]
    for item in sorted(set(images_a) | set(images_b)):
        if item not in images_a or item not in images_b:
            lines.append(f"  {item}: only in {label_a if item in images_a else label_b}")
            continue
        name = f"{label_a} - {label_b}:{item.removesuffix('.ome.zarr')}"
        metadata = {"cachetree": {"root": root.url, "compare": [path_a, path_b], "item": item}}
        layer = difference_layer(node_a.item(item), node_b.item(item), name, metadata)
        if layer is None:
            lines.append(f"  {item}: shapes differ, no difference layer")
            continue
        opened.layers.append(layer)
        lines.append(f"  {item}: difference layer {name!r} (lazy, {label_a} minus {label_b})")
    opened.text = "\n".join(lines)
    return opened
