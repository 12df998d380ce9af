"""keep_freed_memory: freed arrays are reused inside (no fresh pages to fault in), and
everything goes back to the system on leaving. Measured in a child process started as
dask's nanny starts its workers (``MALLOC_TRIM_THRESHOLD_=65536``), by counting page faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CHILD = """
import json, resource, threading
import numpy as np, psutil
from cachetree.fs.allocator import keep_freed_memory, set_mmap_threshold

set_mmap_threshold(64 * 2**20)  # 32 MiB arrays come from the heap, as on a cluster worker
MiB = 2**20

def faults(rounds=8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        a = np.ones(32 * MiB // 4, np.float32)  # touches every page
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

out = {"outside": faults()}
rss = psutil.Process().memory_info().rss
with keep_freed_memory(256 * MiB):
    with keep_freed_memory(256 * MiB):  # nested, as two tasks on one worker
        pass
    out["inside"] = faults()
    out["rss_inside"] = psutil.Process().memory_info().rss - rss
out["rss_after"] = psutil.Process().memory_info().rss - rss
out["after"] = faults()
print(json.dumps(out))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_arrays_are_reused_inside_and_given_back_after():
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, check=True
    )
    got = json.loads(done.stdout.strip().splitlines()[-1])
    # 8 rounds of 32 MiB: outside every round faults its pages in afresh, inside only the
    # first (the heap keeps the freed array for the next)
    assert got["inside"] * 4 < got["outside"], got
    assert got["rss_inside"] >= 24 * 2**20, got  # the freed array stayed in the process
    assert got["rss_after"] < 8 * 2**20, got  # and went back on leaving
    assert got["after"] > got["inside"] * 4, got  # the trim threshold is back as it was
