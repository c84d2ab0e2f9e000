r"""High-precision backend: mpmath tanh-sinh quadrature at any number of digits.

The same integral as the quadrature backend,
:math:`E[h(z)] = \int h(\sqrt q\,t)\,\varphi(t)\,dt`, split at the same
points: the breakpoints of f, the t-grid 0, ±2, ±5, ±9, and the cuts around
every feature of the integrand (:func:`gainderive.features.feature_cuts`, the
rule the quadrature backend uses), out to where \varphi falls below the working
precision.  Each interval is integrated by ``mpmath.quad`` (tanh-sinh, which
maps the half-infinite end intervals itself) at ``digits`` significant digits
plus guard digits.

``mpmath.quad`` stops when its error estimate falls below the working epsilon
*in absolute terms*, so an expectation of size 1e-151 (tanh's E[f'^2] at
q = 1e300) or 1e300 would come back with no correct digit or never converge.
A cheap low-degree pass first measures the size of each h_j, and the
integrand is divided by it: the tolerance becomes relative to the expectation.

The error reported is mpmath's own estimate, summed over intervals, floored at
10^(1-digits) E|h| (summed over intervals): a value that cancels to 0 (the mean
of an odd f) is only known to that absolute accuracy, whatever mpmath's
estimate of the truncation error says.  If the estimate exceeds 10^(-digits)
of the result the backend raises rather than return fewer digits than asked.

Slow (tens of milliseconds per interval at 40 digits) and exact in the sense
that matters: the reference the float64 backends are tested against.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import mpmath as mp

from ..errors import ConvergenceError, DivergenceError
from ..estimate import Estimate
from ..features import feature_cuts
from .quadrature import _T_GRID, TAIL

if TYPE_CHECKING:
    from ..integrand import Integrand

__all__ = ["integrate"]

_GUARD = 10
_FAR = mp.mpf(100)  # standard deviations: phi(100) = 1e-2173, so only super-Gaussian growth survives there
_SIZING_DEGREE = 3  # enough for the order of magnitude of each interval, at a few percent of the full cost


def _split_points(integrand: Integrand, s, dps: int):
    """Breakpoints, the t-grid and the feature cuts, in t, sorted, between -inf and inf."""
    # cuts beyond the t where phi(t) < 10^-dps carry nothing: the infinite end intervals cover them
    reach = max(mp.sqrt(2 * dps * mp.log(10)) + 1, mp.mpf(_T_GRID[-2]))
    points = {mp.mpf(0)}
    points.update(mp.mpf(g) * sign for g in _T_GRID if g < TAIL for sign in (1, -1))
    points.update(feature_cuts(getattr(integrand, "features", ()), s, reach))
    points.update(mp.mpf(b) / s for b in integrand.breakpoints)
    return [-mp.inf, *sorted(points), mp.inf]


def _one_variance(integrand: Integrand, q, digits: int) -> list[tuple[mp.mpf, mp.mpf]]:
    programs = integrand.mpmath_pieces(digits + _GUARD)
    s = mp.sqrt(q)
    cuts = [mp.mpf(b) for b in integrand.breakpoints]
    points = _split_points(integrand, s, digits + _GUARD)
    m = len(integrand.labels)
    intervals = []
    for lo, hi in zip(points, points[1:]):
        mid = (lo + hi) / 2 if mp.isfinite(lo) and mp.isfinite(hi) else (hi - 1 if mp.isfinite(hi) else lo + 1)
        intervals.append((lo, hi, programs[sum(1 for c in cuts if s * mid > c)]))

    def weighted_row(program, t, memo):
        # every h_j at once, remembered: the m integrals of an interval visit the same nodes
        row = memo.get(t)
        if row is None:
            density = mp.npdf(t)
            row = memo[t] = [v * density for v in program(s * t)]
        return row

    def integrate_interval(j, lo, hi, program, memo, size, degree):
        def integrand_j(t):
            value = weighted_row(program, t, memo)[j]
            if isinstance(value, mp.mpc) or not mp.isfinite(value):
                raise DivergenceError(
                    f"E[{integrand.labels[j]}] at q = {mp.nstr(q, 6)}: the integrand is not a finite real "
                    f"number at z = {mp.nstr(s * t, 8)}"
                )
            return value / size

        value, err = mp.quad(integrand_j, [lo, hi], error=True, maxdegree=degree)
        return value * size, err * size

    memos = [{} for _ in intervals]
    # the order of magnitude of each E[h_j], so that mpmath's absolute tolerance is relative to it
    sizes = []
    for j in range(m):
        rough = sum(abs(integrate_interval(j, lo, hi, program, memo, 1, _SIZING_DEGREE)[0])
                    for (lo, hi, program), memo in zip(intervals, memos))
        sizes.append(rough if rough > 0 and mp.isfinite(rough) else mp.mpf(1))
    totals = [mp.mpf(0)] * m
    errors = [mp.mpf(0)] * m
    scale = [mp.mpf(0)] * m
    for (lo, hi, program), memo in zip(intervals, memos):
        for j in range(m):
            value, err = integrate_interval(j, lo, hi, program, memo, sizes[j], 10)
            totals[j] += value
            errors[j] += err
            scale[j] += abs(value)
        memo.clear()
    # tanh-sinh maps the end intervals to finite ones and will sum a divergent integral to a huge finite
    # number: require |h phi| far out to be negligible against its size in the bulk of the Gaussian
    def weighted(t):
        return [abs(v) * mp.npdf(t) for v in programs[sum(1 for c in cuts if s * t > c)](s * t)]

    # its size where the Gaussian has mass: at every finite split point (breakpoints included) and beside them
    finite = [t for t in points if mp.isfinite(t)]
    probes = {t + d for t in finite for d in (-mp.mpf("1e-3"), mp.mpf("1e-3"))} | {mp.mpf(v) for v in (-1, 1)}
    bulk = [max(column) for column in zip(*(weighted(t) for t in probes))]
    for t in (-_FAR, _FAR):
        far = weighted(t)
        for j in range(m):
            if far[j] * _FAR > mp.mpf(10) ** (-digits) * bulk[j]:
                raise DivergenceError(
                    f"E[{integrand.labels[j]}] at q = {mp.nstr(q, 6)}: the integrand has not decayed at "
                    f"|z| = {mp.nstr(_FAR * s, 6)} ({int(_FAR)} standard deviations); the expectation diverges "
                    "or decays too slowly to be integrated reliably"
                )
    out = []
    for j in range(m):
        # relative to the value, or to 1e-5 of E|h| where the value cancels (an odd f has mean 0)
        if errors[j] > mp.mpf(10) ** (-digits) * max(abs(totals[j]), scale[j] * mp.mpf("1e-5")):
            raise ConvergenceError(
                f"E[{integrand.labels[j]}] at q = {mp.nstr(q, 6)} reached only an error of "
                f"{mp.nstr(errors[j], 3)} at {digits} digits: the integrand is probably singular"
            )
        # mpmath's estimate is of the truncation error only: the rounding of the interval sums at the working
        # precision is not in it, and it is all there is in a value that cancels to 0 (an odd f's mean).  And
        # its estimate extrapolates from the last two levels, which can under-report: erf's E[f^2] at q = 1e3
        # and 35 digits came out 3.4e-35 off with an estimate below 1e-36, its interval sums differing by
        # that much under two placements of the cuts.  Hence a floor of one digit less than asked.
        out.append((totals[j], max(errors[j], mp.mpf(10) ** (1 - digits) * scale[j])))
    return out


def integrate(integrand: Integrand, variance, *, digits: int = 40) -> tuple[Estimate, ...]:
    """E[h_j(z)] at ``digits`` significant digits for each h_j of ``integrand``.

    ``variance`` is one q or a sequence of them (mpmath numbers or decimal
    strings, so that q is exact at the working precision); values and errors
    are mpmath numbers (lists of them for a sequence).
    """
    scalar = not isinstance(variance, (list, tuple))
    qs = [variance] if scalar else list(variance)
    with mp.workdps(digits + _GUARD):
        rows = [_one_variance(integrand, mp.mpf(q), digits) for q in qs]
    out = []
    for j in range(len(integrand.labels)):
        values = [row[j][0] for row in rows]
        errors = [row[j][1] for row in rows]
        out.append(Estimate(values[0] if scalar else values, errors[0] if scalar else errors, "high_precision"))
    return tuple(out)
