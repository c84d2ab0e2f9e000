r"""Small-variance backend: E[h(z)] from the Taylor series of h at z = 0.

For z ~ N(0, q) write z = \sqrt q\, t.  If h is analytic on each side of 0
(one piece across 0, or a breakpoint at 0 with a piece analytic up to it on
each side) with Taylor coefficients a_n^+ to the right and a_n^- to the left,

.. math::  E[h(z)] = \sum_n \bigl(a_n^+ + (-1)^n a_n^-\bigr) M_n\, q^{n/2},
           \qquad M_n = E[t^n; t > 0] = \frac{2^{n/2-1}\,\Gamma(\tfrac{n+1}{2})}{\sqrt\pi}

(the half-line moments of the standard normal; Abramowitz & Stegun 26.2.3 /
Winkelbauer 2012, "Moments and absolute moments of the normal distribution").
This is where quadrature fails: at q = 1e-20 the integrand (sigmoid(z) - 1/2)^2
is rounding noise in double precision, and ELU's mean is the difference of two
O(\sqrt q) halves that cancel to q/4.  Here the two sides are combined before
anything is rounded to a double, so nothing cancels in floating point.

The coefficients come from Taylor arithmetic (automatic differentiation to
order N = 24) run over the integrand's straight-line program, every operation
propagating a truncated power series with 50-digit mpmath coefficients
(Griewank & Walther 2008, "Evaluating Derivatives", ch. 13).  For double
precision they are exact, and unlike ``sympy.series`` (which did not finish
sigmoid's integrands to order 17 in 90 s) they take milliseconds.  The same
walk decides analyticity structurally: log, sqrt, a reciprocal or a
non-integer power of a series that vanishes at 0, or a condition, abs, sign,
max or min undecided at 0, means h is not analytic there and the series is not
used.  A stored program (the registry cache) carries its constants as doubles,
and the centred integrand (f - log 2)^2 with log 2 rounded is at q = 1e-300
all rounding: a cached integrand is expanded from the symbolic integrand it was
compiled from (:func:`coefficients`).

The reported error is the sum of

* truncation: ten times the tail \sum_{n>N} 2\rho^n M_n q^{n/2} of a geometric
  envelope |a_n^\pm| <= \rho^n fitted to the last half of the coefficients
  (and to the mismatch between h and its Taylor polynomial at a check point,
  which rejects the series if it does not represent h there);
* rounding: the running sums of the (sequential) summation and a few ulps of
  every term;
* the mass beyond the reach r = min(nearest other breakpoint, nearest narrow
  feature away from 0 less 8 widths, 1/(2\rho)),
  where h need not equal its series: for the polynomial, exact Gaussian tail
  bounds; for h itself, an exponential envelope C e^{a|z|} fitted to samples
  of |h| beyond r.  The series is used only where r >= 40\sqrt q (the same
  38.5-standard-deviation horizon as quadrature, whose truncation rests on the
  same assumption that h does not grow faster than the samples show).

It is used for a given q and h_j only where this error is within the
quadrature tolerance max(rtol |E h|, 100 eps E|h|).
"""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import mpmath as mp
import numpy as np

if TYPE_CHECKING:
    from ..integrand import Integrand

__all__ = ["ORDER", "Expansion", "coefficients", "expansion", "integrate"]

ORDER = 24  #: highest power of z kept
REACH = 40.0  #: the series is used only where the Taylor reach is >= REACH standard deviations
LARGEST_VARIANCE = 1e-2  #: above this q the series is never tried (quadrature is accurate there)
SAFETY = 10.0  #: factor on the fitted truncation envelope
_DIGITS = 50
_MAX_OPS = 4000  # programs larger than this are left to quadrature
_EPS = float(np.finfo(float).eps)
_U = _EPS / 2
_SUBNORMAL = 5e-324


class NotAnalyticError(ArithmeticError):
    """An operation whose result is not analytic at z = 0 (or that the Taylor arithmetic cannot expand)."""


@dataclass(frozen=True)
class Expansion:
    """What E[h_j] needs from the Taylor series of h_j at 0, as doubles.

    ``combined[j, n]`` is C_n = (a_n^+ + (-1)^n a_n^-) M_n rounded once from 50 digits and
    ``residual[j, n]`` the rounding C_n - float(C_n); ``absolute[j, n]`` is |a_n^+| + |a_n^-|
    (for the tail and E|h| bounds); ``rate[j]`` the envelope rho; ``reach[j]`` the radius r around 0
    within which h equals its series; ``tail[j, side]`` = (log C, a) of the envelope
    |h(z)| <= C e^{a (|z| - r)} beyond r (log C = -inf: nothing beyond r).
    """

    combined: np.ndarray
    residual: np.ndarray
    absolute: np.ndarray
    rate: np.ndarray
    reach: np.ndarray
    tail: np.ndarray  # (m, 2 sides, 2): log C, a


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def expansion(integrand: Integrand) -> Expansion | None:
    """The cached :class:`Expansion` of ``integrand``, or None where the series does not apply."""
    try:
        return _CACHE[integrand]
    except KeyError:
        pass
    except TypeError:  # not weak-referenceable: compute every time
        return _safe_expansion(integrand)
    found = _safe_expansion(integrand)
    _CACHE[integrand] = found
    return found


def _safe_expansion(integrand) -> Expansion | None:
    # whatever goes wrong here (a program that cannot be evaluated, an odd stored entry), quadrature still
    # runs and reports it in its own words
    try:
        return _expansion(integrand)
    except (ArithmeticError, ValueError, TypeError, LookupError, FloatingPointError):
        return None


def _programs(integrand):
    """Per piece, a program whose ``ops`` carry constants at 50 digits where the expressions are known."""
    if hasattr(integrand, "mpmath_pieces"):
        try:
            return integrand.mpmath_pieces(_DIGITS)
        except (ArithmeticError, TypeError, ValueError):
            pass
    return integrand.numpy_pieces


def _central_pieces(cuts: np.ndarray) -> tuple[int, int]:
    """(piece left of 0, piece right of 0): the same piece unless 0 is a breakpoint."""
    hit = np.nonzero(cuts == 0.0)[0]
    if hit.size:
        return int(hit[0]), int(hit[0]) + 1
    k = int(np.searchsorted(cuts, 0.0))
    return k, k


def coefficients(integrand) -> dict[str, list] | None:
    """The Taylor data of ``integrand`` at 0 as plain lists of doubles (JSON-able), or None if not analytic there.

    {"right": a_n^+, "left": a_n^-, "combined": C_n, "residual": C_n - float(C_n)}, each [j][n].  Every
    number is an mpmath value rounded once, so the data is the same on every machine: the registry cache can
    store it (an integrand with a ``taylor_coefficients`` attribute is not re-expanded), which also gives the
    cached programs' constants (f(0) = log 2 for softplus) their exact value rather than the double.
    """
    stored = getattr(integrand, "taylor_coefficients", None)
    if stored is not None:
        return stored or None  # {} stored for "not analytic at 0"
    if not hasattr(integrand, "mpmath_pieces"):  # a cached integrand stores its coefficients, or has none
        return None
    from ..budget import in_force

    cuts = np.asarray(integrand.breakpoints, dtype=float)
    left, right = _central_pieces(cuts)
    m = len(integrand.labels)
    try:
        programs = _programs(integrand)
        # a per-integrand deadline (gainderive.budget, series_seconds): past it the series is not used, and
        # quadrature answers at every q
        deadline = time.monotonic() + in_force().series_seconds
        with mp.workdps(_DIGITS):
            sides = [_taylor(programs[k], ORDER, deadline) for k in (right, left)]
            exact = [[(sides[0][j][n] + (-1) ** n * sides[1][j][n]) * _half_moment_mp(n) for n in range(ORDER + 1)]
                     for j in range(m)]
            data = {
                "right": [[float(c) for c in sides[0][j]] for j in range(m)],
                "left": [[float(c) for c in sides[1][j]] for j in range(m)],
                "combined": [[float(c) for c in row] for row in exact],
                "residual": [[float(c - mp.mpf(float(c))) for c in row] for row in exact],
            }
    except (NotAnalyticError, ArithmeticError, ValueError, TypeError, OverflowError, ZeroDivisionError):
        return None
    if not all(math.isfinite(c) for rows in data.values() for row in rows for c in row):
        return None
    return data


def _half_moment_mp(n: int):
    """M_n = E[t^n; t > 0] for t standard normal, at the working precision."""
    return mp.mpf(2) ** (mp.mpf(n) / 2 - 1) * mp.gamma(mp.mpf(n + 1) / 2) / mp.sqrt(mp.pi)


def _expansion(integrand) -> Expansion | None:
    data = coefficients(integrand)
    if data is None:
        return None
    cuts = np.asarray(integrand.breakpoints, dtype=float)
    left, right = _central_pieces(cuts)
    m = len(integrand.labels)
    sides = (np.array(data["right"]), np.array(data["left"]))
    combined, residual = np.array(data["combined"]), np.array(data["residual"])
    absolute = np.abs(sides[0]) + np.abs(sides[1])
    far = np.abs(cuts[cuts != 0.0])
    nearest = float(far.min()) if far.size else math.inf
    # a narrow feature away from 0 (the bump of x*exp(-1e8*(x - 0.3)**2)) hides in coefficients too small to
    # see: the series reaches only to where it starts, 8 widths before its centre
    features = _features(integrand)
    for c, w in features:
        if abs(c) > 8 * w:
            nearest = min(nearest, abs(c) - 8 * w)
    rate = np.zeros(m)
    n = np.arange(ORDER // 2, ORDER + 1)
    for j in range(m):
        late = absolute[j, ORDER // 2:]
        rate[j] = max((math.exp(math.log(c) / k) for c, k in zip(late, n) if c > 0), default=0.0)
    # the Taylor polynomial must reproduce h inside the reach; a mismatch widens the envelope (or disqualifies)
    for j in range(m):
        reach = min(nearest, 0.5 / rate[j] if rate[j] > 0 else math.inf)
        for s, (side, k) in enumerate(((1.0, right), (-1.0, left))):
            ok, rate[j] = _check(integrand.numpy_pieces[k], j, side, sides[s][j], rate[j], reach)
            if not ok:
                return None
    reach = np.minimum(nearest, np.where(rate > 0, 0.5 / np.where(rate > 0, rate, 1.0), math.inf))
    tail = np.full((m, 2, 2), -math.inf)
    tail[..., 1] = 0.0
    for j in range(m):
        if not math.isfinite(reach[j]):
            continue
        for s, side in enumerate((1.0, -1.0)):
            envelope = _envelope(integrand, cuts, features, j, side, float(reach[j]))
            if envelope is None:
                return None
            tail[j, s] = envelope
    return Expansion(combined, residual, absolute, rate, reach, tail)


def _check(program, j, side, coeffs, rate, reach) -> tuple[bool, float]:
    """Compare h with its Taylor polynomial at z = side * delta (delta = reach / 2, or 1/2 if unbounded)."""
    delta = 0.5 * reach if math.isfinite(reach) else 0.5
    z = side * delta
    with np.errstate(all="ignore"):
        value = float(np.asarray(program(np.array([z]))[j]).ravel()[0])
    polynomial = math.fsum(float(c) * z**n for n, c in enumerate(coeffs))
    scale = math.fsum(abs(float(c)) * delta**n for n, c in enumerate(coeffs))
    if not math.isfinite(value):
        return False, rate
    mismatch = abs(value - polynomial)
    allowed = 1e-12 * max(scale, abs(value)) + 16 * _EPS * scale
    if mismatch <= allowed:
        return True, rate
    # read the mismatch as the first omitted term: rho^(N+1) delta^(N+1) >= mismatch
    fitted = (mismatch / max(scale, 1e-300)) ** (1.0 / (ORDER + 1)) / delta
    if fitted * delta > 0.25:
        return False, rate  # not a convergent Taylor series at this scale: not analytic, or a bug
    return True, max(rate, fitted)


def _features(integrand) -> tuple[tuple[float, float], ...]:
    try:
        return tuple((float(c), float(w)) for c, w in getattr(integrand, "features", ()))
    except (TypeError, ValueError, ArithmeticError):
        return ()


def _envelope(integrand, cuts, features, j, side, reach) -> tuple[float, float] | None:
    """(log C, a) with |h_j(z)| <= C e^{a (|z| - reach)} at samples beyond the reach, or None if not finite.

    The samples: side * reach * 2^i, every breakpoint and feature (centre, centre +- width) on that side.
    """
    extra = [b for b in cuts if side * b > reach]
    extra += [c + d for c, w in features for d in (-w, 0.0, w) if side * (c + d) > reach]
    z = np.concatenate([side * reach * 2.0 ** np.arange(0, 12), np.array(extra, dtype=float)])
    z = z[np.argsort(np.abs(z))]
    pieces = np.searchsorted(cuts, z)
    values = np.empty(z.size)
    with np.errstate(all="ignore"):
        for k in np.unique(pieces):
            at = pieces == k
            values[at] = np.abs(np.asarray(integrand.numpy_pieces[k](z[at])[j], dtype=float))
    finite = np.isfinite(values)
    if not finite[np.abs(z) <= 8 * reach].all():
        return None
    last = int(np.argmin(finite)) if not finite.all() else z.size
    r, logs = np.abs(z[:last]), np.log(np.maximum(values[:last], 1e-300))
    with np.errstate(divide="ignore", invalid="ignore"):
        slopes = np.diff(logs) / np.diff(r)
    slopes = slopes[np.isfinite(slopes)]
    a = max(0.0, float(np.max(slopes))) if slopes.size else 0.0
    return float(np.max(logs - a * (r - reach))), a


def integrate(integrand: Integrand, q: np.ndarray, rtol: float):
    """Series values, errors and a mask of where they meet the tolerance, each (m, q.size); or None."""
    q = np.asarray(q, dtype=float)
    if not hasattr(integrand, "numpy_pieces") or not np.any((q > 0) & (q <= LARGEST_VARIANCE)):
        return None
    found = expansion(integrand)
    if found is None:
        return None
    # only the q where some h_j could pass the structural tests of _integrate (reach and rate against s) are worked
    # on: on a grid to 1e3 that is a few q, often none (tanh's rate allows q <~ 4e-4); the rest are not usable
    with np.errstate(invalid="ignore"):
        s = np.sqrt(np.where(q > 0, q, 0.0))
        candidates = (q > 0) & (q <= LARGEST_VARIANCE) & np.any(
            (found.reach[:, None] >= REACH * s) & (found.rate[:, None] * s <= 1 / (2 * REACH)), axis=0)
    if not candidates.any():
        return None
    if not candidates.all():
        m = found.combined.shape[0]
        value, error = np.zeros((m, q.size)), np.full((m, q.size), np.inf)
        usable = np.zeros((m, q.size), dtype=bool)
        value[:, candidates], error[:, candidates], usable[:, candidates] = _integrate(found, q[candidates], rtol)
        return value, error, usable
    return _integrate(found, q, rtol)


def _integrate(found: Expansion, q: np.ndarray, rtol: float):
    n = np.arange(ORDER + 1)[:, None]
    with np.errstate(all="ignore"):
        s = np.sqrt(q)
        powers = np.power(q[None, :], n / 2.0)  # q^(n/2): underflow to 0 is harmless, those terms are negligible
        terms = found.combined[:, :, None] * powers[None]
        # summed from the smallest term up, sequentially (accumulate does not reorder), so each addition
        # rounds once, by at most u |running sum|, and is exact where it adds 0 or adds to 0
        backwards = terms[:, ::-1]
        partial = np.add.accumulate(backwards, axis=1)
        value = partial[:, -1]
        inexact = (backwards[:, 1:] != 0) & (partial[:, :-1] != 0)
        summation = _U * np.sum(np.abs(partial[:, 1:]) * inexact, axis=1)
        # each term: the rounding of C_n (known exactly), and of q^(n/2) (pow, <= 1 ulp) times C_n (half an ulp)
        own = np.abs(found.residual[:, :, None]) * powers[None] + 3 * _U * np.abs(terms) * (n > 0)[None]
        rounding = 2 * (summation + own.sum(axis=1)) + 4 * (ORDER + 1) * _SUBNORMAL
        reach = found.reach[:, None]
        edge = reach / s  # T: the reach in standard deviations
        rho_s = found.rate[:, None] * s
        # tail of sum_{n>N} 2 rho^n M_n q^(n/2): ratio of successive terms <= rho sqrt(q) sqrt((n+2)/2) < 1/2
        first = 2 * rho_s ** (ORDER + 1) * _half_moment(ORDER + 1)
        truncation = SAFETY * 2 * first
        absolute = (found.absolute[:, :, None] * powers[None] * _half_moments()[None, :, None]).sum(axis=1)
        beyond = _polynomial_tail(found.absolute, q, edge) + _function_tail(found.tail, reach, q)
    error = rounding + truncation + beyond
    tol = np.maximum(rtol * np.abs(value), 100 * _EPS * absolute)
    usable = (q[None, :] > 0) & (q[None, :] <= LARGEST_VARIANCE) & (edge >= REACH) & (rho_s <= 1 / (2 * REACH))
    usable &= (error <= tol) & np.isfinite(value) & np.isfinite(error)
    return value, error, usable


def _half_moment(n: int) -> float:
    return 2.0 ** (n / 2 - 1) * math.gamma((n + 1) / 2) / math.sqrt(math.pi)


def _half_moments() -> np.ndarray:
    return np.array([_half_moment(n) for n in range(ORDER + 1)])


def _polynomial_tail(absolute: np.ndarray, q: np.ndarray, edge: np.ndarray) -> np.ndarray:
    """sum_n |a_n^±| q^(n/2) int_T^inf t^n phi(t) dt, with int_T^inf t^n phi <= phi(T) T^(n-1) / (1 - (n-1)/T^2)."""
    out = np.zeros(edge.shape)
    t = np.maximum(edge, REACH)  # where edge < REACH the series is not used; keep the formula finite
    log_phi = -0.5 * t * t - 0.5 * math.log(2 * math.pi)
    for n in range(ORDER + 1):
        c = absolute[:, n][:, None]
        with np.errstate(divide="ignore", under="ignore", over="ignore", invalid="ignore"):
            log_term = (np.log(c) + 0.5 * n * np.log(q)[None, :] + log_phi + (n - 1) * np.log(t)
                        - np.log1p(-(n - 1) / (t * t)))
            out += np.where(c > 0, np.exp(log_term), 0.0)
    return out


def _function_tail(tail: np.ndarray, reach: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Both sides of int_{|z|>r} C e^{a(|z| - r)} phi_q(z) dz = C e^{-a r + a^2 q/2} Phi_c((r - a q)/sqrt q)."""
    out = np.zeros((tail.shape[0], q.size))
    s = np.sqrt(q)[None, :]
    for side in range(2):
        log_c, a = tail[:, side, 0][:, None], tail[:, side, 1][:, None]
        with np.errstate(all="ignore"):
            x = (reach - a * q[None, :]) / s
            # Mills: Phi_c(x) <= phi(x) / x for x > 0; where x <= 1 use Phi_c <= 1 (the series is not used there)
            log_tail = np.where(x > 1, -0.5 * x * x - np.log(x) - 0.5 * math.log(2 * math.pi), 0.0)
            bound = np.exp(log_c - a * reach + 0.5 * a * a * q[None, :] + log_tail)
        out += np.where(np.isfinite(reach) & (log_c > -np.inf), bound, 0.0)
    return np.where(np.isnan(out), np.inf, out)


# -- Taylor arithmetic --------------------------------------------------------------------------------------
# A series is a list of ORDER + 1 mpf coefficients of z^0..z^N; a condition is a Python bool.


def _taylor(program, order: int, deadline: float) -> list[list[mp.mpf]]:
    """Taylor coefficients at z = 0 of every output of ``program`` (a straight-line program in one input)."""
    if len(program.ops) > _MAX_OPS:
        raise NotAnalyticError("program too large for the series")
    values: list = []
    for name, args in program.ops:
        if time.monotonic() > deadline:
            raise NotAnalyticError("Taylor arithmetic over its time budget")
        if name == "input":
            values.append(_variable(order))
        elif name == "const":
            c = args[0]
            values.append(c if isinstance(c, (bool, np.bool_)) else _constant(mp.mpf(c), order))
        else:
            rule = _RULES.get(name)
            if rule is None:
                raise NotAnalyticError(f"no Taylor rule for {name}")
            values.append(rule(*[values[i] for i in args]))
    out = []
    for k in program.outputs:
        v = values[k]
        if not isinstance(v, list) or not all(mp.isfinite(c) for c in v):
            raise NotAnalyticError("output is not a finite series")
        out.append(v)
    return out


def _constant(c, order: int) -> list:
    return [c] + [mp.mpf(0)] * order


def _variable(order: int) -> list:
    return [mp.mpf(0), mp.mpf(1)] + [mp.mpf(0)] * (order - 1)


def _series(u) -> list:
    if not isinstance(u, list):
        raise NotAnalyticError("a condition used as a number")
    return u


def _add(*args):
    args = [_series(a) for a in args]
    return [mp.fsum(c) for c in zip(*args)]


def _neg(u):
    return [-c for c in _series(u)]


def _mul2(u, v):
    n = len(u)
    return [mp.fsum(u[i] * v[k - i] for i in range(k + 1)) for k in range(n)]


def _mul(*args):
    out = _series(args[0])
    for a in args[1:]:
        out = _mul2(out, _series(a))
    return out


def _reciprocal(u):
    u = _series(u)
    if u[0] == 0:
        raise NotAnalyticError("reciprocal of a series vanishing at 0")
    out = [1 / u[0]]
    for k in range(1, len(u)):
        out.append(-mp.fsum(u[i] * out[k - i] for i in range(1, k + 1)) / u[0])
    return out


def _derivative(u):
    return [k * u[k] for k in range(1, len(u))] + [mp.mpf(0)]


def _antiderivative(value_at_0, g):
    """The series b with b(0) = value_at_0 and b' = g."""
    return [value_at_0] + [g[k - 1] / k for k in range(1, len(g))]


def _chain(value_at_0, derivative_of_outer, u):
    """b = F(u) from F(u(0)) and the series of F'(u): b' = F'(u) u'."""
    return _antiderivative(value_at_0, _mul2(derivative_of_outer, _derivative(u)))


def _exp(u):
    u = _series(u)
    out = [mp.exp(u[0])]
    for k in range(1, len(u)):
        out.append(mp.fsum(i * u[i] * out[k - i] for i in range(1, k + 1)) / k)
    return out


def _expm1(u):
    out = _exp(u)
    out[0] = mp.expm1(u[0])
    return out


def _log_from(u, value_at_0):
    if u[0] <= 0:
        raise NotAnalyticError("log of a series not positive at 0")
    return _chain(value_at_0, _reciprocal(u), u)


def _log(u):
    u = _series(u)
    return _log_from(u, mp.log(u[0]) if u[0] > 0 else mp.nan)


def _log1p(u):
    u = _series(u)
    one_plus = [u[0] + 1, *u[1:]]
    return _log_from(one_plus, mp.log1p(u[0]) if one_plus[0] > 0 else mp.nan)


def _sqrt(u):
    u = _series(u)
    if u[0] <= 0:
        raise NotAnalyticError("sqrt of a series not positive at 0")
    out = [mp.sqrt(u[0])]
    for k in range(1, len(u)):
        out.append((u[k] - mp.fsum(out[i] * out[k - i] for i in range(1, k))) / (2 * out[0]))
    return out


def _pow(u, v):
    u, v = _series(u), _series(v)
    if all(c == 0 for c in v[1:]):
        p = v[0]
        if mp.isint(p) and abs(p) <= 64:
            p = int(p)
            if p == 0:
                return _constant(mp.mpf(1), len(u) - 1)
            out = _constant(mp.mpf(1), len(u) - 1)
            base = u if p > 0 else _reciprocal(u)
            for _ in range(abs(p)):
                out = _mul2(out, base)
            return out
        if u[0] <= 0:
            raise NotAnalyticError("non-integer power of a series not positive at 0")
        return _exp([p * c for c in _log(u)])
    if u[0] <= 0:
        raise NotAnalyticError("variable power of a series not positive at 0")
    return _exp(_mul2(v, _log(u)))


def _sin_cos(u):
    u = _series(u)
    s, c = [mp.sin(u[0])], [mp.cos(u[0])]
    for k in range(1, len(u)):
        s.append(mp.fsum(i * u[i] * c[k - i] for i in range(1, k + 1)) / k)
        c.append(-mp.fsum(i * u[i] * s[k - i] for i in range(1, k + 1)) / k)
    return s, c


def _sinh(u):
    e, f = _exp(u), _exp(_neg(u))
    out = [(a - b) / 2 for a, b in zip(e, f)]
    out[0] = mp.sinh(_series(u)[0])
    return out


def _cosh(u):
    e, f = _exp(u), _exp(_neg(u))
    return [(a + b) / 2 for a, b in zip(e, f)]


def _tanh(u):
    u = _series(u)
    t = [mp.tanh(u[0])]
    w = [1 - t[0] * t[0]]  # 1 - tanh^2, built alongside: tanh' = (1 - tanh^2) u'
    for k in range(1, len(u)):
        t.append(mp.fsum(i * u[i] * w[k - i] for i in range(1, k + 1)) / k)
        w.append(-mp.fsum(t[i] * t[k - i] for i in range(k + 1)))
    return t


def _sigmoid(u):
    u = _series(u)
    out = [(1 + c) / 2 if k == 0 else c / 2 for k, c in enumerate(_tanh([c / 2 for c in u]))]
    out[0] = 1 / (1 + mp.exp(-u[0]))
    return out


def _softplus(u):
    u = _series(u)
    return _chain(mp.log1p(mp.exp(u[0])), _sigmoid(u), u)


def _gaussian(u, scale):
    """e^{-scale u^2}."""
    return _exp([-scale * c for c in _mul2(u, u)])


def _erf(u):
    u = _series(u)
    return _chain(mp.erf(u[0]), [2 / mp.sqrt(mp.pi) * c for c in _gaussian(u, 1)], u)


def _erfc(u):
    out = [-c for c in _erf(u)]
    out[0] = mp.erfc(_series(u)[0])
    return out


def _phi_cdf(u):
    u = _series(u)
    return _chain(mp.ncdf(u[0]), [c / mp.sqrt(2 * mp.pi) for c in _gaussian(u, mp.mpf(1) / 2)], u)


def _scaled_phi(c, b):
    c, b = _series(c), _series(b)
    return _mul2(_exp(_add(c, [x / 2 for x in _mul2(b, b)])), _phi_cdf(b))


def _atan(u):
    u = _series(u)
    return _chain(mp.atan(u[0]), _reciprocal(_add(_constant(mp.mpf(1), len(u) - 1), _mul2(u, u))), u)


def _asinh(u):
    u = _series(u)
    return _chain(mp.asinh(u[0]), _reciprocal(_sqrt(_add(_constant(mp.mpf(1), len(u) - 1), _mul2(u, u)))), u)


def _asin(u):
    u = _series(u)
    if abs(u[0]) >= 1:
        raise NotAnalyticError("asin at the end of its domain")
    return _chain(mp.asin(u[0]), _reciprocal(_sqrt(_add(_constant(mp.mpf(1), len(u) - 1), _neg(_mul2(u, u))))), u)


def _sign_at_0(u) -> int:
    u = _series(u)
    if u[0] != 0:
        return 1 if u[0] > 0 else -1
    if all(c == 0 for c in u):
        return 0
    raise NotAnalyticError("a kink or jump at 0 inside a piece")


def _abs(u):
    return _neg(u) if _sign_at_0(u) < 0 else _series(u)


def _step(negative, zero, positive):
    def step(u):
        return _constant(mp.mpf((negative, zero, positive)[_sign_at_0(u) + 1]), len(u) - 1)

    return step


def _extreme(largest: bool):
    def pick(*args):
        best = _series(args[0])
        for other in args[1:]:
            d = _sign_at_0(_add(_series(other), _neg(best)))
            if (d > 0) == largest and d != 0:
                best = other
        return best

    return pick


def _compare(decide):
    def compare(a, b):
        return decide(_sign_at_0(_add(_series(a), _neg(_series(b)))))

    return compare


def _select(*args):
    for cond, value in zip(args[0::2], args[1::2]):
        if not isinstance(cond, (bool, np.bool_)):
            raise NotAnalyticError("an undecided condition")
        if cond:
            return value
    raise NotAnalyticError("no branch of a piecewise expression holds at 0")


def _strict(decide):
    """A strict comparison: equal values at 0 mean the condition changes at 0, which is not analytic."""
    def inner(d):
        if d == 0:
            raise NotAnalyticError("a condition that changes at 0")
        return decide(d)

    return _compare(inner)


_RULES = {
    "exp": _exp,
    "expm1": _expm1,
    "log": _log,
    "log1p": _log1p,
    "sqrt": _sqrt,
    "square": lambda u: _mul2(_series(u), _series(u)),
    "reciprocal": _reciprocal,
    "pow": _pow,
    "add": _add,
    "mul": _mul,
    "neg": _neg,
    "sin": lambda u: _sin_cos(u)[0],
    "cos": lambda u: _sin_cos(u)[1],
    "sinh": _sinh,
    "cosh": _cosh,
    "tanh": _tanh,
    "sigmoid": _sigmoid,
    "softplus": _softplus,
    "erf": _erf,
    "erfc": _erfc,
    "Phi": _phi_cdf,
    "ScaledPhi": _scaled_phi,
    "atan": _atan,
    "asinh": _asinh,
    "asin": _asin,
    "Abs": _abs,
    "sign": _step(-1, 0, 1),
    "Heaviside": _step(0, mp.mpf(1) / 2, 1),
    "Max": _extreme(True),
    "Min": _extreme(False),
    "Piecewise": _select,
    "StrictGreaterThan": _strict(lambda d: d > 0),
    "StrictLessThan": _strict(lambda d: d < 0),
    "GreaterThan": _strict(lambda d: d >= 0),
    "LessThan": _strict(lambda d: d <= 0),
    "Equality": _strict(lambda d: False),
    "Unequality": _strict(lambda d: True),
    "And": lambda *a: all(_condition(c) for c in a),
    "Or": lambda *a: any(_condition(c) for c in a),
    "Not": lambda a: not _condition(a),
}


def _condition(c) -> bool:
    if not isinstance(c, (bool, np.bool_)):
        raise NotAnalyticError("a number used as a condition")
    return bool(c)
