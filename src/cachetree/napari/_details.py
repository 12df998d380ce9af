"""What the browser's text pane says about the selected row."""

from __future__ import annotations

import json

from cachetree.tree.clean import format_bytes
from cachetree.tree.walk import NodeInfo

from ._node_tree import Row
from ._params import stale_explanation

__all__ = ["row_details"]

PARTS_EXPLAINED = (
    "parts: results written piece by piece (by workers, or spilled by a canvas), "
    "not combined yet; expand to see them, double-click one to show it"
)


def row_details(data: Row, parent: NodeInfo | None) -> str:
    """The details of a row; ``parent`` is the listed state of its node's parent."""
    if data.kind == "node":
        return _node_details(data.info, parent)
    if data.kind == "item":
        entry = data.entry
        shape = f"{entry.shape} {entry.dtype}" if entry.shape is not None else "-"
        return (
            f"item:   {entry.name}\nnode:   {data.path or '/'}\nkind:   {entry.kind}\n"
            f"shape:  {shape}\nsize:   {format_bytes(entry.bytes)}\n\n"
            "double-click to open it"
        )
    if data.kind == "part":
        part = data.part
        return (
            f"part:    {part.name}\nkind:    {part.kind}\nkey:     {json.dumps(part.key)}\n"
            f"created: {part.created}\nwriter:  {json.dumps(part.writer)}\n"
            f"arrays:  {json.dumps(part.arrays, indent=1)}\nmeta:    {json.dumps(part.meta)}"
        )
    if data.progress:
        done = sum(task.done for task in data.progress)
        return "\n".join(
            [
                f"cluster merge: {done} of {len(data.progress)} tasks done",
                *(f"  {task}" for task in data.progress),
                "",
                "tasks write the parts of the canvas they alone cover straight into its "
                "images; the node is finalised (cachetree combine) once every task is done",
            ]
        )
    return PARTS_EXPLAINED


def _node_details(info: NodeInfo, parent: NodeInfo | None) -> str:
    lines = [
        f"node:      {info.path or '/'}",
        f"status:    {info.state}",
        *stale_explanation(info, parent),
        f"url:       {info.url}",
        f"kind:      {info.kind}",
        f"size:      {format_bytes(info.bytes)}",
        f"time:      {info.time or '-'}",
    ]
    if info.writer is not None:
        alive = "alive" if info.writer_alive else "gone"
        lines.append(f"writer:    {info.writer.describe()} ({alive})")
    if info.error:
        lines.append(f"error:     {info.error}")
    if info.manifest is not None:
        lines.append(f"fingerprint: {info.manifest.fingerprint}")
        lines.append("params:    " + json.dumps(info.manifest.params, indent=1))
    return "\n".join(lines)
