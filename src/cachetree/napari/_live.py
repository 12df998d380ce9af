"""Layers of canvases still merging, kept up to date in place.

:func:`update_canvas_layers` finds the layers of canvases in progress (their metadata names
the head), reads each canvas' state in a worker thread and, when more was merged, gives the
same layers new lazy data: contrast, colormap, opacity and visibility stay as the user set
them, and the name says how much is merged. Once a canvas is finalised its layers switch to
the stored pyramids of its heads, under the names opening those images gives, so opening the
node again adds nothing twice.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from cachetree.fs.location import Location
from cachetree.images import ngff
from cachetree.tree.node import Node

from ._layers import canvas_layers, layer_name, node_label
from ._threads import run_in_thread


@dataclass(frozen=True)
class _Update:
    """New data, name and metadata of one layer, by its key (``metadata["layer"]``)."""

    key: str
    data: Any
    name: str
    metadata: dict[str, Any]


def _stamp(state: Any) -> tuple[Any, ...]:
    """What changes when more of a canvas reaches the disk."""
    preview = state.preview or {}
    return (
        state.finalized,
        state.rows_final,
        state.spill_parts,
        state.batches_done,
        state.tasks_done,
        preview.get("folder"),
    )


def _canvas_layers_by_node(viewer: Any) -> dict[tuple[str, str], list[Any]]:
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for layer in viewer.layers:
        metadata = getattr(layer, "metadata", None) or {}
        origin = metadata.get("cachetree")
        if "canvas_head" in metadata and isinstance(origin, dict):
            groups[(origin["root"], origin["node"])].append(layer)
    return groups


def _updates(root_url: str, path: str, stamp: tuple[Any, ...] | None):
    """Worker thread: the canvas' new stamp and layer updates (None when unchanged)."""
    from cachetree.canvas.view import canvas_state

    root = Location.from_url(root_url)
    location = root.join(path) if path else root
    location.fs.invalidate_cache()
    node = Node(location, root=root)
    state = canvas_state(location)
    new = _stamp(state)
    if new == stamp:
        return new, None
    if state.finalized:
        return new, _final_updates(node, root, state)
    updates = []
    for data, kwargs, _ in canvas_layers(node, root):
        names = kwargs["name"] if isinstance(kwargs["name"], list) else [kwargs["name"]]
        metadata = kwargs["metadata"]
        metadata = metadata if isinstance(metadata, list) else [metadata]
        for c, (name, meta) in enumerate(zip(names, metadata, strict=True)):
            levels = data if isinstance(data, list) else [data]
            if len(names) > 1:
                levels = [level[c] for level in levels]
            updates.append(_Update(meta["layer"], levels, name, meta))
    return new, updates


def _final_updates(node: Node, root: Location, state: Any) -> list[_Update]:
    """The layers of a finalised canvas: each head's stored pyramid, as opening it names it."""
    label = node_label(root, node.location)
    updates = []
    for head, item in state.spec["images"].items():
        location = node.location.join(item)
        levels = ngff.open_image(location)
        info = ngff.read_image(location)
        name = layer_name(label, item)
        origin = {"cachetree": {"root": root.url, "node": node.location.relative_to(root)}}
        origin["cachetree"]["item"] = item
        if "c" not in info.axes:
            key = layer_name(label, head)
            updates.append(_Update(key, levels, name, {**origin, "layer": name}))
            continue
        channels = info.channel_names or tuple(f"channel_{i}" for i in range(info.shape[0]))
        for c, channel in enumerate(channels):
            final = f"{name} [{channel}]"
            key = f"{layer_name(label, head)} [{c}]"
            per_channel = [level[c] for level in levels]
            updates.append(_Update(key, per_channel, final, {**origin, "layer": final}))
    return updates


def _apply(layers: list[Any], updates: list[_Update]) -> None:
    """GUI thread: new data, names and metadata for the layers, in place."""
    by_key = {layer.metadata.get("layer", layer.name): layer for layer in layers}
    for update in updates:
        layer = by_key.get(update.key)
        if layer is None:
            continue
        layer.data = update.data if layer.multiscale else update.data[0]
        layer.metadata = update.metadata
        layer.name = update.name


def update_canvas_layers(owner: Any, viewer: Any) -> None:
    """Bring the viewer's layers of canvases in progress up to date (in worker threads).

    ``owner`` (a widget) keeps the workers and each canvas' last stamp.
    """
    stamps: dict[tuple[str, str], Any] = owner.__dict__.setdefault("_canvas_stamps", {})
    running: set[tuple[str, str]] = owner.__dict__.setdefault("_canvas_updating", set())
    for key, layers in _canvas_layers_by_node(viewer).items():
        if key in running:
            continue
        running.add(key)

        def done(result: Any, key: tuple[str, str] = key, layers: list[Any] = layers) -> None:
            stamp, updates = result
            stamps[key] = stamp
            if updates:
                _apply(layers, updates)

        run_in_thread(
            owner,
            _updates,
            *key,
            stamps.get(key),
            on_return=done,
            on_finish=lambda key=key: running.discard(key),
        )
