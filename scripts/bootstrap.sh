#!/usr/bin/env bash
# Idempotent setup for a fresh Debian 12 + Python 3.11 machine (root, no display):
#   1. the Debian packages napari/Qt6 needs under Xvfb (only when something is missing),
#   2. a virtualenv at .venv (python3 -m venv),
#   3. pip install -e ".[all]" (only when pyproject.toml is newer than the stamp file),
#   4. TIAToolbox 2.1.3 for tests/test_compat.py (only when it is missing).
# Quiet on success; on failure prints the tail of the failing step's log and exits non-zero.
#
# Knobs:  PYTHON=python3.11            interpreter used to create .venv
#         CACHETREE_SKIP_SYSTEM_DEPS=1 do not check/install Debian packages
#         CACHETREE_FORCE_INSTALL=1    re-run pip install even if the stamp is fresh
#         CACHETREE_SKIP_TORCH=1       do not install PyTorch (the .pt writer tests then skip)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

VENV="$REPO/.venv"
STAMP="$VENV/.cachetree-installed"
PYTHON="${PYTHON:-python3}"
LOGDIR="$(mktemp -d "${TMPDIR:-/tmp}/cachetree-bootstrap.XXXXXX")"
trap 'rm -rf "$LOGDIR"' EXIT
START=$SECONDS
DID_WORK=0

say() { printf 'bootstrap: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# Run a command with its output sent to a log; on failure show the (filtered) log tail.
# pip prints one "WARNING: Location 'file:///opt/...' is ignored" line per package on
# some machines; those are noise and are dropped from what we show.
run_logged() {
    local name="$1"; shift
    local log="$LOGDIR/$name.log"
    local rc=0
    "$@" >"$log" 2>&1 || rc=$?
    if ((rc != 0)); then
        say "ERROR: step '$name' failed (exit $rc): $*"
        grep -v -E "^WARNING: Location '.*' is ignored" "$log" | tail -n 80 >&2 || true
        exit "$rc"
    fi
    DID_WORK=1
}

# --------------------------------------------------------------------------- system packages
SYSTEM_PACKAGES=(
    xvfb xauth
    libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-xkb1 libxkbcommon-x11-0
    libxcb-shape0 libxcb-randr0 libxcb-render-util0 libxcb-image0 libxcb-cursor0
    libdbus-1-3 libgl1-mesa-dri libegl1 libfontconfig1 libglib2.0-0
)

install_system_packages() {
    if [[ "${CACHETREE_SKIP_SYSTEM_DEPS:-0}" == 1 ]]; then
        return 0
    fi
    if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
        say "not a Debian-like system: skipping system packages (GUI tests need Xvfb + xcb libs)"
        return 0
    fi
    local missing=() pkg
    for pkg in "${SYSTEM_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    if ! command -v Xvfb >/dev/null 2>&1 && [[ ! " ${missing[*]} " == *" xvfb "* ]]; then
        missing+=(xvfb)
    fi
    if ! command -v xauth >/dev/null 2>&1 && [[ ! " ${missing[*]} " == *" xauth "* ]]; then
        missing+=(xauth)
    fi
    ((${#missing[@]} == 0)) && return 0

    local sudo=()
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to install: ${missing[*]}"
        sudo=(sudo -n)
    fi
    say "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    run_logged apt-update "${sudo[@]}" apt-get update -q
    run_logged apt-install "${sudo[@]}" apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
    command -v Xvfb >/dev/null 2>&1 || die "Xvfb still not on PATH after installing xvfb"
}

# --------------------------------------------------------------------------- virtualenv
make_venv() {
    if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
        return 0
    fi
    command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' not found (set PYTHON=...)"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PYTHON is $("$PYTHON" -V 2>&1); cachetree needs Python >= 3.11"
    if [[ -e "$VENV" ]]; then
        say "removing broken .venv"
        rm -rf "$VENV"
    fi
    say "creating .venv with $("$PYTHON" -V 2>&1)"
    run_logged venv "$PYTHON" -m venv "$VENV"
}

# --------------------------------------------------------------------------- pip install
needs_install() {
    [[ "${CACHETREE_FORCE_INSTALL:-0}" == 1 ]] && return 0
    [[ -f "$STAMP" ]] || return 0
    [[ "$STAMP" -nt pyproject.toml ]] || return 0
    # The stamp can outlive the install (e.g. someone ran pip uninstall): cheap sanity check.
    "$VENV/bin/python" -c 'import cachetree' >/dev/null 2>&1 || return 0
    return 1
}

pip_install() {
    needs_install || return 0
    rm -f "$STAMP"
    local t0=$SECONDS
    say "installing cachetree[all] into .venv (first run takes a few minutes)"
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
    run_logged pip-upgrade "$VENV/bin/python" -m pip install -q --upgrade pip
    run_logged pip-install "$VENV/bin/python" -m pip install -q -e ".[all]"
    # PyTorch (optional for users) lets the tests cover the writer's .pt format. Pinned to the
    # CPU build 2.13.0: an unpinned torch pulls several GB of GPU wheels.
    if [[ "${CACHETREE_SKIP_TORCH:-0}" != 1 ]]; then
        run_logged pip-torch "$VENV/bin/python" -m pip install -q "torch==2.13.0"
    fi
    touch "$STAMP"
    say "pip install done in $((SECONDS - t0))s"
}

# --------------------------------------------------------------------------- tiatoolbox
# tests/test_compat.py runs TIAToolbox 2.1.3's own MultiTaskSegmentor.infer_wsi. Its pins
# (torch<2.13, numpy<2.4.4, dask<2026.7.1, ...) cannot be met next to our torch 2.13.0, so it
# is installed without dependencies, plus the light ones its engine module's imports need.
# The heavy rest (model zoos, native slide readers) is stubbed in tests/tiatoolbox_loop.py.
# imagecodecs is real although only the slide readers use it: tifffile, imported on the way,
# would otherwise keep a stub of it for the rest of the test session.
TIATOOLBOX_DEPS=(shapely joblib defusedxml universal-pathlib huggingface_hub scikit-learn imagecodecs)

install_tiatoolbox() {
    if "$VENV/bin/python" -c '
import importlib.metadata as m
import defusedxml, huggingface_hub, imagecodecs, joblib, shapely, sklearn, upath
assert m.version("tiatoolbox") == "2.1.3"' >/dev/null 2>&1; then
        return 0
    fi
    say "installing tiatoolbox 2.1.3 (without its pinned dependencies) for the compat tests"
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
    run_logged pip-tiatoolbox "$VENV/bin/python" -m pip install -q --no-deps "tiatoolbox==2.1.3"
    run_logged pip-tiatoolbox-deps "$VENV/bin/python" -m pip install -q "${TIATOOLBOX_DEPS[@]}"
}

install_system_packages
make_venv
pip_install
install_tiatoolbox
if ((DID_WORK)); then
    say "ready ($((SECONDS - START))s)"
fi
