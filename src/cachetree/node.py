"""Moved to :mod:`cachetree.tree.node` (this old path works until the next release)."""

from ._moved import alias

alias(__name__, "cachetree.tree.node")
