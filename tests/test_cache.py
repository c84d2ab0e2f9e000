"""The precompiled registry cache: identical to what the code builds, and giving identical numbers."""

import json
import subprocess
import sys

import numpy as np
import pytest

import gainderive as gd
from gainderive import _cache
from gainderive.integrand import integrand
from gainderive.moments import moment_functions


def test_cache_file_matches_a_fresh_build():
    # regenerate with: python tools/make_registry_cache.py
    built = json.loads(json.dumps(_cache.build(), sort_keys=True))
    assert json.loads(_cache.CACHE_FILE.read_text()) == built


@pytest.mark.parametrize("name", sorted(gd.REGISTRY))
def test_cached_and_symbolic_paths_agree(name):
    act, compiled, _ = _cache.lookup(name)
    symbolic = gd.activation(name)
    assert act.breakpoints == symbolic.breakpoints and act.parameter_values == symbolic.parameter_values
    from gainderive.backends import quadrature

    q = np.logspace(-3, 3, 25)
    fast = quadrature.integrate(compiled, q)
    slow = quadrature.integrate(integrand(symbolic, moment_functions(symbolic)[0]), q)
    for a, b in zip(fast, slow):
        assert np.array_equal(a.value, b.value) and np.array_equal(a.error, b.error)


def test_registry_names_answer_without_sympy():
    code = ("import sys, io, contextlib; from gainderive.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()): status = main(['derive', 'relu', '--json'])\n"
            "assert status == 0; print('sympy' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
