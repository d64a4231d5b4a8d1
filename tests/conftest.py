"""Shared fixtures.

Tests that need real data take the ``test_data_root`` fixture: the folder named by ``LONGTAIL_TEST_DATA``,
holding ``cifar-10-batches-bin/`` and ``tiny-imagenet-200/`` (restored by ``.ci/run``). When the data is
missing such a test is skipped on a developer machine, but FAILS when ``CI`` or ``LONGTAIL_REQUIRE_DATA``
is set, so CI can never pass by silently skipping them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _require_data() -> bool:
    return any(os.environ.get(k, "").lower() not in ("", "0", "false") for k in ("CI", "LONGTAIL_REQUIRE_DATA"))


@pytest.fixture(scope="session")
def test_data_root() -> Path:
    root = os.environ.get("LONGTAIL_TEST_DATA")
    problem = None
    if not root:
        problem = "LONGTAIL_TEST_DATA is not set"
    elif not Path(root).is_dir():
        problem = f"LONGTAIL_TEST_DATA={root} is not a folder"
    if problem:
        msg = f"{problem}; restore the test data as .ci/run does and point LONGTAIL_TEST_DATA at it"
        if _require_data():
            pytest.fail(msg)
        pytest.skip(msg)
    return Path(root)


def require(path: Path) -> Path:
    """Fail (CI) or skip (local) when a file the test needs is absent under the data root."""
    if not path.exists():
        msg = f"test data missing: {path}"
        if _require_data():
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(autouse=True)
def _no_user_data_env(monkeypatch, tmp_path_factory):
    """Keep tests away from the user's ~/.cache/longtail and $LONGTAIL_DATA (caches go to the session's
    temporary folder)."""
    monkeypatch.setenv("LONGTAIL_DATA", str(tmp_path_factory.getbasetemp() / "no-data-here"))
    monkeypatch.setenv("LONGTAIL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny-tensor tests: on a busy 2-core machine, more threads only
    add contention (about 10x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
