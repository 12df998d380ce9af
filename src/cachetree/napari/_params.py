"""Parameter differences for people: why a node is stale, how two nodes differ.

Pure functions over manifests and :class:`~cachetree.tree.walk.NodeInfo` (no Qt). Nested
parameters are compared key by key (``model.lr``); lists and other values as a whole.
"""

from __future__ import annotations

import json
from typing import Any

from cachetree.tree.walk import NodeInfo

MISSING = object()
"""Stands for a key one side does not have."""


def flatten(params: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys; anything else is one value."""
    if not isinstance(params, dict):
        return {prefix or "(params)": params} if params is not None or prefix else {}
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def param_diff(old: Any, new: Any) -> list[tuple[str, Any, Any]]:
    """``(key, old value, new value)`` for every key whose value differs (or is MISSING)."""
    a, b = flatten(old), flatten(new)
    pairs = ((k, a.get(k, MISSING), b.get(k, MISSING)) for k in sorted(set(a) | set(b)))
    return [(key, x, y) for key, x, y in pairs if x is MISSING or y is MISSING or x != y]


def show(value: Any) -> str:
    """A parameter value as JSON (``-`` for a missing key)."""
    return "-" if value is MISSING else json.dumps(value, default=str)


def stale_explanation(info: NodeInfo, parent: NodeInfo | None) -> list[str]:
    """Lines saying which change of the parent's parameters made ``info`` stale."""
    if not info.stale or info.manifest is None:
        return []
    name = (parent.path or "/") if parent is not None else "?"
    recorded = info.manifest.meta.get("parent_params", MISSING)
    now = parent.manifest.params if parent is not None and parent.manifest else MISSING
    if recorded is MISSING or now is MISSING:
        then_fp = (info.manifest.parent_fingerprint or "-")[:12]
        now_fp = (parent.manifest.fingerprint if parent and parent.manifest else "-") or "-"
        return [
            f"why:       parent {name!r} recomputed (its parameters then were not "
            f"recorded; fingerprint then {then_fp}…, now {now_fp[:12]}…)"
        ]
    changes = param_diff(recorded, now)
    if not changes:
        return [f"why:       parent {name!r} recomputed with the same parameters"]
    lines = [f"why:       parent {name!r} recomputed with other parameters:"]
    lines += [f"             {key}: {show(old)} -> {show(new)}" for key, old, new in changes]
    return lines
