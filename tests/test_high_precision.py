"""High-precision backend against the independent 40-digit references, and the references themselves."""

import json
import pathlib
import subprocess
import sys

import mpmath as mp
import pytest

import gainderive as gd

ROOT = pathlib.Path(__file__).resolve().parents[1]
REFERENCES = json.loads((ROOT / "tests" / "data" / "references.json").read_text())
MOMENTS = ("mean", "second_moment", "derivative_second_moment")


def _compare(record, digits=35, agree=30):
    """Agreement to `agree` digits relative to sqrt(E f^2) for the mean, to the value otherwise."""
    with mp.workdps(digits + 10):
        m = gd.moments(record["name"], record["q"], method="high_precision", digits=digits, **record["params"])
        second = mp.mpf(record["second_moment"])
        for name in MOMENTS:
            exact = mp.mpf(record[name])
            scale = mp.sqrt(second) if name == "mean" else abs(exact)
            est = getattr(m, name)
            assert abs(est.value - exact) <= mp.mpf(10) ** -agree * scale, (name, est.value, exact)
            # the reported error bounds the true error (up to the references' own 40-digit rounding)
            assert abs(est.value - exact) <= est.error + mp.mpf(10) ** -39 * scale, name


FAST = [r for r in REFERENCES if r["q"] in ("0.01", "10") and r["name"] in ("elu", "gelu", "hardswish", "tanh")]


@pytest.mark.parametrize("record", FAST, ids=[f"{r['name']}-q{r['q']}" for r in FAST])
def test_high_precision_agrees_to_30_digits(record):
    _compare(record)


SWEEP = [r for r in REFERENCES if r["q"] in ("0.001", "1", "1000")]


@pytest.mark.slow
@pytest.mark.parametrize("record", SWEEP, ids=[f"{r['name']}{r['params'] or ''}-q{r['q']}" for r in SWEEP])
def test_high_precision_sweep(record):
    _compare(record)


@pytest.mark.slow
def test_references_recompute():
    # the generator recomputes 12 random records from their definitions and compares to 30 digits
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "make_references.py"), "--check", "12"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
