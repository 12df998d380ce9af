"""Run the whole-slide demo at a small size, slowly, so that tests can kill it mid-stage.

Usage: python wsi_demo.py ROOT PAUSE_SECONDS

Every model batch and every density strip is followed by a pause (through the progress
bar the demo accepts), so a kill can land while the canvas or the workers are busy.
"""

from __future__ import annotations

import sys
import time

from cachetree.demo.wsi import WsiParams, run_wsi

SMALL = WsiParams(
    size=1024,
    patch=128,
    stride=96,
    batch=8,
    block=256,
    region=128,
    strip=256,
    checkpoint_rows=2,
)
"""Several canvas checkpoints, labelling blocks and density strips at 1024 px."""


def slow_bar(pause: float):
    """A progress-bar stand-in that pauses after each item."""

    def bar(iterable=None, **_):
        for item in iterable:
            yield item
            time.sleep(pause)

    return bar


def main(root: str, pause: float) -> None:
    run_wsi(
        root,
        SMALL,
        workers=2,
        progress=slow_bar(pause),
        report=lambda line: print(line, flush=True),
    )


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
