"""Merge overlapping patch predictions of several model heads with bounded memory.

A :class:`Canvas` covers an output image of a given shape. :meth:`Canvas.add` takes a
batch of patches per head, ``(N, h, w, C)``, and their boxes ``[x0, y0, x1, y1]`` in canvas
pixels; overlapping patches are averaged as ``sum(weight * value) / sum(weight)`` with
uniform, Gaussian or user-given blending weights. :meth:`Canvas.finalize` writes each head's
average as an OME-Zarr image with a pyramid into the cache node.

Memory stays within a budget. The canvas is split into square tiles (also the chunks of
the output images); a tile gets accumulators (one weighted sum per head and one weight
plane shared by all heads) when a patch first touches it. With ``order="row-major"`` a
tile row is normalised and written as soon as no later patch can reach it. When the
accumulators would exceed the budget, the least recently touched tiles are written to disk
as immutable *spill parts* and dropped; a tile touched again starts from zero, and every
contribution is summed when the tile is finalised. :meth:`Canvas.checkpoint` makes the state
on disk complete, so a killed run can resume (``resume=True``) and only the batches after
the checkpoint need to be sent again. :func:`cachetree.canvas_view.open_canvas` shows the
state on disk, normalised on the fly, from any process.

On-disk layout inside the node (``.cachetree-parts`` survives a re-open of an uncommitted
node with unchanged parameters)::

    .cachetree-parts/canvas-staging/           part (kind "canvas-staging"): the spec
        progress.json                          tile rows whose level 0 is complete
        <head>.ome.zarr/0/...                  level 0 of each head, row by row
    .cachetree-parts/canvas-spill-00000007/    part (kind "canvas-spill"): some tiles
        <ty>_<tx>/weight.npy                   weight sum of the tile's touched box
        <ty>_<tx>/<head>/sum.npy               weighted value sum, (h, w, C)
    .cachetree-parts/canvas-checkpoint-00000009/   part (kind "canvas-checkpoint")
        stats/<head>.npy                       running (min, max) per channel
    <head>.ome.zarr, canvas.json               after finalize()

Several processes can merge one canvas (see :mod:`cachetree.distributed`): each runs a
*worker* canvas (``role="worker"``) that writes only spill parts, named with its own prefix,
and never touches the node's lock, staging area or images; one canvas then *adopts* the
spill parts that finished tasks list (``adopt=[...]``) and finalises them::

    .cachetree-parts/canvas-plan/                  part (kind "canvas-plan"): spec, task ids
    .cachetree-parts/task-<id>-<attempt>-00000002/ part (kind "canvas-spill") of one attempt
    .cachetree-parts/canvas-task-<id>/             part (kind "canvas-task"): the spill parts
                                                   of the task's successful attempt
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import math
import os
import re
import shutil
import threading
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import psutil
from tqdm import tqdm

from .errors import (
    BoxOutOfBoundsError,
    DTypeMismatchError,
    FinalizedError,
    IncompatibleError,
    InvalidDataError,
    KeyLookupError,
    NonFiniteValueError,
    ShapeMismatchError,
)
from .fs.location import Location, fsync_path, storage_errors, validate_name
from .fs.writer import AsyncWriter, SaveFormat
from .images.ngff import ImageInfo, read_image
from .images.pyramid import ImageWriter, PyramidAssembler, finite_range
from .tree.layout import CANVAS_JSON
from .tree.node import Node
from .tree.parts import PART_MARKER, PartInfo, list_parts, parts_location, remove_part, write_part

__all__ = [
    "CANVAS_JSON",
    "CHECKPOINT_KIND",
    "PLAN_KIND",
    "SPILL_KIND",
    "STAGING_KIND",
    "TASK_KIND",
    "Canvas",
    "HeadSpec",
    "normalise_block",
    "parse_memory_budget",
    "weight_window",
]

log = logging.getLogger("cachetree")

Order = Literal["row-major", "any"]
NanPolicy = Literal["raise", "ignore"]
Role = Literal["canvas", "worker"]

SPILL_KIND = "canvas-spill"
"""Part kind of spilled accumulators."""
CHECKPOINT_KIND = "canvas-checkpoint"
"""Part kind of a checkpoint (the state a resumed run starts from)."""
STAGING_KIND = "canvas-staging"
"""Part kind of the staging area: canvas spec and the level 0 written so far."""
STAGING = "canvas-staging"
"""Name of the staging part."""
TASK_KIND = "canvas-task"
"""Part kind of a task marker: the spill parts one task's successful attempt wrote."""
PLAN_KIND = "canvas-plan"
"""Part kind of the plan of a canvas merged by several processes: its spec and task ids."""
"""Item written by :meth:`Canvas.finalize`: the spec and which images are canvas heads."""
PROGRESS = "progress.json"
SPEC_VERSION = 1
_MiB = 1024**2


# -- heads, weights, budget -----------------------------------------------------------------
@dataclass(frozen=True)
class HeadSpec:
    """One model head: its channel count and the dtype of its merged output.

    ``dtype`` accepts anything :class:`numpy.dtype` does and is stored as a numpy dtype.
    Accumulation is in float32 (float64 for float64 heads); integer outputs are rounded
    and clipped to their range.
    """

    channels: int
    dtype: Any = "float32"

    def __post_init__(self) -> None:
        if isinstance(self.channels, bool) or not isinstance(self.channels, int | np.integer):
            raise InvalidDataError(f"channels must be an integer, got {self.channels!r}")
        if self.channels < 1:
            raise ShapeMismatchError(f"a head needs at least one channel, got {self.channels}")
        try:
            dtype = np.dtype(self.dtype)
        except TypeError as exc:
            raise DTypeMismatchError(f"{self.dtype!r} is not a numpy dtype") from exc
        if dtype.kind not in "iuf":
            raise DTypeMismatchError(
                f"head dtype {dtype} is not supported: use an integer or float dtype"
            )
        object.__setattr__(self, "channels", int(self.channels))
        object.__setattr__(self, "dtype", dtype)

    @property
    def acc_dtype(self) -> np.dtype:
        """Dtype of the weighted-sum accumulator."""
        return np.dtype(np.float64 if self.dtype == np.float64 else np.float32)


def _head_spec(name: str, value: Any) -> HeadSpec:
    if isinstance(value, HeadSpec):
        return value
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return HeadSpec(int(value))
    if isinstance(value, tuple | list) and len(value) == 2:
        return HeadSpec(value[0], value[1])
    raise InvalidDataError(
        f"head {name!r}: give a HeadSpec, a channel count or (channels, dtype), got {value!r}"
    )


def weight_window(weights: str | np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Blending weights of an ``(h, w)`` patch, as float32.

    ``"uniform"`` is all ones. ``"gaussian"`` is a separable Gaussian centred on the patch
    with sigma = 1/8 of the patch size along each axis, scaled to a maximum of 1. An array
    is checked (2-D, matching shape, finite, non-negative) and returned as float32.
    """
    h, w = int(shape[0]), int(shape[1])
    if isinstance(weights, str):
        if weights == "uniform":
            return np.ones((h, w), np.float32)
        if weights == "gaussian":

            def axis(n: int) -> np.ndarray:
                sigma = n / 8.0
                x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
                return np.exp(-0.5 * (x / sigma) ** 2)

            window = np.outer(axis(h), axis(w))
            return (window / window.max()).astype(np.float32)
        raise InvalidDataError(
            f"unknown weights {weights!r}: use 'uniform', 'gaussian' or an (h, w) array"
        )
    array = np.asarray(weights)
    if array.ndim != 2 or array.shape != (h, w):
        raise ShapeMismatchError(
            f"weights array has shape {array.shape} but the patches are {h}x{w}: "
            "give one weight per patch pixel"
        )
    if array.dtype.kind not in "iuf" or not np.isfinite(array).all() or (array < 0).any():
        raise InvalidDataError("weights must be finite, non-negative numbers")
    return array.astype(np.float32)


def parse_memory_budget(budget: int | str | None) -> int:
    """Bytes of a budget given as bytes, ``"512MiB"``, ``"2GB"`` or ``"25%"`` of RAM.

    ``None`` means min(1 GiB, 10 % of RAM).
    """
    total = psutil.virtual_memory().total
    if budget is None:
        return int(min(1024**3, total // 10))
    if isinstance(budget, bool):
        raise InvalidDataError(f"memory_budget must be bytes or a string, got {budget!r}")
    if isinstance(budget, int | np.integer):
        if budget <= 0:
            raise InvalidDataError(f"memory_budget must be positive, got {budget}")
        return int(budget)
    if isinstance(budget, str):
        match = re.fullmatch(
            r"\s*(\d+(?:\.\d*)?)\s*(%|b|kb|kib|mb|mib|gb|gib|tb|tib|k|m|g|t)?\s*",
            budget.lower(),
        )
        if match:
            value = float(match.group(1))
            unit = match.group(2) or "b"
            if unit == "%":
                if not 0 < value <= 100:
                    raise InvalidDataError(f"memory_budget {budget!r}: a percentage is 0-100")
                return int(total * value / 100)
            scale = {
                "b": 1,
                "kb": 1e3,
                "mb": 1e6,
                "gb": 1e9,
                "tb": 1e12,
                "k": 1024,
                "kib": 1024,
                "m": 1024**2,
                "mib": 1024**2,
                "g": 1024**3,
                "gib": 1024**3,
                "t": 1024**4,
                "tib": 1024**4,
            }[unit]
            if value > 0:
                return int(value * scale)
    raise InvalidDataError(
        f"memory_budget {budget!r} is not understood: give bytes (int), a size such as "
        "'512MiB' or '2GB', or a share of RAM such as '25%'"
    )


# -- tiles ----------------------------------------------------------------------------------
class _Buffers:
    """Accumulators of one tile: a weight plane and one weighted sum per head (full size)."""

    __slots__ = ("dirty", "sums", "weight")

    def __init__(self, tile: int, heads: Mapping[str, HeadSpec]):
        self.weight = np.zeros((tile, tile), np.float32)
        self.sums = {
            name: np.zeros((tile, tile, spec.channels), spec.acc_dtype)
            for name, spec in heads.items()
        }
        self.dirty: list[int] | None = None  # [r0, r1, c0, c1] that may be non-zero

    def clear(self) -> None:
        if self.dirty is None:
            return
        r0, r1, c0, c1 = self.dirty
        self.weight[r0:r1, c0:c1] = 0
        for acc in self.sums.values():
            acc[r0:r1, c0:c1] = 0
        self.dirty = None

    def mark(self, r0: int, r1: int, c0: int, c1: int) -> None:
        d = self.dirty
        if d is None:
            self.dirty = [r0, r1, c0, c1]
        else:
            d[0], d[1], d[2], d[3] = min(d[0], r0), max(d[1], r1), min(d[2], c0), max(d[3], c1)


@dataclass(frozen=True)
class _SpillRef:
    """One spilled contribution to a tile: the part and the box (canvas pixels) it covers."""

    part: str
    y0: int
    x0: int
    y1: int
    x1: int


@dataclass
class _Batch:
    """A validated batch, ready to be accumulated."""

    values: dict[str, np.ndarray]  # head -> (N, h, w, C)
    boxes: np.ndarray  # (N, 4) int64, as given
    clipped: np.ndarray  # (N, 4) int64, clipped to the canvas
    weights: np.ndarray | None  # (N, h, w) pre-summed weights (add_weighted), else None
    bad: np.ndarray | None  # (N, h, w) non-finite pixels to ignore, or None


# -- the canvas -----------------------------------------------------------------------------
class Canvas:
    """Accumulate overlapping multi-head patch predictions into full-size images.

    Parameters
    ----------
    node
        Cache node open for writing (``node.writing``); results and spill data go there.
        A worker canvas (``role="worker"``) also takes the node's location or URL.
    shape
        Canvas ``(height, width)`` in pixels.
    heads
        Head name to :class:`HeadSpec`, to ``(channels, dtype)`` or to a channel count
        (float32). Names become item names (``<head>.ome.zarr``).
    weights
        Blending weights: ``"uniform"``, ``"gaussian"`` or an ``(h, w)`` array.
    memory_budget
        Bytes of accumulators held in RAM: an int, ``"512MiB"``, ``"25%"`` (of RAM); None
        means min(1 GiB, 10 % of RAM). Each patch's own tiles are always held, so a budget
        smaller than that is exceeded by that much.
    order
        ``"row-major"`` promises that no patch starts (clipped y0) above the smallest y0 of
        an earlier batch; rows above that are then final and written at once. ``"any"``
        accepts any order.
    tile
        Edge of the accumulator tiles and of the output chunks, in pixels.
    nan_policy
        ``"raise"``: NaN or infinite values raise
        :class:`~cachetree.errors.NonFiniteValueError`.
        ``"ignore"``: a pixel with a non-finite value in any channel of any head gets zero
        weight for every head.
    fill_value
        Output where no patch contributed (must fit every head's dtype).
    checkpoint_every
        Call :meth:`checkpoint` after every this many batches (None: only when asked).
    resume
        Continue from the newest checkpoint in the node, if any (see :attr:`batches_done`);
        otherwise start from scratch. Without it, leftovers of earlier runs are removed.
    channel_names
        Optional head name to channel names, stored in the OME-Zarr metadata.
    min_size
        The pyramid stops once the larger of height and width is at most this.
    workers
        Threads encoding and writing output chunks.
    progress
        Show progress bars in :meth:`finalize`.
    role
        ``"canvas"`` (default) merges and finalises. ``"worker"`` is one of several
        processes merging the same canvas (see :mod:`cachetree.distributed`): ``node`` may
        then be a node, a location or a URL and need not be open for writing (the process
        that opened it holds its lock); the canvas only writes spill parts named
        ``<part_prefix>-<seq>`` and :meth:`flush_parts` ends it. With
        ``order="row-major"`` it spills rows no later patch can reach at once.
    part_prefix
        Name prefix of a worker canvas' spill parts, unique per worker attempt.
    adopt
        Spill parts written by worker canvases of the same spec (names, or
        :class:`~cachetree.tree.parts.PartInfo` as listed, which saves listing them again), in
        the order their contributions are summed: :meth:`finalize` merges them in. They
        are removed only after the node is committed.

    Raises
    ------
    FinalizedError
        The node is not open for writing (role ``"canvas"``).
    InvalidDataError, ShapeMismatchError, DTypeMismatchError
        Malformed arguments.
    IncompatibleError
        ``resume=True`` but the checkpoint was made with another spec, or a part to adopt
        was written with another spec.
    KeyLookupError
        A part to adopt is not in the node.
    """

    def __init__(
        self,
        node: Node | Location | str,
        shape: tuple[int, int],
        heads: Mapping[str, HeadSpec | tuple[int, Any] | int],
        *,
        weights: str | np.ndarray = "uniform",
        memory_budget: int | str | None = None,
        order: Order = "any",
        tile: int = 512,
        nan_policy: NanPolicy = "raise",
        fill_value: float = 0.0,
        checkpoint_every: int | None = None,
        resume: bool = False,
        channel_names: Mapping[str, Sequence[str]] | None = None,
        min_size: int = 256,
        workers: int = 2,
        progress: bool = False,
        role: Role = "canvas",
        part_prefix: str | None = None,
        adopt: Sequence[str | PartInfo] | None = None,
    ):
        if role not in ("canvas", "worker"):
            raise InvalidDataError(f"role must be 'canvas' or 'worker', not {role!r}")
        self.role: Role = role
        loc: Location
        if role == "worker":
            if resume or adopt is not None or checkpoint_every is not None:
                raise InvalidDataError(
                    "a worker canvas only writes spill parts: resume, adopt and "
                    "checkpoint_every are for role='canvas'"
                )
            if part_prefix is None:
                raise InvalidDataError(
                    "a worker canvas needs part_prefix, unique per worker attempt "
                    "(e.g. 'task-0007-3f9a2c1b')"
                )
            validate_name(part_prefix, what="part prefix")
            if isinstance(node, Node):
                loc = node.location
            elif isinstance(node, Location | str | os.PathLike):
                loc = Location.from_url(node)
            else:
                raise InvalidDataError(
                    f"node must be a Node, a Location or a URL, got {type(node).__name__}"
                )
            self.node: Node | None = None
        else:
            if part_prefix is not None:
                raise InvalidDataError("part_prefix is only for role='worker' canvases")
            if not isinstance(node, Node):
                raise InvalidDataError(f"node must be a cachetree Node, got {type(node).__name__}")
            if not node.writing:
                raise FinalizedError(
                    f"node {node.url} is not open for writing (committed, or never opened): "
                    "open it first, e.g. `with tree.node(path, params=...) as node:`, and only "
                    "build a canvas when the node is not committed yet"
                )
            if adopt is not None and resume:
                raise InvalidDataError("adopt and resume cannot be combined")
            loc = node.location
            self.node = node
        self._spill_prefix = part_prefix or SPILL_KIND
        self.shape = _check_shape(shape)
        if not isinstance(heads, Mapping) or not heads:
            raise InvalidDataError("heads must be a non-empty mapping of head name to spec")
        self.heads: dict[str, HeadSpec] = {}
        for name, value in heads.items():
            validate_name(name, what="head name")
            self.heads[name] = _head_spec(name, value)
        if isinstance(tile, bool) or not isinstance(tile, int | np.integer) or tile < 8 or tile % 2:
            raise InvalidDataError(f"tile must be an even integer >= 8, got {tile!r}")
        self.tile = int(tile)
        if order not in ("row-major", "any"):
            raise InvalidDataError(f"order must be 'row-major' or 'any', not {order!r}")
        self.order: Order = order
        if nan_policy not in ("raise", "ignore"):
            raise InvalidDataError(f"nan_policy must be 'raise' or 'ignore', not {nan_policy!r}")
        self.nan_policy: NanPolicy = nan_policy
        self.fill_value = _check_fill(fill_value, self.heads)
        if isinstance(weights, str):
            weight_window(weights, (1, 1))  # validates the name
            self._weights: str | np.ndarray = weights
        else:
            array = np.asarray(weights)
            if array.ndim != 2:
                raise ShapeMismatchError(
                    f"a weights array must be 2-D (h, w), got shape {array.shape}"
                )
            self._weights = weight_window(array, array.shape)
        if checkpoint_every is not None and (
            isinstance(checkpoint_every, bool)
            or not isinstance(checkpoint_every, int)
            or checkpoint_every < 1
        ):
            raise InvalidDataError(
                f"checkpoint_every must be a positive integer or None, got {checkpoint_every!r}"
            )
        self.checkpoint_every = checkpoint_every
        self.memory_budget = parse_memory_budget(memory_budget)
        self.channel_names = {k: [str(n) for n in v] for k, v in (channel_names or {}).items()}
        for name, names in self.channel_names.items():
            if name not in self.heads:
                raise KeyLookupError(f"channel_names given for unknown head {name!r}")
            if len(names) != self.heads[name].channels:
                raise ShapeMismatchError(
                    f"head {name!r} has {self.heads[name].channels} channels but "
                    f"{len(names)} channel names were given"
                )
        if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
            raise InvalidDataError(f"min_size must be a positive integer, got {min_size!r}")
        self.min_size = min_size
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise InvalidDataError(f"workers must be a positive integer, got {workers!r}")
        self.progress = progress

        T = self.tile
        self.grid = (-(-self.shape[0] // T), -(-self.shape[1] // T))
        self._tile_bytes = T * T * 4 + sum(
            T * T * s.channels * s.acc_dtype.itemsize for s in self.heads.values()
        )
        self._loc = loc
        self._parts_root = parts_location(self._loc)
        self._staging = self._parts_root.raw_child(STAGING)
        self.spec = self._make_spec()

        self._tiles: OrderedDict[tuple[int, int], _Buffers] = OrderedDict()
        self._pool: list[_Buffers] = []
        self._n_buffers = 0
        self._peak_buffers = 0
        self._refs: dict[tuple[int, int], list[_SpillRef]] = {}
        self._parts: dict[str, PartInfo] = {}
        self._part_left: dict[str, int] = {}
        self._ckpt_parts: set[str] = set()
        self._garbage: list[str] = []
        self._ckpt_name: str | None = None
        self._next_seq = 0
        self._frontier = 0
        self._rows_final = 0
        self._rows_durable = 0
        self._row_futures: dict[int, list[concurrent.futures.Future[None]]] = {}
        self._batches_done = 0
        self._finalized = False
        self._closed = False
        self._windows: dict[tuple[int, int], np.ndarray | None] = {}
        self._scratch: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._written: list[str] = []
        self._counters = {"spill_events": 0, "spilled_tiles": 0, "spilled_bytes": 0}
        self._low = {n: np.full(s.channels, np.nan) for n, s in self.heads.items()}
        self._high = {n: np.full(s.channels, np.nan) for n, s in self.heads.items()}

        self._workers = workers
        self._pool_exec = concurrent.futures.ThreadPoolExecutor(
            workers, thread_name_prefix="cachetree-canvas"
        )
        self._inflight_writes = 2 * workers  # tiles being encoded/written at most
        self._slots = threading.BoundedSemaphore(self._inflight_writes)
        self._spill_writer = _SpillWriter(self._parts_root, save_format="npy", workers=workers)
        self._images: dict[str, ImageWriter] = {}
        self._assemblers: dict[str, PyramidAssembler] | None = None
        self._spill_exec = concurrent.futures.ThreadPoolExecutor(
            workers, thread_name_prefix="cachetree-spill"
        )
        # background spills in submission order: (future, part name, buffers to reuse)
        self._inflight: deque[tuple[Any, str, list[_Buffers]]] = deque()
        self._inflight_free = 0
        try:
            if role == "worker":
                pass  # nothing is written before the first spill
            elif adopt is not None:
                self._adopt(adopt)
                self._start_fresh(keep_spills=True)
            elif not (resume and self._resume()):
                self._start_fresh()
        except BaseException:
            self._shutdown()
            raise

    @classmethod
    def resume(
        cls,
        node: Node,
        shape: tuple[int, int],
        heads: Mapping[str, HeadSpec | tuple[int, Any] | int],
        **kwargs: Any,
    ) -> Canvas:
        """``Canvas(node, shape, heads, resume=True, **kwargs)``: continue a killed run.

        Send the batches from :attr:`batches_done` on; with no checkpoint in the node
        that is 0 and the canvas starts from scratch.
        """
        return cls(node, shape, heads, resume=True, **kwargs)

    # -- public state -------------------------------------------------------------------
    @property
    def batches_done(self) -> int:
        """Batches accumulated so far (after a resume: those covered by the checkpoint)."""
        return self._batches_done

    @property
    def finalized(self) -> bool:
        """Whether :meth:`finalize` completed."""
        return self._finalized

    @property
    def rows_written(self) -> int:
        """Canvas rows (pixels) already normalised and written to the output level 0."""
        return min(self._rows_final * self.tile, self.shape[0])

    @property
    def resident_bytes(self) -> int:
        """Bytes of accumulator buffers held (in use or kept for reuse)."""
        return self._n_buffers * self._tile_bytes

    @property
    def stats(self) -> dict[str, int]:
        """Counters: spill events, spilled tiles and bytes, resident and peak bytes, rows."""
        return {
            **self._counters,
            "spill_parts": len(self._parts),
            "resident_bytes": self.resident_bytes,
            "peak_resident_bytes": self._peak_buffers * self._tile_bytes,
            "tiles_in_memory": len(self._tiles),
            "rows_written": self.rows_written,
        }

    def __repr__(self) -> str:
        heads = ", ".join(f"{n}:{s.channels}x{s.dtype}" for n, s in self.heads.items())
        state = "finalized" if self._finalized else f"{self._batches_done} batches"
        return f"Canvas({self.shape[0]}x{self.shape[1]}, heads=[{heads}], {state})"

    # -- adding -------------------------------------------------------------------------
    def add(
        self,
        outputs: Mapping[str, Any] | Sequence[Any] | np.ndarray,
        boxes: Any,
    ) -> None:
        """Accumulate a batch of patches.

        Parameters
        ----------
        outputs
            Head name to ``(N, h, w, C)`` array (``(N, h, w)`` is accepted for one-channel
            heads); or a sequence of such arrays in head order; or one array when there is
            one head. Values must have the head's dtype kind (integers are accepted for
            float heads, floats are rejected for integer heads).
        boxes
            ``(N, 4)`` integer boxes ``[x0, y0, x1, y1]`` with ``x1 - x0 == w`` and
            ``y1 - y0 == h``; parts outside the canvas are clipped, but every box must
            overlap it.

        Raises
        ------
        ShapeMismatchError, DTypeMismatchError, KeyLookupError, BoxOutOfBoundsError,
        NonFiniteValueError, FinalizedError
            The batch is rejected as a whole and the canvas is unchanged.
        """
        batch = self._prepare(outputs, boxes, None)
        self._ingest(batch)

    def add_weighted(
        self,
        sums: Mapping[str, Any] | Sequence[Any] | np.ndarray,
        weights: Any,
        boxes: Any,
    ) -> None:
        """Accumulate pre-weighted sums: ``sums`` are added as they are, ``weights`` too.

        For merging blocks that already hold ``sum(weight * value)`` and ``sum(weight)``
        (e.g. rows merged elsewhere). ``weights`` is ``(N, h, w)``, finite and >= 0; the
        canvas' own blending weights are not applied.
        """
        batch = self._prepare(sums, boxes, weights)
        self._ingest(batch)

    def _ingest(self, batch: _Batch) -> None:
        with storage_errors(self._loc):
            if self.order == "row-major" and len(batch.clipped):
                frontier = int(batch.clipped[:, 1].min())
                if frontier > self._frontier:
                    self._frontier = frontier
                    if self.role == "worker":
                        self._spill_rows(frontier // self.tile)
                    else:
                        self._finalize_rows(min(frontier // self.tile, self.grid[0]))
            self._accumulate(batch)
            self._batches_done += 1
            self._collect()
            if self.checkpoint_every and self._batches_done % self.checkpoint_every == 0:
                self.checkpoint()

    # -- validation -----------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._finalized:
            raise FinalizedError(
                "the canvas is finalized and accepts no more data: make a new Canvas (on a "
                "node opened with new params) to merge again"
            )
        if self._closed:
            raise FinalizedError("the canvas was closed; resume it with Canvas(..., resume=True)")
        self._raise_task_error()

    def _prepare(self, outputs: Any, boxes: Any, weights: Any) -> _Batch:
        """Check a whole batch before anything is changed."""
        self._check_open()
        values = self._values_by_head(outputs)
        first = next(iter(values))
        n, h, w = values[first].shape[:3]
        for name, arr in values.items():
            spec = self.heads[name]
            if arr.ndim == 3 and spec.channels == 1:
                arr = arr[..., np.newaxis]
                values[name] = arr
            if arr.ndim != 4:
                raise ShapeMismatchError(
                    f"head {name!r}: expected patches of shape (N, h, w, C), got {arr.shape}"
                )
            if arr.shape[:3] != (n, h, w):
                raise ShapeMismatchError(
                    f"head {name!r} has {arr.shape[0]} patches of {arr.shape[1]}x{arr.shape[2]} "
                    f"but head {first!r} has {n} of {h}x{w}: every head needs the same "
                    "patches"
                )
            if arr.shape[3] != spec.channels:
                raise ShapeMismatchError(
                    f"head {name!r} has {spec.channels} channels but the patches have "
                    f"{arr.shape[3]} (shape {arr.shape})"
                )
            if arr.dtype.kind not in "biuf" or (spec.dtype.kind in "iu" and arr.dtype.kind == "f"):
                raise DTypeMismatchError(
                    f"head {name!r} holds {spec.dtype} but the patches are {arr.dtype}: "
                    f"convert them (e.g. .astype('{spec.dtype}')) or declare the head as float"
                )
        box = self._check_boxes(boxes, n, h, w)
        pre_weights = None
        if weights is not None:
            pre_weights = np.asarray(weights)
            if pre_weights.ndim == 4 and pre_weights.shape[3] == 1:
                pre_weights = pre_weights[..., 0]
            if pre_weights.shape != (n, h, w):
                raise ShapeMismatchError(
                    f"weights have shape {pre_weights.shape}; expected {(n, h, w)}, one "
                    "weight sum per patch pixel"
                )
            if pre_weights.dtype.kind not in "biuf":
                raise DTypeMismatchError(f"weights must be numeric, got {pre_weights.dtype}")
            if n and (not _all_finite(pre_weights) or pre_weights.min() < 0):
                raise NonFiniteValueError("weights must be finite and non-negative")
        elif not isinstance(self._weights, str) and (h, w) != self._weights.shape:
            raise ShapeMismatchError(
                f"patches are {h}x{w} but the weights array is "
                f"{self._weights.shape[0]}x{self._weights.shape[1]}"
            )
        bad = None
        if n:
            for name, arr in values.items():
                if arr.dtype.kind == "f" and not _all_finite(arr):
                    if self.nan_policy == "raise":
                        count = int(np.count_nonzero(~np.isfinite(arr)))
                        raise NonFiniteValueError(
                            f"head {name!r} has {count} NaN or infinite values: clean the "
                            "patches, or make the canvas with nan_policy='ignore' to give "
                            "such pixels zero weight"
                        )
                    mask = ~np.isfinite(arr).all(axis=3)
                    bad = mask if bad is None else bad | mask
        clipped = box.copy()
        np.clip(clipped[:, 0::2], 0, self.shape[1], out=clipped[:, 0::2])
        np.clip(clipped[:, 1::2], 0, self.shape[0], out=clipped[:, 1::2])
        if self.order == "row-major" and n:
            top = int(clipped[:, 1].min())
            if top < self._frontier:
                raise BoxOutOfBoundsError(
                    f"a patch starts at y={top}, above y={self._frontier} where an earlier "
                    "batch started; in order='row-major' rows above that are final and may "
                    "be written already. Send patches top to bottom, or make the canvas with "
                    "order='any'"
                )
        return _Batch(values, box, clipped, pre_weights, bad)

    def _values_by_head(self, outputs: Any) -> dict[str, np.ndarray]:
        names = list(self.heads)
        if isinstance(outputs, Mapping):
            unknown = [k for k in outputs if k not in self.heads]
            missing = [k for k in names if k not in outputs]
            if unknown or missing:
                raise KeyLookupError(
                    f"outputs name heads {sorted(map(str, outputs))} but the canvas has "
                    f"{names}"
                    + (f"; unknown: {unknown}" if unknown else "")
                    + (f"; missing: {missing}" if missing else "")
                )
            raw = {k: outputs[k] for k in names}
        elif isinstance(outputs, list | tuple):
            if len(outputs) != len(names):
                raise KeyLookupError(
                    f"got {len(outputs)} head outputs but the canvas has {len(names)} heads "
                    f"{names}: give one array per head, in that order, or a mapping"
                )
            raw = dict(zip(names, outputs, strict=True))
        elif len(names) == 1:
            raw = {names[0]: outputs}
        else:
            raise InvalidDataError(
                f"the canvas has heads {names}: give outputs as a mapping of head name to array"
            )
        values = {}
        for name, value in raw.items():
            if value is None or (not hasattr(value, "__array__") and not isinstance(value, list)):
                raise InvalidDataError(
                    f"head {name!r}: expected an array, got {type(value).__name__}"
                )
            values[name] = np.asarray(value)
        return values

    def _check_boxes(self, boxes: Any, n: int, h: int, w: int) -> np.ndarray:
        arr = np.asarray(boxes)
        if arr.size == 0 and n == 0:
            return np.zeros((0, 4), np.int64)
        if arr.ndim == 1 and arr.size == 4 and n == 1:
            arr = arr[np.newaxis]
        if arr.ndim != 2 or arr.shape[1] != 4 or (arr.size and arr.dtype.kind not in "iuf"):
            raise ShapeMismatchError(
                f"boxes must be an (N, 4) array of [x0, y0, x1, y1], got shape {arr.shape}"
            )
        if arr.shape[0] != n:
            raise ShapeMismatchError(
                f"{arr.shape[0]} boxes for {n} patches: give exactly one box per patch"
            )
        if arr.dtype.kind == "f" and (not np.isfinite(arr).all() or (arr != np.round(arr)).any()):
            raise BoxOutOfBoundsError("box coordinates must be whole numbers")
        box = arr.astype(np.int64)
        sizes = np.stack([box[:, 3] - box[:, 1], box[:, 2] - box[:, 0]], axis=1)
        wrong = np.flatnonzero((sizes != (h, w)).any(axis=1))
        if wrong.size:
            i = int(wrong[0])
            raise ShapeMismatchError(
                f"box {i} {box[i].tolist()} is {sizes[i, 0]}x{sizes[i, 1]} pixels (y, x) but "
                f"the patches are {h}x{w}: boxes are [x0, y0, x1, y1] with x1 - x0 = width"
            )
        H, W = self.shape
        outside = (box[:, 2] <= 0) | (box[:, 0] >= W) | (box[:, 3] <= 0) | (box[:, 1] >= H)
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            raise BoxOutOfBoundsError(
                f"box {i} {box[i].tolist()} lies outside the {H}x{W} canvas "
                f"({int(outside.sum())} of {n} boxes do): boxes are [x0, y0, x1, y1] in "
                "canvas pixels and must overlap the canvas"
            )
        return box

    # -- accumulation ---------------------------------------------------------------------
    def _window(self, h: int, w: int) -> np.ndarray | None:
        key = (h, w)
        if key not in self._windows:
            if isinstance(self._weights, str) and self._weights == "uniform":
                self._windows[key] = None
            else:
                self._windows[key] = weight_window(self._weights, key)
        return self._windows[key]

    def _scratch_for(self, name: str, h: int, w: int) -> np.ndarray:
        spec = self.heads[name]
        buf = self._scratch.get(name)
        if buf is None or buf.shape[0] < h or buf.shape[1] < w:
            buf = np.empty((h, w, spec.channels), spec.acc_dtype)
            self._scratch[name] = buf
        return buf[:h, :w]

    def _accumulate(self, batch: _Batch) -> None:
        n = len(batch.boxes)
        if not n:
            return
        T = self.tile
        first = next(iter(batch.values.values()))
        h, w = first.shape[1:3]
        window = None if batch.weights is not None else self._window(h, w)
        for i in range(n):
            bx0, by0 = int(batch.boxes[i, 0]), int(batch.boxes[i, 1])
            cx0, cy0, cx1, cy1 = (int(v) for v in batch.clipped[i])
            win = batch.weights[i] if batch.weights is not None else window
            bad = batch.bad[i] if batch.bad is not None else None
            if bad is not None and not bad.any():
                bad = None
            if bad is not None:
                win = np.where(bad, np.float32(0), 1 if win is None else win).astype(np.float32)
            contrib: dict[str, np.ndarray] = {}
            for name, arr in batch.values.items():
                patch = arr[i]
                if bad is not None:
                    patch = np.where(bad[..., np.newaxis], 0, patch)
                if win is None or batch.weights is not None:
                    contrib[name] = patch
                else:
                    out = self._scratch_for(name, h, w)
                    np.multiply(patch, win[..., np.newaxis], out=out, casting="unsafe")
                    contrib[name] = out
            ty0, ty1 = cy0 // T, (cy1 - 1) // T
            tx0, tx1 = cx0 // T, (cx1 - 1) // T
            protect = {(ty, tx) for ty in range(ty0, ty1 + 1) for tx in range(tx0, tx1 + 1)}
            for ty in range(ty0, ty1 + 1):
                ry0, ry1 = max(cy0, ty * T), min(cy1, (ty + 1) * T)
                py0, py1 = ry0 - by0, ry1 - by0
                ly0, ly1 = ry0 - ty * T, ry1 - ty * T
                for tx in range(tx0, tx1 + 1):
                    rx0, rx1 = max(cx0, tx * T), min(cx1, (tx + 1) * T)
                    px0, px1 = rx0 - bx0, rx1 - bx0
                    lx0, lx1 = rx0 - tx * T, rx1 - tx * T
                    buf = self._tile_for((ty, tx), protect)
                    if win is None:
                        buf.weight[ly0:ly1, lx0:lx1] += np.float32(1)
                    else:
                        buf.weight[ly0:ly1, lx0:lx1] += win[py0:py1, px0:px1]
                    for name, values in contrib.items():
                        buf.sums[name][ly0:ly1, lx0:lx1] += values[py0:py1, px0:px1]
                    buf.mark(ly0, ly1, lx0, lx1)

    def _tile_for(self, key: tuple[int, int], protect: set[tuple[int, int]]) -> _Buffers:
        buf = self._tiles.get(key)
        if buf is not None:
            self._tiles.move_to_end(key)
            return buf
        buf = self._take_buffers(protect)
        self._tiles[key] = buf
        return buf

    def _take_buffers(self, protect: set[tuple[int, int]]) -> _Buffers:
        """A cleared tile buffer: reused, new within the budget, or freed by spilling.

        Decisions use logical counts only (a buffer whose spill is being written counts
        as free), so the same input always spills the same tiles whatever the timing of
        the background writes; a physical wait happens only when a buffer is needed now.
        """
        if not self._free_count() and not self._can_allocate():
            self._make_room(protect)
        if self._free_count():
            while not self._pool:
                self._wait_oldest_spill()
            buf = self._pool.pop()
            buf.clear()
        else:  # within the budget, or a patch needing more tiles than the budget holds
            self._n_buffers += 1
            self._peak_buffers = max(self._peak_buffers, self._n_buffers)
            buf = _Buffers(self.tile, self.heads)
        if not self._free_count() and not self._can_allocate():
            self._make_room(protect)  # spill ahead: written while accumulation goes on
        return buf

    def _free_count(self) -> int:
        return len(self._pool) + self._inflight_free

    def _can_allocate(self) -> bool:
        return (self._n_buffers + 1) * self._tile_bytes <= self.memory_budget

    def _make_room(self, protect: set[tuple[int, int]]) -> None:
        """Spill tiles to free memory.

        ``order="any"``: the least recently touched tiles, about a quarter of the budget at
        a time (each spill part costs a durable commit, so they are not made tile by tile).
        ``order="row-major"``: one tile, the most recently touched one outside the current
        patch. Patches sweep left to right row after row, so the tile just left
        behind is the one needed again last (in the next sweep) while the tiles ahead are
        needed at once: evicting it is what an optimal (Belady) cache would do, and spills
        2-3x less than LRU, which would evict every tile of a sweep that does not fit.
        """
        if self.order == "row-major":
            candidates: Any = reversed(self._tiles)
            want = 1
        else:
            candidates = iter(self._tiles)
            want = max(1, self.memory_budget // (4 * self._tile_bytes))
        victims = []
        for key in candidates:
            if key not in protect:
                victims.append(key)
                if len(victims) >= want:
                    break
        if victims:
            self._spill(victims)

    def _release(self, buf: _Buffers) -> None:
        """Keep a freed tile buffer for reuse, unless it was allocated over the budget."""
        if self._over_budget():
            self._n_buffers -= 1  # dropped: memory goes back to the budget
        else:
            self._pool.append(buf)

    def _over_budget(self) -> bool:
        return self._n_buffers * self._tile_bytes > self.memory_budget

    # -- spilling -------------------------------------------------------------------------
    def _spill(self, keys: list[tuple[int, int]]) -> None:
        """Write the given tiles' accumulators as one immutable part, in the background.

        The tiles leave memory at once (a later touch starts a fresh accumulator); their
        buffers are reused once the part is written. Tiles never touched are just freed.
        """
        T = self.tile
        arrays: dict[str, np.ndarray] = {}
        tiles_meta: list[list[int]] = []
        to_pool: list[_Buffers] = []
        for key in keys:
            buf = self._tiles.pop(key)
            if buf.dirty is None:
                self._release(buf)
                continue
            ty, tx = key
            r0, r1, c0, c1 = buf.dirty
            arrays[f"{ty}_{tx}/weight"] = buf.weight[r0:r1, c0:c1]
            for name, acc in buf.sums.items():
                arrays[f"{ty}_{tx}/{name}/sum"] = acc[r0:r1, c0:c1]
            tiles_meta.append([ty, tx, ty * T + r0, tx * T + c0, ty * T + r1, tx * T + c1])
            if self._over_budget():
                self._n_buffers -= 1  # dropped once written
            else:
                to_pool.append(buf)
        if not arrays:
            return
        seq = self._take_seq()
        name = f"{self._spill_prefix}-{seq:08d}"
        future = self._spill_exec.submit(
            write_part,
            self._loc,
            name,
            arrays,
            kind=SPILL_KIND,
            meta={"canvas": self.spec, "seq": seq, "tiles": tiles_meta},
            writer=self._spill_writer,
        )
        self._inflight.append((future, name, to_pool))
        self._inflight_free += len(to_pool)
        self._part_left[name] = len(tiles_meta)
        for ty, tx, y0, x0, y1, x1 in tiles_meta:
            self._refs.setdefault((ty, tx), []).append(_SpillRef(name, y0, x0, y1, x1))
        self._counters["spill_events"] += 1
        self._counters["spilled_tiles"] += len(tiles_meta)
        self._counters["spilled_bytes"] += sum(a.nbytes for a in arrays.values())

    def _spill_rows(self, upto: int) -> None:
        """Worker canvas: spill the tiles of rows above ``upto``, which no patch reaches now."""
        done = [key for key in self._tiles if key[0] < upto]
        if done:
            self._spill(done)

    def _wait_oldest_spill(self) -> None:
        """Wait for the oldest background spill; its buffers join the pool."""
        future, name, buffers = self._inflight.popleft()
        self._inflight_free -= len(buffers)
        self._pool.extend(buffers)
        self._parts[name] = future.result()

    def _reap_spills(self, *, wait: bool = False) -> None:
        """Collect finished background spills (all of them with ``wait``)."""
        while self._inflight and (wait or self._inflight[0][0].done()):
            self._wait_oldest_spill()

    def _part(self, name: str) -> PartInfo:
        """The spill part ``name``, waiting for its background write if needed."""
        while name not in self._parts:
            self._wait_oldest_spill()
        return self._parts[name]

    def _take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def _consume(self, ref: _SpillRef) -> None:
        """One tile of a spill part is finalised; drop the part once it is used up."""
        left = self._part_left[ref.part] - 1
        self._part_left[ref.part] = left
        if left:
            return
        if ref.part in self._ckpt_parts:
            self._garbage.append(ref.part)  # the checkpoint still needs it
        else:
            self._drop_part(ref.part)

    def _drop_part(self, name: str) -> None:
        info = self._parts.pop(name, None)
        self._part_left.pop(name, None)
        if info is not None:
            self._submit(remove_part, info)

    # -- finalising rows ------------------------------------------------------------------
    def _finalize_rows(self, upto: int) -> None:
        """Normalise and write tile rows ``rows_final .. upto - 1``."""
        rows = range(self._rows_final, upto)
        for ty in tqdm(rows, desc="canvas rows", unit="row", disable=not self.progress):
            futures: list[concurrent.futures.Future[None]] = []
            protect = {(ty, tx) for tx in range(self.grid[1])}
            for tx in range(self.grid[1]):
                futures += self._finalize_tile(ty, tx, protect)
            self._row_futures[ty] = futures
            self._rows_final = ty + 1
        self._collect()

    def _extent(self, ty: int, tx: int) -> tuple[int, int]:
        T = self.tile
        return min(T, self.shape[0] - ty * T), min(T, self.shape[1] - tx * T)

    def _finalize_tile(
        self, ty: int, tx: int, protect: set[tuple[int, int]]
    ) -> list[concurrent.futures.Future[None]]:
        key = (ty, tx)
        buf = self._tiles.pop(key, None)
        refs = self._refs.pop(key, [])
        if buf is None and not refs:
            self._note_fill()  # never touched: the chunk stays unwritten (reads as fill)
            if self._assemblers is not None:
                for name, spec in self.heads.items():
                    for c in range(spec.channels):
                        index = (c, ty, tx) if spec.channels > 1 else (ty, tx)
                        self._assemblers[name].add(0, index, None)
            return []
        if buf is None:
            buf = self._take_buffers(protect)
        T = self.tile
        for ref in refs:
            info = self._part(ref.part)
            r0, r1 = ref.y0 - ty * T, ref.y1 - ty * T
            c0, c1 = ref.x0 - tx * T, ref.x1 - tx * T
            buf.weight[r0:r1, c0:c1] += info.read(f"{ty}_{tx}/weight")
            for name, acc in buf.sums.items():
                acc[r0:r1, c0:c1] += info.read(f"{ty}_{tx}/{name}/sum")
            buf.mark(r0, r1, c0, c1)
        outputs = self._normalise(buf, *self._extent(ty, tx))
        self._release(buf)
        for ref in refs:
            self._consume(ref)
        return [self._submit(self._write_tile, name, ty, tx, out) for name, out in outputs.items()]

    def _normalise(self, buf: _Buffers, th: int, tw: int) -> dict[str, np.ndarray]:
        """``sum / weight`` per head as ``(C, th, tw)`` in the head dtype; fill where weight 0."""
        weight = buf.weight[:th, :tw]
        return {
            name: normalise_block(buf.sums[name][:th, :tw], weight, spec.dtype, self.fill_value)
            for name, spec in self.heads.items()
        }

    def _write_tile(self, name: str, ty: int, tx: int, out: np.ndarray) -> None:
        """Worker thread: encode and write one tile of one head; fold in its value range."""
        image = self._images[name]
        channels = out.shape[0]
        lows, highs = np.empty(channels), np.empty(channels)
        paths = []
        assembler = self._assemblers[name] if self._assemblers is not None else None
        for c in range(channels):
            index = (c, ty, tx) if len(image.axes) == 3 else (ty, tx)
            paths.append(image.write_chunk(0, index, out[c]))
            lows[c], highs[c] = finite_range(out[c])
            if assembler is not None:
                assembler.add(0, index, out[c])
        with self._lock:
            np.fmin(self._low[name], lows, out=self._low[name])
            np.fmax(self._high[name], highs, out=self._high[name])
            if image.location.is_local:
                self._written += paths

    def _note_fill(self) -> None:
        fill = self.fill_value
        if math.isfinite(fill):
            with self._lock:
                for name, spec in self.heads.items():
                    value = float(np.asarray(fill).astype(spec.dtype))
                    np.fmin(self._low[name], value, out=self._low[name])
                    np.fmax(self._high[name], value, out=self._high[name])

    # -- background work ------------------------------------------------------------------
    def _submit(self, fn: Any, *args: Any) -> concurrent.futures.Future[None]:
        self._slots.acquire()
        try:
            future = self._pool_exec.submit(fn, *args)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(self._task_done)
        return future

    def _task_done(self, future: concurrent.futures.Future[None]) -> None:
        self._slots.release()
        exc = future.exception()
        if exc is not None:
            with self._lock:
                if self._error is None:
                    self._error = exc

    def _raise_task_error(self) -> None:
        with self._lock:
            error = self._error
        if error is not None:
            raise error

    def _collect(self, *, wait: bool = False) -> None:
        """Advance the durable-row mark over rows whose chunks are all written."""
        self._reap_spills(wait=wait)
        advanced = False
        while self._rows_durable < self._rows_final:
            futures = self._row_futures.get(self._rows_durable, [])
            if wait:
                concurrent.futures.wait(futures)
            elif not all(f.done() for f in futures):
                break
            self._row_futures.pop(self._rows_durable, None)
            self._rows_durable += 1
            advanced = True
        self._raise_task_error()
        if advanced:
            self._staging.raw_child(PROGRESS).write_text(
                json.dumps({"rows_final": self._rows_durable, "tile": self.tile})
            )

    def _drain(self) -> None:
        """Wait for every background task; re-raise the first failure."""
        self._collect(wait=True)
        self._slots_wait()
        self._raise_task_error()

    def _slots_wait(self) -> None:
        taken = 0
        try:
            for _ in range(self._inflight_writes):
                self._slots.acquire()
                taken += 1
        finally:
            for _ in range(taken):
                self._slots.release()

    # -- checkpoint / resume --------------------------------------------------------------
    def checkpoint(self, batches_done: int | None = None) -> None:
        """Make the state on disk complete, so a killed run can resume from here.

        Every in-memory tile is spilled, pending writes are finished and made durable, and
        a checkpoint part records the batch count, the spill parts it covers and how many
        rows are final. Older checkpoints and spill parts no longer needed are removed.

        Parameters
        ----------
        batches_done
            The caller's count of batches sent so far (default: the number of
            :meth:`add` calls, including those before a resume).
        """
        with storage_errors(self._loc):
            self._check_role("checkpoint()")
            self._check_open()
            if batches_done is not None:
                if isinstance(batches_done, bool) or not isinstance(batches_done, int):
                    raise InvalidDataError(f"batches_done must be an int, got {batches_done!r}")
                if batches_done < 0:
                    raise InvalidDataError(f"batches_done must be >= 0, got {batches_done}")
                self._batches_done = batches_done
            if self._tiles:
                self._spill(list(self._tiles))
            self._reap_spills(wait=True)
            self._drain()
            self._fsync_written()
            referenced = sorted(n for n, left in self._part_left.items() if left > 0)
            seq = self._take_seq()
            name = f"{CHECKPOINT_KIND}-{seq:08d}"
            with self._lock:
                stats = {f"stats/{h}": np.stack([self._low[h], self._high[h]]) for h in self.heads}
            write_part(
                self._loc,
                name,
                stats,
                kind=CHECKPOINT_KIND,
                meta={
                    "canvas": self.spec,
                    "seq": seq,
                    "batches_done": self._batches_done,
                    "rows_final": self._rows_final,
                    "frontier": self._frontier,
                    "next_seq": self._next_seq,
                    "spill_parts": referenced,
                },
            )
            previous, self._ckpt_name = self._ckpt_name, name
            self._ckpt_parts = set(referenced)
            if previous is not None:
                self._remove_parts_named([previous])
            garbage, self._garbage = self._garbage, []
            for part in garbage:
                self._drop_part(part)
            self._drain()
            log.debug("canvas checkpoint %s after %d batches", name, self._batches_done)

    def flush_parts(self) -> list[str]:
        """Worker canvas: spill every tile still in memory and end the canvas.

        Every spill part is written and (locally) fsynced before this returns, so a marker
        written next may refer to them.

        Returns
        -------
        list[str]
            Names of all spill parts this canvas wrote, in the order they were made.
        """
        if self.role != "worker":
            raise InvalidDataError(
                "flush_parts() ends a worker canvas (role='worker'); this canvas is finalised "
                "with finalize()"
            )
        self._check_open()
        try:
            if self._tiles:
                self._spill(list(self._tiles))
            self._reap_spills(wait=True)
            self._drain()
            self._fsync_written()
        finally:
            self._shutdown()
        self._finalized = True
        return list(self._parts)

    def _check_role(self, what: str) -> None:
        if self.role == "worker":
            raise InvalidDataError(
                f"{what} is not available on a worker canvas: it writes spill parts only; "
                "call flush_parts() and finalise them with a canvas that adopts them"
            )

    def _fsync_written(self) -> None:
        """fsync output chunks and spill files written since the last checkpoint (local)."""
        with self._lock:
            paths, self._written = self._written, []
        paths += self._spill_writer.take_unsynced()
        directories = set()
        for path in paths:
            fsync_path(path)
            directories.add(os.path.dirname(path))
        for directory in directories:
            fsync_path(directory)

    def _make_spec(self) -> dict[str, Any]:
        if isinstance(self._weights, str):
            weights = self._weights
        else:
            digest = hashlib.sha1(np.ascontiguousarray(self._weights).tobytes()).hexdigest()
            weights = f"array:{self._weights.shape[0]}x{self._weights.shape[1]}:{digest[:16]}"
        fill = self.fill_value
        return {
            "version": SPEC_VERSION,
            "shape": list(self.shape),
            "heads": {
                n: {"channels": s.channels, "dtype": s.dtype.str} for n, s in self.heads.items()
            },
            "tile": self.tile,
            "weights": weights,
            "order": self.order,
            "nan_policy": self.nan_policy,
            "fill_value": fill if math.isfinite(fill) else repr(fill),
        }

    def _canvas_parts(self) -> list[PartInfo]:
        return list_parts(self._loc, kind=(SPILL_KIND, CHECKPOINT_KIND, STAGING_KIND))

    def _remove_parts_named(self, names: list[str]) -> None:
        for name in names:
            self._parts_root.raw_child(name).raw_child("part.json").remove()
            self._parts_root.raw_child(name).remove()

    def _start_fresh(self, *, keep_spills: bool = False) -> None:
        if keep_spills:  # adopting spill parts: only an earlier staging and checkpoints go
            _remove_part_dirs(
                self._parts_root,
                [
                    n
                    for n in self._parts_root.ls()
                    if n == STAGING or n.startswith(f"{CHECKPOINT_KIND}-")
                ],
            )
        else:
            for info in self._canvas_parts():
                remove_part(info)
        self._staging.remove()
        write_part(
            self._loc,
            STAGING,
            {"shape": np.asarray(self.shape, np.int64)},
            kind=STAGING_KIND,
            meta={"canvas": self.spec},
        )
        for name, spec in self.heads.items():
            shape = self.shape if spec.channels == 1 else (spec.channels, *self.shape)
            self._images[name] = ImageWriter.create(
                self._staging.raw_child(f"{name}.ome.zarr"),
                shape,
                spec.dtype,
                chunk=self.tile,
                fill_value=_fill_for(self.fill_value, spec.dtype),
                min_size=self.min_size,
            )
        self._assemblers = {name: PyramidAssembler(img) for name, img in self._images.items()}
        self._staging.raw_child(PROGRESS).write_text(
            json.dumps({"rows_final": 0, "tile": self.tile})
        )

    def _adopt(self, parts: Sequence[str | PartInfo]) -> None:
        """Take over spill parts of worker canvases: :meth:`finalize` sums them in."""
        if isinstance(parts, str) or not isinstance(parts, Sequence):
            raise InvalidDataError("adopt must be a sequence of spill part names")
        by_name = {p.name: p for p in parts if isinstance(p, PartInfo)}
        names = [p.name if isinstance(p, PartInfo) else str(p) for p in parts]
        if len(by_name) < len(names):
            self._loc.fs.invalidate_cache(self._parts_root.path)  # written by other processes
            by_name = {p.name: p for p in list_parts(self._loc, kind=SPILL_KIND)}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise KeyLookupError(
                f"{len(missing)} spill parts to adopt are not in {self._loc.url} (or not "
                f"committed): {missing[:5]}"
            )
        mine = {k: v for k, v in self.spec.items() if k != "order"}  # any order sums alike
        for name in dict.fromkeys(names):
            info = by_name[name]
            theirs = {k: v for k, v in info.meta.get("canvas", {}).items() if k != "order"}
            differences = _spec_differences(theirs, mine)
            if differences:
                raise IncompatibleError(
                    f"spill part {name} of {self._loc.url} was written by a canvas with "
                    "another spec",
                    [d.replace("checkpoint has", "the part has") for d in differences],
                )
            for ty, tx, y0, x0, y1, x1 in info.meta["tiles"]:
                self._refs.setdefault((ty, tx), []).append(_SpillRef(name, y0, x0, y1, x1))
            self._parts[name] = info
            self._part_left[name] = len(info.meta["tiles"])
        self._ckpt_parts = set(self._parts)  # kept until the node is committed

    def _resume(self) -> bool:
        """Restore the newest checkpoint; False when there is none to resume from."""
        parts = self._canvas_parts()
        checkpoints = sorted(
            (p for p in parts if p.kind == CHECKPOINT_KIND), key=lambda p: p.meta.get("seq", -1)
        )
        staging = [p for p in parts if p.kind == STAGING_KIND]
        if not checkpoints or not staging:
            log.info("no canvas checkpoint in %s: starting from scratch", self._loc.url)
            return False
        ckpt = checkpoints[-1]
        differences = _spec_differences(ckpt.meta.get("canvas", {}), self.spec)
        if differences:
            raise IncompatibleError(
                f"cannot resume the canvas in {self._loc.url}: its checkpoint was made with "
                "another spec (start without resume=True to discard it)",
                differences,
            )
        meta = ckpt.meta
        by_name = {p.name: p for p in parts}
        wanted = list(meta.get("spill_parts", []))
        missing = [n for n in wanted if n not in by_name]
        if missing:
            log.warning(
                "canvas checkpoint %s refers to missing spill parts %s: starting from scratch",
                ckpt.name,
                missing,
            )
            return False
        self._rows_final = self._rows_durable = int(meta["rows_final"])
        self._frontier = int(meta["frontier"])
        self._batches_done = int(meta["batches_done"])
        self._next_seq = int(meta["next_seq"])
        for name in wanted:
            info = by_name[name]
            left = 0
            for ty, tx, y0, x0, y1, x1 in info.meta["tiles"]:
                if ty < self._rows_final:
                    continue
                self._refs.setdefault((ty, tx), []).append(_SpillRef(name, y0, x0, y1, x1))
                left += 1
            self._parts[name] = info
            self._part_left[name] = left
        for key in self._refs:
            self._refs[key].sort(key=lambda r: int(r.part.rsplit("-", 1)[1]))
        self._ckpt_parts = set(wanted)
        self._ckpt_name = ckpt.name
        for h in self.heads:
            low_high = np.asarray(ckpt.read(f"stats/{h}"), np.float64)
            self._low[h], self._high[h] = low_high[0].copy(), low_high[1].copy()
        for info in parts:
            stale_spill = info.kind == SPILL_KIND and info.name not in self._parts
            if stale_spill or (info.kind == CHECKPOINT_KIND and info.name != ckpt.name):
                remove_part(info)
        for name, spec in self.heads.items():
            axes = "yx" if spec.channels == 1 else "cyx"
            image = ImageWriter.open(
                self._staging.raw_child(f"{name}.ome.zarr"), axes=axes, min_size=self.min_size
            )
            self._images[name] = image
            # rows the killed run wrote after its checkpoint are not covered: clear them
            level0 = image.location.raw_child("0")
            for ty in range(self._rows_final, self.grid[0]):
                if spec.channels == 1:
                    level0.raw_child(str(ty)).remove()
                else:
                    for c in range(spec.channels):
                        level0.raw_child(str(c)).raw_child(str(ty)).remove()
        self._staging.raw_child(PROGRESS).write_text(
            json.dumps({"rows_final": self._rows_final, "tile": self.tile})
        )
        log.info(
            "resumed canvas in %s after %d batches (%d rows final, %d spill parts)",
            self._loc.url,
            self._batches_done,
            self.rows_written,
            len(self._parts),
        )
        return True

    # -- finishing ------------------------------------------------------------------------
    def finalize(self, *, commit: bool = True) -> dict[str, ImageInfo]:
        """Write every head as an OME-Zarr image with a pyramid and clean up.

        Remaining rows are normalised (spilled contributions summed back in) and written,
        the pyramid levels are built from level 0, the images are put in the node as
        ``<head>.ome.zarr`` with ``canvas.json`` beside them, the node is committed (unless
        ``commit=False``) and the spill data is removed.

        Returns
        -------
        dict[str, ImageInfo]
            The written image of each head.
        """
        with storage_errors(self._loc):
            self._check_role("finalize()")
            self._check_open()
            assert self.node is not None
            self._finalize_rows(self.grid[0])
            self._reap_spills(wait=True)
            self._drain()
            self._pool.clear()  # accumulators are not needed any more
            self._n_buffers = len(self._tiles)
            infos: dict[str, ImageInfo] = {}
            for name, image in self._images.items():
                assembler = self._assemblers[name] if self._assemblers is not None else None
                if assembler is None or not assembler.complete():
                    # resumed run: the levels above 0 are rebuilt from level 0
                    image.build_levels(workers=self._workers, progress=self.progress)
                with self._lock:
                    low, high = self._low[name], self._high[name]
                image.finish(
                    low=low if len(low) > 1 else low[0],
                    high=high if len(high) > 1 else high[0],
                    name=name,
                    channel_names=self.channel_names.get(name) if len(low) > 1 else None,
                )
            for name, image in self._images.items():
                target = self.node.item(f"{name}.ome.zarr")
                _publish(image.location, target)
                infos[name] = read_image(target)
            self.node.save_json(
                CANVAS_JSON,
                {
                    "kind": "canvas",
                    **self.spec,
                    "images": {name: f"{name}.ome.zarr" for name in self.heads},
                    "batches": self._batches_done,
                },
            )
            self._finalized = True
            if commit:
                self.node.commit()
            _remove_part_dirs(self._parts_root, [info.name for info in self._canvas_parts()])
            self._staging.remove()
            self._shutdown()
            return infos

    def close(self) -> None:
        """Stop without finalising: finish pending writes and keep the spill data.

        Work since the last :meth:`checkpoint` is not resumable; call ``checkpoint()``
        first to keep it.
        """
        if self._closed or self._finalized:
            return
        try:
            self._reap_spills(wait=True)
            self._drain()
        finally:
            self._closed = True
            self._shutdown()

    def _shutdown(self) -> None:
        self._closed = True
        try:
            self._spill_exec.shutdown(wait=True)
            self._spill_writer.close()
        finally:
            self._pool_exec.shutdown(wait=True)

    def __enter__(self) -> Canvas:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb):
        if exc_type is None and not self._finalized and not self._closed:
            if self.role == "worker":
                self.flush_parts()
            else:
                self.finalize()
        else:
            try:
                self.close()
            except BaseException as close_exc:
                if exc is not None and close_exc is not exc:
                    exc.add_note(f"closing the canvas also failed: {close_exc!r}")


# -- helpers --------------------------------------------------------------------------------
class _SpillWriter(AsyncWriter):
    """Writes spill arrays straight to their final names, without fsync.

    A spill part counts only once its marker exists (written after all its arrays, by
    :func:`~cachetree.tree.parts.write_part`), so a killed writer never leaves a readable torn
    part; durability against power loss is added by :meth:`Canvas.checkpoint`, which
    fsyncs these files (:meth:`take_unsynced`) before a checkpoint refers to them.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._unsynced: list[str] = []

    def _write_one(self, target: Location, payload: Any) -> None:
        if (
            not target.is_local
            or self.save_format is not SaveFormat.NUMPY_NPY
            or not isinstance(payload, np.ndarray)
        ):
            super()._write_one(target, payload)
            return
        os.makedirs(os.path.dirname(target.path), exist_ok=True)
        with open(target.path, "wb") as fh:
            np.lib.format.write_array(fh, payload, allow_pickle=False)
        with self._lock:
            self._unsynced.append(target.path)

    def take_unsynced(self) -> list[str]:
        """Paths written since the last call (and their directories)."""
        with self._lock:
            paths, self._unsynced = self._unsynced, []
        return paths


def _remove_part_dirs(parts_root: Location, names: Sequence[str]) -> None:
    """Delete the parts ``names`` of a parts directory: every marker first, then the rest.

    A part stops counting as soon as its marker is gone. On object stores the files are
    found with one listing and deleted in bulk (a handful of requests for any number of
    parts, instead of several per part).
    """
    wanted = set(names)
    if not wanted:
        return
    if parts_root.is_local:
        for name in sorted(wanted):
            parts_root.raw_child(name).raw_child(PART_MARKER).remove()
        for name in sorted(wanted):
            parts_root.raw_child(name).remove()
        return
    fs = parts_root.fs
    fs.invalidate_cache(parts_root.path)
    try:
        found = fs.find(parts_root.path)
    except FileNotFoundError:
        return
    prefix = parts_root.path.rstrip("/") + "/"
    files = [f for f in found if f.startswith(prefix)]
    chosen = [f for f in files if f[len(prefix) :].split("/", 1)[0] in wanted]
    markers = [f for f in chosen if f[len(prefix) :].split("/", 1)[1:] == [PART_MARKER]]
    rest = sorted(set(chosen) - set(markers))
    for batch in (markers, rest):
        if batch:
            fs.rm(batch)
    fs.invalidate_cache(parts_root.path)


def normalise_block(
    sums: np.ndarray, weight: np.ndarray, dtype: Any, fill_value: float
) -> np.ndarray:
    """Weighted average of accumulated sums.

    Parameters
    ----------
    sums
        ``(h, w, C)`` weighted value sums.
    weight
        ``(h, w)`` weight sums.
    dtype
        Output dtype; integers are rounded and clipped to their range.
    fill_value
        Output where the weight is zero.

    Returns
    -------
    numpy.ndarray
        ``(C, h, w)`` of ``dtype``.
    """
    dtype = np.dtype(dtype)
    h, w, channels = sums.shape
    out = np.empty((channels, h, w), dtype)
    empty = weight <= 0
    any_empty = bool(empty.any())
    direct = dtype == sums.dtype
    tmp = None if direct else np.empty((h, w), sums.dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        for c in range(channels):
            target = out[c] if direct else tmp
            np.divide(sums[..., c], weight, out=target)
            if not direct:
                if any_empty:
                    target[empty] = 0
                if dtype.kind in "iu":
                    info = np.iinfo(dtype)
                    np.rint(target, out=target)
                    np.clip(target, info.min, info.max, out=target)
                out[c] = target
            if any_empty:
                out[c][empty] = fill_value
    return out


def _all_finite(arr: np.ndarray) -> bool:
    """Whether every value is finite, without allocating a mask (min/max propagate NaN)."""
    if arr.dtype.kind != "f" or arr.size == 0:
        return True
    return bool(np.isfinite(arr.min()) and np.isfinite(arr.max()))


def _check_shape(shape: Any) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in shape)
        ok = all(float(v) == int(v) for v in shape)
    except (TypeError, ValueError) as exc:
        raise ShapeMismatchError(f"canvas shape must be (height, width), got {shape!r}") from exc
    if not ok or h < 1 or w < 1:
        raise ShapeMismatchError(f"canvas shape must be two positive integers, got {shape!r}")
    return h, w


def _check_fill(fill_value: Any, heads: Mapping[str, HeadSpec]) -> float:
    try:
        fill = float(fill_value)
    except (TypeError, ValueError) as exc:
        raise InvalidDataError(f"fill_value must be a number, got {fill_value!r}") from exc
    for name, spec in heads.items():
        if spec.dtype.kind in "iu":
            info = np.iinfo(spec.dtype)
            if not math.isfinite(fill) or fill != round(fill) or not info.min <= fill <= info.max:
                raise DTypeMismatchError(
                    f"fill_value {fill_value!r} does not fit head {name!r} of dtype {spec.dtype}"
                )
    return fill


def _fill_for(fill: float, dtype: np.dtype) -> float | int:
    return int(fill) if dtype.kind in "iu" else fill


def _spec_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return [
        f"{key}: checkpoint has {old.get(key)!r}, this canvas has {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if json.dumps(old.get(key), sort_keys=True) != json.dumps(new.get(key), sort_keys=True)
    ]


def _publish(source: Location, target: Location) -> None:
    """Put the finished image at ``target``, keeping ``source`` until the node is committed.

    Locally the files are hard-linked (no data is copied); elsewhere they are copied.
    """
    target.remove()
    if source.is_local and target.is_local:
        try:
            shutil.copytree(source.path, target.path, copy_function=os.link)
            return
        except OSError:
            shutil.rmtree(target.path, ignore_errors=True)
            shutil.copytree(source.path, target.path)
            return
    source.fs.copy(source.path, target.path, recursive=True)
