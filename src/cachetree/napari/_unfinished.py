"""What a node whose writer died lacks, said before anyone commits it.

Committing such a node makes later runs reuse it as complete. The writer's own record of
what it meant to write died with it, so this lists what can be seen instead: the items that
are there, a canvas never finalised, parts never combined. Reads only metadata; run it in a
worker thread.
"""

from __future__ import annotations

from cachetree.tree.node import Node
from cachetree.tree.parts import list_parts
from cachetree.tree.walk import NodeInfo

from ._layers import canvas_in_progress
from ._listing import is_internal, node_items


def writer_died(info: NodeInfo | None) -> bool:
    """Whether the node was left uncommitted by a writer that is gone (its lock remains)."""
    return info is not None and info.writer is not None and not info.writer_alive


def missing(node: Node, info: NodeInfo) -> list[str]:
    """Sentences on what the node lacks or left unfinished, the writer's death first."""
    lines = [f"its writer ({info.writer.describe()}) died before committing it"]
    state = canvas_in_progress(node)
    if state is not None:
        heads = ", ".join(sorted(state.spec.get("heads", {}))) or "its heads"
        lines.append(
            f"its canvas was never finalised: {heads} exist only as {state.spill_parts} "
            "spilled parts, not as images"
        )
    pending = [p for p in list_parts(node.location) if not is_internal(p.name)]
    if pending and state is None:
        lines.append(f"{len(pending)} parts were never combined into results")
    items = [entry.name for entry in node_items(node, info)]
    if items:
        lines.append(f"it holds only what was written: {', '.join(items)}")
    else:
        lines.append("it holds no items at all")
    return lines


def confirmation_text(path: str, lines: list[str]) -> str:
    """The question asked before committing a node whose writer died."""
    listed = "\n".join(f"• {line}" for line in lines)
    return (
        f"Commit {path!r} although its writer died?\n\n{listed}\n\n"
        "Once committed, the node counts as complete: later runs reuse it as it is instead "
        "of computing it again."
    )
