"""Parameters of any real numeric type keep their exact value (issue #11, point 2 "Parameters").

The rule (docs in ``registry._parameter_value``): integers, Fraction and Decimal are exact; a binary float is
the shortest decimal that round-trips in its own type, i.e. what numpy and Python print (np.float32(0.2) is
1/5 and np.float32(1/3) is 0.33333334, float32's shortest round-tripping decimal).  Expected values below are
those decimals written by hand, and moments are checked against closed forms evaluated with mpmath at 30 digits.
"""

from decimal import Decimal
from fractions import Fraction

import mpmath as mp
import numpy as np
import pytest
import sympy as sp

import gainderive as gd
from gainderive.errors import ParameterError

ONE_FIFTH = sp.Rational(1, 5)


@pytest.mark.parametrize(("value", "expected"), [
    (np.float32(0.2), ONE_FIFTH),  # numpy prints 0.2; its binary value is 13421773/67108864
    (np.float16(0.2), ONE_FIFTH),  # binary value 3277/16384, prints 0.2
    (np.float64(0.1), sp.Rational(1, 10)),
    (np.longdouble("0.1"), sp.Rational(1, 10)),
    (np.float32(1 / 3), sp.Rational(33333334, 100000000)),  # float32 prints 0.33333334
    (0.1 + 0.2, sp.Rational("0.30000000000000004")),  # the double prints with 17 digits: those are its value
    (Fraction(1, 5), ONE_FIFTH),
    (Fraction(2, 3), sp.Rational(2, 3)),
    (Decimal("0.2"), ONE_FIFTH),
    (Decimal("1E-30"), sp.Rational(1, 10**30)),
    (np.int8(3), sp.Integer(3)),
    (np.uint64(2**63 + 1), sp.Integer(2**63 + 1)),  # through float this would be 2**63
    (7, sp.Integer(7)),
    (sp.Float("0.1", 30), sp.Rational(1, 10)),  # a 30-digit sympy float prints 0.1000...: 1/10
    (mp.mpf("0.2"), ONE_FIFTH),
    (np.array(np.float32(0.2)), ONE_FIFTH),  # a 0-d array is its scalar, dtype kept
    ("1/3", sp.Rational(1, 3)),
    (sp.sqrt(2), sp.sqrt(2)),
])
def test_every_real_type_keeps_its_exact_value(value, expected):
    assert gd.activation("elu", alpha=value).params["alpha"] == expected
    assert gd.activation("x*a", a=value).params["a"] == expected  # user formulas take the same path


@pytest.mark.parametrize("slope", [np.float32(0.2), np.float16(0.2), Fraction(1, 5), Decimal("0.2"), "1/5", 0.2])
def test_calculate_gain_leaky_relu_slope_of_any_type(slope):
    # gain_fan_in = sqrt(q / E[f^2]) with E[f^2] = q (1 + a^2)/2 for leaky ReLU (each half-line carries half of
    # E[z^2] = q): sqrt(2 / (1 + a^2)), 1.3867504905630728 at a = 1/5, where the int() bug gave sqrt(2).
    with mp.workdps(30):
        reference = mp.sqrt(2 / (1 + mp.mpf(1) / 25))
    estimate = gd.gains(gd.moments("leaky_relu", 1.0, negative_slope=slope)).fan_in
    ulps = 4 * np.spacing(float(reference))
    assert abs(float(estimate.value) - reference) <= float(estimate.error) + ulps
    assert gd.calculate_gain("leaky_relu", slope) == float(estimate.value)


@pytest.mark.parametrize("alpha", [np.float32(1.5), np.float16(1.5), Fraction(3, 2), Decimal("1.5")])
def test_elu_alpha_of_any_type_is_used_exactly(alpha):
    # ELU, z ~ N(0, 1): E[f] = phi(0) + alpha (e^{1/2} Phi(-1) - 1/2), since int_{-inf}^0 e^z phi(z) dz =
    # e^{1/2} Phi(-1); the int() bug computed it at alpha = 1.
    m = gd.moments("elu", 1.0, alpha=alpha)
    assert m.activation.params["alpha"] == sp.Rational(3, 2)
    with mp.workdps(30):
        reference = mp.npdf(0) + mp.mpf(3) / 2 * (mp.exp(mp.mpf(1) / 2) * mp.ncdf(-1) - mp.mpf(1) / 2)
    assert abs(float(m.mean.value) - reference) <= float(m.mean.error) + 4 * np.spacing(float(reference))


@pytest.mark.parametrize(("value", "match"), [
    (1j, "real number"),
    (np.complex64(1.0), "real number"),
    (None, "real number"),
    ([0.2], "real number"),
    (np.array([0.1, 0.2]), "shape"),
    (True, "real number"),
    (np.bool_(True), "real number"),
    (np.float32("inf"), "finite"),
    (np.float16("nan"), "finite"),
    (Decimal("NaN"), "finite"),
    (float("-inf"), "finite"),
    (mp.mpf("inf"), "finite"),
    (sp.I, "finite real"),
    ("x", "finite real"),
])
def test_non_real_and_non_finite_parameters_are_one_line_errors(value, match):
    with pytest.raises(ParameterError, match=match) as info:
        gd.activation("elu", alpha=value)
    assert "alpha" in str(info.value) and "\n" not in str(info.value)


def test_calculate_gain_refuses_a_complex_slope_and_ignores_param_elsewhere():
    with pytest.raises(ParameterError, match="real number"):
        gd.calculate_gain("leaky_relu", 0.2 + 0j)
    # torch.nn.init.calculate_gain ignores param for every name but leaky_relu, and its kaiming_*_ pass a = 0 for
    # any nonlinearity: the drop-in does the same (issue #14)
    assert gd.calculate_gain("tanh", 0.5) == gd.calculate_gain("tanh")
    assert gd.calculate_gain("relu", 0) == gd.calculate_gain("relu") == 2**0.5
