"""Moved to :mod:`cachetree.results` (this old path works until the next release)."""

from ._moved import alias

alias(__name__, "cachetree.results")
