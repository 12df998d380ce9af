"""How one pyramid level is cut into files: chunks, shards and their encoding.

A level is stored in **shards**, the files (or objects) written in one go. On zarr format 3
(OME-NGFF 0.5) a shard holds a row of chunks, encoded one by one and followed by the zarr
``sharding_indexed`` index (offset and length of every chunk, then a CRC32C); on zarr
format 2 (OME-NGFF 0.4) there are no shards and every chunk is its own file, so a "shard"
here is one chunk. :class:`LevelLayout` encodes and decodes chunks and writes and reads the
shard index exactly as zarr-python does (:mod:`cachetree.images.shards` stores and reads
them); the zarr metadata itself is made by zarr-python (:meth:`LevelLayout.create`, see
:mod:`cachetree.images.documents`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import google_crc32c
import numpy as np
import zarr
from numcodecs import Blosc

from ..errors import InvalidDataError
from . import policy

__all__ = ["EMPTY", "LevelLayout"]

EMPTY = 2**64 - 1
"""Offset and length of a chunk absent from a shard (the zarr sharding spec's marker)."""


@dataclass(frozen=True)
class LevelLayout:
    """Shape, chunks, shards and codec of one level (picklable, no state).

    ``shards`` equals ``chunks`` on zarr format 2, where every chunk is a file.
    """

    path: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    shards: tuple[int, ...]
    dtype: np.dtype
    fill_value: Any
    codec: Blosc
    zarr_format: int
    dimension_names: tuple[str, ...]

    @classmethod
    def plan(
        cls,
        path: str,
        shape: tuple[int, ...],
        chunks: tuple[int, ...],
        *,
        dtype: np.dtype,
        fill_value: Any,
        zarr_format: int,
        dimension_names: tuple[str, ...],
        codec: Blosc | None = None,
    ) -> LevelLayout:
        """A level's layout from the image policy: chunks clamped to ``shape``, and shards
        one chunk high spanning up to :data:`cachetree.images.policy.SHARD_BYTES` of pixels
        across (zarr format 3 only)."""
        dtype = np.dtype(dtype)
        chunks = tuple(min(c, n) for c, n in zip(chunks, shape, strict=True))
        shards = chunks if zarr_format == 2 else policy.shard_shape(shape, chunks, dtype)
        return cls(
            path,
            tuple(shape),
            chunks,
            shards,
            dtype,
            fill_value,
            codec or policy.compressor(dtype),
            zarr_format,
            dimension_names,
        )

    # -- geometry -------------------------------------------------------------------------
    @property
    def sharded(self) -> bool:
        """Whether files are zarr v3 shards (with an index) rather than single chunks."""
        return self.zarr_format == 3

    @property
    def grid(self) -> tuple[int, ...]:
        """Number of chunks along each axis."""
        return tuple(-(-n // c) for n, c in zip(self.shape, self.chunks, strict=True))

    @property
    def shard_grid(self) -> tuple[int, ...]:
        """Number of shards (files) along each axis."""
        return tuple(-(-n // s) for n, s in zip(self.shape, self.shards, strict=True))

    @property
    def per_shard(self) -> tuple[int, ...]:
        """Chunks per shard along each axis."""
        return tuple(s // c for s, c in zip(self.shards, self.chunks, strict=True))

    def locate(self, chunk: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shard holding chunk index ``chunk``, and the chunk's index inside that shard."""
        per = self.per_shard
        return (
            tuple(int(i) // p for i, p in zip(chunk, per, strict=True)),
            tuple(int(i) % p for i, p in zip(chunk, per, strict=True)),
        )

    def chunks_in(self, shard: Sequence[int]) -> int:
        """How many chunks of ``shard`` lie inside the level (edge shards hold fewer)."""
        return math.prod(
            min(p, g - s * p) for s, p, g in zip(shard, self.per_shard, self.grid, strict=True)
        )

    def shard_region(self, shard: Sequence[int]) -> tuple[slice, ...]:
        """The part of the level that ``shard`` covers."""
        return tuple(
            slice(i * s, min((i + 1) * s, n))
            for i, s, n in zip(shard, self.shards, self.shape, strict=True)
        )

    def chunk_region(self, chunk: Sequence[int]) -> tuple[slice, ...]:
        """The part of the level that chunk ``chunk`` covers."""
        return tuple(
            slice(i * c, min((i + 1) * c, n))
            for i, c, n in zip(chunk, self.chunks, self.shape, strict=True)
        )

    def key(self, shard: Sequence[int]) -> str:
        """Store key of a shard (a chunk on zarr format 2), relative to the image group."""
        parts = [str(int(i)) for i in shard]
        return "/".join([self.path, *(["c"] if self.zarr_format == 3 else []), *parts])

    # -- encoding -------------------------------------------------------------------------
    def encode_chunk(self, block: np.ndarray) -> bytes:
        """The encoded bytes of one chunk; ``block`` is its valid region (padded here)."""
        block = np.asarray(block)
        if block.shape != self.chunks:
            full = np.full(self.chunks, self.fill_value, dtype=self.dtype)
            full[tuple(slice(0, n) for n in block.shape)] = block
            block = full
        data = np.ascontiguousarray(block, dtype=self.dtype.newbyteorder("<"))
        return bytes(self.codec.encode(data))

    def index_tail(self, slots: Mapping[tuple[int, ...], tuple[int, int] | None]) -> bytes:
        """The shard index that ends a shard: ``(offset, length)`` of each chunk inside the
        shard by its index there (missing or None: absent), then the index's CRC32C."""
        index = np.full((*self.per_shard, 2), EMPTY, dtype="<u8")
        for local, where in slots.items():
            if where is not None:
                index[local] = where
        raw = index.tobytes()
        return raw + np.array([google_crc32c.value(raw)], dtype="<u4").tobytes()

    @property
    def index_size(self) -> int:
        """Bytes of the index that ends a shard, its CRC32C included."""
        return math.prod(self.per_shard) * 16 + 4

    def chunk_slot(self, tail: bytes, local: Sequence[int]) -> tuple[int, int] | None:
        """``(offset, length)`` in its shard of the chunk at ``local``, from the shard's
        last :attr:`index_size` bytes (or more); None when the chunk is absent."""
        index = np.frombuffer(tail[-self.index_size : -4], dtype="<u8")
        offset, length = (int(v) for v in index.reshape(*self.per_shard, 2)[tuple(local)])
        return None if offset == EMPTY else (offset, length)

    def unpack(self, data: bytes) -> dict[tuple[int, ...], bytes | None]:
        """The encoded chunks of a stored shard (None for absent ones)."""
        if not self.sharded:
            return {(0,) * len(self.shape): data}
        out: dict[tuple[int, ...], bytes | None] = {}
        for local in np.ndindex(*self.per_shard):
            slot = self.chunk_slot(data, local)
            out[local] = None if slot is None else data[slot[0] : slot[0] + slot[1]]
        return out

    def decode_chunk(self, data: bytes) -> np.ndarray:
        """A whole chunk (shape ``chunks``, edge chunks padded) from its encoded bytes."""
        out = np.empty(self.chunks, self.dtype.newbyteorder("<"))
        self.codec.decode(data, out=out)
        return out

    # -- zarr metadata --------------------------------------------------------------------
    def create(self, group: zarr.Group) -> None:
        """Write this level's zarr array metadata into ``group`` (replacing what was there)."""
        common: dict[str, Any] = {
            "shape": self.shape,
            "chunks": self.chunks,
            "dtype": self.dtype,
            "fill_value": self.fill_value,
            "overwrite": True,
        }
        if self.zarr_format == 2:
            group.create_array(
                self.path,
                compressors=self.codec,
                chunk_key_encoding={"name": "v2", "separator": "/"},
                **common,
            )
            return
        config = self.codec.get_config()
        shuffle = {Blosc.SHUFFLE: "shuffle", Blosc.BITSHUFFLE: "bitshuffle"}.get(
            config["shuffle"], "noshuffle"
        )
        blosc = zarr.codecs.BloscCodec(
            cname=config["cname"],
            clevel=config["clevel"],
            shuffle=shuffle,
            typesize=self.dtype.itemsize,
            blocksize=config.get("blocksize", 0),
        )
        group.create_array(
            self.path,
            shards=self.shards,
            compressors=blosc,
            dimension_names=self.dimension_names,
            **common,
        )

    @classmethod
    def from_array(cls, path: str, array: zarr.Array) -> LevelLayout:
        """The layout of an existing level written by cachetree (zarr format 2 or 3).

        Raises
        ------
        InvalidDataError
            The array uses a layout this writer does not produce.
        """
        meta = array.metadata
        dims = tuple(getattr(meta, "dimension_names", None) or ())
        if meta.zarr_format == 2:
            codec = meta.compressor
            if meta.dimension_separator != "/" or meta.filters or not isinstance(codec, Blosc):
                raise InvalidDataError(f"level {path} uses an unsupported zarr v2 chunk layout")
            shards = tuple(array.chunks)
        else:
            codecs = meta.codecs
            sharding = codecs[0] if len(codecs) == 1 else None
            inner = getattr(sharding, "codecs", ())
            blosc = inner[-1] if inner else None
            if not isinstance(blosc, zarr.codecs.BloscCodec) or len(inner) != 2:
                raise InvalidDataError(f"level {path} is not a Blosc-compressed sharded array")
            shuffle = {"shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}.get(
                getattr(blosc.shuffle, "value", blosc.shuffle), Blosc.NOSHUFFLE
            )
            codec = Blosc(
                cname=getattr(blosc.cname, "value", blosc.cname),
                clevel=blosc.clevel,
                shuffle=shuffle,
                blocksize=blosc.blocksize,
            )
            shards = tuple(array.shards or array.chunks)
        fill = meta.fill_value
        fill_value = fill.item() if isinstance(fill, np.generic) else fill
        return cls(
            path,
            tuple(array.shape),
            tuple(array.chunks),
            shards,
            np.dtype(array.dtype),
            fill_value,
            codec,
            meta.zarr_format,
            dims,
        )
