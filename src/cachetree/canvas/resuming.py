"""Checkpoints of a :class:`~cachetree.canvas.Canvas` and resuming from them.

:class:`ResumableCanvas` is the part of the canvas that makes its state on disk complete
(``checkpoint``), starts a node afresh, adopts workers' spill parts and
restores the newest checkpoint. The rows and the preview it keeps in step are the
:class:`~cachetree.canvas.Canvas`'s (``_sync_final_rows``, ``_use_written_levels``,
``_write_preview``, ``_drop_part``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from ..errors import IncompatibleError, InvalidDataError
from ..fs.location import storage_errors
from ..tree.parts import PartInfo, list_parts, remove_part, remove_parts, write_part
from .base import CanvasBase
from .checkpoint import (
    checkpoint_preview,
    checkpoint_value_range,
    newest_checkpoint,
    write_checkpoint,
)
from .kinds import CHECKPOINT_KIND, SPILL_KIND, STAGING, STAGING_KIND
from .preview import read_preview_pointer
from .spec import spec_differences
from .spill import parts_to_adopt

__all__ = ["ResumableCanvas"]

log = logging.getLogger("cachetree")


class ResumableCanvas(CanvasBase):
    """A canvas that checkpoints its state and resumes from the newest checkpoint."""

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
            self._check_open()
            if batches_done is not None:
                if isinstance(batches_done, bool) or not isinstance(batches_done, int):
                    raise InvalidDataError(f"batches_done must be an int, got {batches_done!r}")
                if batches_done < 0:
                    raise InvalidDataError(f"batches_done must be >= 0, got {batches_done}")
                self._batches_done = batches_done
            self._spill_all()
            self._sync_final_rows(partial=True)
            referenced = self._spills.referenced()
            seq = self._take_seq()
            state = {
                "batches_done": self._batches_done,
                "rows_final": self._rows.rows_final,
                "frontier": self._frontier,
                "next_seq": self._next_seq,
            }
            ranges = self._rows.value_ranges()
            info = write_checkpoint(
                self._loc, seq, self._spec_json, state, referenced, ranges, self._preview.arrays()
            )
            previous, self._checkpoint = self._checkpoint, info
            self._spills.kept = set(referenced)
            if previous is not None:
                remove_part(previous)
            garbage, self._spills.garbage = self._spills.garbage, []
            for part in garbage:
                self._drop_part(part)
            self._drain()
            self._preview_written = (-1, 0.0)
            self._write_preview()
            log.debug("canvas checkpoint %s after %d batches", info.name, self._batches_done)

    def _canvas_parts(self) -> list[PartInfo]:
        return list_parts(self._loc, kind=(SPILL_KIND, CHECKPOINT_KIND, STAGING_KIND))

    def _start_fresh(self, *, keep_spills: bool = False) -> None:
        if keep_spills:  # adopting spill parts: only an earlier staging and checkpoints go
            remove_parts(
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
            {"shape": np.asarray(self.spec.shape, np.int64)},
            kind=STAGING_KIND,
            meta={"canvas": self._spec_json},
        )
        self._rows.create()
        self._use_written_levels()
        self._write_preview()

    def _adopt(self, parts: Sequence[str | PartInfo]) -> None:
        """Take over spill parts of worker canvases: :meth:`finalize` sums them in."""
        for info in parts_to_adopt(self._loc, parts, self._spec_json):
            self._spills.register(info)
        self._spills.kept = set(self._spills.parts)  # kept until the node is committed

    def _resume(self) -> bool:
        """Restore the newest checkpoint; False when there is none to resume from."""
        parts = self._canvas_parts()
        ckpt = newest_checkpoint(parts)
        if ckpt is None or not any(p.kind == STAGING_KIND for p in parts):
            log.info("no canvas checkpoint in %s: starting from scratch", self._loc.url)
            return False
        differences = spec_differences(ckpt.meta.get("canvas", {}), self._spec_json)
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
        rows_final = int(meta["rows_final"])
        self._frontier = int(meta["frontier"])
        self._batches_done = int(meta["batches_done"])
        self._next_seq = int(meta["next_seq"])
        for name in wanted:
            self._spills.register(by_name[name], from_row=rows_final)
        for refs in self._spills.refs.values():
            refs.sort(key=lambda r: int(r.part.rsplit("-", 1)[1]))
        self._spills.kept = set(wanted)
        self._checkpoint = ckpt
        ranges = {h: checkpoint_value_range(ckpt, h) for h in self.spec.heads}
        self._rows.restore_value_ranges(ranges)
        self._preview.restore(checkpoint_preview(ckpt))
        for info in parts:
            stale_spill = info.kind == SPILL_KIND and info.name not in self._spills.parts
            if stale_spill or (info.kind == CHECKPOINT_KIND and info.name != ckpt.name):
                remove_part(info)
        self._rows.reopen(rows_final)
        pointer = read_preview_pointer(self._staging) or {}
        self._preview_seq = int(pointer.get("seq", -1)) + 1
        self._write_preview()
        log.info(
            "resumed canvas in %s after %d batches (%d rows final, %d spill parts)",
            self._loc.url,
            self._batches_done,
            self.rows_written,
            len(self._spills.parts),
        )
        return True
