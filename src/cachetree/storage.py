"""Moved to :mod:`cachetree.fs.location` (this old path works until the next release)."""

from ._moved import alias

alias(__name__, "cachetree.fs.location")
