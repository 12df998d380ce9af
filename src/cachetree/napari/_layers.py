"""Cache-tree content as napari layer data tuples: pure functions, metadata first, data lazy.

Every function here returns ``(data, kwargs, layer_type)`` tuples (napari's *LayerData*)
and reads only metadata: pixels stay in dask arrays until napari asks for the tiles it
draws. Layers are named ``"<node path>:<item>"`` (the root's folder name stands in for the
root's empty path), so opening the same item twice can be recognised by name.

Nothing here imports Qt; the reader, the sample data and the browser share it.
"""

from __future__ import annotations

import json
import math
import posixpath
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np

from cachetree.errors import CacheTreeError, NodeNotFoundError
from cachetree.fs.location import Location
from cachetree.images import ngff
from cachetree.tree.layout import MANIFEST, PARTS
from cachetree.tree.node import Node
from cachetree.tree.parts import PartInfo

from . import _display as display
from ._listing import ItemEntry, find_tree_root, node_items

LayerData = tuple[Any, dict[str, Any], str]

LAYER_KINDS = frozenset({"image", "labels"})
"""Item kinds a node shows as layers when the node itself is opened, besides the heads of a
canvas in progress (arrays and parts open one at a time; plots open in the browser's plot
pane: a plot has no place in the image's coordinates). A finalised canvas' heads are images
of its node."""
TEXT_KINDS = frozenset({"log", "json"})
"""Item kinds shown as text."""
MAX_TEXT = 1_000_000
"""Characters of a log shown at most (its end, where the latest lines are)."""
MAX_NODE_LAYERS = 12
"""Layers opened at most for a node without images of its own (a root or a group)."""
PLOT_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg")
_COLOUR_NAMES = frozenset({"red", "green", "blue", "cyan", "magenta", "yellow", "gray"})


@dataclass
class Opened:
    """Layers (and text) produced for one request, with what could not be shown and why."""

    layers: list[LayerData] = field(default_factory=list)
    text: str | None = None
    plot: tuple[bytes, str] | None = None
    """An encoded plot and its suffix (``.png``, ``.svg``, ...): shown in a pane, never as a
    layer over the data."""
    problems: list[str] = field(default_factory=list)


# -- naming ---------------------------------------------------------------------------------
def node_label(root: Location, node: Location) -> str:
    """How a node is named in layer names: its path in the tree, or the root's folder name."""
    return node.relative_to(root) or root.name


def item_label(name: str) -> str:
    """An item's name without the ``.ome.zarr`` / ``.zarr`` suffix (plots keep theirs)."""
    return name.removesuffix(".zarr").removesuffix(".ome")


def layer_name(label: str, item: str) -> str:
    """The layer name of ``item`` of the node called ``label``."""
    return f"{label}:{item_label(item)}"


def _origin(root: Location, node: Location, item: str | None) -> dict[str, Any]:
    """Layer metadata that lets the browser find where a layer came from."""
    return {"cachetree": {"root": root.url, "node": node.relative_to(root), "item": item}}


# -- one item -------------------------------------------------------------------------------
def ome_zarr_layer(location: Location, name: str, metadata: dict[str, Any]) -> LayerData:
    """An OME-Zarr image or labels pyramid as one lazy (multiscale) layer.

    Scale, translation, units, contrast limits, channel names and colours come from the
    metadata (OME-NGFF 0.4 or 0.5).
    An RGB(A) ``uint8`` image (channels named red, green, blue[, alpha]) is one RGB layer in
    its true colours; any other ``c`` axis becomes napari's ``channel_axis`` (one layer per
    channel).
    """
    info = ngff.read_image(location)
    pyramid = ngff.open_image(location)
    data: Any = pyramid if len(pyramid) > 1 else pyramid[0]
    axes = list(info.axes)
    scale, translate = list(info.scale), list(info.translation)
    units = list(info.units or (None,) * len(axes))
    kwargs: dict[str, Any] = {
        "name": name,
        "metadata": metadata,
        "multiscale": len(pyramid) > 1,
    }
    if info.labels:
        kwargs.update(scale=scale, translate=translate, axis_labels=axes)
        return data, _with_units(kwargs, units), "labels"
    if "c" in axes and ngff.is_rgb(info.channel_names, info.dtype):
        c = axes.index("c")
        del axes[c], scale[c], translate[c], units[c]
        levels = [da.moveaxis(level, c, -1) for level in pyramid]
        kwargs.update(rgb=True, contrast_limits=[0, 255])
        kwargs.update(scale=scale, translate=translate, axis_labels=axes)
        return levels if len(levels) > 1 else levels[0], _with_units(kwargs, units), "image"
    if "c" in axes:
        c = axes.index("c")
        del axes[c], scale[c], translate[c], units[c]
        names = info.channel_names or tuple(f"channel_{i}" for i in range(info.shape[c]))
        kwargs.update(channel_axis=c, name=[f"{name} [{n}]" for n in names])
        kwargs = display.overlay(kwargs, _channel_colours(location, names))
    elif _is_derived(info):
        kwargs = display.overlay(kwargs)
    kwargs.update(scale=scale, translate=translate, axis_labels=axes)
    kwargs = _with_units(kwargs, units)
    if info.contrast_limits is not None:
        limits = info.contrast_limits
        if np.dtype(info.dtype).kind == "f" and info.value_range is not None:
            limits = info.value_range  # floats within 0..1 are shown as probabilities
            window = display.probability_window
        else:
            window = _as_list
        multi = "c" in info.axes
        kwargs["contrast_limits"] = [window(*w) for w in limits] if multi else window(*limits)
    return data, kwargs, "image"


def _with_units(kwargs: dict[str, Any], units: list[str | None]) -> dict[str, Any]:
    """The layer's physical units, when the image has any (napari's scale bar shows them)."""
    return {**kwargs, "units": tuple(units)} if any(units) else kwargs


def _as_list(low: float, high: float) -> list[float]:
    return [low, high]


def _is_derived(info: ngff.ImageInfo) -> bool:
    """Whether a single-channel image is a probability map or a heatmap, not a picture.

    Probability maps are floats within 0..1; heatmaps are coarser than a pixel (a y or x
    scale above 1, e.g. counts per region).
    """
    spatial = [s for a, s in zip(info.axes, info.scale, strict=True) if a in "yx"]
    if any(s > 1 for s in spatial):
        return True
    values = info.value_range
    return (
        np.dtype(info.dtype).kind == "f"
        and isinstance(values, tuple)
        and values[0] >= 0
        and values[1] <= 1 + 1e-6
    )


def image_and_labels(location: Location, name: str, metadata: dict[str, Any]) -> list[LayerData]:
    """An OME-Zarr image followed by the labels stored under it (``labels/<name>``), visible.

    The labels of image ``node:image`` are named ``node:image/<labels name>``. Labels (a
    labels image, or standalone labels holding one) are one labels layer named ``name``.
    """
    layers = [ome_zarr_layer(location, name, metadata)]
    if layers[0][2] == "labels":
        return layers
    for labels in ngff.label_names(location):
        where = location.join(ngff.LABELS_GROUP, labels)
        layers.append(ome_zarr_layer(where, f"{name}/{labels}", metadata))
    return layers


def _channel_colours(location: Location, names: tuple[str, ...]) -> list[str]:
    """One colormap per channel: a channel named like a colour gets it, else its omero colour."""
    try:
        found = ngff.find_ome_attrs(location)  # 0.4 or 0.5
        channels = (found[0] if found else {}).get("omero", {}).get("channels", [])
        colours = [f"#{ch['color']}" for ch in channels]
    except (CacheTreeError, OSError, ValueError, KeyError, TypeError):
        colours = []
    if len(colours) != len(names):
        colours = _cycle_colours(len(names))
    pairs = zip(names, colours, strict=True)
    return [n.lower() if n.lower() in _COLOUR_NAMES else c for n, c in pairs]


def _cycle_colours(count: int) -> list[str]:
    defaults = ("magenta", "green", "cyan", "yellow", "red", "blue")
    return [defaults[i % len(defaults)] for i in range(count)]


def array_layer(data: Any, name: str, metadata: dict[str, Any]) -> LayerData:
    """A plain 2-D or larger array (Zarr or ``.npy``) as a single-scale image layer."""
    if data.ndim < 2:
        raise CacheTreeError(f"{name} is {data.ndim}-D: only arrays of 2 or more axes are shown")
    return data, {"name": name, "metadata": metadata}, "image"


def lazy_pyramid(level0: Any, min_size: int = 256) -> list[Any]:
    """Levels 1..n of a lazy array without a pyramid, as strided views of level 0.

    Only for canvases without a preview (merged by several processes, or written by older
    versions): napari then reads only the tiles on screen when zoomed in, but a zoomed-out
    view reads every tile it covers.
    """
    levels = [level0]
    factor = 2
    while max(level0.shape[-2:]) // factor >= min_size:
        levels.append(level0[..., ::factor, ::factor])
        factor *= 2
    return levels


def merged_suffix(merged: float | None) -> str:
    """What a canvas layer's name says of a merge in progress: `` (62 % merged)``."""
    if merged is None:
        return " (merging)"
    return f" ({math.floor(merged * 100)} % merged)"


def canvas_layers(node: Node, root: Location) -> list[LayerData]:
    """The heads of a canvas still being merged (spilled or partial), as lazy pyramids.

    One layer per head (one per channel for multi-channel heads), named with the share
    merged so far (``"merge:prob (62 % merged)"``). Level 0 is normalised lazily from what
    is on disk (tiles not on disk yet show the canvas' fill value); the coarser levels come
    from the canvas' preview, so a zoomed-out view reads a few small chunks, and the
    display windows come from the preview's value ranges, so napari never scans the data.
    """
    from cachetree.canvas.view import open_canvas_pyramid

    pyramid = open_canvas_pyramid(node.location)
    return [
        _canvas_head_layer(node, root, head, levels, pyramid.state)
        for head, levels in pyramid.levels.items()
    ]


def _canvas_head_layer(
    node: Node, root: Location, head: str, levels: list[Any], state: Any
) -> LayerData:
    name = layer_name(node_label(root, node.location), head)
    if len(levels) == 1:
        levels = lazy_pyramid(levels[0])
    level0 = levels[0]
    suffix = merged_suffix(state.merged)
    origin = _origin(root, node.location, None)
    kwargs: dict[str, Any] = {"multiscale": len(levels) > 1, **canvas_scale(state.spec)}
    if level0.ndim == 3:
        names = [f"{name} [{i}]" for i in range(level0.shape[0])]
        kwargs.update(
            name=[n + suffix for n in names],
            metadata=[{**origin, "canvas_head": head, "layer": n} for n in names],
            channel_axis=0,
        )
        kwargs = display.overlay(kwargs, _cycle_colours(level0.shape[0]))
    else:
        kwargs.update(name=name + suffix, metadata={**origin, "canvas_head": head, "layer": name})
        kwargs = display.overlay(kwargs)
    limits = state.value_range(head)
    if limits is not None:
        windows = [display.probability_window(lo, hi) for lo, hi in limits]
        kwargs["contrast_limits"] = windows if level0.ndim == 3 else windows[0]
    return (levels if len(levels) > 1 else level0, kwargs, "image")


def canvas_scale(spec: dict[str, Any]) -> dict[str, Any]:
    """Layer ``scale`` and ``units`` of a canvas' ``y, x`` from its spec (none if it has no
    physical pixel size), so canvas layers overlay the input they were predicted from."""
    if "scale" not in spec:
        return {}
    return _with_units({"scale": tuple(spec["scale"])}, [spec.get("units")] * 2)


def spill_part_layers(part: PartInfo, label: str, metadata: dict[str, Any]) -> list[LayerData]:
    """What one canvas spill part holds: each head's sum / weight over its tiles, and weight.

    The arrays of the part's tiles are placed in their bounding box (translated to where
    they sit on the canvas); pixels the part does not cover are NaN (not drawn). The heads
    use the spill colormap, so the part stands out from the canvas under it; the weight
    layer comes first, hidden.
    """
    from cachetree.canvas.spill import read_spill_part

    contents = read_spill_part(part)
    weight = contents.weight
    placement = canvas_scale(part.meta.get("canvas", {}))
    sy, sx = placement.get("scale", (1.0, 1.0))
    placement["translate"] = (contents.top * sy, contents.left * sx)  # world units
    base = f"{label}:parts/{part.name}"
    layers: list[LayerData] = []
    for head, total in contents.sums.items():
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total / weight
        kwargs = display.spill({**placement, "metadata": metadata})
        finite = mean[np.isfinite(mean)]
        if finite.size:
            window = display.probability_window(float(finite.min()), float(finite.max()))
            kwargs["contrast_limits"] = window
        if len(mean) > 1:
            kwargs.update(channel_axis=0, name=[f"{base}/{head} [{i}]" for i in range(len(mean))])
            layers.append((mean, kwargs, "image"))
        else:
            layers.append((mean[0], {**kwargs, "name": f"{base}/{head}"}, "image"))
    weight_kwargs = {**placement, "metadata": metadata, "name": f"{base}/weight"}
    layers.insert(0, (weight, {**weight_kwargs, "colormap": "viridis", "visible": False}, "image"))
    return layers


def part_layers(part: PartInfo, label: str, metadata: dict[str, Any]) -> list[LayerData]:
    """Every array of 2 or more axes of one part, as image layers (memory-mapped locally).

    A canvas spill part is shown as what it contributes to the canvas instead
    (:func:`spill_part_layers`).
    """
    from cachetree.canvas import SPILL_KIND

    if part.kind == SPILL_KIND:
        return spill_part_layers(part, label, metadata)
    layers = []
    for array, spec in sorted(part.arrays.items()):
        if len(spec.get("shape", ())) < 2:
            continue
        name = f"{label}:parts/{part.name}/{array}"
        layers.append(array_layer(part.read(array), name, metadata))
    if not layers:
        raise CacheTreeError(f"part {part.name!r} holds no array of 2 or more axes to show")
    return layers


def item_layers(node: Node, root: Location, entry: ItemEntry) -> list[LayerData]:
    """Layers of one item of ``node``, by its kind (raise for kinds that are not images)."""
    label = node_label(root, node.location)
    name = layer_name(label, entry.name)
    metadata = _origin(root, node.location, entry.name)
    if entry.kind in ("image", "labels"):
        return image_and_labels(node.item(entry.name), name, metadata)
    if entry.kind == "array":
        if entry.name.endswith(".npy"):
            data = node.item(entry.name).read_npy()
        else:
            data = node.open_array(entry.name)
        return [array_layer(data, name, metadata)]
    raise CacheTreeError(f"{entry.name} is a {entry.kind} item, which has no image to show")


def item_text(node: Node, entry: ItemEntry) -> str:
    """The text of a log or JSON item (JSON pretty-printed, long logs cut to their end)."""
    if entry.kind == "json":
        return json.dumps(node.load_json(entry.name), indent=2)
    text = node.load_text(entry.name)
    if len(text) > MAX_TEXT:
        text = f"[... first {len(text) - MAX_TEXT} characters not shown ...]\n" + text[-MAX_TEXT:]
    return text


def layer_keys(kwargs: dict[str, Any]) -> list[str]:
    """What identifies the layers of a layer data tuple's kwargs: their names, or for names
    that change (a canvas in progress says how much is merged) the ``layer`` of their
    metadata."""
    names = kwargs["name"] if isinstance(kwargs["name"], list) else [kwargs["name"]]
    metadata = kwargs.get("metadata")
    metadata = metadata if isinstance(metadata, list) else [metadata] * len(names)
    return [
        m["layer"] if isinstance(m, dict) and "layer" in m else name
        for name, m in zip(names, metadata, strict=True)
    ]


def layer_key(layer: Any) -> str:
    """What identifies a layer shown (see :func:`layer_keys`)."""
    metadata = getattr(layer, "metadata", None)
    return metadata["layer"] if isinstance(metadata, dict) and "layer" in metadata else layer.name


def add_layers(viewer: Any, layers: list[LayerData]) -> list[Any]:
    """Add layer data tuples to ``viewer``; an item already shown is selected, not added again.

    Returns the layers shown for the request (new or reused).
    """
    shown = []
    for data, kwargs, layer_type in layers:
        keys = layer_keys(kwargs)
        by_key = {layer_key(layer): layer for layer in viewer.layers}
        if all(key in by_key for key in keys):
            existing = [by_key[key] for key in keys]
            viewer.layers.selection.update(existing)
            shown += existing
            continue
        added = getattr(viewer, f"add_{layer_type}")(data, **kwargs)
        shown += added if isinstance(added, list) else [added]
    return shown


# -- requests -------------------------------------------------------------------------------
def open_item(node: Node, root: Location, entry: ItemEntry) -> Opened:
    """What opening one item shows: text for logs and JSON, layers for everything else."""
    if entry.kind in TEXT_KINDS:
        return Opened(text=item_text(node, entry))
    if entry.kind == "plot":
        suffix = posixpath.splitext(entry.name)[1].lower()
        if suffix not in PLOT_SUFFIXES:
            raise CacheTreeError(f"{entry.name}: only PNG, JPEG and SVG plots can be shown")
        return Opened(plot=(node.load_bytes(entry.name), suffix))
    if entry.kind == "keyed":
        return open_keyed(node, root, entry)
    layers = item_layers(node, root, entry)
    display.distinct_overlays(layers)
    return Opened(layers=layers)


def open_keyed(node: Node, root: Location, entry: ItemEntry) -> Opened:
    """A keyed store: its keys as text, and its arrays of 2 or more axes as one lazy layer.

    When every array shares shape and dtype they are stacked along a leading ``key`` axis
    (a slider; only the key shown is read); otherwise each key is its own layer, up to
    :data:`MAX_NODE_LAYERS` of them.
    """
    import dask

    from cachetree.tree.keyed import KeyedStore

    store = KeyedStore(node.location, entry.name, mmap=True)
    entries = store.entries()
    label = node_label(root, node.location)
    lines = [f"keyed store {entry.name}: {len(entries)} keys", ""]
    lines += [f"{e['key']!r}: {tuple(e['shape'])} {np.dtype(e['dtype'])}" for e in entries]
    opened = Opened(text="\n".join(lines))
    images = [e for e in entries if len(e["shape"]) >= 2]
    metadata = _origin(root, node.location, entry.name)
    kinds = {(tuple(e["shape"]), np.dtype(e["dtype"])) for e in images}
    load = dask.delayed(lambda key: store[key], pure=True)
    if len(kinds) == 1:
        shape, dtype = kinds.pop()
        stack = da.stack([da.from_delayed(load(e["key"]), shape, dtype) for e in images])
        kwargs = {
            "name": layer_name(label, entry.name),
            "metadata": {**metadata, "keys": [repr(e["key"]) for e in images]},
            "axis_labels": ("key", *(f"axis {i}" for i in range(len(shape)))),
        }
        opened.layers.append((stack, kwargs, "image"))
        return opened
    for e in images[:MAX_NODE_LAYERS]:
        name = f"{layer_name(label, entry.name)}[{e['key']!r}]"
        opened.layers.append(array_layer(store[e["key"]], name, metadata))
    if len(images) > MAX_NODE_LAYERS:
        opened.problems.append(f"{entry.name}: only the first {MAX_NODE_LAYERS} keys are shown")
    return opened


def canvas_in_progress(node: Node) -> Any | None:
    """The state of a canvas being merged in ``node`` (spilled or partial), else None.

    Reads nothing when the node has no parts; a finalised canvas is None (its heads are
    ordinary images of the node).
    """
    from cachetree.canvas.view import canvas_state

    if not node.location.raw_child(PARTS).exists():
        return None
    try:
        state = canvas_state(node.location)
    except NodeNotFoundError:
        return None
    return None if state.finalized else state


def open_part(node: Node, root: Location, part: PartInfo) -> Opened:
    """Layers of one part of ``node``."""
    metadata = _origin(root, node.location, f"parts/{part.name}")
    return Opened(layers=part_layers(part, node_label(root, node.location), metadata))


def open_node(node: Node, root: Location, *, limit: int = MAX_NODE_LAYERS) -> Opened:
    """The layers of a node's images, labels and canvases.

    A node with none of its own (typically a root or a group node) shows those of its
    descendants instead, breadth first and in the order they were made, up to ``limit``
    layers: opening a root gives an overview without reading every node of a large tree.
    As images cover each other, only the first node's images are visible then (labels are
    overlays and stay visible); the others are added hidden. Items that cannot be shown are
    listed in ``problems``; the others still open.
    """
    opened = Opened()
    _add_node_items(opened, node, root)
    if opened.layers:
        display.distinct_overlays(opened.layers)
        return opened
    queue = deque(_in_pipeline_order(node.children()))
    first_images: str | None = None
    while queue and len(opened.layers) < limit:
        child = queue.popleft()
        start = len(opened.layers)
        _add_node_items(opened, child, root, limit=limit)
        for _, kwargs, layer_type in opened.layers[start:]:
            if layer_type != "image":
                continue
            first_images = first_images or child.url
            if child.url != first_images:  # images hide each other: only the first step's show
                kwargs["visible"] = False
        queue.extend(_in_pipeline_order(child.children()))
    display.distinct_overlays(opened.layers)
    return opened


def _in_pipeline_order(nodes: list[Node]) -> list[Node]:
    """Nodes by creation time (the order a pipeline made them in), then by name."""

    def created(node: Node) -> str:
        try:
            return node.manifest.created
        except CacheTreeError:
            return "~"  # unreadable manifests last

    return sorted(nodes, key=lambda node: (created(node), node.name))


def _add_node_items(
    opened: Opened, node: Node, root: Location, *, limit: int | None = None
) -> None:
    label = node_label(root, node.location)
    try:
        if canvas_in_progress(node) is not None:
            opened.layers += canvas_layers(node, root)
    except Exception as exc:  # an unreadable canvas must not hide the node's images
        opened.problems.append(f"{label} (canvas): {exc}")
    try:
        entries = node_items(node)
    except Exception as exc:  # one unreadable node must not hide the others
        opened.problems.append(f"{label}: {exc}")
        return
    for entry in (e for e in entries if e.kind in LAYER_KINDS):
        if limit is not None and len(opened.layers) >= limit:
            return
        try:
            opened.layers += item_layers(node, root, entry)
        except Exception as exc:  # one unreadable item must not hide the others
            opened.problems.append(f"{layer_name(label, entry.name)}: {exc}")


def open_location(location: Location) -> Opened:
    """Whatever is at ``location``: a cache root or node, or a single OME-Zarr image."""
    if location.raw_child(MANIFEST).exists():
        root = find_tree_root(location)
        return open_node(Node(location, root=root), root)
    # a bare OME-Zarr image, possibly an item of a node
    parent = location.parent
    if parent.raw_child(MANIFEST).exists():
        root = find_tree_root(parent)
        name = layer_name(node_label(root, parent), location.name)
        metadata = _origin(root, parent, location.name)
    else:
        name, metadata = item_label(location.name), {"cachetree": {"url": location.url}}
    layers = image_and_labels(location, name, metadata)
    display.distinct_overlays(layers)
    return Opened(layers=layers)
