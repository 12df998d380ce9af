"""Where the cachetree docks go, so that the browser's tree keeps its rows.

napari stacks plugin docks of one side on top of each other: with the browser and the
Commit, Combine and Clean widgets open, each gets a quarter of the height and the tree
shrinks to a couple of rows. Instead, the action widgets share one tabbed dock (the one
opened last in front), and the browser keeps :data:`BROWSER_SHARE` of the height above it.
"""

from __future__ import annotations

import contextlib

from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import QDockWidget, QMainWindow, QWidget

ROLE_PROPERTY = "cachetree_dock_role"
BROWSER, ACTION = "browser", "action"
BROWSER_SHARE = 0.7
"""Share of the docks' height the browser keeps when action docks sit under it."""


def dock_of(widget: QWidget) -> QDockWidget | None:
    """The dock widget holding ``widget``, if it is docked."""
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    return parent


def _role(dock: QDockWidget) -> str | None:
    contents = dock.widget()
    if contents is None:
        return None
    for widget in [contents, *contents.findChildren(QWidget)]:
        role = widget.property(ROLE_PROPERTY)
        if role:
            return str(role)
    return None


def arrange(widget: QWidget) -> None:
    """Tabify the action docks of ``widget``'s window and give the browser most height."""
    dock = dock_of(widget)
    window = dock.parentWidget() if dock is not None else None
    if not isinstance(window, QMainWindow) or dock.isFloating():
        return
    area = window.dockWidgetArea(dock)
    ours = [
        d
        for d in window.findChildren(QDockWidget)
        if not d.isHidden() and not d.isFloating() and window.dockWidgetArea(d) == area
    ]
    roles = {d: _role(d) for d in ours}
    actions = [d for d in ours if roles[d] == ACTION]
    browsers = [d for d in ours if roles[d] == BROWSER]
    if actions:
        first = actions[0]
        for other in actions[1:]:
            if other not in window.tabifiedDockWidgets(first):
                window.tabifyDockWidget(first, other)
    dock.raise_()
    if browsers and actions:
        height = sum(d.height() for d in (browsers[0], actions[0])) or window.height()
        share = int(height * BROWSER_SHARE)
        window.resizeDocks(
            [browsers[0], actions[0]], [share, height - share], Qt.Orientation.Vertical
        )


class _ArrangeOnShow(QObject):
    """Arranges the docks once, when the widget is first shown (docked by then)."""

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # Qt's name
        if event.type() == QEvent.Type.Show:
            watched.removeEventFilter(self)
            QTimer.singleShot(0, lambda: _arrange_if_alive(watched))
        return False


def _arrange_if_alive(widget: QWidget) -> None:
    with contextlib.suppress(RuntimeError):  # deleted meanwhile
        arrange(widget)


def arrange_when_docked(widget: QWidget, role: str) -> None:
    """Mark ``widget`` as a cachetree ``role`` and arrange the docks when it is first shown."""
    widget.setProperty(ROLE_PROPERTY, role)
    arranger = _ArrangeOnShow(widget)
    widget.installEventFilter(arranger)
