"""napari plugin of cachetree: reader, cache tree browser, commit/combine/clean, sample data.

This subpackage is the only part of cachetree that imports napari, Qt (through qtpy),
magicgui or superqt; ``import cachetree`` never imports it. napari finds its pieces through
the ``napari.yaml`` manifest shipped in the package:

- :mod:`._reader` opens a cache root, a node, a canvas or an OME-Zarr image as layers;
- :mod:`._browser` is the *Cache tree browser* dock widget;
- :mod:`._actions` holds the *Commit*, *Combine* and *Clean* dock widgets;
- :mod:`._sample_data` builds the demo tree for *File > Open Sample*;
- :mod:`._layers` and :mod:`._listing` turn tree content into layer data and rows (no Qt).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = [
    "view_tree",
    "watch_tree",
]


def view_tree(root: str, *, run: bool = True) -> Any:
    """Open napari on the cache tree at ``root``: its images as layers, the browser docked.

    Used by ``cachetree demo --view``. With ``run=False`` the viewer is returned without
    entering the Qt event loop (for scripts and tests).
    """
    import napari

    viewer = napari.Viewer(title=f"cachetree: {root}")
    viewer.open(str(root), plugin="cachetree")
    viewer.window.add_plugin_dock_widget("cachetree", "Cache tree browser")
    if run:
        napari.run()
    return viewer


def watch_tree(
    root: str,
    work: Callable[[Callable[[str], None]], Any],
    *,
    interval: float = 2.0,
    follow: bool = True,
    run: bool = True,
) -> Any:
    """Open napari on the cache tree at ``root`` while ``work`` fills it in.

    The Cache tree browser is docked on ``root`` in live mode (listed again every
    ``interval`` seconds), and ``work(say)`` runs in a worker thread with a napari progress
    bar; each line it passes to ``say`` becomes the bar's text. With ``follow`` (the
    default) the viewer follows the pipeline: each node the browser lists is opened once,
    as a double-click would, as soon as it is committed with images or labels, or, while it
    is still written, as soon as a canvas it merges has a checkpoint on disk; those layers
    grow with the merge and become the finished pyramid when the canvas is finalised.
    Layers the user deletes are not opened again. Used by ``cachetree demo --size N
    --view``. With ``run=False`` the viewer is returned without entering the Qt event loop.
    """
    from napari.utils.notifications import show_error, show_info
    from qtpy.QtCore import QObject

    import napari
    from cachetree.tree import CacheTree

    from ._follow import Follower
    from ._threads import run_task

    CacheTree(root)  # the browser lists the root before the first node is written
    viewer = napari.Viewer(title=f"cachetree: {root}")
    _, browser = viewer.window.add_plugin_dock_widget("cachetree", "Cache tree browser")
    if follow:
        Follower(browser, str(root))
    browser.set_root(str(root))
    browser.set_live(True, interval)
    owner = QObject(browser)

    def task(report: Callable[..., None]) -> Any:
        return work(lambda line: report(None, None, " ".join(line.split())))

    run_task(
        owner,
        "cachetree pipeline",
        task,
        on_return=lambda _: show_info(f"cachetree: {root} is complete"),
        on_error=lambda exc: show_error(f"cachetree: the pipeline failed: {exc}"),
    )
    if run:
        napari.run()
    return viewer
