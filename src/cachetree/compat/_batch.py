"""Aligning a batch of patch predictions to the global location order (gaps padded)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import zarr

from ..errors import KeyLookupError, ShapeMismatchError


class PatchBoxes(np.ndarray):
    """``(N, 4)`` output boxes that remember which of them a model really predicted.

    ``predicted[i]`` is False where row ``i`` of the aligned outputs is zero padding (a
    location inside the grid that was never sent, or the tail after the last batch). Only
    this module and :func:`~cachetree.compat.merge_multitask_horizontal` set it; any array
    derived from it by other code (a slice, arithmetic) has ``predicted = None``, and the
    merge then falls back to TIAToolbox's rule (an all-zero block is a gap).
    """

    predicted: np.ndarray | None

    def __array_finalize__(self, obj: Any) -> None:
        self.predicted = None


def as_boxes(locs: np.ndarray, predicted: np.ndarray | None) -> PatchBoxes:
    """A :class:`PatchBoxes` view of ``locs`` carrying ``predicted`` (or None: unknown)."""
    boxes = np.asarray(locs).view(PatchBoxes)
    if predicted is not None and len(predicted) == len(boxes):
        boxes.predicted = np.asarray(predicted, bool)
    return boxes


def predicted_flags(locs: Any) -> np.ndarray | None:
    """The ``predicted`` flags of ``locs`` when known for every row, else None."""
    flags = getattr(locs, "predicted", None)
    if flags is None or len(flags) != len(locs):
        return None
    return flags


def match_front(batch_locs: np.ndarray, full: np.ndarray) -> np.ndarray:
    """Index in ``full`` of every row of ``batch_locs``, looking only as far as needed.

    The lookup grows over the front of ``full`` (doubling its window) until every batch
    location is found, so the work is proportional to the rows consumed, not to ``len(full)``
    (TIAToolbox builds a dictionary of all remaining locations for every batch).
    """
    wanted = [tuple(row) for row in batch_locs.tolist()]
    missing = set(wanted)
    lookup: dict[tuple[Any, ...], int] = {}
    scanned = 0
    window = max(2 * len(wanted), 64)
    while missing and scanned < len(full):
        stop = min(len(full), scanned + window)
        for offset, row in enumerate(full[scanned:stop].tolist()):
            key = tuple(row)
            if key in missing:
                lookup[key] = scanned + offset
                missing.discard(key)
        scanned = stop
        window *= 2
    if missing:
        example = next(iter(missing))
        raise KeyLookupError(
            f"{len(missing)} batch location(s), e.g. {list(example)}, are not among the "
            f"{len(full)} remaining output locations: batches must follow the order of "
            "full_output_locs and each location may be sent once"
        )
    return np.fromiter((lookup[key] for key in wanted), dtype=np.int64, count=len(wanted))


#: Chunk files side by side (``c.0.0.0.0``) instead of one directory level per dimension:
#: these arrays are temporary, and deleting a deep tree of directories is slow.
FLAT_KEYS = {"name": "default", "separator": "."}


def _spill_batch(
    head: np.ndarray, matches: np.ndarray, total: int, save_path: Path | str
) -> zarr.Array:
    """The aligned batch as a Zarr array in a fresh ``full_batch_tmp_*`` folder of save_path.

    Chunks of one batch's length, as TIAToolbox's, uncompressed (read back once); a chunk
    with no predicted location is never written (it reads as the fill value 0), so the
    memory used is one chunk however large the gaps.
    """
    folder = Path(save_path)
    folder.mkdir(parents=True, exist_ok=True)
    store = zarr.storage.LocalStore(tempfile.mkdtemp(prefix="full_batch_tmp_", dir=folder))
    rows = max(len(head), 1)
    target = zarr.create_array(
        store,
        shape=(total, *head.shape[1:]),
        chunks=(rows, *head.shape[1:]),
        dtype=head.dtype,
        fill_value=0,
        compressors=None,
        chunk_key_encoding=FLAT_KEYS,
    )
    for chunk in np.unique(matches // rows):
        start = int(chunk) * rows
        block = np.zeros((min(rows, total - start), *head.shape[1:]), head.dtype)
        inside = (matches >= start) & (matches < start + rows)
        block[matches[inside] - start] = head[inside]
        target[start : start + len(block)] = block
    return target


def prepare_multitask_full_batch(
    batch_output: tuple[np.ndarray],
    batch_locs: np.ndarray,
    full_output_locs: np.ndarray,
    output_locs: np.ndarray,
    canvas_np: list[np.ndarray | zarr.Array | None] | None = None,
    save_path: Path | str = "temp_fullbatch",
    memory_threshold: int = 80,
    *,
    is_last: bool,
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Align patch predictions to the global output order and pad the gaps with zeros.

    Same parameters, defaults and results as TIAToolbox 2.1.3's function of this name.

    Parameters
    ----------
    batch_output
        One ``(N, H, W, C)`` array per head for the batch.
    batch_locs
        ``(N, 4)`` output boxes of the batch; each must be a row of ``full_output_locs``.
    full_output_locs
        The locations not consumed yet, in canonical (row-major) order.
    output_locs
        Locations consumed so far and not merged yet (None on the first call).
    canvas_np
        Per-head aligned patches not merged yet; their size counts in the memory decision.
    save_path
        Directory in which a fresh ``full_batch_tmp_*`` folder holds a head's aligned batch
        when it does not fit in memory.
    memory_threshold
        As in TIAToolbox: a head's aligned batch is kept in RAM when twice the sum of its
        size and that of ``canvas_np[idx]`` (the peak while the caller concatenates them)
        is below ``memory_threshold`` percent of the available memory, else it goes to
        Zarr. 0 always spills.
    is_last
        Last batch: the locations left after it are consumed too, as zero padding.

    Returns
    -------
    full_batch_output : list of numpy.ndarray or zarr.Array
        Per head, ``(M, H, W, C)`` in the head's dtype, ``M`` the locations consumed (up to
        the last location of the batch, or to the end when ``is_last``); locations missing
        from the batch are zeros.
    full_output_locs : numpy.ndarray
        The unconsumed rest (a view of the input, not a copy).
    output_locs : numpy.ndarray
        ``output_locs`` followed by the consumed locations; it also records which of them
        were predicted, so that the row merge can tell gaps from all-zero predictions.

    Raises
    ------
    KeyLookupError
        A batch location is not among the remaining locations (a ``KeyError``, as in
        TIAToolbox).
    ShapeMismatchError
        A head's patch count differs from the number of batch locations.
    """
    locs = np.asarray(batch_locs)
    full = np.asarray(full_output_locs)
    heads = [np.asarray(head) for head in batch_output]
    for idx, head in enumerate(heads):
        if head.ndim < 1 or len(head) != len(locs):
            raise ShapeMismatchError(
                f"head {idx} has {len(head) if head.ndim else 0} patches but batch_locs has "
                f"{len(locs)}"
            )
    matches = match_front(locs, full)
    consumed = int(matches.max()) + 1 if len(matches) else 0
    total = len(full) if is_last else consumed
    allowed = psutil.virtual_memory().available * (memory_threshold / 100)
    full_batch_output: list[Any] = []
    for idx, head in enumerate(heads):
        pending = canvas_np[idx] if canvas_np is not None and idx < len(canvas_np) else None
        held = 0 if pending is None else int(pending.nbytes)
        nbytes = total * int(np.prod(head.shape[1:], dtype=np.int64)) * head.itemsize
        if 2 * (nbytes + held) < allowed:
            aligned = np.zeros((total, *head.shape[1:]), head.dtype)
            aligned[matches] = head
        else:
            aligned = _spill_batch(head, matches, total, save_path)
        full_batch_output.append(aligned)
    predicted = np.zeros(total, bool)
    predicted[matches] = True
    if output_locs is None or len(output_locs) == 0:
        merged, flags = full[:total], predicted
    else:
        merged = np.concatenate([np.asarray(output_locs), full[:total]])
        before = predicted_flags(output_locs)
        flags = None if before is None else np.concatenate([before, predicted])
    rest = full[total:] if not is_last else np.empty((0, locs.shape[1]), full.dtype)
    return full_batch_output, rest, as_boxes(merged, flags)
