"""Names of the files cachetree keeps inside a node directory."""

__all__ = [
    "CANVAS_JSON",
    "LOCK",
    "MANIFEST",
    "PARTS",
]


MANIFEST = ".cachetree.json"
"""Per-node state; written first as ``open`` and last, atomically, as ``committed``."""

LOCK = ".cachetree.lock"
"""Owner lock (host, pid, process start time) held while a node is being written."""

PARTS = ".cachetree-parts"
"""Directory of individually committed parts; survives a re-initialisation of its node."""

CANVAS_JSON = "canvas.json"
"""Item a finalised canvas writes beside its heads (its spec); a node holding it takes no
more parts, so anything unfinished in its parts area is a leftover."""
