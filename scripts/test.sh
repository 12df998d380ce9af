#!/usr/bin/env bash
# Whole test suite: bootstrap (system packages, .venv, extras), ruff, then pytest.
# Extra arguments go to pytest:  bash scripts/test.sh -k storage -x
# GUI tests (marker `gui`) need an X server: pytest-xvfb starts Xvfb for the session,
# so no DISPLAY is needed (QT_QPA_PLATFORM=offscreen is NOT enough for napari's vispy canvas).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

bash scripts/bootstrap.sh

echo "ruff check ." >&2
.venv/bin/ruff check --quiet .

# Keep the user's napari settings/caches and matplotlib config out of the tests.
SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/cachetree-test.XXXXXX")"
trap 'rm -rf "$SCRATCH"' EXIT
export NAPARI_CONFIG="$SCRATCH/napari/settings.yaml"
export NAPARI_CACHE_DIR="$SCRATCH/napari-cache"
export MPLCONFIGDIR="$SCRATCH/matplotlib"
export MPLBACKEND=Agg
# Pin the Qt binding for qtpy and pytest-qt (PyQt6 comes with the `napari` extra).
export QT_API=pyqt6
export PYTEST_QT_API=pyqt6
export PYTHONDONTWRITEBYTECODE=1

rc=0
.venv/bin/python -m pytest "$@" </dev/null || rc=$?
exit "$rc"
