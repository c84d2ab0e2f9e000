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


# -- optional frameworks (torch, jax, flax, keras, pandas, matplotlib) ------------------------------------------------
# Their tests start with pytest.importorskip, so the default suite, which installs none of them, skips them.  The
# extras stage of CI (.ci/run) installs them and sets GAINDERIVE_REQUIRE_EXTRAS=1: there a missing framework is a
# failure, never a silent skip, so that stage cannot pass without running the framework tests.
os.environ.setdefault("KERAS_BACKEND", "jax")  # Keras 3 defaults to TensorFlow, which no extra installs

if os.environ.get("GAINDERIVE_REQUIRE_EXTRAS") == "1":
    import importlib

    def _import_or_fail(modname: str, minversion: str | None = None, reason: str | None = None, **_: object):
        module = importlib.import_module(modname)  # ImportError: the test errors, it is not skipped
        if minversion is not None:
            from packaging.version import Version

            version = getattr(module, "__version__", "0")
            assert Version(version) >= Version(minversion), f"{modname} {version} < {minversion}"
        return module

    pytest.importorskip = _import_or_fail
