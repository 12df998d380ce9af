"""Reading and writing the items of a node: images, arrays, text, JSON, plots, keyed stores.

:class:`NodeItems` is the item half of :class:`~cachetree.tree.node.Node`; the node's
lifecycle (open, commit, update, children) lives in :mod:`cachetree.tree.node`.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CorruptManifestError, FinalizedError, InvalidDataError, ItemNotFoundError
from ..fs.location import Location, storage_errors, validate_name
from ..fs.writer import AsyncWriter
from .fingerprint import to_jsonable
from .inventory import is_own_entry, scan_items
from .manifest import Manifest, Status, now_iso
from .parts import claimed_items

__all__ = ["NodeItems"]

if TYPE_CHECKING:
    from ..images.ngff import ImageInfo
    from .keyed import KeyedStore

log = logging.getLogger("cachetree")


def _suffixed(name: str, suffix: str) -> str:
    validate_name(name, what="item name")
    return name if name.endswith(suffix) else name + suffix


class NodeItems:
    """The items of a node: save and load images, arrays, text, JSON, plots and keyed stores.

    The base of :class:`~cachetree.tree.node.Node`, which provides the node's state
    (:attr:`~cachetree.tree.node.Node.writing`, ``status``, ``manifest``) and its children.
    Saving needs the node open for writing; loading works on any node.
    """

    def __init__(self, location: Location, *, ngff_format: str | None = None):
        from ..images.metadata import check_format

        self.location = location
        self.ngff_format = check_format(ngff_format)
        """OME-NGFF version of images saved without a ``format`` (``"0.5"`` or ``"0.4"``)."""
        self._log_lines: list[str] = []
        self._items_meta: dict[str, dict[str, Any]] = {}
        self._writer: AsyncWriter | None = None
        self._stores: dict[str, KeyedStore] = {}

    if TYPE_CHECKING:  # the lifecycle half, Node, provides these
        _writing: bool
        url: str
        path: str
        writing: bool
        status: Status
        manifest: Manifest

        def child_names(self) -> list[str]: ...

    # -- inventory --------------------------------------------------------------------
    def _scan_items(self) -> dict[str, dict[str, Any]]:
        """The inventory of the node's items as stored now, with what writers described."""
        items = scan_items(self.location, set(self.child_names()))
        for name, extra in self._items_meta.items():
            if name in items:
                items[name].update(extra)
        return items

    def describe_item(self, name: str, meta: Mapping[str, Any]) -> None:
        """Add fields to the inventory record of item ``name`` (written at the next commit or
        at the end of an :meth:`~cachetree.tree.node.Node.update`)."""
        self._items_meta[name] = dict(meta)

    # -- writing items ----------------------------------------------------------------
    def _check_writable(self) -> None:
        if not self.writing:
            state = "committed" if self.status is Status.COMMITTED else "not opened for writing"
            raise FinalizedError(
                f"node {self.url} is {state}; open it (with new params to recompute) before "
                "writing items"
            )

    @property
    def writer(self) -> AsyncWriter:
        """A background writer rooted at the node (``.npy`` files; mappings one file per key).

        Writes overlap with computation; :meth:`~cachetree.tree.node.Node.commit` waits for
        all of them (and re-raises the first failure) before the manifest is written.
        """
        self._check_writable()
        if self._writer is None or self._writer.closed:
            self._writer = AsyncWriter(self.location, save_format="npy", dict_mode="split")
        return self._writer

    def _close_writer(self) -> None:
        """Wait for background writes (node writer and keyed stores) to reach storage."""
        stores, self._stores = list(self._stores.values()), {}
        for store in stores:
            store.close()
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    def item(self, name: str) -> Location:
        """Location of item ``name`` in the node, for code that writes files itself."""
        return self.location.join(validate_name(name, what="item name"))

    def keyed(self, name: str = "results", **options: Any) -> KeyedStore:
        """The keyed store ``name`` of this node (see :class:`cachetree.tree.keyed.KeyedStore`).

        While the node is being written the same store object is returned for a name, and
        :meth:`~cachetree.tree.node.Node.commit` flushes it before the manifest is written.
        """
        from .keyed import KeyedStore

        if not self._writing:
            return KeyedStore(self, name, **options)
        if name not in self._stores:
            self._stores[name] = KeyedStore(self, name, **options)
        return self._stores[name]

    def save_image(
        self, name: str, data: Any, axes: str | Sequence[str] | None = None, **kwargs: Any
    ) -> ImageInfo:
        """Save an image (numpy or dask, 2-D to 5-D) as an OME-Zarr pyramid ``name.ome.zarr``.

        Extra keyword arguments go to :func:`cachetree.images.ngff.write_image` (e.g.
        ``scale=``, ``units=``, ``format=``; the format defaults to :attr:`ngff_format`).
        """
        self._check_writable()
        target = self.item(_suffixed(name, ".ome.zarr"))
        from ..images.ngff import write_image

        kwargs.setdefault("format", self.ngff_format)
        with storage_errors(target):
            return write_image(target, data, axes=axes, name=name, **kwargs)

    def save_labels(
        self,
        name: str,
        data: Any,
        axes: str | Sequence[str] | None = None,
        *,
        image: str | None = None,
        **kwargs: Any,
    ) -> ImageInfo:
        """Save an integer label image as an OME-Zarr labels pyramid.

        With ``image`` (an image item of this node, saved first) the labels are stored under
        it, ``<image>.ome.zarr/labels/<name>``, in the image's format and with its scale and
        units; otherwise as standalone labels ``<name>.ome.zarr/labels/<name>`` (a group with
        no image of its own, see :func:`cachetree.images.ngff.write_standalone_labels`).
        Either way OME-Zarr readers find them, and reading them leaves the tree unchanged.
        Extra keyword arguments go to :func:`cachetree.images.ngff.write_image` (the format
        of standalone labels defaults to :attr:`ngff_format`).
        """
        from ..images.ngff import write_labels, write_standalone_labels

        self._check_writable()
        validate_name(name, what="labels name")
        if image is None:
            target = self.item(_suffixed(name, ".ome.zarr"))
            kwargs.setdefault("format", self.ngff_format)
            labels_name = name.removesuffix(".ome.zarr")
            with storage_errors(target):
                return write_standalone_labels(target, data, axes=axes, name=labels_name, **kwargs)
        target = self.item(_suffixed(image, ".ome.zarr"))
        with storage_errors(target):
            return write_labels(target, name, data, axes=axes, **kwargs)

    def save_array(self, name: str, data: Any, *, chunks: Any = "auto") -> None:
        """Save a numpy or dask array as a plain Zarr array ``name.zarr``."""
        import dask.array as da
        import zarr

        self._check_writable()
        if not hasattr(data, "shape") or not hasattr(data, "dtype"):
            raise InvalidDataError(
                f"save_array needs a numpy or dask array, got {type(data).__name__}"
            )
        if np.dtype(data.dtype).hasobject:
            raise InvalidDataError("object arrays cannot be saved; convert to a numeric dtype")
        arr = data if isinstance(data, da.Array) else da.from_array(np.asarray(data), chunks=chunks)
        loc = self.item(_suffixed(name, ".zarr"))
        with storage_errors(loc):
            target = zarr.create_array(
                loc.zarr_store(),
                shape=arr.shape,
                dtype=arr.dtype,
                chunks=tuple(c[0] for c in arr.chunks) if arr.size else None,
                overwrite=True,
            )
            da.store(arr, target, lock=False)

    def save_text(self, name: str, text: str) -> None:
        """Save text (a ``.txt`` suffix is added when the name has none)."""
        self._check_writable()
        if not isinstance(text, str):
            raise InvalidDataError(f"save_text needs a str, got {type(text).__name__}")
        if not posixpath.splitext(name)[1]:
            name += ".txt"
        self.item(name).write_text(text)

    def log(self, message: str) -> None:
        """Append a time-stamped line to ``log.txt`` (and to the ``cachetree`` logger)."""
        self._check_writable()
        line = f"{now_iso()} {message}"
        self._log_lines.append(line)
        log.info("%s: %s", self.path or self.url, message)
        if len(self._log_lines) % 50 == 0:
            self._flush_log()

    def _flush_log(self) -> None:
        if self._log_lines:
            self.item("log.txt").write_text("\n".join(self._log_lines) + "\n")

    def save_json(self, name: str, obj: Any) -> None:
        """Save JSON metrics as ``name.json`` (numpy values are converted)."""
        self._check_writable()
        self.item(_suffixed(name, ".json")).write_text(json.dumps(to_jsonable(obj), indent=1))

    def save_figure(self, name: str, figure: Any, *, format: str = "png", dpi: int = 100) -> None:
        """Save a plot: a matplotlib-like figure (anything with ``savefig``) or encoded bytes."""
        self._check_writable()
        if isinstance(figure, bytes | bytearray):
            data = bytes(figure)
        elif hasattr(figure, "savefig"):
            buf = io.BytesIO()
            figure.savefig(buf, format=format, dpi=dpi)
            data = buf.getvalue()
        else:
            raise InvalidDataError(
                "save_figure needs a figure with savefig() or encoded bytes, "
                f"got {type(figure).__name__}"
            )
        self.item(_suffixed(name, f".{format}")).write_bytes(data)

    # -- reading items ----------------------------------------------------------------
    def item_names(self) -> list[str]:
        """Items of the node (from the inventory when committed, else by listing, without
        the items a run still writes in place: see :func:`~cachetree.tree.parts.claim_items`)."""
        try:
            manifest = self.manifest
        except CorruptManifestError:
            manifest = None
        if manifest is not None and manifest.status is Status.COMMITTED:
            return sorted(manifest.items)
        hidden = set(self.child_names()) | claimed_items(self.location)
        return sorted(n for n in self.location.ls() if n not in hidden and not is_own_entry(n))

    def _find(self, name: str, suffixes: Iterable[str] = ("",)) -> Location:
        names = set(self.location.ls())
        for suffix in suffixes:
            candidate = name if name.endswith(suffix) else name + suffix
            if candidate in names:
                return self.item(candidate)
        raise ItemNotFoundError(f"node {self.url} has no item {name!r}; it has {self.item_names()}")

    def open_image(self, name: str, *, image: str | None = None) -> list[Any]:
        """The lazy (dask) pyramid of image or labels ``name``, full resolution first.

        ``image`` names the image that labels ``name`` were saved under, if any; standalone
        labels are opened by their name alone (in either layout cachetree has written).
        """
        from ..images.ngff import LABELS_GROUP, open_image

        if image is not None:
            found = self._find(image, (".ome.zarr", ""))
            return open_image(found.join(LABELS_GROUP, name))
        return open_image(self._find(name, (".ome.zarr", "")))

    def open_array(self, name: str) -> Any:
        """A plain Zarr array item as a lazy dask array."""
        import dask.array as da
        import zarr

        loc = self._find(name, (".zarr", ""))
        return da.from_zarr(zarr.open_array(loc.zarr_store(read_only=True), mode="r"))

    def load_text(self, name: str) -> str:
        """Text of a log or text item."""
        return self._find(name, ("", ".txt")).read_text()

    def load_json(self, name: str) -> Any:
        """Parsed JSON item."""
        return json.loads(self._find(name, (".json", "")).read_text())

    def load_bytes(self, name: str) -> bytes:
        """Raw bytes of a file item (e.g. a PNG plot)."""
        return self._find(name, ("", ".png", ".svg")).read_bytes(large=True)
