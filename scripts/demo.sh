#!/usr/bin/env bash
# Demo: builds a cache tree from sample data and prints it; opens napari when a display exists.
# Extra arguments go to `cachetree demo`.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

bash scripts/bootstrap.sh
exec .venv/bin/cachetree demo "$@"
