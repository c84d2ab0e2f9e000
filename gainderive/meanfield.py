r"""Mean-field signal propagation: fixed points, the edge of chaos, depth scales, isometry.

A wide network with weights of variance sigma_w^2 / fan_in and biases of
variance sigma_b^2 maps the pre-activation variance of layer l to layer l+1 by
(Poole et al. 2016, NeurIPS; Schoenholz et al. 2017, ICLR)

.. math::  V(q) = \sigma_w^2\, E[f(z)^2] + \sigma_b^2, \qquad z \sim N(0, q),

and the correlation of two inputs, both at the fixed point q*, by

.. math::  C(c) = \bigl(\sigma_w^2\, E[f(u) f(v)] + \sigma_b^2\bigr) / q^*,
           \qquad \operatorname{corr}(u, v) = c .

* **Fixed point** q* = V(q*), found by bracketing (a log-spaced scan of
  V(q) - q, then safeguarded Newton steps on every bracket at once), never by
  bare iteration.  Its stability is the slope V'(q*) = sigma_w^2 E[f(z) f'(z) z] / q*
  (from d/dq E[g(z)] = E[g'(z) z] / 2q, which needs f' only almost everywhere);
  |V'(q*)| < 1 is stable.
* chi_1 = sigma_w^2 E[f'(z)^2] at q*: the slope of C at c = 1 and the mean
  squared singular value of one layer's Jacobian.  chi_1 < 1 is the ordered
  phase (c* = 1), chi_1 > 1 the chaotic phase (c* < 1), chi_1 = 1 the edge of chaos.
* **Edge of chaos**: with sigma_w^2 = 1 / E[f'^2](q) the fixed-point equation
  becomes q - E[f^2](q) / E[f'^2](q) = sigma_b^2, a root-finding problem in q alone;
  one scan of the left side brackets the roots for every sigma_b^2 of a line, and
  all are refined together by safeguarded secant steps.
* **Root finding** is vectorised (:func:`_solve`): each round evaluates the
  moments at the current points of every open bracket in one quadrature call
  (array calls cost little more than scalar ones), and each bracket has its own
  Brent-style safeguards, convergence test and round budget.
* **Depth scales** (Schoenholz et al. 2017): xi_q = -1 / log V'(q*) and
  xi_c = -1 / log chi_c with chi_c = sigma_w^2 E[f'(u) f'(v)] at c*; the
  distances |q_l - q*| and |c_l - c*| shrink like e^{-l / xi}.
* **Dynamical isometry** (Pennington, Schoenholz & Ganguli 2017, NeurIPS): with
  mu_k = E[f'(z)^{2k}] at q*, the squared singular values of a depth-L
  input-output Jacobian have mean (sigma_w^2 mu_1)^L and variance
  mean^2 L (mu_2 / mu_1^2 - 1 - s_1), s_1 = -1 for Gaussian and 0 for
  orthogonal weights (the first S-transform coefficient of W W^T).

Moments come from the quadrature backend (relative error ~1e-13) and the
correlation kernels from :mod:`gainderive.correlation`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConvergenceError, DivergenceError, GainDeriveError

if TYPE_CHECKING:
    from .activation import Activation

__all__ = [
    "CriticalPoint",
    "FixedPoint",
    "Isometry",
    "MeanField",
    "correlation_fixed_point",
    "critical_line",
    "edge_of_chaos",
    "fixed_point",
    "fixed_points",
    "isometry",
    "mean_field",
    "variance_map",
]

DEFAULT_RANGE = (1e-6, 1e6)
_SCAN = 241  # log-spaced points of the scan for sign changes: 20 per decade
_FLAT = 1e-11  # |V(q) - q| <= this * q at every scanned q: every q is a fixed point


@dataclass(frozen=True)
class FixedPoint:
    """A fixed point q* = V(q*) of the variance map, with its slope and chi_1 there.

    ``error`` bounds |q* - true q*| from the moments' errors: err(V) / |1 - V'(q*)|.
    """

    variance: float
    error: float
    slope: float
    chi1: float

    @property
    def stable(self) -> bool:
        """|V'(q*)| < 1: layer variances converge to q*."""
        return abs(self.slope) < 1

    @property
    def depth_scale(self) -> float:
        """xi_q = -1 / log|V'(q*)|, the number of layers over which |q_l - q*| shrinks by e (inf if marginal)."""
        return _depth_scale(self.slope)


@dataclass(frozen=True)
class CriticalPoint:
    """(sigma_w^2, sigma_b^2) on the edge of chaos: chi_1 = 1 at the fixed point q*.

    ``variance`` is q*; it is None when every q is a fixed point (a positively
    homogeneous f such as relu, at sigma_b^2 = 0), and 0.0 for the limit
    q* -> 0 of a smooth f with f(0) = 0 at sigma_b^2 = 0 (tanh: sigma_w^2 = 1).
    """

    weight_variance: float
    bias_variance: float
    variance: float | None
    slope: float | None  # V'(q*): the stability of q* itself

    @property
    def depth_scale(self) -> float | None:
        """xi_q = -1 / log|V'(q*)| (None where every q is a fixed point)."""
        return None if self.slope is None else _depth_scale(self.slope)


@dataclass(frozen=True)
class Isometry:
    """Spectrum of J J^T for a depth-L input-output Jacobian at q* (large-width limit)."""

    depth: int
    mu1: float  # E[f'(z)^2] at q*
    mu2: float  # E[f'(z)^4] at q*
    mean: float  # (sigma_w^2 mu1)^L, both weight ensembles
    variance_gaussian: float  # mean^2 L (mu2/mu1^2 - 1 + 1)
    variance_orthogonal: float  # mean^2 L (mu2/mu1^2 - 1)


@dataclass(frozen=True)
class MeanField:
    """Everything mean-field theory says about (f, sigma_w^2, sigma_b^2)."""

    weight_variance: float
    bias_variance: float
    fixed_point: FixedPoint
    chi1: float
    phase: str  # "ordered", "chaotic" or "critical"
    correlation: float  # c*
    chi_c: float
    depth_scale_q: float
    depth_scale_c: float
    isometry: Isometry


def _depth_scale(slope: float) -> float:
    s = abs(slope)
    if s == 0:
        return 0.0
    return math.inf if s >= 1 else -1.0 / math.log(s)


# ---------------------------------------------------------------- moments along q

_EXPECTATIONS = ("f^2", "f'^2", "f f' z", "f'^4")


@lru_cache(maxsize=64)
def _integrand(act: Activation, names: tuple[str, ...] = _EXPECTATIONS):
    from .formula import X
    from .integrand import DF, F, integrand

    h = {"f^2": F**2, "f'^2": DF**2, "f f' z": F * DF * X, "f'^4": DF**4}
    return integrand(act, {name: h[name] for name in names})


def _expectations(act: Activation, q, names: tuple[str, ...]) -> tuple:
    """The Estimates of E[h(z)] for the named h, at every q, from ONE quadrature call.

    Array calls cost little more than scalar ones (the per-call overhead dominates below ~100 q), so the root
    finders below ask for every q of an iteration at once, and only for the expectations they need.
    """
    from .backends import quadrature

    _require_derivative(act)
    return quadrature.integrate(_integrand(act, names), np.asarray(q, dtype=float))


def _moments(act: Activation, q) -> tuple[np.ndarray, ...]:
    """(E f^2, E f'^2, E f f' z, E f'^4) and the error of E f^2, at every q (quadrature)."""
    f2, df2, ffz, df4 = _expectations(act, q, _EXPECTATIONS)
    return (np.asarray(f2.value), np.asarray(df2.value), np.asarray(ffz.value), np.asarray(df4.value),
            np.asarray(f2.error))


def _require_derivative(act: Activation) -> None:
    """GainDeriveError, naming the reason, when E[f'(z)^2] is infinite (f jumps, or f' is singular at a point)."""
    from .integrand import DF
    from .singular import analyse

    verdict = analyse(act, {"f'(z)^2": DF**2}).get("f'(z)^2")
    if verdict is not None and verdict.everywhere:
        raise GainDeriveError(f"mean-field quantities (chi_1, V'(q*), the edge of chaos, depth scales, isometry) "
                              f"need E[f'(z)^2], which is infinite for {act.name} ({verdict.reason}); "
                              "variance_map needs only E[f(z)^2]")


def _second_moment(act: Activation, q) -> np.ndarray:
    """E f^2 at every q (quadrature), for the variance map alone: it exists when f' does not."""
    from .moments import expectation

    return np.asarray(expectation(act, "f**2", q, "quadrature").value)


def _scan(act: Activation, q_range: tuple[float, float],
          names: tuple[str, ...] = _EXPECTATIONS) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """The named expectations on a log grid over q_range, cut short where they stop being computable.

    E.g. exp(x) overflows beyond q ~ 350, and sigmoid's f f' z loses its digits
    to rounding at q ~ 1e5: the scan then covers the q below, and messages say so.
    """
    lo, hi = _check_range(q_range)
    q = np.geomspace(lo, hi, _SCAN)

    def values(q):
        return tuple(np.asarray(e.value) for e in _expectations(act, q, names))

    try:
        return q, values(q)
    except (DivergenceError, ConvergenceError):
        ok = []
        for x in q:
            try:
                values(np.array([x]))
            except (DivergenceError, ConvergenceError):
                break
            ok.append(x)
        if len(ok) < 2:
            raise
        q = np.array(ok)
        return q, values(q)


# ---------------------------------------------------------------- vectorised root finding

_MAX_ITERATIONS = 200  # rounds per bracket: brentq's maxiter before (2 to 5 in practice, ~50 on noise)
_XTOL, _RTOL = 1e-15, 4 * np.finfo(float).eps  # in t = log q, as scipy's brentq was called before
_ROUNDING = np.finfo(float).eps  # |g| below this times the sum of its terms' sizes: g = 0 up to rounding


class _UnconvergedError(ConvergenceError):
    """A bracket still open after ``_MAX_ITERATIONS`` rounds (not a failure of the moments themselves)."""


def _brackets(y: np.ndarray) -> np.ndarray:
    """Indices i with a strict sign change of the scanned y between points i and i + 1."""
    return np.nonzero(np.sign(y[:-1]) * np.sign(y[1:]) < 0)[0]


def _initial_guess(t: np.ndarray, h: np.ndarray, shift: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A first estimate of the root of y = h - shift in each bracket [t_i, t_(i+1)], and the slope of y there.

    The root of the cubic through the four scan points around the bracket (Newton's divided differences,
    then Newton's method on the polynomial, clipped to the bracket), where it is finite; else linear
    interpolation.  On the 20-per-decade scan the cubic is typically within 1e-5 of the root, which saves the
    root finder two or three rounds of moment evaluations; a poor guess only costs rounds, the safeguards
    below keep it correct.
    """
    a, b, ya, yb = t[i], t[i + 1], h[i] - shift, h[i + 1] - shift
    with np.errstate(all="ignore"):
        slope = (yb - ya) / (b - a)
        x = a - ya / slope
        if t.size >= 4:
            j = np.clip(i - 1, 0, t.size - 4)[:, None] + np.arange(4)
            (t0, t1, t2, t3), (y0, y1, y2, y3) = t[j].T, (h[j] - shift[:, None]).T
            d01, d12, d23 = (y1 - y0) / (t1 - t0), (y2 - y1) / (t2 - t1), (y3 - y2) / (t3 - t2)
            c2 = (d12 - d01) / (t2 - t0)
            c3 = ((d23 - d12) / (t3 - t1) - c2) / (t3 - t0)
            xc = np.where(np.isfinite(x), x, 0.5 * (a + b))
            for _ in range(8):
                inner = c2 + (xc - t2) * c3
                middle = d01 + (xc - t1) * inner
                p = y0 + (xc - t0) * middle
                dp = middle + (xc - t0) * (inner + (xc - t1) * c3)
                xc = np.clip(xc - p / dp, a, b)
            cubic = np.isfinite(xc) & np.isfinite(dp) & (dp != 0)
            x, slope = np.where(cubic, xc, x), np.where(cubic, dp, slope)
    width = b - a
    inside = np.isfinite(x)
    x = np.where(inside, np.clip(x, a + 1e-3 * width, b - 1e-3 * width), 0.5 * (a + b))
    return x, slope


def _solve(evaluate, t: np.ndarray, h: np.ndarray, shift: np.ndarray, i: np.ndarray, *, newton: bool, fail,
           done=None) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    r"""Roots in t = log q of g, one per scan bracket [t_i, t_(i+1)] of h - shift, all brackets at once.

    The scan gives h at t; bracket k is [t_(i_k), t_(i_k + 1)] with g = h - shift_k changing sign there (one
    scan serves every sigma_b^2 of a critical line).  ``evaluate(x, k)`` returns (g, dg/dt or None, floor,
    outputs) at the points x of the brackets k, from one array call of the moments; floor is the rounding
    level of g there (eps times the sizes of the terms g is the sum of).  Each bracket keeps its own state,
    as in Brent's method (Brent 1973, ch. 4; scipy's brentq): a sign-change bracket [a, b], the current point
    x, and a step: Newton's (``newton=True``, dg/dt from the same moment call) or the secant through the last
    two points (its first slope from the scan's cubic).  The step is taken if it lands inside the bracket and
    is less than half the step before last (Brent's test); otherwise the bracket is bisected, so the bracket
    never grows and a stalled interpolation costs a bisection, not a wrong answer.  A bracket is done when
    |g(x)| <= floor (g is 0 up to its rounding: a further step would follow noise), when it is narrower than
    2 delta, or when the next accepted step is below delta, with delta = (1e-15 + 4 eps |t|) / 2 (brentq's
    xtol and rtol, as called before): Newton and secant converge superlinearly, so that step bounds the error
    of x, and no round is spent on Brent's final step of delta.  From the scan's cubic this takes 2 rounds
    (Newton) or 3 to 4 (secant), and a handful more on rounding noise.  The root returned is the last point
    evaluated, so its outputs are exactly those at the returned q.

    Returns (t at each root, outputs at each root); ``fail(k, x)`` gives the ConvergenceError for the
    brackets k still open after ``_MAX_ITERATIONS`` rounds; ``done(k)`` is told the brackets k that have just
    converged.
    """
    n = i.size
    a, b, ga = t[i].copy(), t[i + 1].copy(), h[i] - shift
    x, slope = _initial_guess(t, h, shift, i)
    g, dg, floor, outputs = evaluate(x, np.arange(n))
    store = [np.array(v, dtype=float, copy=True) for v in outputs]
    if newton:
        slope = dg
    step_cur = b - a
    step_pre = step_cur.copy()
    active = np.ones(n, dtype=bool)
    for _ in range(_MAX_ITERATIONS):
        k = np.flatnonzero(active)
        xk, gk = x[k], g[k]
        left = np.sign(gk) == np.sign(ga[k])  # x replaces the end of the bracket with the same sign
        a[k], ga[k], b[k] = np.where(left, xk, a[k]), np.where(left, gk, ga[k]), np.where(left, b[k], xk)
        delta = 0.5 * (_XTOL + _RTOL * np.abs(xk))
        with np.errstate(all="ignore"):
            step = -gk / slope[k]
        bisect = 0.5 * (a[k] + b[k]) - xk
        # inside the bracket, ends included: a step below the spacing of doubles near x leaves x where it is
        accept = (np.isfinite(step) & (xk + step >= a[k]) & (xk + step <= b[k])
                  & (2 * np.abs(step) < np.abs(step_pre[k])))
        finished = ((np.abs(gk) <= floor[k]) | (b[k] - a[k] <= 2 * delta)
                    | (accept & (np.abs(step) <= delta)))
        step = np.where(accept, step, bisect)
        step_pre[k] = np.where(accept, step_cur[k], bisect)
        step_cur[k] = step
        active[k[finished]] = False
        if done is not None and finished.any():
            done(k[finished])
        k, step = k[~finished], step[~finished]
        if not k.size:
            return x, tuple(store)
        x_new = x[k] + step
        g_new, dg_new, floor[k], outputs = evaluate(x_new, k)
        with np.errstate(all="ignore"):
            slope[k] = dg_new if newton else (g_new - g[k]) / (x_new - x[k])
        x[k], g[k] = x_new, g_new
        for s, v in zip(store, outputs):
            s[k] = v
    raise fail(np.flatnonzero(active), x)


def _check_range(q_range: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in q_range)
    except (TypeError, ValueError):
        raise GainDeriveError(f"q_range must be two numbers (lo, hi) with 0 < lo < hi; got {q_range!r}") from None
    if not (0 < lo < hi and math.isfinite(hi)):
        raise GainDeriveError(f"q_range must satisfy 0 < lo < hi < inf; got ({lo:g}, {hi:g})")
    return lo, hi


def _check_variances(weight_variance: Any, bias_variance: Any) -> tuple[float, float]:
    def number(v, name):
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise GainDeriveError(f"{name} must be a number, got {v!r}") from None
        if isinstance(v, bool) or not math.isfinite(x):
            raise GainDeriveError(f"{name} must be a finite number, got {v!r}")
        return x

    sw, sb = number(weight_variance, "weight variance sigma_w^2"), number(bias_variance, "bias variance sigma_b^2")
    if sw <= 0:
        raise GainDeriveError(f"weight variance sigma_w^2 must be > 0; got {sw:g}")
    if sb < 0:
        raise GainDeriveError(f"bias variance sigma_b^2 must be >= 0; got {sb:g}")
    return sw, sb


def _act(activation: Any, params: dict) -> Activation:
    from .registry import activation as make_activation

    return make_activation(activation, **params)


def variance_map(activation: Any, variance: Any, weight_variance: float, bias_variance: float = 0.0,
                 **params: Any) -> Any:
    """V(q) = sigma_w^2 E[f(z)^2] + sigma_b^2 for z ~ N(0, q) (vectorised over q).

    >>> float(variance_map("relu", 3.0, 2.0))      # relu: E[f^2] = q/2, so sigma_w^2 = 2 preserves q
    3.0
    """
    from .moments import check_variance

    sw, sb = _check_variances(weight_variance, bias_variance)
    q = check_variance(variance)
    return (sw * _second_moment(_act(activation, params), q) + sb)[()]


def _fixed_point_rounds(act: Activation, sw: float, sb: float, q_range, scanned: tuple[str, ...],
                        names: tuple[str, ...]) -> list[tuple[np.ndarray, tuple[np.ndarray, ...]]]:
    """(log q*, (q*, err E f^2, E f'^2, E f f' z)) for the roots of V(q) - q: a scan of ``scanned``, then rounds."""
    q, (f2, *_) = _scan(act, q_range, scanned)
    with np.errstate(over="ignore"):  # sigma^2 near 1e308: an infinite gap is "variances grow", said below
        gap = sw * f2 + sb - q
    if np.all(np.abs(gap) <= _FLAT * q):
        raise GainDeriveError(f"every q in [{q[0]:g}, {q[-1]:g}] is a fixed point of {act.name}'s variance map at "
                              f"sigma_w^2 = {sw:g}, sigma_b^2 = {sb:g} (f is positively homogeneous and this is its "
                              "critical point): layer variances neither grow nor shrink")

    def evaluate(x: np.ndarray, k: np.ndarray):
        r = np.exp(x)
        f2, df2, ffz = _expectations(act, r, names)
        with np.errstate(over="ignore"):
            v = sw * f2.value + sb
            return v - r, sw * ffz.value - r, _ROUNDING * (v + r), (r, f2.error, df2.value, ffz.value)

    def fail(k: np.ndarray, x: np.ndarray) -> ConvergenceError:
        near = ", ".join(f"{math.exp(v):.6g}" for v in x[k[:3]])
        return _UnconvergedError(f"root finding for the fixed point of {act.name} at sigma_w^2 = {sw:g}, "
                                 f"sigma_b^2 = {sb:g} did not converge near q = {near} in {_MAX_ITERATIONS} rounds")

    t = np.log(q)
    results = []
    zeros = np.nonzero(gap == 0)[0]
    if zeros.size:  # a scan point that is a root already: only its moments are needed
        results.append((t[zeros], evaluate(t[zeros], zeros)[3]))
    brackets = _brackets(gap)
    if brackets.size:
        results.append(_solve(evaluate, t, gap, np.zeros(brackets.size), brackets, newton=True, fail=fail))
    return results


def fixed_points(activation: Any, weight_variance: float, bias_variance: float = 0.0, *,
                 q_range: tuple[float, float] = DEFAULT_RANGE, **params: Any) -> tuple[FixedPoint, ...]:
    """Every fixed point q* = V(q*) in ``q_range``, with its slope V'(q*) and chi_1.

    Raises GainDeriveError if every q in range is a fixed point (relu with
    sigma_w^2 = 2, sigma_b^2 = 0); returns () if there is none.

    One scan of E[f^2] brackets every root; all brackets are then refined together by safeguarded Newton
    steps in t = log q (:func:`_solve`), with g(t) = V(q) - q and dg/dt = sigma_w^2 E[f f' z] - q: each
    round is one quadrature call for E[f^2], E[f'^2] and E[f f' z] at the open brackets' points, and the last
    round's values give V'(q*) and chi_1.  ``error`` bounds |q* - true q*|: the error of V over |1 - V'(q*)|,
    plus the root finder's tolerance (1e-15 + 4 eps |log q*|) q*.
    """
    sw, sb = _check_variances(weight_variance, bias_variance)
    act = _act(activation, params)
    names = ("f^2", "f'^2", "f f' z")  # what the rounds need
    try:
        results = _fixed_point_rounds(act, sw, sb, q_range, ("f^2",), names)
    except (DivergenceError, ConvergenceError) as exc:
        if isinstance(exc, _UnconvergedError):
            raise
        # E[f'^2] or E[f f' z] can fail where E[f^2] does not (sigmoid's f f' z loses its digits near q = 1e5):
        # then search only the q where all three are computable, as the scan of all three finds them
        results = _fixed_point_rounds(act, sw, sb, q_range, names, names)
    out = []
    for x, (r, err, df2, ffz) in results:
        slope = sw * ffz / r
        error = ((sw * err + 4 * np.finfo(float).eps * r) / np.maximum(np.abs(1 - slope), 1e-300)
                 + (_XTOL + _RTOL * np.abs(x)) * r)
        out += [FixedPoint(*(float(v) for v in p)) for p in zip(r, error, slope, sw * df2)]
    return tuple(sorted(out, key=lambda p: p.variance))


def fixed_point(activation: Any, weight_variance: float, bias_variance: float = 0.0, *,
                q_range: tuple[float, float] = DEFAULT_RANGE, **params: Any) -> FixedPoint:
    """The stable fixed point q* of the variance map (Poole et al. 2016).

    >>> round(fixed_point("tanh", 1.5, 0.05).variance, 10)
    0.4180372005
    """
    sw, sb = _check_variances(weight_variance, bias_variance)
    points = fixed_points(activation, sw, sb, q_range=q_range, **params)
    stable = [p for p in points if p.stable]
    if len(stable) == 1:
        return stable[0]
    lo, hi = _check_range(q_range)
    name = activation if isinstance(activation, str) else activation.name
    where = f"{name} at sigma_w^2 = {sw:g}, sigma_b^2 = {sb:g}"
    if stable:
        shown = ", ".join(f"{p.variance:.6g}" for p in stable)
        raise GainDeriveError(f"{where} has {len(stable)} stable fixed points ({shown}); fixed_points() lists them")
    if points:
        shown = ", ".join(f"{p.variance:.6g} (slope {p.slope:.3g})" for p in points)
        raise GainDeriveError(f"{where} has no stable fixed point in [{lo:g}, {hi:g}], only unstable ones: {shown}")
    act = _act(activation, params)
    q, (f2, *_) = _scan(act, (lo, hi), ("f^2", "f'^2", "f f' z"))  # the q fixed_points could search
    trend = "shrink towards 0" if sw * f2[0] + sb < q[0] else f"grow beyond {q[-1]:g}"
    raise GainDeriveError(f"{where} has no fixed point in [{lo:g}, {q[-1]:g}]: layer variances {trend} "
                          "(widen q_range, or change sigma_w^2 or sigma_b^2)")


# ---------------------------------------------------------------- edge of chaos

def _critical(act: Activation, bias_variances: np.ndarray, q_range, progress=None) -> list[list[CriticalPoint]]:
    """Critical points for each sigma_b^2, from one scan of h(q) = q - E[f^2] / E[f'^2].

    Every sign change of h - sigma_b^2 on the scan, for every sigma_b^2, is one bracket, and all brackets are
    refined together (:func:`_solve`, secant steps in t = log q: dh/dq would need f'', which kinked f lack):
    each round is one quadrature call for E[f^2], E[f'^2] and E[f f' z] at the open brackets' points.
    """
    emitted = 0

    def once(done: int, total: int) -> None:  # a retry below must not report a sigma_b^2 twice
        nonlocal emitted
        if progress is not None and done > emitted:
            emitted = done
            progress(done, total)

    names = ("f^2", "f'^2", "f f' z")  # what the rounds need
    try:
        return _critical_rounds(act, bias_variances, q_range, ("f^2", "f'^2"), names, once)
    except (DivergenceError, ConvergenceError) as exc:
        if isinstance(exc, _UnconvergedError):
            raise
        # E[f f' z] can fail where E[f^2] and E[f'^2] do not: then search only the q where all three are
        # computable, as the scan of all three finds them
        return _critical_rounds(act, bias_variances, q_range, names, names, once)


def _critical_rounds(act: Activation, bias_variances: np.ndarray, q_range, scanned: tuple[str, ...],
                     names: tuple[str, ...], progress) -> list[list[CriticalPoint]]:
    """_critical's work: a scan of ``scanned``, then rounds of ``names`` (E f^2, E f'^2, E f f' z)."""
    total = len(bias_variances)
    q, (f2, df2, *_) = _scan(act, q_range, scanned)
    if np.any(df2 <= 0):
        raise GainDeriveError(f"E[f'(z)^2] = 0 for {act.name}: it has no edge of chaos")
    h = q - f2 / df2
    if np.all(np.abs(h) <= _FLAT * q):  # positively homogeneous: E[f^2] / E[f'^2] = q at every q
        out = []
        for sb in bias_variances:
            if sb != 0:
                raise GainDeriveError(f"{act.name} is positively homogeneous: with sigma_b^2 = {sb:g} > 0 it has no "
                                      "edge of chaos (at sigma_w^2 = 1/E[f'^2] the variance grows without bound)")
            out.append([CriticalPoint(float(1 / df2[0]), 0.0, None, None)])
            progress(len(out), total)
        return out

    t = np.log(q)
    zeros, owner_zero, brackets, owner = [], [], [], []
    for lo in range(0, total, 256):  # sign changes of h - sigma_b^2, 256 sigma_b^2 at a time (memory)
        y = h[None, :] - bias_variances[lo:lo + 256, None]
        sign = np.sign(y)
        j, z = np.nonzero(y == 0)
        owner_zero.append(j + lo), zeros.append(z)
        j, b = np.nonzero(sign[:, :-1] * sign[:, 1:] < 0)  # row-major: by sigma_b^2, then by q
        owner.append(j + lo), brackets.append(b)
    zeros, owner_zero = np.concatenate(zeros), np.concatenate(owner_zero)
    brackets, owner = np.concatenate(brackets), np.concatenate(owner)
    shift = bias_variances[owner]

    def evaluate(x: np.ndarray, k: np.ndarray, shift=shift):
        r = np.exp(x)
        f2, df2, ffz = (e.value for e in _expectations(act, r, names))
        ratio = f2 / df2
        return r - ratio - shift[k], None, _ROUNDING * (r + ratio + shift[k]), (r, df2, ffz)

    def fail(k: np.ndarray, x: np.ndarray) -> ConvergenceError:
        which = ", ".join(f"{bias_variances[owner[e]]:g} (near q = {math.exp(x[e]):.6g})" for e in k[:3])
        more = f" and {k.size - 3} more" if k.size > 3 else ""
        return _UnconvergedError(f"root finding for the edge of chaos of {act.name} did not converge in "
                                 f"{_MAX_ITERATIONS} rounds at sigma_b^2 = {which}{more}")

    reported = 0
    open_brackets = np.bincount(owner, minlength=total)

    def report(finished: np.ndarray | None = None) -> None:  # progress(done, total) once per sigma_b^2 finished
        nonlocal reported
        if finished is not None:
            np.subtract.at(open_brackets, owner[finished], 1)
        now = int(np.count_nonzero(open_brackets == 0))
        for done in range(reported + 1, now + 1):
            progress(done, total)
        reported = max(reported, now)

    points: list[list[CriticalPoint]] = [[] for _ in range(total)]
    results = []
    if zeros.size:  # a scan point that is a root already: only its moments are needed
        results.append((owner_zero, evaluate(t[zeros], np.arange(zeros.size), bias_variances[owner_zero])[3]))
    if brackets.size:
        results.append((owner, _solve(evaluate, t, h, shift, brackets, newton=False, fail=fail, done=report)[1]))
    for who, (r, df2, ffz) in results:
        for j, rj, dj, fj in zip(who, r, df2, ffz):
            points[j].append(CriticalPoint(float(1 / dj), float(bias_variances[j]), float(rj), float(fj / (dj * rj))))
    for j, sb in enumerate(bias_variances):
        points[j].sort(key=lambda p: p.variance)
        if not points[j] and sb == 0:
            points[j] = _trivial_limit(act)
    report()
    return points


def _trivial_limit(act: Activation) -> list[CriticalPoint]:
    """sigma_b^2 = 0 and q* -> 0: sigma_w^2 = 1 / f'(0)^2 when f(0) = 0 and f is smooth at 0."""
    import sympy as sp

    from .formula import X

    if any(abs(b) < 1e-300 for b in act.breakpoints):
        return []
    f0, df0 = (sp.N(e.subs(X, 0), 20) for e in (act.expression, act.derivative))
    if not (f0.is_number and df0.is_number) or f0 != 0 or df0 == 0 or not df0.is_finite:
        return []
    return [CriticalPoint(float(1 / df0**2), 0.0, 0.0, 1.0)]


def edge_of_chaos(activation: Any, bias_variance: float = 0.0, *, q_range: tuple[float, float] = DEFAULT_RANGE,
                  **params: Any) -> CriticalPoint:
    """The sigma_w^2 at which chi_1 = 1 for the given sigma_b^2 (Schoenholz et al. 2017).

    >>> edge_of_chaos("relu").weight_variance      # He et al.: sigma_w^2 = 2, sigma_b^2 = 0
    2.0
    """
    _check_variances(1.0, bias_variance)
    act = _act(activation, params)
    points = _critical(act, np.array([float(bias_variance)]), q_range)[0]
    if not points:
        raise GainDeriveError(f"{act.name} has no edge of chaos at sigma_b^2 = {float(bias_variance):g} with q* in "
                              f"[{q_range[0]:g}, {q_range[1]:g}]")
    if len(points) > 1:
        shown = ", ".join(f"sigma_w^2 = {p.weight_variance:.6g} (q* = {p.variance:.4g})" for p in points)
        warnings.warn(f"{act.name} has {len(points)} critical points at sigma_b^2 = {float(bias_variance):g}: "
                      f"{shown}; returning the first (critical_line lists all)", RuntimeWarning, stacklevel=2)
    return points[0]


def critical_line(activation: Any, bias_variances: Any, *, q_range: tuple[float, float] = DEFAULT_RANGE,
                  progress=None, **params: Any) -> list[CriticalPoint]:
    """The edge of chaos over a range of sigma_b^2: every critical point for each value, in order.

    At most ``limit("line")`` values (a :class:`gainderive.limits.LimitError` beyond, before any work).  All values
    are solved together from one scan (:func:`_critical`): 101 values of tanh take ~10 ms, 10,000 ~0.3 s.
    ``progress(done, total)`` is called once per value, as the values' roots converge (in rounds, so several
    calls can come together).
    """
    from .limits import check_size

    try:
        values = np.atleast_1d(np.asarray(bias_variances, dtype=float))
    except (TypeError, ValueError):
        raise GainDeriveError(f"bias variances must be real numbers, got {bias_variances!r}") from None
    if values.ndim != 1 or values.size == 0:
        raise GainDeriveError(f"bias variances must be a non-empty list of numbers, got shape {values.shape}")
    check_size("line", values.size, cost=f"about {values.size * 4e-5:.2g} s here")
    for sb in values:
        _check_variances(1.0, sb)
    act = _act(activation, params)
    return [p for points in _critical(act, values, q_range, progress) for p in points]


# ---------------------------------------------------------------- correlations, depth scales, isometry

def correlation_fixed_point(activation: Any, weight_variance: float, bias_variance: float = 0.0, *,
                            variance: float | None = None, **params: Any) -> tuple[float, float]:
    """(c*, chi_c): the stable fixed point of the correlation map at q* and its slope there.

    c = 1 is always a fixed point; it is the stable one when chi_1 <= 1.  In the
    chaotic phase the stable c* < 1 is bracketed on a grid of c and refined
    with Brent's method.  ``variance`` overrides q* (needed where every q is a
    fixed point).
    """
    from scipy.optimize import brentq

    from .correlation import kernel

    sw, sb = _check_variances(weight_variance, bias_variance)
    act = _act(activation, params)
    q = fixed_point(act, sw, sb).variance if variance is None else float(variance)
    chi1 = sw * float(_moments(act, q)[1])

    def cmap(c):
        return (sw * np.asarray(kernel(act, c, q).value) + sb) / q

    # chi_1 is computed at a q* that is itself rounded: at the edge of chaos chi_1 - 1 is rounding noise
    # (2e-16), which must not be read as the chaotic phase
    if chi1 <= 1 + 64 * np.finfo(float).eps:
        return 1.0, chi1
    grid = np.concatenate([np.linspace(-1, 0.99, 200), 1 - np.geomspace(1e-3, 1e-9, 13)])
    gap = cmap(grid) - grid
    candidates = []
    for i in np.nonzero(np.sign(gap[:-1]) * np.sign(gap[1:]) <= 0)[0]:
        if gap[i] == 0:
            candidates.append(float(grid[i]))
        elif gap[i + 1] != 0:
            c, info = brentq(lambda x: float(cmap(x)) - x, grid[i], grid[i + 1], xtol=1e-15, full_output=True,
                             disp=False)
            if not info.converged:
                raise ConvergenceError(f"the correlation fixed point did not converge near c = {grid[i]:.6g}")
            candidates.append(float(c))
    slopes = {c: sw * float(kernel(act, c, q, derivative=True).value) for c in sorted(set(candidates))}
    stable = [c for c, s in slopes.items() if abs(s) < 1]
    if not stable:
        raise ConvergenceError(f"no stable correlation fixed point below 1 found for {act.name} at sigma_w^2 = {sw:g}, "
                               f"sigma_b^2 = {sb:g} although chi_1 = {chi1:.6g} > 1")
    c = max(stable)  # the one inputs with positive correlation flow to
    return c, slopes[c]


def _check_depth(depth: Any) -> int:
    """``depth`` as an int if it is an integer >= 1 within the ``depth`` limit, else a one-line error."""
    from .limits import check_size

    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise GainDeriveError(f"depth must be an integer >= 1, got {depth!r}")
    return check_size("depth", int(depth))


def _power(log_value: float) -> float:
    """exp(log_value) without OverflowError: inf above the double range (0 below it, as exp gives)."""
    return math.inf if log_value > _LOG_MAX else math.exp(log_value)


_LOG_MAX = math.log(np.finfo(float).max)
_LOG_SAFE = 700.0  # |log x| below this: x, x^2 and their products with L stay normal doubles


def isometry(activation: Any, weight_variance: float, depth: int, *, variance: float, **params: Any) -> Isometry:
    """Mean and variance of the squared singular values of a depth-L Jacobian at input variance q.

    Pennington, Schoenholz & Ganguli 2017, eqs. for m_1 and sigma^2 of J J^T.  ``depth`` is an integer >= 1
    within the ``depth`` limit.  The powers are computed directly where they fit in a double and in logs where
    they do not (log mean = L log(sigma_w^2 mu_1), log variance = 2 log mean + log L + log(excess)), so a deep
    network gives inf (chaotic, sigma_w^2 mu_1 > 1) or 0 (ordered) where the value leaves the double range,
    never an OverflowError.
    """
    from .moments import check_variance

    sw, _ = _check_variances(weight_variance, 0.0)
    depth = _check_depth(depth)
    q = check_variance(variance)
    if np.ndim(q):
        raise GainDeriveError(f"isometry takes one variance q, got {np.size(q)}")
    _, mu1, _, mu2, _ = (float(v) for v in _moments(_act(activation, params), float(q)))
    excess = max(mu2 / mu1**2 - 1, 0.0) if mu1 > 0 else 0.0  # >= 0 by Jensen; a linear f gives 0 up to rounding
    per_layer = sw * mu1
    log_mean = depth * math.log(per_layer) if per_layer > 0 else -math.inf
    try:
        mean = per_layer**depth  # directly where it fits: exact for per_layer = 1 (relu at 2, the identity)
    except OverflowError:
        mean = math.inf

    def spread(factor: float) -> float:  # mean^2 L factor
        if factor == 0:
            return 0.0
        log_value = 2 * log_mean + math.log(depth) + math.log(factor)
        if abs(2 * log_mean) < _LOG_SAFE and abs(log_value) < _LOG_SAFE:
            return mean * mean * depth * factor
        return _power(log_value)

    return Isometry(depth, mu1, mu2, mean, spread(excess + 1), spread(excess))


def mean_field(activation: Any, weight_variance: float, bias_variance: float = 0.0, *, depth: int = 50,
               variance: float | None = None, q_range: tuple[float, float] = DEFAULT_RANGE, progress=None,
               **params: Any) -> MeanField:
    """q*, chi_1, c*, chi_c, the depth scales and the isometry diagnostics at (sigma_w^2, sigma_b^2).

    ``variance`` fixes q instead of solving for it (only meaningful where every q is a fixed point).
    ``progress(done, 3)`` is called after each stage: q*, c* (the slow one: root finding on the correlation
    kernel), the isometry diagnostics.
    """
    step = progress or (lambda done, total: None)
    sw, sb = _check_variances(weight_variance, bias_variance)
    depth = _check_depth(depth)
    act = _act(activation, params)
    if variance is None:
        fp = fixed_point(act, sw, sb, q_range=q_range)
    else:
        from .moments import check_variance

        q = float(check_variance(variance))
        _, df2, ffz, _, _ = (float(v) for v in _moments(act, q))
        fp = FixedPoint(q, 0.0, sw * ffz / q, sw * df2)
    step(1, 3)
    chi1 = fp.chi1
    phase = "critical" if abs(chi1 - 1) <= 1e-9 else ("ordered" if chi1 < 1 else "chaotic")
    c, chi_c = correlation_fixed_point(act, sw, sb, variance=fp.variance)
    step(2, 3)
    iso = isometry(act, sw, depth, variance=fp.variance)
    step(3, 3)
    return MeanField(sw, sb, fp, chi1, phase, c, chi_c, fp.depth_scale, _depth_scale(chi_c), iso)
