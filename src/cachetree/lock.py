"""Moved to :mod:`cachetree.tree.lock` (this old path works until the next release)."""

from ._moved import alias

alias(__name__, "cachetree.tree.lock")
