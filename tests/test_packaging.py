"""The wheel ships the napari manifest and the sample data inside the package."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (path,) = out.glob("cachetree-*.whl")
    return zipfile.ZipFile(path)


def test_wheel_contains_manifest_and_sample_data(wheel):
    names = set(wheel.namelist())
    assert {"cachetree/napari.yaml", "cachetree/sample_data/ihc.npz"} <= names
    assert wheel.read("cachetree/napari.yaml") == (REPO / "napari.yaml").read_bytes()
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = wheel.read(entry_points).decode()
    assert "[napari.manifest]" in text and "cachetree = cachetree:napari.yaml" in text
    assert "cachetree = cachetree.cli:main" in text


def test_wheel_manifest_is_valid_for_npe2(wheel, tmp_path):
    from npe2 import PluginManifest

    target = tmp_path / "napari.yaml"
    target.write_bytes(wheel.read("cachetree/napari.yaml"))
    manifest = PluginManifest.from_file(target)
    assert manifest.name == "cachetree"
    assert manifest.contributions.readers and manifest.contributions.widgets
    assert manifest.contributions.sample_data
