"""The package's layers import only downwards, and the core never imports a GUI toolkit.

The contracts live in ``pyproject.toml`` (``[tool.importlinter]``); import-linter checks
every import, including those inside functions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    # import-linter is a test dependency (pip install -e '.[test]'); run it with this Python
    cmd = [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("KEPT") == 3


@pytest.mark.parametrize(
    ("old", "new", "name"),
    [
        ("cachetree.node", "cachetree.tree.node", "Node"),
        ("cachetree.combine", "cachetree.results", "combine"),
        ("cachetree.omezarr", "cachetree.images.ngff", "write_image"),
        ("cachetree.storage", "cachetree.fs.location", "Location"),
    ],
)
def test_old_module_paths_still_work_and_warn(old, new, name):
    code = (
        "import warnings, importlib, json\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        f"    old = importlib.import_module({old!r})\n"
        f"new = importlib.import_module({new!r})\n"
        f"print(json.dumps([old is new, hasattr(old, {name!r}),"
        " [str(w.message) for w in caught if w.category is DeprecationWarning]]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    same, has_name, messages = json.loads(proc.stdout)
    assert same and has_name
    assert any(f"{old} moved to {new}" in m for m in messages)
