"""Resolve what callers pass for a node (a Node, a URL or a Location) once, at the entry."""

from __future__ import annotations

import os

from ..errors import NodeNotFoundError
from ..fs.location import Location
from ..tree.manifest import Manifest, read_manifest
from ..tree.node import Node

__all__ = ["NodeLike"]

NodeLike = Node | Location | str | os.PathLike


def as_node(node: NodeLike) -> Node:
    return node if isinstance(node, Node) else Node(Location.from_url(node))


def location_of(node: NodeLike) -> Location:
    return node.location if isinstance(node, Node) else Location.from_url(node)


def require_node(loc: Location) -> Manifest:
    try:
        return read_manifest(loc)
    except NodeNotFoundError as exc:
        raise NodeNotFoundError(
            f"no cache node at {loc.url}: open the node (tree.node(...).open()) before adding "
            "parts to it"
        ) from exc
