"""Sphinx configuration of the cachetree documentation.

Build with ``sphinx-build -W -n --keep-going -b html docs docs/_build/html`` (the ``docs``
extra installs what it needs). The build needs no network: no intersphinx inventories are
downloaded, so references to third-party types cannot be resolved and are listed in
``nitpick_ignore`` / ``nitpick_ignore_regex`` below. Our own names must always resolve.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

from sphinx.ext.napoleon.docstring import GoogleDocstring

import cachetree

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))  # local extensions

project = "cachetree"
author = "the cachetree developers"
copyright = "the cachetree developers"
release = cachetree.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "cachetree_cli",  # docs/_ext/cachetree_cli.py: the CLI reference from build_parser()
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]

# -- MyST ------------------------------------------------------------------------------
myst_heading_anchors = 3  # [text](page.md#a-heading) links work for headings up to ###

# -- autodoc / napoleon ----------------------------------------------------------------
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
    "member-order": "bysource",
}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
# Types of documented attributes are in the signatures (dataclasses) or the text; taking
# them from annotations renders nested generics such as dict[str, Any] as broken links.
napoleon_attr_annotations = False

# -- HTML ------------------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"cachetree {release}"
html_static_path: list[str] = []

# -- nitpicky references ---------------------------------------------------------------
nitpicky = True

# Names outside cachetree that appear in signatures and docstrings (``os.PathLike``,
# ``numpy.ndarray``, ``dask.array.Array``, ``zarr.Array``, ...). They would resolve through
# intersphinx inventories, which need the network, so they are accepted unresolved: every
# module of the standard library, and the third-party packages below. cachetree's own names
# are never listed: a broken reference to our code must fail the build.
_THIRD_PARTY = (
    "dask",
    "distributed",
    "fsspec",
    "magicgui",
    "matplotlib",
    "napari",
    "numcodecs",
    "numpy",
    "psutil",
    "qtpy",
    "s3fs",
    "superqt",
    "zarr",
)
_EXTERNAL = "|".join(sorted({*sys.stdlib_module_names, *_THIRD_PARTY}))
nitpick_ignore_regex: list[tuple[str, str]] = [
    (r"py:(class|obj|func|meth|attr|exc|data|mod)", rf"(?:{_EXTERNAL})(?:\..+)?"),
]


# -- attribute and property docstrings --------------------------------------------------
# napoleon reads the first line of an attribute or property docstring as "type: text" when it
# holds a colon ("Counters: spill events, ..." would render with the type "Counters"). Our
# docstrings never give types that way (types come from the annotations) and often use a
# colon in prose, so the whole first line is kept as description.
def _prose_inline_attribute(self: GoogleDocstring) -> tuple[str, list[str]]:
    lines = [self._lines.next(), *self._dedent(self._consume_to_end())]
    return "", self.__class__(lines, self._config).lines()


GoogleDocstring._consume_inline_attribute = _prose_inline_attribute  # type: ignore[method-assign]


# -- dataclass signatures ---------------------------------------------------------------
# A dataclass field with default_factory shows as "= <factory>", which is not Python: Sphinx
# then cannot parse the signature and links "dict[str" as a type. Show the factory call.
def _dataclass_factories(
    app: Any, what: str, name: str, obj: Any, options: Any, signature: str | None, annotation: Any
) -> tuple[str, Any] | None:
    if what != "class" or not signature or "<factory>" not in signature:
        return None
    if not dataclasses.is_dataclass(obj):
        return None
    for f in dataclasses.fields(obj):
        if f.default_factory is not dataclasses.MISSING:
            call = f"{getattr(f.default_factory, '__qualname__', 'factory')}()"
            pattern = rf"(\b{f.name}: [^=]*=\s*)<factory>"
            signature = re.sub(pattern, rf"\g<1>{call}", signature, count=1)
    return signature, annotation


# -- base classes ----------------------------------------------------------------------
# "Bases: object" says nothing: only real base classes are listed.
def _drop_object_base(app: Any, name: str, obj: Any, options: Any, bases: list[Any]) -> None:
    bases[:] = [base for base in bases if base is not object]


def setup(app: Any) -> None:
    app.connect("autodoc-process-signature", _dataclass_factories)
    app.connect("autodoc-process-bases", _drop_object_base)
