"""Singular activations and divergence (issue 11, points 2 and 4): decided from the formula, before any backend.

* f jumps (sign, a thresholded identity) or f' is not square-integrable at a point (log|x|, |x|^-0.2): E[f],
  E[f^2] and Var f are computed as usual, E[f'^2] is inf with the reason, gain_fan_out is 0, and everything
  that needs only the forward moments works.
* f grows like exp(c x^2): E[f] exists for q < 1/(2c) and E[f^2] for q < 1/(4c); beyond, a one-line
  DivergenceError naming that range, without running a backend.

References are hand-derived (formulas in the comments) or mpmath integrals at 30 digits written here.  Values
are compared within the reported error bar plus 4 ulps of the reference (the bar is the claim under test; the
ulps cover the final rounding to float64).
"""

import csv
import io
import json
import math

import mpmath as mp
import numpy as np
import pytest

import gainderive as gd
from gainderive.cli import _cli_message, main
from gainderive.errors import DiracDerivativeError, DivergenceError, GainDeriveError
from gainderive.integrand import DF, F
from gainderive.singular import analyse

ULP = np.finfo(float).eps


def within(estimate, reference, index=None):
    value = np.asarray(estimate.value, dtype=float)
    error = np.asarray(estimate.error, dtype=float)
    if index is not None:
        value, error = value[index], error[index]
    reference = float(reference)
    assert abs(float(value) - reference) <= float(error) + 4 * ULP * abs(reference), (float(value), reference)


def strict_json(text):
    """json.loads that rejects the non-standard Infinity / NaN tokens."""
    def refuse(token):
        raise ValueError(f"invalid JSON token {token}")

    return json.loads(text, parse_constant=refuse)


# ---------------------------------------------------------------- jumps: sign(x)

@pytest.mark.parametrize("method", ["auto", "quadrature"])
def test_sign_has_every_forward_moment_and_an_infinite_derivative_moment(method):
    # sign(z)^2 = 1 almost surely and sign is odd: E f = 0, E f^2 = 1, Var f = 1 at every q (by hand)
    q = np.array([1e-3, 0.5, 1.0, 7.0, 1e3])
    m = gd.moments("sign(x)", q, method)
    for i in range(q.size):
        within(m.mean, 0.0, i)
        within(m.second_moment, 1.0, i)
        within(m.variance, 1.0, i)
    d = m.derivative_second_moment
    assert np.all(np.isinf(d.value)) and np.all(d.value > 0) and np.all(np.asarray(d.error) == 0)
    assert d.method == "infinite: jump of 2 at z = 0: f' has a Dirac mass there"


def test_sign_gains_fan_in_and_variance_exist_fan_out_is_zero_with_the_reason():
    # gain_fan_in = sqrt(q / E f^2) = sqrt(q); gain_variance = sqrt(q / Var f) = sqrt(q); gain_fan_out = 1/sqrt(inf)
    for q in (0.25, 4.0):
        g = gd.gains(gd.moments("sign(x)", q))
        within(g.fan_in, math.sqrt(q))
        within(g.variance, math.sqrt(q))
        assert g.fan_out.value == 0 and g.fan_out.error == 0 and "jump of 2 at z = 0" in g.fan_out.method
        assert float(gd.gain("sign(x)", q, mode="fan_in")) == pytest.approx(math.sqrt(q), rel=4 * ULP)
    with pytest.raises(GainDeriveError, match=r"mode=\"fan_out\" needs E\[f'\(z\)\^2\], which is infinite") as info:
        gd.gain("sign(x)", 1.0, mode="fan_out")
    assert "\n" not in str(info.value)


def test_sign_at_high_precision():
    m = gd.moments("sign(x)", "2", method="high_precision", digits=25)
    assert abs(m.second_moment.value - 1) <= m.second_moment.error + mp.mpf(10) ** -30
    assert m.derivative_second_moment.value == mp.inf
    assert gd.gains(m).fan_out.value == 0


# ---------------------------------------------------------------- jumps: where(x > 0.5, x + 1, x)

def _threshold_references(q):
    """f = z + 1{z > 1/2}, z ~ N(0, q), s = sqrt q, a = 1/2 (by hand):
    E f = E z + P(z > a) = Phi(-a/s);  E f^2 = E z^2 + E[(2z + 1) 1{z > a}] = q + 2 s phi(a/s) + Phi(-a/s)."""
    with mp.workdps(40):
        s, a = mp.sqrt(mp.mpf(q)), mp.mpf(1) / 2
        mean = mp.ncdf(-a / s)
        second = mp.mpf(q) + 2 * s * mp.npdf(a / s) + mp.ncdf(-a / s)
        return mean, second, second - mean**2


@pytest.mark.parametrize("method", ["auto", "quadrature"])
def test_thresholded_identity_forward_moments_by_hand(method):
    q = np.array([0.01, 0.3, 1.0, 20.0])
    m = gd.moments("where(x > 0.5, x + 1, x)", q, method)
    for i, qi in enumerate(q):
        mean, second, var = _threshold_references(qi)
        within(m.mean, mean, i)
        within(m.second_moment, second, i)
        within(m.variance, var, i)
    assert np.all(np.isinf(m.derivative_second_moment.value))
    assert m.derivative_second_moment.method == "infinite: jump of 1 at z = 0.5: f' has a Dirac mass there"
    g = gd.gains(m)
    assert np.all(g.fan_out.value == 0)
    for i, qi in enumerate(q):
        assert float(g.fan_in.value[i]) == pytest.approx(math.sqrt(qi / float(_threshold_references(qi)[1])),
                                                         rel=1e-13)


def test_thresholded_identity_by_monte_carlo_within_five_standard_errors():
    mean, second, _ = _threshold_references(1.0)
    m = gd.moments("where(x > 0.5, x + 1, x)", 1.0, "monte_carlo", samples=200_000, seed=3)
    assert abs(float(m.mean.value) - float(mean)) <= 5 * float(m.mean.error)
    assert abs(float(m.second_moment.value) - float(second)) <= 5 * float(m.second_moment.error)
    assert math.isinf(m.derivative_second_moment.value)


# ---------------------------------------------------------------- f' not square-integrable at a point

def test_log_abs_forward_moments_against_mpmath_and_infinite_derivative_moment():
    # E[log|z|] and E[log^2|z|] for z ~ N(0, q): 2 * int_0^inf log(t)^k phi_q(t) dt by mpmath at 30 digits
    q = 1.7
    with mp.workdps(30):
        s = mp.sqrt(mp.mpf(q))

        def density(t):
            return mp.npdf(t / s) / s

        mean = 2 * mp.quad(lambda t: mp.log(t) * density(t), [0, 1, mp.inf])
        second = 2 * mp.quad(lambda t: mp.log(t) ** 2 * density(t), [0, 1, mp.inf])
    m = gd.moments("log(abs(x))", q)
    within(m.mean, mean)
    within(m.second_moment, second)
    within(m.variance, second - mean**2)
    d = m.derivative_second_moment
    assert math.isinf(d.value) and d.error == 0
    assert d.method == "infinite: f'(z)^2 ~ |z|^-2 is not integrable at z = 0"
    assert gd.gains(m).fan_out.value == 0


def test_power_singularity_at_high_precision_by_hand():
    # E|z|^p = q^(p/2) 2^(p/2) Gamma((p + 1)/2) / sqrt(pi) for p > -1 (Gaussian absolute moments, by hand)
    q = mp.mpf(2)
    m = gd.moments("abs(x)**-0.2", "2", method="high_precision", digits=15)

    def absolute_moment(p):
        p = mp.mpf(p)
        return q ** (p / 2) * 2 ** (p / 2) * mp.gamma((p + 1) / 2) / mp.sqrt(mp.pi)

    with mp.workdps(30):
        assert abs(m.mean.value - absolute_moment("-0.2")) <= m.mean.error
        assert abs(m.second_moment.value - absolute_moment("-0.4")) <= m.second_moment.error
    assert m.derivative_second_moment.value == mp.inf
    assert m.derivative_second_moment.method == "infinite: f'(z)^2 ~ |z|^-2.4 is not integrable at z = 0"


@pytest.mark.parametrize(("formula", "reason"), [
    ("log(abs(x - 0.5))", "f'(z)^2 ~ |z - 0.5|^-2 is not integrable at z = 0.5"),
    ("sqrt(abs(x))", "f'(z)^2 ~ |z|^-1 is not integrable at z = 0"),  # f'^2 = 1/(4|z|): the borderline power
    ("where(x > 0, x**0.3, 0)", "f'(z)^2 ~ |z|^-1.4 is not integrable at z = 0"),
])
def test_derivative_moment_verdicts(formula, reason):
    verdict = analyse(gd.activation(formula), {"f'(z)^2": DF**2, "f(z)^2": F**2})
    assert set(verdict) == {"f'(z)^2"} and verdict["f'(z)^2"].reason == reason


def test_log_abs_digits_15_gives_infinity_not_a_large_number():
    # the reproducer: --digits 15 used to give E[f'^2] = 1.28e29 +- 2.0
    m = gd.moments("log(abs(x))", "1", method="high_precision", digits=15)
    assert m.derivative_second_moment.value == mp.inf
    with mp.workdps(30):  # E[log|Z|] = -(gamma + log 2)/2 (by hand, from the Gaussian's Mellin transform)
        assert abs(m.mean.value + (mp.euler + mp.log(2)) / 2) <= m.mean.error


# ---------------------------------------------------------------- f or f^2 not integrable: refusals

@pytest.mark.parametrize(("formula", "fragment"), [
    ("1/x", "E[f(z)] of 1/x is infinite for every q: f(z) ~ |z|^-1 is not integrable at z = 0"),
    ("abs(x)**-0.6", "E[f(z)^2] of abs(x)**-0.6 is infinite for every q: f(z)^2 ~ |z|^-1.2 is not integrable"),
    ("1/(x - 0.25)", "not integrable at z = 0.25"),
    ("1/(exp(x) - 2)", "not integrable at z = 0.693147"),  # a root found numerically: log 2
])
def test_not_square_integrable_f_is_a_one_line_divergence(formula, fragment):
    with pytest.raises(DivergenceError) as info:
        gd.moments(formula, 1.0)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_expectation_of_an_infinite_h_refuses():
    with pytest.raises(DivergenceError, match=r"E\[df\*\*2\] of log\(abs\(x\)\) is infinite for every q"):
        gd.expectation("log(abs(x))", "df**2", 1.0)
    with pytest.raises(DiracDerivativeError):
        gd.expectation("sign(x)", "df**2", 1.0)
    # a finite h of the same activation is computed: E[log^2|z|] at q = 1 = (gamma + log 2)^2/4 + pi^2/8 (by hand)
    with mp.workdps(30):
        reference = (mp.euler + mp.log(2)) ** 2 / 4 + mp.pi**2 / 8
    within(gd.expectation("log(abs(x))", "f**2", 1.0), reference)


# ---------------------------------------------------------------- growth like exp(c x^2)

def test_exp_c_x_squared_below_the_threshold_by_hand():
    # z ~ N(0, q): E[e^{a z^2}] = (1 - 2aq)^{-1/2} and E[z^2 e^{a z^2}] = q (1 - 2aq)^{-3/2} for 2aq < 1.
    # f = e^{c z^2}: E f (a = c), E f^2 (a = 2c), f'^2 = 4c^2 z^2 e^{2c z^2}
    c, q = 0.2, 1.0
    m = gd.moments("exp(0.2*x**2)", q)
    with mp.workdps(40):
        c_, q_ = mp.mpf("0.2"), mp.mpf(q)
        within(m.mean, 1 / mp.sqrt(1 - 2 * c_ * q_))
        within(m.second_moment, 1 / mp.sqrt(1 - 4 * c_ * q_))
        within(m.derivative_second_moment, 4 * c_**2 * q_ * (1 - 4 * c_ * q_) ** mp.mpf(-1.5))
    assert c * q < 0.25  # below 1/(4c), where E f^2 exists


@pytest.mark.parametrize(("q", "fragment"), [
    (1.25, "E[f(z)^2] of exp(0.2*x**2) is infinite at q = 1.25"),  # q = 1/(4c) itself: f^2 phi is constant
    (2.0, "E[f(z)^2] of exp(0.2*x**2) is infinite at q = 2"),
])
def test_exp_c_x_squared_at_and_above_the_threshold(q, fragment):
    with pytest.raises(DivergenceError) as info:
        gd.moments("exp(0.2*x**2)", q)
    message = str(info.value)
    assert fragment in message and message.endswith("it exists only for q < 1.25") and "\n" not in message


def _no_integration(monkeypatch):
    """Fail the test if any backend integrates: the refusal must come from the up-front analysis."""
    from gainderive.backends import high_precision, quadrature

    def refuse(*args, **kwargs):
        raise AssertionError("a backend integrated: the divergence was not found up front")

    monkeypatch.setattr(quadrature, "integrate", refuse)
    monkeypatch.setattr(high_precision, "integrate", refuse)


def test_exp_x_squared_is_refused_at_once_at_every_precision(monkeypatch):
    # the reproducer: exp(x**2) went down a 41 s high-precision path to learn it diverges for q >= 1/2
    _no_integration(monkeypatch)
    for method, options in (("auto", {}), ("high_precision", {"digits": 30})):
        with pytest.raises(DivergenceError, match=r"E\[f\(z\)\] of exp\(x\*\*2\) is infinite at q = 1.*"
                                                  r"exists only for q < 0.5$"):
            gd.moments("exp(x**2)", 1.0, method, **options)


def test_growth_verdicts_read_the_formula():
    act = gd.activation("exp(x**2/2)/(1 + x**4)")
    verdict = analyse(act, {"f": F})["f"]
    # f phi ~ 1/z^4 at q = 1/(2c) = 1: integrable at the threshold itself, infinite beyond it
    assert verdict.threshold == pytest.approx(1.0, rel=1e-12) and not verdict.at(1.0) and verdict.at(1.001)
    assert verdict.exists() == "for q <= 1"
    for formula in ("exp(x**3)", "exp(exp(x))", "exp(x**2*log(1 + abs(x)))"):
        assert analyse(gd.activation(formula), {"f": F})["f"].everywhere, formula
    for formula in ("exp(x)", "x**7", "tanh(x)", "x*sigmoid(x)", "exp(x)*sin(x)", "exp(-x**2)"):
        assert analyse(gd.activation(formula), {"f": F, "df2": DF**2}) == {}, formula
    rate = analyse(gd.activation("2**(x**2)"), {"f": F})["f"].rate
    assert rate == pytest.approx(math.log(2), rel=1e-12)  # 2^(x^2) = e^{(log 2) x^2}


# ---------------------------------------------------------------- downstream: table, init, mean field

def test_table_writes_inf_and_zero_validly_in_every_format():
    t = gd.table("sign(x)", [0.5, 2.0])
    assert np.all(np.isinf(t.columns["derivative_second_moment"])) and np.all(t.columns["gain_fan_out"] == 0)
    rows = list(csv.reader(line for line in io.StringIO(t.to_csv()) if not line.startswith("#")))
    header, body = rows[0], rows[1:]
    values = [dict(zip(header, map(float, row))) for row in body]
    assert all(math.isinf(v["derivative_second_moment"]) and v["gain_fan_out"] == 0 for v in values)
    assert values[1]["gain_fan_in"] == pytest.approx(math.sqrt(2.0), rel=1e-14)
    payload = strict_json(json.dumps(t.to_json()))
    column = payload["columns"].index("derivative_second_moment")
    assert all(row[column] == "inf" for row in payload["rows"])
    assert "jump of 2 at z = 0" in payload["meta"]["method"]["derivative_second_moment"]
    assert "| inf |" in t.to_markdown()
    with pytest.raises(GainDeriveError, match="infinite"):
        t.lookup("derivative_second_moment")


def test_init_fan_in_works_and_modes_needing_the_derivative_say_why_not():
    s = gd.init.spec("sign(x)", (64, 32), mode="fan_in", variance=4.0)
    assert s.gain == pytest.approx(2.0, rel=1e-14) and s.std == pytest.approx(2.0 / math.sqrt(32), rel=1e-14)
    for mode in ("fan_out", "fan_avg"):
        with pytest.raises(GainDeriveError, match=f"mode=\"{mode}\" needs E") as info:
            gd.init.spec("log(abs(x))", (64, 32), mode=mode)
        assert "not integrable at z = 0" in str(info.value)


def test_mean_field_needs_the_derivative_moment_and_says_so():
    from gainderive import meanfield

    with pytest.raises(GainDeriveError, match=r"need E\[f'\(z\)\^2\], which is infinite for sign\(x\) \(jump"):
        meanfield.edge_of_chaos("sign(x)")
    # the variance map needs only E f^2 = 1: V(q) = sigma_w^2 + sigma_b^2
    assert np.all(meanfield.variance_map("sign(x)", [0.5, 3.0], 2.0, 0.25) == 2.25)


# ---------------------------------------------------------------- the command line

def run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_derive_prints_infinity_with_the_reason_and_exits_0(capsys):
    status, out, err = run(capsys, "derive", "sign(x)")
    assert status == 0 and not err
    line = next(row for row in out.splitlines() if row.strip().startswith("E[f'(z)^2]"))
    assert "∞" in line and "jump of 2 at z = 0" in line
    status, out, _ = run(capsys, "derive", "sign(x)", "--json")
    report = strict_json(out)
    assert status == 0 and report["moments"]["derivative_second_moment"]["value"] == "inf"
    assert report["gains"]["fan_out"] == 0 and report["gains"]["fan_in"] == 1


def test_derive_log_abs_digits_15_prints_infinity(capsys):
    status, out, _ = run(capsys, "derive", "log(abs(x))", "--digits", "15")
    assert status == 0
    line = next(row for row in out.splitlines() if row.strip().startswith("E[f'(z)^2]"))
    assert "∞" in line and "|z|^-2 is not integrable at z = 0" in line


def test_table_command_writes_valid_json_and_csv(capsys, tmp_path):
    status, out, _ = run(capsys, "table", "where(x > 0.5, x + 1, x)", "-q", "0.5,1", "-f", "json", "--quiet")
    assert status == 0 and strict_json(out)["rows"][0][3] == "inf"
    target = tmp_path / "t.csv"
    status, _, _ = run(capsys, "table", "sign(x)", "-q", "1", "-o", str(target), "--quiet")
    lines = [line for line in target.read_text().splitlines() if not line.startswith("#")]
    assert status == 0 and lines[1].split(",")[3] == "inf" and lines[1].split(",")[6] == "0.0"


def test_exp_x_squared_exits_2_at_once_with_one_line(capsys, monkeypatch):
    _no_integration(monkeypatch)
    status, out, err = run(capsys, "derive", "exp(x**2)", "-q", "1")
    assert status == 2 and not out and err.count("\n") == 1 and "exists only for q < 0.5" in err


def test_init_fan_out_exits_2_naming_the_flag(capsys):
    status, _, err = run(capsys, "init", "sign(x)", "--shape", "64,32", "--mode", "fan_out")
    assert status == 2 and err.count("\n") == 1
    assert "--mode fan_out needs E[f'(z)^2]" in err and "use --mode fan_in" in err and "mode=" not in err


@pytest.mark.parametrize(("message", "command", "expected"), [
    ('did not converge (try method="high_precision")', "derive", "did not converge (try --digits N)"),
    ('did not converge (try method="high_precision")', "kernel", "did not converge (try --method high_precision)"),
    ("use method='high_precision', digits=60", "derive", "use --digits 60"),
    ("too few: samples=100", "derive", "too few: --samples 100"),
    ("where(x >= 1, x, 0) and x == 1 stay", "derive", "where(x >= 1, x, 0) and x == 1 stay"),
])
def test_cli_names_flags_where_the_api_names_arguments(message, command, expected):
    assert _cli_message(message, command) == expected


def test_integrable_singularity_beyond_float_quadrature_is_resolved_at_high_precision():
    # E|z|^p by hand as above; float quadrature cannot resolve |z|^-0.4 at 0, so moments() takes 20 digits
    m = gd.moments("abs(x)**-0.2", 2.0)
    with mp.workdps(30):
        for estimate, p in ((m.mean, "-0.2"), (m.second_moment, "-0.4")):
            p = mp.mpf(p)
            reference = 2 ** (p / 2) * 2 ** (p / 2) * mp.gamma((p + 1) / 2) / mp.sqrt(mp.pi)  # q = 2
            within(estimate, reference)
            assert estimate.method == "high_precision"
    assert math.isinf(m.derivative_second_moment.value)


def test_growth_of_f_prime_alone_makes_only_some_q_infinite():
    # f = sin(e^{z^2/8}) is bounded; f'^2 = (z^2/16) e^{z^2/4} cos^2(e^{z^2/8}) grows like e^{z^2/4}: E[f'^2] is
    # infinite for q >= 1/(2 * 1/4) = 2 (by the rule of this module's docstring) and finite below.  f oscillates
    # too fast at q = 3 for quadrature: Monte Carlo (a bounded f needs no more) samples both q at once
    m = gd.moments("sin(exp(x**2/8))", np.array([0.3, 3.0]), "monte_carlo", samples=200_000, seed=5)
    d = m.derivative_second_moment
    assert np.isfinite(d.value[0]) and math.isinf(d.value[1]) and d.error[1] == 0
    assert "infinite: f'(z)^2 grows like exp(0.25" in d.method
    # mpmath follows cos(e^{z^2/8}) only to |z| = 100 (beyond, the argument has > 20000 bits): the rate is read
    # from |z| <= 100, where the z^2 prefactor still shifts it by ~log(10)/10^4 relative
    threshold = analyse(m.activation, {"f'(z)^2": DF**2})["f'(z)^2"].threshold
    assert abs(threshold - 2) < 0.01
    # the finite entry against mpmath at 30 digits: E[f'^2] at q = 0.3 (integrand even in z), within 5 SE; cut at
    # |z| = 6, beyond which the integrand is below (36/16) e^{9 - 60} < 1e-21 (and oscillates too fast to follow)
    with mp.workdps(30):
        s = mp.sqrt(mp.mpf("0.3"))
        reference = 2 * mp.quad(lambda t: (t * t / 16) * mp.exp(t * t / 4) * mp.cos(mp.exp(t * t / 8)) ** 2
                                * mp.npdf(t / s) / s, mp.linspace(0, 6, 49))
    assert abs(d.value[0] - float(reference)) <= 5 * d.error[0]


@pytest.mark.parametrize("slope", ["0.1000000015", "0.10000000149011612", "0.3000000119", "0.01000000002"])
def test_a_linear_piece_whose_value_is_near_1_at_the_first_probe_is_not_super_gaussian(slope):
    # a z with a slightly above 1/10 gives log|h(10)| ~ 1e-8: the growth probe once read log|h| / z^2 rising
    # "tenfold" from there and called a leaky ReLU with a float32 slope (0.1f = 0.10000000149...) infinite.
    # By hand: E[f^2] = (1 + a^2) q / 2, E[f'^2] = (1 + a^2) / 2 (He et al. 2015), at q = 1.
    a = float(slope)
    m = gd.moments(f"where(x > 0, x, {slope}*x)", 1.0)
    for est in (m.second_moment, m.derivative_second_moment):  # (+ 1e-16: the reference's own rounding to double)
        assert abs(float(est.value) - (1 + a * a) / 2) <= float(est.error) + 1e-16
