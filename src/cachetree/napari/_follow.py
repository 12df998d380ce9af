"""The viewer follows a pipeline: each node it makes is opened once, as soon as it shows.

:class:`Follower` watches the node rows the Cache tree browser draws from its listings (in
live mode, every few seconds) and opens each node of one root through the browser's own
opening, as a double-click does, in a worker thread:

- a committed node holding images or labels, as soon as it is listed;
- a node still being written, as soon as a canvas it merges has reached the disk (a
  checkpoint): its layers then grow with the merge and switch to the finished pyramid when
  the canvas is finalised (:mod:`._live`).

Nodes found together open one after the other in the order they were made, so the input
lies under the results drawn over it. A node is opened once only: layers the user deletes
stay closed.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QObject, QTimer

from cachetree.fs.location import Location
from cachetree.tree.manifest import Status
from cachetree.tree.node import Node
from cachetree.tree.walk import NodeInfo

from ._layers import LAYER_KINDS, canvas_in_progress
from ._threads import run_in_thread

if TYPE_CHECKING:
    from ._browser import CacheTreeBrowser

__all__ = ["Follower", "shows_layers"]


def shows_layers(info: NodeInfo) -> bool:
    """Whether a committed node holds images or labels (what opening it shows as layers)."""
    items = info.manifest.items.values() if info.manifest is not None else ()
    return any(item.get("kind") in LAYER_KINDS for item in items)


def _made(info: NodeInfo) -> str:
    """When the node was made (its manifest's creation time), for the opening order."""
    return (info.manifest.created if info.manifest is not None else None) or "~"


class Follower(QObject):
    """Opens the nodes of ``root`` once each as the browser lists them (see the module).

    It lives as long as the browser; it follows only ``root``, not a root typed in later.
    """

    def __init__(self, browser: CacheTreeBrowser, root: str | Location):
        super().__init__(browser)
        self.browser = browser
        self.root_url = root.url if isinstance(root, Location) else Location.from_url(root).url
        self.opened: set[str] = set()
        """Paths of the nodes opened (or being opened): never opened again."""
        self._queue: dict[str, str] = {}  # path -> when it was made
        self._checking: set[str] = set()
        self._opening = False
        browser.tree.node_row_set.connect(self._row_set)

    def _row_set(self, path: str, info: NodeInfo) -> None:
        root = self.browser.root
        if not path or root is None or root.url != self.root_url:
            return
        if path in self.opened or path in self._queue or path in self._checking:
            return
        if info.status is Status.COMMITTED:
            if shows_layers(info):
                self._enqueue(path, _made(info))
        elif info.status is Status.OPEN and info.has_parts:
            self._checking.add(path)
            run_in_thread(
                self,
                canvas_in_progress,
                Node(root.join(path), root=root),
                on_return=partial(self._canvas_checked, path, _made(info)),
                on_error=lambda exc: None,  # not readable yet: the next listing asks again
                on_finish=lambda: self._checking.discard(path),
            )

    def _canvas_checked(self, path: str, made: str, state: Any) -> None:
        if state is not None:  # a canvas in progress: open it while it merges
            self._enqueue(path, made)

    def _enqueue(self, path: str, made: str) -> None:
        if path not in self.opened:
            self._queue[path] = made
            QTimer.singleShot(0, self._open_next)  # after the rest of this listing

    def _open_next(self) -> None:
        if self._opening or not self._queue:
            return
        path = min(self._queue, key=lambda p: (self._queue[p], p))
        del self._queue[path]
        row = self.browser.row(path)
        if row is None:  # gone since it was listed
            self._open_next()
            return
        self.opened.add(path)
        self._opening = True
        self.browser.open_row(row, then=self._opened)

    def _opened(self) -> None:
        self._opening = False
        self._open_next()
