"""Monte Carlo: unbiased within stated standard errors at fixed seeds, deterministic, memory-bounded chunks."""

import math

import mpmath as mp
import numpy as np
import pytest
from closed_forms import closed_form

import gainderive as gd
from gainderive.backends.monte_carlo import _CHUNK
from gainderive.errors import GainDeriveError
from gainderive.limits import LimitError

LIMIT = 5.0  # standard errors; with fixed seeds the test is deterministic, 5 SE leaves no room for flakiness


@pytest.mark.parametrize("name", ["relu", "elu", "abs", "hardtanh", "erf"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_within_five_standard_errors_of_closed_forms(name, seed):
    q = 1.7
    m = gd.moments(name, q, method="monte_carlo", samples=200_000, seed=seed)
    with mp.workdps(30):
        exact = closed_form(name, q)
    for est, truth in zip((m.mean, m.second_moment, m.derivative_second_moment), exact):
        assert est.method == "monte_carlo"
        if est.error == 0:  # antithetic pairs cancel odd integrands exactly
            assert est.value == pytest.approx(float(truth), abs=1e-15)
        else:
            assert abs(est.value - float(truth)) <= LIMIT * est.error


def test_standard_errors_are_calibrated():
    # across 60 seeds the z-scores of E[elu(z)^2] should look standard normal: mean ~0, sd ~1.
    # With 60 draws the sd estimate has a standard error of ~0.09, so [0.7, 1.3] is a > 3 SE band.
    with mp.workdps(30):
        truth = float(closed_form("elu", 1.0)[1])
    z = []
    for seed in range(60):
        est = gd.moments("elu", 1.0, method="monte_carlo", samples=20_000, seed=seed).second_moment
        z.append((est.value - truth) / est.error)
    assert abs(np.mean(z)) < 0.5
    assert 0.7 < np.std(z) < 1.3


def test_deterministic_per_seed_and_vectorised():
    a = gd.moments("gelu", [0.5, 2.0], method="monte_carlo", samples=50_000, seed=7)
    b = gd.moments("gelu", [0.5, 2.0], method="monte_carlo", samples=50_000, seed=7)
    c = gd.moments("gelu", [0.5, 2.0], method="monte_carlo", samples=50_000, seed=8)
    assert np.array_equal(a.second_moment.value, b.second_moment.value)
    assert not np.array_equal(a.second_moment.value, c.second_moment.value)
    assert a.second_moment.value.shape == (2,)


def test_odd_activation_has_exactly_zero_mean():
    # (tanh(z) + tanh(-z))/2 = 0 for every pair: antithetic sampling makes the odd part vanish
    m = gd.moments("tanh", 1.0, method="monte_carlo", samples=10_000)
    assert m.mean.value == 0.0 and m.mean.error == 0.0


def test_progress_callback_reaches_the_total():
    seen = []
    gd.moments("relu", 1.0, method="monte_carlo", samples=100_000, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (100_000, 100_000) and len(seen) > 1


# ---------------------------------------------------------------- bounded before any work, and within a chunk

def test_the_issues_sample_count_is_refused_at_once_with_a_time_estimate():
    # derive --check --samples 10000000000000 ran ~25 h with no progress: now one line, before the first draw,
    # stating the time from the rate measured on this integrand (1e13 at ~1e8 evaluations/s: about a day)
    seen = []
    with pytest.raises(LimitError, match=r"10,000,000,000,000 Monte Carlo samples.*about .* (hours|days) here.*"
                                         r"GAINDERIVE_MAX_SAMPLES") as info:
        gd.moments("relu", 1.0, method="monte_carlo", samples=10**13, progress=lambda d, t: seen.append(d))
    assert not seen and "\n" not in str(info.value)  # refused before the first chunk


def test_limit_counts_samples_times_variances(monkeypatch):
    monkeypatch.setenv("GAINDERIVE_MAX_SAMPLES", "1000")
    gd.moments("relu", [1.0, 2.0], method="monte_carlo", samples=500)  # 2 x 500 = 1000: at the limit
    with pytest.raises(LimitError, match="3 variances x 500 samples"):
        gd.moments("relu", [1.0, 2.0, 3.0], method="monte_carlo", samples=500)
    with pytest.raises(LimitError, match="1,002 Monte Carlo samples"):  # the stratified path: checked the same
        gd.moments("gelu", 1.0, method="monte_carlo", samples=1002)


@pytest.mark.parametrize("kwargs, match", [
    ({"samples": 0}, "samples must be an integer >= 4"), ({"samples": 2.5}, "samples must be an integer >= 4"),
    ({"samples": True}, "samples must be an integer >= 4"), ({"seed": -1}, "seed must be an integer >= 0"),
    ({"seed": 1.0}, "seed must be an integer >= 0"), ({"seed": True}, "seed must be an integer >= 0"),
])
def test_bad_samples_and_seeds_are_one_line_errors(kwargs, match):
    with pytest.raises(GainDeriveError, match=match) as info:
        gd.moments("relu", 1.0, method="monte_carlo", **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["relu", "gelu"])  # the plain and the stratified path
def test_progress_per_chunk_and_interrupt_within_one_chunk(name):
    samples = 10 * 2 * _CHUNK
    seen = []
    gd.moments(name, 1.0, method="monte_carlo", samples=samples, progress=lambda d, t: seen.append((d, t)))
    assert len(seen) >= 10 and seen[-1] == (samples, samples)
    assert all(b[0] - a[0] <= 2 * _CHUNK for a, b in zip(seen, seen[1:]))  # at most one chunk between calls

    calls = []

    def interrupt(done, total):
        calls.append(done)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        gd.moments(name, 1.0, method="monte_carlo", samples=samples, progress=interrupt)
    assert calls == [seen[0][0]]  # stopped at the first chunk's report


def test_memory_is_one_chunk_not_the_sample_count():
    # 2^22 evaluations would be 32 MiB per array if held at once; chunks of 16,384 draws keep the peak near 1 MiB
    import tracemalloc

    gd.moments("elu", 1.0, method="monte_carlo", samples=4096)  # warm caches (integrand programs) first
    tracemalloc.start()
    try:
        gd.moments("elu", 1.0, method="monte_carlo", samples=2**22)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20


# ---------------------------------------------------------------- several breakpoints: one program call per side

def hardtanh_references(q):
    """(E f, E f^2, E f'^2) for f = hardtanh(z) = clip(z, -1, 1), z ~ N(0, q), derived by hand at 30 digits.

    With x = z/sqrt(q) standard normal and c = 1/sqrt(q), integration by parts (x phi(x) = -phi'(x)) gives
    E[x^2 1{|x| < c}] = 2 Phi(c) - 1 - 2 c phi(c), and f^2 = 1 where |z| > 1, so
    E f^2 = q (2 Phi(c) - 1 - 2 c phi(c)) + 2 Phi(-c);  f' = 1{|z| < 1} almost everywhere, so
    E f'^2 = 2 Phi(c) - 1;  E f = 0 (f is odd).
    """
    with mp.workdps(30):
        q = mp.mpf(q)
        c = 1 / mp.sqrt(q)
        second = q * (2 * mp.ncdf(c) - 1 - 2 * c * mp.npdf(c)) + 2 * mp.ncdf(-c)
        return 0.0, float(second), float(2 * mp.ncdf(c) - 1)


def relu6_references(q):
    """(E f, E f^2, E f'^2) for f = relu6(z) = min(max(z, 0), 6), z ~ N(0, q), derived by hand at 30 digits.

    Its two sides differ (0 for z < 0, z then 6 above): with s = sqrt(q), c = 6/s, E[x 1{0 < x < c}] =
    phi(0) - phi(c) and E[x^2 1{0 < x < c}] = Phi(c) - 1/2 - c phi(c), so E f = s (phi(0) - phi(c)) + 6 Phi(-c),
    E f^2 = q (Phi(c) - 1/2 - c phi(c)) + 36 Phi(-c), E f'^2 = Phi(c) - 1/2.
    """
    with mp.workdps(30):
        q = mp.mpf(q)
        s = mp.sqrt(q)
        c = 6 / s
        mean = s * (mp.npdf(0) - mp.npdf(c)) + 6 * mp.ncdf(-c)
        second = q * (mp.ncdf(c) - mp.mpf(1) / 2 - c * mp.npdf(c)) + 36 * mp.ncdf(-c)
        return float(mean), float(second), float(mp.ncdf(c) - mp.mpf(1) / 2)


@pytest.mark.parametrize("q", [0.3, 1.7, 25.0])  # the cut at |t| = 1/sqrt(q): 1.83, 0.77, 0.2
@pytest.mark.parametrize("seed", [0, 1])
def test_hardtanh_several_breakpoints_within_five_standard_errors_of_the_hand_derived_forms(q, seed):
    from gainderive.backends.monte_carlo import stratify
    from gainderive.integrand import integrand
    from gainderive.moments import moment_functions
    from gainderive.registry import activation

    act = activation("hardtanh")
    assert act.breakpoints == (-1.0, 1.0) and len(stratify(integrand(act, moment_functions(act)[0]), q).lower) == 2
    m = gd.moments("hardtanh", q, method="monte_carlo", samples=2**18, seed=seed)
    _, second, derivative = hardtanh_references(q)
    # each pair (z, -z) cancels exactly (f is odd); the bar is the rounding floor 8 eps E|f| (|f| <= 1)
    assert m.mean.value == 0.0 and m.mean.error <= 8.5 * np.finfo(float).eps  # (weights sum to 1 + ulps)
    for est, truth in ((m.second_moment, second), (m.derivative_second_moment, derivative)):
        assert abs(est.value - truth) <= LIMIT * est.error + 4 * np.spacing(truth), (est, truth)
        # the bar is narrow enough for "within 5 SE" to mean something (at 2^17 pairs: <= 0.3 % for f^2; f'^2
        # is constant in each stratum, so only the importance weights (within e^{+-0.4} of 1) leave a spread)
        assert 0 < est.error < 5e-3 * truth


@pytest.mark.parametrize("q", [16.0, 144.0])  # the cut at |t| = 6/sqrt(q): 1.5, 0.5
def test_relu6_pieces_differ_on_the_two_sides_within_five_standard_errors(q):
    m = gd.moments("relu6", q, method="monte_carlo", samples=2**18, seed=3)
    for est, truth in zip((m.mean, m.second_moment, m.derivative_second_moment), relu6_references(q)):
        assert abs(est.value - truth) <= LIMIT * est.error + 4 * np.spacing(truth), (est, truth)
        assert 0 < est.error < 5e-3 * truth


def test_a_rounding_every_pair_shares_is_inside_the_bar():
    # GELU at q = 1e-40: Phi(z) rounds to exactly 1/2 for |z| ~ 1e-20, so every antithetic pair averages to 0 and
    # the samples' spread is 0; the true mean is q / sqrt(2 pi (1 + q)) (GELU's closed form, Hendrycks & Gimpel
    # 2016; here in mpmath at 40 digits).  The bar must still cover it: the rounding floor 8 eps E|f| does.
    q = 1e-40
    m = gd.moments("gelu", q, "monte_carlo", samples=10_000, seed=0)
    with mp.workdps(40):
        true = mp.mpf(q) / mp.sqrt(2 * mp.pi * (1 + mp.mpf(q)))
    assert m.mean.value == 0.0  # the situation this test is about
    assert abs(m.mean.value - float(true)) <= m.mean.error
    # and the floor is a floor, not a second standard error: 8 eps E|f|, E|f| ~ E|z|/2 = sqrt(q / (2 pi))
    assert m.mean.error <= 16 * np.finfo(float).eps * math.sqrt(q / (2 * math.pi))
