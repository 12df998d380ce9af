"""Old home of :mod:`cachetree.canvas.cluster`; its names are re-exported here."""

from . import cluster
from .cluster import *  # noqa: F403 - the old module path exports the whole cluster API
from .spec import CanvasSpec

__all__ = ["CanvasSpec", *cluster.__all__]
