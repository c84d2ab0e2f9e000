r"""Symbolic work bounded by construction: a size and time budget checked before and during each step.

sympy's ``expand``, ``rewrite`` and ``simplify`` take time and memory that grow with the size of their
*result*, which a short formula can make astronomical: ``tanh`` nested 12 deep has a derivative whose
square expands into 2^24 terms, ``((x + 1)**64)**64`` squared into 8,193 terms of 2,400-digit integers,
and ``abs`` nested k deep into 2^k pieces.  A signal cannot interrupt sympy's C-level big-integer
arithmetic, nor run off the main thread, so the time limit alone does not bound this work.  Instead:

* **before** a costly call, the size of its result is estimated from the expression tree in one linear
  pass (:func:`expanded_terms`: the product of the term counts of a product's factors, the multinomial
  count for a power of a sum; :func:`polynomial_degree`: the degree product for powers), and the call is
  not made when the estimate exceeds the budget;
* **during** the work, loops check a deadline (``time.monotonic``) at the entry of each step
  (:meth:`Budget.check`);
* the SIGALRM timer around ``sympy.integrate`` (:mod:`gainderive.gaussian_rules`) stays, as a backstop
  within the remaining time.

Every budget belongs to one item — one activation's closed forms, one integrand's piece structure —
and is created fresh for it: a batch of formulas never shares one, so a hard formula cannot starve
the next.

When a budget is exceeded the work takes the cheaper path: no closed form (quadrature still answers, and
the closed-form verdict names the budget), panels instead of exact exponential-polynomial integrals,
the stable rewrites left out (interval arithmetic then guards overflow).  Where no cheaper path exists
(the piece structure of a piecewise activation, which every backend needs), the result is a one-line
:class:`SymbolicBudgetError` naming the budget.  The values are in :data:`LIMITS` and
docs/closed_forms.md; :func:`limits` changes them for a block (tests use small ones).
:class:`KeyboardInterrupt` is never caught here.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from typing import Any

from .errors import GainDeriveError

__all__ = [
    "LIMITS", "Budget", "Limits", "SymbolicBudgetError", "expanded_terms", "in_force", "limits", "polynomial_degree",
    "tree_size",
]


#: The clock of every deadline (monotonic: a changed wall clock moves no deadline; tests may replace it).
_clock = time.monotonic


class SymbolicBudgetError(GainDeriveError):
    """Symbolic work on one formula would exceed its size or time budget (the message names which)."""


@dataclass(frozen=True)
class Limits:
    """The symbolic budgets of one item (see docs/closed_forms.md for what each bounds and why)."""

    #: seconds of closed-form derivation for one activation (all four moments, pieces and verification)
    closed_form_seconds: float = 4.0
    #: seconds of piece analysis (breakpoints, pieces) for one activation
    structure_seconds: float = 10.0
    #: seconds of the stable rewrites (gainderive.rewrite) of one formula; past it the formula stays as typed
    rewrite_seconds: float = 2.0
    #: seconds of Taylor arithmetic for one integrand (small-q series backend); past it quadrature answers
    series_seconds: float = 2.0
    #: terms an ``expand`` may produce (estimated before the call)
    terms: int = 500
    #: pieces (intervals between breakpoints) of one activation
    pieces: int = 256
    #: pieces of one activation for which closed forms are attempted
    closed_form_pieces: int = 16
    #: degree of a polynomial that is expanded, factored or root-found exactly
    degree: int = 64
    #: operations (sympy ``count_ops``-like tree size) of one expression handed to a rewrite
    operations: int = 20_000


#: The budgets in force (replaced for a block by :func:`limits`; each may be set for one run with the
#: environment variable ``GAINDERIVE_BUDGET_<NAME>``, e.g. ``GAINDERIVE_BUDGET_CLOSED_FORM_SECONDS=30``).
LIMITS = Limits()


@contextlib.contextmanager
def limits(**changes: Any) -> Iterator[Limits]:
    """Run a block under other budgets, e.g. ``with limits(closed_form_seconds=0): ...`` (tests, benchmarks)."""
    global LIMITS
    known = {f.name for f in fields(Limits)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise TypeError(f"unknown budget(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    previous = LIMITS
    LIMITS = replace(previous, **changes)
    try:
        yield LIMITS
    finally:
        LIMITS = previous


def in_force() -> Limits:
    """:data:`LIMITS` with any ``GAINDERIVE_BUDGET_<NAME>`` environment variable applied."""
    changes: dict[str, Any] = {}
    for f in fields(Limits):
        env = f"GAINDERIVE_BUDGET_{f.name.upper()}"
        text = os.environ.get(env)
        if text is None:
            continue
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= 0):
            raise SymbolicBudgetError(f"{env}={text!r} must be a non-negative number")
        changes[f.name] = value if f.type in (float, "float") else int(value)
    return replace(LIMITS, **changes) if changes else LIMITS


class Budget:
    """A deadline and the size limits for one item's symbolic work, checked cooperatively.

    ``prefix`` starts every message ("closed form skipped", "cannot analyse the formula's pieces"); ``seconds``
    names the time budget in :class:`Limits` that sets the deadline.  :meth:`check` raises
    :class:`SymbolicBudgetError` once the deadline has passed; :meth:`refuse` builds the error for a result
    that would exceed a size budget, :meth:`expand` refuses before calling ``sympy.expand``.
    """

    def __init__(self, prefix: str, seconds: str) -> None:
        self.prefix = prefix
        self.limits = in_force()
        self.budget_name = seconds
        self.seconds = float(getattr(self.limits, seconds))
        self.deadline = _clock() + self.seconds

    def remaining(self) -> float:
        """Seconds left (0 once the deadline has passed)."""
        return max(0.0, self.deadline - _clock())

    def check(self, step: str = "") -> None:
        """Raise :class:`SymbolicBudgetError` if the deadline has passed."""
        if _clock() >= self.deadline:
            at = f", at {step}" if step else ""
            raise SymbolicBudgetError(f"{self.prefix}: the work exceeded its time budget ({self.budget_name}="
                                      f"{self.seconds:g} s{at}; raise it with "
                                      f"GAINDERIVE_BUDGET_{self.budget_name.upper()})")

    def refuse(self, size: str, budget: str) -> SymbolicBudgetError:
        """The error for a result that would exceed the size budget ``budget``; ``size`` says what and how much."""
        value = getattr(self.limits, budget)
        return SymbolicBudgetError(f"{self.prefix}: {size} (budget {budget}={value:,}; raise it with "
                                   f"GAINDERIVE_BUDGET_{budget.upper()})")

    def expand(self, expr: Any, step: str) -> Any:
        """``sympy.expand(expr)`` if its estimated result fits the ``terms`` budget, else the budget error."""
        import sympy as sp

        self.check(step)
        terms = expanded_terms(expr)
        if terms > self.limits.terms:
            raise self.refuse(f"{step} would expand to about {_count(terms)} terms", "terms")
        return sp.expand(expr)


def _count(n: float) -> str:
    return f"{n:,.0f}" if n < 1e15 else f"{n:.2g}"


def expanded_terms(expr: Any, _memo: dict | None = None) -> float:
    """An upper bound on the number of terms ``sympy.expand(expr)`` produces, by one pass over the tree.

    A sum has at most the sum of its terms' counts, a product the product of its factors' counts, a power
    ``s**n`` of a sum of k terms (n a positive integer) at most the multinomial count C(n + k - 1, k - 1);
    a function application is one term, but its argument is expanded too, so the largest count met
    anywhere in the tree is returned.  A float (``inf`` beyond ~1e308) so that no count is ever a huge int.
    """
    largest = [1.0]
    memo: dict[Any, float] = {} if _memo is None else _memo

    def terms(e: Any) -> float:
        if not getattr(e, "args", ()):
            return 1.0
        if e in memo:
            return memo[e]
        if e.is_Add:
            n = sum(terms(a) for a in e.args)
        elif e.is_Mul:
            n = math.prod(terms(a) for a in e.args)
        elif e.is_Pow:
            base = terms(e.base)
            terms(e.exp)
            exponent = e.exp
            if exponent.is_Integer and exponent > 0 and base > 1:
                n = _multinomial(int(exponent), base)
            else:
                n = 1.0
        else:
            for a in e.args:
                terms(a)
            n = 1.0
        n = min(n, math.inf)
        memo[e] = n
        largest[0] = max(largest[0], n)
        return n

    terms(expr)
    return largest[0]


def _multinomial(n: int, k: float) -> float:
    """C(n + k - 1, k - 1): the number of monomials of degree n in k variables, as a float (inf if huge)."""
    if k > 1e6 or n > 1e6:
        return math.inf
    k = int(k)
    try:
        return float(math.comb(n + k - 1, min(n, k - 1)))
    except OverflowError:
        return math.inf


def polynomial_degree(expr: Any, x: Any, _memo: dict | None = None) -> float:
    """An upper bound on the degree of ``expr`` in ``x`` as a polynomial, from the tree (no expansion).

    ``inf`` for what is not a polynomial in x (a function of x, a negative or fractional power of x).
    ``((x + 1)**64)**64`` is 4096 at once, where ``sympy.Poly`` would first expand it.
    """
    memo: dict[Any, float] = {} if _memo is None else _memo

    def degree(e: Any) -> float:
        if e == x:
            return 1.0
        if not getattr(e, "args", ()) or x not in e.free_symbols:
            return 0.0
        if e in memo:
            return memo[e]
        if e.is_Add:
            d = max(degree(a) for a in e.args)
        elif e.is_Mul:
            d = sum(degree(a) for a in e.args)
        elif e.is_Pow and e.exp.is_Integer and e.exp >= 0:
            d = degree(e.base) * int(e.exp)
        else:
            d = math.inf
        memo[e] = d
        return d

    return degree(expr)


def tree_size(expr: Any, cap: int) -> int:
    """The number of nodes of ``expr``'s tree, counted up to ``cap`` (shared subtrees counted each time)."""
    count = 0
    stack = [expr]
    while stack and count <= cap:
        e = stack.pop()
        count += 1
        stack.extend(getattr(e, "args", ()))
    return count
