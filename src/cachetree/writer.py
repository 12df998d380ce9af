"""Moved to :mod:`cachetree.fs.writer` (this old path works until the next release)."""

from ._moved import alias

alias(__name__, "cachetree.fs.writer")
