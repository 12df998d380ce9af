"""Old home of :mod:`cachetree.canvas.view`; its names are re-exported here."""

from .canvas.view import CanvasState, canvas_state, is_canvas, open_canvas

__all__ = ["CanvasState", "canvas_state", "is_canvas", "open_canvas"]
