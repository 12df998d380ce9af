"""How arrays, mappings and sequences of arrays become files: ``.npy``, ``.npz``, Zarr, ``.pt``.

An :class:`OutputFormat` validates what is to be saved, plans the files it becomes
(:meth:`OutputFormat.plan`) and writes one of them atomically (:meth:`OutputFormat.write`).
:class:`~cachetree.fs.writer.AsyncWriter` runs these writes on its pool.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import sys
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, BinaryIO

import numpy as np

from ..errors import InvalidDataError
from .location import (
    Location,
    atomic_write_local,
    fsync_path,
    storage_errors,
    temp_name,
    validate_name,
)

__all__ = ["Container", "DictMode", "Leaf", "OutputFile", "OutputFormat", "SaveFormat"]


class SaveFormat(StrEnum):
    """File format of the written outputs; the value is the file extension."""

    NUMPY_NPY = "npy"
    """One ``.npy`` file per array (mappings need ``DictMode.SPLIT``)."""
    NUMPY_NPZ = "npz"
    """An uncompressed ``.npz`` archive; a mapping's keys become the archive's names."""
    ZARR = "zarr"
    """A Zarr v3 array directory, or a group holding one array per key for mappings."""
    PYTORCH_PT = "pt"
    """A ``torch.save`` file (needs PyTorch)."""


class DictMode(StrEnum):
    """How mappings and sequences of arrays are laid out."""

    SINGLE = "single"
    """One output holding every key (``name.npz``, ``name.zarr`` group, ``name.pt`` dict)."""
    SPLIT = "split"
    """One output per key, named ``{name}_{key}.{ext}`` (sequences: ``{name}_{index}``)."""


Leaf = Any
"""A numpy array, or a CPU torch tensor when the format is ``SaveFormat.PYTORCH_PT``."""


@dataclass(frozen=True, slots=True)
class Container:
    """Several named arrays destined for one file (npz / zarr group / pt)."""

    items: tuple[tuple[str, Leaf], ...]
    is_sequence: bool


@dataclass(frozen=True, slots=True)
class OutputFile:
    """One planned output: where it goes, what it holds and how many bytes that is."""

    target: Location
    payload: Leaf | Container
    nbytes: int


def _loaded_torch() -> Any:
    """The torch module if something already imported it (a tensor cannot exist otherwise)."""
    return sys.modules.get("torch")


def _is_tensor(obj: Any) -> bool:
    torch = _loaded_torch()
    return torch is not None and isinstance(obj, torch.Tensor)


def _is_arraylike(obj: Any) -> bool:
    return isinstance(obj, np.ndarray) or _is_tensor(obj) or hasattr(type(obj), "__array__")


def _leaf_nbytes(leaf: Leaf) -> int:
    if isinstance(leaf, np.ndarray):
        return int(leaf.nbytes)
    return int(leaf.nelement() * leaf.element_size())  # torch tensor


def _describe(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}".removeprefix("builtins.")


def _parse_enum(enum_cls: type[StrEnum], value: Any, what: str) -> Any:
    if isinstance(value, enum_cls):
        return value
    if isinstance(value, str):
        text = value.strip().lower().lstrip(".")
        for member in enum_cls:
            if text in (member.value, member.name.lower()):
                return member
    choices = ", ".join(repr(m.value) for m in enum_cls)
    raise InvalidDataError(f"unknown {what} {value!r}: choose one of {choices}")


def _write_npz(fh: BinaryIO, items: Sequence[tuple[str, np.ndarray]]) -> None:
    """Write an uncompressed ``.npz`` archive into an open binary file, without pickle.

    This is what ``np.savez`` does internally, but it accepts every key (``np.savez`` cannot
    take a key named ``file`` or ``allow_pickle``) and never pickles.
    """
    with zipfile.ZipFile(fh, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, arr in items:
            with zf.open(f"{key}.npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)


def _fsync_tree(top: str) -> None:
    """fsync every file and directory below ``top``, so that renaming ``top`` is durable."""
    for dirpath, _dirnames, filenames in os.walk(top, topdown=False):
        for filename in filenames:
            fd = os.open(os.path.join(dirpath, filename), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_path(dirpath)


class OutputFormat:
    """One file format and layout: plans the files a value becomes and writes each atomically.

    Parameters
    ----------
    save_format
        A :class:`SaveFormat` or its value (``"npy"``, ``"npz"``, ``"zarr"``, ``"pt"``).
        ``"pt"`` needs PyTorch installed.
    dict_mode
        A :class:`DictMode` or its value: how mappings and sequences are laid out.
    """

    def __init__(self, save_format: SaveFormat | str, dict_mode: DictMode | str):
        self.save_format: SaveFormat = _parse_enum(SaveFormat, save_format, "save_format")
        self.dict_mode: DictMode = _parse_enum(DictMode, dict_mode, "dict_mode")
        self._torch: Any = None
        if self.save_format is SaveFormat.PYTORCH_PT:
            try:
                import torch
            except ImportError as exc:
                raise InvalidDataError(
                    "save_format='pt' needs PyTorch, which is not installed: install torch, "
                    "or choose save_format='npy', 'npz' or 'zarr'"
                ) from exc
            self._torch = torch

    # -- planning (caller's thread) ---------------------------------------------------------
    def plan(self, base: Location, to_save: Any) -> list[OutputFile]:
        """The files ``to_save`` becomes at ``base`` (plus the extension); validates it.

        Raises
        ------
        InvalidDataError, InvalidNameError
            See :meth:`AsyncWriter.write <cachetree.fs.writer.AsyncWriter.write>`.
        """
        ext = "." + self.save_format.value

        def at(suffix: str) -> Location:
            return Location(base.fs, base.path + suffix)

        if _is_arraylike(to_save):
            leaf = self._as_leaf(to_save, "to_save")
            return [OutputFile(at(ext), leaf, _leaf_nbytes(leaf))]

        if isinstance(to_save, Mapping):
            if not to_save:
                raise InvalidDataError("to_save is an empty mapping: there is nothing to write")
            items = []
            for key, value in to_save.items():
                if not isinstance(key, str):
                    raise InvalidDataError(
                        f"mapping keys must be str, got {_describe(key)} {key!r}; "
                        "convert the keys with str() first"
                    )
                validate_name(key, what="mapping key")
                items.append((key, self._as_leaf(value, f"to_save[{key!r}]")))
            is_sequence = False
        elif isinstance(to_save, Sequence) and not isinstance(to_save, str | bytes | bytearray):
            if not to_save:
                raise InvalidDataError("to_save is an empty sequence: there is nothing to write")
            items = [
                (str(i), self._as_leaf(value, f"to_save[{i}]")) for i, value in enumerate(to_save)
            ]
            is_sequence = True
        else:
            raise InvalidDataError(
                f"cannot write a {_describe(to_save)}: give an array (numpy, torch or anything "
                "with __array__), a mapping of str to arrays, or a list/tuple of arrays"
            )

        if self.dict_mode is DictMode.SPLIT:
            return [OutputFile(at(f"_{key}{ext}"), leaf, _leaf_nbytes(leaf)) for key, leaf in items]
        if self.save_format is SaveFormat.NUMPY_NPY:
            kind = "sequence" if is_sequence else "mapping"
            raise InvalidDataError(
                f"a {kind} of arrays cannot be stored in one .npy file: use "
                "dict_mode='split' (one .npy per key) or save_format='npz' or 'zarr'"
            )
        if is_sequence and self.save_format is SaveFormat.NUMPY_NPZ:
            items = [(f"arr_{key}", leaf) for key, leaf in items]
        container = Container(tuple(items), is_sequence)
        return [OutputFile(at(ext), container, sum(_leaf_nbytes(leaf) for _, leaf in items))]

    def _as_leaf(self, obj: Any, where: str) -> Leaf:
        """Turn one array-like into what the format serialises; validate it."""
        torch = self._torch
        if _is_tensor(obj):
            tensor = obj.detach()
            if tensor.device.type != "cpu":
                tensor = tensor.cpu()
            if torch is not None:  # pt format: keep the tensor (bfloat16 etc. survive)
                if tensor.layout == torch.strided and (
                    tensor.untyped_storage().nbytes() > tensor.nelement() * tensor.element_size()
                ):
                    tensor = tensor.clone()  # a view: torch.save would store the whole base
                return tensor
            try:
                arr = tensor.resolve_conj().resolve_neg().numpy()
            except (TypeError, RuntimeError) as exc:
                raise InvalidDataError(
                    f"{where}: torch tensor of dtype {tensor.dtype} has no numpy equivalent "
                    f"({exc}); cast it (e.g. .float()) or use save_format='pt'"
                ) from exc
        elif isinstance(obj, np.ndarray):
            arr = obj
        elif _is_arraylike(obj):
            arr = np.asarray(obj)
        else:
            scalar = isinstance(obj, int | float | complex)
            hint = " (wrap a scalar with np.asarray)" if scalar else ""
            raise InvalidDataError(
                f"{where} is a {_describe(obj)}, not an array: expected a numpy array, a "
                f"torch tensor or anything with __array__{hint}"
            )
        if arr.dtype.hasobject:
            raise InvalidDataError(
                f"{where} has dtype {arr.dtype}, which holds Python objects and cannot be "
                "saved without pickle: convert it to a numeric, bool or fixed-width string dtype"
            )
        if torch is not None:
            if not arr.dtype.isnative:
                arr = arr.astype(arr.dtype.newbyteorder("="))
            if not arr.flags.writeable:
                arr = arr.copy()  # torch.from_numpy warns on read-only buffers
            try:
                return torch.from_numpy(arr)
            except TypeError as exc:
                raise InvalidDataError(
                    f"{where}: dtype {arr.dtype} cannot become a torch tensor ({exc}); "
                    "choose save_format='npy', 'npz' or 'zarr'"
                ) from exc
        return arr

    # -- writing (any thread) ---------------------------------------------------------------
    def write(self, target: Location, payload: Leaf | Container) -> None:
        """Write one output file (or zarr directory) atomically at ``target``.

        On local disk through a temporary name that is renamed into place; on object stores
        npy/npz/pt files are serialised in memory and sent with one put.
        """
        if self.save_format is SaveFormat.ZARR:
            self._write_zarr(target, payload)
            return

        def serialise(fh: BinaryIO) -> None:
            self._serialise(fh, payload)

        if target.is_local:
            with storage_errors(target):
                atomic_write_local(target.path, serialise)
        else:
            buffer = io.BytesIO()
            serialise(buffer)
            target.write_bytes(buffer.getvalue())

    def _serialise(self, fh: BinaryIO, payload: Leaf | Container) -> None:
        fmt = self.save_format
        if fmt is SaveFormat.NUMPY_NPY:
            np.save(fh, payload, allow_pickle=False)  # header + buffer, no extra copy
        elif fmt is SaveFormat.NUMPY_NPZ:
            items = payload.items if isinstance(payload, Container) else (("arr_0", payload),)
            _write_npz(fh, items)
        elif fmt is SaveFormat.PYTORCH_PT:
            obj: Any = payload
            if isinstance(payload, Container):
                leaves = payload.items
                obj = [v for _, v in leaves] if payload.is_sequence else dict(leaves)
            self._torch.save(obj, fh)
        else:  # pragma: no cover - zarr never reaches here
            raise AssertionError(fmt)

    @staticmethod
    def _fill_zarr(store: Any, payload: Leaf | Container) -> None:
        import zarr

        if isinstance(payload, Container):
            group = zarr.create_group(store, overwrite=True)
            for key, arr in payload.items:
                group.create_array(key, data=arr)
        else:
            zarr.create_array(store, data=payload, overwrite=True)

    def _write_zarr(self, target: Location, payload: Leaf | Container) -> None:
        if not target.is_local:
            # Object stores have no directory rename: write in place (chunks, then metadata
            # objects are each a single put, but the store as a whole is not atomic).
            with storage_errors(target):
                self._fill_zarr(target.zarr_store(), payload)
            return
        from zarr.storage import LocalStore

        final = target.path
        parent = os.path.dirname(final)
        with storage_errors(target):
            os.makedirs(parent, exist_ok=True)
            if os.path.lexists(final) and not os.path.isdir(final):
                raise FileExistsError(
                    errno.EEXIST,
                    "exists and is not a directory, cannot replace it by a zarr",
                    final,
                )
            tmp = temp_name(final)
            old: str | None = None
            try:
                self._fill_zarr(LocalStore(tmp), payload)
                _fsync_tree(tmp)
                try:
                    os.rename(tmp, final)  # works when final is missing (or an empty dir)
                except OSError as exc:
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                    # Replace an existing store: move it aside, move the new one in, drop the
                    # old one. Readers may briefly find nothing, never a partial store.
                    old = temp_name(final)
                    os.rename(final, old)
                    os.rename(tmp, final)
            except BaseException:
                if old is not None and not os.path.lexists(final):
                    with contextlib.suppress(OSError):
                        os.rename(old, final)
                    old = None
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            fsync_path(parent)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
