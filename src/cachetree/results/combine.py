"""Parts to results: combiners, combine, merge and split of keyed outputs.

Workflow (see ``docs/parts.md``)::

    node = tree.node("eko", params=p).open()      # one process sets the node up
    set_combiner(node, "canvas-mean")             # remembered across processes
    add_shared(node, "thresholds", {...})         # shared inputs, kept until clean
    node.abandon()                                # let other processes combine it later
    add_part(node.url, key=0.5, arrays={...})     # any number of independent workers
    combine(node.url)                             # once: results -> node.keyed(); commit

Parts are never removed before the combined results are committed. Every part a result was
made from is recorded in the store's inventory, so a combine killed at any instant can be run
again: results already committed are not recomputed, parts not yet combined are.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import socket
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from ..errors import (
    IncompatibleError,
    InvalidDataError,
    KeyLookupError,
    NodeNotFoundError,
    ShapeMismatchError,
    UnknownCombinerError,
)
from ..fs.location import TMP_MARK, Location, validate_name
from ..tree.fingerprint import fingerprint, to_jsonable
from ..tree.inventory import scan_items
from ..tree.keyed import (
    Key,
    KeyedStore,
    KeyIndex,
    canonical_key,
    combined_part_ids,
    key_from_json,
    key_to_json,
    keyed_store_names,
    sort_key,
)
from ..tree.lock import LockInfo, acquire_lock, read_lock, release_lock
from ..tree.manifest import Manifest, Status, now_iso, read_manifest, write_manifest
from ..tree.node import Node
from ..tree.parts import (
    PART_MARKER,
    WRITER_FILE,
    PartInfo,
    list_parts,
    part_id,
    parts_location,
    remove_part,
    write_part,
)

__all__ = [
    "BUILTIN_COMBINERS",
    "CONFIG_PART",
    "CombineReport",
    "PartView",
    "add_part",
    "add_shared",
    "check_merge",
    "combine",
    "get_combiner",
    "merge",
    "resolve_combiner",
    "set_combiner",
    "split",
]

log = logging.getLogger("cachetree")

CONFIG_PART = "_combiner"
"""Name of the part (kind ``"config"``) that remembers a node's combiner across processes."""

OnConflict = Literal["error", "skip", "replace"]

_STAGE_HOOK: Callable[[str], None] | None = None
"""Test hook called at the stages of :func:`combine` (``combined``, ``stored``,
``committed``, ``removed``); crash tests use it to time a SIGKILL."""


def _stage(name: str) -> None:
    if _STAGE_HOOK is not None:
        _STAGE_HOOK(name)


# -- parts as seen by combiners ---------------------------------------------------------------
class PartView(Mapping):
    """A committed part as a read-only mapping of array names to arrays, loaded on access.

    Attributes
    ----------
    info
        The underlying :class:`~cachetree.tree.parts.PartInfo`.
    """

    def __init__(self, info: PartInfo):
        self.info = info

    @property
    def name(self) -> str:
        """Part name."""
        return self.info.name

    @property
    def key(self) -> Key | None:
        """The key the part contributes to (None for shared inputs without a key)."""
        return None if self.info.key is None else key_from_json(self.info.key)

    @property
    def meta(self) -> dict[str, Any]:
        """Free metadata the writer stored."""
        return self.info.meta

    def shape(self, array: str) -> tuple[int, ...]:
        """Shape of one array, from the marker (no data read)."""
        return tuple(self._spec(array)["shape"])

    def dtype(self, array: str) -> np.dtype:
        """dtype of one array, from the marker (no data read)."""
        return np.dtype(self._spec(array)["dtype"])

    def _spec(self, array: str) -> dict[str, Any]:
        if array not in self.info.arrays:
            raise KeyLookupError(
                f"part {self.name!r} has no array {array!r}; it has {sorted(self.info.arrays)}"
            )
        return self.info.arrays[array]

    def __getitem__(self, array: str) -> np.ndarray:
        self._spec(array)
        return self.info.read(array)

    def __contains__(self, array: object) -> bool:
        return array in self.info.arrays

    def __iter__(self) -> Iterator[str]:
        return iter(self.info.arrays)

    def __len__(self) -> int:
        return len(self.info.arrays)

    def __repr__(self) -> str:
        return f"PartView({self.name!r}, key={self.key!r}, arrays={sorted(self.info.arrays)})"


# -- built-in combiners -----------------------------------------------------------------------
def _array_name(parts: Sequence[PartView], array: str | None) -> str:
    if array is not None:
        lacking = [p.name for p in parts if array not in p]
        if lacking:
            raise InvalidDataError(f"parts {lacking} have no array {array!r}")
        return array
    names = {tuple(sorted(p)) for p in parts}
    if len(names) == 1 and len(first := next(iter(names))) == 1:
        return first[0]
    raise InvalidDataError(
        "parts hold several (or differently named) arrays: "
        + "; ".join(f"{p.name}: {sorted(p)}" for p in parts[:5])
        + "; name the one to combine with the combiner option array=..., or use a user combiner"
    )


def combine_sum(
    parts: Sequence[PartView], *, key: Key, shared: Mapping[str, PartView], array: str | None = None
) -> np.ndarray:
    """Element-wise sum of one array over the parts (same shape required)."""
    name = _array_name(parts, array)
    shapes = {p.name: p.shape(name) for p in parts}
    if len(set(shapes.values())) > 1:
        raise ShapeMismatchError(f"cannot sum parts of key {key!r} with shapes {shapes}")
    dtype = np.result_type(*(p.dtype(name) for p in parts))
    total: np.ndarray | None = None
    for p in parts:  # one part in memory at a time
        if total is None:
            total = np.array(p[name], dtype=dtype, copy=True)
        else:
            total += p[name]
    assert total is not None
    return total


def combine_concatenate(
    parts: Sequence[PartView],
    *,
    key: Key,
    shared: Mapping[str, PartView],
    array: str | None = None,
    axis: int = 0,
) -> np.ndarray:
    """Concatenate one array of the parts along ``axis``, in part order.

    Part order is the ``order`` given to :func:`add_part`, then the part name.
    """
    name = _array_name(parts, array)
    shapes = [p.shape(name) for p in parts]
    ndim = {len(s) for s in shapes}
    if len(ndim) != 1 or not -min(ndim) <= axis < min(ndim):
        raise ShapeMismatchError(
            f"cannot concatenate parts of key {key!r} along axis {axis}: shapes {shapes}"
        )
    ax = axis % len(shapes[0])
    others = {s[:ax] + s[ax + 1 :] for s in shapes}
    if len(others) > 1:
        raise ShapeMismatchError(
            f"cannot concatenate parts of key {key!r} along axis {axis}: shapes {shapes} differ "
            "in another axis"
        )
    dtype = np.result_type(*(p.dtype(name) for p in parts))
    out_shape = list(shapes[0])
    out_shape[ax] = sum(s[ax] for s in shapes)
    out = np.empty(out_shape, dtype=dtype)
    start = 0
    for p, s in zip(parts, shapes, strict=True):
        index = [slice(None)] * len(out_shape)
        index[ax] = slice(start, start + s[ax])
        out[tuple(index)] = p[name]
        start += s[ax]
    return out


def combine_canvas_mean(
    parts: Sequence[PartView],
    *,
    key: Key,
    shared: Mapping[str, PartView],
    sum: str = "sum",
    weight: str = "weight",
    fill_value: float = 0.0,
    dtype: str | None = None,
) -> np.ndarray:
    """Weighted mean of canvas parts: (sum of the ``sum`` arrays) / (sum of the ``weight`` arrays).

    Each part holds a weighted sum (e.g. ``(C, H, W)``) and a weight that broadcasts against
    it (e.g. ``(H, W)`` or ``(1, H, W)``). Where the total weight is 0 the result is
    ``fill_value``. Accumulates in float64; the result is float32 unless the sums are float64
    (or ``dtype`` says otherwise).
    """
    for option, value in (("sum", sum), ("weight", weight)):
        lacking = [p.name for p in parts if value not in p]
        if lacking:
            raise InvalidDataError(
                f"canvas-mean needs an array {value!r} ({option}) in every part; parts "
                f"{lacking} lack it"
            )
    sum_shapes = {p.shape(sum) for p in parts}
    weight_shapes = {p.shape(weight) for p in parts}
    if len(sum_shapes) > 1 or len(weight_shapes) > 1:
        raise ShapeMismatchError(
            f"canvas-mean parts of key {key!r} disagree: {sum} shapes {sorted(sum_shapes)}, "
            f"{weight} shapes {sorted(weight_shapes)}"
        )
    s_shape, w_shape = sum_shapes.pop(), weight_shapes.pop()
    try:
        ok = np.broadcast_shapes(s_shape, w_shape) == s_shape
    except ValueError:
        ok = False
    if not ok:
        raise ShapeMismatchError(
            f"canvas-mean: weight shape {w_shape} does not broadcast to sum shape {s_shape}"
        )
    total = np.zeros(s_shape, dtype=np.float64)
    weights = np.zeros(w_shape, dtype=np.float64)
    for p in parts:  # one part in memory at a time
        total += p[sum]
        weights += p[weight]
    in_dtype = np.result_type(*(p.dtype(sum) for p in parts))
    out_dtype = np.dtype(dtype) if dtype else np.result_type(in_dtype, np.float32)
    covered = np.broadcast_to(weights > 0, s_shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / weights
    return np.where(covered, mean, fill_value).astype(out_dtype, copy=False)


BUILTIN_COMBINERS: Mapping[str, Callable[..., Any]] = {
    "canvas-mean": combine_canvas_mean,
    "concatenate": combine_concatenate,
    "sum": combine_sum,
}
"""Combiners usable by name. Anything else is an import path ``"package.module:function"``."""


def _builtin_list() -> str:
    return ", ".join(repr(n) for n in sorted(BUILTIN_COMBINERS))


def resolve_combiner(name: str) -> Callable[..., Any]:
    """The function a combiner name designates.

    A combiner is called once per key as ``fn(parts, key=key, shared=shared, **options)``,
    where ``parts`` is a list of :class:`PartView` (in part order) and ``shared`` maps the
    names of the node's shared inputs to :class:`PartView`; it returns the key's result array.

    Raises
    ------
    UnknownCombinerError
        If ``name`` is not built in and not an importable ``module:function`` path.
    """
    if not isinstance(name, str) or not name:
        raise UnknownCombinerError(
            f"a combiner is named by a string, got {name!r}; built in: {_builtin_list()}, or "
            "an import path 'package.module:function'"
        )
    if name in BUILTIN_COMBINERS:
        return BUILTIN_COMBINERS[name]
    if ":" not in name:
        raise UnknownCombinerError(
            f"unknown combiner {name!r}: use one of the built-in combiners ({_builtin_list()}) "
            "or an import path 'package.module:function'"
        )
    module_name, _, attr = name.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise UnknownCombinerError(
            f"combiner {name!r}: cannot import module {module_name!r} ({exc}); "
            f"built-in combiners are {_builtin_list()}"
        ) from exc
    try:
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise UnknownCombinerError(
            f"combiner {name!r}: module {module_name!r} has no attribute {attr!r}; "
            f"built-in combiners are {_builtin_list()}"
        ) from exc
    if not callable(obj):
        raise UnknownCombinerError(
            f"combiner {name!r} is a {type(obj).__name__}, not a function; "
            f"built-in combiners are {_builtin_list()}"
        )
    return obj


# -- node helpers -----------------------------------------------------------------------------
NodeLike = Node | Location | str | os.PathLike


def _as_node(node: NodeLike) -> Node:
    return node if isinstance(node, Node) else Node(Location.from_url(node))


def _location(node: NodeLike) -> Location:
    return node.location if isinstance(node, Node) else Location.from_url(node)


def _require_node(loc: Location) -> Manifest:
    try:
        return read_manifest(loc)
    except NodeNotFoundError as exc:
        raise NodeNotFoundError(
            f"no cache node at {loc.url}: open the node (tree.node(...).open()) before adding "
            "parts to it"
        ) from exc


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
    loc = _location(node)
    _require_node(loc)
    opts = to_jsonable(options)
    write_part(
        loc,
        CONFIG_PART,
        {"none": np.zeros(0, dtype=np.uint8)},
        kind="config",
        meta={"combiner": name, "options": opts},
    )
    if isinstance(node, Node) and node.writing:
        _update_open_meta(loc, {"combiner": name, "combiner_options": opts})


def get_combiner(node: NodeLike) -> tuple[str, dict[str, Any]] | None:
    """The combiner name and options set for ``node`` (config part, else manifest), or None."""
    loc = _location(node)
    return _combiner_of(loc, list_parts(loc, kind="config"))


def _combiner_of(loc: Location, parts: Iterable[PartInfo]) -> tuple[str, dict[str, Any]] | None:
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
    loc = _location(node)
    _require_node(loc)
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


def _update_open_meta(loc: Location, meta: Mapping[str, Any]) -> None:
    manifest = read_manifest(loc)
    manifest.meta.update(meta)
    write_manifest(loc, manifest)


class _Update:
    """Hold a node's lock while results are added; publish with :meth:`finish`.

    An open node is committed by :meth:`finish`; a committed node stays committed and gets a
    refreshed inventory (new files are written before the store inventory, and that before the
    manifest, so readers never see a listed file missing). On error the node is left as it
    was (open or committed) and a lock taken here is released.
    """

    def __init__(self, node: Node):
        self.node = node
        self.loc = node.location
        self.acquired = False
        self.finished = False

    def __enter__(self) -> _Update:
        read_manifest(self.loc)  # NodeNotFoundError / CorruptManifestError
        if not self.node.writing:
            held = read_lock(self.loc)
            mine_already = held is not None and held.is_mine()
            acquire_lock(self.loc)
            self.acquired = not mine_already
        self.manifest = read_manifest(self.loc)
        self.committed = self.manifest.status is Status.COMMITTED
        return self

    def finish(self, meta: Mapping[str, Any]) -> None:
        if self.committed:
            manifest = read_manifest(self.loc)
            items = scan_items(self.loc, set(self.node.child_names()))
            for name, extra in self.node._items_meta.items():
                if name in items:
                    items[name].update(extra)
            manifest.items = items
            manifest.meta.update(meta)
            manifest.meta["updated"] = now_iso()
            write_manifest(self.loc, manifest)
            if self.acquired:
                release_lock(self.loc)
        else:
            _update_open_meta(self.loc, meta)
            self.node.commit()
        self.finished = True

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self.finished and self.acquired:
            release_lock(self.loc)


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
    committed node that received new parts), and only then are the combined parts removed.
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
    node = _as_node(node)
    loc = node.location
    report = CombineReport(node.url)
    with _Update(node) as update:
        all_parts = list_parts(loc)
        data_parts = [p for p in all_parts if p.kind == "part"]
        done_ids = combined_part_ids(loc)
        consumed = [p for p in data_parts if part_id(p) in done_ids]
        pending = [p for p in data_parts if part_id(p) not in done_ids]
        if not pending and not consumed:
            report.committed = update.committed
            return report
        configured = _combiner_of(loc, all_parts)
        name = combiner or (configured[0] if configured else None)
        if name is None and pending:
            raise UnknownCombinerError(
                f"no combiner is set for {node.url}: call set_combiner(node, name) or pass "
                f"combiner=...; built in: {_builtin_list()}"
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
        results = KeyedStore(
            node, store, rel_tol=rel_tol, abs_tol=abs_tol, max_inflight=2, _writable=True
        )
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
    parts_location(loc).remove_if_empty()
    log.info("%s", report)
    return report


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
    target, source = _as_node(target), _as_node(source)
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
        _, t_index = t_store._inventory()
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
    t_parts = {p.name: p for p in list_parts(target.location)}
    for p in list_parts(source.location):
        q = t_parts.get(p.name)
        if q is not None and on_conflict == "error" and not _same_part(p, q):
            diffs.append(f"part {p.name!r} ({p.kind}) exists in both with different content")
    return diffs


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
        target.write_bytes(Location(part.location.fs, path).read_bytes())
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
    target, source = _as_node(target), _as_node(source)
    with _Update(target) as update:
        diffs = check_merge(target, source, on_conflict=on_conflict, check_params=check_params)
        if diffs:
            raise IncompatibleError(f"cannot merge {source.url} into {target.url}", diffs)
        s_comb, t_comb = get_combiner(source), get_combiner(target)
        for name in keyed_store_names(source):
            s_store = KeyedStore(source, name)
            with KeyedStore(target, name, _writable=True) as t_store:
                for e in tqdm(
                    s_store.entries(), desc=f"merging {name}", unit="key", disable=not progress
                ):
                    if on_conflict == "skip" and e["key"] in t_store:
                        continue
                    data = s_store.location.raw_child(e["file"]).read_bytes()
                    t_store._put_file(e["key"], data, e["shape"], e["dtype"], e.get("parts", ()))
        t_parts = {p.name: p for p in list_parts(target.location)}
        for p in list_parts(source.location):
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
    node = _as_node(node)
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

    all_parts = list_parts(node.location)
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
                    data = st.location.raw_child(e["file"]).read_bytes()
                    t_store._put_file(e["key"], data, e["shape"], e["dtype"], e.get("parts", ()))
        for p in all_parts:
            if p.kind == "part" and (p.key is None or wanted.find(key_from_json(p.key)) is None):
                continue
            _copy_part(p, t.location)
        meta: dict[str, Any] = {"split_from": node.url}
        if combiner:
            meta.update(combiner=combiner[0], combiner_options=combiner[1])
        _update_open_meta(t.location, meta)
        t.commit()
    return targets


def _split_target(node: Node, out: str, parent: NodeLike | None, manifest: Manifest) -> Node:
    if parent is not None:
        return _as_node(parent).child(out, params=manifest.params, kind=manifest.kind)
    loc = node.location.parent.join(out)
    if node.location == node.root:
        return Node(loc, params=manifest.params, kind=manifest.kind)
    return Node(loc, root=node.root, params=manifest.params, kind=manifest.kind)
