"""Mean-field criticality (issue #7): fixed points, edge of chaos, c*, depth scales, isometry, bad input.

Expected values come from hand-derived closed forms in mpmath (erf: E[erf(z)^2] =
(2/pi) arcsin(2q/(1+2q)) and E[erf'(z)^2] = (4/pi)/sqrt(1+4q), Williams 1997), from
gainderive's high-precision backend at 30 digits, or from the definitions themselves
(iterating the maps for the depth scales, simulating Jacobians for isometry).
"""

import json
import math

import mpmath as mp
import numpy as np
import pytest

import gainderive as gd
from gainderive import meanfield as mf
from gainderive.cli import main
from gainderive.errors import ConvergenceError, GainDeriveError

mp.mp.dps = 40


def erf_second(q):
    return 2 / mp.pi * mp.asin(2 * q / (1 + 2 * q))


def erf_derivative_second(q):
    return 4 / mp.pi / mp.sqrt(1 + 4 * q)


def erf_cmap(c, q, sw, sb):
    """(sigma_w^2 E[erf(u) erf(v)] + sigma_b^2) / q with var u = var v = q (Williams 1997)."""
    return (sw * 2 / mp.pi * mp.asin(2 * q * c / (1 + 2 * q)) + sb) / q


# ---------------------------------------------------------------- fixed points

def test_relu_critical_point_is_he_initialisation():
    point = mf.edge_of_chaos("relu", 0.0)
    assert point.weight_variance == 2.0  # E[relu'(z)^2] = 1/2 exactly (He et al. 2015)
    assert point.variance is None  # relu is positively homogeneous: every q is a fixed point
    assert mf.edge_of_chaos("leaky_relu").weight_variance == pytest.approx(2 / (1 + 0.01**2), rel=1e-14)
    with pytest.raises(GainDeriveError, match="positively homogeneous"):
        mf.edge_of_chaos("relu", 0.05)
    with pytest.raises(GainDeriveError, match="every q"):
        mf.fixed_point("relu", 2.0, 0.0)


def test_tanh_critical_point_at_zero_bias_is_the_linear_limit():
    point = mf.edge_of_chaos("tanh", 0.0)
    assert (point.weight_variance, point.variance) == (1.0, 0.0)  # sigma_w^2 = 1/tanh'(0)^2, q* -> 0


@pytest.mark.parametrize("sw, sb", [(1.5, 0.05), (2.0, 0.1), (4.0, 0.0), (0.8, 0.3)])
def test_erf_fixed_point_against_its_closed_form(sw, sb):
    expected = mp.findroot(lambda q: sw * erf_second(q) + sb - q, 1.0)
    p = mf.fixed_point("erf", sw, sb)
    assert p.variance == pytest.approx(float(expected), rel=1e-12)
    assert abs(p.variance - float(expected)) <= max(p.error, 1e-16)  # the stated error bar holds
    slope = sw * mp.diff(erf_second, expected)  # V'(q*) by differentiating the closed form
    assert p.slope == pytest.approx(float(slope), rel=1e-11)
    assert p.chi1 == pytest.approx(float(sw * erf_derivative_second(expected)), rel=1e-12)


@pytest.mark.parametrize("name, sw, sb", [pytest.param("tanh", 1.5, 0.05, marks=pytest.mark.slow), ("elu", 1.2, 0.1),
                                          pytest.param("gelu", 1.5, 0.2, marks=pytest.mark.slow)])
def test_fixed_points_against_the_high_precision_backend(name, sw, sb):
    def gap(q):
        return sw * gd.moments(name, q, "high_precision", digits=30).second_moment.value + sb - q

    with mp.workdps(40):  # bracketed: V(q) - q > 0 at q = 1e-3 < sigma_b^2 and < 0 at q = 50 for these
        expected = mp.findroot(gap, (mp.mpf("0.001"), mp.mpf(50)), solver="anderson")
    assert mf.fixed_point(name, sw, sb).variance == pytest.approx(float(expected), rel=1e-12)


def test_fixed_points_lists_unstable_ones_and_fixed_point_explains():
    # sigma_b^2 = 0, odd f: q = 0 is unstable when chi_1(0) > 1, and the positive q* is the stable one
    points = mf.fixed_points("tanh", 2.0, 0.0)
    assert len(points) == 1 and points[0].stable
    with pytest.raises(GainDeriveError, match="shrink towards 0"):
        mf.fixed_point("tanh", 0.5, 0.0)  # sigma_w^2 tanh'(0)^2 < 1: variances die out
    with pytest.raises(GainDeriveError, match="grow beyond"):
        mf.fixed_point("relu", 3.0, 0.1)  # V(q) = 1.5 q + 0.1 > q everywhere


def test_variance_map_definition():
    q = np.array([0.1, 1.0, 10.0])
    expected = [float(2.0 * erf_second(mp.mpf(x)) + 0.1) for x in q]
    assert np.allclose(mf.variance_map("erf", q, 2.0, 0.1), expected, rtol=1e-12, atol=0)


# ---------------------------------------------------------------- edge of chaos

@pytest.mark.parametrize("sb", [0.01, 0.05, 0.3, 1.0])
def test_erf_edge_of_chaos_against_its_closed_form(sb):
    q = mp.findroot(lambda q: q - erf_second(q) / erf_derivative_second(q) - sb, 1.0)
    point = mf.edge_of_chaos("erf", sb)
    assert point.variance == pytest.approx(float(q), rel=1e-11)
    assert point.weight_variance == pytest.approx(float(1 / erf_derivative_second(q)), rel=1e-12)
    # it is an edge of chaos by definition: chi_1 = 1 at the fixed point of that (sigma_w^2, sigma_b^2)
    p = mf.fixed_point("erf", point.weight_variance, sb)
    assert p.variance == pytest.approx(float(q), rel=1e-11) and p.chi1 == pytest.approx(1.0, rel=1e-12)


def test_critical_line_is_monotone_for_tanh():
    line = mf.critical_line("tanh", [0.0, 0.05, 0.1, 0.2])
    sw = [p.weight_variance for p in line]
    assert sw[0] == 1.0 and all(a < b for a, b in zip(sw, sw[1:]))
    for p in line[1:]:
        assert p.weight_variance * float(gd.moments("tanh", p.variance).derivative_second_moment.value) == \
            pytest.approx(1.0, rel=1e-12)


# ---------------------------------------------------------------- correlations and depth scales

def test_correlation_fixed_point_and_chi_c_against_closed_forms():
    sw, sb = 4.0, 0.1  # erf in its chaotic phase
    q = mp.findroot(lambda q: sw * erf_second(q) + sb - q, 1.0)
    c_star = mp.findroot(lambda c: erf_cmap(c, q, sw, sb) - c, 0.5)
    # chi_c = sigma_w^2 E[f'(u) f'(v)] is the slope dC/dc at c* (Price's theorem: dE[f(u)f(v)]/d cov = E[f'f'])
    chi_c = mp.diff(lambda c: erf_cmap(c, q, sw, sb), c_star)
    c, slope = mf.correlation_fixed_point("erf", sw, sb)
    assert c == pytest.approx(float(c_star), rel=1e-11)
    assert slope == pytest.approx(float(chi_c), rel=1e-11)


def test_depth_scales_match_their_definitions():
    """xi_q and xi_c from the slopes equal the decay rates of iterated maps (Schoenholz et al. 2017)."""
    from gainderive.correlation import kernel

    r = mf.mean_field("tanh", 2.5, 0.05, depth=10)
    assert r.phase == "chaotic" and r.correlation < 1
    q_star, c_star = r.fixed_point.variance, r.correlation
    q = q_star * (1 + 1e-5)
    for _ in range(3):
        q_next = float(mf.variance_map("tanh", q, 2.5, 0.05))
        ratio, q = (q_next - q_star) / (q - q_star), q_next
    assert -1 / math.log(ratio) == pytest.approx(r.depth_scale_q, rel=1e-3)  # 1e-3: the map's curvature at 1e-5

    def cmap(c):
        return (2.5 * float(kernel("tanh", c, q_star).value) + 0.05) / q_star

    c = c_star + 1e-5
    for _ in range(3):
        c_next = cmap(c)
        ratio, c = (c_next - c_star) / (c - c_star), c_next
    assert -1 / math.log(ratio) == pytest.approx(r.depth_scale_c, rel=1e-3)


def test_ordered_phase_has_c_star_one_and_xi_c_from_chi1():
    r = mf.mean_field("tanh", 1.5, 0.05)
    assert r.phase == "ordered" and r.correlation == 1.0 and r.chi_c == r.chi1
    assert r.depth_scale_c == pytest.approx(-1 / math.log(r.chi1), rel=1e-15)


# ---------------------------------------------------------------- isometry

@pytest.mark.parametrize("depth", [1, 10, 100])
def test_isometry_hand_derived(depth):
    relu = mf.isometry("relu", 2.0, depth, variance=1.0)  # mu1 = mu2 = 1/2: mu2/mu1^2 = 2
    assert relu.mean == 1.0
    assert relu.variance_gaussian == pytest.approx(2 * depth, rel=1e-14)
    assert relu.variance_orthogonal == pytest.approx(depth, rel=1e-14)
    linear = mf.isometry("identity", 1.0, depth, variance=3.0)  # products of Ginibre matrices: variance L
    assert (linear.mean, linear.variance_gaussian, linear.variance_orthogonal) == (1.0, depth, 0.0)


def _simulated_spectrum(activation, sw, q, depth, width, orthogonal, rng):
    """Mean and variance of the eigenvalues of J J^T for a random network with inputs at variance q."""
    f = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh}[activation]
    df = {"relu": lambda z: (z > 0).astype(float), "tanh": lambda z: 1 / np.cosh(z) ** 2}[activation]
    h = rng.standard_normal(width) * math.sqrt(q)
    jac = np.eye(width)
    for _ in range(depth):
        if orthogonal:
            w, r = np.linalg.qr(rng.standard_normal((width, width)))
            w *= np.sign(np.diag(r)) * math.sqrt(sw)
        else:
            w = rng.standard_normal((width, width)) * math.sqrt(sw / width)
        jac = w @ (df(h)[:, None] * jac)  # h_{l+1} = W f(h_l): J_{l+1} = W D_l J_l
        h = w @ f(h)
    eig = np.linalg.eigvalsh(jac @ jac.T)
    return eig.mean(), eig.var()


@pytest.mark.parametrize("orthogonal", [False, True])
def test_isometry_against_simulated_jacobians(orthogonal):
    """Large-width prediction vs finite-width simulation (width 400, 3 networks): 10% covers O(L/N) effects."""
    rng = np.random.default_rng(7)
    depth, width = 4, 400
    runs = [_simulated_spectrum("relu", 2.0, 1.0, depth, width, orthogonal, rng) for _ in range(3)]
    mean, var = np.mean(runs, axis=0)
    iso = mf.isometry("relu", 2.0, depth, variance=1.0)
    assert mean == pytest.approx(iso.mean, rel=0.1)
    assert var == pytest.approx(iso.variance_orthogonal if orthogonal else iso.variance_gaussian, rel=0.15)


# ---------------------------------------------------------------- bad input and the CLI

@pytest.mark.parametrize("call, message", [
    (lambda: mf.fixed_point("tanh", 0.0, 0.1), "weight variance"),
    (lambda: mf.fixed_point("tanh", -1.0, 0.1), "weight variance"),
    (lambda: mf.fixed_point("tanh", 1.0, -0.1), "bias variance"),
    (lambda: mf.fixed_point("tanh", float("nan"), 0.1), "finite"),
    (lambda: mf.edge_of_chaos("tanh", -0.5), "bias variance"),
    (lambda: mf.fixed_point("tanh", 1.0, 0.1, q_range=(1.0, 0.5)), "q_range"),
    (lambda: mf.isometry("relu", 2.0, 0, variance=1.0), "depth"),
    (lambda: mf.edge_of_chaos("softplus", 0.05), "no edge of chaos"),
])
def test_bad_input_is_a_one_line_error(call, message):
    with pytest.raises(GainDeriveError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_unconverged_root_finding_never_returns_a_number(monkeypatch):
    import scipy.optimize

    def stalled(f, a, b, **kwargs):
        class Info:
            converged = False

        return 0.5 * (a + b), Info()

    monkeypatch.setattr(scipy.optimize, "brentq", stalled)
    with pytest.raises(ConvergenceError, match="did not converge"):
        mf.fixed_point("erf", 2.0, 0.1)


@pytest.mark.parametrize("argv", [
    ["critical", "tanh", "-b", "-0.1"], ["critical", "relu", "-b", "0.05"], ["critical", "tanh", "--line", "0:1"],
    ["meanfield", "tanh", "-w", "0"], ["meanfield", "tanh", "-w", "1", "-b", "-1"], ["meanfield", "tanh", "-w", "x"],
    ["meanfield", "tanh", "-w", "0.5"], ["meanfield", "relu", "-w", "2"], ["critical", "nope"],
])
def test_cli_bad_input_exits_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("gainderive: error:") and err.count("\n") == 1


def test_critical_and_meanfield_commands(capsys, tmp_path):
    assert main(["critical", "erf", "-b", "0.05", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    q = mp.findroot(lambda q: q - erf_second(q) / erf_derivative_second(q) - mp.mpf("0.05"), 1.0)
    assert out["weight_variance"] == pytest.approx(float(1 / erf_derivative_second(q)), rel=1e-12)
    assert main(["critical", "relu"]) == 0 and "sigma_w^2 = 2.0" in capsys.readouterr().out
    assert main(["meanfield", "erf", "-w", "4", "-b", "0.1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["phase"] == "chaotic" and 0 < out["correlation_fixed_point"] < 1
    pytest.importorskip("matplotlib")
    png = tmp_path / "line.png"
    assert main(["critical", "tanh", "--line", "0:0.4:5", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- depth and line sizes (issue #12)

def _status(argv):
    """main's exit status; argparse's own usage errors leave through SystemExit with the same status."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("depth", [0, -5, 2.5, True, "50"])
def test_depth_must_be_an_integer_at_least_one(depth):
    for call in (lambda: mf.isometry("relu", 2.0, depth, variance=1.0),
                 lambda: mf.mean_field("no_such_activation", 1.5, 0.05, depth=depth)):  # checked before any work
        with pytest.raises(GainDeriveError, match="depth must be an integer >= 1") as info:
            call()
        assert "\n" not in str(info.value)


def test_depth_beyond_its_limit_is_refused(monkeypatch, capsys):
    from gainderive.limits import LimitError

    with pytest.raises(LimitError, match="GAINDERIVE_MAX_DEPTH"):
        mf.mean_field("tanh", 1.5, 0.05, depth=10**9)  # the reproducer: overflowed before
    assert _status(["meanfield", "tanh", "-w", "1.5", "--depth", "1000000000"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    monkeypatch.setenv("GAINDERIVE_MAX_DEPTH", "10")
    with pytest.raises(LimitError, match="exceeds the limit of 10"):
        mf.isometry("relu", 2.0, 11, variance=1.0)


def test_isometry_at_huge_depth_is_inf_zero_or_exact_never_an_overflow(monkeypatch):
    monkeypatch.setenv("GAINDERIVE_MAX_DEPTH", "1e9")
    chaotic = mf.isometry("tanh", 3.0, 10**9, variance=1.0)  # 3 E[tanh'^2] = 1.39 > 1 per layer
    assert chaotic.mean == chaotic.variance_gaussian == chaotic.variance_orthogonal == math.inf
    ordered = mf.isometry("tanh", 1.0, 10**9, variance=1.0)  # 0.46 per layer
    assert ordered.mean == ordered.variance_gaussian == ordered.variance_orthogonal == 0.0
    relu = mf.isometry("relu", 2.0, 10**9, variance=1.0)  # exactly 1 per layer: mean 1, variances 2L and L
    assert (relu.mean, relu.variance_gaussian, relu.variance_orthogonal) == (1.0, 2e9, 1e9)
    linear = mf.isometry("identity", 4.0, 10**9, variance=1.0)  # 4^L overflows; excess 0: variance exactly 0
    assert (linear.mean, linear.variance_orthogonal) == (math.inf, 0.0) and linear.variance_gaussian == math.inf


# mean^2 below exp(700) (the direct power) and above it (the log path, variance still finite: 1.7e307)
@pytest.mark.parametrize("depth", [1000, 1057])
def test_isometry_near_the_double_range_against_mpmath(depth):
    iso = mf.isometry("tanh", 3.0, depth, variance=1.0)
    with mp.workdps(40):
        mean = (3 * mp.mpf(iso.mu1)) ** depth
        excess = mp.mpf(iso.mu2) / mp.mpf(iso.mu1) ** 2 - 1
        variance = mean**2 * depth * excess
    # the powers of the same mu1, mu2 in mpmath: depth x log(per layer) carries ~depth x eps relative rounding
    # (the direct power: a few ulps; the log path: |log variance| ~ 710 times eps), so 1e-12 bounds both
    assert iso.mean == pytest.approx(float(mean), rel=1e-12)
    assert iso.variance_orthogonal == pytest.approx(float(variance), rel=1e-12)


def test_critical_line_length_is_limited_before_work_and_reports_progress():
    from gainderive.limits import LimitError, limit

    with pytest.raises(LimitError, match=r"10,001 bias variances on one critical line.*GAINDERIVE_MAX_LINE") as info:
        mf.critical_line("no_such_activation", np.linspace(0, 1, limit("line") + 1))
    assert "\n" not in str(info.value)
    seen = []
    mf.critical_line("erf", [0.05, 0.1, 0.2], progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    for bad in ([], "0.1,0.2", [[0.1, 0.2]]):
        with pytest.raises(GainDeriveError, match="bias variances"):
            mf.critical_line("erf", bad)


def test_mean_field_reports_progress_after_each_stage():
    seen = []
    mf.mean_field("erf", 2.0, 0.1, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
