"""Every class of bad input gets a specific, one-line error from the API -- never a silently wrong number."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gainderive as gd
from gainderive.errors import (
    DiracDerivativeError,
    DivergenceError,
    DuplicateParameterError,
    FormulaError,
    GainDeriveError,
    ParameterError,
    UnknownActivationError,
    VarianceError,
)

CASES = [
    # (activation, kwargs for moments(), expected error class, message fragment)
    ("__import__('os').system('echo pwned')", {}, FormulaError, "plain function names"),
    ("x +", {}, FormulaError, "cannot parse"),
    ("nosuch", {}, UnknownActivationError, "unknown activation"),
    ("elu", {"gamma": 1}, ParameterError, "no parameter"),
    ("x*k", {}, ParameterError, "unbound"),
    ("gelu", {"q": 2.0}, ParameterError, "give it as variance=2.0"),  # the input variance is not a parameter
    ("elu(x, 2, alpha=3)", {}, DuplicateParameterError, "'alpha' twice"),
    ("leaky-relu", {}, UnknownActivationError, "did you mean 'leaky_relu'?"),
    ("z*sigmoid(z)", {}, ParameterError, "the variable is x: write x*sigmoid(x)"),
    ("elu", {"variance": 0.0}, VarianceError, "> 0"),
    ("elu", {"variance": -1.0}, VarianceError, "> 0"),
    ("elu", {"variance": float("nan")}, VarianceError, "finite"),
    ("elu", {"variance": float("inf")}, VarianceError, "finite"),
    ("elu", {"variance": [1.0, -2.0]}, VarianceError, "> 0"),
    ("elu", {"variance": "abc"}, VarianceError, "finite number"),
    # E[e^{c z^2}] = 1/sqrt(1 - 2cq) for q < 1/(2c), infinite beyond: decided from the formula (tests/test_singular.py)
    ("exp(x**2)", {"variance": 1.0}, DivergenceError, "exists only for q < 0.5"),
    ("exp(x**2)", {"variance": 0.49}, DivergenceError, "E[f(z)^2] of exp(x**2) is infinite at q = 0.49"),
    ("1/x", {}, DivergenceError, "f(z) ~ |z|^-1 is not integrable at z = 0"),
    ("exp(x)", {"variance": 1000.0}, DivergenceError, "overflows"),  # E[e^{2z}] = e^{2000} > 1.8e308
    ("log(x)", {}, DivergenceError, "not a real number"),
    ("elu", {"method": "simpson"}, GainDeriveError, "unknown method"),
    ("elu", {"method": "monte_carlo", "samples": 1}, GainDeriveError, "samples"),
]


@pytest.mark.parametrize(("act", "kwargs", "error", "fragment"), CASES,
                         ids=[f"{a[:20]}-{e.__name__}" for a, _, e, _ in CASES])
def test_bad_input_raises(act, kwargs, error, fragment):
    with pytest.raises(error) as info:
        gd.moments(act, **kwargs)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_integrand_that_has_not_decayed_at_the_truncation_point():
    # h = e^{0.4775 z^2} stays below the double limit at |z| = 38.5, yet h*phi there is not negligible
    with pytest.raises(DivergenceError, match="not decayed"):
        gd.expectation("exp(0.4775*x**2)", "f", 1.0)


def test_an_expectation_of_f_prime_refuses_a_jump():
    # moments() reports E[f'^2] = inf for a jump (tests/test_singular.py); expectation() of any h in df refuses
    with pytest.raises(DiracDerivativeError, match="jumps by 2 at z = 0"):
        gd.expectation("sign(x)", "df**2", 1.0)
    with pytest.raises(DiracDerivativeError, match="at z = 1"):
        gd.expectation("Heaviside(x - 1)", "df", 1.0)


def test_expectations_of_f_alone_survive_a_jump():
    # E[sign(z)^2] = 1 exactly; only f' carries the Dirac mass
    est = gd.expectation("sign(x)", "f**2", 1.0)
    assert abs(est.value - 1.0) <= 1e-14 and est.error < 1e-13


def test_gains_that_do_not_exist():
    with pytest.raises(GainDeriveError, match=r"= 0 \(f is constant\), so gain_fan_out does not exist"):
        gd.gain("3 + 0*x", mode="fan_out")
    with pytest.raises(GainDeriveError, match="unknown mode"):
        gd.gain("relu", mode="fan_sideways")


def test_expectation_rejects_foreign_names():
    with pytest.raises(FormulaError, match="f, df"):
        gd.expectation("relu", "g**2")
    with pytest.raises(FormulaError):
        gd.expectation("relu", 3)


def test_high_precision_takes_one_variance():
    with pytest.raises(VarianceError, match="one variance"):
        gd.moments("relu", np.array([1.0, 2.0]), method="high_precision")


def test_high_precision_refuses_divergent_integrals():
    # E[e^{z^2/2}]-type integrands: h(z) phi(z) is constant, the integral is infinite at every precision; it is
    # decided from the formula (f^2 grows like e^{z^2/2}) before mpmath is asked
    with pytest.raises(DivergenceError, match=r"exists only for q < 1$"):
        gd.expectation("exp(x**2/4)", "f**2", 1.0, method="high_precision", digits=20)
    # and accepts a finite one that decays slowly: E[e^{0.45 z^2}] = 1/sqrt(1 - 0.9) at q = 1
    import mpmath as mp

    with mp.workdps(30):
        est = gd.expectation("exp(0.45*x**2)", "f", "1", method="high_precision", digits=20)
        assert abs(est.value - 1 / mp.sqrt(mp.mpf("0.1"))) < mp.mpf(10) ** -19


def _grow(children):
    unary = st.tuples(st.sampled_from(["exp", "abs", "tanh", "sin", "erf", "relu", "elu", "sigmoid", "softplus",
                                       "sqrt", "log", "Phi", "sign"]), children).map(lambda t: f"{t[0]}({t[1]})")
    binary = st.tuples(children, st.sampled_from(["+", "-", "*", "/", "**"]), children).map(lambda t: f"({''.join(t)})")
    extreme = st.tuples(st.sampled_from(["max", "min"]), children, children).map(lambda t: f"{t[0]}({t[1]}, {t[2]})")
    branch = st.tuples(children, children, children).map(lambda t: f"where({t[0]} > 0, {t[1]}, {t[2]})")
    return st.one_of(unary, binary, extreme, branch)


FORMULAS = st.recursive(st.sampled_from(["x", "2", "0.5", "-1", "3"]), _grow, max_leaves=5)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(FORMULAS, st.sampled_from([1e-3, 0.7, 50.0]))
def test_any_formula_gives_numbers_or_a_gainderive_error(text, q):
    # whatever the grammar builds must integrate to finite numbers or fail with the documented error class
    try:
        m = gd.moments(text, q)
    except GainDeriveError:
        return
    for name, est in m:
        if name == "derivative_second_moment" and est.method.startswith("infinite: "):
            assert np.all(np.isinf(est.value)) and est.error == 0  # f jumps or f' is singular: an answer
            continue
        assert np.isfinite(est.value) and np.isfinite(est.error) and est.error >= 0


def test_numpy_scalar_variance_for_high_precision():
    m = gd.moments("relu", np.float64(2.0), method="high_precision", digits=20)
    assert abs(m.second_moment.value - 1) < 1e-19  # q/2


def test_an_overflow_far_out_is_not_called_an_undefined_formula():
    # GELU at q = 1.7e308: z^2 Phi(z)^2 at z ~ -1.35e154 is inf * 0 in double precision, every nearer point
    # finite; the formula is real everywhere, so the error says overflow (and what resolves it), not "not real"
    with pytest.raises(DivergenceError, match="overflows double precision") as caught:
        gd.moments("gelu", 1.7e308)
    assert "not a real number" not in str(caught.value) and "high_precision" in str(caught.value)
