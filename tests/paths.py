"""Where things are, for tests in any folder below ``tests/``."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
"""The repository root."""

WORKERS = REPO / "tests" / "workers"
"""Scripts that tests run in subprocesses."""
