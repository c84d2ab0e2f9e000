"""Stratified Monte Carlo: features narrower than the sampling density, seen and bounded within 5 standard errors.

References are independent of gainderive: mpmath quadrature at 30 digits split around each feature, and
Gaussian integrals derived by hand (derivations in the docstrings).  With fixed seeds every test is
deterministic; 5 standard errors leaves a 6e-7 two-sided chance per comparison of a false alarm under a
re-seed, and the standard errors themselves are checked to be of the right size, so "within 5 SE" cannot
hold merely because the error bar is wide.
"""

import dataclasses
from functools import cache

import mpmath as mp
import numpy as np
import pytest
from closed_forms import closed_form

import gainderive as gd
from gainderive.backends import monte_carlo
from gainderive.errors import DivergenceError, GainDeriveError
from gainderive.integrand import DF, F, integrand
from gainderive.moments import moment_functions
from gainderive.registry import activation

LIMIT = 5.0  # standard errors
DPS = 30

NARROW = "x + x*exp(-100000000*(x - 0.5)**2)"  # the reproducer: a feature of width 1e-4 at z = 0.5
BUMP = "exp(-100000000*(x - 0.3)**2)"
A = 10**8  # the features' exp(-A (x - b)^2): width 1/sqrt(A) = 1e-4


def with_features(ig, features):
    """A copy of ``ig`` whose ``features`` are the given (centre, width) pairs in z.

    Integrand is a frozen dataclass whose ``features`` is a cached property: the value is set on a fresh
    copy with ``object.__setattr__`` (never on the cached instance), or replaced if it ever becomes a field.
    """
    if "features" in {f.name for f in dataclasses.fields(ig)}:
        return dataclasses.replace(ig, features=features)
    copy = dataclasses.replace(ig)
    object.__setattr__(copy, "features", features)
    return copy


def moments_integrand(formula, features=None):
    act = activation(formula)
    ig = integrand(act, moment_functions(act)[0])
    return ig if features is None else with_features(ig, features)


def within(est, truth, limit=LIMIT):
    """|value - truth| <= limit * SE + a few ulps of the truth (an exactly 0 SE happens for odd integrands)."""
    return abs(float(est.value) - float(truth)) <= limit * float(est.error) + 4 * np.spacing(abs(float(truth)))


@cache
def narrow_references(q=1):
    """(E f, E f^2, E f'^2) for f = x + x e^{-A(x - 1/2)^2}, z ~ N(0, q).

    E f'^2 by mpmath quadrature of f'(z)^2 phi(z), split at 1/2 +- k 1e-4 (k = 1, 4, 16, 64) so every panel
    resolves the feature.  E f and E f^2 by hand: with g(c) = E[e^{-c(z-b)^2}] = e^{-c b^2/(1+2cq)}/sqrt(1+2cq)
    the tilted law of z is N(mu, v), mu = 2cqb/(1+2cq), v = q/(1+2cq), so E[z e^{-c(z-b)^2}] = g mu and
    E[z^2 e^{-c(z-b)^2}] = g (v + mu^2); E f = g(A) mu(A), E f^2 = q + 2 g(A)(v + mu^2)(A) + g(2A)(v + mu^2)(2A).
    Quadrature gives the same E f and E f^2 to 40 digits (checked when the test was written).
    """
    with mp.workdps(DPS):
        q, a, b, w = mp.mpf(q), mp.mpf(A), mp.mpf(1) / 2, mp.mpf(10) ** -4

        def tilted(c):
            g = mp.exp(-c * b**2 / (1 + 2 * c * q)) / mp.sqrt(1 + 2 * c * q)
            mu, v = 2 * c * q * b / (1 + 2 * c * q), q / (1 + 2 * c * q)
            return g, mu, v

        g1, mu1, v1 = tilted(a)
        g2, mu2, v2 = tilted(2 * a)
        mean = g1 * mu1
        second = q + 2 * g1 * (v1 + mu1**2) + g2 * (v2 + mu2**2)

        def df2(z):
            return (1 + mp.exp(-a * (z - b) ** 2) * (1 - 2 * a * z * (z - b))) ** 2 * mp.npdf(z, 0, mp.sqrt(q))

        points = [-mp.inf] + [b + s * k * w for s in (-1, 1) for k in (64, 16, 4, 1)] + [b, mp.inf]
        derivative = mp.quad(df2, sorted(points))
    return float(mean), float(second), float(derivative)


def bump_references(q):
    """(E f, E f^2, E f'^2) for f = e^{-A(x - b)^2}, b = 0.3, z ~ N(0, q), derived by hand.

    Convolving two Gaussians: g(c) = E[e^{-c(z-b)^2}] = e^{-c b^2/(1+2cq)}/sqrt(1+2cq).  E f = g(A),
    E f^2 = g(2A) = e^{-2Ab^2/(1+4Aq)}/sqrt(1+4Aq); f'^2 = 4A^2 (z-b)^2 e^{-2A(z-b)^2} and
    E[(z-b)^2 e^{-c(z-b)^2}] = -g'(c) = g(c) [q/(1+2cq) + b^2/(1+2cq)^2], so E f'^2 = 4A^2 (-g'(2A)).
    """
    with mp.workdps(DPS):
        q, a, b = mp.mpf(q), mp.mpf(A), mp.mpf(3) / 10

        def g(c):
            return mp.exp(-c * b**2 / (1 + 2 * c * q)) / mp.sqrt(1 + 2 * c * q)

        c = 2 * a
        slope = g(c) * (q / (1 + 2 * c * q) + b**2 / (1 + 2 * c * q) ** 2)
        return float(g(a)), float(g(c)), float(4 * a**2 * slope)


@cache
def tanh_references(q):
    """(E tanh, E tanh^2, E sech^4) by mpmath quadrature at 30 digits (E tanh = 0 by symmetry)."""
    with mp.workdps(DPS):
        s = mp.sqrt(mp.mpf(q))
        second = mp.quad(lambda z: mp.tanh(z) ** 2 * mp.npdf(z, 0, s), [-mp.inf, 0, mp.inf])
        derivative = mp.quad(lambda z: mp.sech(z) ** 4 * mp.npdf(z, 0, s), [-mp.inf, 0, mp.inf])
    return 0.0, float(second), float(derivative)


def test_narrow_feature_is_seen_within_five_standard_errors():
    ig = moments_integrand(NARROW, ((0.5, 1e-4),))
    truth = narrow_references()
    assert truth[2] == pytest.approx(1104.121183907, rel=1e-12)  # the number, to the digits it gives
    for seed in (0, 1, 2):
        mean, second, derivative = monte_carlo.integrate(ig, 1.0, samples=2**20, seed=seed)[:3]
        for est, exact in zip((mean, second, derivative), truth):
            assert within(est, exact), (seed, est, exact)
        # the bar is narrow enough that "within 5 SE" means something: 5 SE < 1.5 % of E f'^2
        assert 0 < derivative.error < 0.003 * truth[2]
        assert 0 < mean.error < 0.003 * truth[0]


def test_narrow_feature_through_moments_uses_the_formulas_feature_points():
    truth = narrow_references()
    m = gd.moments(NARROW, 1.0, method="monte_carlo", samples=2**20, seed=3)
    assert within(m.derivative_second_moment, truth[2])
    assert m.derivative_second_moment.error < 0.003 * truth[2]


@pytest.mark.parametrize("q", [1.0, [0.25, 1e4]])
def test_narrow_bump_within_five_standard_errors(q):
    ig = moments_integrand(BUMP, ((0.3, 1e-4),))
    estimates = monte_carlo.integrate(ig, q, samples=2**19, seed=11)[:3]
    for k, qk in enumerate(np.atleast_1d(q)):
        truth = bump_references(qk)
        for est, exact in zip(estimates, truth):
            value, error = np.atleast_1d(est.value)[k], np.atleast_1d(est.error)[k]
            assert abs(value - exact) <= LIMIT * error, (qk, value, error, exact)
            assert 0 < error < 0.01 * exact  # every moment is resolved, not just bounded by a wide bar


def test_standard_error_matches_the_spread_across_seeds():
    # z-scores of E f'^2 over 40 seeds at a small budget (about 260 pairs per stratum) should look standard
    # normal.  Mean of 40 z: SE 0.16, so |mean| < 0.6 is > 3.5 SE; sd of 40 z: SE ~0.11, so [0.65, 1.35] > 3 SE.
    ig = moments_integrand(NARROW, ((0.5, 1e-4),))
    truth = narrow_references()[2]
    z, errors = [], []
    for seed in range(40):
        est = monte_carlo.integrate(ig, 1.0, samples=20_000, seed=seed)[2]
        z.append((est.value - truth) / est.error)
        errors.append(est.error)
    assert abs(np.mean(z)) < 0.6
    assert 0.65 < np.std(z) < 1.35
    # and two seeds agree on the size of the bar (each SE estimate is itself uncertain by ~1/sqrt(2 n) ~ 5 %)
    assert 0.8 < errors[0] / errors[1] < 1.25


def test_stratification_beats_plain_sampling_on_a_narrow_feature():
    # the same budget without feature points: plain sampling's SE of E f'^2 is ~10x larger (and unreliable);
    # stratified sampling's bar must be at least 5x smaller, else the strata are not resolving the feature
    plain = monte_carlo.integrate(moments_integrand(NARROW, ()), 1.0, samples=2**20, seed=0)[2]
    strata = monte_carlo.integrate(moments_integrand(NARROW, ((0.5, 1e-4),)), 1.0, samples=2**20, seed=0)[2]
    assert strata.error < plain.error / 5


def test_narrow_strata_weights_are_exact():
    # f = x^2 with features that cut [0, 3] into 23 narrow strata, where draws are uniform and carry the weight
    # 2 phi(t)(b - a)/p_i: E z^2 = q, E z^4 = 3 q^2, E (2z)^2 = 4 q (Gaussian moments).  Without the weight the
    # estimate of E z^2 is biased by ~4 SE at 2^18 samples, so at 2^21 by ~12 SE: 5 SE catches it.
    q = 1.0
    ig = moments_integrand("x**2", ((1.0, 0.05), (2.0, 0.05)))
    assert monte_carlo.stratify(ig, q).narrow.sum() >= 20
    for seed in (0, 1):
        for est, exact in zip(monte_carlo.integrate(ig, q, samples=2**21, seed=seed)[:3], (q, 3 * q * q, 4 * q)):
            assert within(est, exact), (seed, est, exact)


@pytest.mark.parametrize("q", [0.5, 1.0, 1e3])
def test_tanh_with_its_feature_point(q):
    ig = moments_integrand("tanh", ((0.0, 1.0),))
    mean, second, derivative = monte_carlo.integrate(ig, q, samples=2**17, seed=5)[:3]
    assert mean.value == 0.0 and mean.error == 0.0  # antithetic pairs cancel the odd integrand in every stratum
    truth = tanh_references(q)
    for est, exact in zip((second, derivative), truth[1:]):
        assert within(est, exact) and est.error < 0.01 * exact


@pytest.mark.parametrize(
    "features", [(), None, ((0.0, 1.0),), ((0.7, 0.05),)], ids=["plain", "its-own", "centred", "offset"]
)
def test_elu_within_five_standard_errors_plain_or_stratified(features):
    q = 1.7
    ig = moments_integrand("elu", features)
    with mp.workdps(DPS):
        truth = closed_form("elu", q)
    for seed in (0, 1):
        for est, exact in zip(monte_carlo.integrate(ig, q, samples=2**17, seed=seed)[:3], truth):
            assert within(est, exact), (seed, est, float(exact))


def test_jump_at_an_asymmetric_breakpoint():
    # f = x + 1{x > 1/2}, q = 1: strata cut at |t| = 1/2, the two sides of 0 use different pieces.
    # E f = Phi(-1/2); E f^2 = E z^2 + 2 E[z 1{z > 1/2}] + P(z > 1/2) = 1 + 2 phi(1/2) + Phi(-1/2).
    act = activation("where(x > 0.5, x + 1, x)")
    ig = integrand(act, {"f": F, "f^2": F**2})
    with mp.workdps(DPS):
        tail, density = mp.ncdf(-0.5), mp.npdf(0.5)
        truth = (tail, 1 + 2 * density + tail)
    for seed in (0, 1):
        for est, exact in zip(monte_carlo.integrate(ig, 1.0, samples=2**17, seed=seed), truth):
            assert within(est, exact), (seed, est, float(exact))


@pytest.mark.parametrize("q", [1e-300, 1e-20, 1e-3, 1.0, 2.0, 1e4, 1e20, 1e300])
@pytest.mark.parametrize(
    "formula, features",
    [(NARROW, ((0.5, 1e-4),)), ("tanh", ((0.0, 1.0),)), ("hardtanh", ()), ("elu", ((0.0, 1.0), (-2.0, 1e-9)))],
)
def test_stratum_probabilities_sum_to_one(formula, features, q):
    strata = monte_carlo.stratify(moments_integrand(formula, features), q)
    assert abs(strata.probability.sum() - 1.0) <= 1e-15
    assert np.all(strata.probability > 0) and np.all(strata.lower < strata.upper)
    assert strata.lower[0] == 0.0 and strata.upper[-1] == np.inf


def test_stratum_probabilities_keep_their_digits():
    # each p_i = P(a <= |t| < b) against mpmath at 30 digits: relative 1e-13 (a few ulps, plus the
    # conditioning of Q(a) - Q(b) for wide strata), including narrow strata and far-tail ones
    ig = moments_integrand(NARROW, ((0.5, 1e-4), (9.0, 1e-3)))
    strata = monte_carlo.stratify(ig, 1.0)
    assert strata.narrow.sum() >= 16
    with mp.workdps(DPS):
        for a, b, p in zip(strata.lower, strata.upper, strata.probability):
            exact = 2 * (mp.ncdf(-mp.mpf(a)) - mp.ncdf(-mp.mpf(b)))
            assert abs(p - exact) <= 1e-13 * exact, (a, b, p, exact)


def test_results_do_not_depend_on_the_batch():
    ig = moments_integrand(BUMP, ((0.3, 1e-4),))
    batch = monte_carlo.integrate(ig, [0.5, 2.0], samples=40_000, seed=4)
    alone = monte_carlo.integrate(ig, 2.0, samples=40_000, seed=4)
    again = monte_carlo.integrate(ig, [0.5, 2.0], samples=40_000, seed=4)
    other = monte_carlo.integrate(ig, [0.5, 2.0], samples=40_000, seed=5)
    for b, a, g, o in zip(batch, alone, again, other):
        assert b.value[1] == a.value and b.error[1] == a.error
        assert np.array_equal(b.value, g.value)
        assert not np.array_equal(b.value, o.value)


def test_progress_and_chunks_on_the_stratified_path():
    seen = []
    ig = moments_integrand(NARROW, ((0.5, 1e-4),))
    monte_carlo.integrate(ig, [1.0, 2.0], samples=200_000, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (400_000, 400_000)
    assert all(b[0] > a[0] for a, b in zip(seen, seen[1:]))
    # the largest stratum holds ~55k pairs, more than one chunk: it is sampled in fixed-size chunks
    steps = np.diff([0] + [d for d, _ in seen]) // 2
    assert steps.max() <= monte_carlo._CHUNK


def test_too_few_samples_for_the_strata_is_a_clear_error():
    ig = moments_integrand(NARROW, ((0.5, 1e-4),))
    with pytest.raises(GainDeriveError, match=r"samples must be at least 76 .*19 strata"):
        monte_carlo.integrate(ig, 1.0, samples=40)


def test_divergent_samples_are_reported_on_the_stratified_path():
    act = activation("exp(x**2)")
    ig = with_features(integrand(act, {"f^2": F**2, "f'^2": DF**2}), ((0.0, 1.0),))
    with pytest.raises(DivergenceError, match="not finite"):
        monte_carlo.integrate(ig, 1.0e6, samples=20_000)


@pytest.mark.parametrize("a, b", [(0.0, 0.25), (0.5, 1.5), (0.0, 30.0), (2.0, np.inf), (30.0, np.inf)],
                         ids=["narrow", "wide", "wide-to-far", "tail", "far-tail"])
def test_stratum_draws_reproduce_the_truncated_normal_within_five_standard_errors(a, b):
    # the weighted draws of one stratum estimate E[g(|t|) | a <= |t| < b] for t ~ N(0, 1); for g = 1, t, t^2
    # against the truncated normal's moments, derived by hand at 30 digits: M_k = int_a^b t^k phi(t) dt, by parts
    # (t phi = -phi'), M_k = a^{k-1} phi(a) - b^{k-1} phi(b) + (k - 1) M_{k-2}, M_0 = Q(a) - Q(b), M_1 = phi(a) -
    # phi(b); E[g] = M_k / M_0.  A wrong weight, a sub-interval without draws or a cut tail is a bias of many SE.
    with mp.workdps(DPS):
        lo = mp.mpf(a)

        def edge(k):  # t^k phi(t) at the two ends, the upper one 0 at infinity
            return lo**k * mp.npdf(lo) - (0 if np.isinf(b) else mp.mpf(b) ** k * mp.npdf(mp.mpf(b)))

        mass = mp.ncdf(-lo) - (0 if np.isinf(b) else mp.ncdf(-mp.mpf(b)))
        raw = [mass, edge(0)]
        for k in range(2, 5):
            raw.append(edge(k - 1) + (k - 1) * raw[k - 2])
        moments = [m / mass for m in raw]
        truth = [float(moments[k]) for k in range(3)]
        # sd of g under exact draws (in mpmath: far out the variance of t cancels to nothing in doubles)
        exact_spread = [0.0] + [float(mp.sqrt(moments[2 * k] - moments[k] ** 2)) for k in (1, 2)]
        probability = float(2 * mass)
    narrow = bool(np.isfinite(b) and 0.5 * (b - a) * b < monte_carlo._NARROW)
    n = 8 * monte_carlo._CHUNK + 101  # full chunks, an extra row and a partial one
    sampler = monte_carlo._Sampler(a, b, probability, narrow, n)
    assert sampler.regular == (1 if narrow else monte_carlo._SUBINTERVALS)
    assert sampler.columns == (1 if narrow else monte_carlo._SUBINTERVALS + 1)  # + the exact last sub-interval

    class Powers:
        """g = 1, t, t^2 of the draws with twice their weight (the stratum applies each column's halved factor)."""

        labels = active_labels = ("1", "t", "t^2")
        active, odd, scale = [0, 1, 2], [], np.ones(3)

        def fill(self, t, weight, y, buffers):
            assert np.all((t >= a) & (t <= b))
            np.multiply(weight, 2.0, out=y[0])
            np.multiply(y[0], t, out=y[1])
            np.multiply(y[1], t, out=y[2])
            return True

    buffers = monte_carlo._Buffers(monte_carlo._CHUNK, 3)
    mean, variance = monte_carlo._sample_stratum(Powers(), sampler, n, np.random.default_rng(9), buffers, None)
    error = np.sqrt(variance)
    for k in range(3):
        assert abs(mean[k] - truth[k]) <= LIMIT * error[k] + 8 * np.spacing(truth[k]), (k, mean, truth)
        # the weights stay near 1, so the bar is at most that of exact draws (within 20 %) plus the weights' own
        # spread, sqrt(E w^2 - 1) <= 0.05 (the narrow strata's e^{+-0.1}; 0.02 for the tabulated ones); the rows
        # of one draw per sub-interval stratify the stratum further, so the bar is usually far below that
        assert error[k] <= 1.2 * exact_spread[k] / np.sqrt(n) + 0.05 * truth[k] / np.sqrt(n), (k, error)
