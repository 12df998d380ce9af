"""A node of the cache tree: one pipeline step's results in one directory."""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from ..errors import (
    CorruptManifestError,
    InvalidDataError,
    LockHeldError,
    NodeNotFoundError,
    NotCommittedError,
    StaleNodeError,
    UncommittedChildrenError,
)
from ..fs.location import Location, node_path
from .fingerprint import fingerprint, to_jsonable
from .inventory import is_own_entry
from .items import NodeItems
from .layout import MANIFEST
from .lock import acquire_lock, break_lock, read_lock, release_lock
from .manifest import Manifest, Status, now_iso, read_manifest, update_meta, write_manifest
from .parts import kept_on_reopen

__all__ = [
    "Node",
    "NodeLike",
    "NodeUpdate",
    "OnStale",
    "OpenMode",
    "as_node",
    "location_of",
]

log = logging.getLogger("cachetree")

OnStale = Literal["recompute", "raise"]


class OpenMode(StrEnum):
    """How :meth:`Node.open` found the node."""

    REUSED = "reused"
    """Committed with matching parameters: nothing to compute."""
    NEW = "new"
    """Did not exist: created."""
    RESUMED = "resumed"
    """Uncommitted leftover of an earlier run: its partial files were discarded."""
    RECOMPUTE = "recompute"
    """Committed but stale (or corrupt): discarded and reopened for writing."""


def _fingerprint_of(manifest: Manifest | None) -> str | None:
    return None if manifest is None else manifest.fingerprint


def _fingerprint_at(loc: Location) -> str | None:
    """Fingerprint recorded in the manifest at ``loc`` (None when missing or corrupt)."""
    try:
        return read_manifest(loc).fingerprint
    except (NodeNotFoundError, CorruptManifestError):
        return None


class Node(NodeItems):
    """One step's results: a directory holding items and child nodes, plus a manifest.

    Use :meth:`CacheTree.node <cachetree.tree.cache_tree.CacheTree.node>` (or
    :func:`~cachetree.tree.cdir.cdir_init`) rather than building one directly. As a context
    manager the node is opened on entry and committed on a clean exit; an exception leaves
    it uncommitted (and the exception propagates). Items are saved and loaded with the
    methods of its base, :class:`~cachetree.tree.items.NodeItems`.

    Parameters
    ----------
    location
        Directory of the node.
    root
        Directory of the tree's root node, or None when the node stands alone.
    params
        Parameters that produced the node's content; None means "do not check".
    depends_on
        Nodes whose results this node uses; their fingerprints are folded into this one's,
        so recomputing an input makes this node stale.
    on_stale
        ``"recompute"`` (default) discards a stale node and reopens it; ``"raise"`` raises
        :class:`~cachetree.errors.StaleNodeError`.
    kind
        What the node holds, recorded in the manifest (``"node"``, ``"canvas"``, ...).
    ngff_format
        OME-NGFF version of the images and canvases saved here unless a call says
        otherwise: ``"0.5"`` (zarr v3 with shards, the default when None) or ``"0.4"``
        (zarr v2). Child nodes inherit it.

    Attributes
    ----------
    location
        The node directory (a :class:`~cachetree.fs.location.Location`).
    root
        The tree's root directory (the node's own location when it stands alone).
    open_mode
        What :meth:`open` did (an :class:`OpenMode`), or None before the node is opened.
    stale_reason
        Why a committed node was found stale (or corrupt) and recomputed, else None.
    """

    def __init__(
        self,
        location: Location,
        *,
        root: Location | None = None,
        params: Any = None,
        depends_on: Sequence[Node] = (),
        on_stale: OnStale = "recompute",
        kind: str = "node",
        ngff_format: str | None = None,
    ):
        if on_stale not in ("recompute", "raise"):
            raise InvalidDataError(f"on_stale must be 'recompute' or 'raise', not {on_stale!r}")
        super().__init__(location, ngff_format=ngff_format)
        self.root = root if root is not None else location
        self.params = params
        self.depends_on = tuple(depends_on)
        self.on_stale: OnStale = on_stale
        self.kind = kind
        self.open_mode: OpenMode | None = None
        self.stale_reason: str | None = None
        self._writing = False
        self._updating = False
        self._params_json = to_jsonable(params)

    # -- identity ---------------------------------------------------------------------
    @property
    def url(self) -> str:
        """URL (or local path) of the node directory."""
        return self.location.url

    @property
    def path(self) -> str:
        """Path relative to the tree root (``""`` for the root)."""
        return self.location.relative_to(self.root)

    @property
    def name(self) -> str:
        """Last segment of the path."""
        return self.location.name

    def __repr__(self) -> str:
        return f"Node({self.url!r})"

    # -- state ------------------------------------------------------------------------
    @property
    def manifest(self) -> Manifest:
        """The manifest as stored now.

        Raises
        ------
        NodeNotFoundError, CorruptManifestError
        """
        return read_manifest(self.location)

    @property
    def status(self) -> Status:
        """``committed``, ``open``, ``corrupt`` or ``missing``."""
        try:
            return self.manifest.status
        except NodeNotFoundError:
            return Status.MISSING
        except CorruptManifestError:
            return Status.CORRUPT

    @property
    def committed(self) -> datetime | None:
        """Commit time, or None when not committed."""
        try:
            return self.manifest.committed_at
        except (NodeNotFoundError, CorruptManifestError):
            return None

    @property
    def writing(self) -> bool:
        """Whether this handle may write items now: it opened the node for writing and has not
        committed it yet, or it is inside :meth:`update`."""
        return self._writing or self._updating

    @property
    def fingerprint(self) -> str:
        """Fingerprint of this node's params, its parent and its inputs (reads their manifests)."""
        return self._fingerprint_with(self._parent_fingerprint())

    def _fingerprint_with(self, parent_fp: str | None) -> str:
        upstream = [parent_fp] + [dep.manifest.fingerprint for dep in self.depends_on]
        return fingerprint(self._params_json, *upstream)

    def _parent_location(self) -> Location | None:
        if self.location == self.root:
            return None
        return self.location.parent

    def _parent_fingerprint(self) -> str | None:
        parent = self._parent_location()
        return None if parent is None else _fingerprint_at(parent)

    def staleness(self, manifest: Manifest) -> str | None:
        """Why a committed ``manifest`` no longer matches this handle, or None if it does."""
        return self._staleness(manifest, self._parent_fingerprint())

    def _staleness(self, manifest: Manifest, parent_fp: str | None) -> str | None:
        if manifest.parent_fingerprint != parent_fp:
            return "its parent node was recomputed"
        checks_params = self.params is not None or self.depends_on
        if checks_params and manifest.fingerprint != self._fingerprint_with(parent_fp):
            return "it was made with different parameters or inputs"
        return None

    # -- lifecycle --------------------------------------------------------------------
    def open(self) -> Node:
        """Initialise the node: reuse it if committed and current, else (re)open it for writing.

        Re-opening an uncommitted node discards only its own partial files: child nodes are
        kept (committed ones are reused when opened again), and so are committed parts (with
        the items a run claimed, see :func:`~cachetree.tree.parts.claim_items`) when the
        parameters did not change.

        Returns
        -------
        Node
            ``self``; :attr:`open_mode` says what happened.

        Raises
        ------
        StaleNodeError
            If the node is stale and ``on_stale="raise"``.
        LockHeldError
            If another live process is writing the node.
        """
        parent = self._ensure_ancestors()
        if self._reuse(self._previous_manifest(), _fingerprint_of(parent)):
            return self
        acquire_lock(self.location)
        try:
            # Under the lock, look again: another process may have committed the node, or a
            # clean may have removed an empty ancestor, since the first look.
            parent = self._ensure_ancestors()
            previous = self._previous_manifest()
            if self._reuse(previous, _fingerprint_of(parent)):
                release_lock(self.location)
                return self
            self._begin_writing(previous, parent)
        except BaseException:
            release_lock(self.location)
            raise
        return self

    def _previous_manifest(self) -> Manifest | None:
        """The stored manifest, or None when there is none or it is corrupt."""
        try:
            return read_manifest(self.location)
        except NodeNotFoundError:
            return None
        except CorruptManifestError as exc:
            self.stale_reason = str(exc)
            log.warning("%s", exc)
            return None

    def _reuse(self, previous: Manifest | None, parent_fp: str | None) -> bool:
        """Whether ``previous`` is committed and current (then :attr:`open_mode` is REUSED).

        Raises
        ------
        StaleNodeError
            If it is committed but stale and ``on_stale="raise"``.
        """
        if previous is None or previous.status is not Status.COMMITTED:
            return False
        self.stale_reason = self._staleness(previous, parent_fp)
        if self.stale_reason is None:
            self.open_mode = OpenMode.REUSED
            return True
        message = f"node {self.url} is stale: {self.stale_reason}"
        if self.on_stale == "raise":
            raise StaleNodeError(message + "; open it with on_stale='recompute' to redo it")
        log.warning("%s; recomputing it", message)
        return False

    def _begin_writing(self, previous: Manifest | None, parent: Manifest | None) -> None:
        parent_fp = _fingerprint_of(parent)
        fingerprint_now = self._fingerprint_with(parent_fp)
        keep_parts = (
            previous is not None
            and previous.status is Status.OPEN
            and previous.fingerprint == fingerprint_now
        )
        self._discard_own_files(keep_parts=keep_parts)
        if previous is None and self.stale_reason is None:
            self.open_mode = OpenMode.NEW
        elif previous is not None and previous.status is Status.OPEN:
            self.open_mode = OpenMode.RESUMED
        else:
            self.open_mode = OpenMode.RECOMPUTE
        manifest = Manifest(
            status=Status.OPEN,
            fingerprint=fingerprint_now,
            params=self._params_json,
            parent_fingerprint=parent_fp,
            kind=self.kind,
            # the parent's params now, so that a stale node can later tell which change
            # made it stale
            meta={} if parent is None else {"parent_params": parent.params},
        )
        write_manifest(self.location, manifest)
        self._writing = True

    def _ensure_ancestors(self) -> Manifest | None:
        """Create missing ancestor nodes (up to the root) as open group nodes.

        Returns the parent's manifest (None for a root or a corrupt parent): the one manifest
        read this needs anyway is the one :meth:`open` needs.
        """
        missing: list[Location] = []
        parent: Manifest | None = None
        loc = self._parent_location()
        while loc is not None:
            try:
                parent = read_manifest(loc)
                break
            except NodeNotFoundError:
                missing.append(loc)
            except CorruptManifestError:
                break
            loc = None if loc == self.root else loc.parent
        for ancestor in reversed(missing):
            ancestor.makedirs()
            parent_fp = _fingerprint_of(parent)
            parent = Manifest(
                fingerprint=fingerprint(None, parent_fp), parent_fingerprint=parent_fp, kind="group"
            )
            write_manifest(ancestor, parent)
        self.location.makedirs()
        return parent

    def _discard_own_files(self, *, keep_parts: bool) -> None:
        keep = kept_on_reopen(self.location, self.child_names(), keep_parts=keep_parts)
        for name in self.location.ls():
            if name in keep:
                continue
            self.location.raw_child(name).remove()

    def commit(self) -> Node:
        """Mark the node complete: inventory its items and write the manifest last.

        Idempotent on a committed node.

        Raises
        ------
        NodeNotFoundError
            If the node was never initialised.
        UncommittedChildrenError
            If a child node is not committed (its data could be incomplete).
        LockHeldError
            If another live process is writing the node.
        """
        try:
            manifest = read_manifest(self.location)
        except CorruptManifestError:
            manifest = Manifest(kind=self.kind)
        if manifest.status is Status.COMMITTED:
            self._writing = False
            return self
        held = read_lock(self.location)
        if held is not None and not held.is_mine() and not held.is_stale():
            raise LockHeldError(
                f"cannot commit {self.url}: it is being written by {held.describe()}"
            )
        open_children = [c.name for c in self.children() if c.status is not Status.COMMITTED]
        if open_children:
            raise UncommittedChildrenError(
                f"cannot commit {self.url}: child nodes {sorted(open_children)} are not "
                "committed; commit or remove them first"
            )
        self._close_writer()
        self._flush_log()
        manifest.items = self._scan_items()
        manifest.status = Status.COMMITTED
        manifest.committed = now_iso()
        write_manifest(self.location, manifest)
        if held is not None and held.is_stale():
            break_lock(self.location)  # its writer died; the node is complete now
        release_lock(self.location)
        self._writing = False
        log.info("committed %s", self.url)
        return self

    def update(self) -> NodeUpdate:
        """A context in which results are added to this node, open or committed.

        The node's lock is held (taken unless this handle writes the node already) and
        :attr:`writing` is true inside it. :meth:`NodeUpdate.finish` publishes: an open node is
        committed; a committed node stays committed with a refreshed inventory and ``meta``
        merged into its manifest (new files are written before their inventory, and that
        before the manifest, so readers never see a listed file missing). Leaving the context
        without finishing leaves the node as it was and frees a lock taken here.
        """
        return NodeUpdate(self)

    def abandon(self) -> None:
        """Stop writing without committing: the node stays uncommitted and the lock is freed."""
        try:
            self._close_writer()
            self._flush_log()
        finally:
            release_lock(self.location)
            self._writing = False

    def __enter__(self) -> Node:
        if self.open_mode is None:
            self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb) -> None:
        if not self._writing:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abandon()

    # -- children ---------------------------------------------------------------------
    def child_names(self) -> list[str]:
        """Names of child nodes (sub-directories that hold a manifest)."""
        names = []
        for entry in self.location.ls(detail=True):
            if entry["type"] != "directory":
                continue
            name = posixpath.basename(entry["name"].rstrip("/"))
            if (
                not is_own_entry(name)
                and self.location.raw_child(name).raw_child(MANIFEST).exists()
            ):
                names.append(name)
        return sorted(names)

    def children(self) -> list[Node]:
        """Handles on the child nodes (not opened)."""
        return [self.child(name) for name in self.child_names()]

    def child(
        self,
        name: str,
        params: Any = None,
        *,
        depends_on: Sequence[Node] = (),
        on_stale: OnStale | None = None,
        kind: str = "node",
    ) -> Node:
        """A handle on the child node ``name`` (a path like ``"a/b"`` is allowed).

        Raises
        ------
        InvalidNameError
            If ``name`` is empty, ``"."`` or could address anything outside this node.
        """
        return Node(
            self.location.join(node_path(name)),
            root=self.root,
            params=params,
            depends_on=depends_on,
            on_stale=on_stale or self.on_stale,
            kind=kind,
            ngff_format=self.ngff_format,
        )

    def require_committed(self) -> Manifest:
        """The manifest; raises :class:`~cachetree.errors.NotCommittedError` if not committed."""
        manifest = self.manifest
        if manifest.status is not Status.COMMITTED:
            raise NotCommittedError(f"node {self.url} is not committed yet")
        return manifest


class NodeUpdate:
    """What :meth:`Node.update` returns; see there."""

    def __init__(self, node: Node):
        self.node = node
        self.acquired = False
        self.finished = False

    def __enter__(self) -> NodeUpdate:
        loc = self.node.location
        self.manifest = read_manifest(loc)  # NodeNotFoundError / CorruptManifestError
        if not self.node.writing:
            held = read_lock(loc)
            mine_already = held is not None and held.is_mine()
            acquire_lock(loc)
            self.acquired = not mine_already
            self.manifest = read_manifest(loc)  # as it is now that the node is ours
        self.committed = self.manifest.status is Status.COMMITTED
        self.node._updating = True
        return self

    def finish(self, meta: Mapping[str, Any]) -> None:
        """Publish: commit an open node, or refresh a committed one, with ``meta`` merged in."""
        loc = self.node.location
        if self.committed:
            manifest = read_manifest(loc)
            manifest.items = self.node._scan_items()
            manifest.meta.update(meta, updated=now_iso())
            write_manifest(loc, manifest)
            if self.acquired:
                release_lock(loc)
        else:
            update_meta(loc, meta)
            self.node.commit()
        self.node._updating = False
        self.finished = True

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.node._updating = False
        if not self.finished and self.acquired:
            release_lock(self.node.location)


NodeLike = Node | Location | str | os.PathLike
"""What public functions accept for a node: a :class:`Node`, a location, or a path or URL."""


def as_node(node: NodeLike) -> Node:
    """The node handle for ``node`` (resolved once, at the entry of a public function)."""
    return node if isinstance(node, Node) else Node(Location.from_url(node))


def location_of(node: NodeLike) -> Location:
    """The directory of ``node`` (resolved once, at the entry of a public function)."""
    return node.location if isinstance(node, Node) else Location.from_url(node)
