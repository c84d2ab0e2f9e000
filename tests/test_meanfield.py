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
    """Out of rounds: a one-line ConvergenceError naming sigma_w^2 and sigma_b^2, never an unconverged number."""
    assert mf.fixed_point("erf", 2.0, 0.1).variance > 0  # converges with the default budget
    monkeypatch.setattr(mf, "_MAX_ITERATIONS", 1)  # one round: the scan's guess is never within 1e-15
    with pytest.raises(ConvergenceError, match=r"erf at sigma_w\^2 = 2, sigma_b\^2 = 0.1 did not converge") as info:
        mf.fixed_point("erf", 2.0, 0.1)
    assert "\n" not in str(info.value)


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


# ---------------------------------------------------------------- vectorised root finding (issue #13)
# Expected values: hand-derived closed forms solved by mpmath findroot at 40 digits, or tanh's moments by mp.quad
# at 30 digits.  E[f^2] and E[f'^2] come from quadrature with relative error ~1e-14 (DEFAULT_RTOL 1e-13 is its
# bound); a relative error e in h(q) = q - E[f^2]/E[f'^2] moves the root by e * (E[f^2]/E[f'^2]) / (q h'(q))
# relative, and each test computes that condition number so its tolerance is justified where it is used.

def elu_second(q):
    """E[elu(z)^2], alpha = 1: q/2 + E[(e^z - 1)^2; z < 0], with E[e^(kz); z < 0] = e^(k^2 q/2) Phi(-k sqrt q)."""
    s = mp.sqrt(q)
    return q / 2 + mp.exp(2 * q) * mp.ncdf(-2 * s) - 2 * mp.exp(q / 2) * mp.ncdf(-s) + mp.mpf(1) / 2


def elu_derivative_second(q):
    """E[elu'(z)^2] = P(z > 0) + E[e^(2z); z < 0]."""
    return mp.mpf(1) / 2 + mp.exp(2 * q) * mp.ncdf(-2 * mp.sqrt(q))


def critical_reference(second, derivative_second, sb, guess):
    """(q*, sigma_w^2, kappa, lam) on the edge of chaos from closed forms, q - E[f^2]/E[f'^2] = sigma_b^2, at 40
    digits; kappa = (E[f^2]/E[f'^2]) / (q h'(q)) is the root's condition number (relative error of q* per
    relative error of the ratio) and lam = |d log E[f'^2] / d log q| carries q*'s error into sigma_w^2."""
    with mp.workdps(40):
        q = mp.findroot(lambda q: q - second(q) / derivative_second(q) - mp.mpf(sb), mp.mpf(guess))
        ratio = second(q) / derivative_second(q)
        kappa = abs(ratio / (q * mp.diff(lambda x: x - second(x) / derivative_second(x), q)))
        lam = abs(q * mp.diff(derivative_second, q) / derivative_second(q))
        return q, 1 / derivative_second(q), float(kappa), float(lam)


@pytest.mark.parametrize("name, second, derivative_second", [("erf", erf_second, erf_derivative_second),
                                                             ("elu", elu_second, elu_derivative_second)])
def test_critical_line_against_closed_forms_at_40_digits(name, second, derivative_second):
    bias = [1e-3, 0.01, 0.05, 0.1, 0.3, 0.5, 1.0, 2.0]
    line = mf.critical_line(name, bias)
    assert [p.bias_variance for p in line] == bias  # one edge per sigma_b^2, in order
    for sb, p in zip(bias, line):
        q, sw, kappa, lam = critical_reference(second, derivative_second, sb, p.variance)
        # E[f^2] and E[f'^2] by quadrature carry ~1e-14 relative each (their error bars), so the ratio 2e-14,
        # times the condition number kappa (1 to 62 on this range: small sigma_b^2 puts q* where h is flat);
        # sigma_w^2 = 1/E[f'^2](q*) adds E[f'^2]'s own 1e-14 to lam times the error of q*
        tol_q = 2e-14 * max(kappa, 1)
        assert abs(p.variance - q) <= tol_q * q, (sb, kappa, float(abs(p.variance - q) / q))
        assert abs(p.weight_variance - sw) <= (1e-14 + lam * tol_q) * sw, (sb, float(abs(p.weight_variance - sw) / sw))
        # V'(q*) at the edge: sigma_w^2 dE[f^2]/dq, the closed form differentiated by mpmath; E[f f' z]/q by
        # quadrature (1e-14) plus the slope's change over q*'s error (at most tol_q)
        with mp.workdps(40):
            slope = sw * mp.diff(second, q)
        assert abs(p.slope - slope) <= (1e-14 + 2 * tol_q) * abs(slope)


def test_erf_critical_line_at_zero_bias_is_the_linear_limit():
    # erf(0) = 0, erf'(0) = 2/sqrt(pi): sigma_w^2 = 1/erf'(0)^2 = pi/4 in the limit q* -> 0
    line = mf.critical_line("erf", [0.0, 0.05])
    assert line[0].variance == 0.0 and line[0].weight_variance == pytest.approx(math.pi / 4, rel=4e-16)
    assert line[1].variance > 0


TANH_EDGE = {0.05: "0.57", 0.5: "1.97"}  # sigma_b^2: rough q* to start findroot (docs/mean_field.md: 0.5700478816)


def tanh_expectation(g, q):
    """E[g(z)], z ~ N(0, q), g even: mp.quad on the folded half-line, split where the integrand bends."""
    s = mp.sqrt(q)
    return 2 * mp.quad(lambda t: g(s * t) * mp.npdf(t), [0, 1, 2, 4, 8, mp.inf])


def test_tanh_critical_points_against_mp_quad_at_30_digits():
    bias = sorted(TANH_EDGE)
    line = mf.critical_line("tanh", bias)
    for sb, p in zip(bias, line):
        with mp.workdps(30):
            def second(q):
                return tanh_expectation(lambda z: mp.tanh(z) ** 2, q)

            def derivative_second(q):
                return tanh_expectation(lambda z: mp.sech(z) ** 4, q)

            def gap(q, sb=sb):
                return q - second(q) / derivative_second(q) - mp.mpf(sb)

            q = mp.findroot(gap, mp.mpf(TANH_EDGE[sb]))
            sw = 1 / derivative_second(q)
        # h'(q*) = 0.3..0.5 here and E[f^2]/E[f'^2] < q*: the condition number is < 3, so 1e-13 covers the
        # moments' ~1e-14 (checked at 40 digits on the same grid in bench/bench_speed.py: 3e-15)
        assert abs(p.variance - q) <= 1e-13 * q
        assert abs(p.weight_variance - sw) <= 1e-13 * sw


def test_critical_line_equals_one_point_solves():
    """Solving 9 sigma_b^2 together gives each the root a solve of that sigma_b^2 alone gives."""
    bias = [0.0, 0.002, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0, 3.0]
    line = mf.critical_line("tanh", bias)
    for sb, p in zip(bias, line):
        alone = mf.edge_of_chaos("tanh", sb)
        # each q is integrated to its own tolerance whatever the other q of the call (quadrature.integrate), so
        # both are the same root to within the 1e-13 both meet against the references above
        assert alone.bias_variance == p.bias_variance == sb
        assert abs(alone.variance - p.variance) <= 1e-13 * p.variance
        assert abs(alone.weight_variance - p.weight_variance) <= 1e-13 * p.weight_variance


def _count_quadrature_calls(monkeypatch) -> list[int]:
    """The number of q of every quadrature call from here on, in order."""
    from gainderive.backends import quadrature

    calls = []
    integrate = quadrature.integrate

    def counted(integrand, variance, **options):
        calls.append(np.size(variance))
        return integrate(integrand, variance, **options)

    monkeypatch.setattr(quadrature, "integrate", counted)
    return calls


def test_critical_line_costs_a_handful_of_array_moment_calls(monkeypatch):
    """All sigma_b^2 advance together: one scan and a few rounds, whatever the number of sigma_b^2."""
    calls = _count_quadrature_calls(monkeypatch)
    bias = np.linspace(0, 0.5, 42)[1:]
    line = mf.critical_line("tanh", bias)
    assert len(line) == 41
    # the scan (241 q), then rounds over the open brackets: the secant from the scan's cubic needs 3 or 4
    # (20 per decade puts the cubic within ~1e-5 of q*); scalar root finding needed ~9 calls per sigma_b^2
    assert calls[0] == mf._SCAN and 3 <= len(calls) - 1 <= 8, calls
    assert max(calls[1:]) == 41


def test_critical_line_progress_is_reported_once_per_value():
    seen = []
    mf.critical_line("tanh", [0.0, 0.05, 0.1, 0.2], progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    seen.clear()
    mf.critical_line("relu", [0.0], progress=lambda d, t: seen.append((d, t)))  # homogeneous: no root finding
    assert seen == [(1, 1)]


def test_critical_line_out_of_rounds_names_the_bias_variance(monkeypatch):
    monkeypatch.setattr(mf, "_MAX_ITERATIONS", 1)
    with pytest.raises(ConvergenceError, match=r"edge of chaos of erf did not converge .*sigma_b\^2 = 0.05 ") as info:
        mf.critical_line("erf", [0.05, 0.2])
    assert "\n" not in str(info.value) and "0.2 (near q =" in str(info.value)


@pytest.mark.parametrize("sw, sb", [(1.5, 0.05), (1.2, 0.1), (0.8, 0.3)])
def test_elu_fixed_point_against_its_closed_form_at_40_digits(sw, sb):
    with mp.workdps(40):
        q = mp.findroot(lambda q: sw * elu_second(q) + sb - q, mp.mpf(1))
        slope = sw * mp.diff(elu_second, q)
        chi1 = sw * elu_derivative_second(q)
    p = mf.fixed_point("elu", sw, sb)
    assert abs(p.variance - q) <= p.error + 4 * np.finfo(float).eps * q  # the error bar holds
    assert p.error <= 1e-12 * q  # and is tight: err(E f^2) ~1e-14 relative over |1 - V'(q*)| > 0.1
    assert abs(p.slope - slope) <= 1e-12 * abs(slope) and abs(p.chi1 - chi1) <= 1e-12 * chi1


def test_fixed_points_refines_every_bracket_together():
    """f = x^2: V(q) = 3 sigma_w^2 q^2 + sigma_b^2 has two fixed points, q = (1 -+ sqrt(1 - 12 sw sb)) / (6 sw)."""
    sw, sb = 1.0, 0.05
    with mp.workdps(40):
        root = mp.sqrt(1 - 12 * mp.mpf(sw) * mp.mpf(sb))
        expected = [(1 - root) / (6 * sw), (1 + root) / (6 * sw)]
    points = mf.fixed_points("x**2", sw, sb)
    assert len(points) == 2
    for p, q in zip(points, expected):
        assert abs(p.variance - q) <= p.error + 4 * np.finfo(float).eps * q
        assert p.error <= 1e-13 * q  # polynomial pieces are integrated exactly: only rounding remains
        assert abs(p.slope - 6 * sw * q) <= 1e-13 * 6 * sw * q  # V'(q) = 6 sw q
        assert abs(p.chi1 - 4 * sw * q) <= 1e-13 * 4 * sw * q  # E[(2z)^2] = 4q
    assert [p.stable for p in points] == [True, False]
    assert mf.fixed_point("x**2", sw, sb).variance == points[0].variance


def test_fixed_point_costs_a_handful_of_array_moment_calls(monkeypatch):
    calls = _count_quadrature_calls(monkeypatch)
    mf.fixed_point("elu", 1.5, 0.05)
    # the scan, then Newton rounds from the scan's cubic (~1e-5 off): 1e-10, then below 1e-15
    assert calls[0] == mf._SCAN and 1 <= len(calls) - 1 <= 4, calls


def test_fixed_point_search_keeps_to_the_q_where_every_moment_it_needs_exists():
    """The scan of E[f^2] alone reaches q where E[f f' z] is lost to rounding (sigmoid: the root of V(q) = q
    near sigma_w^2 / 2 = 5e5); the search then keeps to the q where all are computable, and says so, as the
    scan of every moment did before (docs/mean_field.md: the scan is cut short and messages say so)."""
    with pytest.raises(GainDeriveError, match=r"has no fixed point in \[1e-06, .*\]: layer variances grow") as info:
        mf.fixed_point("sigmoid", 1e6)
    assert not isinstance(info.value, ConvergenceError) and "\n" not in str(info.value)
