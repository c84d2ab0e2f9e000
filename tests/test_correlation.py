"""Correlation kernels E[f(u) f(v)]: closed forms, 2-D quadrature, high precision (issue #7, point 3)."""

import math

import direct_2d
import mpmath as mp
import numpy as np
import pytest

import gainderive as gd
from gainderive.cli import main
from gainderive.correlation import kernel
from gainderive.errors import DiracDerivativeError, GainDeriveError

C_GRID = np.array([-1.0, -0.999999, -0.9, -0.5, 0.0, 0.2, 0.7, 0.99, 0.999999, 1.0])
CLOSED = ["relu", "leaky_relu", "prelu", "abs", "erf", "sin", "identity"]


def _hand_kernels(name, q1, q2, c, derivative):
    """The kernels derived by hand (docstring of gainderive.correlation), in mpmath at 40 digits."""
    with mp.workdps(40):
        q1, q2, c = mp.mpf(q1), mp.mpf(q2), mp.mpf(c)
        r, th = mp.sqrt(q1 * q2), mp.acos(c)
        relu = r * (mp.sqrt(1 - c * c) + (mp.pi - th) * c) / (2 * mp.pi)
        step = (mp.pi - th) / (2 * mp.pi)
        a = {"leaky_relu": mp.mpf("0.01"), "prelu": mp.mpf("0.25")}.get(name, 0)
        forms = {
            "relu": (relu, step),
            "leaky_relu": (a * r * c + (1 - a) ** 2 * relu, a + (1 - a) ** 2 * step),
            "abs": (4 * relu - r * c, 2 / mp.pi * mp.asin(c)),
            "erf": (2 / mp.pi * mp.asin(2 * r * c / mp.sqrt((1 + 2 * q1) * (1 + 2 * q2))),
                    4 / mp.pi / mp.sqrt((1 + 2 * q1) * (1 + 2 * q2) - 4 * r * r * c * c)),
            "sin": (mp.exp(-(q1 + q2) / 2) * mp.sinh(r * c), mp.exp(-(q1 + q2) / 2) * mp.cosh(r * c)),
            "identity": (r * c, mp.mpf(1)),
        }
        forms["prelu"] = forms["leaky_relu"]
        return float(forms[name][1 if derivative else 0])


@pytest.mark.parametrize("name", CLOSED)
@pytest.mark.parametrize("derivative", [False, True])
@pytest.mark.parametrize("q1, q2", [(1.0, 1.0), (0.3, 2.5), (7.0, 0.05)])
def test_quadrature_and_closed_forms_agree_with_the_hand_derivations(name, derivative, q1, q2):
    expected = np.array([_hand_kernels(name, q1, q2, c, derivative) for c in C_GRID])
    scale = math.sqrt(q1 * q2) if not derivative else 1.0
    # 1e-12 of the kernel's scale: the quadrature's target; kernels that vanish (c = 0, odd f) are judged absolutely
    tol = 1e-12 * np.maximum(np.abs(expected), 1e-2 * scale)
    closed = kernel(name, C_GRID, q1, q2, derivative=derivative)
    assert closed.method == "closed_form"
    assert np.all(np.abs(closed.value - expected) <= tol)
    numeric = kernel(name, C_GRID, q1, q2, derivative=derivative, method="quadrature")
    assert np.all(np.abs(numeric.value - expected) <= tol)
    assert np.all(numeric.error <= 1e-11 * np.maximum(np.abs(expected), 1e-2 * scale))  # its own bar is honest too


def test_gelu_closed_form_against_quadrature():
    """GELU's kernel from orthant moments (docstring of correlation._gelu) vs the 2-D quadrature, a separate path."""
    for q1, q2 in [(1.0, 1.0), (0.3, 2.5), (7.0, 0.05)]:
        closed = kernel("gelu", C_GRID, q1, q2)
        numeric = kernel("gelu", C_GRID, q1, q2, method="quadrature")
        assert closed.method == "closed_form"
        assert np.all(np.abs(closed.value - numeric.value) <= 1e-12 * math.sqrt(q1 * q2))  # the quadrature target
    assert kernel("gelu", 0.5, derivative=True).method == "quadrature"  # no f' form: quadrature, said so


@pytest.mark.parametrize("name", ["tanh", "elu", "gelu", "softplus", "hardtanh"])
def test_quadrature_limits_reduce_to_one_dimensional_moments(name):
    """c = 0 factorises, c = 1 (q1 = q2) is the second moment: both from the 1-D high-precision backend."""
    q = 1.7
    m = gd.moments(name, str(q), "high_precision", digits=30)
    mean, second = float(m.mean.value), float(m.second_moment.value)
    k = kernel(name, [0.0, 1.0], q, method="quadrature").value
    assert k[0] == pytest.approx(mean * mean, rel=1e-12, abs=1e-14 * second)  # 1e-12: the quadrature target
    assert k[1] == pytest.approx(second, rel=1e-12)
    if name in ("tanh", "hardtanh"):  # odd: f(-u) = -f(u), so c = -1 gives -E[f^2]
        assert float(kernel(name, -1.0, q).value) == pytest.approx(-second, rel=1e-12)


@pytest.mark.parametrize("name", ["tanh", "elu", "relu"])
def test_quadrature_agrees_with_monte_carlo(name):
    """An independent method: seeded sampling of (u, v), bound at 5 standard errors."""
    q1, q2, c, n = 0.8, 2.0, 0.55, 2_000_000
    rng = np.random.default_rng(20261122)
    x, y = rng.standard_normal(n), rng.standard_normal(n)
    u, v = math.sqrt(q1) * x, math.sqrt(q2) * (c * x + math.sqrt(1 - c * c) * y)
    f = {"tanh": np.tanh, "elu": lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0))),
         "relu": lambda z: np.maximum(z, 0)}[name]
    product = f(u) * f(v)
    value = float(kernel(name, c, q1, q2, method="quadrature").value)
    assert abs(product.mean() - value) <= 5 * product.std() / math.sqrt(n)


def test_quadrature_vectorised_matches_scalar_calls():
    grid = np.linspace(-1, 1, 9)
    many = kernel("tanh", grid, 2.0, 0.5)
    for c, value, error in zip(grid, many.value, many.error):
        one = kernel("tanh", c, 2.0, 0.5)
        # every c has its own tolerance and panels: the same value up to the rounding of the sums, within both bars
        assert abs(float(one.value) - value) <= float(one.error) + error


def test_bad_input():
    for c in (1.0001, -1.5, float("nan"), "high"):
        with pytest.raises(GainDeriveError, match=r"correlation c must be"):
            kernel("relu", c)
    with pytest.raises(GainDeriveError, match="variance q must be"):
        kernel("relu", 0.5, 0.0)
    with pytest.raises(GainDeriveError, match="unknown method"):
        kernel("relu", 0.5, method="simpson")
    with pytest.raises(GainDeriveError, match="no closed-form kernel"):
        kernel("tanh", 0.5, method="closed_form")
    with pytest.raises(DiracDerivativeError):
        kernel("where(x > 0, 1, 0)", 0.5, derivative=True)  # the step's f' is a Dirac mass


def test_kernel_command(capsys):
    assert main(["kernel", "relu", "-c", "0.5,1", "-q", "1,2", "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert [row["method"] for row in out["kernel"]] == ["closed_form", "closed_form"]
    assert out["kernel"][1]["value"] == pytest.approx(math.sqrt(2) / 2, rel=1e-15)  # c = 1: E[relu(u) relu(v)]
    for argv in (["kernel", "relu", "-c", "2"], ["kernel", "relu", "-c", "x"],
                 ["kernel", "relu", "-c", "0.5", "-q", "1,2,3"], ["kernel", "relu", "-c", "0.5", "-q", "-1"],
                 ["kernel", "nope", "-c", "0.5"]):
        assert main(argv) == 2, argv
        assert capsys.readouterr().err.count("\n") == 1  # one line, no traceback


@pytest.mark.slow
@pytest.mark.parametrize("name, f, kinks, q1, q2, c, width", [
    ("relu", lambda z: z if z > 0 else mp.mpf(0), (0,), "1", "2", "0.3", 3),
    ("erf", mp.erf, (), "0.5", "1.5", "-0.6", 3),
    ("gelu", lambda z: z * mp.ncdf(z), (), "1.2", "0.8", "0.7", 2),
])
def test_closed_forms_against_direct_two_dimensional_integration(name, f, kinks, q1, q2, c, width):
    """The arc-cosine (Cho & Saul 2009), arcsine (Williams 1997) and GELU kernels vs a 30-digit 2-D integral."""
    direct = direct_2d.kernel(f, f, q1, q2, c, f_kinks=kinks, g_kinks=kinks, digits=30, width=width)
    k = kernel(name, float(c), float(q1), float(q2))
    assert k.method == "closed_form"
    assert float(k.value) == pytest.approx(float(direct), rel=1e-14)  # a few roundings of float64 arithmetic
    assert float(kernel(name, float(c), float(q1), float(q2), method="quadrature").value) == pytest.approx(
        float(direct), rel=1e-12)


@pytest.mark.slow
def test_high_precision_kernel_against_direct_integration():
    """The library's mpmath kernel (ELU: no closed form) vs the test's own 2-D integral, both at 30 digits."""
    elu = lambda z: z if z > 0 else mp.expm1(z)  # noqa: E731
    direct = direct_2d.kernel(elu, elu, "1.3", "0.7", "0.45", f_kinks=(0,), g_kinks=(0,), digits=30)
    hp = kernel("elu", 0.45, 1.3, 0.7, method="high_precision", digits=30)
    with mp.workdps(40):
        assert abs(hp.value - direct) <= mp.mpf(10) ** -29 * abs(direct)  # 30 digits asked, one spared for rounding
    assert float(kernel("elu", 0.45, 1.3, 0.7).value) == pytest.approx(float(direct), rel=1e-12)
