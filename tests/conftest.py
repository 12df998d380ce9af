"""Shared pytest setup. Keep GUI imports out of module level: core tests must run without Qt."""

from __future__ import annotations

import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On CI, a skipped ``gui`` test is a failure: the GUI smoke test must really run there."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") and item.get_closest_marker("gui") is not None:
        report.outcome = "failed"
        report.longrepr = f"gui test skipped on CI (CI={os.environ['CI']!r}): {report.longrepr}"


@pytest.fixture
def tree(tmp_path):
    """An empty cache tree in a fresh folder (test modules needing content override it)."""
    from cachetree import CacheTree

    return CacheTree(tmp_path / "root")


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on loopback for the whole session (fsspec's ``s3`` points at it)."""
    from tests.s3server import s3_server

    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_root(s3_endpoint, request):
    """A fresh ``s3://`` bucket URL for one test."""
    import re

    from tests.s3server import make_bucket

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    return make_bucket(f"t-{name}-{abs(hash(request.node.nodeid)) % 10**6}")
