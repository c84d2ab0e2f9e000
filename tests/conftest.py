"""Test-suite configuration: the disk cache of compiled formulas points at a temporary directory.

Without this every run would write compiled user formulas to ~/.cache/gainderive, and a test that replaces the
closed-form verification could read an entry an earlier run stored.  Set here, at import, so that child
processes started by CLI tests inherit it too.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_CACHE = tempfile.mkdtemp(prefix="gainderive-test-cache-")
os.environ["GAINDERIVE_CACHE_DIR"] = _CACHE
os.environ.pop("GAINDERIVE_NO_CACHE", None)


@pytest.fixture(autouse=True, scope="session")
def _remove_the_test_cache():
    yield
    shutil.rmtree(_CACHE, ignore_errors=True)
