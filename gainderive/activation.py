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

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sympy as sp

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

    A light record: the symbolic work (parsing, breakpoints, pieces) happens on
    first use of the properties that need it, in :mod:`gainderive._structure`.

    Parameters
    ----------
    name:
        Registry name, or the formula itself for user formulas.
    formula:
        Expression in ``x`` and the parameter names (see ``docs/formulas.md``).
    params:
        Parameter values: exact sympy numbers, or exact decimal strings (the
        registry's defaults).
    reference:
        The paper the activation comes from.
    constraints:
        Conditions on the parameters in formula syntax, e.g. ``"beta > 0"``.
    """

    name: str
    formula: str
    params: Mapping[str, Any] = field(default_factory=dict)
    reference: str = ""
    description: str = ""
    aliases: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

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
        """f(x) with the parameter values substituted (exact), unstable patterns in their stable forms."""
        from ._structure import substitute
        from .rewrite import stable

        # again after substitution: log(a + exp(x)) is a softplus only once a > 0 is known
        return stable(substitute(self.symbolic_expression, self.params))

    @cached_property
    def derivative(self) -> sp.Expr:
        """f'(x) on the whole line, defined almost everywhere (piece by piece)."""
        from ._structure import derivative

        return derivative(self.pieces, self.exact_breakpoints)

    @cached_property
    def _normalized(self) -> sp.Expr:
        from ._structure import normalized

        return normalized(self.expression, self.name, self.parameter_values)

    @cached_property
    def exact_breakpoints(self) -> tuple[sp.Expr, ...]:
        """Sorted distinct real breakpoints, as exact sympy numbers."""
        from ._structure import breakpoints

        return breakpoints(self._normalized)

    @cached_property
    def breakpoints(self) -> tuple[float, ...]:
        """Sorted breakpoints of f (kinks and jumps) as floats."""
        return tuple(float(b) for b in self.exact_breakpoints)

    @cached_property
    def pieces(self) -> tuple[Piece, ...]:
        """The smooth pieces of f between consecutive breakpoints."""
        from ._structure import pieces

        return pieces(self._normalized, self.exact_breakpoints, Piece)

    @cached_property
    def jumps(self) -> tuple[Jump, ...]:
        """Breakpoints where f is discontinuous (f' has a Dirac mass there)."""
        from ._structure import jumps

        return jumps(self.exact_breakpoints, self.pieces, Jump)

    def describe_jumps(self) -> str:
        """One phrase naming each jump, for error messages."""
        return ", ".join(f"by {j.size:.6g} at z = {j.at:.6g}" for j in self.jumps)
