"""Verification you can rely on (issue 11, point 5).

A NaN or infinite claim, or a NaN derived value, is never "verified"; a correct derivation is never refuted
because the claim was evaluated below the working precision; erf, erfc and Phi spellings of one expression
are recognised as equal.  Every expected verdict is grounded in a reference computed here with mpmath at
40 digits (quadrature of the Gaussian integral) or in a derivation written out in the comments.
"""

from __future__ import annotations

import math
import subprocess
import sys
from decimal import Decimal

import mpmath as mp
import numpy as np
import pytest
import sympy as sp

import gainderive.testing as verification
from gainderive.cli import main
from gainderive.errors import GainDeriveError
from gainderive.estimate import Estimate
from gainderive.testing import DerivationError, assert_gain, assert_moment

# E[elu(z)^2], z ~ N(0, q), alpha = 1, as the ELU literature writes it (Clevert et al. 2016 give the
# activation; the moment follows from E[e^{kz} 1{z<0}] = e^{k^2 q/2} Phi(-k sqrt(q)) = e^{k^2 q/2} erfc(k sqrt(q/2))/2
# for k = 1, 2):  E f^2 = q/2 + 1/2 + e^{2q} erfc(sqrt(2q))/2 - e^{q/2} erfc(sqrt(q/2)).
# The "1 - erf" spelling cancels catastrophically: at q = 30 it loses ~26 digits, at q = 1000 ~870.
ELU_SECOND_MOMENT = {
    "erf": "q/2 + 1/2 + exp(2*q)*(1 - erf(sqrt(2)*sqrt(q)))/2 - exp(q/2)*(1 - erf(sqrt(q)/sqrt(2)))",
    "erfc": "q/2 + 1/2 + exp(2*q)*erfc(sqrt(2*q))/2 - exp(q/2)*erfc(sqrt(q/2))",
    "Phi": "q/2 + 1/2 + exp(2*q)*Phi(-2*sqrt(q)) - 2*exp(q/2)*Phi(-sqrt(q))",
}

# E[gelu(z)^2] = E[z^2 Phi(z)^2], z ~ N(0, q), derived by hand:
#   Phi^2 = 1/4 + h + h^2 with h = Phi - 1/2 odd, so E[z^2 h] = 0 and E = q/4 + E[z^2 h^2].
#   Stein's lemma twice: E[z^2 g(z)] = q E[g] + q^2 E[g''], with g = h^2, g'' = 2 phi^2 - 2 h z phi.
#   E[h^2] = E[Phi(z)^2] - 1/4 = asin(q/(1+q))/(2 pi)   (orthant probability of a bivariate normal with
#            correlation q/(1+q));
#   E[phi(z)^2] = 1/(2 pi sqrt(1+2q));   E[z phi(z) h(z)] = q/(2 pi (1+q) sqrt(1+2q))  (Gaussian product, Stein).
#   => E[gelu(z)^2] = q/4 + q asin(q/(1+q))/(2 pi) + q^2/(pi (1+q) sqrt(1+2q)).
# Check: as q -> oo it tends to q/4 + q/4 = q/2, ReLU's.  test_gelu_hand_derivation_matches_quadrature checks
# it against 40-digit quadrature.
GELU_SECOND_MOMENT = "q/4 + q*asin(q/(1 + q))/(2*pi) + q**2/(pi*(1 + q)*sqrt(1 + 2*q))"
GELU_SPELLINGS = ("gelu", "x*Phi(x)", "x*(1 + erf(x/sqrt(2)))/2", "x*erfc(-x/sqrt(2))/2")

# PReLU (He et al. 2015): E[f^2] = E[z^2 1{z>0}] + a^2 E[z^2 1{z<0}] = (1 + a^2) q/2.
PRELU_SECOND_MOMENT = "(1 + a**2)*q/2"


def gaussian_expectation(f, q, dps=40):
    """E[f(z)], z ~ N(0, q), by mpmath quadrature at dps digits, split at 0 where the activations kink."""
    with mp.workdps(dps):
        q = mp.mpf(q)
        density = lambda z: mp.exp(-z * z / (2 * q)) / mp.sqrt(2 * mp.pi * q)  # noqa: E731
        return mp.quad(lambda z: f(z) * density(z), [-mp.inf, -10 * mp.sqrt(q), 0, 10 * mp.sqrt(q), mp.inf])


@pytest.fixture
def numeric_only(monkeypatch):
    """Switch the symbolic proof off, so the numeric path (the one that refuted ELU at q = 30) is exercised."""
    monkeypatch.setattr(verification, "_proved_equal", lambda claim, form: False)


# -- NaN and infinity ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("claim", [float("nan"), float("inf"), -math.inf, np.float64("nan"), np.float32("inf"),
                                   Decimal("NaN"), sp.nan, sp.oo, sp.zoo, sp.Symbol("q") * sp.nan])
def test_non_finite_numbers_are_malformed_claims(claim):
    with pytest.raises(GainDeriveError, match="finite"):
        assert_moment("relu", "second_moment", claim)
    with pytest.raises(GainDeriveError, match="finite"):
        assert_gain("relu", claim, variance="1")


@pytest.mark.parametrize(("claim", "reason"), [
    (lambda q: float("nan"), "not a finite number"),
    (lambda q: math.inf, "not a finite number"),
    (lambda q: q / 2 if q != 1 else float("nan"), "not a finite number"),  # right everywhere but q = 1
    (lambda q: complex(q / 2, 0), "not a real number"),
])
def test_callables_that_are_not_finite_somewhere_are_refuted(claim, reason):
    # E[relu(z)^2] = q/2 (He et al. 2015); a NaN anywhere must not hide behind max(worst, nan)
    with pytest.raises(DerivationError, match=reason):
        assert_moment("relu", "second_moment", claim)


@pytest.mark.parametrize(("claim", "q", "reason"), [
    ("sqrt(q - 2)", "1", "complex"),          # sqrt(-1)
    ("log(q - 1)", "1", "infinite"),          # log(0) = -inf
    ("q/2 + log(q - 1)", "3/10", "complex"),  # log(-0.7)
    ("q/2 + 1/(q - 1)", "1", "division by zero"),
    ("q/2 + (1 - q)**(1/2)", "3", "complex"),
    ("where(q > 1, q/2, log(q - 1))", "1", "infinite"),
])
def test_formulas_that_are_not_finite_real_at_q_are_refuted(claim, q, reason):
    with pytest.raises(DerivationError, match=f"not a finite real number at q = {q}.*{reason}"):
        assert_moment("relu", "second_moment", claim, variance=q)
    with pytest.raises(DerivationError, match="not a finite real number"):
        assert_gain("relu", f"sqrt(2) + {claim}", variance=q)


def test_formula_undefined_on_part_of_the_spread_is_refuted_there():
    with pytest.raises(DerivationError) as info:
        assert_moment("relu", "second_moment", "sqrt(q - 2)")
    message = str(info.value)
    assert message.count("not a finite real number") == 3  # q = 1/100, 3/10, 1 of the spread
    assert message.count("<-- differs") == 5  # and it is wrong at q = 3, 30 (sqrt(q - 2) != q/2)


def test_a_nan_or_infinite_derived_value_is_never_verified(monkeypatch):
    for bad in (mp.nan, mp.inf):
        monkeypatch.setattr(verification._Derivation, "value",
                            lambda self, q, act=None, digits=30, bad=bad: Estimate(bad, mp.mpf(0), "high_precision"))
        with pytest.raises(DerivationError, match="the derivation gives"):
            assert_moment("tanh", "second_moment", 0.5)
        with pytest.raises(DerivationError, match="the derivation gives"):
            assert_moment("tanh", "second_moment", "q")


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "1e400"])
def test_cli_non_finite_expected_is_an_error_not_a_pass(text, capsys):
    assert main(["verify", "relu", "--moment", "second_moment", f"--expected={text}"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("gainderive: error:") and err.count("\n") == 1 and "finite" in err


def test_cli_formula_undefined_at_q_is_refuted(capsys):
    assert main(["verify", "relu", "--expected", "log(q - 1)", "-q", "1"]) == 1
    out, _ = capsys.readouterr()
    assert out.startswith("refuted:") and "not a finite real number at q = 1" in out


def test_cli_nan_in_a_fresh_process_prints_one_line_and_no_traceback():
    done = subprocess.run([sys.executable, "-m", "gainderive", "verify", "relu", "--moment", "second_moment",
                           "--expected", "nan"], capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr and "finite" in done.stderr


# -- correct derivations are never refuted ------------------------------------------------------------------------

@pytest.mark.parametrize("q", ["1", "30"])
def test_elu_textbook_form_is_right(q):
    # the reference: E[elu(z)^2] by 40-digit quadrature; the claim evaluated stably (erfc) at 60 digits
    reference = gaussian_expectation(lambda z: z * z if z > 0 else mp.expm1(z) ** 2, q)
    with mp.workdps(60):
        qq = mp.mpf(q)
        claim = qq / 2 + mp.mpf(1) / 2 + mp.exp(2 * qq) * mp.erfc(mp.sqrt(2 * qq)) / 2 \
            - mp.exp(qq / 2) * mp.erfc(mp.sqrt(qq / 2))
    assert abs(claim - reference) <= mp.mpf(10) ** -32 * reference  # quadrature at 40 digits: ~35 correct


@pytest.mark.parametrize("spelling", sorted(ELU_SECOND_MOMENT))
def test_elu_textbook_form_is_proved_in_every_spelling(spelling):
    # erf, erfc and Phi are normalised to erfc on both sides, so the identity is proved, not sampled
    assert assert_moment("elu", "second_moment", ELU_SECOND_MOMENT[spelling]).how == "symbolic"


@pytest.mark.parametrize("variance", [None, "1000", "1/1000"])
def test_elu_textbook_form_verifies_numerically_up_to_q_1000(variance, numeric_only):
    # was: "differs" at q = 30 (rel. 9.9e-18 against 1e-25), the claim evaluated at 40 digits losing 26
    result = assert_moment("elu", "second_moment", ELU_SECOND_MOMENT["erf"], variance=variance)
    assert result.how == "numeric" and result.points == (5 if variance is None else 1)


def test_claim_error_bound_holds_where_it_cancels_870_digits():
    # the claim's value at q = 1000 carries an error bound; the truth (the stable erfc form at 1000 digits,
    # itself checked against quadrature at q = 1 and 30 above) must lie within it, and it must be 35 digits
    claim = verification._claim_expression(ELU_SECOND_MOMENT["erf"], set())
    tracked = verification._claim_value(claim, "1000", 30, mp.mpf(0))
    with mp.workdps(1000):
        q = mp.mpf(1000)
        truth = q / 2 + mp.mpf(1) / 2 + mp.exp(2 * q) * mp.erfc(mp.sqrt(2 * q)) / 2 \
            - mp.exp(q / 2) * mp.erfc(mp.sqrt(q / 2))
        assert tracked.defect is None
        assert abs(tracked.value - truth) <= tracked.error
        assert tracked.error <= mp.mpf(10) ** -35 * truth
    # the first attempt, at 45 digits, computes 1 - erf(sqrt(2000)) = 0 exactly: two low precisions agreeing
    # would have "verified" 500.5 (off by 0.019); the error bound is what forces the re-evaluation
    assert abs(truth - mp.mpf("500.5")) > mp.mpf("0.01")


# claims over every kind of operation, each with a 100-digit mpmath reference written out independently
CLAIMS_WITH_REFERENCES = [
    ("softplus(-50*q) + sigmoid(q) + tanh(q) + atan(q) + asinh(q) + cosh(q) + sin(q) + Phi(-3*q)",
     lambda q: mp.log1p(mp.exp(-50 * q)) + 1 / (1 + mp.exp(-q)) + mp.tanh(q) + mp.atan(q) + mp.asinh(q)
     + mp.cosh(q) + mp.sin(q) + mp.ncdf(-3 * q)),
    ("abs(q - 1) + max(q, 2) + min(q, 1/2) + sign(q - 1) + where(q > 1, erfc(q), erf(q))",
     lambda q: abs(q - 1) + max(q, 2) + min(q, mp.mpf(1) / 2) + mp.sign(q - 1) + (mp.erfc(q) if q > 1 else mp.erf(q))),
    ("(q + 1)**(3/2) + q**(-3) + exp(-q)*expm1(q) + log1p(q) + log(q) + asin(q/(1 + q))",
     lambda q: (q + 1) ** mp.mpf(1.5) + q**-3 + mp.exp(-q) * mp.expm1(q) + mp.log1p(q) + mp.log(q)
     + mp.asin(q / (1 + q))),
    ("1 - sqrt(1 - exp(-2*q))", lambda q: -mp.expm1(mp.log1p(-mp.exp(-2 * q)) / 2)),  # cancels for large q
]


@pytest.mark.parametrize(("claim", "reference"), CLAIMS_WITH_REFERENCES)
@pytest.mark.parametrize("q", ["1/100", "3/10", "1", "30"])
def test_claim_error_bounds_hold_for_every_operation(claim, reference, q):
    tracked = verification._claim_value(verification._claim_expression(claim, set()), q, 30, mp.mpf(0))
    with mp.workdps(100):
        truth = reference(mp.mpf(sp.Rational(q).p) / sp.Rational(q).q)
        assert tracked.defect is None
        assert abs(tracked.value - truth) <= tracked.error <= mp.mpf(10) ** -35 * abs(truth)


def test_prelu_and_leaky_relu_forms_are_proved():
    assert assert_moment("prelu", "second_moment", PRELU_SECOND_MOMENT).how == "symbolic"  # for every a
    assert assert_moment("leaky_relu", "second_moment", "(1 + negative_slope**2)*q/2",
                         params={"negative_slope": "0.2"}).how == "symbolic"
    assert assert_gain("prelu", "sqrt(2/(1 + a**2))", variance="1000").how == "symbolic"


def test_prelu_and_leaky_relu_forms_verify_numerically(numeric_only):
    # the free a is checked at two values of a (the default 1/4 and 1/4 * 6/5 + 1/10)
    assert assert_moment("prelu", "second_moment", PRELU_SECOND_MOMENT, variance="1000").points == 2
    assert assert_moment("leaky_relu", "second_moment", "(1 + negative_slope**2)*q/2", variance="1/1000",
                         params={"negative_slope": "0.2"}).how == "numeric"


@pytest.mark.parametrize("q", ["3/10", "1", "30"])
def test_gelu_hand_derivation_matches_quadrature(q):
    reference = gaussian_expectation(lambda z: (z * mp.ncdf(z)) ** 2, q)
    with mp.workdps(40):
        qq = mp.mpf(sp.Rational(q).p) / sp.Rational(q).q
        form = qq / 4 + qq * mp.asin(qq / (1 + qq)) / (2 * mp.pi) + qq**2 / (mp.pi * (1 + qq) * mp.sqrt(1 + 2 * qq))
    assert abs(form - reference) <= mp.mpf(10) ** -32 * reference  # quadrature at 40 digits: ~35 correct


@pytest.mark.parametrize("spelling", GELU_SPELLINGS)
def test_gelu_form_verifies_for_every_spelling_of_gelu(spelling):
    assert assert_moment(spelling, "second_moment", GELU_SECOND_MOMENT).how in ("symbolic", "numeric")


@pytest.mark.parametrize(("spelling", "variance"), [("gelu", "1000"), ("x*erfc(-x/sqrt(2))/2", "1/1000")])
def test_gelu_form_verifies_numerically(spelling, variance, numeric_only):
    assert assert_moment(spelling, "second_moment", GELU_SECOND_MOMENT, variance=variance).how == "numeric"


def test_float_constants_in_sympy_claims_keep_their_value():
    q = sp.Symbol("q")
    assert assert_moment("relu", "second_moment", sp.Float(0.5) * q).how == "symbolic"  # 0.5 means 1/2
    # a 30-digit Float that is 2e-22 off 1/2: a 15-digit reading would call it 1/2
    with pytest.raises(DerivationError):
        assert_moment("relu", "second_moment", sp.Float("0.5000000000000000000002", 30) * q)


# -- wrong derivations are refuted --------------------------------------------------------------------------------

@pytest.mark.parametrize(("activation", "correct", "slip"), [
    ("elu", ELU_SECOND_MOMENT["erf"], "(q - 1)**2/1000"),
    ("elu", ELU_SECOND_MOMENT["Phi"], "(q - 1)**2/10**20"),  # 1e-20 relative: far below float64, far above 1e-25
    ("prelu", PRELU_SECOND_MOMENT, "(q - 1)**2/1000"),
    ("gelu", GELU_SECOND_MOMENT, "(q - 1)**2/10**20"),
])
def test_wrong_forms_that_agree_at_q_1_are_refuted(activation, correct, slip):
    params = {"a": "1/4"} if activation == "prelu" else None  # one parameter point keeps the test fast
    with pytest.raises(DerivationError) as info:
        assert_moment(activation, "second_moment", f"{correct} + {slip}", params=params)
    rows = [line.split() for line in str(info.value).splitlines()]
    rows = [line for line in rows if line and line[0] in ("1/100", "3/10", "1", "3", "30")]
    assert len(rows) == 5
    assert all(("<--" in line) == (line[0] != "1") for line in rows)  # right at q = 1 only


def test_wrong_callable_that_agrees_at_q_1_is_refuted():
    def relu_second_moment_with_slip(q):
        return q / 2 + (q - 1) ** 2 / 1000

    with pytest.raises(DerivationError, match="<-- differs"):
        assert_moment("relu", "second_moment", relu_second_moment_with_slip)
