"""The activation model: a declarative record and its piecewise structure.

An :class:`Activation` is a formula in ``x`` (the whitelist language of
:mod:`gainderive.formula`), parameters with values, and where it comes from.
From the formula alone it derives what every backend needs:

* the breakpoints: the real roots of every condition of ``where``/``Piecewise``
  and of the kinks of ``max``, ``min``, ``abs``, ``clip``, ``sign`` and
  ``Heaviside``;
* the pieces: on each open interval between breakpoints, one smooth expression
  (no conditionals left) and its derivative;
* the jumps: breakpoints where f is discontinuous, so f' has a Dirac mass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType

import sympy as sp

from .errors import FormulaError, ParameterError
from .formula import X, parameter_symbol

__all__ = ["Activation", "Jump", "Piece"]


@dataclass(frozen=True)
class Piece:
    """f restricted to the open interval (lower, upper) of the pre-activation z."""

    lower: float
    upper: float
    expression: sp.Expr
    derivative: sp.Expr


@dataclass(frozen=True)
class Jump:
    """A discontinuity of f at z = ``at``: f(at+) - f(at-) = ``size``."""

    at: float
    size: float


@dataclass(frozen=True, eq=False)
class Activation:
    """An activation function f(x) with bound parameters.

    Parameters
    ----------
    name:
        Registry name, or the formula itself for user formulas.
    formula:
        Expression in ``x`` and the parameter names (see ``docs/formulas.md``).
    params:
        Parameter values, exact sympy numbers.
    reference:
        The paper the activation comes from.
    constraints:
        Conditions on the parameters in formula syntax, e.g. ``"beta > 0"``.
    """

    name: str
    formula: str
    params: Mapping[str, sp.Expr] = field(default_factory=dict)
    reference: str = ""
    description: str = ""
    aliases: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    # -- parameters ------------------------------------------------------
    @property
    def parameter_values(self) -> dict[str, float]:
        """Parameter values as floats (for display and JSON)."""
        return {k: float(v) for k, v in self.params.items()}

    @cached_property
    def symbolic_expression(self) -> sp.Expr:
        """f(x) with parameters as symbols."""
        from .registry import parse_activation_formula  # registry names are callable inside formulas

        return parse_activation_formula(self.formula).expression

    @cached_property
    def expression(self) -> sp.Expr:
        """f(x) with the parameter values substituted (exact)."""
        return self.symbolic_expression.subs({parameter_symbol(k): v for k, v in self.params.items()})

    @cached_property
    def derivative(self) -> sp.Expr:
        """f'(x) on the whole line, defined almost everywhere (piece by piece)."""
        pieces = self.pieces
        if len(pieces) == 1:
            return pieces[0].derivative
        return _join([p.derivative for p in pieces], self.exact_breakpoints)

    # -- structure -------------------------------------------------------
    @cached_property
    def _normalized(self) -> sp.Expr:
        expr = self.expression.rewrite(sp.Piecewise)
        if expr.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
            raise ParameterError(f"{self.name} is undefined at parameters {self.parameter_values}")
        return expr

    @cached_property
    def exact_breakpoints(self) -> tuple[sp.Expr, ...]:
        """Sorted distinct real breakpoints, as exact sympy numbers."""
        roots: list[sp.Expr] = []
        for pw in self._normalized.atoms(sp.Piecewise):
            for cond in (pair.cond for pair in pw.args):
                for rel in _relationals(cond):
                    roots.extend(_real_roots(rel))
        unique: list[sp.Expr] = []
        for r in sorted(roots, key=lambda r: float(r)):
            if not unique or float(r) - float(unique[-1]) > 1e-14 * (1 + abs(float(r))):
                unique.append(r)
        return tuple(unique)

    @property
    def breakpoints(self) -> tuple[float, ...]:
        """Sorted breakpoints of f (kinks and jumps) as floats."""
        return tuple(float(b) for b in self.exact_breakpoints)

    @cached_property
    def pieces(self) -> tuple[Piece, ...]:
        """The smooth pieces of f between consecutive breakpoints."""
        cuts = self.exact_breakpoints
        if not cuts:
            samples = [sp.S.Zero]
        else:
            samples = [cuts[0] - 1, *((a + b) / 2 for a, b in zip(cuts, cuts[1:])), cuts[-1] + 1]
        bounds = [-math.inf, *(float(c) for c in cuts), math.inf]
        pieces = []
        for lo, hi, point in zip(bounds, bounds[1:], samples):
            expr = _restrict(self._normalized, sp.nsimplify(point) if not point.is_Rational else point)
            pieces.append(Piece(lo, hi, expr, sp.diff(expr, X)))
        return tuple(pieces)

    @cached_property
    def jumps(self) -> tuple[Jump, ...]:
        """Breakpoints where f is discontinuous (f' has a Dirac mass there)."""
        jumps = []
        for b, left, right in zip(self.exact_breakpoints, self.pieces, self.pieces[1:]):
            try:
                lv = complex(sp.N(left.expression.subs(X, b), 30))
                rv = complex(sp.N(right.expression.subs(X, b), 30))
            except (TypeError, ValueError):
                continue  # a singular endpoint is a matter for the integrators
            if not (math.isfinite(abs(lv)) and math.isfinite(abs(rv))):
                continue
            size = (rv - lv).real
            if abs(size) > 1e-20 * (1 + abs(lv) + abs(rv)):
                jumps.append(Jump(float(b), size))
        return tuple(jumps)

    def describe_jumps(self) -> str:
        """One phrase naming each jump, for error messages."""
        return ", ".join(f"by {j.size:.6g} at z = {j.at:.6g}" for j in self.jumps)


def _join(exprs: list[sp.Expr], cuts: tuple[sp.Expr, ...]) -> sp.Expr:
    """The whole-line Piecewise that is exprs[i] on (cuts[i-1], cuts[i])."""
    pairs = [(e, X < c) for e, c in zip(exprs, cuts)]
    return sp.Piecewise(*pairs, (exprs[-1], True))


def _relationals(cond) -> list[sp.core.relational.Relational]:
    if cond is sp.true or cond is sp.false:
        return []
    if isinstance(cond, sp.core.relational.Relational):
        return [cond]
    return [r for arg in cond.args for r in _relationals(arg)]


def _real_roots(rel) -> list[sp.Expr]:
    gap = sp.expand(rel.lhs - rel.rhs)
    if not gap.has(X):
        return []
    try:
        poly = sp.Poly(gap, X)
    except sp.PolynomialError:
        poly = None
    if poly is None or any(not c.is_number for c in poly.all_coeffs()):
        raise FormulaError(
            f"condition {rel} is not polynomial in x; conditions must compare polynomials in x, e.g. x > 1 or x**2 < 4"
        )
    if poly.degree() == 1:
        a, b = poly.all_coeffs()
        return [-b / a]
    return [r for r in poly.real_roots()]


def _restrict(expr: sp.Expr, point: sp.Expr) -> sp.Expr:
    """Replace every Piecewise by the branch that holds at x = point."""
    if not expr.args or not expr.has(sp.Piecewise):
        return expr
    if isinstance(expr, sp.Piecewise):
        for pair in expr.args:
            holds = pair.cond.subs(X, point)
            if holds is sp.true or holds == sp.true:
                return _restrict(pair.expr, point)
            if holds is not sp.false and holds != sp.false:
                raise FormulaError(f"cannot decide condition {pair.cond} at x = {point}")
        raise FormulaError(f"where/Piecewise leaves f undefined at x = {point}")
    return expr.func(*(_restrict(a, point) for a in expr.args))
