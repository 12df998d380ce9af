"""The object API: a cache tree rooted at a local path or fsspec URL."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ..errors import CorruptManifestError, LockHeldError, NodeNotFoundError
from ..fs.location import Location, node_path
from .clean import LOCK_GRACE, PART_GRACE, CleanPlan, plan_clean
from .lock import LockInfo, break_lock, read_lock
from .manifest import Manifest, Status, read_manifest, write_manifest
from .node import Node, OnStale
from .walk import NodeInfo, walk

__all__ = [
    "CacheTree",
]


log = logging.getLogger("cachetree")


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
    ngff_format
        OME-NGFF version of the images and canvases its nodes save: ``"0.5"`` (zarr v3
        with shards; the default) or ``"0.4"`` (zarr v2, for readers without zarr v3). A
        call can still ask for the other (``node.save_image(..., format="0.4")``).
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
        ngff_format: str | None = None,
        **storage_options: Any,
    ):
        from ..images.metadata import check_format

        self.root = Location.from_url(root, **storage_options)
        self.on_stale: OnStale = on_stale
        self.ngff_format = check_format(ngff_format)
        try:
            read_manifest(self.root)
        except NodeNotFoundError:
            if not create:
                raise NodeNotFoundError(f"{self.root.url} is not a cache tree") from None
            self.root.makedirs()
            write_manifest(self.root, Manifest(kind="root"))
        except CorruptManifestError as exc:
            # A root manifest holds no results: rewriting it loses nothing.
            log.warning("%s; rewriting it as a fresh root manifest", exc)
            write_manifest(self.root, Manifest(kind="root"))

    @property
    def url(self) -> str:
        """URL (or local path) of the root."""
        return self.root.url

    def __repr__(self) -> str:
        return f"CacheTree({self.url!r})"

    def node(
        self,
        path: str,
        params: Any = None,
        *,
        depends_on: Sequence[Node] = (),
        on_stale: OnStale | None = None,
        kind: str = "node",
    ) -> Node:
        """A handle on the node at ``path`` (``"a/b"``); nothing is touched until it is opened.

        Use it as a context manager (``with tree.node(...) as node:``) to open it, write its
        items when it is not committed yet, and commit on success.

        Raises
        ------
        InvalidNameError
            If ``path`` is empty or ``"."`` (the root is not a step's node), absolute, or
            contains ``..`` or a forbidden character.
        """
        return Node(
            self.root.join(node_path(path)),
            root=self.root,
            params=params,
            depends_on=depends_on,
            on_stale=on_stale or self.on_stale,
            kind=kind,
            ngff_format=self.ngff_format,
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
        self,
        *,
        dry_run: bool = True,
        remove: Iterable[str] = (),
        progress: bool = False,
        part_grace: float = PART_GRACE,
        lock_grace: float = LOCK_GRACE,
    ) -> CleanPlan:
        """Plan (and unless ``dry_run``, carry out) removal of what the tree no longer needs.

        Safe while other processes write the tree. See :func:`cachetree.tree.clean.plan_clean`
        for what is selected and :meth:`~cachetree.tree.clean.CleanPlan.execute` for how it is
        deleted.
        """
        plan = plan_clean(self.root, remove=remove, part_grace=part_grace, lock_grace=lock_grace)
        if not dry_run:
            plan.execute(progress=progress)
        return plan

    def unlock(self, path: str = "", *, force: bool = False) -> LockInfo | None:
        """Break the owner lock of a node (``""``: the root), e.g. after its writer died.

        Raises
        ------
        LockHeldError
            If a live process on this host holds the lock and ``force`` is False.
        """
        loc = self.root if path == "" else self[path].location
        held = read_lock(loc)
        alive_here = held is not None and held.host == socket.gethostname() and not held.is_stale()
        if alive_here and not force:
            raise LockHeldError(
                f"{loc.url} is being {held.describe()}, which is still running; "
                "stop that process first (or pass --force)"
            )
        return break_lock(loc)
