"""Solving for activation parameters and input variances (part of issue #7).

* :func:`solve_parameters`: parameters that make the Gaussian moments take given values at a given q, e.g.
  SELU's alpha and scale from E[f] = 0 and E[f^2] = 1 at q = 1 (Klambauer et al. 2017).
* :func:`variance_for_gain`: the q at which a given gain is exact, e.g. where tanh's 5/3 holds.

Both use quadrature moments (relative error ~1e-14) and refuse to return an unconverged answer.  Both are
bounded: :func:`solve_parameters` stops after a fixed number of moment evaluations (100 per unknown, plus one)
or :data:`TIME_BUDGET` seconds, whichever comes first, and :func:`variance_for_gain` scans 61 points and then
bisects at most 100 times; either ends in a one-line :class:`ConvergenceError`, never a hang.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import ConvergenceError, GainDeriveError

__all__ = ["solve_parameters", "variance_for_gain"]

_MOMENTS = ("mean", "second_moment", "derivative_second_moment", "variance")
#: Seconds a parameter solve may take before it gives up with a ConvergenceError.
TIME_BUDGET = 60.0


class _OutOfBudgetError(Exception):
    """Raised inside the residual to stop scipy's solver when the evaluation or time budget is spent."""


def _pairs(values: Mapping[str, Any] | Sequence[tuple[str, Any]], what: str, example: str) -> dict[str, float]:
    """A mapping or a list of (name, number) pairs as a dict; a repeated name or a non-number is an error."""
    items = list(values.items()) if isinstance(values, Mapping) else values
    shape = (f"{what}s are a mapping or a list of (name, number) pairs, e.g. {example}; got {values!r}")
    out: dict[str, float] = {}
    try:
        pairs = [(name, value) for name, value in items]
    except (TypeError, ValueError):
        raise GainDeriveError(shape) from None
    for name, value in pairs:
        if not isinstance(name, str) or isinstance(value, bool):
            raise GainDeriveError(shape)
        if name in out:
            raise GainDeriveError(f"{what} {name!r} is given twice; give each once, e.g. {example}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise GainDeriveError(shape) from None
        if not math.isfinite(number):
            raise GainDeriveError(f"{what} {name}={value!r} must be a finite number")
        out[name] = number
    return out


def solve_parameters(formula: str, unknowns: Mapping[str, float] | Sequence[tuple[str, float]],
                     constraints: Mapping[str, float] | Sequence[tuple[str, float]], *,
                     variance: float = 1.0, tol: float = 1e-13, **fixed: Any) -> dict[str, float]:
    """Values of ``unknowns`` (name -> initial guess) such that each constrained moment equals its target.

    ``unknowns`` and ``constraints`` are mappings or lists of (name, value) pairs; a name given twice is an
    error (not silently the last).  The solve (scipy's hybrid Powell method) is bounded: at most 100 moment
    evaluations per unknown plus one, and :data:`TIME_BUDGET` seconds.

    >>> sol = solve_parameters("scale*where(x > 0, x, alpha*expm1(x))", {"alpha": 1.5, "scale": 1.0},
    ...                        {"mean": 0, "second_moment": 1})
    >>> round(sol["alpha"], 12), round(sol["scale"], 12)
    (1.673263242354, 1.050700987355)
    """
    from scipy.optimize import root

    from .moments import check_variance, moments

    guesses = _pairs(unknowns, "unknown", "{'alpha': 1.5}")
    targets_by_moment = _pairs(constraints, "constraint", "{'mean': 0}")
    if set(targets_by_moment) - set(_MOMENTS):
        raise GainDeriveError(f"constraints name moments: {', '.join(_MOMENTS)}; got {', '.join(targets_by_moment)}")
    if len(targets_by_moment) != len(guesses) or not guesses:
        raise GainDeriveError(f"need as many constraints as unknowns; got {len(targets_by_moment)} and {len(guesses)}")
    if clash := set(guesses) & set(fixed):
        raise GainDeriveError(f"{', '.join(sorted(clash))} is both an unknown and a fixed parameter; give it once")
    if not (isinstance(tol, (int, float)) and not isinstance(tol, bool) and 0 < tol < 1):
        raise GainDeriveError(f"tol must be a number in (0, 1), got {tol!r}")
    q = check_variance(variance)
    if np.ndim(q):
        raise GainDeriveError(f"solve_parameters takes one variance q, got {np.size(q)}")
    names, moments_named = list(guesses), list(targets_by_moment)
    targets = np.array([targets_by_moment[m] for m in moments_named])
    max_evaluations = 100 * (len(names) + 1)
    deadline = time.monotonic() + TIME_BUDGET
    spent = [0]

    def moment_values(theta: np.ndarray) -> np.ndarray:
        params = {**fixed, **{n: repr(float(v)) for n, v in zip(names, theta)}}
        m = moments(formula, q, "quadrature", **params)
        return np.array([float(getattr(m, c).value) for c in moments_named]) - targets

    def residual(theta: np.ndarray) -> np.ndarray:
        spent[0] += 1
        if spent[0] > max_evaluations or time.monotonic() > deadline:
            raise _OutOfBudgetError
        try:
            return moment_values(theta)
        except GainDeriveError:
            return np.full(len(targets), 1e6)  # outside the activation's domain: push the solver back

    start = np.array([guesses[n] for n in names])
    moment_values(start)  # a bad formula or parameter name fails here with its own message, not as "no convergence"
    try:
        result = root(residual, start, method="hybr", tol=1e-15, options={"maxfev": max_evaluations})
    except _OutOfBudgetError:
        raise ConvergenceError(f"the solver did not converge within {max_evaluations} moment evaluations or "
                               f"{TIME_BUDGET:g} s: the constraints may have no solution near the initial guess") \
            from None
    # judged by the residual itself: hybr reports "xtol too small" when it has converged to rounding
    worst = float(np.max(np.abs(moment_values(result.x))))
    if not worst <= tol * max(1.0, float(np.max(np.abs(targets)))):
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

    from .gains import MODES
    from .gains import gain as exact_gain

    if isinstance(gain, bool) or not isinstance(gain, (int, float, np.floating, np.integer)) or not (
            gain > 0 and math.isfinite(gain)):
        raise GainDeriveError(f"gain must be a finite positive number; got {gain!r}")
    if mode not in MODES:
        raise GainDeriveError(f"unknown mode {mode!r}; accepted: {', '.join(MODES)}")
    try:
        lo_q, hi_q = (float(v) for v in bracket)
    except (TypeError, ValueError):
        lo_q = hi_q = math.nan
    if not (0 < lo_q < hi_q < math.inf):
        raise GainDeriveError(f"bracket must be two numbers (lo, hi) with 0 < lo < hi < inf; got {bracket!r}")

    def gap(log_q: float) -> float:
        return float(exact_gain(activation, math.exp(log_q), mode, "quadrature", **params)) - gain

    lo, hi = math.log(lo_q), math.log(hi_q)
    grid = np.linspace(lo, hi, 61)
    values = [gap(x) for x in grid]
    for a, b, fa, fb in zip(grid, grid[1:], values, values[1:]):
        if fa == 0:
            return math.exp(a)
        if fa * fb < 0:
            root_log_q, info = brentq(gap, a, b, xtol=1e-14, rtol=1e-15, maxiter=100, full_output=True, disp=False)
            if not info.converged:
                raise ConvergenceError(f"the q at which gain_{mode} = {gain:g} did not converge near q = "
                                       f"{math.exp(a):.6g}")
            return math.exp(root_log_q)
    raise GainDeriveError(f"gain_{mode} of {activation} is never {gain:g} for q in [{bracket[0]:g}, {bracket[1]:g}] "
                          f"(it ranges over {min(values) + gain:.4g}..{max(values) + gain:.4g})")
