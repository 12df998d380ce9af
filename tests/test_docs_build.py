"""The documentation builds with Sphinx, nitpicky and with warnings as errors.

A broken reference (a page, a heading anchor, a ``:class:`` target in a docstring), a page
missing from the table of contents or a docstring Sphinx cannot parse fails this test, which
prints Sphinx's warnings. The build needs the ``docs`` extra (``pip install -e ".[docs]"``,
part of ``.[all]`` that the test command installs); without it the test fails.
"""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _require_sphinx() -> None:
    missing = [m for m in ("sphinx", "myst_parser") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: pip install -e '.[docs]'")


@pytest.fixture(scope="module")
def built_docs(tmp_path_factory) -> Path:
    _require_sphinx()
    out = tmp_path_factory.mktemp("docs")
    cmd = [
        sys.executable,
        "-m",
        "sphinx",
        "-W",  # warnings are errors ...
        "-n",  # ... including every reference that does not resolve
        "--keep-going",  # report all of them, not only the first
        "-E",  # fresh environment: no state from an earlier build
        "-q",
        "-b",
        "html",
        "-d",
        str(out / "doctrees"),
        str(DOCS),
        str(out / "html"),
    ]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    if proc.returncode != 0:
        pytest.fail(
            f"sphinx-build failed (exit {proc.returncode}):\n{proc.stderr}\n{proc.stdout[-3000:]}",
            pytrace=False,
        )
    return out / "html"


def test_docs_build_without_warnings(built_docs):
    pages = {p.stem for p in DOCS.glob("*.md")}
    built = {p.stem for p in built_docs.glob("*.html")}
    assert pages <= built, f"pages not built: {sorted(pages - built)}"


def test_cli_reference_matches_the_parser(built_docs):
    """Every subcommand and option of ``build_parser()`` is on the generated CLI page."""
    import argparse

    from cachetree.cli import build_parser

    text = html.unescape(re.sub(r"<[^>]+>", "", (built_docs / "cli.html").read_text()))
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert subparsers.choices, "the parser has no subcommands"
    for name, sub in subparsers.choices.items():
        assert f"usage: cachetree {name}" in text, f"no help for 'cachetree {name}'"
        for action in sub._actions:
            for option in action.option_strings:
                assert option in text, f"'cachetree {name}' option {option} is missing"
