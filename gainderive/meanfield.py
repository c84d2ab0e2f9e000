r"""Mean-field signal propagation: fixed points, the edge of chaos, depth scales, isometry.

A wide network with weights of variance sigma_w^2 / fan_in and biases of
variance sigma_b^2 maps the pre-activation variance of layer l to layer l+1 by
(Poole et al. 2016, NeurIPS; Schoenholz et al. 2017, ICLR)

.. math::  V(q) = \sigma_w^2\, E[f(z)^2] + \sigma_b^2, \qquad z \sim N(0, q),

and the correlation of two inputs, both at the fixed point q*, by

.. math::  C(c) = \bigl(\sigma_w^2\, E[f(u) f(v)] + \sigma_b^2\bigr) / q^*,
           \qquad \operatorname{corr}(u, v) = c .

* **Fixed point** q* = V(q*), found by bracketing (a log-spaced scan of
  V(q) - q, then Brent's method), never by bare iteration.  Its stability is
  the slope V'(q*) = sigma_w^2 E[f(z) f'(z) z] / q*  (from d/dq E[g(z)] =
  E[g'(z) z] / 2q, which needs f' only almost everywhere); |V'(q*)| < 1 is stable.
* chi_1 = sigma_w^2 E[f'(z)^2] at q*: the slope of C at c = 1 and the mean
  squared singular value of one layer's Jacobian.  chi_1 < 1 is the ordered
  phase (c* = 1), chi_1 > 1 the chaotic phase (c* < 1), chi_1 = 1 the edge of chaos.
* **Edge of chaos**: with sigma_w^2 = 1 / E[f'^2](q) the fixed-point equation
  becomes q - E[f^2](q) / E[f'^2](q) = sigma_b^2, a root-finding problem in q alone.
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

@lru_cache(maxsize=64)
def _integrand(act: Activation):
    from .formula import X
    from .integrand import DF, F, integrand

    return integrand(act, {"f^2": F**2, "f'^2": DF**2, "f f' z": F * DF * X, "f'^4": DF**4})


def _moments(act: Activation, q) -> tuple[np.ndarray, ...]:
    """(E f^2, E f'^2, E f f' z, E f'^4) and the error of E f^2, at every q (quadrature)."""
    from .backends import quadrature

    _require_derivative(act)
    f2, df2, ffz, df4 = quadrature.integrate(_integrand(act), np.asarray(q, dtype=float))
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


def _scan(act: Activation, q_range: tuple[float, float]) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """The moments on a log grid over q_range, cut short where they stop being computable.

    E.g. exp(x) overflows beyond q ~ 350, and sigmoid's f f' z loses its digits
    to rounding at q ~ 1e5: the scan then covers the q below, and messages say so.
    """
    lo, hi = _check_range(q_range)
    q = np.geomspace(lo, hi, _SCAN)
    try:
        return q, _moments(act, q)
    except (DivergenceError, ConvergenceError):
        ok = []
        for x in q:
            try:
                _moments(act, x)
            except (DivergenceError, ConvergenceError):
                break
            ok.append(x)
        if len(ok) < 2:
            raise
        q = np.array(ok)
        return q, _moments(act, q)


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


def _roots(x: np.ndarray, y: np.ndarray, func, what: str) -> list[float]:
    """Roots of func in log x, bracketed by sign changes of the scanned y, refined by Brent's method."""
    from scipy.optimize import brentq

    roots = [float(x[i]) for i in np.nonzero(y == 0)[0]]
    for i in np.nonzero(np.sign(y[:-1]) * np.sign(y[1:]) < 0)[0]:
        try:
            r, info = brentq(lambda t: func(math.exp(t)), math.log(x[i]), math.log(x[i + 1]), xtol=1e-15,
                             rtol=4 * np.finfo(float).eps, maxiter=200, full_output=True, disp=False)
        except (RuntimeError, ValueError) as exc:
            raise ConvergenceError(f"root finding for {what} failed near q = {x[i]:.6g}: {exc}") from None
        if not info.converged:
            raise ConvergenceError(f"root finding for {what} did not converge near q = {x[i]:.6g}")
        roots.append(math.exp(r))
    return sorted(roots)


def fixed_points(activation: Any, weight_variance: float, bias_variance: float = 0.0, *,
                 q_range: tuple[float, float] = DEFAULT_RANGE, **params: Any) -> tuple[FixedPoint, ...]:
    """Every fixed point q* = V(q*) in ``q_range``, with its slope V'(q*) and chi_1.

    Raises GainDeriveError if every q in range is a fixed point (relu with
    sigma_w^2 = 2, sigma_b^2 = 0); returns () if there is none.
    """
    sw, sb = _check_variances(weight_variance, bias_variance)
    act = _act(activation, params)
    q, (f2, _, _, _, _) = _scan(act, q_range)
    with np.errstate(over="ignore"):  # sigma^2 near 1e308: an infinite gap is "variances grow", said below
        gap = sw * f2 + sb - q
    if np.all(np.abs(gap) <= _FLAT * q):
        raise GainDeriveError(f"every q in [{q[0]:g}, {q[-1]:g}] is a fixed point of {act.name}'s variance map at "
                              f"sigma_w^2 = {sw:g}, sigma_b^2 = {sb:g} (f is positively homogeneous and this is its "
                              "critical point): layer variances neither grow nor shrink")

    def residual(x: float) -> float:
        return float(sw * _moments(act, x)[0] + sb - x)

    out = []
    for r in _roots(q, gap, residual, "the fixed point"):
        f2, df2, ffz, _, err = (float(v) for v in _moments(act, r))
        slope = sw * ffz / r
        error = (sw * err + 4 * np.finfo(float).eps * r) / max(abs(1 - slope), 1e-300)
        out.append(FixedPoint(r, error, slope, sw * df2))
    return tuple(out)


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
    q, (f2, *_) = _scan(act, (lo, hi))
    trend = "shrink towards 0" if sw * f2[0] + sb < q[0] else f"grow beyond {q[-1]:g}"
    raise GainDeriveError(f"{where} has no fixed point in [{lo:g}, {q[-1]:g}]: layer variances {trend} "
                          "(widen q_range, or change sigma_w^2 or sigma_b^2)")


# ---------------------------------------------------------------- edge of chaos

def _critical(act: Activation, bias_variances: np.ndarray, q_range, progress=None) -> list[list[CriticalPoint]]:
    """Critical points for each sigma_b^2, from one scan of h(q) = q - E[f^2] / E[f'^2]."""
    q, (f2, df2, _, _, _) = _scan(act, q_range)
    if np.any(df2 <= 0):
        raise GainDeriveError(f"E[f'(z)^2] = 0 for {act.name}: it has no edge of chaos")
    h = q - f2 / df2
    homogeneous = bool(np.all(np.abs(h) <= _FLAT * q))

    def gap(x: float, sb: float) -> float:
        a, b = _moments(act, x)[:2]
        return float(x - a / b - sb)

    out = []
    for sb in bias_variances:
        if homogeneous:
            if sb == 0:
                out.append([CriticalPoint(float(1 / df2[0]), 0.0, None, None)])
                continue
            raise GainDeriveError(f"{act.name} is positively homogeneous: with sigma_b^2 = {sb:g} > 0 it has no "
                                  "edge of chaos (at sigma_w^2 = 1/E[f'^2] the variance grows without bound)")
        points = []
        for r in _roots(q, h - sb, lambda x, sb=sb: gap(x, sb), "the edge of chaos"):
            _, df2r, ffzr, _, _ = (float(v) for v in _moments(act, r))
            points.append(CriticalPoint(1 / df2r, float(sb), r, ffzr / (df2r * r)))
        if not points and sb == 0:
            points = _trivial_limit(act)
        out.append(points)
        if progress is not None:
            progress(len(out), len(bias_variances))
    return out


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

    At most ``limit("line")`` values (a :class:`gainderive.limits.LimitError` beyond, before any work: each needs
    its own root finding, ~5 ms, so 10,000 take ~45 s);
    ``progress(done, total)`` is called after each value.
    """
    from .limits import check_size

    try:
        values = np.atleast_1d(np.asarray(bias_variances, dtype=float))
    except (TypeError, ValueError):
        raise GainDeriveError(f"bias variances must be real numbers, got {bias_variances!r}") from None
    if values.ndim != 1 or values.size == 0:
        raise GainDeriveError(f"bias variances must be a non-empty list of numbers, got shape {values.shape}")
    check_size("line", values.size, cost=f"about {values.size * 5e-3:.0f} s here")
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
