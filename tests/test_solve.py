"""Solving for parameters and variances (part of #7): SELU's constants, where PyTorch's table values hold."""

import math

import pytest

import gainderive as gd
from gainderive import solve as solve_module
from gainderive.cli import main
from gainderive.errors import ConvergenceError, GainDeriveError
from gainderive.solve import solve_parameters, variance_for_gain

# Klambauer et al. 2017 (arXiv:1706.02515), the constants of SELU
SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


def test_selu_constants_from_their_defining_constraints():
    sol = solve_parameters("scale*where(x > 0, x, alpha*(exp(x) - 1))", {"alpha": 1.5, "scale": 1.0},
                           {"mean": 0, "second_moment": 1})
    assert sol["alpha"] == pytest.approx(SELU_ALPHA, rel=1e-12)  # the issue asks for >= 12 digits
    assert sol["scale"] == pytest.approx(SELU_SCALE, rel=1e-12)


def test_variance_where_a_gain_is_exact():
    q = variance_for_gain("tanh", 5 / 3)
    assert gd.gain("tanh", q) == pytest.approx(5 / 3, rel=1e-12)
    assert q == pytest.approx(1.1785, rel=1e-4)
    assert gd.gain("selu", variance_for_gain("selu", 0.75)) == pytest.approx(0.75, rel=1e-12)
    with pytest.raises(GainDeriveError, match="never"):
        variance_for_gain("sigmoid", 1, mode="fan_out")  # 1/sqrt(E sigmoid'^2) >= 4


def test_unsolvable_and_malformed():
    with pytest.raises(ConvergenceError, match="did not converge"):
        solve_parameters("a*max(x, 0)", {"a": 1.0}, {"second_moment": -1})  # E[f^2] = a^2 q/2 is never < 0
    with pytest.raises(GainDeriveError, match="as many constraints"):
        solve_parameters("a*x", {"a": 1.0}, {"mean": 0, "second_moment": 1})
    with pytest.raises(GainDeriveError, match="constraints name moments"):
        solve_parameters("a*x", {"a": 1.0}, {"median": 0})


def test_solve_command(capsys):
    argv = ["solve", "scale*where(x > 0, x, alpha*(exp(x) - 1))", "--unknown", "alpha=1.5", "--unknown", "scale",
            "--constraint", "mean=0", "--constraint", "second_moment=1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("alpha = 1.67326324235437") and "scale = 1.05070098735548" in out
    assert main(["solve", "a*x", "--unknown", "a", "--constraint", "mean"]) == 2


@pytest.mark.parametrize("unknowns, constraints, match", [
    ([("a", 1.0), ("a", 2.0)], [("mean", 0)], "unknown 'a' is given twice"),
    ([("a", 1.0), ("b", 2.0)], [("mean", 0), ("mean", 1)], "constraint 'mean' is given twice"),
    ([("a", 1.0, 3)], [("mean", 0)], "list of \\(name, number\\) pairs"),
    ({"a": "z"}, {"mean": 0}, "list of \\(name, number\\) pairs"),
    ({"a": math.nan}, {"mean": 0}, "must be a finite number"),
])
def test_repeated_or_malformed_unknowns_and_constraints(unknowns, constraints, match):
    with pytest.raises(GainDeriveError, match=match) as info:
        solve_parameters("a*x + b", unknowns, constraints)
    assert "\n" not in str(info.value)


def test_pairs_are_accepted_like_a_mapping():
    # a*x at q = 1: E[f^2] = a^2, so E[f^2] = 2 gives a = sqrt(2) (hand-derived); quadrature is exact to ~1e-15
    sol = solve_parameters("a*x", [("a", 0.5)], [("second_moment", 2)])
    assert abs(sol["a"] - math.sqrt(2)) < 1e-13


def test_a_bad_parameter_name_is_named_not_reported_as_no_convergence():
    with pytest.raises(GainDeriveError, match="no parameter c"):
        solve_parameters("a*x", {"c": 1.0}, {"second_moment": 1})
    with pytest.raises(GainDeriveError, match="both an unknown and a fixed parameter"):
        solve_parameters("a*x", {"a": 1.0}, {"second_moment": 1}, a=2)


def test_the_solve_is_bounded_in_time(monkeypatch):
    monkeypatch.setattr(solve_module, "TIME_BUDGET", 0.0)  # spent before the solver's first step
    with pytest.raises(ConvergenceError, match="within 200 moment evaluations or 0 s") as info:
        solve_parameters("a*x", {"a": 0.5}, {"second_moment": 2})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs, match", [({"bracket": (1, 0)}, "bracket"), ({"bracket": (0, 1)}, "bracket"),
                                           ({"mode": "fan_avg"}, "unknown mode")])
def test_variance_for_gain_bad_input(kwargs, match):
    with pytest.raises(GainDeriveError, match=match):
        variance_for_gain("tanh", 1.5, **kwargs)
