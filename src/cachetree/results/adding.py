"""What set-up and workers write into a node before a combine: the combiner setting,
shared inputs and parts (each safe from many processes at once)."""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..errors import (
    InvalidDataError,
    NodeNotFoundError,
)
from ..fs.location import Location, validate_name
from ..tree.fingerprint import to_jsonable
from ..tree.keyed import (
    Key,
    canonical_key,
    key_to_json,
)
from ..tree.lock import LockInfo
from ..tree.manifest import Manifest, read_manifest, update_meta
from ..tree.node import Node, NodeLike, location_of
from ..tree.parts import (
    WRITER_FILE,
    PartInfo,
    list_parts,
    parts_location,
    write_part,
)
from .combiners import resolve_combiner

__all__ = ["CONFIG_PART", "add_part", "add_shared", "get_combiner", "set_combiner"]

CONFIG_PART = "_combiner"
"""Name of the part (kind ``"config"``) that remembers a node's combiner across processes."""


def set_combiner(node: NodeLike, name: str, **options: Any) -> None:
    """Name the combiner (and its options) that :func:`combine` will use for ``node``.

    Stored as a small part (kind ``"config"``), so it survives re-opening the node and is seen
    by every process; :func:`combine` copies it into the manifest's ``meta["combiner"]``.

    Raises
    ------
    UnknownCombinerError
        If the combiner cannot be resolved in this process.
    """
    resolve_combiner(name)
    loc = location_of(node)
    require_node(loc)
    opts = to_jsonable(options)
    write_part(
        loc,
        CONFIG_PART,
        {"none": np.zeros(0, dtype=np.uint8)},
        kind="config",
        meta={"combiner": name, "options": opts},
    )
    if isinstance(node, Node) and node.writing:
        update_meta(loc, {"combiner": name, "combiner_options": opts})


def get_combiner(node: NodeLike) -> tuple[str, dict[str, Any]] | None:
    """The combiner name and options set for ``node`` (config part, else manifest), or None."""
    loc = location_of(node)
    return combiner_of(loc, list_parts(loc, kind="config"))


def combiner_of(loc: Location, parts: Iterable[PartInfo]) -> tuple[str, dict[str, Any]] | None:
    """The combiner named by the config part among ``parts``, else by the manifest at ``loc``."""
    for p in parts:
        if p.kind == "config" and p.name == CONFIG_PART and "combiner" in p.meta:
            return p.meta["combiner"], dict(p.meta.get("options") or {})
    try:
        meta = read_manifest(loc).meta
    except Exception:
        return None
    if meta.get("combiner"):
        return meta["combiner"], dict(meta.get("combiner_options") or {})
    return None


def _default_part_name() -> str:
    host = re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname())[:30] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def add_part(
    node: NodeLike,
    key: Any,
    arrays: Mapping[str, Any] | Any,
    *,
    name: str | None = None,
    order: float | None = None,
    meta: Mapping[str, Any] | None = None,
) -> PartInfo:
    """Write one partial result for ``key`` into ``node``; safe from many processes at once.

    Needs no lock: each part is its own directory, committed by its marker. The node must
    exist (opened by whoever set up the computation); it may be open or committed (a later
    :func:`combine` adds the new keys).

    Parameters
    ----------
    node
        The node, or its path/URL (what workers usually get).
    key
        The result key this part contributes to (int, float, str or tuple).
    arrays
        Mapping of array names to arrays, or a single array (stored as ``"data"``).
        ``canvas-mean`` parts need ``"sum"`` and ``"weight"``.
    name
        Unique part name; default ``<host>-<pid>-<random>``.
    order
        Position among the parts of the key (``concatenate`` uses it; default: by name).
    meta
        JSON-compatible metadata stored with the part.
    """
    canon = canonical_key(key)
    return _write_part(node, name or _default_part_name(), arrays, canon, "part", order, meta)


def add_shared(
    node: NodeLike,
    name: str,
    arrays: Mapping[str, Any] | Any,
    *,
    key: Any = None,
    meta: Mapping[str, Any] | None = None,
) -> PartInfo:
    """Write a shared input (the seed's *thresholds*) that every combine call receives.

    Shared inputs are kept after :func:`combine` (later parts may need them) and are dropped
    by ``clean`` once the node is committed and has no parts left.
    """
    canon = None if key is None else canonical_key(key)
    return _write_part(node, name, arrays, canon, "shared", None, meta)


def _write_part(
    node: NodeLike,
    name: str,
    arrays: Mapping[str, Any] | Any,
    key: Key | None,
    kind: str,
    order: float | None,
    meta: Mapping[str, Any] | None,
) -> PartInfo:
    validate_name(name, what="part name")
    if name == CONFIG_PART:
        raise InvalidDataError(f"part name {CONFIG_PART!r} is reserved for the combiner setting")
    loc = location_of(node)
    require_node(loc)
    if not isinstance(arrays, Mapping):
        arrays = {"data": arrays}
    if not arrays:
        raise InvalidDataError("a part needs at least one array")
    info = dict(meta or {})
    if order is not None:
        info["order"] = float(order)
    part_dir = parts_location(loc).join(name)
    part_dir.raw_child(WRITER_FILE).write_bytes(LockInfo.mine().to_json())
    return write_part(
        loc,
        name,
        arrays,
        key=None if key is None else key_to_json(key),
        kind=kind,
        meta=info,
    )


def require_node(loc: Location) -> Manifest:
    """The manifest of the node at ``loc``; a clear error when there is no node to add to."""
    try:
        return read_manifest(loc)
    except NodeNotFoundError as exc:
        raise NodeNotFoundError(
            f"no cache node at {loc.url}: open the node (tree.node(...).open()) before adding "
            "parts to it"
        ) from exc
