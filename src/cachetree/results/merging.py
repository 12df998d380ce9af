"""Merge two separately computed outputs after checking they are compatible, and split
one output into several by key."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from ..errors import (
    IncompatibleError,
    InvalidDataError,
    KeyLookupError,
)
from ..fs.location import TMP_MARK, Location, validate_name
from ..tree.fingerprint import fingerprint
from ..tree.keyed import (
    Key,
    KeyedStore,
    KeyIndex,
    key_from_json,
    key_to_json,
    keyed_store_names,
)
from ..tree.manifest import Manifest, Status, update_meta
from ..tree.node import Node, NodeLike, as_node
from ..tree.parts import (
    CLAIM_KIND,
    PART_MARKER,
    PartInfo,
    list_parts,
    parts_location,
)
from .adding import get_combiner

__all__ = ["check_merge", "merge", "split"]

OnConflict = Literal["error", "skip", "replace"]


# -- merge ------------------------------------------------------------------------------------
def _param_differences(target: Any, source: Any) -> list[str]:
    if isinstance(target, dict) and isinstance(source, dict):
        out = []
        for k in sorted(set(target) | set(source)):
            if k not in target:
                out.append(f"parameter {k!r}: only the source has it ({source[k]!r})")
            elif k not in source:
                out.append(f"parameter {k!r}: only the target has it ({target[k]!r})")
            elif fingerprint(target[k]) != fingerprint(source[k]):
                out.append(f"parameter {k!r}: target {target[k]!r}, source {source[k]!r}")
        return out
    return [f"parameters differ: target {target!r}, source {source!r}"]


def _same_part(a: PartInfo, b: PartInfo) -> bool:
    if (a.kind, a.key, a.arrays, a.meta) != (b.kind, b.key, b.arrays, b.meta):
        return False
    return all(
        a.location.join(n + ".npy").read_bytes() == b.location.join(n + ".npy").read_bytes()
        for n in a.arrays
    )


def _check_on_conflict(on_conflict: str) -> None:
    if on_conflict not in ("error", "skip", "replace"):
        raise InvalidDataError(
            f"on_conflict must be 'error', 'skip' or 'replace', not {on_conflict!r}"
        )


def check_merge(
    target: NodeLike,
    source: NodeLike,
    *,
    on_conflict: OnConflict = "error",
    check_params: bool = True,
) -> list[str]:
    """Every reason why ``source`` cannot be merged into ``target`` (empty: compatible).

    Checks the parameters (unless ``check_params=False``), the combiner, per keyed store the
    dtype and shape of the keys both hold (and of the stores as a whole when each is uniform),
    overlapping keys (with ``on_conflict="error"``) and parts of the same name but different
    content.

    Raises
    ------
    NotCommittedError
        If ``source`` is not committed.
    NodeNotFoundError
        If either node does not exist.
    """
    _check_on_conflict(on_conflict)
    target, source = as_node(target), as_node(source)
    t_manifest = target.manifest
    s_manifest = source.require_committed()
    diffs: list[str] = []
    if target.location == source.location:
        return [f"source and target are the same node {target.url}"]
    if check_params and fingerprint(t_manifest.params) != fingerprint(s_manifest.params):
        diffs += _param_differences(t_manifest.params, s_manifest.params)
    t_comb, s_comb = get_combiner(target), get_combiner(source)
    if t_comb and s_comb and t_comb != s_comb:
        diffs.append(
            f"combiner: target uses {t_comb[0]!r} {t_comb[1]}, source {s_comb[0]!r} {s_comb[1]}"
        )
    for name in keyed_store_names(source):
        s_store, t_store = KeyedStore(source, name), KeyedStore(target, name)
        s_entries, t_entries = s_store.entries(), t_store.entries()
        for what, field_name in (("dtype", "dtype"), ("shape", "shape")):
            t_set = {str(e[field_name]) for e in t_entries}
            s_set = {str(e[field_name]) for e in s_entries}
            if len(t_set) == 1 and len(s_set) == 1 and t_set != s_set:
                t_val, s_val = t_entries[0][field_name], s_entries[0][field_name]
                if what == "dtype":
                    t_val, s_val = np.dtype(t_val), np.dtype(s_val)
                else:
                    t_val, s_val = tuple(t_val), tuple(s_val)
                diffs.append(
                    f"store {name!r}: every key has {what} {t_val} in the target but "
                    f"{s_val} in the source"
                )
        t_index = t_store.index
        by_key = {json.dumps(key_to_json(e["key"])): e for e in t_entries}
        for e in s_entries:
            try:
                found = t_index.find(e["key"])
            except KeyLookupError as exc:
                diffs.append(f"store {name!r}: {exc}")
                continue
            if found is None:
                continue
            te = by_key[json.dumps(key_to_json(found))]
            if tuple(te["shape"]) != tuple(e["shape"]):
                diffs.append(
                    f"store {name!r}, key {e['key']!r}: shape {tuple(te['shape'])} in "
                    f"the target, {tuple(e['shape'])} in the source"
                )
            if np.dtype(te["dtype"]) != np.dtype(e["dtype"]):
                diffs.append(
                    f"store {name!r}, key {e['key']!r}: dtype {np.dtype(te['dtype'])} "
                    f"in the target, {np.dtype(e['dtype'])} in the source"
                )
            if on_conflict == "error":
                diffs.append(
                    f"store {name!r}: key {e['key']!r} exists in both (pass "
                    "on_conflict='skip' or 'replace')"
                )
    t_parts = {p.name: p for p in _carried_parts(target.location)}
    for p in _carried_parts(source.location):
        q = t_parts.get(p.name)
        if q is not None and on_conflict == "error" and not _same_part(p, q):
            diffs.append(f"part {p.name!r} ({p.kind}) exists in both with different content")
    return diffs


def _carried_parts(node: Location) -> list[PartInfo]:
    """The parts of a node that merge and split carry over: all but a claim of items, which
    names items of that node alone."""
    return [p for p in list_parts(node) if p.kind != CLAIM_KIND]


def _copy_part(part: PartInfo, node: Location) -> None:
    """Copy a committed part into another node: arrays first, marker last."""
    dest = parts_location(node).join(part.name)
    dest.raw_child(PART_MARKER).remove()
    src_root = part.location.path.rstrip("/") + "/"
    files = part.location.fs.find(part.location.path)
    for path in sorted(files):
        rel = path[len(src_root) :] if path.startswith(src_root) else os.path.basename(path)
        if rel == PART_MARKER or TMP_MARK in rel:
            continue
        target = Location(dest.fs, dest.path + "/" + rel)
        target.write_bytes(Location(part.location.fs, path).read_bytes(large=True))
    dest.raw_child(PART_MARKER).write_bytes(part.location.raw_child(PART_MARKER).read_bytes())


def merge(
    target: NodeLike,
    source: NodeLike,
    *,
    on_conflict: OnConflict = "error",
    check_params: bool = True,
    progress: bool = False,
) -> Node:
    """Add the keyed results and parts of the committed node ``source`` to ``target``.

    After :func:`check_merge` finds nothing wrong, every keyed store of ``source`` is copied
    into ``target`` one key at a time, then its parts (shared inputs, combiner setting,
    parts not combined yet); an open ``target`` is then committed, a committed one gets a
    refreshed inventory. ``source`` is never modified.

    Parameters
    ----------
    on_conflict
        Keys (and parts) present in both: ``"error"`` (default) refuses the merge,
        ``"skip"`` keeps the target's, ``"replace"`` takes the source's. Shapes and dtypes
        must agree in every case.
    check_params
        Require equal parameters (their fingerprint).

    Raises
    ------
    IncompatibleError
        Listing every difference; nothing is modified.
    """
    _check_on_conflict(on_conflict)
    target, source = as_node(target), as_node(source)
    with target.update() as update:
        diffs = check_merge(target, source, on_conflict=on_conflict, check_params=check_params)
        if diffs:
            raise IncompatibleError(f"cannot merge {source.url} into {target.url}", diffs)
        s_comb, t_comb = get_combiner(source), get_combiner(target)
        for name in keyed_store_names(source):
            s_store = KeyedStore(source, name)
            with KeyedStore(target, name) as t_store:
                for e in tqdm(
                    s_store.entries(), desc=f"merging {name}", unit="key", disable=not progress
                ):
                    if on_conflict == "skip" and e["key"] in t_store:
                        continue
                    data = s_store.location.raw_child(e["file"]).read_bytes(large=True)
                    t_store.put_file(e["key"], data, e["shape"], e["dtype"], e.get("parts", ()))
        t_parts = {p.name: p for p in _carried_parts(target.location)}
        for p in _carried_parts(source.location):
            q = t_parts.get(p.name)
            if q is not None and (on_conflict == "skip" or _same_part(p, q)):
                continue
            _copy_part(p, target.location)
        meta: dict[str, Any] = {}
        if s_comb and not t_comb:
            meta.update(combiner=s_comb[0], combiner_options=s_comb[1])
        merged = list(update.manifest.meta.get("merged_from", []))
        meta["merged_from"] = [*merged, source.url]
        update.finish(meta)
    return target


# -- split ------------------------------------------------------------------------------------
def split(
    node: NodeLike,
    into: Mapping[str, Iterable[Any]],
    *,
    parent: NodeLike | None = None,
) -> dict[str, Node]:
    """Split a committed keyed output into new nodes, each holding a subset of the keys.

    Each new node gets the same parameters and kind as ``node``, the entries of its keys in
    every keyed store, the shared inputs and combiner setting, and the not yet combined parts
    of its keys; it is committed. ``node`` is not modified.

    Parameters
    ----------
    into
        New node name to the keys it receives (matched with the float tolerance).
    parent
        Node under which the new nodes are created; default: beside ``node`` (siblings).

    Returns
    -------
    dict
        New node name to its committed :class:`~cachetree.tree.node.Node`.

    Raises
    ------
    KeyLookupError
        Listing every key that is missing (or ambiguous); nothing is created.
    InvalidDataError
        A key given to two outputs, a bad name, or an output that exists committed.
    NotCommittedError
        If ``node`` is not committed.
    """
    node = as_node(node)
    manifest = node.require_committed()
    if not isinstance(into, Mapping) or not into:
        raise InvalidDataError("split needs a non-empty mapping of new node names to keys")
    stores = {name: KeyedStore(node, name) for name in keyed_store_names(node)}
    index = KeyIndex()
    for st in stores.values():
        for k in st:
            index.add(k)
    missing: list[str] = []
    owner: dict[str, str] = {}
    problems: list[str] = []
    plan: dict[str, list[Key]] = {}
    for out, keys in into.items():
        validate_name(out, what="split output name")
        if isinstance(keys, str | bytes) or not isinstance(keys, Iterable):
            keys = [keys]
        plan[out] = []
        for k in keys:
            try:
                found = index.find(k)
            except KeyLookupError as exc:
                missing.append(str(exc))
                continue
            if found is None:
                missing.append(f"no key {k!r}")
                continue
            text = json.dumps(key_to_json(found))
            if text in owner and owner[text] != out:
                problems.append(f"key {found!r} is given to both {owner[text]!r} and {out!r}")
            owner[text] = out
            plan[out].append(found)
    if missing:
        raise KeyLookupError(
            f"cannot split {node.url}: " + "; ".join(missing) + f" (it has {len(index)} keys)"
        )
    targets = {out: _split_target(node, out, parent, manifest) for out in plan}
    for out, t in targets.items():
        if t.status is Status.COMMITTED:
            problems.append(f"node {t.url} already exists and is committed")
        if t.location == node.location:
            problems.append(f"output {out!r} is the node being split")
    if problems:
        raise InvalidDataError(f"cannot split {node.url}: " + "; ".join(problems))

    all_parts = _carried_parts(node.location)
    combiner = get_combiner(node)
    for out, keys in plan.items():
        t = targets[out].open()
        wanted = KeyIndex(keys)
        for name, st in stores.items():
            entries = [st.info(k) for k in keys if k in st]
            if not entries:
                continue
            with KeyedStore(t, name) as t_store:
                for e in entries:
                    data = st.location.raw_child(e["file"]).read_bytes(large=True)
                    t_store.put_file(e["key"], data, e["shape"], e["dtype"], e.get("parts", ()))
        for p in all_parts:
            if p.kind == "part" and (p.key is None or wanted.find(key_from_json(p.key)) is None):
                continue
            _copy_part(p, t.location)
        meta: dict[str, Any] = {"split_from": node.url}
        if combiner:
            meta.update(combiner=combiner[0], combiner_options=combiner[1])
        update_meta(t.location, meta)
        t.commit()
    return targets


def _split_target(node: Node, out: str, parent: NodeLike | None, manifest: Manifest) -> Node:
    if parent is not None:
        return as_node(parent).child(out, params=manifest.params, kind=manifest.kind)
    loc = node.location.parent.join(out)
    if node.location == node.root:
        return Node(loc, params=manifest.params, kind=manifest.kind)
    return Node(loc, root=node.root, params=manifest.params, kind=manifest.kind)
