"""The node selected in the browser, shared with the Commit, Combine and Clean widgets.

One :class:`Selection` per viewer (:func:`selection_for`): the browser sets it, the action
widgets follow it, and an action that changed the tree says so through
:attr:`Selection.tree_changed` so the browser lists it again.
"""

from __future__ import annotations

import weakref
from typing import Any

from psygnal import Signal

from cachetree.fs.location import Location
from cachetree.tree.node import Node
from cachetree.tree.walk import NodeInfo


class Selection:
    """The selected node of one viewer: tree root, path in the tree and last known state."""

    changed = Signal(object)
    """Emitted with the Selection after the selected node (or its known state) changed."""
    tree_changed = Signal(str)
    """Emitted with a node path after an action modified the tree at or below that node."""

    def __init__(self) -> None:
        self.root: Location | None = None
        self.path: str | None = None
        self.info: NodeInfo | None = None

    def select(self, root: Location | None, path: str | None, info: NodeInfo | None = None):
        """Make the node at ``path`` (relative to ``root``) the selection; None clears it."""
        same = root == self.root and path == self.path and info == self.info
        self.root, self.path, self.info = root, path, info
        if not same:
            self.changed.emit(self)

    @property
    def node(self) -> Node | None:
        """A handle on the selected node (nothing is read), or None."""
        if self.root is None or self.path is None:
            return None
        location = self.root.join(self.path) if self.path else self.root
        return Node(location, root=self.root)

    @property
    def label(self) -> str:
        """How the selection is shown: ``path`` in ``root``, or a hint when there is none."""
        if self.root is None or self.path is None:
            return "no node selected: pick one in the Cache tree browser"
        return f"{self.path or '/'}  in  {self.root.url}"


_SELECTIONS: dict[int, Selection] = {}


def selection_for(viewer: Any) -> Selection:
    """The selection shared by every cachetree widget of ``viewer`` (created on first use).

    napari hands plugin widgets a proxy of the viewer, a new one per widget: the selection
    is attached to the viewer behind the proxy, and dropped when that viewer is.
    """
    real = getattr(viewer, "__wrapped__", viewer)
    key = id(real)
    selection = _SELECTIONS.get(key)
    if selection is None:
        selection = _SELECTIONS[key] = Selection()
        weakref.finalize(real, _SELECTIONS.pop, key, None)
    return selection
