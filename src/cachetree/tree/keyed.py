"""Keyed stores: one array per key inside a node, loaded lazily one key (or a few) at a time.

A keyed store named ``results`` lives in the node directory ``<node>/results.keyed/``::

    results.keyed/
        keys.json                 inventory: key -> file, shape, dtype, bytes (written last)
        k-0.5-3f2a9c01de.npy      one .npy per key (name derived from the key, never parsed)
        k-tile_3-9b0c11d2ee.npy

Keys are ints, floats, strings or tuples of those (lists are taken as tuples). Float
components are matched with a tolerance (``rel_tol``/``abs_tol``), so ``store[0.1 + 0.2]``
finds the array written under ``0.3``; a lookup that matches more than one stored key raises
:class:`~cachetree.errors.KeyLookupError` listing the candidates.

Arrays are written by an :class:`~cachetree.fs.writer.AsyncWriter` (atomic ``.npy`` files with
backpressure). ``keys.json`` is rewritten atomically by :meth:`KeyedStore.flush` (and
:meth:`~KeyedStore.close`), after every array it lists is on storage, so the inventory never
names a missing or partial file. **Close (or flush) a store before committing its node** —
the easiest way is ``with node.keyed() as store:`` inside the node's ``with`` block.

Reading never loads more than asked: ``store[key]`` reads one file, ``store.load(keys)`` reads
those keys, and iterating ``store.items()`` reads one array per step and keeps no reference
to it, so the memory held is what the caller keeps.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from ..errors import (
    CorruptRecordError,
    FinalizedError,
    InvalidDataError,
    ItemNotFoundError,
    KeyLookupError,
    NodeNotFoundError,
)
from ..fs.location import Location, validate_name
from ..fs.records import Field, parse_record
from ..fs.writer import AsyncWriter
from .manifest import Status
from .node import Node, NodeLike, location_of

__all__ = [
    "INVENTORY",
    "STORE_SUFFIX",
    "KeyIndex",
    "KeyedStore",
    "canonical_key",
    "combined_part_ids",
    "key_from_json",
    "key_to_json",
    "keyed_store_names",
    "read_inventory",
]

STORE_SUFFIX = ".keyed"
"""Suffix of a keyed store's directory inside its node."""

INVENTORY = "keys.json"
"""Inventory file of a keyed store (key -> file, shape, dtype, bytes, source parts)."""

FORMAT = "cachetree-keyed/1"

Key = int | float | str | tuple


# -- keys -------------------------------------------------------------------------------------
def canonical_key(key: Any) -> Key:
    """The stored form of ``key``: int, float, str, or a tuple of those.

    numpy scalars become Python numbers, lists become tuples.

    Raises
    ------
    InvalidDataError
        For None, bools, NaN or infinite floats, empty tuples and other types.
    """
    if isinstance(key, np.generic):
        key = key.item()
    if isinstance(key, bool) or key is None:
        raise InvalidDataError(
            f"{key!r} cannot be a key: use an int, float, str or a tuple of those"
        )
    if isinstance(key, int | str):
        return key
    if isinstance(key, float):
        if not math.isfinite(key):
            raise InvalidDataError(f"key {key!r} is not a finite number")
        return key
    if isinstance(key, tuple | list):
        if not key:
            raise InvalidDataError("an empty tuple cannot be a key")
        return tuple(canonical_key(k) for k in key)
    raise InvalidDataError(
        f"a {type(key).__name__} cannot be a key: use an int, float, str or a tuple of those"
    )


def key_to_json(key: Key) -> Any:
    """JSON form of a canonical key (tuples become lists)."""
    return [key_to_json(k) for k in key] if isinstance(key, tuple) else key


def _entries_ok(entries: list[Any]) -> bool:
    return all(
        isinstance(e, dict)
        and "key" in e
        and isinstance(e.get("file"), str)
        and isinstance(e.get("shape", []), list)
        and isinstance(e.get("dtype", ""), str)
        and isinstance(e.get("parts", []), list)
        for e in entries
    )


_INVENTORY_FIELDS = {
    "entries": Field(
        list,
        required=True,
        check=_entries_ok,
        expect="a list of {key, file, shape, dtype} records",
    ),
    "format": Field((int, str)),
}


def read_inventory(store: Location) -> dict[str, Any] | None:
    """The checked ``keys.json`` of the keyed store directory ``store`` (None when absent).

    Raises
    ------
    CorruptRecordError
        When the inventory is empty, not JSON or malformed.
    """
    loc = store.raw_child(INVENTORY)
    try:
        raw = loc.read_bytes()
    except (NodeNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    return parse_record(
        raw,
        _INVENTORY_FIELDS,
        where=f"keyed-store inventory {loc.url}",
        remedy="recompute the node (open it with its parameters again)",
    )


def key_from_json(value: Any) -> Key:
    """Canonical key from its JSON form (lists become tuples)."""
    return canonical_key(value)


def _canonical_json(key: Key) -> str:
    return json.dumps(key_to_json(key), separators=(",", ":"))


def _signature(key: Key) -> Any:
    """What two keys must share to be compared with a tolerance: structure and strings."""
    if isinstance(key, tuple):
        return tuple(_signature(k) for k in key)
    return ("s", key) if isinstance(key, str) else "n"


def sort_key(key: Key) -> tuple:
    """A total order on canonical keys: numbers, then strings, then tuples."""
    if isinstance(key, tuple):
        return (2, tuple(sort_key(k) for k in key))
    if isinstance(key, str):
        return (1, key)
    return (0, key)


def key_filename(key: Key) -> str:
    """Deterministic, safe file name (without ``.npy``) of ``key``.

    A readable slug of the key plus a hash of its canonical JSON form: different keys never
    share a name, and no key can produce a path separator or a reserved name.
    """
    text = "_".join(map(str, key)) if isinstance(key, tuple) else str(key)
    slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("._")[:40] or "key"
    digest = hashlib.sha256(_canonical_json(key).encode()).hexdigest()[:10]
    return f"k-{slug}-{digest}"


class KeyIndex:
    """Find stored keys exactly, or within a tolerance for float components.

    Parameters
    ----------
    rel_tol, abs_tol
        As in :func:`math.isclose`; applied to a numeric component when at least one side is
        a float (integers always compare exactly).
    """

    def __init__(self, keys: Iterable[Key] = (), *, rel_tol: float = 1e-9, abs_tol: float = 1e-12):
        if rel_tol < 0 or abs_tol < 0:
            raise InvalidDataError("rel_tol and abs_tol must be >= 0")
        self.rel_tol = rel_tol
        self.abs_tol = abs_tol
        self._exact: dict[str, Key] = {}
        self._buckets: dict[Any, list[Key]] = {}
        for key in keys:
            self.add(key)

    def __len__(self) -> int:
        return len(self._exact)

    def add(self, key: Key) -> None:
        """Index a canonical key."""
        text = _canonical_json(key)
        if text not in self._exact:
            self._exact[text] = key
            self._buckets.setdefault(_signature(key), []).append(key)

    def discard(self, key: Key) -> None:
        """Forget a canonical key (exact)."""
        if self._exact.pop(_canonical_json(key), None) is not None:
            self._buckets[_signature(key)].remove(key)

    def _close(self, a: Key, b: Key) -> bool:
        if isinstance(a, tuple):
            return all(self._close(x, y) for x, y in zip(a, b, strict=True))
        if isinstance(a, str):
            return a == b
        if isinstance(a, int) and isinstance(b, int):
            return a == b
        return math.isclose(a, b, rel_tol=self.rel_tol, abs_tol=self.abs_tol)

    def find(self, key: Any) -> Key | None:
        """The stored key equal (or close) to ``key``, or None.

        Raises
        ------
        KeyLookupError
            If ``key`` is not exactly stored and is close to more than one stored key.
        InvalidDataError
            If ``key`` cannot be a key at all.
        """
        key = canonical_key(key)
        exact = self._exact.get(_canonical_json(key))
        if exact is not None:
            return exact
        candidates = [k for k in self._buckets.get(_signature(key), ()) if self._close(k, key)]
        if len(candidates) > 1:
            listed = ", ".join(repr(c) for c in sorted(candidates, key=sort_key))
            raise KeyLookupError(
                f"key {key!r} is ambiguous: it matches {len(candidates)} stored keys within "
                f"rel_tol={self.rel_tol:g}, abs_tol={self.abs_tol:g}: {listed}; give the exact "
                "stored key or use a smaller tolerance"
            )
        return candidates[0] if candidates else None


# -- the store --------------------------------------------------------------------------------
def keyed_store_names(node: NodeLike) -> list[str]:
    """Names of the keyed stores a node directory holds (``"results"`` for ``results.keyed``)."""
    loc = location_of(node)
    return sorted(
        name[: -len(STORE_SUFFIX)]
        for name in loc.ls()
        if name.endswith(STORE_SUFFIX) and len(name) > len(STORE_SUFFIX)
    )


def _load_file(loc: Location, *, mmap: bool) -> np.ndarray:
    """Read one ``.npy`` file (the single place keyed data is read)."""
    try:
        return loc.read_npy(mmap=mmap)
    except FileNotFoundError as exc:
        raise ItemNotFoundError(
            f"keyed file {loc.url} listed in the inventory is missing; the node was modified "
            "outside cachetree — recompute it"
        ) from exc


class KeyedStore(Mapping):
    """One array per key in a node, loaded lazily.

    A read-only :class:`~collections.abc.Mapping` from keys to numpy arrays, plus
    :meth:`write` while the node is open for writing.

    Parameters
    ----------
    node
        A :class:`~cachetree.tree.node.Node` (writable while the node is open for writing through
        that handle), or the node's path/URL/:class:`~cachetree.fs.location.Location` (read only).
    name
        Store name; the directory is ``<name>.keyed`` in the node.
    rel_tol, abs_tol
        Tolerance for float key components, as in :func:`math.isclose`; integer
        components always compare exactly.
    mmap
        Memory-map local files instead of reading them (pages load on access).
    max_inflight
        Arrays that may wait to be written before :meth:`write` blocks (backpressure).
    workers
        Writer threads.

    Examples
    --------
    >>> with tree.node("eko", params=p) as node:  # doctest: +SKIP
    ...     with node.keyed() as store:
    ...         for q2 in grid:
    ...             store.write(q2, compute(q2))
    >>> tree.node("eko").keyed()[100.0]  # doctest: +SKIP
    """

    def __init__(
        self,
        node: NodeLike,
        name: str = "results",
        *,
        rel_tol: float = 1e-9,
        abs_tol: float = 1e-12,
        mmap: bool = False,
        max_inflight: int = 4,
        workers: int = 2,
    ):
        if name.endswith(STORE_SUFFIX):
            name = name[: -len(STORE_SUFFIX)]
        validate_name(name, what="keyed store name")
        self.node = node if isinstance(node, Node) else None
        node_loc = location_of(node)
        self.name = name
        self.dirname = name + STORE_SUFFIX
        self.location = node_loc.join(self.dirname)
        self.mmap = mmap
        self._rel_tol, self._abs_tol = rel_tol, abs_tol
        self._max_inflight, self._workers = max_inflight, workers
        self._entries: dict[str, dict[str, Any]] | None = None  # canonical json -> entry
        self._index: KeyIndex | None = None
        self._writer: AsyncWriter | None = None
        self._pending: set[str] = set()
        self._dirty = False

    # -- inventory ------------------------------------------------------------------------
    def _inventory(self) -> tuple[dict[str, dict[str, Any]], KeyIndex]:
        if self._entries is None or self._index is None:
            entries: dict[str, dict[str, Any]] = {}
            raw = read_inventory(self.location) or {"entries": []}
            for entry in raw["entries"]:
                entry = dict(entry)
                entry["key"] = key_from_json(entry["key"])
                entries[_canonical_json(entry["key"])] = entry
            self._entries = entries
            self._index = KeyIndex(
                (e["key"] for e in entries.values()), rel_tol=self._rel_tol, abs_tol=self._abs_tol
            )
        return self._entries, self._index

    def refresh(self) -> None:
        """Forget the cached inventory and read ``keys.json`` again on next access."""
        if self._dirty:
            raise FinalizedError("flush() the store before refreshing it: it has unsaved keys")
        self._entries = self._index = None

    def resolve(self, key: Any) -> Key:
        """The stored key that ``key`` designates (exact, or within the float tolerance).

        Raises
        ------
        KeyLookupError
            If no stored key matches, or several do.
        """
        entries, index = self._inventory()
        found = index.find(key)
        if found is None:
            shown = ", ".join(repr(k) for k in list(self)[:8])
            more = f", ... ({len(entries)} keys)" if len(entries) > 8 else ""
            what = f"it has {shown}{more}" if entries else "the store is empty"
            raise KeyLookupError(f"no key {key!r} in keyed store {self.location.url}: {what}")
        return found

    def info(self, key: Any) -> dict[str, Any]:
        """Inventory entry of ``key``: ``file``, ``shape``, ``dtype``, ``bytes``, ``parts``."""
        entries, _ = self._inventory()
        return dict(entries[_canonical_json(self.resolve(key))])

    def entries(self) -> list[dict[str, Any]]:
        """Every inventory entry, in key order."""
        entries, _ = self._inventory()
        return [dict(entries[_canonical_json(k)]) for k in self]

    @property
    def exists(self) -> bool:
        """Whether the store has an inventory on storage."""
        return self.location.raw_child(INVENTORY).exists()

    # -- Mapping --------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Key]:
        entries, _ = self._inventory()
        return iter(sorted((e["key"] for e in entries.values()), key=sort_key))

    def __len__(self) -> int:
        return len(self._inventory()[0])

    def __contains__(self, key: object) -> bool:
        try:
            return self._inventory()[1].find(key) is not None
        except InvalidDataError:
            return False

    def __getitem__(self, key: Any) -> np.ndarray:
        """Load the array of one key (matched with the float tolerance)."""
        entries, _ = self._inventory()
        entry = entries[_canonical_json(self.resolve(key))]
        if entry["file"] in self._pending and self._writer is not None:
            self._writer.flush()
        return _load_file(self.location.raw_child(entry["file"]), mmap=self.mmap)

    def load(
        self, keys: Iterable[Any] | None = None, *, stack: bool = False
    ) -> dict[Key, np.ndarray] | np.ndarray:
        """Load a subset of keys (all when None).

        Parameters
        ----------
        keys
            Keys to load, matched with the tolerance; the result follows their order.
        stack
            Return one array of shape ``(len(keys), *shape)`` instead of a dict (the arrays
            must share shape and dtype); filled one key at a time.

        Raises
        ------
        KeyLookupError
            If a key is missing or ambiguous (checked for every key before reading any).
        ShapeMismatchError
            With ``stack=True`` when shapes or dtypes differ.
        """
        wanted = list(self) if keys is None else [self.resolve(k) for k in keys]
        if not stack:
            return {k: self[k] for k in wanted}
        from ..errors import ShapeMismatchError

        infos = [self.info(k) for k in wanted]
        kinds = {(tuple(i["shape"]), i["dtype"]) for i in infos}
        if len(kinds) > 1:
            raise ShapeMismatchError(
                "cannot stack keys with different shapes or dtypes: "
                + ", ".join(f"{tuple(i['shape'])} {np.dtype(i['dtype'])}" for i in infos)
                + "; load them as a dict instead"
            )
        if not infos:
            return np.empty((0,))
        shape, dtype = kinds.pop()
        out = np.empty((len(wanted), *shape), dtype=np.dtype(dtype))
        for i, k in enumerate(wanted):
            out[i] = self[k]
        return out

    # -- writing --------------------------------------------------------------------------
    @property
    def writable(self) -> bool:
        """Whether :meth:`write` is allowed: the node handle is writing (opened for writing, or
        inside :meth:`Node.update <cachetree.tree.node.Node.update>`)."""
        return self.node is not None and self.node.writing

    def _check_writable(self) -> None:
        if self.writable:
            return
        if self.node is None:
            raise FinalizedError(
                f"keyed store {self.location.url} was opened from a path and is read only: "
                "open the node for writing and use node.keyed()"
            )
        state = "committed" if self.node.status is Status.COMMITTED else "not open for writing"
        raise FinalizedError(
            f"node {self.node.url} is {state}; open it for writing (with new params to "
            "recompute it) before writing keys"
        )

    def _get_writer(self) -> AsyncWriter:
        if self._writer is None or self._writer.closed:
            self._writer = AsyncWriter(
                self.location,
                save_format="npy",
                workers=self._workers,
                max_inflight=self._max_inflight,
            )
        return self._writer

    def _file_for(self, key: Key) -> tuple[Key, str]:
        """The stored key ``key`` designates (itself when new) and the file that holds it."""
        entries, index = self._inventory()
        found = index.find(key)
        stored = key if found is None else found
        old = entries.get(_canonical_json(stored))
        return stored, old["file"] if old else key_filename(stored) + ".npy"

    def _record(self, key: Key, file: str, shape: Any, dtype: Any, parts: Iterable[str]) -> Key:
        entries, index = self._inventory()
        stored = index.find(key)
        if stored is None:
            stored = key
            index.add(key)
        old = entries.get(_canonical_json(stored))
        dtype = np.dtype(dtype)
        entry = {
            "key": stored,
            "file": old["file"] if old else file,
            "shape": [int(s) for s in shape],
            "dtype": dtype.str,
            "bytes": int(np.prod(shape, dtype=np.int64)) * dtype.itemsize,
        }
        parts = sorted(parts)
        if parts:
            entry["parts"] = parts
        entries[_canonical_json(stored)] = entry
        self._dirty = True
        return stored

    def write(self, key: Any, array: Any, *, parts: Iterable[str] = ()) -> Key:
        """Write the array of ``key`` (replacing it if the key is already stored).

        The file is written in the background; do not modify ``array`` until :meth:`flush`.

        Parameters
        ----------
        key
            int, float, str or tuple of those; a float close to a stored key replaces it.
        array
            numpy-compatible array (not of object dtype).
        parts
            Names of the parts this result was combined from (recorded in the inventory).

        Returns
        -------
        The stored (canonical) key.
        """
        self._check_writable()
        canon = canonical_key(key)
        data = np.asarray(array)
        if data.dtype.hasobject:
            raise InvalidDataError(
                f"the array of key {key!r} has dtype object; convert it to a numeric dtype"
            )
        stored, file = self._file_for(canon)
        self._get_writer().write(file[: -len(".npy")], data)
        self._pending.add(file)
        return self._record(stored, file, data.shape, data.dtype, parts)

    def put_file(
        self, key: Key, data: bytes, shape: Any, dtype: Any, parts: Iterable[str] = ()
    ) -> Key:
        """Store an already serialised ``.npy`` file for ``key`` (copies between nodes)."""
        self._check_writable()
        stored, file = self._file_for(key)
        self.location.raw_child(file).write_bytes(data)
        return self._record(stored, file, shape, dtype, parts)

    @property
    def index(self) -> KeyIndex:
        """The stored keys, for lookups with the store's tolerance."""
        return self._inventory()[1]

    def raw_file(self, key: Any) -> Location:
        """Location of the ``.npy`` file of ``key``."""
        return self.location.raw_child(self.info(key)["file"])

    def summary(self) -> dict[str, Any]:
        """What the node manifest records about the store: kind, key count, dtype, shape."""
        entries, _ = self._inventory()
        dtypes = {e["dtype"] for e in entries.values()}
        shapes = {tuple(e["shape"]) for e in entries.values()}
        out: dict[str, Any] = {"kind": "keyed", "keys": len(entries)}
        if len(dtypes) == 1:
            out["dtype"] = str(np.dtype(dtypes.pop()))
        if len(shapes) == 1:
            out["key_shape"] = list(shapes.pop())
        return out

    def flush(self) -> None:
        """Wait for every pending write, then rewrite ``keys.json`` atomically."""
        if self._writer is not None:
            self._writer.flush()
        self._pending.clear()
        if not self._dirty:
            return
        entries, _ = self._inventory()
        ordered = sorted(entries.values(), key=lambda e: sort_key(e["key"]))
        doc = {
            "format": FORMAT,
            "entries": [{**e, "key": key_to_json(e["key"])} for e in ordered],
        }
        self.location.makedirs()
        self.location.raw_child(INVENTORY).write_text(json.dumps(doc, indent=0))
        self._dirty = False
        if self.node is not None:
            self.node.describe_item(self.dirname, self.summary())

    def close(self) -> None:
        """Flush and stop the writer. Reading stays possible."""
        try:
            self.flush()
        finally:
            if self._writer is not None:
                self._writer.close()

    def __enter__(self) -> KeyedStore:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.close()
            return
        # The body failed: stop the writer but do not publish an inventory of a failed run.
        if self._writer is not None:
            try:
                self._writer.close()
            except BaseException as close_exc:
                exc.add_note(f"keyed store writer also failed: {close_exc!r}")
        self._dirty = False

    def __del__(self) -> None:
        if getattr(self, "_dirty", False):
            with contextlib.suppress(Exception):
                warnings.warn(
                    f"keyed store {self.location.url} was dropped with unsaved keys: call "
                    "close() or flush() (or use it as a context manager) before committing",
                    ResourceWarning,
                    stacklevel=2,
                )

    def __repr__(self) -> str:
        n = len(self._entries) if self._entries is not None else "?"
        return f"KeyedStore({self.location.url!r}, keys={n})"


def combined_part_ids(loc: Location) -> set[str]:
    """Ids (:func:`~cachetree.tree.parts.part_id`) of the parts combined into the keyed stores
    of the node at ``loc``."""
    ids: set[str] = set()
    for name in keyed_store_names(loc):
        try:
            raw = read_inventory(loc.raw_child(name + STORE_SUFFIX))
        except CorruptRecordError:
            continue
        for entry in raw["entries"] if raw else ():
            ids.update(str(p) for p in entry.get("parts", ()))
    return ids
