"""Moved to :mod:`cachetree.fs.records` (this old path works until the next release)."""

from ._moved import alias

alias(__name__, "cachetree.fs.records")
