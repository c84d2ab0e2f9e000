"""Solving for activation parameters and input variances (part of issue #7).

* :func:`solve_parameters`: parameters that make the Gaussian moments take given values at a given q, e.g.
  SELU's alpha and scale from E[f] = 0 and E[f^2] = 1 at q = 1 (Klambauer et al. 2017).
* :func:`variance_for_gain`: the q at which a given gain is exact, e.g. where tanh's 5/3 holds.

Both use quadrature moments (relative error ~1e-14) and refuse to return an unconverged answer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import ConvergenceError, GainDeriveError

__all__ = ["solve_parameters", "variance_for_gain"]

_MOMENTS = ("mean", "second_moment", "derivative_second_moment", "variance")


def solve_parameters(formula: str, unknowns: Mapping[str, float], constraints: Mapping[str, float], *,
                     variance: float = 1.0, tol: float = 1e-13, **fixed: Any) -> dict[str, float]:
    """Values of ``unknowns`` (name -> initial guess) such that each constrained moment equals its target.

    >>> sol = solve_parameters("scale*where(x > 0, x, alpha*expm1(x))", {"alpha": 1.5, "scale": 1.0},
    ...                        {"mean": 0, "second_moment": 1})
    >>> round(sol["alpha"], 12), round(sol["scale"], 12)
    (1.673263242354, 1.050700987355)
    """
    from scipy.optimize import root

    from .moments import moments

    if set(constraints) - set(_MOMENTS):
        raise GainDeriveError(f"constraints name moments: {', '.join(_MOMENTS)}; got {', '.join(constraints)}")
    if len(constraints) != len(unknowns) or not unknowns:
        raise GainDeriveError(f"need as many constraints as unknowns; got {len(constraints)} and {len(unknowns)}")
    names, targets = list(unknowns), [float(constraints[m]) for m in constraints]

    def residual(theta: np.ndarray) -> np.ndarray:
        params = {**fixed, **{n: repr(float(v)) for n, v in zip(names, theta)}}
        try:
            m = moments(formula, variance, "quadrature", **params)
        except GainDeriveError:
            return np.full(len(targets), 1e6)  # outside the activation's domain: push the solver back
        return np.array([float(getattr(m, c).value) for c in constraints]) - targets

    result = root(residual, np.array([float(unknowns[n]) for n in names]), method="hybr", tol=1e-15)
    worst = float(np.max(np.abs(residual(result.x))))
    if not result.success or worst > tol * max(1.0, max(abs(t) for t in targets)):
        raise ConvergenceError(f"the solver did not converge (largest residual {worst:.3g}): the constraints may "
                               "have no solution near the initial guess")
    return {n: float(v) for n, v in zip(names, result.x)}


def variance_for_gain(activation: Any, gain: float, *, mode: str = "fan_in", bracket: tuple[float, float] = (1e-6, 1e6),
                      **params: Any) -> float:
    """The input variance q at which ``gain`` is the exact variance-preserving gain of ``activation``.

    >>> round(variance_for_gain("tanh", 5 / 3), 4)     # PyTorch's tanh gain is exact only here
    1.1785
    """
    from scipy.optimize import brentq

    from .gains import gain as exact_gain

    if not (gain > 0 and math.isfinite(gain)):
        raise GainDeriveError(f"gain must be a finite positive number; got {gain!r}")

    def gap(log_q: float) -> float:
        return float(exact_gain(activation, math.exp(log_q), mode, "quadrature", **params)) - gain

    lo, hi = math.log(bracket[0]), math.log(bracket[1])
    grid = np.linspace(lo, hi, 61)
    values = [gap(x) for x in grid]
    for a, b, fa, fb in zip(grid, grid[1:], values, values[1:]):
        if fa == 0:
            return math.exp(a)
        if fa * fb < 0:
            return math.exp(brentq(gap, a, b, xtol=1e-14, rtol=1e-15))
    raise GainDeriveError(f"gain_{mode} of {activation} is never {gain:g} for q in [{bracket[0]:g}, {bracket[1]:g}] "
                          f"(it ranges over {min(values) + gain:.4g}..{max(values) + gain:.4g})")
