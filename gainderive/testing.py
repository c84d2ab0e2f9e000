"""Check hand derivations of Gaussian moments and gains, in your own test suite.

>>> from gainderive.testing import assert_moment, assert_gain
>>> assert_moment("relu", "second_moment", "q/2").how          # He et al. 2015
'symbolic'
>>> assert_gain("prelu", "sqrt(2/(1 + a**2))").how             # for every a, not just the default
'symbolic'

A claim (``expected``) may be a number, a callable of q, or a formula in ``q``
and the activation's parameters (a string, parsed by the same whitelist as
activations, or a sympy expression).  A formula is first compared
symbolically with the derived closed form; failing that, numerically at 30
digits with the high-precision backend over a spread of q (and of parameter
values where the formula leaves parameters free).  A refuted claim raises
:class:`DerivationError` (an AssertionError, so pytest reports it) whose
message shows the claim and the derivation side by side, the q where they
differ and the relative error.  A verified claim returns a :class:`Verified`
record and prints nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import mpmath as mp

from .errors import FormulaError, GainDeriveError

__all__ = ["DerivationError", "Verified", "assert_gain", "assert_moment"]

MOMENTS = ("mean", "second_moment", "derivative_second_moment", "variance")
MODES = ("fan_in", "fan_out", "variance")
SPREAD = ("1/100", "3/10", "1", "3", "30")  # q values for numeric checks (exact decimals)
DIGITS = 30
DEFAULT_RTOL_NUMBER = 1e-12  # a float claim: what float64 results can certify


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


def _claim_expression(expected: Any, free: set[str]):
    """A formula claim as a sympy expression in Q and parameter symbols, or None if it is not a formula."""
    import sympy as sp

    from .closed_form import Q
    from .formula import parameter_symbol, parse_formula

    if isinstance(expected, str):
        expr = parse_formula(expected)
    elif isinstance(expected, sp.Basic):
        expr = expected
    else:
        return None
    names = {s.name for s in expr.free_symbols}
    unknown = names - free - {"q"}
    if unknown:
        raise FormulaError(f"the claim uses {', '.join(sorted(unknown))}; it may use q and the activation's "
                           f"parameters ({', '.join(sorted(free)) or 'none'})")
    return expr.subs({sp.Symbol("q"): Q, parameter_symbol("q"): Q})


class _Derivation:
    """The derived side of a claim: a closed form if there is one, and 30-digit values at any q."""

    def __init__(self, activation, moment: str, params: Mapping[str, Any] | None, mode: str | None = None):
        from .registry import activation as make_activation

        self.act = make_activation(activation, **dict(params or {}))
        self.moment, self.mode = moment, mode
        self.explicit_params = bool(params)

    @property
    def parameters(self) -> set[str]:
        return set(self.act.params)

    def form(self):
        """The verified closed form (of the gain, when checking a gain), or None."""
        import sympy as sp

        from .closed_form import Q, closed_forms

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

    def value(self, q: str, act=None) -> mp.mpf:
        """The derived moment (or gain) at q, at DIGITS digits, by the high-precision backend."""
        from .gains import gains
        from .moments import expectation, moments

        act = act or self.act
        with mp.workdps(DIGITS + 10):
            if self.moment in MOMENTS:
                m = moments(act, q, "high_precision", digits=DIGITS)
                if self.mode is None:
                    return getattr(m, self.moment).value
                return getattr(gains(m), self.mode).value
            return expectation(act, self.moment, q, "high_precision", digits=DIGITS).value

    def other_points(self):
        """The activation at a second parameter point, to check claims that leave parameters free."""
        from .gaussian_rules import _perturbed

        return _perturbed(self.act)


def _check(derivation: _Derivation, expected: Any, variance: Any, rtol: float | None, what: str) -> Verified:
    import sympy as sp

    from .closed_form import Q
    from .formula import parameter_symbol

    claim = _claim_expression(expected, derivation.parameters)
    form = derivation.form()
    if claim is not None and form is not None:
        try:
            difference = sp.simplify((claim - form).rewrite(sp.erfc))
        except (TypeError, ValueError, ArithmeticError, RecursionError):
            difference = None
        if difference == 0:
            return Verified("symbolic")

    # numeric: the claim and the derivation side by side over q (and parameter points)
    if claim is not None:
        qs = list(SPREAD) if variance is None else [str(variance)]
        free = {s.name for s in claim.free_symbols} & derivation.parameters
        # a claim that keeps parameters symbolic must hold at other parameter values too
        points = derivation.other_points() if free and not derivation.explicit_params else [derivation.act]
        tolerance = mp.mpf(10) ** -(DIGITS - 5) if rtol is None else mp.mpf(rtol)
    else:
        qs = ["1"] if variance is None else [str(variance)]
        if callable(expected) and variance is None:
            qs = list(SPREAD)
        points = [derivation.act]
        tolerance = mp.mpf(DEFAULT_RTOL_NUMBER if rtol is None else rtol)
    rows, worst = [], mp.mpf(0)
    for act in points:
        values = {parameter_symbol(k): sp.Rational(str(v)) if isinstance(v, str) else v for k, v in act.params.items()}
        for q in qs:
            derived = derivation.value(q, act)
            with mp.workdps(DIGITS + 10):
                if claim is not None:
                    from .evaluate import Program

                    claimed = Program([claim.subs(values)], [Q], backend="mpmath", dps=DIGITS + 10)(mp.mpf(q))[0]
                elif callable(expected):
                    claimed = mp.mpf(expected(float(sp.Rational(q))))
                else:
                    claimed = mp.mpf(expected)
                scale = max(abs(derived), mp.mpf(10) ** -(DIGITS + 5))
                error = abs(claimed - derived) / scale
            worst = max(worst, error)
            rows.append((act, q, claimed, derived, error))
    if worst <= tolerance:
        return Verified("numeric", DIGITS if claim is not None else None, len(rows))
    raise DerivationError(_message(derivation, expected, claim, form, rows, tolerance, what))


def _message(derivation, expected, claim, form, rows, tolerance, what) -> str:
    name = derivation.act.name
    lines = [f"{what} of {name} is refuted:",
             f"  claim      {claim if claim is not None else _describe(expected)}",
             f"  derived    {form if form is not None else '(no closed form; 30-digit quadrature below)'}",
             f"  {'q':>8}  {'params':<22} {'claim':>24}  {'derived':>24}  rel. error"]
    for act, q, claimed, derived, error in rows:
        params = ", ".join(f"{k}={float(v):.4g}" for k, v in act.params.items())
        mark = "  <-- differs" if error > tolerance else ""
        lines.append(f"  {q:>8}  {params:<22} {mp.nstr(claimed, 16):>24}  {mp.nstr(derived, 16):>24}  "
                     f"{mp.nstr(error, 3)}{mark}")
    lines.append(f"  tolerance: relative {mp.nstr(tolerance, 3)}")
    return "\n".join(lines)


def _describe(expected: Any) -> str:
    return getattr(expected, "__name__", None) or repr(expected)


def assert_moment(activation, moment: str, expected: Any, *, variance: Any = None,
                  params: Mapping[str, Any] | None = None, rtol: float | None = None) -> Verified:
    """Check a claimed Gaussian moment of ``activation``; raise :class:`DerivationError` if it is wrong.

    ``moment`` is mean, second_moment, derivative_second_moment, variance, or a formula in f, df and x
    (e.g. ``"df**4"``).  ``expected`` is a number (checked at ``variance``, default 1, to ``rtol``, default
    1e-12), a callable of q, or a formula in q and the parameters (proved symbolically or checked at 30
    digits over several q and parameter values).
    """
    _validate(moment, expected)
    return _check(_Derivation(activation, moment, params), expected, variance, rtol, _label(moment))


def assert_gain(activation, expected: Any, *, mode: str = "fan_in", variance: Any = None,
                params: Mapping[str, Any] | None = None, rtol: float | None = None) -> Verified:
    """Check a claimed variance-preserving gain (std = gain / sqrt(fan)); see :func:`assert_moment`."""
    if mode not in MODES:
        raise GainDeriveError(f"unknown mode {mode!r}; accepted: {', '.join(MODES)}")
    _validate("second_moment", expected)
    return _check(_Derivation(activation, "second_moment", params, mode), expected, variance, rtol,
                  f"gain_{mode}")


def _validate(moment: str, expected: Any) -> None:
    import numbers

    import sympy as sp

    if not isinstance(moment, str) or not moment.strip():
        raise GainDeriveError(f"moment must be one of {', '.join(MOMENTS)} or a formula in f, df and x")
    if isinstance(expected, bool) or not isinstance(expected, (numbers.Real, str, sp.Basic, Callable)):
        raise GainDeriveError(f"expected must be a number, a callable of q or a formula; got {type(expected).__name__}")
