"""The functional API: ``cdir_init``, ``cdir_query`` and ``cdir_commit``.

These mirror the classic result-caching workflow::

    query = cdir_init(url, params)
    if not query.commit:
        ...  # write results below url
        cdir_commit(url)

A processing function that caches follows the ``context_args["cache_url"]`` convention: it
receives the URL of the node it may write to, or None to compute without touching disk (see
:func:`cache_node_for`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..fs.location import Location
from .manifest import Status
from .node import Node, OnStale, OpenMode

__all__ = [
    "CacheQuery",
    "cache_node_for",
    "cdir_commit",
    "cdir_init",
    "cdir_query",
]


_OPEN: dict[str, Node] = {}
"""Nodes this process opened with cdir_init and has not committed yet."""


@dataclass(frozen=True)
class CacheQuery:
    """State of a cache directory.

    Attributes
    ----------
    url
        Where the node lives.
    commit
        When it was committed, or None: test ``if query.commit:`` to reuse results.
    status
        ``committed``, ``open``, ``corrupt`` or ``missing``.
    mode
        What :func:`cdir_init` did (None for :func:`cdir_query`).
    stale_reason
        Why a committed node was discarded, if it was.
    node
        The :class:`~cachetree.tree.node.Node` for reading and writing items.
    """

    url: str
    commit: datetime | None
    status: Status
    mode: OpenMode | None
    stale_reason: str | None
    node: Node


def _query(node: Node) -> CacheQuery:
    return CacheQuery(
        node.url, node.committed, node.status, node.open_mode, node.stale_reason, node
    )


def _location(
    url: str | os.PathLike[str] | Location, storage_options: dict[str, Any] | None
) -> Location:
    return Location.from_url(url, **(storage_options or {}))


def cdir_init(
    url: str | os.PathLike[str] | Location,
    params: Any = None,
    *,
    on_stale: OnStale = "recompute",
    storage_options: dict[str, Any] | None = None,
) -> CacheQuery:
    """Initialise the cache directory at ``url`` and report whether it is committed.

    Creates the directory on the first run. When it is committed (with matching ``params``,
    if given), ``query.commit`` is the commit time and nothing is changed. Otherwise any
    partial files of an earlier run are discarded (committed child directories are kept) and
    the directory is locked for this process until :func:`cdir_commit`.

    Parameters
    ----------
    url
        Local path or fsspec URL. If its parent directory is a cache directory, this one is
        its child (and becomes stale when the parent is recomputed).
    params
        Parameters producing the results; a committed node with other params is stale.
    on_stale
        ``"recompute"`` (default) or ``"raise"``.
    storage_options
        Passed to fsspec.
    """
    loc = _location(url, storage_options)
    parent = loc.parent
    is_child = parent != loc and Node(parent).status is not Status.MISSING
    node = Node(loc, root=parent if is_child else None, params=params, on_stale=on_stale).open()
    if node.writing:
        _OPEN[loc.url] = node
    return _query(node)


def cdir_query(
    url: str | os.PathLike[str] | Location, *, storage_options: dict[str, Any] | None = None
) -> CacheQuery:
    """Read the state of the cache directory at ``url`` without changing anything."""
    return _query(Node(_location(url, storage_options)))


def cdir_commit(
    url: str | os.PathLike[str] | Location, *, storage_options: dict[str, Any] | None = None
) -> CacheQuery:
    """Mark the cache directory at ``url`` complete (atomically, manifest last).

    Raises
    ------
    NodeNotFoundError
        If ``url`` was never initialised.
    UncommittedChildrenError
        If a child directory is not committed.
    LockHeldError
        If another live process is writing it.
    """
    loc = _location(url, storage_options)
    node = _OPEN.pop(loc.url, None) or Node(loc)
    node.commit()
    return _query(node)


def cache_node_for(context_args: dict[str, Any] | None, params: Any = None) -> Node | None:
    """Open the node named by ``context_args["cache_url"]``, or None when caching is off.

    Processing functions take a ``context_args`` mapping; its ``"cache_url"`` entry is the
    URL of the node they may write to, or None (or absent) to compute without writing.
    """
    url = (context_args or {}).get("cache_url")
    if url is None:
        return None
    return cdir_init(url, params).node
