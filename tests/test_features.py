"""Feature points: narrow features and large q get the right number with an honest bar (issue 11, point 2).

Every reference is an mpmath integral at >= 30 digits written here, from the definitions of f and f', with the
integration split at the feature (its centre and centre +- width * 2^k), so mpmath's tanh-sinh sees it; mpmath's
tolerance is absolute, so each reference is computed twice, the second time divided by the size of the first.
"""

import copy
import functools

import mpmath as mp
import numpy as np
import pytest
import sympy as sp

import gainderive as gd
from gainderive import _cache
from gainderive.features import MAX_FEATURES, cut_offsets, feature_cuts, feature_points
from gainderive.formula import X
from gainderive.functions import sigmoid
from gainderive.integrand import integrand
from gainderive.moments import moment_functions

BUMP = "x + x*exp(-100000000*(x - 0.5)**2)"  # a bump of width 1e-4 at z = 0.5 on the identity
SPIKE = "exp(-100000000*(x - 0.3)**2)"  # the bump alone: f is tiny but not 0


def gaussian_expectation(h, q, centre=0, width=1):
    """E[h(z)], z ~ N(0, q), in t = z/sqrt(q), split at t-grid points and at (centre +- width 2^k)/sqrt(q)."""
    s = mp.sqrt(q)
    c, w = mp.mpf(centre) / s, mp.mpf(width) / s
    points = {mp.mpf(0), c, -mp.inf, mp.inf}
    points |= {sign * mp.mpf(g) for g in (1, 2, 4, 8, 16) for sign in (1, -1)}
    points |= {c + sign * w * mp.mpf(2) ** k for k in range(-3, 9) for sign in (1, -1)}
    points = sorted(p for p in points if not mp.isfinite(p) or abs(p) <= 40)

    def weighted(t, size):
        return h(s * t) * mp.npdf(t) / size

    rough = mp.quad(lambda t: weighted(t, 1), points, maxdegree=4)
    size = abs(rough) if rough != 0 else mp.mpf(1)
    return mp.quad(lambda t: weighted(t, size), points) * size


def _sigmoid(x):
    return 1 / (1 + mp.exp(-x)) if x >= 0 else mp.exp(x) / (1 + mp.exp(x))


def _softplus(x):
    return max(x, 0) + mp.log1p(mp.exp(-abs(x)))


def _ncdf(x):
    return mp.ncdf(x) if abs(x) < 1e6 else mp.mpf(x > 0)  # mpmath's erfc overflows a float beyond that


def _erf(x):
    return mp.erf(x) if abs(x) < 1e6 else mp.sign(x)


#: f, f' from their definitions, and whether f is odd (then E f = 0 exactly)
ACTIVATIONS = {
    "tanh": (mp.tanh, lambda x: 1 / mp.cosh(x) ** 2, True),
    "sigmoid": (_sigmoid, lambda x: _sigmoid(x) * _sigmoid(-x), False),
    "softplus": (_softplus, _sigmoid, False),
    "silu": (lambda x: x * _sigmoid(x), lambda x: _sigmoid(x) + x * _sigmoid(x) * _sigmoid(-x), False),
    "gelu": (lambda x: x * _ncdf(x), lambda x: _ncdf(x) + x * mp.npdf(x), False),
    "elu": (lambda x: x if x > 0 else mp.expm1(x), lambda x: 1 if x > 0 else mp.exp(x), False),
    "mish": (lambda x: x * mp.tanh(_softplus(x)),
             lambda x: mp.tanh(_softplus(x)) + x * _sigmoid(x) / mp.cosh(_softplus(x)) ** 2, False),
    "erf": (_erf, lambda x: 2 / mp.sqrt(mp.pi) * mp.exp(-x * x), True),
}


def _references(name, q, moments=("mean", "second_moment", "derivative_second_moment")):
    f, df, odd = ACTIVATIONS[name]
    h = {"mean": f, "second_moment": lambda x: f(x) ** 2, "derivative_second_moment": lambda x: df(x) ** 2}
    with mp.workdps(30):
        return {k: mp.mpf(0) if k == "mean" and odd else gaussian_expectation(h[k], mp.mpf(q)) for k in moments}


def _assert_honest(est, reference, label, index=()):
    """|value - reference| <= error + 4 ulps of the reference: the bar bounds the true error."""
    value = float(np.asarray(est.value)[index])
    error = float(np.asarray(est.error)[index])
    deviation = abs(value - float(reference))
    assert np.isfinite(value) and np.isfinite(error), label
    assert deviation <= error + 4 * np.spacing(abs(float(reference))), (
        f"{label}: value {value!r}, reference {mp.nstr(reference, 20)}, off {deviation:.3g}, error {error:.3g}")


# ---------------------------------------------------------------------------------------------------------
# feature detection


def _features(expr):
    return feature_points([expr])


def _one(expr):
    found = _features(expr)
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize(("expr", "centre", "width"), [
    (sp.tanh(3 * (X - sp.Rational(1, 2))), 0.5, 1 / 3),  # tanh(k(x - b)): (b, 1/k)
    (sp.exp(-100 * (X - sp.Rational(1, 5)) ** 2), 0.2, 0.1),  # exp(-a(x - b)^2): (b, 1/sqrt(a))
    (1 / (1 + 25 * (X + 1) ** 2), -1.0, 0.2),  # 1/(1 + a(x - b)^2): (b, 1/sqrt(a)), the stationary point
    (sigmoid(4 * X + 2), -0.5, 0.25),  # sigmoid(kx + c): (-c/k, 1/k)
    (sp.tanh(8 * (X - 1) ** 3), 1.0, 0.5),  # triple root: (3!/|u'''|)^(1/3) = (6/48)^(1/3)
])
def test_feature_of_a_polynomial_argument(expr, centre, width):
    c, w = _one(expr)
    assert c == pytest.approx(centre, abs=1e-12)
    assert w == pytest.approx(width, rel=1e-12)


def test_non_polynomial_arguments_are_left_to_adaptivity():
    # tanh's argument exp(5x - 1) is not a polynomial: only exp's own argument 5x - 1 gives a feature, (0.2, 0.2)
    c, w = _one(sp.tanh(sp.exp(5 * X - 1)))
    assert (c, w) == pytest.approx((0.2, 0.2), rel=1e-12)
    assert _features(X**3 + 2 * X) == ()  # a polynomial has no feature
    assert _features(sp.exp(sp.Rational(3, 2))) == ()  # nor a constant


def test_singularity_near_the_real_line():
    # sqrt(x^2 + 1e-8): the branch points at +-1e-4 i make a feature of width 1e-4 at 0
    found = _features(sp.sqrt(X**2 + sp.Rational(1, 10**8)))
    assert any(abs(c) < 1e-12 and w == pytest.approx(1e-4, rel=1e-9) for c, w in found), found


def test_features_are_deduplicated_and_bounded():
    # tanh(3x) and sigmoid(3x) share their feature (0, 1/3)
    (c, w), = _features(sp.tanh(3 * X) + sigmoid(3 * X))
    assert (c, w) == pytest.approx((0.0, 1 / 3), abs=1e-15)
    many = sum(sp.tanh(k * (X - k)) for k in range(1, 101))
    found = _features(many)
    assert len(found) == MAX_FEATURES
    # the narrowest are kept: widths 1/100 .. 1/69
    assert max(w for _, w in found) == pytest.approx(1 / (101 - MAX_FEATURES))


def test_integrand_carries_the_features_of_its_pieces():
    act = gd.activation(BUMP)
    functions, _ = moment_functions(act)
    ig = integrand(act, functions)
    # every piece holds exp(-1e8 (x - 1/2)^2): the feature (1/2, 1e-4), found once
    (c, w), = ig.features
    assert (c, w) == pytest.approx((0.5, 1e-4), rel=1e-12)


def test_cuts_resolve_the_feature_at_its_scale():
    # around (0.5, 1e-4) at q = 1: the centre, the transition (+- w/2, 2w) and the tail out past t = 1
    cuts = np.array(feature_cuts([(0.5, 1e-4)], 1.0, 38.5))
    for offset in (0.0, 0.5e-4, 2e-4, 8e-4, 32e-4, 128e-4):
        for sign in (1, -1):
            assert np.min(np.abs(cuts - (0.5 + sign * offset))) < 1e-15
    assert max(cut_offsets(1e4)) >= 1e4  # the offsets reach as far as asked
    ratios = np.diff(np.log(cut_offsets(1e6)))
    assert np.all(ratios <= np.log(16) + 1e-12)  # no panel spans more than a factor 16 from the feature
    # at q = 1e300 the default feature (0, 1) is cut at |t| ~ 1e-150, inside the first t-panel
    tiny = np.array(feature_cuts([], 1e150, 38.5))
    assert np.any((tiny > 0) & (tiny < 1e-149))


def test_cache_without_features_still_loads(monkeypatch):
    # a registry_cache.json written before feature points were stored: the entry loads, with no features
    contents = copy.deepcopy(_cache._contents())
    entry = contents["activations"].get("tanh")
    if entry is None or contents.get("version") != gd.__version__:
        pytest.skip("no registry cache for this version")
    entry.pop("features", None)
    monkeypatch.setattr(_cache, "_contents", lambda: contents)
    _cache.lookup.cache_clear()
    try:
        _, compiled, _ = _cache.lookup("tanh")
        assert compiled.features == ()
    finally:
        _cache.lookup.cache_clear()


# ---------------------------------------------------------------------------------------------------------
# the reproducers of issue 11: narrow features


@functools.cache
def _bump_references():
    with mp.workdps(36):
        a, b = mp.mpf(10) ** 8, mp.mpf("0.5")
        g = lambda x: mp.exp(-a * (x - b) ** 2)  # noqa: E731
        return {
            "mean": gaussian_expectation(lambda x: x + x * g(x), 1, b, 1 / mp.sqrt(a)),
            "second_moment": gaussian_expectation(lambda x: (x + x * g(x)) ** 2, 1, b, 1 / mp.sqrt(a)),
            # f' = 1 + g (1 - 2 a x (x - b))
            "derivative_second_moment": gaussian_expectation(lambda x: (1 + g(x) * (1 - 2 * a * x * (x - b))) ** 2,
                                                             1, b, 1 / mp.sqrt(a)),
        }


def test_narrow_bump_quadrature():
    # issue 11: E[f'^2] came out 1 +- 1.1e-14; the truth is 1104.12..., fan_out gain 0.030
    refs = _bump_references()
    assert refs["derivative_second_moment"] == pytest.approx(1104.1211839072217, rel=1e-15)  # sanity of the ref
    m = gd.moments(BUMP, 1.0, method="quadrature")
    for name, ref in refs.items():
        _assert_honest(getattr(m, name), ref, name)
    # the bar is honest, and still small: it is dominated by the rounding of the nodes near z = 0.5, where
    # |z|/w = 5000 makes eps |z| a shift of 1e-12 widths (the quadrature module's rounding floor)
    assert float(m.derivative_second_moment.error) < 1e-10 * 1104


def test_narrow_spike_does_not_vanish():
    # issue 11: f = exp(-1e8 (x - 0.3)^2) ended with "f vanishes almost surely"; E f^2 is 4.78e-5
    with mp.workdps(32):
        a, b = mp.mpf(10) ** 8, mp.mpf("0.3")
        g = lambda x: mp.exp(-a * (x - b) ** 2)  # noqa: E731
        refs = {"mean": gaussian_expectation(g, 1, b, 1 / mp.sqrt(a)),
                "second_moment": gaussian_expectation(lambda x: g(x) ** 2, 1, b, 1 / mp.sqrt(a)),
                "derivative_second_moment": gaussian_expectation(lambda x: (2 * a * (x - b) * g(x)) ** 2,
                                                                 1, b, 1 / mp.sqrt(a))}
    m = gd.moments(SPIKE, 1.0, method="quadrature")
    assert float(m.second_moment.value) > 4e-5
    for name, ref in refs.items():
        _assert_honest(getattr(m, name), ref, name)


def test_narrow_bump_high_precision():
    refs = _bump_references()
    with mp.workdps(40):
        m = gd.moments(BUMP, "1", method="high_precision", digits=30)
        for name, ref in refs.items():
            est = getattr(m, name)
            assert abs(est.value - ref) <= est.error + mp.mpf(10) ** -34 * abs(ref), name
            # the mean is 3e-5, a cancellation: its bar is relative to E|f| <= sqrt(E f^2)
            scale = mp.sqrt(refs["second_moment"]) if name == "mean" else abs(ref)
            # the bar is floored at 10^(1 - digits) E|h| (mpmath's own estimate can under-report by ~3x)
            assert est.error <= mp.mpf(10) ** -28 * scale, name


# ---------------------------------------------------------------------------------------------------------
# large q: the activation's whole transition lies in |t| < 1/sqrt(q)


@pytest.mark.parametrize(("name", "q"), [("tanh", 1e7), ("tanh", 1e300), ("sigmoid", 1e8), ("sigmoid", 1e300)])
def test_derivative_moment_at_large_q(name, q):
    # issue 11: sigmoid 0.19 % off at q >= 1e8 with a 1.5e-14 bar; tanh 6.8e-7 off at q >= 1e7
    ref = _references(name, q, ("derivative_second_moment",))["derivative_second_moment"]
    est = gd.moments(name, q, method="quadrature").derivative_second_moment
    _assert_honest(est, ref, f"{name} E[f'^2] at q = {q:g}")
    assert float(est.error) <= 1e-13 * float(ref)  # and accurate, not just honest


def test_algebraic_tail_at_large_q():
    # softsign x/(1 + |x|): f^2 = 1 - 2/|z| + ... and f'^2 = (1 + |z|)^-4 decay only algebraically, so at
    # q = 1e20 the tail between |z| = 1 and |z| = 1e10 must be cut all the way out (the former z-grid gave
    # E f^2 = 1 +- 1.2e-14; the truth is 1 - 3.6e-9).  Reference: 2 int_0^inf h(z) phi(z/s)/s dz, split at
    # z = 2^k out to 40 s, where everything has the scale of its distance from 0.
    q = 1e20
    with mp.workdps(30):
        s = mp.sqrt(mp.mpf(q))
        points = [mp.mpf(0), *(mp.mpf(2) ** k for k in range(-2, int(mp.log(40 * s, 2)) + 2)), mp.inf]
        derivative = mp.quad(lambda z: 2 * (1 + z) ** -4 * mp.npdf(z / s), points) / s
        second = mp.quad(lambda z: 2 * (z / (1 + z)) ** 2 * mp.npdf(z / s) / s, points)
    m = gd.moments("softsign", q, method="quadrature")
    _assert_honest(m.derivative_second_moment, derivative, "E[f'^2]")
    _assert_honest(m.second_moment, second, "E[f^2]")
    assert 1 - float(m.second_moment.value) > 3e-9


SWEEP_Q = (1e-3, 1.0, 1e3, 1e7, 1e8, 1e20, 1e100, 1e300)


def _sweep(name, qs):
    m = gd.moments(name, np.array(qs), method="quadrature")
    for i, q in enumerate(qs):
        for moment, ref in _references(name, q).items():
            _assert_honest(getattr(m, moment), ref, f"{name} {moment} at q = {q:g}", i)


@pytest.mark.parametrize("name", ["softplus", "elu"])
def test_unbounded_activations_at_1e300(name):
    # E f ~ sqrt(q/2 pi) ~ 4e149 and E f^2 ~ q/2: the whole range of the double at once
    _sweep(name, (1e300,))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_q_sweep_to_1e300(name):
    _sweep(name, SWEEP_Q)


# ---------------------------------------------------------------------------------------------------------
# high precision: values that cancel to 0, and values far from 1


def test_high_precision_zero_mean_has_a_bar_that_covers_it():
    # issue 11: derive erf --digits 40 -q 1.5 gave 1.1e-53 +- 2e-70.  erf is odd: E f = 0 exactly.
    # E f^2 = (2/pi) asin(2q/(1 + 2q)) (Williams 1997), E f'^2 = (4/pi) E[e^{-2z^2}] = (4/pi)/sqrt(1 + 4q)
    with mp.workdps(50):
        m = gd.moments("erf", "1.5", method="high_precision", digits=40)
        q = mp.mpf("1.5")
        assert abs(m.mean.value) <= m.mean.error
        assert m.mean.error <= mp.mpf(10) ** -38  # 10^(1 - digits) of E|f| < 1: the bar is not vacuous
        second = 2 / mp.pi * mp.asin(2 * q / (1 + 2 * q))
        derivative = 4 / mp.pi / mp.sqrt(1 + 4 * q)
        assert abs(m.second_moment.value - second) <= m.second_moment.error
        assert abs(m.derivative_second_moment.value - derivative) <= m.derivative_second_moment.error
        assert m.second_moment.error <= mp.mpf(10) ** -38 * second


def test_high_precision_at_q_1e300():
    # E[tanh'^2] ~ 5e-151: mpmath's absolute tolerance would stop at its first level without the rescaling
    with mp.workdps(36):
        ref = gaussian_expectation(lambda x: 1 / mp.cosh(x) ** 4, mp.mpf(10) ** 300)
    with mp.workdps(40):
        m = gd.moments("tanh", "1e300", method="high_precision", digits=30)
        est = m.derivative_second_moment
        assert abs(est.value - ref) <= est.error + mp.mpf(10) ** -34 * ref
        assert est.error <= mp.mpf(10) ** -28 * ref
        assert abs(m.mean.value) <= m.mean.error  # tanh is odd


def test_high_precision_refuses_a_non_integrable_singularity():
    # f = log|x|: f'^2 = 1/x^2 is not integrable at 0, E[f'^2] = inf (issue 11: 1.28e29 +- 2.0 at 15 digits).
    # Now that each E[h] is integrated relative to its own size, mpmath's error estimate exposes it.
    from gainderive.backends import high_precision
    from gainderive.integrand import DF

    act = gd.activation("log(abs(x))")
    with mp.workdps(25), pytest.raises(gd.GainDeriveError):
        high_precision.integrate(integrand(act, {"f'(z)^2": DF**2}), mp.mpf(1), digits=15)
