"""Moved to :mod:`cachetree.tree.fingerprint` (this old path works until the next release)."""

from ._moved import alias

alias(__name__, "cachetree.tree.fingerprint")
