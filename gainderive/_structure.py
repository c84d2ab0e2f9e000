"""Piecewise structure of an activation: breakpoints, smooth pieces, jumps (the sympy side of the model).

:class:`gainderive.activation.Activation` is a light record; these functions do
the symbolic work behind its properties, on first use.
"""

from __future__ import annotations

import functools
import math

import sympy as sp

from .errors import FormulaError, GainDeriveError, ParameterError
from .formula import X, parameter_symbol


def _analysis(fn):
    """sympy may reject a formula the grammar allows (e.g. log(x) > 0 at x = 0): say so in one line."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GainDeriveError:
            raise
        except (TypeError, ValueError, ArithmeticError, NotImplementedError, RecursionError, AttributeError) as exc:
            detail = str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__
            raise FormulaError(f"cannot analyse the formula's pieces ({detail}); conditions must be polynomial "
                               "in x and the formula real-valued") from None

    return wrapper


@_analysis
def substitute(expression: sp.Expr, params) -> sp.Expr:
    """The expression with parameter values (sympy numbers or exact decimal strings) substituted."""
    return expression.subs({parameter_symbol(k): exact(v) for k, v in params.items()})


def exact(value) -> sp.Expr:
    """A parameter value as an exact sympy number (registry defaults are decimal strings)."""
    return sp.Rational(value) if isinstance(value, str) else value


@_analysis
def normalized(expression: sp.Expr, name: str, values) -> sp.Expr:
    """Every max/min/abs/clip/sign/Heaviside rewritten as Piecewise."""
    expr = expression.rewrite(sp.Piecewise)
    if expr.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
        raise ParameterError(f"{name} is undefined at parameters {values}")
    return expr


@_analysis
def breakpoints(normal: sp.Expr) -> tuple[sp.Expr, ...]:
    """Sorted distinct real roots of every condition of every Piecewise."""
    roots: list[sp.Expr] = []
    for pw in normal.atoms(sp.Piecewise):
        for cond in (pair.cond for pair in pw.args):
            for rel in _relationals(cond):
                roots.extend(_real_roots(rel))
    unique: list[sp.Expr] = []
    for r in sorted(roots, key=lambda r: float(r)):
        if not unique or float(r) - float(unique[-1]) > 1e-14 * (1 + abs(float(r))):
            unique.append(r)
    return tuple(unique)


@_analysis
def pieces(normal: sp.Expr, cuts: tuple[sp.Expr, ...], piece_type) -> tuple:
    """On each open interval between cuts, the expression without conditionals and its derivative."""
    if not cuts:
        samples = [sp.S.Zero]
    else:
        samples = [cuts[0] - 1, *((a + b) / 2 for a, b in zip(cuts, cuts[1:])), cuts[-1] + 1]
    bounds = [-math.inf, *(float(c) for c in cuts), math.inf]
    out = []
    for lo, hi, point in zip(bounds, bounds[1:], samples):
        expr = _restrict(normal, sp.nsimplify(point) if not point.is_Rational else point)
        out.append(piece_type(lo, hi, expr, sp.diff(expr, X)))
    return tuple(out)


@_analysis
def jumps(cuts: tuple[sp.Expr, ...], pieces_: tuple, jump_type) -> tuple:
    """Breakpoints where the pieces on either side disagree: f jumps there."""
    out = []
    for b, left, right in zip(cuts, pieces_, pieces_[1:]):
        try:
            lv = complex(sp.N(left.expression.subs(X, b), 30))
            rv = complex(sp.N(right.expression.subs(X, b), 30))
        except (TypeError, ValueError):
            continue  # a singular endpoint is a matter for the integrators
        if not (math.isfinite(abs(lv)) and math.isfinite(abs(rv))):
            continue
        size = (rv - lv).real
        if abs(size) > 1e-20 * (1 + abs(lv) + abs(rv)):
            out.append(jump_type(float(b), size))
    return tuple(out)


@_analysis
def derivative(pieces_: tuple, cuts: tuple[sp.Expr, ...]) -> sp.Expr:
    """f' on the whole line (almost everywhere), joined from the pieces' derivatives."""
    if len(pieces_) == 1:
        return pieces_[0].derivative
    return _join([p.derivative for p in pieces_], cuts)


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
