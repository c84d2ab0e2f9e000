"""Exceptions raised by gainderive.

Every error a user can provoke is a :class:`GainDeriveError` whose message is a
single line naming what is wrong and what is accepted.  The CLI prints that
line and exits with status 2 (status 1 for :class:`CheckError`, a refuted
cross-check rather than bad input).
"""

from __future__ import annotations

__all__ = [
    "CheckError",
    "ConvergenceError",
    "DiracDerivativeError",
    "DivergenceError",
    "DuplicateParameterError",
    "FormulaError",
    "GainDeriveError",
    "ParameterError",
    "UnknownActivationError",
    "VarianceError",
]


class GainDeriveError(ValueError):
    """Base class: bad input or a quantity that does not exist."""


class FormulaError(GainDeriveError):
    """A formula string is unparsable, uses syntax or names outside the whitelist, or is undefined."""


class UnknownActivationError(GainDeriveError):
    """A registry name that does not exist."""


class ParameterError(GainDeriveError):
    """An unknown, missing or invalid activation parameter."""


class DuplicateParameterError(ParameterError, FormulaError):
    """A parameter given twice (e.g. ``elu(x, 2, alpha=3)``): refused rather than keeping one silently."""


class VarianceError(GainDeriveError):
    """An input variance q that is not a finite positive number."""


class DivergenceError(GainDeriveError):
    """The Gaussian expectation is infinite, undefined, or overflows double precision."""


class DiracDerivativeError(DivergenceError):
    """f jumps, so f' carries a Dirac mass and E[f'(z)^2] is infinite."""


class ConvergenceError(GainDeriveError):
    """Quadrature could not reach the requested accuracy."""


class CheckError(GainDeriveError):
    """Two independent methods disagree beyond their stated uncertainty."""
