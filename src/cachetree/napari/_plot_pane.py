"""The browser's plot pane: a PNG, JPEG or SVG plot shown as a picture, never as a layer.

A plot has axes, ticks and a colour bar of its own: pasted into the viewer it would sit at
(0, 0) over the data in pixel units. Here it is shown at its natural size, scaled down to
fit the pane when larger.
"""

from __future__ import annotations

from qtpy.QtCore import QByteArray, QMargins, Qt
from qtpy.QtGui import QImage, QPainter, QPixmap
from qtpy.QtWidgets import QLabel, QScrollArea

from cachetree.errors import CacheTreeError


def decode_plot(encoded: bytes, suffix: str) -> QImage:
    """The plot as a QImage (SVG rendered at its natural size on white)."""
    if suffix == ".svg":
        return _render_svg(encoded)
    image = QImage.fromData(encoded)
    if image.isNull():
        raise CacheTreeError(f"the {suffix.lstrip('.').upper()} plot cannot be read")
    return image


def _render_svg(encoded: bytes) -> QImage:
    try:
        from qtpy.QtSvg import QSvgRenderer
    except ImportError as exc:  # pragma: no cover - QtSvg ships with PyQt6 and PySide6
        raise CacheTreeError("showing SVG plots needs Qt's SVG module (QtSvg)") from exc
    renderer = QSvgRenderer(QByteArray(encoded))
    size = renderer.defaultSize()
    if not renderer.isValid() or size.isEmpty():
        raise CacheTreeError("the SVG plot cannot be read")
    image = QImage(size, QImage.Format.Format_RGBA8888)
    image.fill(Qt.GlobalColor.white)
    painter = QPainter(image)
    renderer.render(painter)
    painter.end()
    return image


class PlotPane(QScrollArea):
    """Shows one plot; :attr:`image` is the plot as decoded (None before the first)."""

    def __init__(self) -> None:
        super().__init__()
        self.image: QImage | None = None
        self._label = QLabel()
        self._label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setWidget(self._label)
        self.setWidgetResizable(True)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)

    def show_plot(self, encoded: bytes, suffix: str) -> None:
        """Decode and show a plot (raises :class:`CacheTreeError` when it cannot be read)."""
        self.image = decode_plot(encoded, suffix)
        self._fit()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit()

    def _fit(self) -> None:
        if self.image is None:
            return
        pixmap = QPixmap.fromImage(self.image)
        room = self.viewport().size().shrunkBy(QMargins(2, 2, 2, 2))
        if pixmap.width() > room.width() or pixmap.height() > room.height():
            pixmap = pixmap.scaled(
                room,
                Qt.AspectRatioMode.KeepAspectRatio,
                Qt.TransformationMode.SmoothTransformation,
            )
        self._label.setPixmap(pixmap)
