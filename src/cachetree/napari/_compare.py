"""Compare two nodes: their parameters side by side, and lazy differences of their images.

Typically two runs of one step with different parameters. Images present in both nodes with
the same name and shape become a difference layer ``a - b`` (one per channel), computed by
dask tile by tile as napari draws it: only the coarsest pyramid level is read up front, for
the display window. Pure functions (no Qt).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from cachetree.fs.location import Location
from cachetree.images import ngff
from cachetree.tree.node import Node

from ._layers import LayerData, Opened, node_label
from ._listing import ItemEntry, node_items
from ._params import MISSING, flatten, show

DIFF_COLORMAP = "cachetree difference"
"""Diverging colormap of difference layers: transparent where a == b (so what is under
shows), increasingly red where a > b and blue where a < b."""


def diff_colormap() -> Any:
    """The :data:`DIFF_COLORMAP` napari colormap."""
    from napari.utils.colormaps import Colormap

    blue, red = [0.2, 0.5, 1.0], [1.0, 0.3, 0.2]
    colours = [[*blue, 1.0], [*blue, 0.0], [*red, 0.0], [*red, 1.0]]
    return Colormap(colours, controls=[0.0, 0.5, 0.5, 1.0], name=DIFF_COLORMAP)


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
    info_a, info_b = ngff.read_image(a), ngff.read_image(b)
    if info_a.shape != info_b.shape or info_a.axes != info_b.axes:
        return None
    levels_a, levels_b = ngff.open_image(a), ngff.open_image(b)
    if [x.shape for x in levels_a] != [y.shape for y in levels_b]:
        levels_a, levels_b = levels_a[:1], levels_b[:1]
    diffs = [
        x.astype(np.float32) - y.astype(np.float32) for x, y in zip(levels_a, levels_b, strict=True)
    ]
    axes, scale = list(info_a.axes), list(info_a.scale)
    translate = list(info_a.translation)
    kwargs: dict[str, Any] = {
        "name": name,
        "metadata": metadata,
        "multiscale": len(diffs) > 1,
        "blending": "translucent",
    }
    spans = _spans(np.asarray(diffs[-1]), axes)  # the coarsest level only: small
    if "c" in axes:
        c = axes.index("c")
        del axes[c], scale[c], translate[c]
        names = info_a.channel_names or tuple(str(i) for i in range(info_a.shape[c]))
        kwargs.update(
            channel_axis=c,
            name=[f"{name} [{n}]" for n in names],
            colormap=[diff_colormap() for _ in names],
            contrast_limits=[[-s, s] for s in spans],
        )
    else:
        kwargs.update(colormap=diff_colormap(), contrast_limits=[-spans[0], spans[0]])
    kwargs.update(scale=scale, translate=translate, axis_labels=axes)
    data: Any = diffs if len(diffs) > 1 else diffs[0]
    return data, kwargs, "image"


def _spans(coarsest: np.ndarray, axes: list[str]) -> list[float]:
    """Per channel, the largest ``|a - b|`` of the coarsest level (1 where it is all 0)."""
    values = np.moveaxis(coarsest, axes.index("c"), 0) if "c" in axes else coarsest[None]
    spans = np.nanmax(np.abs(values.reshape(len(values), -1)), axis=1)
    return [float(s) if np.isfinite(s) and s > 0 else 1.0 for s in spans]


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
