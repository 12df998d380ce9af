"""The object API: a cache tree rooted at a local path or fsspec URL."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from .clean import CleanPlan, plan_clean
from .errors import NodeNotFoundError
from .lock import LockInfo, break_lock
from .manifest import Manifest, Status, read_manifest, write_manifest
from .node import Node, OnStale
from .storage import Location
from .walk import NodeInfo, walk


class CacheTree:
    """A tree of cached pipeline results.

    Parameters
    ----------
    root
        Local path or fsspec URL (``s3://bucket/run``, ``memory://x``, ...). Created if missing.
    on_stale
        Default policy for nodes made with other parameters: ``"recompute"`` or ``"raise"``.
    create
        Create the tree when ``root`` holds none (default); otherwise raise
        :class:`~cachetree.errors.NodeNotFoundError`.
    storage_options
        Passed to fsspec (credentials, endpoint URL, ...).

    Examples
    --------
    >>> tree = CacheTree("memory://docs-example")
    >>> with tree.node("threshold", params={"level": 0.5}) as node:
    ...     if not node.committed:
    ...         node.save_json("metrics", {"foreground": 0.31})
    >>> tree.node("threshold").committed is not None
    True
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | Location,
        *,
        on_stale: OnStale = "recompute",
        create: bool = True,
        **storage_options: Any,
    ):
        self.root = Location.from_url(root, **storage_options)
        self.on_stale: OnStale = on_stale
        try:
            read_manifest(self.root)
        except NodeNotFoundError:
            if not create:
                raise NodeNotFoundError(f"{self.root.url} is not a cache tree") from None
            self.root.makedirs()
            write_manifest(self.root, Manifest(kind="root"))

    @property
    def url(self) -> str:
        """URL (or local path) of the root."""
        return self.root.url

    def __repr__(self) -> str:
        return f"CacheTree({self.url!r})"

    def node(
        self,
        path: str = "",
        params: Any = None,
        *,
        depends_on: Sequence[Node] = (),
        on_stale: OnStale | None = None,
        kind: str = "node",
    ) -> Node:
        """A handle on the node at ``path`` (``"a/b"``); nothing is touched until it is opened.

        Use it as a context manager (``with tree.node(...) as node:``) to open it, write its
        items when it is not committed yet, and commit on success.
        """
        return Node(
            self.root.join(path),
            root=self.root,
            params=params,
            depends_on=depends_on,
            on_stale=on_stale or self.on_stale,
            kind=kind,
        )

    def __getitem__(self, path: str) -> Node:
        node = self.node(path)
        if node.status is Status.MISSING:
            raise NodeNotFoundError(f"no node {path!r} in {self.url}")
        return node

    def __contains__(self, path: str) -> bool:
        return self.node(path).status is not Status.MISSING

    def walk(self, path: str = "", *, max_depth: int | None = None) -> Iterator[NodeInfo]:
        """Every node at or below ``path`` with status, kind, size and time (manifests only)."""
        return walk(self.root.join(path), max_depth=max_depth)

    def clean(
        self, *, dry_run: bool = True, remove: Iterable[str] = (), progress: bool = False
    ) -> CleanPlan:
        """Plan (and unless ``dry_run``, carry out) removal of what the tree no longer needs.

        See :func:`cachetree.clean.plan_clean` for what is selected.
        """
        plan = plan_clean(self.root, remove=remove)
        if not dry_run:
            plan.execute(progress=progress)
        return plan

    def unlock(self, path: str = "") -> LockInfo | None:
        """Break the owner lock of a node, e.g. after its writer died on another host."""
        return break_lock(self[path].location)
