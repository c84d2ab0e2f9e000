"""The whitelist parser: what it accepts, what it builds, and that nothing else gets through."""

import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from gainderive.errors import FormulaError
from gainderive.formula import X, parameter_symbol, parse_formula
from gainderive.functions import Phi, sigmoid, softplus
from gainderive.registry import parse_activation_formula

a = parameter_symbol("a")

# (formula, the sympy expression it must build) -- expected values written directly in sympy
VALID = [
    ("x", X),
    ("2*x + 1", 2 * X + 1),
    ("x**2 - x/3", X**2 - X / 3),
    ("1.702*x", sp.Rational(851, 500) * X),  # decimal literals are exact rationals
    ("1e-3*x", X / 1000),
    ("x*sigmoid(1.702*x)", X * sigmoid(sp.Rational(851, 500) * X)),
    ("where(x > 0, x, 0.5*(exp(x) - 1))", sp.Piecewise((X, X > 0), ((sp.exp(X) - 1) / 2, True))),
    ("max(x, 0) - 0.1*min(x, 0)", sp.Max(X, 0) - sp.Min(X, 0) / 10),
    ("clip(x, -1, 1)", sp.Min(sp.Max(X, -1), 1)),
    ("a*x", a * X),
    ("expm1(x)", sp.exp(X) - 1),
    ("log1p(x**2)", sp.log(1 + X**2)),
    ("Phi(x)*x", X * Phi(X)),
    ("softplus(x)", softplus(X)),
    ("sqrt(2/pi)*x", sp.sqrt(2 / sp.pi) * X),
    ("e**x", sp.exp(X)),
    ("abs(x)", sp.Abs(X)),
    ("Heaviside(x - 1)", sp.Heaviside(X - 1)),
    ("where(0 < x < 1, x, 0)", sp.Piecewise((X, sp.And(X > 0, X < 1)), (0, True))),
    ("where((x > 1) | (x < -1), 1, 0)", sp.Piecewise((1, sp.Or(X > 1, X < -1)), (0, True))),
    ("where(not x > 0, 0, x)", sp.Piecewise((0, sp.Not(X > 0)), (X, True))),
    ("Piecewise((x, x > 0), (0, True))", sp.Piecewise((X, X > 0), (0, True))),
    ("-x", -X),
]


@pytest.mark.parametrize(("text", "expected"), VALID, ids=[t for t, _ in VALID])
def test_builds_the_expression(text, expected):
    assert sp.simplify(parse_formula(text) - expected) == 0


# (formula, a fragment the one-line message must contain)
INVALID = [
    ("__import__('os').system('ls')", "plain function names"),
    ("os.system('ls')", "plain function names"),
    ("x.__class__", "Attribute"),
    ("(lambda: 1)()", "plain function names"),
    ("lambda: x", "Lambda"),
    ("[x]", "List"),
    ("x if x > 0 else 0", "IfExp"),
    ("'x'", "constant"),
    ("1j*x", "constant"),
    ("x > 0", "comparison is allowed only"),
    ("foo(x)", "unknown function 'foo'"),
    ("exp(x, 2)", "takes 1 argument"),
    ("exp(x=2)", "takes no keyword"),
    ("elu(x, beta=2)", "no parameter 'beta'"),
    ("x^2", "'^' is not a power"),
    ("x // 2", "not allowed"),
    ("1/0", "division by zero"),
    ("x**1000", "exponent"),
    ("9**9**9", "exponent"),
    ("", "empty"),
    ("x +", "cannot parse"),
    ("_secret*x", "not allowed"),
    ("exp", "is a function"),
    ("where(x, 1, 0)", "condition must be a comparison"),
    ("where(x == 0, 1, 0)", "< <= > >="),
    ("Piecewise((x, x > 0))", "condition True"),
    ("x" + "+x" * 600, "too large"),
    ("exp(" * 60 + "x" + ")" * 60, "nested"),
    ("-" * 200 + "x", "nested"),
    ("x\x00", "cannot parse"),
    ("1e999*x", "non-finite"),
]


@pytest.mark.parametrize(("text", "fragment"), INVALID, ids=[repr(t[:30]) for t, _ in INVALID])
def test_rejects_with_a_one_line_message(text, fragment):
    with pytest.raises(FormulaError) as info:
        parse_activation_formula(text).expression if "elu" in text else parse_formula(text)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_registry_names_are_functions_in_formulas():
    elu2 = parse_activation_formula("elu(x, alpha=2)").expression
    assert sp.simplify(elu2 - sp.Piecewise((X, X > 0), (2 * (sp.exp(X) - 1), True))) == 0
    # positional parameters in declaration order, and another parameter as the value
    leaky = parse_activation_formula("leaky_relu(x, a)").expression
    assert sp.simplify(leaky - sp.Piecewise((X, X > 0), (a * X, True))) == 0
    # composition: the argument is substituted for x
    composed = parse_activation_formula("relu(x - 1)").expression
    assert sp.simplify(composed - sp.Max(X - 1, 0)) == 0


def test_registry_parameter_ranges_hold_inside_formulas():
    with pytest.raises(FormulaError, match="softplus\\(\\) requires beta > 0"):
        parse_activation_formula("softplus(x, beta=-1)")
    with pytest.raises(FormulaError, match="max_val > min_val"):
        parse_activation_formula("hardtanh(x, 1, -1)")
    # a range that depends on the formula's own parameter is checked when it is bound
    from gainderive import activation
    from gainderive.errors import ParameterError

    assert activation("softplus(x, beta=b)", b=2).params["b"] == 2
    with pytest.raises(ParameterError, match="b > 0"):
        activation("softplus(x, beta=b)", b=-1)


# Hypothesis: whatever the string, the parser returns an expression or raises FormulaError -- nothing else.
_ALPHABET = "x0123456789.+-*/()<>=!,&|~^% eaplgtwhrsinmoqbcdfuvkjyz_'\"[]{}:;@#\\\n\t\x00é"


@settings(max_examples=600, deadline=None, derandomize=True)
@given(st.text(alphabet=_ALPHABET, max_size=60))
def test_arbitrary_strings_raise_only_formula_errors(text):
    try:
        result = parse_activation_formula(text).expression
    except FormulaError:
        return
    assert isinstance(result, sp.Basic)


_TOKENS = ["x", "1", "2.5", "a", "+", "-", "*", "/", "**", "(", ")", ",", "exp", "log", "max", "where", ">", "<",
           "relu", "elu", "alpha=", "sigmoid", "Piecewise", "True", "abs", "sqrt", "0", "1e308", "-1"]


@settings(max_examples=600, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(_TOKENS), max_size=14))
def test_token_soup_raises_only_formula_errors(tokens):
    try:
        result = parse_activation_formula("".join(tokens)).expression
    except FormulaError:
        return
    assert isinstance(result, sp.Basic)
