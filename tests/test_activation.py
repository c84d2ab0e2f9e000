"""The activation model: registry, parameters, breakpoints, pieces, jumps."""

import math

import mpmath as mp
import numpy as np
import pytest
import sympy as sp

import gainderive as gd
from gainderive.errors import FormulaError, ParameterError, UnknownActivationError
from gainderive.evaluate import Program
from gainderive.formula import X

# The registry the foundation issue asks for, with PyTorch's parameter names and defaults.
EXPECTED_REGISTRY = {
    "identity": {}, "relu": {}, "leaky_relu": {"negative_slope": 0.01}, "prelu": {"a": 0.25},
    "elu": {"alpha": 1.0}, "selu": {"alpha": 1.6732632423543772, "scale": 1.0507009873554805},
    "celu": {"alpha": 1.0}, "gelu": {}, "gelu_tanh": {}, "silu": {}, "mish": {}, "softplus": {"beta": 1.0},
    "tanh": {}, "sigmoid": {}, "erf": {}, "softsign": {}, "hardtanh": {"min_val": -1.0, "max_val": 1.0},
    "relu6": {}, "hardsigmoid": {}, "hardswish": {}, "sin": {}, "abs": {},
}

# Kinks read off each definition by hand.
EXPECTED_BREAKPOINTS = {
    "relu": (0,), "leaky_relu": (0,), "prelu": (0,), "elu": (0,), "selu": (0,), "celu": (0,), "softsign": (0,),
    "hardtanh": (-1, 1), "relu6": (0, 6), "hardsigmoid": (-3, 3), "hardswish": (-3, 3), "abs": (0,),
}


def test_registry_is_complete_with_pytorch_names():
    assert set(gd.REGISTRY) == set(EXPECTED_REGISTRY)
    for name, params in EXPECTED_REGISTRY.items():
        act = gd.activation(name)
        assert act.parameter_values == pytest.approx(params, rel=1e-16)
        assert act.reference, f"{name} has no reference"
    assert gd.activation("linear").name == "identity"
    assert gd.activation("swish").name == "silu"


@pytest.mark.parametrize("name", sorted(EXPECTED_REGISTRY))
def test_breakpoints_and_no_jumps(name):
    act = gd.activation(name)
    assert act.breakpoints == EXPECTED_BREAKPOINTS.get(name, ())
    assert act.jumps == ()


# Independent float implementations (PyTorch's definitions) to check each registry formula pointwise.
def _sig(v):
    return 1 / (1 + math.exp(-v))


REFERENCE_F = {
    "identity": lambda v: v, "relu": lambda v: max(v, 0.0), "leaky_relu": lambda v: v if v > 0 else 0.01 * v,
    "prelu": lambda v: v if v > 0 else 0.25 * v, "elu": lambda v: v if v > 0 else math.expm1(v),
    "selu": lambda v: 1.0507009873554805 * (v if v > 0 else 1.6732632423543772 * math.expm1(v)),
    "celu": lambda v: max(0.0, v) + min(0.0, math.expm1(v)),
    "gelu": lambda v: v * 0.5 * math.erfc(-v / math.sqrt(2)),
    "gelu_tanh": lambda v: 0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))),
    "silu": lambda v: v * _sig(v), "mish": lambda v: v * math.tanh(math.log1p(math.exp(v))),
    "softplus": lambda v: math.log1p(math.exp(v)), "tanh": math.tanh, "sigmoid": _sig, "erf": math.erf,
    "softsign": lambda v: v / (1 + abs(v)), "hardtanh": lambda v: min(max(v, -1.0), 1.0),
    "relu6": lambda v: min(max(v, 0.0), 6.0), "hardsigmoid": lambda v: min(max(v + 3, 0.0), 6.0) / 6,
    "hardswish": lambda v: v * min(max(v + 3, 0.0), 6.0) / 6, "sin": math.sin, "abs": abs,
}
POINTS = [-7.3, -3.0001, -2.5, -1.0, -0.3, -1e-4, 1e-4, 0.7, 1.5, 2.9999, 4.2, 6.5]


@pytest.mark.parametrize("name", sorted(EXPECTED_REGISTRY))
def test_pieces_evaluate_to_the_definition(name):
    act = gd.activation(name)
    cuts = np.asarray(act.breakpoints)
    for v in POINTS:
        piece = act.pieces[int(np.searchsorted(cuts, v))]
        got = Program([piece.expression], [X])(np.array([v]))[0][0]
        # tolerance: the condition number of exp, erf, Phi at v grows like 1 + v^2, so both sides carry that
        assert got == pytest.approx(REFERENCE_F[name](v), rel=2e-15 * (1 + v * v), abs=1e-300)


@pytest.mark.parametrize("name", sorted(EXPECTED_REGISTRY))
def test_derivative_matches_a_finite_difference(name):
    act = gd.activation(name)
    cuts = np.asarray(act.breakpoints)
    with mp.workdps(30):
        for v in POINTS:
            piece = act.pieces[int(np.searchsorted(cuts, v))]
            f = Program([piece.expression], [X], backend="mpmath", dps=30)
            df = Program([piece.derivative], [X], backend="mpmath", dps=30)
            x0 = mp.mpf(v)
            # central difference with step 1e-10 at 30 digits: error ~1e-20, far below the tolerance
            numeric = (f(x0 + mp.mpf("1e-10"))[0] - f(x0 - mp.mpf("1e-10"))[0]) / mp.mpf("2e-10")
            assert abs(df(x0)[0] - numeric) < mp.mpf("1e-15") * (1 + abs(numeric))


def test_formula_breakpoints_from_every_construct():
    cases = {
        "where(x > 1, x, 0)": (1,), "max(x, -2)": (-2,), "min(x, 3)": (3,), "abs(x - 0.5)": (0.5,),
        "Heaviside(x + 1)": (-1,), "sign(2*x - 1)": (0.5,), "where(x**2 > 4, 1, x/2)": (-2, 2),
        "Piecewise((x, x < -1), (-1, x < 0), (x - 1, True))": (-1, 0), "clip(x, -1, 1) + abs(x)": (-1, 0, 1),
        "x*sigmoid(x)": (),
    }
    for text, expected in cases.items():
        assert gd.activation(text).breakpoints == pytest.approx(expected), text


def test_jumps_are_found_with_their_size():
    assert [(j.at, j.size) for j in gd.activation("sign(x)").jumps] == [(0.0, 2.0)]
    assert [(j.at, j.size) for j in gd.activation("Heaviside(x - 1)").jumps] == [(1.0, 1.0)]
    assert [(j.at, j.size) for j in gd.activation("where(x > 0, x + 1, x)").jumps] == [(0.0, 1.0)]
    # a kink is not a jump
    assert gd.activation("where(x > 0, x, 0)").jumps == ()


def test_parameters_bind_and_validate():
    assert gd.activation("elu", alpha=2).params["alpha"] == 2
    assert gd.activation("leaky_relu", negative_slope=0.1).params["negative_slope"] == sp.Rational(1, 10)
    assert gd.activation("elu", alpha="1/3").params["alpha"] == sp.Rational(1, 3)
    assert gd.activation("x*a", a=2).parameter_values == {"a": 2.0}
    with pytest.raises(ParameterError, match="no parameter"):
        gd.activation("elu", beta=1)
    with pytest.raises(ParameterError, match="unbound parameter"):
        gd.activation("x*a")
    with pytest.raises(ParameterError, match="no parameter"):
        gd.activation("x*a", a=1, b=2)
    with pytest.raises(ParameterError, match="beta > 0"):
        gd.activation("softplus", beta=-1)
    with pytest.raises(ParameterError, match="max_val > min_val"):
        gd.activation("hardtanh", min_val=1, max_val=-1)
    for bad in (float("nan"), float("inf"), "x", "zz", True, None, [1]):
        with pytest.raises(ParameterError):
            gd.activation("elu", alpha=bad)
    with pytest.raises(ParameterError, match="undefined"):
        _ = gd.activation("x/a", a=0).pieces


def test_unknown_names():
    with pytest.raises(UnknownActivationError, match="accepted: identity, relu"):
        gd.activation("rleu")
    with pytest.raises(FormulaError):
        gd.activation(42)


def test_parameters_given_to_an_activation_object_replace_only_the_ones_they_name():
    # SELU's two parameters: changing scale must keep a non-default alpha (it used to fall back to the default)
    selu = gd.activation("selu", alpha=2)
    rescaled = gd.activation(selu, scale=3)
    assert rescaled.params["alpha"] == 2 and rescaled.params["scale"] == 3
    assert gd.activation(gd.activation("x*a + b", a=1, b=2), b=5).parameter_values == {"a": 1.0, "b": 5.0}
    assert gd.activation(selu) is selu


def test_names_are_exact_and_a_near_miss_is_suggested_not_accepted():
    # decided: no silent case folding (Phi is a function in formulas, phi a parameter); tests/test_suggest.py
    with pytest.raises(UnknownActivationError, match="did you mean 'relu'"):
        gd.activation("Relu")
