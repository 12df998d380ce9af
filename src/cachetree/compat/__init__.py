"""Drop-in replacements for TIAToolbox 2.1.3's multi-head merge functions.

``tiatoolbox.models.engine.multi_task_segmentor`` (TIAToolbox 2.1.3) merges patch
predictions with four module-level functions, which the seed documents describe. This
module has the same four, with the same parameter names, order, defaults and keyword-only
markers, accepting the same inputs (including TIAToolbox's own row blocks and counts) and
returning the same structure: a loop written against TIAToolbox, including
``MultiTaskSegmentor.infer_wsi`` itself, runs unchanged when only the names are rebound.

* :func:`prepare_multitask_full_batch` aligns a batch to the global location order and
  zero-pads the locations never sent (masked out) and, on the last batch, the tail;
* :func:`merge_multitask_horizontal` merges each run of patches with one ``y0`` into a row
  block per head: sums in the head's dtype and a uint8 hit count, stacked into dask arrays
  ``(N_rows * H, W, C)`` and ``(N_rows * H, W, 1)`` with one chunk per row;
* :func:`save_multitask_to_cache` appends row blocks to Zarr arrays ``canvas/<idx>`` and
  ``count/<idx>`` under ``save_path`` (TIAToolbox's loop calls it when memory runs short);
* :func:`merge_multitask_vertical_chunkwise` adds overlapping rows and divides by the
  counts, returning one ``(H, W, C)`` dask array per head.

Where the seed documents and TIAToolbox 2.1.3 disagree, these functions follow TIAToolbox:
row blocks are stacked 3-D arrays (not ``(N_rows, H, W, C)``) with uint8 counts of one
channel, spilling computes them a block at a time, ``output_locs`` is returned (not
extended in place), padding has each head's dtype (not uint8), and an aligned batch is a
``zarr.Array`` when memory is short.

**Gaps get no weight.** A location inside the grid that was never sent is padded with
zeros, and the row merge gives it no weight, as TIAToolbox does; TIAToolbox recognises a
gap by its block being all zero, so a patch the model really predicted as all zeros is
dropped from the mean too. Here the ``output_locs`` returned by
:func:`prepare_multitask_full_batch` records which slots were predicted, and
:func:`merge_multitask_horizontal` skips exactly the padded slots: a predicted all-zero
patch counts (it pulls the mean towards 0, as any other prediction would). When
``output_locs`` does not come from this module, all-zero blocks are skipped as in
TIAToolbox. With no all-zero prediction the results are bit for bit TIAToolbox's.

Differences, all where TIAToolbox fails or does needless work:

* the vertical merge handles rows overlapping any number of rows above them (TIAToolbox
  raises a broadcasting ``ValueError`` when the stride is below half the patch height);
* the location lookup looks only at the front of ``full_output_locs`` and ``output_locs_y``
  grows in place, so the work per batch does not grow with the number of locations;
* on the last batch an in-memory aligned batch has exactly one row per consumed location
  (TIAToolbox's has as many extra zero rows as locations were consumed by that batch);
* temporary Zarr arrays are uncompressed; the spilled row blocks are deleted after the
  vertical merge (TIAToolbox keeps them unless the result itself was spilled), so nothing
  but a spilled result is left under the caller's ``save_path``;
* the vertical merge decides memory against the whole result of a head at once instead of
  row by row, and adds counts in float32 (TIAToolbox's uint8 wraps past 255).

``memory_threshold`` means what it means in TIAToolbox: a percentage of the available
memory that the data about to be held may take (:func:`prepare_multitask_full_batch` and
:func:`merge_multitask_vertical_chunkwise`), spilling to Zarr under ``save_path`` above it.
TIAToolbox's loop also spills row blocks when the system's memory in use exceeds it.
"""

from __future__ import annotations

from ._batch import prepare_multitask_full_batch
from ._rows import merge_multitask_horizontal, save_multitask_to_cache
from ._vertical import merge_multitask_vertical_chunkwise

__all__ = [
    "merge_multitask_horizontal",
    "merge_multitask_vertical_chunkwise",
    "prepare_multitask_full_batch",
    "save_multitask_to_cache",
]

for _function in (
    merge_multitask_horizontal,
    merge_multitask_vertical_chunkwise,
    prepare_multitask_full_batch,
    save_multitask_to_cache,
):
    _function.__module__ = __name__
del _function
