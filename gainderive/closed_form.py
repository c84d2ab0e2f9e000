"""Closed forms of the Gaussian moments: what one is, how it is evaluated, where it comes from.

A :class:`ClosedForm` is a moment as an expression in q and the activation's
parameters.  They are derived by :mod:`gainderive.gaussian_rules` (rule-based
Gaussian integrals, then verified against quadrature); for the registry at its
default parameters they are also stored in the registry cache, so that they
can be shown and evaluated without importing sympy.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import sympy as sp

    from .evaluate import Program

__all__ = ["ClosedForm", "Verdict", "evaluate", "evaluate_many"]


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


def evaluate(whole: Program, terms: Program | None, q: Any) -> tuple[Any, Any]:
    """(value, error bound) of a closed form at q, from its numpy program ``whole`` (the stable rewrite).

    The bound is a running rounding-error bound (:meth:`~gainderive.evaluate.Program.bounded`, Higham 2002,
    sec. 3.3): each operation's own rounding -- half an ulp for +, *, /, sqrt, 4 ulp for library functions, more
    where a function squares its argument inside -- plus its arguments' errors times its condition, so that
    rounding amplified by exp(u), by asin near 1 or by cancellation in a sum is counted.  Against 40-digit
    references it holds from q = 1e-8 to 1e8 and is 2-25 times the worst actual error at ordinary q
    (tests/test_closed_form_evaluation.py).  ``terms`` (the form's top-level terms, which the cruder bound before
    used) is not needed and is ignored.

    A Python float (or 0-d array, or numpy scalar) q takes the scalar path (``math``, a few microseconds) and
    returns numpy float64 scalars; an array q returns arrays of its shape.
    """
    del terms
    if type(q) is float or isinstance(q, np.floating) or (isinstance(q, np.ndarray) and q.ndim == 0):
        found = whole.bounded_scalar(float(q))
        if found is not None:
            return np.float64(found[0][0]), np.float64(found[1][0])
    values, bounds = whole.bounded(np.asarray(q, dtype=float))
    return values[0], bounds[0]


@functools.lru_cache(maxsize=256)
def _fused(programs: tuple[Program, ...]) -> Program:
    from .evaluate import Program

    return Program.fuse(programs)


def evaluate_many(forms: Sequence[tuple[Program, Program | None]], q: Any) -> list[tuple[Any, Any]]:
    """[(value, error bound)] of several closed forms at the same q, as :func:`evaluate` gives each.

    ``forms`` are (whole, terms) pairs; their programs are fused once (cached), so a subexpression they share --
    e^{q/2} Phi(-sqrt q) in ELU's mean, second moment and variance -- is computed once.
    """
    fused = _fused(tuple(whole for whole, _ in forms))
    if type(q) is float or isinstance(q, np.floating) or (isinstance(q, np.ndarray) and q.ndim == 0):
        found = fused.bounded_scalar(float(q))
        if found is not None:
            return [(np.float64(v), np.float64(e)) for v, e in zip(*found)]
    values, bounds = fused.bounded(np.asarray(q, dtype=float))
    return list(zip(values, bounds))
