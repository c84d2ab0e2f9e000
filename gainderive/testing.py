"""Check hand derivations of Gaussian moments and gains, in your own test suite.

>>> from gainderive.testing import assert_moment, assert_gain
>>> assert_moment("relu", "second_moment", "q/2").how          # He et al. 2015
'symbolic'
>>> assert_gain("prelu", "sqrt(2/(1 + a**2))").how             # for every a, not just the default
'symbolic'

A claim (``expected``) may be a number, a callable of q, or a formula in ``q``
and the activation's parameters (a string, parsed by the same whitelist as
activations, or a sympy expression).  A formula is first compared
symbolically with the derived closed form, after writing erf, erfc and Phi
all as erfc (:math:`\\operatorname{erf} u = 1 - \\operatorname{erfc} u`,
:math:`\\Phi(u) = \\tfrac12 \\operatorname{erfc}(-u/\\sqrt2)`); failing that,
numerically with the high-precision backend at 30 digits over a spread of q
(and of parameter values where the formula leaves parameters free).

The claim is evaluated with a running bound on its own rounding error, at
whatever precision that bound needs to fall below 10^-35 relative: textbook
forms such as ``exp(2*q)*(1 - erf(sqrt(2*q)))`` lose about 0.87 q digits to
cancellation (26 at q = 30, 870 at q = 1000), and are evaluated at 30 digits
plus the digits they lose, so a correct derivation is never refuted.  A claim
that would need more than 4000 digits at some q raises ConvergenceError (a
GainDeriveError) instead of a verdict.  A claim is verified when it lies
within ``rtol`` (relative) of the derived value plus both sides' error
bounds; a claim that is NaN, infinite, complex or undefined is never verified.

A refuted claim raises :class:`DerivationError` (an AssertionError, so pytest
reports it) whose message shows the claim and the derivation side by side, the
q where they differ and the relative error.  A verified claim returns a
:class:`Verified` record and prints nothing.  A malformed claim (a NaN or
infinite number, an unparsable formula) raises :class:`GainDeriveError`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

import mpmath as mp

from .errors import ConvergenceError, DuplicateParameterError, FormulaError, GainDeriveError
from .suggest import Call

__all__ = ["DerivationError", "Verified", "assert_gain", "assert_moment"]

MOMENTS = ("mean", "second_moment", "derivative_second_moment", "variance")
MODES = ("fan_in", "fan_out", "variance")
SPREAD = ("1/100", "3/10", "1", "3", "30")  # q values for numeric checks (exact decimals)
DIGITS = 30
GUARD = 5  # a formula claim must agree to DIGITS - GUARD digits; its own value is computed to DIGITS + GUARD
DEFAULT_RTOL_NUMBER = 1e-12  # a float claim: what float64 results can certify
MAX_CLAIM_DIGITS = 4000  # a claim that loses more digits than this to cancellation at some q is not checked there
SIMPLIFY_MAX_OPS = 80  # sympy.simplify beyond this size can take minutes: fall back to the numeric check


class DerivationError(AssertionError):
    """A claimed moment or gain that the derivation refutes."""


@dataclass(frozen=True)
class Verified:
    """How a claim was verified: ``"symbolic"`` (proved equal to the closed form) or ``"numeric"``."""

    how: str
    digits: int | None = None
    points: int = 0


def _label(moment: str) -> str:
    return {"mean": "E[f(z)]", "second_moment": "E[f(z)^2]", "derivative_second_moment": "E[f'(z)^2]",
            "variance": "Var f(z)"}.get(moment, f"E[{moment}]")


# -- the claim ---------------------------------------------------------------------------------------------------

def _exact_floats(expr):
    """sympy Floats in a claim as the exact rationals they stand for, so no 15-digit constant leaks in.

    A double-precision Float means the decimal it prints as (0.1 is 1/10), as for q; a Float carrying more
    precision is taken at its exact binary value.
    """
    import sympy as sp

    floats = expr.atoms(sp.Float)
    if not floats:
        return expr
    return expr.xreplace({f: sp.Rational(repr(float(f))) if f._prec <= 53 else sp.Rational(f) for f in floats})


def _claim_expression(expected: Any, free: set[str]):
    """A formula claim as a sympy expression in Q and parameter symbols, or None if it is not a formula."""
    __tracebackhide__ = True
    import sympy as sp

    from .closed_form import Q
    from .formula import parameter_symbol, parse_formula

    if isinstance(expected, str):
        expr = parse_formula(expected)
    elif isinstance(expected, sp.Basic):
        expr = _exact_floats(expected)  # already a sympy expression: nothing is parsed
    else:
        return None
    if expr.has(sp.nan, sp.zoo, sp.oo, -sp.oo):
        raise GainDeriveError(f"the claim {expr} is not finite; a claim must be a finite real number or formula")
    if expr.has(sp.I):
        raise GainDeriveError(f"the claim {expr} is not real; a claim must be a real number or formula")
    names = {s.name for s in expr.free_symbols}
    unknown = sorted(names - free - {"q"})
    if unknown:
        from .suggest import KEYWORD_ALIASES, accepted, closest

        first = unknown[0]
        meant = "q" if KEYWORD_ALIASES.get(first) == "variance" or first in ("x", "variance") else \
            closest(first, ["q", *free])
        hint = f"; did you mean {meant!r}?" if meant else ""
        listed = f"q (the input variance) and the activation's parameters ({', '.join(sorted(free)) or 'none'})"
        raise FormulaError(f"the claim uses {', '.join(unknown)}{accepted(hint, listed)}")
    return expr.subs({sp.Symbol("q"): Q, parameter_symbol("q"): Q})


def _number(value: Any) -> mp.mpf:
    """A real number as an mpf at the working precision; floats mean the decimal they print as."""
    if isinstance(value, mp.mpf):
        return +value
    if isinstance(value, numbers.Integral):
        return mp.mpf(int(value))
    if isinstance(value, Fraction):
        return mp.mpf(value.numerator) / value.denominator
    if isinstance(value, Decimal):
        return mp.mpf(str(value)) if value.is_finite() else mp.mpf(float(value))
    if isinstance(value, numbers.Real):
        number = float(value)
        return mp.mpf(repr(number)) if math.isfinite(number) else mp.mpf(number)
    import sympy as sp

    if isinstance(value, sp.Basic) and value.is_number:
        evaluated = sp.N(value, mp.mp.dps + 5)
        if evaluated.is_real and evaluated.is_finite:
            return mp.mpf(str(evaluated))
        if evaluated.has(sp.nan):
            return mp.nan
        if evaluated.is_extended_real:
            return mp.inf if evaluated > 0 else -mp.inf
    raise TypeError(type(value).__name__)


def _finite_real(value: Any) -> bool:
    return isinstance(value, mp.mpf) and mp.isfinite(value)


# -- evaluating a claim with a bound on its rounding error -------------------------------------------------------

# Functions monotone on their domain: the image of [a - e, a + e] is spanned by the endpoint values.
_MONOTONE = {"exp", "log", "tanh", "sinh", "atan", "asinh", "asin", "erf", "erfc", "Phi", "sigmoid", "softplus",
             "expm1", "log1p", "sqrt", "reciprocal"}
_ROUNDING_ULPS = 8  # mpmath's elementary and special functions are accurate to a few units in the last place
_UNCERTAIN = mp.inf  # an error bound of inf: not decidable at this precision, retry with more digits


@dataclass(frozen=True)
class _Tracked:
    """A value with an absolute error bound; ``defect`` names why it is not a finite real number."""

    value: Any
    error: Any
    defect: str | None = None


def _rounding(value) -> mp.mpf:
    return _ROUNDING_ULPS * mp.eps * abs(value) if _finite_real(value) else mp.mpf(0)


def _call(fn: Callable, *args):
    try:
        return fn(*args)
    except (ZeroDivisionError, ValueError, OverflowError):
        return mp.nan


def _describe_bad(name: str, value) -> str:
    if name == "reciprocal":
        return "division by zero"
    if isinstance(value, mp.mpc):
        return f"{name} of an argument outside its real domain gives a complex number"
    if isinstance(value, mp.mpf) and mp.isinf(value):
        return f"{name} is {'-' if value < 0 else ''}infinite here"
    return f"{name} is undefined here"


def _unary(name: str, fn: Callable, a: _Tracked) -> _Tracked:
    """f(a) with |f(x) - f(a)| bounded over |x - a| <= error, plus f's own rounding."""
    centre = _call(fn, a.value)
    if a.error == 0:
        if not _finite_real(centre):
            return _Tracked(centre, mp.mpf(0), _describe_bad(name, centre))
        return _Tracked(centre, _rounding(centre))
    if a.error == _UNCERTAIN:
        return _Tracked(centre, _UNCERTAIN)
    low, high = a.value - a.error, a.value + a.error
    if name == "sqrt" and low < 0 <= high:  # a cancelled difference feeding sqrt: |sqrt x - sqrt y| <= sqrt|x - y|
        value = mp.sqrt(max(a.value, 0))
        return _Tracked(value, mp.sqrt(2 * a.error) + _rounding(value))
    if name in _MONOTONE:
        ends = [_call(fn, low), _call(fn, high)]
        if not _finite_real(centre):
            certain = all(not _finite_real(v) for v in ends) and a.error <= abs(a.value) / 1000
            return _Tracked(centre, mp.mpf(0), _describe_bad(name, centre)) if certain else _Tracked(centre, _UNCERTAIN)
        if not all(_finite_real(v) for v in ends):
            return _Tracked(centre, _UNCERTAIN)  # the interval reaches a singularity: more digits will shrink it
        spread = max(abs(v - centre) for v in ends)
        return _Tracked(centre, spread + _rounding(centre) + sum(_rounding(v) for v in ends))
    if not _finite_real(centre):
        return _Tracked(centre, _UNCERTAIN)
    if name in ("sin", "cos", "Abs", "neg"):  # 1-Lipschitz
        return _Tracked(centre, a.error + _rounding(centre))
    if name == "square":
        return _Tracked(centre, 2 * abs(a.value) * a.error + a.error**2 + _rounding(centre))
    if name == "cosh":  # even, increasing in |x|
        near, far = max(abs(a.value) - a.error, 0), abs(a.value) + a.error
        return _Tracked(centre, max(abs(mp.cosh(near) - centre), abs(mp.cosh(far) - centre)) + 3 * _rounding(centre)
                        + _rounding(mp.cosh(far)))
    if name in ("sign", "Heaviside"):  # exact unless the argument's sign is in doubt
        return _Tracked(centre, mp.mpf(0) if abs(a.value) > a.error else _UNCERTAIN)
    return _Tracked(centre, _UNCERTAIN)


def _product(args: list[_Tracked]) -> _Tracked:
    value, error = mp.mpf(1), mp.mpf(0)
    for t in args:
        value, error = value * t.value, abs(value) * t.error + abs(t.value) * error + error * t.error
        error += _rounding(value)
    return _Tracked(value, error)


def _power(base: _Tracked, exponent: _Tracked) -> _Tracked:
    power = lambda u, v: u**v  # noqa: E731
    centre = _call(power, base.value, exponent.value)
    integer = _finite_real(exponent.value) and exponent.value == mp.nint(exponent.value)  # integer constants: exact
    if base.error == 0 and (exponent.error == 0 or integer):
        if not _finite_real(centre):
            return _Tracked(centre, mp.mpf(0), _describe_bad("a power", centre))
        return _Tracked(centre, _rounding(centre))
    if _UNCERTAIN in (base.error, exponent.error):
        return _Tracked(centre, _UNCERTAIN)
    low, high = base.value - base.error, base.value + base.error
    if integer:  # x**n is monotone on each side of 0
        if low <= 0 <= high and exponent.value < 0:
            return _Tracked(centre, _UNCERTAIN)
        values = [_call(power, low, exponent.value), _call(power, high, exponent.value)]
        if low < 0 < high:
            values.append(mp.mpf(0))
    elif low > 0:  # x**y is monotone in each argument for x > 0: the corners bound it
        values = [_call(power, b, e) for b in (low, high)
                  for e in (exponent.value - exponent.error, exponent.value + exponent.error)]
    elif high < 0:
        return _Tracked(centre, mp.mpf(0), "a negative number to a fractional power is not real")
    else:
        return _Tracked(centre, _UNCERTAIN)
    if not _finite_real(centre) or not all(_finite_real(v) for v in values):
        return _Tracked(centre, _UNCERTAIN)
    return _Tracked(centre, max(abs(v - centre) for v in values) + 2 * _rounding(centre)
                    + sum(_rounding(v) for v in values))


def _compare(name: str, a: _Tracked, b: _Tracked) -> _Tracked:
    from .evaluate import _MPMATH

    value = _MPMATH[name](a.value, b.value)
    decided = a.error + b.error == 0 or abs(a.value - b.value) > a.error + b.error
    return _Tracked(value, mp.mpf(0) if decided else _UNCERTAIN)


def _is_exactly(value: mp.mpf, rational) -> bool:
    """Whether a binary mpf equals a rational exactly (q = 1 or 1/2 is; 3/10 is not)."""
    if not _finite_real(value):
        return False
    man, exp = value.man_exp  # the mantissa's magnitude
    exact = Fraction(int(rational.p), int(rational.q))
    return Fraction(abs(int(man))) * Fraction(2) ** exp == abs(exact) and (value < 0) == (exact < 0)


def _tracked_run(program, q: mp.mpf, q_error: mp.mpf) -> _Tracked:
    """Run an mpmath :class:`~gainderive.evaluate.Program` on q, carrying an absolute error bound through each step.

    Rigorous up to the accuracy of mpmath's functions (allowed _ROUNDING_ULPS units in the last place): sums add
    their operands' bounds (so cancellation shows as a bound large against the value), products propagate them
    exactly, monotone functions map the interval's endpoints.  A value that is complex, infinite or undefined
    although its inputs are certain carries a ``defect``.
    """
    import sympy as sp

    from .evaluate import _MPMATH

    source = {index: e for e, index in program._index.items()}
    results: list[_Tracked] = []
    for i, (name, args) in enumerate(program.ops):
        if name == "input":
            results.append(_Tracked(q, q_error))
            continue
        if name == "const":  # evaluated at dps + 10 digits when the program was built; rationals often exactly
            value, expr = args[0], source.get(i)
            exact = isinstance(value, bool) or (isinstance(expr, sp.Rational) and _is_exactly(value, expr))
            results.append(_Tracked(value, mp.mpf(0) if exact else abs(value) * mp.mpf(10) ** -(program.dps + 9)))
            continue
        operands = [results[j] for j in args]
        if name == "Heaviside":  # sympy's Heaviside(u, H0) carries its value at 0; the tables use 1/2
            operands = operands[:1]
        defect = next((t.defect for t in operands if t.defect), None)
        if name == "Piecewise":
            chosen = None
            for cond, branch in zip(operands[0::2], operands[1::2]):
                if cond.defect:
                    chosen = _Tracked(mp.nan, mp.mpf(0), cond.defect)
                    break
                if cond.error == _UNCERTAIN:
                    chosen = _Tracked(branch.value, _UNCERTAIN)
                    break
                if cond.value:
                    chosen = branch
                    break
            results.append(chosen or _Tracked(mp.nan, mp.mpf(0), "no branch of where(...) applies"))
            continue
        if defect:
            results.append(_Tracked(mp.nan, mp.mpf(0), defect))
        elif name in ("StrictGreaterThan", "StrictLessThan", "GreaterThan", "LessThan", "Equality", "Unequality"):
            results.append(_compare(name, *operands))
        elif name in ("And", "Or", "Not"):
            uncertain = any(t.error == _UNCERTAIN for t in operands)
            results.append(_Tracked(_MPMATH[name](*(t.value for t in operands)),
                                    _UNCERTAIN if uncertain else mp.mpf(0)))
        elif name == "add":
            value = mp.fsum(t.value for t in operands)
            results.append(_Tracked(value, mp.fsum(t.error for t in operands) + _rounding(value)))
        elif name == "mul":
            results.append(_product(operands))
        elif name == "pow":
            results.append(_power(*operands))
        elif name in ("Max", "Min"):  # 1-Lipschitz in the maximum norm
            value = _MPMATH[name](*(t.value for t in operands))
            results.append(_Tracked(value, max(t.error for t in operands)))
        elif name == "ScaledPhi":  # e^(c + b^2/2) Phi(b): increasing in c and in b, so the corners bound it
            c, b = operands
            centre = _MPMATH[name](c.value, b.value)
            corners = [_MPMATH[name](c.value + s * c.error, b.value + t * b.error) for s in (-1, 1) for t in (-1, 1)]
            results.append(_Tracked(centre, max(abs(v - centre) for v in corners) + 2 * _rounding(max(corners))))
        elif len(operands) == 1:
            results.append(_unary(name, _MPMATH[name], operands[0]))
        else:  # an operation without an error rule: usable only on exact inputs, else undecidable
            value = _call(_MPMATH[name], *(t.value for t in operands))
            exact = all(t.error == 0 for t in operands)
            results.append(_Tracked(value, 2 * _rounding(value) if exact else _UNCERTAIN))
    return results[program.outputs[0]]


def _claim_value(expr, q: str, digits: int, floor: mp.mpf) -> _Tracked:
    """The claim at q with an error bound below 10^-(digits + GUARD) relative (or ``floor`` absolute).

    Starts at digits + 3 GUARD digits; where the bound says digits were lost to cancellation, re-evaluates with
    that many more, up to MAX_CLAIM_DIGITS.
    """
    import sympy as sp

    from .closed_form import Q
    from .evaluate import Program

    exact = Fraction(q)
    dps = digits + 3 * GUARD
    while True:
        program = Program([expr], [Q], backend="mpmath", dps=dps)
        with mp.workdps(dps):
            q_value = mp.mpf(exact.numerator) / exact.denominator
            q_error = mp.mpf(0) if _is_exactly(q_value, sp.Rational(exact.numerator, exact.denominator)) \
                else abs(q_value) * mp.eps
            result = _tracked_run(program, q_value, q_error)
        if result.defect:
            return result
        target = mp.mpf(10) ** -(digits + GUARD) * abs(result.value) if _finite_real(result.value) else 0
        target = max(target, floor)
        if result.error <= target:
            return result
        if mp.isfinite(result.error) and target > 0:  # the digits lost to cancellation, and a margin
            dps += max(int(mp.ceil(mp.log10(result.error / target))) + 2 * GUARD, GUARD)
        else:  # undecidable at this precision (a branch or a singularity within the error bound): double it
            dps = min(2 * dps, max(MAX_CLAIM_DIGITS, dps + 1))
        if dps > MAX_CLAIM_DIGITS:
            raise ConvergenceError(
                f"the claim cannot be evaluated to {digits} digits at q = {q} even with {MAX_CLAIM_DIGITS} "
                "digits of working precision (it cancels catastrophically there, e.g. 1 - erf(u) at large u: "
                "write erfc(u))")


# -- the derivation ----------------------------------------------------------------------------------------------

class _Derivation:
    """The derived side of a claim: a closed form if there is one, and high-precision values at any q."""

    def __init__(self, activation, moment: str, params: Mapping[str, Any] | None, mode: str | None = None,
                 call: Call | None = None):
        __tracebackhide__ = True
        from .registry import build

        self.act = build(activation, dict(params or {}), call=call)
        self.moment, self.mode = moment, mode
        self.explicit_params = bool(params)

    @property
    def parameters(self) -> set[str]:
        return set(self.act.params)

    def form(self):
        """The verified closed form (of the gain, when checking a gain), or None."""
        import sympy as sp

        from .closed_form import Q
        from .verify import closed_forms

        if self.moment not in MOMENTS:
            return None
        forms = closed_forms(self.act)
        if self.mode is None:
            return forms[self.moment].expression if forms[self.moment] is not None else None
        needed = {"fan_in": "second_moment", "fan_out": "derivative_second_moment", "variance": "variance"}[self.mode]
        base = forms[needed]
        if base is None:
            return None
        return sp.sqrt(Q / base.expression) if self.mode in ("fan_in", "variance") else 1 / sp.sqrt(base.expression)

    def value(self, q: str, act=None, digits: int = DIGITS):
        """The derived moment (or gain) at q as an Estimate, at ``digits`` digits, by the high-precision backend."""
        from .gains import gains
        from .moments import expectation, moments

        act = act or self.act
        with mp.workdps(digits + 10):
            if self.moment in MOMENTS:
                m = moments(act, q, "high_precision", digits=digits)
                if self.mode is None:
                    return getattr(m, self.moment)
                return getattr(gains(m), self.mode)
            return expectation(act, self.moment, q, "high_precision", digits=digits)

    def other_points(self):
        """The activation at a second parameter point, to check claims that leave parameters free."""
        from .verify import _perturbed

        return _perturbed(self.act)


# -- the symbolic proof ------------------------------------------------------------------------------------------

def _erfc_form(expr):
    """erf, erfc and Phi all written with erfc, so the same function spelled three ways compares equal."""
    import sympy as sp

    from .functions import Phi

    return expr.replace(Phi, lambda u: sp.erfc(-u / sp.sqrt(2)) / 2).replace(sp.erf, lambda u: 1 - sp.erfc(u))


def _proved_equal(claim, form) -> bool:
    """True when claim - form is 0 as an identity (after normalising erf/Phi); False when that is not shown quickly."""
    import sympy as sp

    from .budget import Budget, SymbolicBudgetError

    try:
        difference = _erfc_form(claim) - _erfc_form(form)
        if difference == 0:
            return True
        if sp.count_ops(difference) > 4 * SIMPLIFY_MAX_OPS:
            return False
        # ((q+1)**64)**64 is three operations that expand to 4097 terms: the terms budget refuses it up front
        if Budget("cannot prove the claim symbolically", "closed_form_seconds").expand(difference, "the claim") == 0:
            return True
        if sp.count_ops(difference) > SIMPLIFY_MAX_OPS:
            return False
        return sp.simplify(difference) == 0
    except (SymbolicBudgetError, TypeError, ValueError, ArithmeticError, RecursionError, AttributeError,
            NotImplementedError):
        return False


def _parameter_values(act) -> dict:
    from ._structure import exact
    from .formula import parameter_symbol

    return {parameter_symbol(k): exact(v) for k, v in act.params.items()}


# -- the verdict -------------------------------------------------------------------------------------------------

@dataclass
class _Row:
    act: Any
    q: str
    claimed: Any
    derived: Any
    error: Any  # relative difference (None where a side is not a finite real number)
    differs: bool
    reason: str | None = None


def _callable_value(expected: Callable, q: str) -> tuple[Any, str | None]:
    import sympy as sp

    result = expected(float(sp.Rational(q)))
    not_real = isinstance(result, (numbers.Complex, mp.mpc)) and not isinstance(result, numbers.Real)
    if isinstance(result, bool) or not_real:
        return mp.nan, f"the callable returned {result!r}, not a real number"
    try:
        value = _number(result)
    except (TypeError, ValueError):
        raise GainDeriveError(f"the claimed callable must return a real number; it returned "
                              f"{type(result).__name__} at q = {q}") from None
    if not _finite_real(value):
        return value, f"the callable returned {mp.nstr(value, 5)}, not a finite number"
    return value, None


def _check(derivation: _Derivation, expected: Any, variance: Any, rtol: float | None, what: str) -> Verified:
    __tracebackhide__ = True  # a failing test shows the user's line and the report, not this frame
    claim = _claim_expression(expected, derivation.parameters)
    form = derivation.form()
    if claim is not None and form is not None:
        claim_free = {s.name for s in claim.free_symbols} & derivation.parameters
        # parameters the claim leaves out are at the activation's values; explicit params pin both sides
        pinned = {s: v for s, v in _parameter_values(derivation.act).items()
                  if derivation.explicit_params or s.name not in claim_free}
        if _proved_equal(claim.subs(pinned), form.subs(pinned)):
            return Verified("symbolic")

    if rtol is not None and not (isinstance(rtol, numbers.Real) and math.isfinite(rtol) and rtol > 0):
        raise GainDeriveError(f"rtol must be a finite number > 0; got {rtol!r}")
    digits = DIGITS if rtol is None else max(DIGITS, GUARD - math.floor(math.log10(rtol)))
    # numeric: the claim and the derivation side by side over q (and parameter points)
    if claim is not None:
        qs = list(SPREAD) if variance is None else [str(variance)]
        free = {s.name for s in claim.free_symbols} & derivation.parameters
        # a claim that keeps parameters symbolic must hold at other parameter values too
        points = derivation.other_points() if free and not derivation.explicit_params else [derivation.act]
        tolerance = mp.mpf(10) ** -(digits - GUARD) if rtol is None else mp.mpf(rtol)
    else:
        qs = ["1"] if variance is None else [str(variance)]
        if callable(expected) and variance is None:
            qs = list(SPREAD)
        points = [derivation.act]
        tolerance = mp.mpf(DEFAULT_RTOL_NUMBER if rtol is None else rtol)
    rows = []
    for act in points:
        for q in qs:
            rows.append(_compare_at(derivation, act, q, claim, expected, tolerance, digits))
    if not any(row.differs for row in rows):
        return Verified("numeric", digits if claim is not None else None, len(rows))
    raise DerivationError(_message(derivation, expected, claim, form, rows, tolerance, what))


def _compare_at(derivation: _Derivation, act, q: str, claim, expected: Any, tolerance: mp.mpf, digits: int) -> _Row:
    """One row of the comparison: the claim and the derivation at (act, q), and whether they differ."""
    __tracebackhide__ = True
    derived = derivation.value(q, act, digits)
    with mp.workdps(digits + 10):
        value, bar = mp.mpf(derived.value), mp.mpf(derived.error)
        if not _finite_real(value):
            return _Row(act, q, None, value, None, True, f"the derivation gives {mp.nstr(value, 5)} at q = {q}, "
                        "so no claim is verified there")
        if not mp.isfinite(bar):
            return _Row(act, q, None, value, None, True, f"the derivation's error bar is {bar} at q = {q}")
        if value != 0 and bar > tolerance * abs(value) and abs(value) > 2 * bar:
            raise ConvergenceError(f"the derivation reached relative {mp.nstr(bar / abs(value), 2)} at q = {q}, "
                                   f"short of the tolerance {mp.nstr(tolerance, 2)}; pass a larger rtol")
        if claim is not None:
            floor = max(bar, mp.mpf(10) ** -(digits + GUARD) * abs(value)) / 10
            tracked = _claim_value(claim.subs(_parameter_values(act)), q, digits, floor)
            claimed, claim_bar, reason = tracked.value, tracked.error, tracked.defect
            if reason:
                reason = f"the claim is not a finite real number at q = {q}: {reason}"
        elif callable(expected):
            claimed, reason = _callable_value(expected, q)
            claim_bar = mp.mpf(0)
        else:
            claimed, claim_bar, reason = _number(expected), mp.mpf(0), None
        if reason or not _finite_real(claimed):
            return _Row(act, q, claimed, value, None, True, reason or f"the claim is {claimed} at q = {q}")
        difference = abs(claimed - value)
        allowed = tolerance * abs(value) + bar + claim_bar
        error = difference / abs(value) if value != 0 else (mp.mpf(0) if difference == 0 else mp.inf)
        return _Row(act, q, claimed, value, error, difference > allowed)


def _message(derivation, expected, claim, form, rows, tolerance, what) -> str:
    name = derivation.act.name
    lines = [f"the claimed {what} of {name} differs from the derivation:",
             f"  claim      {claim if claim is not None else _describe(expected)}",
             f"  derived    {form if form is not None else '(no closed form; 30-digit quadrature below)'}",
             f"  {'q':>8}  {'params':<22} {'claim':>24}  {'derived':>24}  rel. error"]
    for row in rows:
        params = ", ".join(f"{k}={float(v):.4g}" for k, v in row.act.params.items())
        mark = "  <-- differs" if row.differs else ""
        claimed = "-" if row.claimed is None else mp.nstr(row.claimed, 16)
        error = "-" if row.error is None else mp.nstr(row.error, 3)
        lines.append(f"  {row.q:>8}  {params:<22} {claimed:>24}  {mp.nstr(row.derived, 16):>24}  {error}{mark}")
        if row.reason:
            lines.append(f"            ({row.reason})")
    lines.append(f"  tolerance: relative {mp.nstr(tolerance, 3)}, plus both sides' error bounds")
    return "\n".join(lines)


def _describe(expected: Any) -> str:
    return getattr(expected, "__name__", None) or repr(expected)


def assert_moment(activation, moment: str, expected: Any, *, variance: Any = None,
                  params: Mapping[str, Any] | None = None, rtol: float | None = None,
                  **parameters: Any) -> Verified:
    """Check a claimed Gaussian moment of ``activation``; raise :class:`DerivationError` if it is wrong.

    ``moment`` is mean, second_moment, derivative_second_moment, variance, or a formula in f, df and x
    (e.g. ``"df**4"``).  ``expected`` is a finite number (checked at ``variance``, default 1, to ``rtol``,
    default 1e-12), a callable of q, or a formula in q and the parameters (proved symbolically or checked at
    30 digits over several q and parameter values).  A NaN or infinite number is a :class:`GainDeriveError`;
    a callable or formula that is NaN, infinite or complex at some q is refuted there.

    The activation's parameters are keyword arguments (``alpha=2``) or the mapping ``params``; one given in
    both is a :class:`~gainderive.errors.DuplicateParameterError`.

    A failure inside pytest shows the calling line and the report only: this module's frames carry
    ``__tracebackhide__``.
    """
    __tracebackhide__ = True
    _validate(moment, expected)
    derivation = _Derivation(activation, moment, _parameters(params, parameters), call=_MOMENT_CALL)
    return _check(derivation, expected, variance, rtol, _label(moment))


def assert_gain(activation, expected: Any, *, mode: str = "fan_in", variance: Any = None,
                params: Mapping[str, Any] | None = None, rtol: float | None = None,
                **parameters: Any) -> Verified:
    """Check a claimed variance-preserving gain (std = gain / sqrt(fan)); see :func:`assert_moment`."""
    __tracebackhide__ = True
    if mode not in MODES:
        from .suggest import accepted, did_you_mean

        raise GainDeriveError(f"unknown mode {mode!r}{accepted(did_you_mean(mode, MODES), MODES)}")
    _validate("second_moment", expected)
    derivation = _Derivation(activation, "second_moment", _parameters(params, parameters), mode, _GAIN_CALL)
    return _check(derivation, expected, variance, rtol, f"gain_{mode}")


_MOMENT_CALL = Call("assert_moment(activation, moment, expected, *, variance=None, params=None, rtol=None, **params)",
                    ("variance", "rtol"))
_GAIN_CALL = Call("assert_gain(activation, expected, *, mode='fan_in', variance=None, params=None, rtol=None, "
                  "**params)", ("mode", "variance", "rtol"))


def _parameters(mapping: Mapping[str, Any] | None, keywords: Mapping[str, Any]) -> dict[str, Any]:
    """The activation's parameters from ``params=`` and keyword arguments; a name in both is refused."""
    __tracebackhide__ = True
    if mapping is not None and not isinstance(mapping, Mapping):
        raise GainDeriveError(f"params must be a mapping of parameter names to values; got {type(mapping).__name__}")
    both = sorted(set(mapping or {}) & set(keywords))
    if both:
        raise DuplicateParameterError(f"parameter {', '.join(both)} is given twice, in params= and as a keyword "
                                      "argument; give it once")
    return {**(mapping or {}), **keywords}


def _validate(moment: str, expected: Any) -> None:
    __tracebackhide__ = True
    import sympy as sp

    if not isinstance(moment, str) or not moment.strip():
        raise GainDeriveError(f"moment must be one of {', '.join(MOMENTS)} or a formula in f, df and x")
    _validate_moment(moment.strip())
    if isinstance(expected, bool) or not isinstance(expected, (numbers.Real, Decimal, str, sp.Basic, Callable)):
        raise GainDeriveError(f"expected must be a real number, a callable of q or a formula; "
                              f"got {type(expected).__name__}")
    if isinstance(expected, (numbers.Real, Decimal)):
        number = _number(expected)
        if not _finite_real(number):
            raise GainDeriveError(f"expected is {expected!r}; a claimed value must be a finite number (a NaN or "
                                  "infinite claim is never verified)")


#: The names a moment formula may use: the activation, its derivative and the pre-activation.
_MOMENT_NAMES = ("f", "df", "x")


def _validate_moment(moment: str) -> None:
    """A moment is one of MOMENTS or a formula in f, df and x; a near miss of either gets a did-you-mean."""
    __tracebackhide__ = True
    from .formula import parse_formula
    from .suggest import VARIABLE_NAMES, accepted, closest, did_you_mean

    if moment in MOMENTS:
        return
    listed = f"{', '.join(MOMENTS)}, or a formula in f, df and x such as df**4"
    if moment.isidentifier() and moment not in _MOMENT_NAMES:
        hint = did_you_mean(moment, [*MOMENTS, *_MOMENT_NAMES])
        raise GainDeriveError(f"unknown moment {moment!r}{accepted(hint, listed)}")
    extra = sorted({s.name for s in parse_formula(moment).free_symbols} - set(_MOMENT_NAMES))
    if extra:
        meant = ["x" if name in VARIABLE_NAMES else closest(name, _MOMENT_NAMES) for name in extra]
        hint = f"; did you mean {' and '.join(repr(m) for m in meant if m)}?" if any(meant) else ""
        names = "f, df (the derivative) and x (the pre-activation)"
        raise FormulaError(f"the moment {moment!r} uses {', '.join(extra)}{accepted(hint, names)}")
