"""Moments at small variance, q = 1e-300 .. 1e-3: right values with honest error bars.

At small q the integrands are rounding noise in double precision ((sigmoid(z) - 1/2)^2 at q = 1e-20) or
their halves cancel (ELU's mean is O(sqrt q) on each side and q/4 in total), which is where the library
switches from quadrature to the Taylor series of h at 0 (gainderive/backends/series.py).

The references here share no code with the library.  Each activation is written out by hand with mpmath,
one analytic expression per side of 0 (ELU's left side is e^z - 1 continued through 0).  Its Taylor
coefficients at 0 come from ``mpmath.taylor`` (numerical differentiation at 60 digits, not the library's
Taylor arithmetic), those of f', f^2, f'^2 and (f - f(0))^2 from polynomial arithmetic written below, and

    E[h(z)] = sum_n (h_n^+ + (-1)^n h_n^-) M_n q^(n/2),    M_n = int_0^inf t^n phi(t) dt

with M_n from ``mpmath.quad`` (not the closed form the library uses).  With n <= 24 and q <= 1e-3 the
first omitted term is below 1e-21 relative to every reference (softsign, whose series converges only for
|z| < 1, is the worst: ~1e-22 at q = 1e-3), and the mass beyond hardtanh's kinks at
|z| = 1 (31 standard deviations at q = 1e-3) is below 1e-200.  The references are checked against
``mpmath.quad`` of h(sqrt(q) t) phi(t), split at 0, at q = 1e-3 and 1e-4, where 50 digits are enough for
the cancellation in sigmoid(z) - 1/2.

A moment passes if |value - reference| <= error + 4 ulp(reference) + 1e-320: the reported error must bound
the true one; the ulps allow for the final rounding of a value that the bar already covers.
"""

from __future__ import annotations

import math
from functools import cache

import mpmath as mp
import numpy as np
import pytest

import gainderive as gd

ORDER = 24
DIGITS = 60
VARIANCES = (1e-300, 1e-100, 1e-40, 1e-20, 1e-12, 1e-8, 1e-6, 1e-4, 1e-3)
SELU_ALPHA = "1.6732632423543772848170429916717"
SELU_SCALE = "1.0507009873554804934193349852946"


def _sigmoid(x):
    return 1 / (1 + mp.exp(-x))


def _softplus(x):
    return mp.log(1 + mp.exp(x))


# name: (f right of 0, f left of 0, f(0)); each side an analytic expression that is f on that side
ACTIVATIONS = {
    "sigmoid": (_sigmoid, _sigmoid, lambda: mp.mpf(1) / 2),
    "softplus": (_softplus, _softplus, lambda: mp.log(2)),
    "tanh": (mp.tanh, mp.tanh, lambda: mp.mpf(0)),
    "elu": (lambda x: x, lambda x: mp.exp(x) - 1, lambda: mp.mpf(0)),
    "selu": (lambda x: mp.mpf(SELU_SCALE) * x, lambda x: mp.mpf(SELU_SCALE) * mp.mpf(SELU_ALPHA) * (mp.exp(x) - 1),
             lambda: mp.mpf(0)),
    "celu": (lambda x: x, lambda x: mp.exp(x) - 1, lambda: mp.mpf(0)),
    "gelu": (lambda x: x * mp.ncdf(x), lambda x: x * mp.ncdf(x), lambda: mp.mpf(0)),
    "silu": (lambda x: x * _sigmoid(x), lambda x: x * _sigmoid(x), lambda: mp.mpf(0)),
    "mish": (lambda x: x * mp.tanh(_softplus(x)), lambda x: x * mp.tanh(_softplus(x)), lambda: mp.mpf(0)),
    "erf": (mp.erf, mp.erf, lambda: mp.mpf(0)),
    "softsign": (lambda x: x / (1 + x), lambda x: x / (1 - x), lambda: mp.mpf(0)),
    "sin": (mp.sin, mp.sin, lambda: mp.mpf(0)),
    "hardtanh": (lambda x: x, lambda x: x, lambda: mp.mpf(0)),  # kinks at +-1: >= 31 sd away for q <= 1e-3
}
MOMENTS = ("mean", "second_moment", "derivative_second_moment", "variance")


def _product(a, b):
    return [mp.fsum(a[i] * b[k - i] for i in range(k + 1)) for k in range(len(a))]


@cache
def _half_moments():
    with mp.workdps(DIGITS):
        return tuple(mp.quad(lambda t, n=n: t**n * mp.npdf(t), [0, mp.inf]) for n in range(ORDER + 1))


@cache
def _integrand_coefficients(name):
    """Per side, the Taylor coefficients of f, f^2, f'^2 and (f - f(0))^2 at 0."""
    right, left, centre = ACTIVATIONS[name]
    out = []
    with mp.workdps(DIGITS):
        c = centre()
        for f in (right, left):
            # numerical differentiation leaves ~1e-60 noise where a coefficient is 0 (tanh's even ones); every
            # true coefficient here is above 1e-20 (1/17! = 2.8e-15 is the smallest), so 1e-40 is noise
            a = [mp.chop(x, tol=mp.mpf(10) ** -40) for x in mp.taylor(f, 0, ORDER + 1)]
            df = [(k + 1) * a[k + 1] for k in range(ORDER + 1)]
            a = a[: ORDER + 1]
            centred = [a[0] - c, *a[1:]]
            out.append((a, _product(a, a), _product(df, df), _product(centred, centred)))
    return out, c


def _series(coefficients, q):
    half = _half_moments()
    plus, minus = coefficients
    root = mp.sqrt(mp.mpf(q))
    return mp.fsum((plus[n] + (-1) ** n * minus[n]) * half[n] * root**n for n in range(ORDER + 1))


@cache
def reference(name, q):
    """{moment: mpf}: E f, E f^2, E f'^2 and Var f = E[(f - c)^2] - (E f - c)^2 at 60 digits."""
    sides, c = _integrand_coefficients(name)
    with mp.workdps(DIGITS):
        mean, second, derivative, centred = (_series((sides[0][j], sides[1][j]), q) for j in range(4))
        return {"mean": mean, "second_moment": second, "derivative_second_moment": derivative,
                "variance": centred - (mean - c) ** 2}


def _quad_reference(name, q):
    """E f, E f'^2 and E[(f - c)^2] by mpmath.quad over t, folded onto t >= 0 (an independent check)."""
    right, left, centre = ACTIVATIONS[name]
    with mp.workdps(50):
        s, c = mp.sqrt(mp.mpf(q)), centre()

        def expect(g):
            return mp.quad(lambda t: (g(right, s * t) + g(left, -s * t)) * mp.npdf(t), [0, 2, 5, 10, 40])

        mean = expect(lambda f, z: f(z))
        derivative = expect(lambda f, z: mp.diff(f, z) ** 2)
        centred = expect(lambda f, z: (f(z) - c) ** 2)
        return mean, derivative, centred - (mean - c) ** 2


@pytest.mark.parametrize("name", ["sigmoid", "elu", "softsign"])
def test_series_references_agree_with_mpmath_quad(name):
    # the references themselves, against a different method where 50-digit quadrature can still see the answer
    for q in (1e-3, 1e-4):
        mean, derivative, variance = _quad_reference(name, q)
        ref = reference(name, q)
        for got, want in ((mean, ref["mean"]), (derivative, ref["derivative_second_moment"]),
                          (variance, ref["variance"])):
            # 1e-20: the series' truncation (1e-22 for softsign at q = 1e-3) and mp.diff inside mp.quad (~27
            # digits); the library is asked for 13
            assert abs(got - want) <= mp.mpf(10) ** -20 * max(abs(want), mp.mpf(10) ** -30)


def _assert_within_bar(name, method, moments_result):
    for moment in MOMENTS:
        est = getattr(moments_result, moment)
        values, errors = np.atleast_1d(est.value), np.atleast_1d(est.error)
        for q, value, error in zip(VARIANCES, values, errors):
            want = reference(name, q)[moment]
            assert math.isfinite(value) and error >= 0, (name, method, moment, q, value, error)
            slack = 4 * math.ulp(float(want)) + 1e-320
            assert abs(mp.mpf(float(value)) - want) <= error + slack, (
                f"{name} {moment} at q = {q:g} ({method}): {value!r} +- {error:.3g}, reference {mp.nstr(want, 20)}")


@pytest.mark.parametrize("method", ["auto", "quadrature"])
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_moments_at_small_variance_are_within_their_error_bars(name, method):
    m = gd.moments(name, np.array(VARIANCES), method=method)
    _assert_within_bar(name, method, m)


@pytest.mark.parametrize("name", ["sigmoid", "softplus", "elu", "tanh", "mish"])
def test_formula_path_matches_registry_path(name):
    # an Activation object skips the registry cache, so the symbolic integrand is expanded directly
    m = gd.moments(gd.activation(name), np.array(VARIANCES), method="quadrature")
    _assert_within_bar(name, "symbolic", m)


@pytest.mark.parametrize("name, q", [("sigmoid", 1e-20), ("softplus", 1e-20), ("softplus", 1e-300),
                                     ("elu", 1e-40), ("tanh", 1e-300)])
def test_issue_reproducers_are_accurate_not_just_bounded(name, q):
    # the reported cases: "did not converge", Var f = -1.2e-32, ELU's mean 100 % off with error 0
    m = gd.moments(name, q)
    for moment in ("mean", "second_moment", "derivative_second_moment"):
        est, want = getattr(m, moment), reference(name, q)[moment]
        assert abs(mp.mpf(float(est.value)) - want) <= 1e-13 * abs(want) + 1e-320
        assert est.error <= 1e-13 * abs(float(want)) + 1e-300
    variance = m.variance.value
    assert variance > 0
    assert abs(mp.mpf(float(variance)) - reference(name, q)["variance"]) <= m.variance.error + 1e-320


def test_elu_mean_is_q_over_4():
    # hand-derived: E[z; z > 0] + E[e^z - 1; z < 0] = sqrt(q/2pi) + (q/4 - sqrt(q/2pi) + O(q^1.5)) = q/4 + ...
    for q in (1e-300, 1e-100, 1e-40):
        est = gd.moments("elu", q).mean
        assert abs(est.value - q / 4) <= 1e-15 * q / 4
        assert est.error <= 1e-14 * q


def test_sigmoid_variance_is_q_over_16():
    # hand-derived: sigmoid(z) - 1/2 = z/4 - z^3/48 + ..., so Var = q/16 - q^2/32 + O(q^3) (E z^4 = 3 q^2)
    for q in (1e-300, 1e-40, 1e-20, 1e-12):
        est = gd.moments("sigmoid", q).variance
        assert abs(est.value - (q / 16 - q * q / 32)) <= 1e-15 * q


# -- the Taylor arithmetic, rule by rule, against mpmath.taylor of the same function written by hand ---------------

TAYLOR_CASES = {
    "atan(2*x + 0.5)": lambda x: mp.atan(2 * x + mp.mpf(1) / 2),
    "asinh(x - 1) + cosh(3*x)": lambda x: mp.asinh(x - 1) + mp.cosh(3 * x),
    "sinh(x)*erfc(x + 0.25)": lambda x: mp.sinh(x) * mp.erfc(x + mp.mpf(1) / 4),
    "Phi(2*x - 1)/(2 + x**2)": lambda x: mp.ncdf(2 * x - 1) / (2 + x**2),
    "sqrt(1 + x + x**2)*log(3 + x)": lambda x: mp.sqrt(1 + x + x**2) * mp.log(3 + x),
    "(1.5 + x)**0.75 - exp(-x)*cos(x)": lambda x: (mp.mpf(3) / 2 + x) ** (mp.mpf(3) / 4) - mp.exp(-x) * mp.cos(x),
    "asin(x/2) + abs(x - 2) + max(x + 1, 0.5)": lambda x: mp.asin(x / 2) + (2 - x) + (x + 1),
    "softplus(3*x - 1)*sigmoid(x + 2)": lambda x: mp.log(1 + mp.exp(3 * x - 1)) / (1 + mp.exp(-x - 2)),
}


@pytest.mark.parametrize("formula", list(TAYLOR_CASES))
def test_taylor_arithmetic_matches_mpmath_taylor(formula):
    from gainderive.backends import series
    from gainderive.integrand import F, integrand

    act = gd.activation(formula)
    data = series.coefficients(integrand(act, {"f": F}))
    assert data is not None, formula
    with mp.workdps(40):
        want = mp.taylor(TAYLOR_CASES[formula], 0, series.ORDER)
    # 1e-25 relative to the largest coefficient: both are computed at 40+ digits and rounded to doubles
    scale = max(abs(float(c)) for c in want)
    for side in ("right", "left"):
        for n, (got, exact) in enumerate(zip(data[side][0], want)):
            assert abs(got - float(exact)) <= 1e-15 * abs(float(exact)) + 1e-25 * scale, (formula, side, n)


@pytest.mark.parametrize("formula", ["abs(x)**1.5 + x", "sqrt(abs(x)) + sigmoid(x)", "x**2*log(abs(x))",
                                     "abs(x)**3"])
def test_series_refuses_what_is_not_analytic_at_zero(formula):
    # |x|^1.5 has no Taylor series at 0; |x|^3 is smooth enough to fool a numerical check but is not analytic
    # (its pieces x^3 and -x^3 are, and each side uses its own: that one is accepted and exact)
    from gainderive.backends import series
    from gainderive.integrand import F, integrand

    data = series.coefficients(integrand(gd.activation(formula), {"f": F}))
    if formula == "abs(x)**3":
        assert data is not None and data["right"][0][3] == 1.0 and data["left"][0][3] == -1.0
    else:
        assert data is None


def test_a_narrow_bump_away_from_zero_limits_the_series():
    # x + x exp(-1e8 (x - 0.3)^2): the bump's Taylor coefficients at 0 are ~e^(-9e6); the series must stop
    # short of it.  At q = 1e-3 (the bump 9.5 sd out) its contribution to E f is 0.3 phi(9.49) sqrt(pi) 1e-4 /
    # sqrt(q), by hand ~1.9e-23: it must be in the value or in the bar
    from gainderive.backends import series
    from gainderive.integrand import F, integrand

    ig = integrand(gd.activation("x + x*exp(-100000000*(x - 0.3)**2)"), {"f": F})
    assert series.expansion(ig).reach[0] <= 0.3
    with mp.workdps(40):
        q = mp.mpf("1e-3")
        want = mp.quad(lambda z: z * mp.exp(-100000000 * (z - mp.mpf("0.3")) ** 2) * mp.npdf(z, 0, mp.sqrt(q)),
                       [mp.mpf("0.29"), mp.mpf("0.3"), mp.mpf("0.31")])
    est = gd.moments("x + x*exp(-100000000*(x - 0.3)**2)", 1e-3).mean
    assert abs(mp.mpf(float(est.value)) - want) <= est.error + 1e-320
    assert want > 1e-24


def test_subnormal_q_is_refused_in_double_precision_and_answered_at_high_precision():
    # a subnormal q has fewer than 53 bits, so no double result could carry a 1e-13 bar: refused, naming the range
    with pytest.raises(gd.VarianceError, match=r"subnormal.*2\.225e-308"):
        gd.moments("tanh", 1e-310)
    # high precision takes q exactly: E[tanh(z)^2] = q - 2 q^2 + O(q^3) (tanh^2 z = z^2 - 2 z^4/3 + ..., E z^4 = 3 q^2)
    m = gd.moments("tanh", "1e-310", "high_precision", digits=20)
    with mp.workdps(40):  # the reference exact to 40 digits, not rounded to 53 bits
        assert abs(m.second_moment.value - mp.mpf("1e-310")) <= m.second_moment.error + mp.mpf("1e-600")
