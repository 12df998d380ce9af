"""Commit, Combine and Clean dock widgets, acting on the node selected in the browser.

Each action runs in a worker thread with a napari progress bar; the GUI stays responsive.
A failure is shown as a napari error notification (and in the widget) and leaves the tree
as the core left it: commit and combine are atomic in the core, and clean deletes only
entries that a fresh plan still lists, one entry at a time.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QCheckBox,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from cachetree.canvas import FinishReport, finish_node
from cachetree.tree.clean import CleanPlan, format_bytes, plan_clean
from cachetree.tree.lock import break_lock, read_lock
from cachetree.tree.manifest import Status
from cachetree.tree.node import Node

from ._docking import ACTION, arrange_when_docked
from ._selection import Selection, selection_for
from ._threads import Report, busy, qt_alive, run_in_thread, run_task
from ._unfinished import confirmation_text, missing, writer_died

if TYPE_CHECKING:
    import napari


class _ActionWidget(QWidget):
    """Shows the selected node and runs one action on it."""

    title = ""
    button_text = ""
    help_text = ""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.selection: Selection = selection_for(napari_viewer)
        self.node_label = QLabel()
        self.node_label.setWordWrap(True)
        self.state_label = QLabel()
        help_label = QLabel(self.help_text)
        help_label.setWordWrap(True)
        self.run_button = QPushButton(self.button_text)
        self.run_button.clicked.connect(self.run)
        self.result_label = QLabel()
        self.result_label.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(help_label)
        layout.addWidget(self.node_label)
        layout.addWidget(self.state_label)
        self._build_options(layout)
        layout.addWidget(self.run_button)
        fills = self._build_results(layout)
        layout.addWidget(self.result_label)
        if not fills:
            layout.addStretch(1)
        arrange_when_docked(self, ACTION)
        self.selection.changed.connect(self._selection_changed)
        self.destroyed.connect(partial(_disconnect, self.selection, self._selection_changed))
        self._selection_changed()

    def _build_options(self, layout: QVBoxLayout) -> None:
        """Add the action's controls shown above its button."""

    def _build_results(self, layout: QVBoxLayout) -> bool:
        """Add what the action shows below its button; True when that takes the free space."""
        return False

    def _selection_changed(self, *_: Any) -> None:
        if not qt_alive(self):
            return
        self.node_label.setText(f"<b>Node:</b> {self.selection.label}")
        info = self.selection.info
        self.state_label.setText(f"<b>State:</b> {info.state}" if info is not None else "")
        self.run_button.setEnabled(self._can_run() and not self.busy)

    def _can_run(self) -> bool:
        return self.selection.node is not None

    @property
    def busy(self) -> bool:
        """Whether the action is still running."""
        return busy(self)

    def run(self) -> None:
        """Run the action on the selected node, in a worker thread."""
        node = self.selection.node
        if node is None or self.busy:
            return
        path = self.selection.path or "/"
        self.run_button.setEnabled(False)
        self.result_label.setText(f"{self.title} of {path} running …")
        run_task(
            self,
            f"{self.title} {path}",
            self._work,
            node,
            on_return=lambda result: self._done(path, result),
            on_error=lambda exc: self._failed(path, exc),
            on_finish=self._selection_changed,
        )

    def _work(self, node: Node, report: Report) -> Any:
        raise NotImplementedError

    def _done(self, path: str, result: Any) -> None:
        message = self._describe(path, result)
        self.result_label.setText(message)
        show_info(message)
        self.selection.tree_changed.emit(path)

    def _describe(self, path: str, result: Any) -> str:
        return f"{self.title} of {path} done"

    def _failed(self, path: str, exc: BaseException) -> None:
        message = f"{self.title} of {path} failed: {exc}"
        self.result_label.setText(message)
        show_error(message)
        self.selection.tree_changed.emit(path)


def _disconnect(selection: Selection, callback: Any, *_: Any) -> None:
    """Stop following the selection once the widget is gone."""
    selection.changed.disconnect(callback)


class CommitWidget(_ActionWidget):
    """Commit the selected node: inventory its items and write its manifest last."""

    title = "Commit"
    button_text = "Commit node"
    help_text = (
        "Marks the selected node complete, e.g. one whose writer finished its work but died "
        "before committing. Refused while a live process writes it or a child is uncommitted."
    )

    confirm_box: QMessageBox | None = None
    """The question asked before committing a node whose writer died (while it is open)."""

    def _can_run(self) -> bool:
        info = self.selection.info
        if self.selection.node is None or info is None:
            return self.selection.node is not None
        return info.status is not Status.COMMITTED and info.state != "root"

    def run(self) -> None:
        """Commit the selected node; when its writer died, first say what it lacks and ask."""
        node, info = self.selection.node, self.selection.info
        if node is None or self.busy or not writer_died(info):
            super().run()
            return
        path = self.selection.path or "/"
        self.run_button.setEnabled(False)
        self.result_label.setText(f"checking what {path} lacks …")
        run_in_thread(
            self,
            missing,
            node,
            info,
            on_return=lambda lines: self._ask(path, lines),
            on_error=lambda exc: self._failed(path, exc),
            on_finish=self._selection_changed,
        )

    def _ask(self, path: str, lines: list[str]) -> None:
        box = QMessageBox(
            QMessageBox.Icon.Warning,
            "Commit a node whose writer died?",
            confirmation_text(path, lines),
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            self,
        )
        box.setDefaultButton(QMessageBox.StandardButton.No)
        box.finished.connect(lambda _: self._answered(path, box))
        self.confirm_box = box
        self.result_label.setText(f"Commit of {path}: waiting for confirmation")
        box.open()

    def _answered(self, path: str, box: QMessageBox) -> None:
        self.confirm_box = None
        if box.standardButton(box.clickedButton()) == QMessageBox.StandardButton.Yes:
            super().run()
        else:
            self.result_label.setText(f"Commit of {path} cancelled: nothing changed")

    def _work(self, node: Node, report: Report) -> Node:
        report(0, 1, "taking the inventory")
        node.commit()
        held = read_lock(node.location)
        if held is not None and held.is_stale():  # the writer that died left its lock behind
            break_lock(node.location)
        report(1, 1)
        return node


class CombineWidget(_ActionWidget):
    """Combine the parts of the selected node into its final results."""

    title = "Combine"
    button_text = "Combine parts"
    help_text = (
        "Turns the parts that workers wrote into the node's final results, with the combiner "
        "named in its manifest. Parts are removed only after the combine succeeded."
    )

    def _can_run(self) -> bool:
        info = self.selection.info
        return self.selection.node is not None and (info is None or info.has_parts)

    def _work(self, node: Node, report: Report) -> FinishReport:
        return finish_node(node, progress=report)

    def _describe(self, path: str, result: FinishReport) -> str:
        if result.combined is not None:
            return f"Combine of {path}: {result.combined}"
        return f"Combine of {path}: finalised canvas heads {', '.join(result.heads)}"


class CleanWidget(_ActionWidget):
    """Plan a clean of the selected node's subtree, show it, and delete only when confirmed."""

    title = "Clean"
    button_text = "Dry run: list what would go"
    help_text = (
        "Lists what the selected node and everything below it no longer need: leftovers of "
        "crashed runs, stale nodes, temporary files, parts already combined. Nothing is "
        "deleted until you confirm the list."
    )

    def _build_options(self, layout: QVBoxLayout) -> None:
        self.plan: CleanPlan | None = None
        self.remove_box = QCheckBox("Also delete the selected node itself (even if committed)")
        self.remove_box.toggled.connect(self._forget_plan)
        layout.addWidget(self.remove_box)

    def _build_results(self, layout: QVBoxLayout) -> bool:
        self.entries = QTreeWidget()
        self.entries.setHeaderLabels(("Size", "Path", "Reason"))
        self.entries.setRootIsDecorated(False)
        self.entries.setMinimumHeight(140)
        self.entries.header().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.total_label = QLabel()
        self.confirm_button = QPushButton("Delete the listed entries")
        self.confirm_button.setEnabled(False)
        self.confirm_button.clicked.connect(self.confirm)
        layout.addWidget(self.entries, 1)
        layout.addWidget(self.total_label)
        layout.addWidget(self.confirm_button)
        return True

    def _selection_changed(self, *_: Any) -> None:
        if not qt_alive(self):
            return
        if getattr(self, "plan", None) is not None and self.plan.root != self._scope():
            self._forget_plan()
        super()._selection_changed()

    def _scope(self) -> Any:
        node = self.selection.node
        return None if node is None else node.location

    def _forget_plan(self, *_: Any) -> None:
        self.plan = None
        self.entries.clear()
        self.total_label.setText("")
        self.confirm_button.setEnabled(False)
        self.confirm_button.setText("Delete the listed entries")

    def _work(self, node: Node, report: Report) -> CleanPlan:
        report(None, None, "planning")
        return plan_clean(node.location, remove=[""] if self._remove_self else ())

    def run(self) -> None:
        """Dry run: plan the clean in a worker thread and list the plan."""
        self._forget_plan()
        self._remove_self = self.remove_box.isChecked()
        if self._remove_self and self.selection.path == "":
            message = "the tree's root cannot be deleted from here: select a node below it"
            self.result_label.setText(message)
            show_error(message)
            return
        super().run()

    def _done(self, path: str, plan: CleanPlan) -> None:
        self.plan = plan
        root = self.selection.root or plan.root
        for entry in plan.entries:
            where = entry.location.relative_to(root) or "/"
            QTreeWidgetItem(self.entries, [format_bytes(entry.bytes), where, entry.reason])
        size = format_bytes(plan.total_bytes)
        self.total_label.setText(f"<b>{len(plan)} entries, {size}</b> would be freed")
        self.result_label.setText("dry run done: nothing deleted yet")
        self.confirm_button.setEnabled(bool(plan.entries))
        self.confirm_button.setText(f"Delete these {len(plan)} entries ({size})")

    def confirm(self) -> None:
        """Delete what the dry run listed (and a fresh plan still lists), in a worker thread."""
        plan = self.plan
        if plan is None or self.busy:
            return
        self.confirm_button.setEnabled(False)
        self.run_button.setEnabled(False)
        path = self.selection.path or "/"
        self.result_label.setText(f"cleaning {path} …")
        run_task(
            self,
            f"Clean {path}",
            _execute_confirmed,
            plan,
            self._remove_self,
            on_return=lambda result: self._cleaned(path, *result),
            on_error=lambda exc: self._failed(path, exc),
            on_finish=self._selection_changed,
        )

    def _cleaned(self, path: str, deleted: int, freed: int, skipped: int) -> None:
        self._forget_plan()
        message = f"Clean of {path}: deleted {deleted} entries, freed {format_bytes(freed)}"
        if skipped:
            message += f"; {skipped} listed entries were kept (the tree changed since the dry run)"
        self.result_label.setText(message)
        show_info(message)
        self.selection.tree_changed.emit(path)


def _execute_confirmed(
    confirmed: CleanPlan, remove_self: bool, report: Report
) -> tuple[int, int, int]:
    """Delete the confirmed entries that a fresh plan still lists; (deleted, bytes, skipped).

    Planning again first means nothing is deleted that became needed since the dry run
    (e.g. a node a pipeline started writing meanwhile).
    """
    fresh = plan_clean(confirmed.root, remove=[""] if remove_self else ())
    still = {entry.url for entry in fresh.entries}
    todo = [entry for entry in confirmed.entries if entry.url in still]
    report(0, len(todo), "deleting")
    freed = 0
    for done, entry in enumerate(todo, 1):
        entry.remove()
        freed += entry.bytes
        report(done, len(todo))
    return len(todo), freed, len(confirmed.entries) - len(todo)
