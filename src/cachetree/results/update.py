"""Publish results into a node: hold its lock while they are added, then commit it (or
refresh a committed node's inventory) in one step."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..fs.location import Location
from ..tree.inventory import scan_items
from ..tree.lock import acquire_lock, read_lock, release_lock
from ..tree.manifest import Status, now_iso, read_manifest, write_manifest
from ..tree.node import Node

__all__ = ["NodeUpdate", "update_open_meta"]


def update_open_meta(loc: Location, meta: Mapping[str, Any]) -> None:
    """Merge ``meta`` into the manifest of the open node at ``loc``."""
    manifest = read_manifest(loc)
    manifest.meta.update(meta)
    write_manifest(loc, manifest)


class NodeUpdate:
    """Hold a node's lock while results are added; publish with :meth:`finish`.

    An open node is committed by :meth:`finish`; a committed node stays committed and gets a
    refreshed inventory (new files are written before the store inventory, and that before the
    manifest, so readers never see a listed file missing). On error the node is left as it
    was (open or committed) and a lock taken here is released.
    """

    def __init__(self, node: Node):
        self.node = node
        self.loc = node.location
        self.acquired = False
        self.finished = False

    def __enter__(self) -> NodeUpdate:
        read_manifest(self.loc)  # NodeNotFoundError / CorruptManifestError
        if not self.node.writing:
            held = read_lock(self.loc)
            mine_already = held is not None and held.is_mine()
            acquire_lock(self.loc)
            self.acquired = not mine_already
        self.manifest = read_manifest(self.loc)
        self.committed = self.manifest.status is Status.COMMITTED
        return self

    def finish(self, meta: Mapping[str, Any]) -> None:
        if self.committed:
            manifest = read_manifest(self.loc)
            items = scan_items(self.loc, set(self.node.child_names()))
            for name, extra in self.node._items_meta.items():
                if name in items:
                    items[name].update(extra)
            manifest.items = items
            manifest.meta.update(meta)
            manifest.meta["updated"] = now_iso()
            write_manifest(self.loc, manifest)
            if self.acquired:
                release_lock(self.loc)
        else:
            update_open_meta(self.loc, meta)
            self.node.commit()
        self.finished = True

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self.finished and self.acquired:
            release_lock(self.loc)
