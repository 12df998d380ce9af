"""Moved to :mod:`cachetree.images.pyramid` (this old path works until the next release)."""

from ._moved import alias

alias(__name__, "cachetree.images.pyramid")
