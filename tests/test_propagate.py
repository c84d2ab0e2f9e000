"""The depth check (gainderive.propagate): sizes bounded before any work, weights regenerated exactly, the
requested mode and distribution reaching the weights, and the forward signal held at q by the derived gain.

Expected values: gains from hand-derived closed forms (erf: E[erf(z)^2] = (2/pi) arcsin(2q/(1+2q)) and
E[erf'(z)^2] = (4/pi)/sqrt(1+4q), Williams 1997; leaky relu: E[f^2] = q (1 + a^2)/2) evaluated in mpmath, and
tanh's moments by mpmath quadrature at 30 digits, all written here.
"""

import math

import mpmath as mp
import numpy as np
import pytest

import gainderive as gd
from gainderive import init
from gainderive import propagate as propagate_module
from gainderive.errors import GainDeriveError
from gainderive.limits import LimitError
from gainderive.propagate import estimated_memory, propagate

SMALL = {"depth": 4, "width": 16, "batch": 8, "networks": 2}  # a network small enough to run in milliseconds


def gaussian_expectation(h, q):
    """E[h(z)], z ~ N(0, q), by mpmath quadrature at 30 digits (independent of gainderive)."""
    with mp.workdps(30):
        q = mp.mpf(q)
        return mp.quad(lambda z: h(z) * mp.exp(-z * z / (2 * q)) / mp.sqrt(2 * mp.pi * q), [-mp.inf, 0, mp.inf])


def refuse_work(monkeypatch):
    """Make any weight draw fail the test: a refusal must come before the first one."""
    def no_sampling(*args, **kwargs):
        raise AssertionError("weights were drawn before the sizes were checked")

    monkeypatch.setattr(init, "sample", no_sampling)


# ---------------------------------------------------------------- sizes, checked before any work

@pytest.mark.parametrize("name, value", [("networks", 0), ("depth", 0), ("width", -3), ("batch", 2.5),
                                         ("networks", True), ("depth", "50"), ("width", None)])
def test_sizes_must_be_integers_at_least_one(monkeypatch, name, value):
    refuse_work(monkeypatch)
    # an unknown activation name is not even looked at: the sizes are checked first
    with pytest.raises(GainDeriveError, match=f"{name} must be an integer >= 1") as info:
        propagate("no_such_activation", **{**SMALL, name: value})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name, value", [("depth", 10**9), ("width", 10**6), ("batch", 10**7), ("networks", 10**6)])
def test_the_issues_sizes_are_refused_at_once(monkeypatch, name, value):
    # the issue's reproducers (MemoryErrors or hangs before): refused by the default limits before any work
    # (refuse_work fails the test if a weight is drawn)
    refuse_work(monkeypatch)
    with pytest.raises(LimitError, match=f"GAINDERIVE_MAX_{name.upper()}") as info:
        propagate("tanh", **{name: value})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["depth", "width", "batch", "networks"])
def test_each_limit_is_read_from_its_environment_variable(monkeypatch, name):
    monkeypatch.setenv(f"GAINDERIVE_MAX_{name.upper()}", "3")
    with pytest.raises(LimitError, match=f"exceeds the limit of 3.*GAINDERIVE_MAX_{name.upper()}=4"):
        propagate("tanh", **{**SMALL, name: 4})
    propagate("tanh", **{**SMALL, name: 3})  # at the limit: accepted


def test_total_work_is_limited_with_a_time_estimate(monkeypatch):
    refuse_work(monkeypatch)
    monkeypatch.setenv("GAINDERIVE_MAX_PROPAGATE_WORK", "1000")
    work = 4 * 2 * 16**2 * (8 + 250)  # depth x networks x width^2 x (batch + 250 for the draws) = 528,384
    with pytest.raises(LimitError, match=f"{work:,} multiply-adds.*about .* here.*GAINDERIVE_MAX_PROPAGATE_WORK"):
        propagate("tanh", **SMALL)


def test_memory_estimate_refuses_before_work(monkeypatch):
    # width 8192 is within raised size limits, but one weight matrix alone is 512 MiB: refused before any draw
    refuse_work(monkeypatch)
    for name in ("width", "propagate_work"):
        monkeypatch.setenv(f"GAINDERIVE_MAX_{name.upper()}", "1e15")
    assert estimated_memory(2, 8192, 1) > 2**30
    with pytest.raises(LimitError, match=r"bytes of working memory.*reduce depth, batch or width.*"
                       r"GAINDERIVE_MAX_MEMORY") as info:
        propagate("tanh", depth=2, width=8192, batch=1, networks=1)
    assert "\n" not in str(info.value)


def test_memory_estimate_grows_with_depth_batch_width_not_networks():
    # f'(x_l) for every layer is depth x batch x width doubles; weights are kept only within the fixed 128 MiB
    # cache: 4096 matrices of width 64 fit, a single one of width 8192 does not
    small, deep = estimated_memory(10, 64, 8), estimated_memory(1000, 64, 8)
    assert deep - small == 8 * 990 * 8 * 64 + 8 * 64**2 * 990  # 990 more layers of f' and of cached matrices
    assert estimated_memory(10**4, 64, 8) - estimated_memory(5000, 64, 8) == 8 * 5000 * 8 * 64  # cache full
    assert estimated_memory(10**5, 512, 64) > 2**30  # the depth limit at the default width: refused as memory


@pytest.mark.parametrize("kwargs, match", [
    ({"seed": -1}, "seed must be an integer >= 0"),
    ({"seed": 1.5}, "seed must be an integer >= 0"),
    ({"mode": "fan_sum"}, "unknown mode 'fan_sum'; accepted: fan_in, fan_out, fan_avg"),
    ({"distribution": "looks_linear"}, "accepted: normal, uniform, truncated_normal, orthogonal"),
    ({"variance": 0.0}, "variance q"),
    ({"variance": [1.0, 2.0]}, "one input variance"),
    ({"gain": -1.0}, "gain must be a finite number > 0"),
    ({"gain": float("inf")}, "gain must be a finite number > 0"),
    ({"gain": True}, "gain must be a finite number > 0"),
])
def test_bad_arguments_are_one_line_errors(kwargs, match):
    with pytest.raises(GainDeriveError, match=match) as info:
        propagate("tanh", **{**SMALL, **kwargs})
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- regenerated weights, seeds, progress

@pytest.mark.parametrize("distribution", ["normal", "orthogonal"])
def test_regenerated_weights_give_exactly_the_stored_weights_result(distribution):
    # the same arithmetic on the same numbers: bit-for-bit equal, whether 0, some or all matrices are cached
    spec = init.spec("tanh", (16, 16), distribution=distribution)
    evaluate = propagate_module._activation_and_derivative(gd.activation("tanh"))
    runs = [propagate_module._one_network(evaluate, spec, 6, 16, 5, 1.0, 3, 0, lambda _: None,
                                          cache_bytes=layers * 8 * 16 * 16) for layers in (0, 2, 6)]
    for forward, backward in runs[1:]:
        assert np.array_equal(forward, runs[0][0]) and np.array_equal(backward, runs[0][1])


def test_same_seed_same_result_other_seed_other_result():
    a, b, c = propagate("elu", seed=5, **SMALL), propagate("elu", seed=5, **SMALL), propagate("elu", seed=6, **SMALL)
    assert np.array_equal(a.forward, b.forward) and np.array_equal(a.backward, b.backward)
    assert not np.array_equal(a.forward, c.forward)
    assert len(a.forward) == len(a.backward) == SMALL["depth"] + 1


def test_progress_per_layer_and_interrupt_within_one_layer():
    seen = []
    propagate("relu", progress=lambda done, total: seen.append((done, total)), **SMALL)
    total = 2 * SMALL["networks"] * SMALL["depth"]
    assert seen == [(k, total) for k in range(1, total + 1)]

    calls = []

    def interrupt(done, total):
        calls.append(done)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        propagate("relu", progress=interrupt, **SMALL)
    assert calls == [1]  # stopped after the first layer, not at the end of the run


# ---------------------------------------------------------------- mode and distribution reach the weights

def erf_gains(q):
    """(fan_in, fan_out, fan_avg) gains of erf for a square layer, from Williams' closed forms."""
    with mp.workdps(30):
        q = mp.mpf(q)
        second = 2 / mp.pi * mp.asin(2 * q / (1 + 2 * q))
        derivative = 4 / mp.pi / mp.sqrt(1 + 4 * q)
        return (float(mp.sqrt(q / second)), float(1 / mp.sqrt(derivative)),
                float(mp.sqrt(2 / (second / q + derivative))))


@pytest.mark.parametrize("mode", ["fan_in", "fan_out", "fan_avg"])
@pytest.mark.parametrize("distribution", ["normal", "uniform", "truncated_normal", "orthogonal"])
def test_mode_and_distribution_reach_the_weights(monkeypatch, mode, distribution):
    drawn = []
    original = init.sample

    def record(spec, rng=None):
        w = original(spec, rng)
        drawn.append(w)
        return w

    monkeypatch.setattr(init, "sample", record)
    q, width = 0.7, 96
    run = propagate("erf", mode=mode, distribution=distribution, variance=q, depth=1, width=width, batch=2,
                    networks=1)
    expected_gain = erf_gains(q)[("fan_in", "fan_out", "fan_avg").index(mode)]
    assert run.gain == pytest.approx(expected_gain, rel=1e-12)  # quadrature moments: ~1e-14 relative
    w = drawn[0]
    target = expected_gain**2 / width
    # the second moment of the N = width^2 entries about 0, within 5 standard errors sqrt((m4 - m2^2) / N) of the
    # target variance (each distribution's own kurtosis enters through m4; orthogonal rows make it exact)
    m2, m4 = np.mean(w**2), np.mean(w**4)
    assert abs(m2 - target) <= 5 * math.sqrt((m4 - m2**2) / w.size) + 1e-15
    std = math.sqrt(target)
    if distribution == "uniform":
        assert np.abs(w).max() <= math.sqrt(3) * std
    elif distribution == "truncated_normal":
        assert np.abs(w).max() <= 2 * std / init.truncation_std(2.0)
    elif distribution == "orthogonal":
        assert np.allclose(w @ w.T, expected_gain**2 * np.eye(width), atol=1e-12)


def test_activation_parameters_reach_the_gain():
    # leaky relu: E[f^2] = q (1 + a^2) / 2, so gain_fan_in = sqrt(2 / (1 + a^2)); a = 0.5 gives sqrt(1.6)
    run = propagate("leaky_relu", negative_slope=0.5, **SMALL)
    assert run.gain == pytest.approx(math.sqrt(1.6), rel=1e-14)
    assert propagate("leaky_relu", gain=0.9, **SMALL).gain == 0.9


# ---------------------------------------------------------------- the physics

def test_derived_gain_holds_the_forward_second_moment_at_q():
    """Every layer's E[x_l^2] stays at q within 5 standard deviations of its finite-width spread.

    Spread per layer per network (relative): given W, |W f(x)|^2 / n over one input fluctuates by
    sqrt((2 + kappa) / n), kappa = Var f^2 / (E f^2)^2 (0.627 for tanh at q = 1, below), so over a batch of B
    independent inputs by sqrt((2 + kappa) / (n B)); the scale of W itself, tr(W^T W) / n, adds sqrt(2) / n.
    A deviation decays by the slope s = V'(q) = E[f f' z] / E[f^2] per layer (0.461 here, stable), so it settles
    at sd / sqrt(1 - s^2); the average over N networks divides by sqrt(N).  n = 256, B = 32, N = 4: the bound is
    5 x 0.0130 = 0.065 relative.  A gain 5 % too large moves the fixed point by ~0.1025 / (1 - s) = 19 %.
    """
    q, n, batch, networks = 1.0, 256, 32, 4
    f2 = gaussian_expectation(lambda z: mp.tanh(z) ** 2, q)
    f4 = gaussian_expectation(lambda z: mp.tanh(z) ** 4, q)
    ffz = gaussian_expectation(lambda z: mp.tanh(z) * (1 - mp.tanh(z) ** 2) * z, q)
    kappa, slope = float((f4 - f2**2) / f2**2), float(ffz / f2)
    step = math.sqrt((2 + kappa) / (n * batch)) + math.sqrt(2) / n
    bound = 5 * step / math.sqrt(1 - slope**2) / math.sqrt(networks)
    assert 0.05 < bound < 0.08
    sizes = {"depth": 20, "width": n, "batch": batch, "networks": networks, "variance": q, "seed": 11}
    run = propagate("tanh", **sizes)
    assert run.gain == pytest.approx(float(mp.sqrt(q / f2)), rel=1e-12)
    assert np.all(np.abs(run.forward / q - 1) <= bound)
    too_large = propagate("tanh", gain=1.05 * run.gain, **sizes)
    assert too_large.forward[-1] / q - 1 > bound  # the test can tell a wrong gain apart


def test_blas_runs_on_one_thread_during_the_run_and_is_restored():
    # spin-waiting BLAS threads made the default CLI run 5x slower on a busy 2-core machine (44 s instead of 9 s)
    import ctypes

    try:
        with open("/proc/self/maps") as maps:
            paths = [line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line]
    except OSError:
        paths = []
    getters = [getattr(ctypes.CDLL(p), f"{pre}_get_num_threads{suf}", None)
               for p in sorted(set(paths)) for pre, suf in propagate_module._OPENBLAS_NAMES]
    getters = [g for g in getters if g is not None]
    if not getters:
        pytest.skip("numpy is not linked to a findable OpenBLAS here")
    before = [g() for g in getters]
    during = []
    propagate("relu", progress=lambda d, t: during.append([g() for g in getters]), **SMALL)
    assert all(threads == [1] * len(getters) for threads in during)
    assert [g() for g in getters] == before
