"""Closed forms of the Gaussian moments: what one is, how it is evaluated, where it comes from.

A :class:`ClosedForm` is a moment as an expression in q and the activation's
parameters.  They are derived by :mod:`gainderive.gaussian_rules` (rule-based
Gaussian integrals, then verified against quadrature); for the registry at its
default parameters they are also stored in the registry cache, so that they
can be shown and evaluated without importing sympy.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import sympy as sp

    from .evaluate import Program

__all__ = ["ClosedForm", "SmallQSeries", "Verdict", "evaluate", "evaluate_many", "evaluate_series"]


def __getattr__(name: str) -> Any:
    if name == "Q":  # the symbol q of every closed form (sympy, so created on first use)
        import sympy as sp

        globals()["Q"] = sp.Symbol("q", positive=True)
        return globals()["Q"]
    raise AttributeError(name)


@dataclass(frozen=True, eq=False)
class ClosedForm:
    """A moment as an expression in q and the activation's parameters.

    ``text`` is a string sympy parses (Phi written with erfc); ``latex`` its LaTeX;
    ``expression`` the sympy expression (parsed from ``text`` by the whitelist parser
    when the form came from the cache).
    """

    moment: str
    text: str
    latex: str

    @cached_property
    def expression(self) -> sp.Expr:
        from .formula import parameter_symbol, parse_formula

        return parse_formula(self.text).subs(parameter_symbol("q"), __getattr__("Q"))

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Verdict:
    """What became of a derived closed form.

    ``status`` is ``"verified"`` (agrees with quadrature), ``"preferred"`` (quadrature disagreed, high precision
    sided with the form, so the form replaces quadrature), ``"rejected"`` (high precision sided against the form,
    or could not settle it; ``reason`` says which), ``"skipped"`` (the derivation was stopped by a symbolic budget,
    :mod:`gainderive.budget`; ``reason`` names the budget, and quadrature answers) or ``"none"`` (the rules
    derived no form).
    """

    form: ClosedForm | None
    status: str
    reason: str = ""


def evaluate(program: Program, q: Any, *, rescue: bool = True) -> tuple[Any, Any]:
    """(value, error bound) of a closed form at q, from its numpy program (the stable rewrite, in one piece).

    The bound is a running rounding-error bound (:meth:`~gainderive.evaluate.Program.bounded`, Higham 2002,
    sec. 3.3): each operation's own rounding -- half an ulp for +, *, /, sqrt, 4 ulp for library functions, more
    where a function squares its argument inside -- plus its arguments' errors times its condition, so that
    rounding amplified by exp(u), by asin near 1 or by cancellation in a sum is counted.  Against 40-digit
    references it holds from q = 1e-8 to 1e8 and is 2-25 times the worst actual error at ordinary q
    (tests/test_closed_form_evaluation.py).

    A Python float (or 0-d array, or numpy scalar) q takes the scalar path (``math``, a few microseconds) and
    returns numpy float64 scalars; an array q returns arrays of its shape.  ``rescue=False`` leaves a value that
    is not finite in double precision so (bar inf), instead of pinning it in interval arithmetic (~1 ms a point).
    """
    if type(q) is float or isinstance(q, np.floating) or (isinstance(q, np.ndarray) and q.ndim == 0):
        found = program.bounded_scalar(float(q))
        if found is not None:
            return np.float64(found[0][0]), np.float64(found[1][0])
    values, bounds = program.bounded(np.asarray(q, dtype=float), rescue=rescue)
    return values[0], bounds[0]


@functools.lru_cache(maxsize=256)
def _fused(programs: tuple[Program, ...]) -> Program:
    from .evaluate import Program

    return Program.fuse(programs)


def evaluate_many(programs: Sequence[Program], q: Any) -> list[tuple[Any, Any]]:
    """[(value, error bound)] of several closed forms at the same q, as :func:`evaluate` gives each.

    Their programs are fused once (cached), so a subexpression they share -- e^{q/2} Phi(-sqrt q) in ELU's mean,
    second moment and variance -- is computed once.
    """
    fused = _fused(tuple(programs))
    if type(q) is float or isinstance(q, np.floating) or (isinstance(q, np.ndarray) and q.ndim == 0):
        found = fused.bounded_scalar(float(q))
        if found is not None:
            return [(np.float64(v), np.float64(e)) for v, e in zip(*found)]
    values, bounds = fused.bounded(np.asarray(q, dtype=float))
    return list(zip(values, bounds))


_UNIT_ROUNDOFF = 2.0**-53
_SMALLEST_SUBNORMAL = 2.0**-1074


class SmallQSeries(NamedTuple):
    r"""A verified closed form's Taylor polynomial at q = 0, and where it answers instead of the form.

    The forms are analytic in x = sqrt(q) at 0 (erfcx(x) = sum_k (-x)^k / Gamma(k/2 + 1); exp, sqrt(1 + c q),
    asin likewise), so the moment is p(x) = sum_{k <= n} a_k x^k plus a remainder, with x = q when only even
    powers of sqrt(q) occur (``in_q``) and x = sqrt(q) otherwise.  The coefficients were derived exactly
    (:func:`gainderive.verify.small_q_series`), so the terms that cancel in the form (ELU's mean, q/4 from terms
    of size sqrt(q)) cancel exactly in them, and each was rounded once to float64.  For q <= ``q_max`` the
    remainder is at most ``tail`` * x^(n+1) (bounded at derivation from the next 8..40 terms and a geometric tail,
    then checked against the form at 40+ digits).
    """

    coefficients: tuple[float, ...]
    in_q: bool
    q_max: float
    tail: float

    def to_data(self) -> dict[str, Any]:
        return {"coefficients": [float(a) for a in self.coefficients], "in_q": bool(self.in_q),
                "q_max": float(self.q_max), "tail": float(self.tail)}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> SmallQSeries:
        coefficients = tuple(float(a) for a in data["coefficients"])
        q_max, tail = float(data["q_max"]), float(data["tail"])
        if not coefficients or not (q_max >= 0 and tail >= 0):
            raise ValueError("a small-q series needs coefficients, q_max >= 0 and tail >= 0")
        return cls(coefficients, bool(data["in_q"]), q_max, tail)


def series_magnitude(coefficients: Sequence[float], in_q: bool, q_max: Any) -> tuple[int, Any]:
    """(j, K) with sum_k |a_k| x^k <= K x^j for 0 <= x <= x_max = sqrt(q_max) (or q_max): j is the lowest power
    with a_j != 0 and K = sum_k |a_k| x_max^(k-j), since x^(k-j) <= x_max^(k-j).  ``q_max`` may be an array."""
    j = next((k for k, a in enumerate(coefficients) if a != 0), 0)
    x_max = np.asarray(q_max, dtype=float) if in_q else np.sqrt(np.asarray(q_max, dtype=float))
    magnitude = np.zeros(x_max.shape)
    for a in reversed(coefficients[j:]):
        magnitude = magnitude * x_max + abs(a)
    return j, magnitude * (1 + 1e-12)  # the rounding of this sum


@functools.lru_cache(maxsize=256)
def _series_constants(series: SmallQSeries) -> tuple[int, float, int, float, float]:
    """(j, relative * K, n + 1, tail, floor) of :func:`evaluate_series`' bar, computed once per series."""
    n = len(series.coefficients) - 1
    j, magnitude = series_magnitude(series.coefficients, series.in_q, series.q_max)
    return j, _series_relative(n) * float(magnitude), n + 1, series.tail, (2 * n + 2) * _SMALLEST_SUBNORMAL


def _series_relative(n: int) -> float:
    return (3 * n + 3) * 1.03 * _UNIT_ROUNDOFF


def _power(x: np.ndarray, k: int) -> np.ndarray:
    """x^k by repeated squaring (a few multiplications, against ~60 ns a number for numpy's pow)."""
    out = base = None
    while k:
        if k & 1:
            if out is None:
                out = base.copy() if base is not None else x.copy()
            else:
                out *= x if base is None else base
        k >>= 1
        if k:
            base = x * x if base is None else np.multiply(base, base, out=base)
    return np.ones_like(x) if out is None else out


def evaluate_series(series: SmallQSeries, q: Any, x: Any = None) -> tuple[Any, Any]:
    r"""(value, error bound) of a small-q series at q <= series.q_max: Horner's rule in x = q or sqrt(q).

    The bound adds (Higham 2002, sec. 5.1, with u = 2^-53 and n the degree): Horner's rounding, gamma_{2n}
    sum |a_k| x^k; each coefficient's own rounding to float64, u sum |a_k| x^k; the rounding of x = sqrt(q),
    which moves a_k x^k by at most k u |a_k| x^k; these together at most (3n + 3) u sum |a_k| x^k, with a 3%
    margin for gamma's denominator and the rounding of the bound itself, and sum |a_k| x^k <= K x^j
    (:func:`series_magnitude`); the truncation, tail * x^(n+1); and (2n + 2) times the smallest subnormal, for
    rounding below the normal range.  A Python float q returns Python floats; an array q returns arrays (``x``:
    sqrt(q) if the caller has it already).
    """
    coefficients = series.coefficients
    j, scaled, top, tail, floor = _series_constants(series)
    if type(q) is float:
        x = q if series.in_q else math.sqrt(q)
        value = 0.0
        for a in reversed(coefficients):
            value = value * x + a
        return value, scaled * x**j + tail * x**top + floor
    if x is None:
        x = np.asarray(q, dtype=float)
        if not series.in_q:
            x = np.sqrt(x)
    value = np.full(x.shape, coefficients[-1])
    for a in reversed(coefficients[:-1]):
        value *= x
        value += a
    error = _power(x, top)
    error *= tail
    if j:
        error += scaled * _power(x, j)
    else:
        error += scaled
    error += floor
    return value, error
