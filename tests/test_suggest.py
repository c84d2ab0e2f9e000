"""Names a newcomer types: did-you-mean for activations, functions, parameters, keywords; the variable is x.

Every expected hint here is the name a reader would mean (a one-letter typo, a case or separator difference, or
another library's keyword with its documented meaning here); none is read off the implementation.
"""

import re

import pytest
import sympy as sp

import gainderive as gd
from gainderive.cli import main
from gainderive.errors import (
    DuplicateParameterError,
    FormulaError,
    GainDeriveError,
    ParameterError,
    UnknownActivationError,
)
from gainderive.registry import parse_activation_formula
from gainderive.suggest import closest, did_you_mean, fold, framework_hint


def _message(call) -> tuple[type, str]:
    with pytest.raises(GainDeriveError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    return type(info.value), message


# -- the matcher --------------------------------------------------------------------------------------------------

def test_did_you_mean_folds_case_and_separators_and_catches_one_typo():
    names = ["relu", "gelu", "elu", "leaky_relu", "hardtanh", "sigmoid"]
    assert did_you_mean("gleu", names) == "; did you mean 'gelu'?"  # two letters swapped
    assert did_you_mean("Relu", names) == "; did you mean 'relu'?"
    assert did_you_mean("Leaky-ReLU", names) == "; did you mean 'leaky_relu'?"
    assert did_you_mean("hard tanh", names) == "; did you mean 'hardtanh'?"
    assert did_you_mean("sigmod", names) == "; did you mean 'sigmoid'?"
    assert fold("Leaky ReLU") == fold("leaky_relu") == "leakyrelu"


def test_did_you_mean_does_not_guess_wildly():
    names = ["relu", "gelu", "tanh", "abs"]
    assert did_you_mean("foo", names) == ""
    assert did_you_mean("nosuch", names) == ""
    assert did_you_mean("relu", names) == ""  # an accepted word needs no hint
    assert closest("", names) is None


# -- activation names ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("typed", "meant"), [
    ("gleu", "gelu"), ("Relu", "relu"), ("ReLU", "relu"), ("GELU", "gelu"), ("leaky-relu", "leaky_relu"),
    ("Leaky ReLU", "leaky_relu"), ("hard-tanh", "hardtanh"), ("gelu-tanh", "gelu_tanh"), ("sigmod", "sigmoid"),
])
def test_near_miss_activation_names_are_refused_with_the_name_meant(typed, meant):
    # case is not folded silently: inside formulas Phi is a function and phi a parameter, so names stay exact
    kind, message = _message(lambda: gd.activation(typed))
    assert kind is UnknownActivationError
    assert f"unknown activation {typed!r}; did you mean {meant!r}?" in message
    assert "gainderive list" in message


def test_a_name_with_no_near_miss_lists_the_registry_and_a_formula_minus_sign_stays_a_formula():
    _, message = _message(lambda: gd.activation("nosuch"))
    assert "did you mean" not in message and "accepted: identity, relu" in message
    # "a - b" is a (constant) formula in two parameters, not a misspelt "abs"
    kind, message = _message(lambda: gd.activation("a - b"))
    assert kind is ParameterError and "unbound parameter(s) a, b" in message


def test_unknown_functions_in_formulas_get_the_whitelisted_name():
    for typed, meant in (("sigmod(x)", "sigmoid"), ("Relu(x)", "relu"), ("gleu(x)", "gelu"), ("tnah(x)", "tanh")):
        kind, message = _message(lambda typed=typed: parse_activation_formula(typed))
        assert kind is FormulaError
        assert f"did you mean {meant!r}?" in message and "accepted: Heaviside" in message


# -- the variable -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("typed", "rewritten"), [
    ("z*sigmoid(z)", "x*sigmoid(x)"), ("X*sigmoid(X)", "x*sigmoid(x)"), ("input*tanh(input)", "x*tanh(x)"),
    ("t/(1 + abs(t))", "x/(1 + abs(x))"), ("max(u, 0)", "max(x, 0)"),
])
def test_another_variable_name_is_answered_with_the_formula_in_x(typed, rewritten):
    kind, message = _message(lambda: gd.activation(typed))
    assert kind is ParameterError
    assert f"the variable is x: write {rewritten}" in message


def test_a_bare_variable_name_is_answered_with_x():
    for typed in ("X", "z"):
        kind, message = _message(lambda typed=typed: gd.activation(typed))
        assert kind is UnknownActivationError and "the variable of a formula is x: write x" in message


def test_an_unbound_parameter_beside_x_is_still_a_parameter():
    _, message = _message(lambda: gd.activation("x*sigmoid(beta*x)"))
    assert "unbound parameter(s) beta" in message and "variable" not in message
    _, message = _message(lambda: gd.activation("x*sigmoid(beta*x)", bta=1))
    assert "has no parameter bta; did you mean 'beta'?" in message


# -- other libraries' keywords ------------------------------------------------------------------------------------

@pytest.mark.parametrize("typed", ['gelu(x, approximate="tanh")', "gelu(x, approximate='tanh')",
                                   'gelu(approximate="tanh")'])
def test_pytorch_gelu_approximate_points_to_gelu_tanh(typed):
    kind, message = _message(lambda: parse_activation_formula(typed))
    assert kind is FormulaError and "gelu_tanh" in message
    # the same keyword as an activation parameter (API keyword or CLI --param approximate=tanh)
    kind, message = _message(lambda: gd.activation("gelu", approximate="tanh"))
    assert kind is ParameterError and "use the name gelu_tanh" in message


def test_framework_keywords_map_to_the_registry_parameter():
    # PyTorch's F.leaky_relu(x, negative_slope=0.2) is the registry's parameter name: it just works
    leaky = parse_activation_formula("leaky_relu(x, negative_slope=0.2)").expression
    x = sp.Symbol("x", real=True)
    assert sp.simplify(leaky - sp.Piecewise((x, x > 0), (x / 5, True))) == 0
    _, message = _message(lambda: parse_activation_formula("leaky_relu(x, alpha=0.2)"))  # Keras's name
    assert "negative_slope=0.2" in message
    _, message = _message(lambda: gd.activation("prelu", init=0.1))  # torch.nn.PReLU(init=0.1)
    assert "the parameter a here: a=0.1" in message
    _, message = _message(lambda: parse_activation_formula("softplus(x, threshold=20)"))
    assert "exact everywhere: drop the keyword" in message
    _, message = _message(lambda: parse_activation_formula("relu(x, inplace=True)"))
    assert "not part of f" in message
    _, message = _message(lambda: parse_activation_formula("hardtanh(x, min_value=-2)"))  # Keras-style spelling
    assert "did you mean 'min_val'?" in message
    assert framework_hint("elu", "alpha") is None  # elu's alpha is its own parameter: no hint


# -- API keywords given as parameters -----------------------------------------------------------------------------

def test_gain_with_q_names_the_variance_keyword():
    kind, message = _message(lambda: gd.gain("gelu", q=2))
    assert kind is ParameterError
    assert "gelu has no parameter q; the input variance q is variance=2 (gain(activation, variance" in message


def test_gain_names_a_keyword_it_does_not_take_and_where_it_goes():
    _, message = _message(lambda: gd.gain("gelu", digits=30))
    assert "takes no digits" in message and "gains(moments(activation, variance, method, digits=30))" in message
    _, message = _message(lambda: gd.gain("gelu", variace=2))  # a typo of the keyword itself
    assert "variance=2" in message


def test_other_entry_points_name_the_variance_keyword_too():
    _, message = _message(lambda: gd.moments("gelu", q=2))
    assert "not an activation parameter: give it as variance=2" in message
    _, message = _message(lambda: gd.activation("elu", alpah=2))
    assert "elu has no parameter alpah; did you mean 'alpha'? (accepted: alpha)" in message


# -- parameters given twice ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("typed", ["elu(x, 2, alpha=3)", "elu(x, alpha=1, alpha=2)"])
def test_a_parameter_given_twice_in_a_formula_is_refused(typed):
    kind, message = _message(lambda: parse_activation_formula(typed))
    assert kind is DuplicateParameterError
    assert issubclass(kind, ParameterError) and issubclass(kind, FormulaError)
    assert "'alpha' twice" in message


# -- through the command line (the CLI prints the same line and exits 2) ------------------------------------------

@pytest.mark.parametrize(("argv", "fragment"), [
    (["derive", "gleu"], "did you mean 'gelu'?"),
    (["derive", "Relu"], "did you mean 'relu'?"),
    (["derive", "leaky-relu"], "did you mean 'leaky_relu'?"),
    (["derive", "z*sigmoid(z)"], "the variable is x: write x*sigmoid(x)"),
    (["verify", "relu", "--moment", "second_momnet", "--expected", "q/2"], "did you mean 'second_moment'?"),
])
def test_cli_reproducers_exit_2_with_the_hint(argv, fragment, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(re.escape(fragment), err), err
