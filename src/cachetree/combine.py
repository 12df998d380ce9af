"""Moved to :mod:`cachetree.results.combine` (this old path works until the next release)."""

from ._moved import alias

alias(__name__, "cachetree.results.combine")
