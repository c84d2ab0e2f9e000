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
    """The expression, checked to be defined at its parameters; its conditionals are kept as they are.

    abs, max, min, clip, sign, Heaviside and where are read directly by :func:`breakpoints` and
    :func:`pieces`, one at a time: never folded into a single Piecewise, whose conditions multiply out
    (``abs`` nested k deep becomes 2^k branches with k-fold conjunctions, and sympy's folding of
    ``abs(abs(abs(abs(abs(x-16)-8)-4)-2)-1)`` did not finish).
    """
    if expression.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
        raise ParameterError(f"{name} is undefined at parameters {values}")
    return expression


@_analysis
def breakpoints(normal: sp.Expr) -> tuple[sp.Expr, ...]:
    """Sorted distinct real breakpoints: where a condition, or the argument of a kinked function, changes sign.

    Found from the inside out (:func:`cut_points`), within the budgets ``pieces`` and ``structure_seconds``;
    a candidate with the same expression on both sides is dropped.
    """
    from .budget import Budget

    budget = Budget("cannot analyse the formula's pieces", "structure_seconds")
    cuts = cut_points(normal, {}, budget)
    # a cut where the same expression holds on both sides is no breakpoint: the inner kinks of
    # min(max(x, -1), 1) clipped again to (-1/2, 1/2), or max(x, 0) + min(x, 0) = x
    exact_cuts = [c for c, _ in cuts]
    sides = [restrict(normal, point) for point in sample_points([v for _, v in cuts], exact_cuts)]
    return tuple(c for c, left, right in zip(exact_cuts, sides, sides[1:]) if left != right)


@_analysis
def pieces(normal: sp.Expr, cuts: tuple[sp.Expr, ...], piece_type) -> tuple:
    """On each open interval between cuts, the expression without conditionals and its derivative."""
    bounds = [-math.inf, *(float(c) for c in cuts), math.inf]
    out = []
    for lo, hi, point in zip(bounds, bounds[1:], sample_points([float(c) for c in cuts], cuts)):
        expr = restrict(normal, point)
        out.append(piece_type(lo, hi, expr, sp.diff(expr, X)))
    return tuple(out)


# -- piece analysis without Piecewise folding ---------------------------------------------------------------------
#: Functions whose value switches from one smooth expression to another where an argument changes sign.
_SELECTORS = (sp.Piecewise, sp.Abs, sp.Max, sp.Min, sp.sign, sp.Heaviside)


class NonlinearBreakpointError(ArithmeticError):
    """A breakpoint that depends on the parameters but is not linear in x (closed forms need it symbolic)."""


def cut_points(expr: sp.Expr, values, budget) -> list[tuple[sp.Expr, float]]:
    """[(exact breakpoint, its value)] sorted and distinct, for ``expr`` with parameters ``values``.

    From the inside out: a node's breakpoints are its children's, plus, on each interval between those, the
    real roots of its own switching function restricted to that interval (u for abs(u), sign(u) and
    Heaviside(u); a - b for max(a, b, ...) and min; lhs - rhs for every condition of a Piecewise).  So
    ``abs(abs(x - 16) - 8)`` costs two root findings on two intervals, not a Piecewise of conjunctions.

    With ``values`` empty the expression is numeric; otherwise its parameters stay symbolic in the
    breakpoints (which must then be linear in x, else :class:`NonlinearBreakpointError`), and every
    choice of branch is made at the parameter values.  More than ``pieces`` pieces, or the time budget
    running out, is a :class:`gainderive.budget.SymbolicBudgetError` naming the budget.
    """
    memo: dict[sp.Expr, list[tuple[sp.Expr, float]]] = {}

    def walk(e) -> list[tuple[sp.Expr, float]]:
        if not isinstance(e, sp.Basic) or not e.args or X not in e.free_symbols:
            return []
        if e in memo:
            return memo[e]
        budget.check("breakpoints")
        children, gaps = _switches(e)
        cuts: list[tuple[sp.Expr, float]] = []
        for child in children:
            cuts = _merge(cuts, walk(child))
        for gap in gaps:
            if X not in gap.free_symbols:
                continue
            found = []
            numbers = [v for _, v in cuts]
            for (lo, hi), point in zip(_intervals(numbers), sample_points(numbers, [c for c, _ in cuts])):
                budget.check("breakpoints")
                for root, value in _roots(restrict(gap, point, values), values, budget):
                    if lo < value < hi:
                        found.append((root, value))
            cuts = _merge(cuts, found)
            if len(cuts) + 1 > budget.limits.pieces:
                raise budget.refuse(f"it has more than {budget.limits.pieces:,} pieces (abs nested k deep has up "
                                    "to 2^k)", "pieces")
        memo[e] = cuts
        return cuts

    return walk(expr)


def _switches(e) -> tuple[list, list]:
    """(children whose own breakpoints count, functions whose sign changes switch e's branch)."""
    if isinstance(e, sp.Piecewise):
        rels = [rel for pair in e.args for rel in _relationals(pair.cond)]
        children = [pair.expr for pair in e.args] + [side for rel in rels for side in (rel.lhs, rel.rhs)]
        return children, [rel.lhs - rel.rhs for rel in rels]
    if isinstance(e, (sp.Abs, sp.sign, sp.Heaviside)):
        return [e.args[0]], [e.args[0]]
    if isinstance(e, (sp.Max, sp.Min)):
        args = list(e.args)
        return args, [a - b for i, a in enumerate(args) for b in args[i + 1:]]
    return [a for a in e.args if isinstance(a, sp.Basic)], []


def _intervals(numbers: list[float]) -> list[tuple[float, float]]:
    bounds = [-math.inf, *numbers, math.inf]
    return list(zip(bounds, bounds[1:]))


def sample_points(numbers: list[float], exact_cuts) -> list[sp.Expr]:
    """One exact rational point inside each open interval between the (sorted, distinct) cuts."""
    if not numbers:
        return [sp.S.Zero]
    points = [sp.Integer(math.floor(numbers[0])) - 1]
    for a, b, ea, eb in zip(numbers, numbers[1:], exact_cuts, exact_cuts[1:]):
        rational = getattr(ea, "is_Rational", False) and getattr(eb, "is_Rational", False)
        # the double midpoint is strictly inside: distinct cuts differ by far more than their rounding
        points.append((ea + eb) / 2 if rational else sp.Rational((a + b) / 2))
    points.append(sp.Integer(math.ceil(numbers[-1])) + 1)
    return points


def _merge(cuts: list[tuple[sp.Expr, float]], more: list[tuple[sp.Expr, float]]) -> list[tuple[sp.Expr, float]]:
    """The union, sorted by value, points within 1e-14 relative of each other counted once."""
    unique: list[tuple[sp.Expr, float]] = []
    for exact_cut, value in sorted([*cuts, *more], key=lambda c: c[1]):
        if not unique or value - unique[-1][1] > 1e-14 * (1 + abs(value)):
            unique.append((exact_cut, value))
    return unique


def _roots(gap: sp.Expr, values, budget) -> list[tuple[sp.Expr, float]]:
    """Real roots of a switching function that is smooth (restricted to one interval), with their values."""
    from .budget import polynomial_degree, tree_size

    degree = polynomial_degree(gap, X)
    if math.isinf(degree):
        raise FormulaError(
            f"where {gap} changes sign is a breakpoint, but it is not polynomial in x; conditions and the "
            "arguments of abs, max, min, sign and Heaviside must be polynomials in x, e.g. x > 1 or abs(x**2 - 4)"
        )
    if degree > budget.limits.degree:
        raise budget.refuse(f"a breakpoint condition of degree up to {degree:.0f} in x", "degree")
    poly = sp.Poly(budget.expand(gap, "a breakpoint condition"), X)
    if poly.degree() < 1:
        return []
    if values:  # parameters kept symbolic: the breakpoint must be linear in x to stay an expression in them
        if poly.degree() != 1:
            raise NonlinearBreakpointError("a breakpoint that is not linear in x")
        a, b = poly.all_coeffs()
        root = -b / a
        if tree_size(root, 60) < 60:  # small: a readable form (the closed forms show it) at little cost
            root = sp.simplify(root)
        return [(root, float(root.subs(values)))]
    if any(not c.is_number for c in poly.all_coeffs()):
        raise FormulaError(f"where {gap} changes sign is a breakpoint, but its coefficients are not numbers")
    if poly.degree() == 1:
        a, b = poly.all_coeffs()
        return [(-b / a, float(-b / a))]
    return [(r, float(r)) for r in poly.real_roots()]


def restrict(expr: sp.Expr, point: sp.Expr, values=None) -> sp.Expr:
    """``expr`` with every conditional replaced by the branch that holds at x = point (parameters at ``values``).

    Piecewise takes its first branch whose condition holds; abs(u) is u or -u, sign(u) and Heaviside(u)
    constants, max and min the argument that is largest or smallest at the point.  ``point`` must not be a
    breakpoint (:func:`sample_points`), so every choice holds on the whole interval around it.
    """
    values = values or {}
    memo: dict[sp.Expr, sp.Expr] = {}

    def walk(e):
        if not isinstance(e, sp.Basic) or not e.args or not e.has(*_SELECTORS):
            return e
        if e in memo:
            return memo[e]
        if isinstance(e, sp.Piecewise):
            out = None
            for pair in e.args:
                holds = pair.cond.subs(values).subs(X, point)
                if holds is sp.true or holds == sp.true:
                    out = walk(pair.expr)
                    break
                if holds is not sp.false and holds != sp.false:
                    raise FormulaError(f"cannot decide condition {pair.cond} at x = {point}")
            if out is None:
                raise FormulaError(f"where/Piecewise leaves f undefined at x = {point}")
        elif isinstance(e, (sp.Abs, sp.sign, sp.Heaviside)):
            u = walk(e.args[0])
            s = _sign_at(u, point, values)
            if isinstance(e, sp.Abs):
                out = -u if s < 0 else u
            elif isinstance(e, sp.sign):
                out = sp.Integer(s)
            else:
                out = sp.Heaviside(sp.Integer(s), *e.args[1:])
        elif isinstance(e, (sp.Max, sp.Min)):
            args = [walk(a) for a in e.args]
            better = 1 if isinstance(e, sp.Max) else -1
            best = args[0]
            for a in args[1:]:
                if _sign_at(a - best, point, values) * better > 0:
                    best = a
            out = best
        else:
            out = e.func(*(walk(a) for a in e.args))
        memo[e] = out
        return out

    return walk(expr)


def _sign_at(u: sp.Expr, point: sp.Expr, values) -> int:
    """The sign (-1, 0, 1) of u at x = point, exactly where sympy decides it, else from 50 digits."""
    v = u.subs(values).subs(X, point) if u.free_symbols else u
    if v.is_zero:
        return 0
    if v.is_positive:
        return 1
    if v.is_negative:
        return -1
    n = sp.N(v, 50)
    if not n.is_real:
        raise FormulaError(f"{u} is not real at x = {point}; conditions need real values")
    return 0 if abs(n) < sp.Float("1e-45") * (1 + abs(n)) else (1 if n > 0 else -1)


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
