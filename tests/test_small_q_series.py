"""Small-q series of the verified closed forms: exact cancellation, honest bars, no quadrature below q_max.

ELU's forms cancel at small q (E f = q/4 + ... from terms of size sqrt(q)), so their own error bars leave q < 0.1
to quadrature.  Each such form gets a Taylor polynomial in s = sqrt(q) derived exactly at verification
(:func:`gainderive.verify.small_q_series`), evaluated by Horner's rule for q <= q_max with a bar that counts the
truncation, Horner's rounding and the coefficients' rounding.

References (mpmath, 40 digits plus the digits the hand form itself loses to cancellation at small q, so exact for
this purpose), z ~ N(0, q), s = sqrt q, Phi the standard normal cdf, from E[e^{tz} 1{z < 0}] = e^{t^2 q/2}
Phi(-t s), E[z 1{z > 0}] = s/sqrt(2 pi), E[z^2 1{z > 0}] = q/2:
  ELU alpha:  E f = s/sqrt(2 pi) + alpha (e^{q/2} Phi(-s) - 1/2),
              E f^2 = q/2 + alpha^2 (e^{2q} Phi(-2s) - 2 e^{q/2} Phi(-s) + 1/2),
              E f'^2 = 1/2 + alpha^2 e^{2q} Phi(-2s);
  CELU alpha = 1 is ELU; SELU = lambda ELU(alpha) with Klambauer et al. 2017 (eqs. 14-15) constants;
  GELU (tests/test_closed_form_evaluation.py, Stein's lemma and the orthant probability), theta = atan(q/sqrt(1+2q)):
      E f = q/sqrt(2 pi (1 + q)),  E f^2 = q/4 + q theta/(2 pi) + q^2/(pi (1 + q) sqrt(1 + 2q)),
      E f'^2 = 1/4 + theta/(2 pi) + q/(pi (1 + q) sqrt(1 + 2q)) + q/(2 pi (1 + 2q)^{3/2});
  Var f = E f^2 - (E f)^2.
Every comparison is |value - reference| <= error bar + 2 ulp(reference) (the reference's own rounding to a double).
"""

import importlib
import json
import math
import warnings

import mpmath as mp
import numpy as np
import pytest
from closed_forms import elu_like, gelu

import gainderive as gd
from gainderive import compile as compile_module
from gainderive import verify
from gainderive._cache import CACHE_FILE
from gainderive.backends import quadrature
from gainderive.closed_form import SmallQSeries, evaluate_series
from gainderive.registry import activation

moments_module = importlib.import_module("gainderive.moments")
MOMENTS = ("mean", "second_moment", "derivative_second_moment", "variance")
EPS = np.finfo(float).eps
SELU_ALPHA = "1.6732632423543772848170429916717"  # Klambauer et al. 2017, eq. 14
SELU_SCALE = "1.0507009873554804934193349852946"  # eq. 15
USER = "where(x > 0, x, a*expm1(x))"  # ELU with alpha = a, typed as a formula with a parameter


def _reference(name, q):
    """(E f, E f^2, E f'^2, Var f) at the float q, by hand, as mpf."""
    lost = int(max(0.0, -math.log10(q))) + 5  # the ELU forms cancel terms ~sqrt(q) down to ~q: digits lost
    with mp.workdps(40 + lost):
        x = mp.mpf(q)
        if name in ("elu", "celu"):
            m = elu_like(x, mp.mpf(1))
        elif name == "selu":
            m = elu_like(x, mp.mpf(SELU_ALPHA), scale=mp.mpf(SELU_SCALE))
        elif name == "user":
            m = elu_like(x, mp.mpf(1) / 2)
        else:
            m = gelu(x)
        return (*m, m[1] - m[0] ** 2)


CASES = {"elu": ("elu", {}), "celu": ("celu", {}), "selu": ("selu", {}), "user": (USER, {"a": 0.5})}


@pytest.fixture
def no_disk_cache(monkeypatch):
    monkeypatch.setenv("GAINDERIVE_NO_CACHE", "1")


def _closed(spec, params):
    return moments_module._closed_part(moments_module._prepare(spec, "auto", params))


def _no_quadrature(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("quadrature ran where the closed forms and their series cover every q")

    monkeypatch.setattr(quadrature, "integrate", refuse)


def _assert_within_bars(name, m, qs):
    for i, q in enumerate(qs):
        ref = _reference(name, float(q))
        for k, moment in enumerate(MOMENTS):
            est = getattr(m, moment)
            value = float(np.asarray(est.value).reshape(-1)[i])
            error = float(np.asarray(est.error).reshape(-1)[i])
            off = float(abs(mp.mpf(value) - ref[k]))
            assert off <= error + 2 * EPS * abs(float(ref[k])), (name, moment, q, value, float(ref[k]), error)


@pytest.mark.parametrize("name", list(CASES))
def test_series_answer_below_q_max_within_their_bars_without_quadrature(name, no_disk_cache, monkeypatch):
    spec, params = CASES[name]
    closed = _closed(spec, params)
    assert {"mean", "second_moment", "variance"} <= set(closed.series), "these forms cancel at small q"
    q_max = max(series.q_max for series in closed.series.values())
    qs = np.logspace(-12, math.log10(q_max), 40)
    _no_quadrature(monkeypatch)
    m = gd.moments(spec, qs, **params)
    assert all(getattr(m, moment).method == "closed_form" for moment in MOMENTS)
    _assert_within_bars(name, m, qs)
    for q in (1e-9, float(qs[-5])):  # the one-q path (Python floats) answers from the same series
        one = gd.moments(spec, q, **params)
        assert all(getattr(one, moment).method == "closed_form" for moment in MOMENTS)
        _assert_within_bars(name, one, [q])


def test_elu_from_1e_300_to_the_forms_without_quadrature(monkeypatch):
    # below q ~ 0.1 ELU was quadrature's; now every q from the bottom of the double range is a closed form, and the
    # bars are tight: within 1e-13 of the value (RANGE_RTOL), where quadrature's were ~1e-14 to 1e-13
    qs = np.concatenate([10.0 ** np.arange(-300.0, -12.0, 24.0), np.logspace(-3, 0, 13)])
    _no_quadrature(monkeypatch)
    m = gd.moments("elu", qs)
    _assert_within_bars("elu", m, qs)
    for moment in MOMENTS:
        est = getattr(m, moment)
        assert est.method == "closed_form" and np.all(est.error <= 1e-13 * np.abs(est.value)), moment


def test_the_cancelling_terms_cancel_exactly_in_the_coefficients():
    # ELU's mean = q/4 + O(q^{3/2}) by hand (e^{q/2} Phi(-s) = 1/2 - s/sqrt(2 pi) + q/4 + O(s^3)): the stored
    # coefficients of s^0 and s^1 are exactly 0 and that of s^2 is 1/4, so E f at q = 1e-300 is 2.5e-301, not 0
    series = _closed("elu", {}).series
    assert series["mean"].coefficients[:3] == (0.0, 0.0, 0.25)
    # E f^2 = q + O(q^{3/2}) (f ~ z near 0) and Var f = E f^2 - (E f)^2 likewise, by the same expansion
    assert series["second_moment"].coefficients[:3] == (0.0, 0.0, 1.0)
    assert series["variance"].coefficients[:3] == (0.0, 0.0, 1.0)
    value, error = evaluate_series(series["mean"], 1e-300)
    assert abs(value - 2.5e-301) <= error + 2 * EPS * 2.5e-301


def test_the_registry_cache_holds_the_series_as_lists_of_floats_that_survive_json():
    stored = json.loads(CACHE_FILE.read_text())["activations"]["elu"]["closed_forms"]
    for moment in ("mean", "second_moment", "variance"):
        data = stored[moment]["series"]
        assert all(type(c) is float for c in data["coefficients"]) and type(data["q_max"]) is float
        series = SmallQSeries.from_data(json.loads(json.dumps(data)))
        assert series == SmallQSeries.from_data(data)
        # what the registry cache holds is what the derivation gives, bit for bit (a test in test_cache.py checks
        # the whole file; this one names the series)
    derived = verify.small_q_series(activation("elu"), _closed("elu", {}).ranges)
    for moment, series in derived.items():
        assert SmallQSeries.from_data(json.loads(json.dumps(series.to_data()))) == series
        assert _closed("elu", {}).series[moment] == series


def test_the_disk_cache_keeps_the_series(tmp_path, monkeypatch):
    monkeypatch.setenv("GAINDERIVE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("GAINDERIVE_NO_CACHE", raising=False)
    compile_module.clear_compile_cache()
    first = _closed(USER, {"a": 0.5}).series
    assert list(tmp_path.iterdir()), "the user formula was stored"
    compile_module.clear_compile_cache()
    prepared = compile_module._disk_prepared(USER, {"a": 0.5})
    assert prepared is not None and prepared.compiled.closed is not None
    assert dict(prepared.compiled.closed.series) == dict(first) and first
    compile_module.clear_compile_cache()


def test_a_series_with_a_wrong_coefficient_is_rejected_at_verification(monkeypatch):
    # a coefficient off by one part in a million moves the value at q_max by far more than the bar: the check
    # against the form at 40+ digits drops that series (quadrature then answers there, as before)
    act = activation("elu")
    ranges = _closed("elu", {}).ranges
    real = verify._series_coefficients

    def wrong(expr, terms, budget):
        found = real(expr, terms, budget)
        if found is not None and found[2] != 0:
            found[3] = found[3] * (1 + mp.mpf("1e-6"))
        return found

    monkeypatch.setattr(verify, "_series_coefficients", wrong)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        derived = verify.small_q_series(act, ranges)
    assert "mean" not in derived and "second_moment" not in derived
    assert any("small-q series of mean for elu dropped" in str(w.message) for w in caught)


def test_a_form_that_is_not_a_power_series_in_sqrt_q_has_none():
    # hardsigmoid's variance holds Phi(3/sqrt(q)): no Taylor series at q = 0, so no series, and no error
    closed = _closed("hardsigmoid", {})
    assert "variance" not in closed.series


def test_gelu_needs_no_series_its_forms_keep_their_digits(no_disk_cache, monkeypatch):
    # GELU's forms do not cancel until q ~ 1e-205 (its asin form has no ScaledPhi to expand): no series, and the forms
    # themselves answer from 1e-200 up, within their bars of the hand closed form (tests/closed_forms.py)
    assert _closed("gelu", {}).series == {}
    qs = np.logspace(-200, 0, 21)
    _no_quadrature(monkeypatch)
    m = gd.moments("gelu", qs)
    assert all(getattr(m, moment).method == "closed_form" for moment in MOMENTS)
    _assert_within_bars("gelu", m, qs)
