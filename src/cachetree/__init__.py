"""cachetree: crash-safe cache trees for large-image pipelines."""

from ._version import __version__

__all__ = ["__version__"]
