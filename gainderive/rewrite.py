r"""Stable forms of the numerically unstable patterns people type.

A formula is evaluated in double precision at pre-activations up to ~39
standard deviations, |z| ~ 1200 at q = 1000, where ``exp(z)`` overflows
(z > 709.78).  Typed as ``log(1 + exp(x))``, softplus overflows at x = 710
although its value is 710; ``exp(x)/(1 + exp(x))`` is inf/inf = NaN although
it is 1.  :func:`stable` rewrites such subexpressions into the functions of
:mod:`gainderive.functions` and ``tanh``, which are evaluated without overflow
and whose derivatives (``softplus' = sigmoid``, ``sigmoid' = sigmoid (1 -
sigmoid)``, ``tanh' = 1 - tanh^2``) are stable too.  Every rewrite is an
identity for real arguments (the rule checks that its exponents are real
and its coefficients positive where the identity needs it):

* log-sum-exp.  :math:`\log\sum_i c_i e^{a_i} = p + \operatorname{softplus}(\log\sum_{i\ne k} c_i e^{a_i}/e^{p})`,
  :math:`p = a_k + \log c_k`, recursively; with two terms
  :math:`\log(e^a + e^b) = b + \operatorname{softplus}(a - b)`, and
  ``log(1 + exp(u))`` (also typed ``log1p(exp(u))``) is ``softplus(u)``.
  ``log(sigmoid(u)) = -softplus(-u)`` and ``log(1 - sigmoid(u)) = -softplus(u)``.
* Quotients by a two-term exponential sum
  :math:`D = c_1 e^{a_1} + c_2 e^{a_2}` (``cosh(u)`` is one: :math:`c = 1/2,\ a = \pm u`):
  :math:`c_1 e^{a_1}/D = \sigma(a_1 - a_2 + \log(c_1/c_2))` and the same with 1 and 2 swapped, so
  :math:`e^{b}/D^k = e^{b - m a_1 - (k - m) a_2}\,(e^{a_1}/D)^m (e^{a_2}/D)^{k-m}` whenever some
  :math:`0 \le m \le k` leaves the first exponent free of x: ``1/(1 + exp(-u))`` and
  ``exp(u)/(1 + exp(u))`` are ``sigmoid(u)``, ``x/(1 + exp(-x))`` is ``x*sigmoid(x)``,
  ``exp(-x)/(1 + exp(-x))**2`` is ``sigmoid(x)*sigmoid(-x)``, ``exp(x)/cosh(x)`` is ``2*sigmoid(2*x)``.
  A numerator :math:`s\,(c_1 e^{a_1} - c_2 e^{a_2})` over :math:`D` is
  :math:`s \tanh((a_1 - a_2 + \log(c_1/c_2))/2)`: ``(exp(u) - exp(-u))/(exp(u) + exp(-u))``,
  ``(1 - exp(-2*u))/(1 + exp(-2*u))`` and ``sinh(u)/cosh(u)`` are ``tanh(u)``, ``expm1(x)/(exp(x) + 1)`` is
  ``tanh(x/2)``; other sums in the numerator are distributed over D term by term.

Every rewrite is an optimisation, never needed for a correct value, so its symbolic work is bounded
(:mod:`gainderive.budget`): an exponent whose expansion would exceed the ``terms`` or ``degree`` budget
(``exp((x + 1)**4096)/(1 + exp(x))`` spent 11 s expanding 4,097 terms of 1,200-digit integers) is not
matched, and a formula whose rewriting outlasts ``rewrite_seconds`` is left entirely as typed.

What no rule covers is left as typed (``exp(2*x)/(1 + exp(x))``, ``cosh(x)*exp(-x**2/4)``):
:class:`gainderive.evaluate.Program` then re-evaluates any non-finite double in
interval arithmetic, so an overflowing intermediate whose result is finite
stays finite there too.

The rewrites are applied where formulas become activations
(:func:`gainderive.registry.parse_activation_formula`, and again in
:attr:`gainderive.activation.Activation.expression` once parameter values are
known); the registry's own formulas are written in the stable functions
already and come out unchanged.
"""

from __future__ import annotations

import sympy as sp

from .formula import X
from .functions import sigmoid, softplus

__all__ = ["stable"]

_MAX_POWER = 8  # (1 + exp(-x))**-k beyond this is no activation anyone types; left as typed


def stable(expression: sp.Basic) -> sp.Basic:
    """``expression`` with every unstable pattern above replaced by its stable form (an identity).

    Within the ``rewrite_seconds`` budget; past it, the expression is returned as typed.
    """
    from .budget import Budget, SymbolicBudgetError

    budget = Budget("stable rewriting stopped", "rewrite_seconds")
    memo: dict[sp.Basic, sp.Basic] = {}
    try:
        return _walk(expression, memo, budget)
    except SymbolicBudgetError:
        return expression


def _walk(e: sp.Basic, memo: dict, budget, factor: bool = False) -> sp.Basic:
    """Rewrite bottom-up; a factor of a product waits for the product, which may hold its numerator."""
    if not e.args or X not in e.free_symbols:
        return e
    if (e, factor) in memo:
        return memo[e, factor]
    budget.check("rewriting")
    product = isinstance(e, sp.Mul)
    args = tuple(_walk(a, memo, budget, product) for a in e.args)
    node = e.func(*args) if args != e.args else e
    if isinstance(node, sp.log):
        node = _log(node.args[0]) or node
    elif product:
        node = _quotients(node)
    elif isinstance(node, sp.Pow) and not factor:
        node = _quotient(node) or node
    memo[e, factor] = node
    return node


def _quotients(node: sp.Expr) -> sp.Expr:
    for _ in range(4):  # one denominator per pass: x*exp(x)/((1 + exp(x))*(1 + exp(-x))) takes two
        better = _quotient(node)
        if better is None:
            break
        node = better
        if not isinstance(node, sp.Mul):
            return node
    # what the product as a whole does not match, each denominator alone may: exp(2*x)/(1 + exp(x))
    return sp.Mul(*((_quotient(f) or f) if isinstance(f, sp.Pow) else f for f in sp.Mul.make_args(node)))


# -- exponential sums ---------------------------------------------------------------------------------------------
def _exp_terms(e: sp.Expr) -> list[tuple[sp.Expr, sp.Expr]] | None:
    """e as [(c, a), ...] meaning sum c e^a with c free of x, or None if e is not such a sum."""
    if isinstance(e, sp.sinh) and e.args[0].has(X):
        return [(sp.S.Half, e.args[0]), (-sp.S.Half, -e.args[0])]
    if isinstance(e, sp.cosh) and e.args[0].has(X):
        return [(sp.S.Half, e.args[0]), (sp.S.Half, -e.args[0])]
    out = []
    for term in sp.Add.make_args(e):
        coefficient, exponent = sp.S.One, sp.S.Zero
        for factor in sp.Mul.make_args(term):
            if X not in factor.free_symbols:
                coefficient *= factor
            elif isinstance(factor, sp.exp):
                exponent += factor.args[0]
            else:
                return None
        out.append((coefficient, exponent))
    if not any(a.has(X) for _, a in out) or not all(a.is_real for _, a in out):
        return None
    return out


def _positive_sum(e: sp.Expr) -> list[tuple[sp.Expr, sp.Expr]] | None:
    terms = _exp_terms(e)
    if terms is None or len(terms) < 2 or not all(c.is_positive for c, _ in terms):
        return None
    return terms


# -- log-sum-exp --------------------------------------------------------------------------------------------------
def _log(argument: sp.Expr) -> sp.Expr | None:
    if isinstance(argument, sigmoid):
        return -softplus(-argument.args[0])
    if isinstance(argument, sp.Add) and len(argument.args) == 2 and sp.S.One in argument.args:
        other = argument - 1
        if isinstance(-other, sigmoid):
            return -softplus((-other).args[0])
    coefficient, rest = argument.as_coeff_Mul()
    if coefficient.is_positive and coefficient != 1 and isinstance(rest, sp.Add):
        inner = _log(rest)
        return None if inner is None else sp.log(coefficient) + inner
    terms = _positive_sum(argument)
    if terms is None:
        return None
    return _logsumexp([a + sp.log(c) for c, a in terms])


def _logsumexp(exponents: list[sp.Expr]) -> sp.Expr:
    # pivot on an x-free exponent if there is one: log(1 + exp(u)) is then softplus(u) with nothing added
    k = next((i for i, a in enumerate(exponents) if not a.has(X)), 0)
    pivot = exponents[k]
    rest = [a - pivot for i, a in enumerate(exponents) if i != k]
    inner = rest[0] if len(rest) == 1 else _logsumexp(rest)
    return pivot + softplus(inner)


# -- quotients ----------------------------------------------------------------------------------------------------
def _denominator(factor: sp.Expr) -> tuple[list[tuple[sp.Expr, sp.Expr]], int] | None:
    """(terms, k) if factor is D**-k with D a sum of two positive exponentials (or cosh)."""
    if not (isinstance(factor, sp.Pow) and factor.exp.is_Integer and -_MAX_POWER <= factor.exp < 0):
        return None
    terms = _positive_sum(factor.base)
    if terms is None or len(terms) != 2:
        return None
    return terms, int(-factor.exp)


def _quotient(node: sp.Expr) -> sp.Expr | None:
    factors = list(sp.Mul.make_args(node))
    i = next((i for i, f in enumerate(factors) if _denominator(f) is not None), None)
    if i is None:
        return None
    factor = factors[i]
    terms, k = _denominator(factor)
    others = factors[:i] + factors[i + 1:]
    if k == 1:
        for j, g in enumerate(others):
            value = _tanh_ratio(g, terms)
            if value is not None:
                return sp.Mul(*others[:j], *others[j + 1:]) * value
    exps = [g for g in others if isinstance(g, sp.exp) and g.has(X)]
    rest = [g for g in others if not (isinstance(g, sp.exp) and g.has(X))]
    # a numerator sum with exponentials: each of its terms over D ((x + exp(x))/(1 + exp(x)) is
    # x*sigmoid(-x) + sigmoid(x), not (x + exp(x))*sigmoid(-x), which is inf*0 at x = 800)
    for j, g in enumerate(rest):
        if isinstance(g, sp.Add) and g.has(sp.exp):
            parts = [_quotient(sp.Mul(t, *rest[:j], *rest[j + 1:], *exps, factor)) for t in g.args]
            if all(p is not None for p in parts):
                return sp.Add(*parts)
    ratio = _ratio(sp.Add(*(g.args[0] for g in exps)), terms, k)
    return None if ratio is None else sp.Mul(*rest) * ratio


def _small_expand(e: sp.Expr) -> sp.Expr | None:
    """``sympy.expand(e)``, or None where the result would exceed the terms or degree budget (no rewrite then)."""
    from .budget import expanded_terms, in_force, polynomial_degree

    if not e.has(X):
        return e
    limits = in_force()
    degree = polynomial_degree(e, X)
    if (degree > limits.degree and degree != float("inf")) or expanded_terms(e) > limits.terms:
        return None
    return sp.expand(e)


def _ratio(b: sp.Expr, terms: list[tuple[sp.Expr, sp.Expr]], k: int) -> sp.Expr | None:
    """e^b / D^k as sigmoids, if b splits into m exponents a_1 and k - m exponents a_2 up to a constant."""
    (c1, a1), (c2, a2) = terms
    for m in range(k + 1):
        left = _small_expand(b - m * a1 - (k - m) * a2)
        if left is None or left.has(X):
            continue
        first = sigmoid(a1 - a2 + sp.log(c1 / c2)) / c1  # e^{a1}/D
        second = sigmoid(a2 - a1 + sp.log(c2 / c1)) / c2  # e^{a2}/D
        return sp.exp(left) * first**m * second ** (k - m)
    return None


def _tanh_ratio(numerator: sp.Expr, terms: list[tuple[sp.Expr, sp.Expr]]) -> sp.Expr | None:
    """s (c1 e^{a1} - c2 e^{a2}) / (c1 e^{a1} + c2 e^{a2}) = s tanh((a1 - a2 + log(c1/c2))/2)."""
    upper = _exp_terms(numerator)
    if upper is None or len(upper) != 2:
        return None
    (c1, a1), (c2, a2) = terms
    expanded = [_small_expand(a) for a in (a1, a2, *(a for _, a in upper))]
    if any(a is None for a in expanded):
        return None
    by_exponent = {a: n for (n, _), a in zip(upper, expanded[2:])}
    n1, n2 = by_exponent.get(expanded[0]), by_exponent.get(expanded[1])
    if n1 is None or n2 is None:
        return None
    scale = n1 / c1
    if sp.expand(n2 / c2 + scale) != 0:
        return None
    return scale * sp.tanh((a1 - a2 + sp.log(c1 / c2)) / 2)
