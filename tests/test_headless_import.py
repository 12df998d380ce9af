"""The core library must import without pulling in any GUI stack."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

GUI_PREFIXES = (
    "qtpy",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "PySide6",
    "napari",
    "magicgui",
    "superqt",
    "vispy",
)

_SCRIPT = textwrap.dedent(
    """
    import json, pkgutil, sys
    import cachetree

    imported = ["cachetree"]
    errors = []

    def skip(name):
        if name == "cachetree.napari" or name.startswith("cachetree.napari."):
            return True
        return name.rsplit(".", 1)[-1] == "__main__"  # importing it would run the CLI

    # pkgutil.walk_packages would import cachetree.napari to look inside it: walk by hand.
    todo = [(cachetree.__path__, "cachetree.")]
    while todo:
        path, prefix = todo.pop()
        for info in pkgutil.iter_modules(path, prefix):
            if skip(info.name):
                continue
            try:
                mod = __import__(info.name, fromlist=["_"])
            except Exception as exc:
                errors.append(f"{info.name}: {exc!r}")
                continue
            imported.append(info.name)
            if info.ispkg:
                todo.append((mod.__path__, info.name + "."))

    gui = sorted(m for m in sys.modules if m.startswith(tuple(json.loads(sys.argv[1]))))
    print(json.dumps({"imported": imported, "errors": errors, "gui": gui}))
    """
)


def test_core_imports_without_gui_modules():
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(GUI_PREFIXES)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not result["errors"], "core modules failed to import:\n" + "\n".join(result["errors"])
    assert "cachetree" in result["imported"]
    assert result["gui"] == [], (
        f"importing {result['imported']} pulled in GUI modules: {result['gui']}"
    )


def test_import_cachetree_is_light_and_exports_lazily():
    """``import cachetree`` loads neither zarr nor dask; the main API names still resolve."""
    script = textwrap.dedent(
        """
        import json, sys
        import cachetree
        heavy = sorted(m for m in ("zarr", "dask", "dask.array") if m in sys.modules)
        api = [n for n in cachetree.__all__ if n != "__version__"]
        names = {n: getattr(cachetree, n).__module__ for n in api}
        print(json.dumps({"heavy": heavy, "names": names}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    names = result["names"]
    assert names["Canvas"].startswith("cachetree.canvas")
    assert all(names[n].startswith("cachetree.results.") for n in ("add_part", "merge", "split"))
    assert (
        names["KeyedStore"] == "cachetree.tree.keyed"
        and names["AsyncWriter"] == "cachetree.fs.writer"
    )
