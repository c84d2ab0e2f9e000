"""Closed forms of the Gaussian moments: what one is, how it is evaluated, where it comes from.

A :class:`ClosedForm` is a moment as an expression in q and the activation's
parameters.  They are derived by :mod:`gainderive.gaussian_rules` (rule-based
Gaussian integrals, then verified against quadrature); for the registry at its
default parameters they are also stored in the registry cache, so that they
can be shown and evaluated without importing sympy.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import sympy as sp

    from .activation import Activation

__all__ = ["ClosedForm", "Verdict", "closed_forms", "evaluate", "verdicts"]

_EPS = float(np.finfo(float).eps)


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


def verdicts(activation: str | Activation, **params: Any) -> dict[str, Verdict]:
    """For each moment, the derived closed form (if any) and whether it was verified, preferred or rejected."""
    from .gaussian_rules import verdicts as derive
    from .registry import activation as make_activation

    return derive(make_activation(activation, **params))


def closed_forms(activation: str | Activation, **params: Any) -> dict[str, ClosedForm | None]:
    """The verified closed forms of mean, second_moment, derivative_second_moment and variance.

    None where there is none (tanh, sigmoid, ...) or where the derived form failed verification.

    >>> str(closed_forms("relu")["second_moment"])
    'q/2'
    """
    from .gaussian_rules import verified_forms
    from .registry import activation as make_activation

    return verified_forms(make_activation(activation, **params))


def evaluate(whole, terms, q) -> tuple[np.ndarray, np.ndarray]:
    """(value, error bound) at an array of q from a closed form's two programs.

    ``whole`` evaluates the form in one piece (so k e^u - k becomes expm1); ``terms`` evaluates
    its top-level terms separately, whose magnitudes, times the amplification of their exponentials
    (:meth:`~gainderive.evaluate.Program.amplification`), bound the rounding of their sum.
    """
    q = np.asarray(q, dtype=float)
    with np.errstate(all="ignore"):
        value = whole(q)[0]
        parts = terms(q)
        # each term's rounding is magnified by its exponentials: e^{q/2} at q = 1000 is only good to ~500 eps
        amplified = np.abs(parts) * (1 + np.asarray(terms.amplification(q)))
    error = 16 * (len(parts) + 2) * _EPS * np.sum(amplified, axis=0)
    return value, error
