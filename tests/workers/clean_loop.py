"""Run clean over a tree again and again until a stop file appears.

usage: clean_loop.py ROOT STOPFILE api|cli
Prints how many passes ran and how many entries were deleted; after each pass, writes the
passes so far into STOPFILE.passes (see churn_nodes.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cachetree import CacheTree
from cachetree.cli import main as cli_main


def main(root: str, stop: str, mode: str) -> None:
    passes = deleted = 0
    while not os.path.exists(stop):
        if mode == "api":
            plan = CacheTree(root).clean(dry_run=False)
            deleted += len(plan) - len(plan.skipped)
        else:
            rc = cli_main(["clean", root, "--yes", "-q"])
            if rc != 0:
                raise SystemExit(f"cachetree clean exited {rc}")
        passes += 1
        Path(f"{stop}.passes.tmp").write_text(str(passes))
        os.replace(f"{stop}.passes.tmp", f"{stop}.passes")
    print(f"passes={passes} deleted={deleted}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
