"""The one result type every backend returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Estimate"]


@dataclass(frozen=True)
class Estimate:
    """A computed expectation with its uncertainty and provenance.

    ``value`` and ``error`` are floats, numpy arrays (one entry per input
    variance) or mpmath numbers (high precision).  ``error`` is an absolute
    bound for deterministic methods (quadrature, high precision) and one
    standard error for Monte Carlo.  ``method`` names the backend:
    ``"quadrature"``, ``"high_precision"`` or ``"monte_carlo"``.
    """

    value: Any
    error: Any
    method: str

    def __float__(self) -> float:
        return float(self.value)
