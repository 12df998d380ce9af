"""The Cache tree browser dock widget.

A tree of nodes with their state, kind, size and time. A node's items, parts and children
are listed when it is first expanded; *Refresh* (or *Live*, on a timer) lists every
expanded node again and updates the rows in place. All listing and opening runs in worker
threads: the GUI thread only builds rows and adds layers.

Double-click, Enter or Space (or *Open*) shows a row: a node's images, labels and
canvases, or one item or part, as lazy layers; logs and JSON in the text pane below the
tree, plots in the plot pane there. Single-click shows a row's details there and makes its
node the selection the Commit, Combine and Clean widgets act on. Two nodes selected
together (Ctrl+click) can be compared: parameters side by side, image differences as lazy
layers.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, Qt, QTimer
from qtpy.QtGui import QBrush, QColor, QFontDatabase
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from cachetree.errors import CacheTreeError
from cachetree.fs.location import Location
from cachetree.tree.clean import format_bytes
from cachetree.tree.node import Node
from cachetree.tree.parts import PartInfo
from cachetree.tree.walk import NodeInfo

from ._compare import compare_nodes
from ._docking import BROWSER, arrange_when_docked
from ._layers import Opened, add_layers, open_item, open_node, open_part
from ._listing import ItemEntry, Listing, list_node
from ._params import stale_explanation
from ._plot_pane import PlotPane
from ._selection import selection_for
from ._threads import busy, qt_alive, run_in_thread

if TYPE_CHECKING:
    import napari

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


class CacheTreeBrowser(QWidget):
    """Browse a cache tree, open its content as layers, and pick the node actions act on.

    Parameters
    ----------
    napari_viewer
        The viewer layers are added to (napari passes it when docking the widget).
    root
        Cache root to show at once (local path or fsspec URL); by default the root of the
        first layer opened from a cache tree, if any.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, root: str | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.selection = selection_for(napari_viewer)
        self.root: Location | None = None
        self._rows: dict[str, QTreeWidgetItem] = {}
        self._loaded: set[str] = set()
        self._pending: set[str] = set()
        self._generation = 0

        self.root_edit = QLineEdit()
        self.root_edit.setPlaceholderText("cache root: folder or fsspec URL (s3://...)")
        self.root_edit.returnPressed.connect(self._load_typed_root)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        load = QPushButton("Load")
        load.clicked.connect(self._load_typed_root)

        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("filter: name, status or kind")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.textChanged.connect(self._apply_filter)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.refresh)
        self.live_box = QCheckBox("Live")
        self.live_box.setToolTip("list the expanded nodes again on a timer")
        self.live_box.toggled.connect(self._live_toggled)
        self.interval_box = QDoubleSpinBox()
        self.interval_box.setRange(0.2, 600.0)
        self.interval_box.setValue(2.0)
        self.interval_box.setSuffix(" s")
        self.interval_box.valueChanged.connect(self._live_toggled)
        self._timer = QTimer(self)
        self._timer.timeout.connect(self._live_tick)

        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(COLUMNS)
        self.tree.setExpandsOnDoubleClick(False)
        self.tree.setUniformRowHeights(True)
        header = self.tree.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(NAME, QHeaderView.ResizeMode.Interactive)  # fit_columns
        header.setSectionResizeMode(KIND, QHeaderView.ResizeMode.Stretch)  # elided when narrow
        self.tree.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.tree.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.tree.installEventFilter(self)
        self.setMinimumWidth(500)
        self.tree.setSelectionMode(QTreeWidget.SelectionMode.ExtendedSelection)
        self.tree.itemSelectionChanged.connect(self._selection_rows_changed)
        self.tree.itemExpanded.connect(self._expanded)
        self.tree.itemDoubleClicked.connect(lambda row, _column: self.open_row(row))
        self.tree.currentItemChanged.connect(self._current_changed)

        self.open_button = QPushButton("Open")
        self.open_button.setToolTip("show the selected node, item or part (or double-click it)")
        self.open_button.clicked.connect(self.open_selected)
        self.compare_button = QPushButton("Compare")
        self.compare_button.setToolTip(
            "select two nodes (Ctrl+click) to see their parameters side by side and the "
            "differences of their images"
        )
        self.compare_button.setEnabled(False)
        self.compare_button.clicked.connect(self.compare_selected)
        self.status_label = QLabel("no cache tree loaded")
        self.status_label.setWordWrap(True)

        self.text_pane = QPlainTextEdit()
        self.text_pane.setReadOnly(True)
        self.text_pane.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.text_pane.setPlaceholderText("details, logs and JSON of the selected row")
        self.text_pane.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.plot_pane = PlotPane()
        self.lower_pane = QStackedWidget()
        self.lower_pane.addWidget(self.text_pane)
        self.lower_pane.addWidget(self.plot_pane)

        layout = QVBoxLayout(self)
        row1 = QHBoxLayout()
        row1.addWidget(self.root_edit, 1)
        row1.addWidget(browse)
        row1.addWidget(load)
        row2 = QHBoxLayout()
        row2.addWidget(self.filter_edit, 1)
        row2.addWidget(self.refresh_button)
        row2.addWidget(self.live_box)
        row2.addWidget(self.interval_box)
        row3 = QHBoxLayout()
        row3.addWidget(self.open_button)
        row3.addWidget(self.compare_button)
        row3.addWidget(self.status_label, 1)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.tree)
        splitter.addWidget(self.lower_pane)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 1)
        layout.addLayout(row1)
        layout.addLayout(row2)
        layout.addWidget(splitter, 1)
        layout.addLayout(row3)

        arrange_when_docked(self, BROWSER)
        self.selection.tree_changed.connect(self._tree_changed)
        self.viewer.layers.events.inserted.connect(self._layer_inserted)
        listeners = (self.selection, self._tree_changed, self.viewer, self._layer_inserted)
        self.destroyed.connect(partial(_disconnect, *listeners))
        if root is not None:
            self.set_root(root)
        else:
            self._root_from_layers()

    # -- root -----------------------------------------------------------------------------
    def set_root(self, root: str | Location) -> None:
        """Show the cache tree at ``root`` (listed in a worker thread)."""
        url = root.url if isinstance(root, Location) else str(root)
        self.root_edit.setText(url)
        self._generation += 1
        generation = self._generation
        self.tree.clear()
        self._rows.clear()
        self._loaded.clear()
        self._pending.clear()
        self.root = None
        self.selection.select(None, None)
        self.status_label.setText(f"listing {url} …")
        run_in_thread(
            self,
            _open_root,
            root,
            on_return=lambda result: self._root_listed(generation, *result),
            on_error=lambda exc: self._failed(generation, f"cannot open {url}: {exc}"),
        )

    def _root_listed(self, generation: int, root: Location, listing: Listing | None) -> None:
        if generation != self._generation:
            return
        if listing is None:
            self._failed(generation, f"{root.url} is not a cache tree (no manifest found)")
            return
        self.root = root
        row = self._make_row(None, Row("node", "", listing.info))
        self._apply_listing(listing)
        row.setExpanded(True)
        self.tree.setCurrentItem(row)
        self.status_label.setText(f"{root.url}")

    def _failed(self, generation: int, message: str) -> None:
        if generation == self._generation:
            self.status_label.setText(message)
            show_warning(message)

    def _load_typed_root(self) -> None:
        text = self.root_edit.text().strip()
        if text:
            self.set_root(text)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Cache tree root", self.root_edit.text())
        if folder:
            self.set_root(folder)

    def _root_from_layers(self) -> None:
        for layer in self.viewer.layers:
            origin = layer.metadata.get("cachetree") if hasattr(layer, "metadata") else None
            if isinstance(origin, dict) and origin.get("root"):
                self.set_root(origin["root"])
                return

    def _layer_inserted(self, event: Any) -> None:
        if qt_alive(self) and self.root is None and not self.root_edit.text():
            self._root_from_layers()

    # -- listing --------------------------------------------------------------------------
    def refresh(self) -> None:
        """List every expanded node again and update the rows in place."""
        if self.root is None:
            self._load_typed_root()
            return
        paths = sorted(self._loaded - self._pending, key=lambda p: (p.count("/"), p))
        self._request(paths)

    def _request(self, paths: list[str]) -> None:
        if not paths or self.root is None:
            return
        self._pending.update(paths)
        generation = self._generation
        run_in_thread(
            self,
            _list_many,
            self.root,
            paths,
            on_yield=lambda result: self._listed(generation, *result),
            on_error=lambda exc: self._failed(generation, f"listing failed: {exc}"),
            on_finish=lambda: self._pending.difference_update(paths),
        )

    def _listed(self, generation: int, path: str, listing: Listing | None) -> None:
        if generation != self._generation:
            return
        self._pending.discard(path)
        if listing is None:
            self._remove_node(path)
            return
        self._apply_listing(listing)

    def _expanded(self, row: QTreeWidgetItem) -> None:
        data: Row = row.data(NAME, ROLE)
        if data.kind == "node" and data.path not in self._loaded | self._pending:
            self._request([data.path])

    @property
    def busy(self) -> bool:
        """Whether a listing or opening is still running."""
        return busy(self)

    def set_live(self, on: bool, interval: float | None = None) -> None:
        """Turn live mode on or off; ``interval`` is in seconds."""
        if interval is not None:
            self.interval_box.setValue(interval)
        self.live_box.setChecked(on)
        self._live_toggled()

    def _live_toggled(self, *_: Any) -> None:
        if self.live_box.isChecked():
            self._timer.start(int(self.interval_box.value() * 1000))
        else:
            self._timer.stop()

    def _live_tick(self) -> None:
        if self.root is not None and not self._pending:
            self.refresh()

    def _tree_changed(self, path: str) -> None:
        if qt_alive(self):
            self.refresh()

    # -- rows -----------------------------------------------------------------------------
    def row(self, path: str) -> QTreeWidgetItem | None:
        """The row of the node at ``path`` (once listed)."""
        return self._rows.get(path)

    def _make_row(self, parent: QTreeWidgetItem | None, data: Row, index: int = -1):
        row = QTreeWidgetItem()
        if parent is None:
            self.tree.addTopLevelItem(row)
        elif index < 0:
            parent.addChild(row)
        else:
            parent.insertChild(index, row)
        self._set_row(row, data)
        if data.kind == "node":
            self._rows[data.path] = row
            row.setChildIndicatorPolicy(QTreeWidgetItem.ChildIndicatorPolicy.ShowIndicator)
        return row

    def _set_row(self, row: QTreeWidgetItem, data: Row) -> None:
        row.setData(NAME, ROLE, data)
        if data.kind == "node":
            name = data.path.rsplit("/", 1)[-1] if data.path else self.root.name
            columns = _node_columns(data.info, name or "/")
            row.setToolTip(NAME, data.info.error or data.info.url)
            colour = STATE_COLOURS.get(data.info.state)
            if colour:
                row.setForeground(STATUS, QBrush(QColor(colour)))
        elif data.kind == "item":
            columns = _item_columns(data.entry)
        elif data.kind == "part":
            columns = _part_columns(data.part)
        else:
            columns = ["parts", "", "", "", ""]
        for column, text in enumerate(columns):
            row.setText(column, text)
        row.setToolTip(KIND, columns[KIND])
        if data.kind == "node" and (self.selection.root, self.selection.path) == (
            self.root,
            data.path,
        ):  # keep the action widgets up to date with the selected node's state
            self.selection.select(self.root, data.path, data.info)

    def _apply_listing(self, listing: Listing) -> None:
        row = self._rows.get(listing.path)
        if row is None:
            return
        if not listing.path:  # the root's own state comes from its listing, others' from parents
            self._set_row(row, Row("node", "", listing.info))
        wanted = [Row("item", listing.path, entry=e) for e in listing.items]
        if listing.parts:
            wanted.append(Row("parts", listing.path))
        wanted += [Row("node", info.path, info) for info in listing.children]
        self._sync_children(row, wanted)
        if listing.parts:
            parts_row = next(
                row.child(i)
                for i in range(row.childCount())
                if row.child(i).data(NAME, ROLE).kind == "parts"
            )
            self._sync_children(
                parts_row, [Row("part", listing.path, part=p) for p in listing.parts]
            )
            parts_row.setText(KIND, f"{len(listing.parts)} parts")
            parts_row.setText(SIZE, format_bytes(sum(p.nbytes for p in listing.parts)))
        self._loaded.add(listing.path)
        row.setChildIndicatorPolicy(
            QTreeWidgetItem.ChildIndicatorPolicy.DontShowIndicatorWhenChildless
        )
        self._apply_filter()
        self.fit_columns()

    def fit_columns(self) -> None:
        """Name as wide as its longest name up to :data:`NAME_SHARE` of the width; Kind
        takes what is left (shortened with "…"); Status, Size and Time fit their content."""
        wanted = self.tree.sizeHintForColumn(NAME) + self.tree.indentation()
        room = int(self.tree.viewport().width() * NAME_SHARE)
        self.tree.header().resizeSection(NAME, max(min(wanted, room), 80))

    def resizeEvent(self, event: Any) -> None:  # Qt's name
        super().resizeEvent(event)
        self.fit_columns()

    def _sync_children(self, row: QTreeWidgetItem, wanted: list[Row]) -> None:
        """Make ``row``'s children match ``wanted``: update, add and remove, keep expansion."""
        existing = {
            row.child(i).data(NAME, ROLE).key: row.child(i) for i in range(row.childCount())
        }
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
        data: Row = row.data(NAME, ROLE)
        if data.kind == "node":
            self._rows.pop(data.path, None)
            self._loaded.discard(data.path)
        for i in range(row.childCount()):
            self._forget(row.child(i))

    def _remove_node(self, path: str) -> None:
        row = self._rows.get(path)
        if row is None:
            return
        self._forget(row)
        parent = row.parent()
        if parent is None:
            self.tree.takeTopLevelItem(self.tree.indexOfTopLevelItem(row))
            self.root = None
            self.status_label.setText("the cache tree is gone")
        else:
            parent.removeChild(row)

    # -- filter ---------------------------------------------------------------------------
    def _apply_filter(self, *_: Any) -> None:
        needle = self.filter_edit.text().strip().lower()

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

        for i in range(self.tree.topLevelItemCount()):
            top = self.tree.topLevelItem(i)
            visit(top, False)
            top.setHidden(False)  # the root stays, even when nothing matches

    # -- selection and details ------------------------------------------------------------
    def select(self, path: str, item: str | None = None) -> QTreeWidgetItem | None:
        """Make the node at ``path`` (or its item ``item``) the current row."""
        row = self._rows.get(path)
        if row is not None and item is not None:
            row = next(
                (
                    row.child(i)
                    for i in range(row.childCount())
                    if row.child(i).data(NAME, ROLE).key == ("item", item)
                ),
                None,
            )
        if row is not None:
            self.tree.setCurrentItem(row)
        return row

    def _current_changed(self, row: QTreeWidgetItem | None, _previous: Any = None) -> None:
        if row is None or self.root is None:
            return
        data: Row = row.data(NAME, ROLE)
        node_row = self._rows.get(data.path)
        info = node_row.data(NAME, ROLE).info if node_row is not None else None
        self.selection.select(self.root, data.path, info)
        self.show_text(self._details(data))

    def _parent_info(self, path: str) -> NodeInfo | None:
        """The listed state of the parent of the node at ``path`` (None for the root)."""
        if not path:
            return None
        row = self._rows.get(posixpath.dirname(path))
        return row.data(NAME, ROLE).info if row is not None else None

    def _details(self, data: Row) -> str:
        if data.kind == "node":
            info = data.info
            lines = [
                f"node:      {info.path or '/'}",
                f"status:    {info.state}",
                *stale_explanation(info, self._parent_info(info.path)),
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
        return (
            "parts: results written piece by piece (by workers, or spilled by a canvas), "
            "not combined yet; expand to see them, double-click one to show it"
        )

    # -- opening --------------------------------------------------------------------------
    def eventFilter(self, watched: Any, event: Any) -> bool:  # Qt's name
        """Enter, Return and Space on the tree open the current row."""
        if (
            watched is self.tree
            and event.type() == QEvent.Type.KeyPress
            and event.key() in OPEN_KEYS
            and self.tree.currentItem() is not None
        ):
            self.open_selected()
            return True
        return super().eventFilter(watched, event)

    def open_selected(self) -> None:
        """Open the current row (as double-clicking it does)."""
        row = self.tree.currentItem()
        if row is not None:
            self.open_row(row)

    def open_row(self, row: QTreeWidgetItem) -> None:
        """Show a node's images, or one item or part, as layers; logs and JSON as text."""
        data: Row = row.data(NAME, ROLE)
        if self.root is None or data.kind == "parts":
            row.setExpanded(True)
            return
        root = self.root
        location = root.join(data.path) if data.path else root
        node = Node(location, root=root)
        label = data.entry.name if data.entry else (data.part.name if data.part else data.path)
        self.status_label.setText(f"opening {label or '/'} …")
        callbacks = {"on_return": self._opened, "on_error": partial(self._open_failed, label)}
        if data.kind == "node":
            run_in_thread(self, open_node, node, root, **callbacks)
        elif data.kind == "item":
            run_in_thread(self, open_item, node, root, data.entry, **callbacks)
        else:
            run_in_thread(self, open_part, node, root, data.part, **callbacks)

    # -- comparing ------------------------------------------------------------------------
    def selected_nodes(self) -> list[str]:
        """Paths of the node rows selected (Ctrl+click adds one)."""
        rows = [row.data(NAME, ROLE) for row in self.tree.selectedItems()]
        return [data.path for data in rows if data.kind == "node"]

    def _selection_rows_changed(self) -> None:
        self.compare_button.setEnabled(len(self.selected_nodes()) == 2)

    def compare_selected(self) -> None:
        """Compare the two selected nodes: parameters side by side, lazy image differences."""
        paths = self.selected_nodes()
        if self.root is None or len(paths) != 2:
            return
        label = " and ".join(p or "/" for p in paths)
        self.status_label.setText(f"comparing {label} …")
        run_in_thread(
            self,
            compare_nodes,
            self.root,
            *paths,
            on_return=self._opened,
            on_error=partial(self._open_failed, label),
        )

    def _open_failed(self, label: str, exc: BaseException) -> None:
        message = f"cannot open {label or '/'}: {exc}"
        self.status_label.setText(message)
        show_error(message)

    def show_text(self, text: str) -> None:
        """Show ``text`` in the pane below the tree."""
        self.text_pane.setPlainText(text)
        self.lower_pane.setCurrentWidget(self.text_pane)

    def _opened(self, opened: Opened) -> None:
        if opened.text is not None:
            self.show_text(opened.text)
        if opened.plot is not None:
            try:
                self.plot_pane.show_plot(*opened.plot)
            except CacheTreeError as exc:
                opened.problems.append(str(exc))
            else:
                self.lower_pane.setCurrentWidget(self.plot_pane)
        layers = add_layers(self.viewer, opened.layers)
        for problem in opened.problems:
            show_warning(f"cannot show {problem}")
        shown_below = opened.text is not None or opened.plot is not None
        if not shown_below and not layers and not opened.problems:
            show_info("nothing to show as layers here: open the node's items one by one")
        if opened.plot is not None:
            self.status_label.setText("plot shown below")
        elif opened.text is not None:
            self.status_label.setText("text shown below")
        else:
            self.status_label.setText(f"{len(layers)} layer(s) shown")


def _disconnect(selection: Any, tree_changed: Any, viewer: Any, inserted: Any, *_: Any) -> None:
    """Stop listening to the selection and the layer list once the browser is gone."""
    selection.tree_changed.disconnect(tree_changed)
    viewer.layers.events.inserted.disconnect(inserted)


def _open_root(root: str | Location) -> tuple[Location, Listing | None]:
    location = Location.from_url(root)
    return location, list_node(location, "")


def _list_many(root: Location, paths: list[str]):
    for path in paths:
        yield path, list_node(root, path)
