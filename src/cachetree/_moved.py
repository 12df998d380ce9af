"""Old module paths that moved into the layered subpackages keep working for one release.

``cachetree.node`` is now :mod:`cachetree.tree.node`, and so on: each old module is a
one-line alias that puts the new module in its place (same object, so attributes, private
names and monkeypatching behave as before) and warns once.
"""

from __future__ import annotations

import importlib
import sys
import warnings


def alias(old: str, new: str) -> None:
    """Make the module ``old`` the very module ``new`` (call it from ``old`` itself)."""
    warnings.warn(
        f"{old} moved to {new}; the old path works until the next release",
        DeprecationWarning,
        stacklevel=3,
    )
    sys.modules[old] = importlib.import_module(new)
