"""The shipped Gauss-Kronrod rule: exact where theory says, and what the generator makes."""

import importlib.util
import pathlib

import mpmath as mp
import numpy as np

from gainderive.backends import _gauss_kronrod as gk

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_exact_on_polynomials():
    # K21 is exact to degree 3n+1 = 31, G10 to degree 2n-1 = 19 (Kronrod 1965); int_{-1}^{1} x^k = 2/(k+1), k even
    x = np.array(gk.KRONROD_NODES)
    wk = np.array(gk.KRONROD_WEIGHTS)
    xg = x[list(gk.GAUSS_INDEX)]
    wg = np.array(gk.GAUSS_WEIGHTS)
    for k in range(32):
        exact = 0.0 if k % 2 else 2.0 / (k + 1)
        assert abs(wk @ x**k - exact) < 1e-15
        if k < 20:
            assert abs(wg @ xg**k - exact) < 1e-15
    # and not beyond: the next even degree is not integrated exactly (the rule is what it claims, no more)
    assert abs(wg @ xg**20 - 2 / 21) > 1e-8


def test_shipped_constants_match_the_generator():
    spec = importlib.util.spec_from_file_location("make_gk", ROOT / "tools" / "make_gauss_kronrod.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    nodes, wk, gnodes, wg = module.gauss_kronrod(10, dps=40)
    assert np.allclose(np.array([float(v) for v in nodes]), gk.KRONROD_NODES, rtol=0, atol=1e-18)
    assert np.allclose(np.array([float(v) for v in wk]), gk.KRONROD_WEIGHTS, rtol=0, atol=1e-18)
    assert np.allclose(np.array([float(v) for v in wg]), gk.GAUSS_WEIGHTS, rtol=0, atol=1e-18)
    # the Gauss nodes are the Legendre roots: P_10 vanishes there
    with mp.workdps(40):
        for g in gnodes:
            assert abs(mp.legendre(10, g)) < mp.mpf(10) ** -30
