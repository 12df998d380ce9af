"""Per-stage wall time and peak memory of a pipeline run, and the plot of them.

:class:`StageClock` times named stages and samples the resident memory of this process
and all its children (worker processes included) on a background thread, keeping the
peak of the whole run and of each stage.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from ..fs.allocator import set_mmap_threshold

__all__ = [
    "StageClock",
    "StageRecord",
    "return_large_blocks_at_once",
    "stages_figure",
    "tree_cpu_seconds",
    "tree_rss",
]


LARGE_BLOCK = 256 * 2**10
"""Blocks of at least this many bytes are mapped on their own (see
:func:`return_large_blocks_at_once`)."""


def return_large_blocks_at_once(threshold: int = LARGE_BLOCK) -> None:
    """Have glibc map every block of ``threshold`` bytes or more on its own, so that it goes
    back to the system as soon as it is freed (``mallopt(M_MMAP_THRESHOLD)``).

    By default glibc raises that threshold each time a large block is freed, up to 32 MiB;
    arrays below it then come from heaps, one per thread that allocates, which keep what
    they once held. A run full of threads (zarr's I/O, dask's, the canvas' writers) then
    stays resident at the sum of those heaps' high-water marks. Fixing the threshold costs
    a mapping per large array. Affects the whole process; elsewhere than glibc it does
    nothing.
    """
    set_mmap_threshold(threshold)


def tree_rss(process: psutil.Process) -> int:
    """Resident bytes of ``process`` and all its descendants."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a child that just ended
            total += member.memory_info().rss
    return total


def tree_cpu_seconds(process: psutil.Process) -> float:
    """CPU seconds (user and system) of ``process``, its running and its finished children."""
    times = process.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child_times = child.cpu_times()
            total += child_times.user + child_times.system
    return total


@dataclass
class StageRecord:
    """One stage of a run: its name, what the cache did, wall and CPU time, peak RSS, pixels.

    CPU seconds (of this process and its children) say how much work the stage was,
    whatever else the machine was doing.
    """

    name: str
    status: str = ""
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss: int = 0
    megapixels: float = 0.0

    @property
    def throughput(self) -> float:
        """Megapixels per second (0 when nothing was computed)."""
        return self.megapixels / self.seconds if self.seconds > 0 else 0.0


@dataclass
class StageClock:
    """Times stages and tracks the peak RSS of the process tree (sampled every ``interval`` s)."""

    interval: float = 0.05
    stages: list[StageRecord] = field(default_factory=list)
    peak_rss: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._current: StageRecord | None = None
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._watch, name="stage-clock", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def _sample(self) -> None:
        rss = tree_rss(self._process)
        self.peak_rss = max(self.peak_rss, rss)
        self.samples.append((time.perf_counter() - self._start, rss))
        current = self._current
        if current is not None:
            current.peak_rss = max(current.peak_rss, rss)

    @contextmanager
    def stage(self, name: str, megapixels: float = 0.0) -> Iterator[StageRecord]:
        """Time the body as stage ``name``; the caller sets the record's ``status``."""
        record = StageRecord(name, megapixels=megapixels)
        self.stages.append(record)
        self._current = record
        self._sample()
        start, cpu = time.perf_counter(), tree_cpu_seconds(self._process)
        try:
            yield record
        finally:
            record.seconds = time.perf_counter() - start
            record.cpu_seconds = tree_cpu_seconds(self._process) - cpu
            self._sample()
            self._current = None

    @property
    def total_seconds(self) -> float:
        """Wall time since the clock started."""
        return time.perf_counter() - self._start

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join()
        self._sample()

    def to_json(self) -> dict[str, Any]:
        """Stages, totals and the peak RSS as JSON-ready values."""
        return {
            "stages": [{**asdict(s), "megapixels_per_s": s.throughput} for s in self.stages],
            "total_seconds": self.total_seconds,
            "cpu_seconds": tree_cpu_seconds(self._process),
            "peak_rss": self.peak_rss,
        }


def stages_figure(clock: StageClock, title: str) -> Any:
    """A matplotlib figure: time per stage, and the RSS of the process tree over the run."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.2), layout="constrained")
    bars, memory = fig.subplots(1, 2)
    names = [s.name for s in clock.stages]
    bars.barh(names[::-1], [s.seconds for s in clock.stages][::-1], color="tab:blue")
    bars.set_xlabel("seconds")
    bars.set_title("time per stage")
    if clock.samples:
        t, rss = zip(*clock.samples, strict=True)
        memory.plot(t, [r / 2**30 for r in rss], color="tab:red")
    memory.set_xlabel("seconds since start")
    memory.set_ylabel("GiB")
    memory.set_title(f"RSS with children (peak {clock.peak_rss / 2**30:.2f} GiB)")
    fig.suptitle(title)
    return fig
