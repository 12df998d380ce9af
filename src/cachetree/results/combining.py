"""Combine: turn a node's parts into keyed results with its combiner, then commit.

Parts are never removed before the combined results are committed. Every part a result was
made from is recorded in the store's inventory, so a combine killed at any instant can be run
again: results already committed are not recomputed, parts not yet combined are."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..errors import (
    IncompatibleError,
    InvalidDataError,
    UnknownCombinerError,
)
from ..tree.fingerprint import to_jsonable
from ..tree.keyed import (
    Key,
    KeyedStore,
    KeyIndex,
    combined_part_ids,
    key_from_json,
    key_to_json,
    sort_key,
)
from ..tree.manifest import now_iso
from ..tree.node import NodeLike, as_node
from ..tree.parts import (
    PartInfo,
    list_parts,
    part_id,
    parts_location,
    parts_of_dead_writers,
    remove_part,
)
from .adding import combiner_of
from .combiners import PartView, builtin_names, resolve_combiner

__all__ = ["CombineReport", "combine"]

log = logging.getLogger("cachetree")

_STAGE_HOOK: Callable[[str], None] | None = None
"""Test hook called at the stages of :func:`combine` (``combined``, ``stored``,
``committed``, ``removed``); crash tests use it to time a SIGKILL."""


def _stage(name: str) -> None:
    if _STAGE_HOOK is not None:
        _STAGE_HOOK(name)


# -- combine ----------------------------------------------------------------------------------
@dataclass
class CombineReport:
    """What :func:`combine` did."""

    url: str
    combiner: str | None = None
    keys: list[Key] = field(default_factory=list)
    parts_combined: int = 0
    parts_removed: int = 0
    committed: bool = False

    def __str__(self) -> str:
        if not self.keys and not self.parts_removed:
            return f"nothing to combine in {self.url}"
        return (
            f"combined {self.parts_combined} parts into {len(self.keys)} keys of {self.url} "
            f"with {self.combiner!r}; removed {self.parts_removed} parts"
        )


def _part_order(p: PartInfo) -> tuple:
    order = p.meta.get("order") if isinstance(p.meta, dict) else None
    return (order is None, order if order is not None else 0.0, p.name)


def _group_by_key(
    parts: Sequence[PartInfo], rel_tol: float, abs_tol: float
) -> list[tuple[Key, list[PartView]]]:
    index = KeyIndex(rel_tol=rel_tol, abs_tol=abs_tol)
    groups: dict[str, tuple[Key, list[PartInfo]]] = {}
    keyless = [p.name for p in parts if p.key is None]
    if keyless:
        raise InvalidDataError(
            f"parts {keyless} have no key: write parts with add_part(node, key, arrays)"
        )
    for p in parts:
        key = key_from_json(p.key)
        found = index.find(key)
        if found is None:
            index.add(key)
            found = key
        groups.setdefault(json.dumps(key_to_json(found)), (found, []))[1].append(p)
    out = []
    for members in (g[1] for g in groups.values()):
        # The group's key: the value most parts used (ties: the smallest), whatever the order
        # in which the parts were listed.
        counts = Counter(json.dumps(p.key) for p in members)
        text = min(counts, key=lambda t: (-counts[t], sort_key(key_from_json(json.loads(t)))))
        out.append((key_from_json(json.loads(text)), sorted(members, key=_part_order)))
    out.sort(key=lambda g: sort_key(g[0]))
    return [(k, [PartView(p) for p in ps]) for k, ps in out]


def _as_result(value: Any, combiner: str, key: Key) -> np.ndarray:
    if value is None:
        raise InvalidDataError(f"combiner {combiner!r} returned None for key {key!r}")
    arr = np.asarray(value)
    if arr.dtype.hasobject:
        raise InvalidDataError(
            f"combiner {combiner!r} returned an object array for key {key!r}; return a numeric "
            "array"
        )
    return arr


def combine(
    node: NodeLike,
    *,
    combiner: str | None = None,
    options: Mapping[str, Any] | None = None,
    store: str = "results",
    progress: bool | Callable[[int, int, str], None] = False,
    rel_tol: float = 1e-9,
    abs_tol: float = 1e-12,
) -> CombineReport:
    """Combine the node's parts into final results, one key at a time, then commit.

    Parts (kind ``"part"``) are grouped by key (float keys within the tolerance), each group
    is passed with the shared inputs to the combiner, and the result is written to the keyed
    store ``store``. Then the node is committed (an open node) or its inventory refreshed (a
    committed node that received new parts), and only then are the combined parts removed,
    with the unfinished parts of workers that died on this host.
    Shared inputs and the combiner setting stay (see ``clean``).

    The node must not be held by another live process: the process that opened it either
    calls ``combine`` itself or calls ``node.abandon()`` first. A lock left by a dead process
    is broken.

    Parameters
    ----------
    node
        Node handle, path or URL.
    combiner
        Combiner name or import path; default: the one set with :func:`set_combiner`.
    options
        Keyword options for the combiner; default: those set with :func:`set_combiner`.
    store
        Keyed store receiving the results.
    progress
        True shows a tqdm progress bar; a callable is called as ``progress(done, total,
        description)`` before each key and once before committing (GUIs use this).
    rel_tol, abs_tol
        Float key tolerance when grouping parts and matching stored keys.

    Raises
    ------
    UnknownCombinerError
        No combiner set, or it cannot be resolved (nothing is modified).
    IncompatibleError
        Parts target keys the store already holds (nothing is modified).
    LockHeldError
        Another live process is writing the node.
    """
    node = as_node(node)
    loc = node.location
    report = CombineReport(node.url)
    with node.update() as update:
        all_parts = list_parts(loc)
        data_parts = [p for p in all_parts if p.kind == "part"]
        done_ids = combined_part_ids(loc)
        consumed = [p for p in data_parts if part_id(p) in done_ids]
        pending = [p for p in data_parts if part_id(p) not in done_ids]
        if not pending and not consumed:
            report.committed = update.committed
            return report
        configured = combiner_of(loc, all_parts)
        name = combiner or (configured[0] if configured else None)
        if name is None and pending:
            raise UnknownCombinerError(
                f"no combiner is set for {node.url}: call set_combiner(node, name) or pass "
                f"combiner=...; built in: {builtin_names()}"
            )
        fn = resolve_combiner(name) if pending else None
        if options is not None:
            opts = dict(options)
        elif configured and configured[0] == name:
            opts = configured[1]
        else:
            opts = {}
        report.combiner = name
        groups = _group_by_key(pending, rel_tol, abs_tol)
        results = KeyedStore(node, store, rel_tol=rel_tol, abs_tol=abs_tol, max_inflight=2)
        clashes = [key for key, _ in groups if key in results]
        if clashes:
            raise IncompatibleError(
                f"cannot combine the new parts of {node.url}: the store {store!r} already holds "
                "their keys; remove those parts, or recompute the node",
                [f"key {k!r} already has a combined result" for k in clashes],
            )
        shared = {p.name: PartView(p) for p in all_parts if p.kind == "shared"}
        callback = progress if callable(progress) else None
        with results:
            for i, (key, group) in enumerate(
                tqdm(
                    groups, desc=f"combining {node.name}", unit="key", disable=progress is not True
                )
            ):
                if callback is not None:
                    callback(i, len(groups), f"combining key {key!r}")
                assert fn is not None and name is not None
                value = fn(group, key=key, shared=shared, **opts)
                ids = [part_id(p.info) for p in group]
                results.write(key, _as_result(value, name, key), parts=ids)
                report.keys.append(key)
                _stage("combined")
            results.flush()
            _stage("stored")
        if callback is not None:
            callback(len(groups), len(groups), "committing")
        meta: dict[str, Any] = {"combined": {"store": store, "keys": len(results), "at": now_iso()}}
        if name is not None:
            meta.update(combiner=name, combiner_options=to_jsonable(opts))
        update.finish(meta)
        report.parts_combined = len(pending)
    report.committed = True
    _stage("committed")
    for p in consumed + pending:
        remove_part(p)
        report.parts_removed += 1
        _stage("removed")
    for part_dir in parts_of_dead_writers(loc):  # what killed workers left half-written
        part_dir.remove()
    parts_location(loc).remove_if_empty()
    log.info("%s", report)
    return report
