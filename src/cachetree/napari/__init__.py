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

from typing import Any

__all__ = [
    "view_tree",
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
