"""The tree of the cache tree browser: one row per node, item, parts folder and part.

:class:`NodeTree` turns listings (:mod:`._listing`) into rows and keeps them in step with
later listings: rows are updated, added and removed in place, so expansion, selection and
scrolling survive a refresh. It knows nothing of threads, layers or the viewer.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any

import numpy as np
from qtpy.QtCore import QEvent, Qt, Signal
from qtpy.QtGui import QBrush, QColor
from qtpy.QtWidgets import QHeaderView, QTreeWidget, QTreeWidgetItem

from cachetree.canvas.cluster import TaskProgress, task_progress
from cachetree.tree.clean import format_bytes
from cachetree.tree.parts import PartInfo
from cachetree.tree.walk import NodeInfo

from ._listing import ItemEntry, Listing

__all__ = ["COLUMNS", "KIND", "NAME", "ROLE", "SIZE", "STATUS", "TIME", "NodeTree", "Row"]

COLUMNS = ("Name", "Status", "Kind", "Size", "Time")
NAME, STATUS, KIND, SIZE, TIME = range(len(COLUMNS))
STATE_COLOURS = {
    "committed": "#3cb371",
    "in progress": "#1e90ff",
    "stale": "#ff8c00",
    "has parts": "#ba55d3",
    "uncommitted": "#a0a0a0",
    "corrupt": "#ff4040",
    "root": "#a0a0a0",
}
ROLE = Qt.ItemDataRole.UserRole
"""Qt data role under which every row keeps its :class:`Row`."""
NAME_SHARE = 0.45
"""Largest share of the tree's width the Name column takes on its own (longer names are
shortened with "…"; drag the column edge to see more)."""
OPEN_KEYS = (Qt.Key.Key_Return, Qt.Key.Key_Enter, Qt.Key.Key_Space)
"""Keys that open the current row, as a double-click does."""


@dataclass(frozen=True)
class Row:
    """What a tree row stands for; ``path`` is always the path of the node concerned."""

    kind: str  # "node", "item", "parts" or "part"
    path: str
    info: NodeInfo | None = None
    entry: ItemEntry | None = None
    part: PartInfo | None = None
    progress: tuple[TaskProgress, ...] = ()
    """On the parts row of a cluster merge: where each planned task stands."""

    @property
    def key(self) -> tuple[str, str]:
        """Identity of the row among its siblings."""
        if self.kind == "node":
            return ("node", self.path)
        if self.kind == "item":
            return ("item", self.entry.name)
        if self.kind == "part":
            return ("part", self.part.name)
        return ("parts", "")

    def columns(self, root_name: str) -> list[str]:
        """The texts of the row's columns (``root_name`` names the root node)."""
        if self.kind == "node":
            name = self.path.rsplit("/", 1)[-1] if self.path else root_name
            return _node_columns(self.info, name or "/")
        if self.kind == "item":
            return _item_columns(self.entry)
        if self.kind == "part":
            return _part_columns(self.part)
        return ["parts", "", "", "", ""]


def _short_time(iso: str | None) -> str:
    """``2026-11-30T16:56:22.123+00:00`` -> ``11-30 16:56`` (the details show it in full)."""
    return (iso or "")[5:16].replace("T", " ")


def _node_columns(info: NodeInfo, name: str) -> list[str]:
    kind = info.kind.removeprefix("node: ")  # say what it holds, not that it is a node
    return [name, info.state, kind, format_bytes(info.bytes), _short_time(info.time)]


def _item_columns(entry: ItemEntry) -> list[str]:
    kind = entry.kind
    if entry.shape is not None:
        kind += f" {'x'.join(map(str, entry.shape))} {_dtype_name(entry.dtype)}".rstrip()
    if entry.labels:
        kind += f" + labels {', '.join(entry.labels)}"
    return [entry.name, "", kind, format_bytes(entry.bytes), ""]


def _dtype_name(dtype: str | None) -> str:
    """``"<f4"`` -> ``"float32"`` (as given when numpy does not know it)."""
    try:
        return np.dtype(dtype).name if dtype else ""
    except TypeError:
        return str(dtype)


def _part_columns(part: PartInfo) -> list[str]:
    key = "" if part.key is None else f" {json.dumps(part.key)}"
    return [
        part.name,
        "",
        f"{part.kind}{key}",
        format_bytes(part.nbytes),
        _short_time(part.created),
    ]


def row_data(row: QTreeWidgetItem) -> Row:
    """The :class:`Row` a tree row stands for."""
    return row.data(NAME, ROLE)


class NodeTree(QTreeWidget):
    """Rows of a cache tree, kept in step with its listings.

    Signals
    -------
    node_row_set(str, object)
        A node row was (re)drawn from a listing: its path and :class:`NodeInfo`.
    open_requested()
        Enter, Return or Space was pressed on the current row.
    """

    node_row_set = Signal(str, object)
    open_requested = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.root_name = ""
        self._needle = ""
        self._rows: dict[str, QTreeWidgetItem] = {}
        self.loaded: set[str] = set()
        """Paths of the nodes whose listing has been shown (the ones a refresh lists again)."""
        self.setHeaderLabels(COLUMNS)
        self.setExpandsOnDoubleClick(False)
        self.setUniformRowHeights(True)
        header = self.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(NAME, QHeaderView.ResizeMode.Interactive)  # fit_columns
        header.setSectionResizeMode(KIND, QHeaderView.ResizeMode.Stretch)  # elided when narrow
        self.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.setSelectionMode(QTreeWidget.SelectionMode.ExtendedSelection)

    def forget_rows(self, root_name: str = "") -> None:
        """Forget every row."""
        self.clear()
        self._rows.clear()
        self.loaded.clear()
        self.root_name = root_name

    def row(self, path: str) -> QTreeWidgetItem | None:
        """The row of the node at ``path`` (once listed)."""
        return self._rows.get(path)

    def show_root(self, listing: Listing) -> QTreeWidgetItem:
        """Show the root node from its listing, expanded and current."""
        row = self._make_row(None, Row("node", "", listing.info))
        self.apply_listing(listing)
        row.setExpanded(True)
        self.setCurrentItem(row)
        return row

    def _make_row(self, parent: QTreeWidgetItem | None, data: Row, index: int = -1):
        row = QTreeWidgetItem()
        if parent is None:
            self.addTopLevelItem(row)
        elif index < 0:
            parent.addChild(row)
        else:
            parent.insertChild(index, row)
        if data.kind == "node":  # known before node_row_set announces it
            self._rows[data.path] = row
            row.setChildIndicatorPolicy(QTreeWidgetItem.ChildIndicatorPolicy.ShowIndicator)
        self._set_row(row, data)
        return row

    def _set_row(self, row: QTreeWidgetItem, data: Row) -> None:
        row.setData(NAME, ROLE, data)
        columns = data.columns(self.root_name)
        for column, text in enumerate(columns):
            row.setText(column, text)
        row.setToolTip(KIND, columns[KIND])
        if data.kind == "node":
            row.setToolTip(NAME, data.info.error or data.info.url)
            colour = STATE_COLOURS.get(data.info.state)
            if colour:
                row.setForeground(STATUS, QBrush(QColor(colour)))
            self.node_row_set.emit(data.path, data.info)

    def apply_listing(self, listing: Listing) -> None:
        """Update the rows below the listed node (its items, parts and children)."""
        row = self._rows.get(listing.path)
        if row is None:
            return
        if not listing.path:  # the root's own state comes from its listing, others' from parents
            self._set_row(row, Row("node", "", listing.info))
        wanted = [Row("item", listing.path, entry=e) for e in listing.items]
        progress = tuple(task_progress(listing.parts) or ()) if listing.parts else ()
        if listing.parts:
            wanted.append(Row("parts", listing.path, progress=progress))
        wanted += [Row("node", info.path, info) for info in listing.children]
        self._sync_children(row, wanted)
        if listing.parts:
            parts_row = next(
                row.child(i)
                for i in range(row.childCount())
                if row_data(row.child(i)).kind == "parts"
            )
            self._sync_children(
                parts_row, [Row("part", listing.path, part=p) for p in listing.parts]
            )
            done = sum(task.done for task in progress)
            parts_row.setText(
                KIND,
                f"cluster merge: {done} of {len(progress)} tasks done"
                if progress
                else f"{len(listing.parts)} parts",
            )
            parts_row.setText(SIZE, format_bytes(sum(p.nbytes for p in listing.parts)))
        self.loaded.add(listing.path)
        row.setChildIndicatorPolicy(
            QTreeWidgetItem.ChildIndicatorPolicy.DontShowIndicatorWhenChildless
        )
        self._filter()
        self.fit_columns()

    def _sync_children(self, row: QTreeWidgetItem, wanted: list[Row]) -> None:
        """Make ``row``'s children match ``wanted``: update, add and remove, keep expansion."""
        existing = {row_data(row.child(i)).key: row.child(i) for i in range(row.childCount())}
        keys = {data.key for data in wanted}
        for key, child in existing.items():
            if key not in keys:
                self._forget(child)
                row.removeChild(child)
        for index, data in enumerate(wanted):
            child = existing.get(data.key)
            if child is None:
                self._make_row(row, data, index)
            else:
                self._set_row(child, data)

    def _forget(self, row: QTreeWidgetItem) -> None:
        data = row_data(row)
        if data.kind == "node":
            self._rows.pop(data.path, None)
            self.loaded.discard(data.path)
        for i in range(row.childCount()):
            self._forget(row.child(i))

    def remove_node(self, path: str) -> bool:
        """Remove the node at ``path`` and its rows; True when that was the root."""
        row = self._rows.get(path)
        if row is None:
            return False
        self._forget(row)
        parent = row.parent()
        if parent is None:
            self.takeTopLevelItem(self.indexOfTopLevelItem(row))
            return True
        parent.removeChild(row)
        return False

    def fit_columns(self) -> None:
        """Name as wide as its longest name up to :data:`NAME_SHARE` of the width; Kind
        takes what is left (shortened with "…"); Status, Size and Time fit their content."""
        wanted = self.sizeHintForColumn(NAME) + self.indentation()
        room = int(self.viewport().width() * NAME_SHARE)
        self.header().resizeSection(NAME, max(min(wanted, room), 80))

    def resizeEvent(self, event: Any) -> None:  # Qt's name
        super().resizeEvent(event)
        self.fit_columns()

    def keyPressEvent(self, event: Any) -> None:  # Qt's name
        """Enter, Return and Space open the current row."""
        if (
            event.type() == QEvent.Type.KeyPress
            and event.key() in OPEN_KEYS
            and self.currentItem() is not None
        ):
            self.open_requested.emit()
            return
        super().keyPressEvent(event)

    def set_filter(self, needle: str) -> None:
        """Show only rows whose name, status or kind contains ``needle``, with their
        ancestors and everything below them (also in later listings); the root always stays."""
        self._needle = needle.strip().lower()
        self._filter()

    def _filter(self) -> None:
        needle = self._needle

        def visit(row: QTreeWidgetItem, shown_by_parent: bool) -> bool:
            hit = (
                shown_by_parent
                or not needle
                or any(needle in row.text(c).lower() for c in (NAME, STATUS, KIND))
            )
            below = [visit(row.child(i), hit) for i in range(row.childCount())]
            visible = hit or any(below)
            row.setHidden(not visible)
            return visible

        for i in range(self.topLevelItemCount()):
            top = self.topLevelItem(i)
            visit(top, False)
            top.setHidden(False)

    def select(self, path: str, item: str | None = None) -> QTreeWidgetItem | None:
        """Make the node at ``path`` (or its item ``item``) the current row."""
        row = self._rows.get(path)
        if row is not None and item is not None:
            row = next(
                (
                    row.child(i)
                    for i in range(row.childCount())
                    if row_data(row.child(i)).key == ("item", item)
                ),
                None,
            )
        if row is not None:
            self.setCurrentItem(row)
        return row

    def node_info(self, path: str) -> NodeInfo | None:
        """The listed state of the node at ``path``, if it has a row."""
        row = self._rows.get(path)
        return row_data(row).info if row is not None else None

    def parent_info(self, path: str) -> NodeInfo | None:
        """The listed state of the parent of the node at ``path`` (None for the root)."""
        return self.node_info(posixpath.dirname(path)) if path else None

    def selected_nodes(self) -> list[str]:
        """Paths of the node rows selected (Ctrl+click adds one)."""
        rows = [row_data(row) for row in self.selectedItems()]
        return [data.path for data in rows if data.kind == "node"]
