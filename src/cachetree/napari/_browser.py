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

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QFontDatabase
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from cachetree.errors import CacheTreeError
from cachetree.fs.location import Location
from cachetree.tree.node import Node
from cachetree.tree.walk import NodeInfo

from ._compare import compare_nodes
from ._details import row_details
from ._docking import BROWSER, arrange_when_docked
from ._layers import Opened, open_item, open_node, open_part
from ._listing import Listing, list_node
from ._live import update_canvas_layers
from ._node_tree import NodeTree, row_data
from ._plot_pane import PlotPane
from ._selection import selection_for
from ._threads import add_in_steps, build_layers, busy, qt_alive, run_in_thread

if TYPE_CHECKING:
    import napari

__all__ = ["CacheTreeBrowser"]

TREE_ROWS = 10
"""Rows of the tree that stay visible when opened text makes the pane below it grow."""


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
        self._pending: set[str] = set()
        self._generation = 0
        self._adding = 0

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
        self.filter_edit.textChanged.connect(lambda text: self.tree.set_filter(text))
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

        self.tree = NodeTree()
        self.setMinimumWidth(500)
        self.tree.node_row_set.connect(self._node_row_set)
        self.tree.open_requested.connect(self.open_selected)
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
        self.splitter = splitter = QSplitter(Qt.Orientation.Vertical)
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
        self.tree.forget_rows()
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
        self.tree.root_name = root.name
        self.tree.show_root(listing)
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
        """List every expanded node again and update the rows in place; layers of canvases
        still merging get what was merged since."""
        update_canvas_layers(self, self.viewer)
        if self.root is None:
            self._load_typed_root()
            return
        paths = sorted(self.tree.loaded - self._pending, key=lambda p: (p.count("/"), p))
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
            if self.tree.remove_node(path):
                self.root = None
                self.status_label.setText("the cache tree is gone")
            return
        self.tree.apply_listing(listing)

    def _expanded(self, row: QTreeWidgetItem) -> None:
        data = row_data(row)
        if data.kind == "node" and data.path not in self.tree.loaded | self._pending:
            self._request([data.path])

    @property
    def busy(self) -> bool:
        """Whether a listing or opening is still running (or its layers being added)."""
        return busy(self) or self._adding > 0

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
        return self.tree.row(path)

    def _node_row_set(self, path: str, info: NodeInfo) -> None:
        """Keep the action widgets up to date with the selected node's state."""
        if (self.selection.root, self.selection.path) == (self.root, path):
            self.selection.select(self.root, path, info)

    # -- selection and details ------------------------------------------------------------
    def select(self, path: str, item: str | None = None) -> QTreeWidgetItem | None:
        """Make the node at ``path`` (or its item ``item``) the current row."""
        return self.tree.select(path, item)

    def _current_changed(self, row: QTreeWidgetItem | None, _previous: Any = None) -> None:
        if row is None or self.root is None:
            return
        data = row_data(row)
        self.selection.select(self.root, data.path, self.tree.node_info(data.path))
        self.show_text(row_details(data, self.tree.parent_info(data.path)))

    # -- opening --------------------------------------------------------------------------
    def open_selected(self) -> None:
        """Open the current row (as double-clicking it does)."""
        row = self.tree.currentItem()
        if row is not None:
            self.open_row(row)

    def open_row(self, row: QTreeWidgetItem, *, then: Callable[[], None] | None = None) -> None:
        """Show a node's images, or one item or part, as layers; logs and JSON as text.

        ``then`` is called once the layers are added, or the opening failed.
        """
        data = row_data(row)
        if self.root is None or data.kind == "parts":
            row.setExpanded(True)
            if then is not None:
                then()
            return
        root = self.root
        location = root.join(data.path) if data.path else root
        node = Node(location, root=root)
        label = data.entry.name if data.entry else (data.part.name if data.part else data.path)
        self.status_label.setText(f"opening {label or '/'} …")
        callbacks = {
            "on_return": partial(self._opened, then=then),
            "on_error": partial(self._open_failed, label, then=then),
        }
        if data.kind == "node":
            run_in_thread(self, _built, open_node, node, root, **callbacks)
        elif data.kind == "item":
            run_in_thread(self, _built, open_item, node, root, data.entry, **callbacks)
        else:
            run_in_thread(self, _built, open_part, node, root, data.part, **callbacks)

    # -- comparing ------------------------------------------------------------------------
    def selected_nodes(self) -> list[str]:
        """Paths of the node rows selected (Ctrl+click adds one)."""
        return self.tree.selected_nodes()

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
            _built,
            compare_nodes,
            self.root,
            *paths,
            on_return=self._opened,
            on_error=partial(self._open_failed, label),
        )

    def _open_failed(
        self, label: str, exc: BaseException, then: Callable[[], None] | None = None
    ) -> None:
        message = f"cannot open {label or '/'}: {exc}"
        self.status_label.setText(message)
        show_error(message)
        if then is not None:
            then()

    def show_text(self, text: str) -> None:
        """Show ``text`` in the pane below the tree."""
        self.text_pane.setPlainText(text)
        self.lower_pane.setCurrentWidget(self.text_pane)

    def _make_room_below(self, text: str) -> None:
        """Let the text pane grow to show ``text`` while the tree keeps
        :data:`TREE_ROWS` rows (the user can drag the splitter back)."""
        tree_size, lower_size = self.splitter.sizes()
        row_height = self.tree.sizeHintForRow(0)
        if row_height <= 0:
            row_height = self.tree.fontMetrics().height() + 4
        tree_least = self.tree.header().height() + TREE_ROWS * row_height + 4
        line_height = self.text_pane.fontMetrics().lineSpacing()
        wanted = (text.count("\n") + 3) * line_height
        lower = min(wanted, tree_size + lower_size - tree_least)
        if lower > lower_size:
            self.splitter.setSizes([tree_size + lower_size - lower, lower])

    def _opened(self, opened: Opened, then: Callable[[], None] | None = None) -> None:
        if opened.text is not None:
            self.show_text(opened.text)
            self._make_room_below(opened.text)
        if opened.plot is not None:
            try:
                self.plot_pane.show_plot(*opened.plot)
            except CacheTreeError as exc:
                opened.problems.append(str(exc))
            else:
                self.lower_pane.setCurrentWidget(self.plot_pane)
        self.status_label.setText(f"adding {len(opened.layers)} layer(s) …")
        self._adding += 1
        add_in_steps(self.viewer, opened.layers, then=partial(self._added, opened, then=then))

    def _added(
        self, opened: Opened, layers: list[Any], then: Callable[[], None] | None = None
    ) -> None:
        self._adding -= 1
        if not qt_alive(self):
            return
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
        if then is not None:
            then()


def _disconnect(selection: Any, tree_changed: Any, viewer: Any, inserted: Any, *_: Any) -> None:
    """Stop listening to the selection and the layer list once the browser is gone."""
    selection.tree_changed.disconnect(tree_changed)
    viewer.layers.events.inserted.disconnect(inserted)


def _built(opener: Any, *args: Any) -> Opened:
    """Worker thread: what ``opener(*args)`` opens, its layers made (:func:`build_layers`)."""
    opened = opener(*args)
    opened.layers = build_layers(opened.layers)
    return opened


def _open_root(root: str | Location) -> tuple[Location, Listing | None]:
    location = Location.from_url(root)
    return location, list_node(location, "")


def _list_many(root: Location, paths: list[str]):
    for path in paths:
        yield path, list_node(root, path)
