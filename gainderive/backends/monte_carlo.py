r"""Monte Carlo backend: a cross-check that shares nothing with quadrature but f, its cuts and its feature points.

Every estimate uses antithetic pairs: a draw t >= 0 (in units of the standard
deviation, t = |z|/\sqrt q) is evaluated at both z = \sqrt q\,t and z = -\sqrt q\,t,
and y = (h(z) + h(-z))/2 is averaged.  y is an unbiased estimate of E[h] whose
variance is never larger than that of two independent draws, and is exactly
zero for odd h.

**Plain path** (no feature points, no cut other than z = 0): t = |x|, x ~ N(0, 1)
from numpy's PCG64 generator; the estimate is the mean of n/2 pair averages and
its standard error the sample standard deviation of y over \sqrt{n/2}.

**Stratified path** (any other integrand).  Plain sampling cannot see a feature
narrower than the sampling density resolves: for f = x + x\,e^{-10^8 (x - 1/2)^2}
one draw in ~10^4 lands where f' is large, so both the estimate and its standard
error are wrong in a typical run.  The half line t >= 0 is therefore cut into
strata [a_i, b_i): at |b|/\sqrt q for every breakpoint b of f (so each stratum
lies inside one piece on either side of 0), and at |c \pm w 2^k|/\sqrt q,
k = -2..6, for every feature (centre c, width w) of the integrand (a geometric
set that resolves the feature at its own scale).  Since every stratum lies in one
piece on each side, a chunk of draws calls one program per side on all its samples,
with no masks, concatenation or scatter: f with any number of breakpoints samples
at the speed of a single kink.  With p_i = P(a_i \le |t| < b_i)
and n_i pairs drawn from |t| restricted to the stratum,

.. math::

    \hat E[h] = \sum_i p_i \bar y_i, \qquad
    \mathrm{SE}^2 = \sum_i p_i^2 s_i^2 / n_i

(stratified sampling; A. B. Owen, *Monte Carlo theory, methods and examples*,
2013, ch. 8).  The p_i are computed to a few ulps, not as differences of
rounded CDF values: Q(a) - Q(b) with the upper tail Q(t) = \Phi(-t) (so tail
strata keep their digits), and for a *narrow* stratum (b - a)/2 \cdot b < 0.1
by 8-point Gauss-Legendre on p_i/2 = \phi(m) h \int_{-1}^{1} e^{-m h v - h^2 v^2/2} dv
(m, h the midpoint and half-width; the integrand is entire and varies by at most
e^{\pm 0.1}, so the rule is exact to rounding).

**Inside a stratum** (:class:`_Sampler`, :func:`_sample_stratum`) [a, b) is cut once
at its conditional quantiles e_k = Q^{-1}(Q(a) - (k/K)(Q(a) - Q(b))), k = 0..K
(upper-tail form, accurate far out), into K = R + 1 sub-intervals of probability
1/K, R = 256 (fewer when the stratum has fewer than 64 draws per sub-interval).
Draws come in rows of one per sub-interval: t is uniform in regular sub-interval k
(a 32-bit uniform, no table look-up and no special function: \Phi^{-1} costs more
than a normal draw) and carries the importance weight of the stratum's law against
the uniform, w = 2\phi(t) K \Delta_k / p_i (Owen 2013, ch. 9), exact whatever the
rounding of the e_k, so the estimate stays unbiased, and within e^{\pm 0.37} of 1;
the last sub-interval [e_R, b), where the density falls off fastest, is drawn by the
exact inverse CDF.  A narrow stratum, where \Phi^{-1} would resolve only a few ulps
of \Phi, is one uniform sub-interval, its weight within e^{\pm 0.1} of 1.  The
stratum's estimate is the mean over the K sub-intervals of their means, and its
variance \sum_k \hat\sigma_k^2 / (K^2 n_k), \hat\sigma_k^2 from the differences of
pairs of rows (no cancellation however little h varies inside a sub-interval): a
stratified estimate within each stratum, whose error bar is correspondingly
smaller than independent draws would give.  Allocation across strata: half of the
pairs are spread evenly over the strata (so a stratum of probability 10^{-5} inside a
feature is still sampled thousands of times), half in proportion to p_i; it depends
on nothing random, so the estimate is exactly unbiased.  Each variance in an array
is sampled from a fresh generator seeded with ``seed``, so its result does not
depend on the other variances in the batch.

**Paired evaluation.**  Where z and -z lie in the same piece (always, for f without
breakpoints), that piece's numpy program is evaluated at both at once
(:class:`gainderive.parity.Compiled`): an abstract interpretation of the program's operations
(:func:`gainderive.parity.node_parities`) proves nodes even or odd in z, which are computed once --
an odd output's pair average is exactly 0 and not summed at all, an even output's
is h(z) -- and Phi, sigmoid, erfc and softplus of an odd argument give both
f(u) and f(-u) from one special-function call, each to its own relative
precision.  Pieces are separate programs, so a piecewise f never inherits a
parity from a piece.  Programs run into preallocated, reused buffers.

Samples are processed in fixed-size chunks, so memory does not grow with the
sample count.  The progress callback is called after every chunk (a few
milliseconds of work), so a KeyboardInterrupt raised there or by Ctrl-C stops the
run within one chunk.  A chunk with a non-finite value is evaluated again by the
programs themselves, which re-evaluate an intermediate overflow in interval
arithmetic (:mod:`gainderive.evaluate`); a value still not finite, even of an odd
integrand, is a :class:`~gainderive.errors.DivergenceError`.

*Changed in issue #13:* the stratified path's draws for a given seed (rows of one
draw per sub-interval from 32-bit uniforms, where they were sub-intervals picked at
random), so its estimates for a fixed seed and sample count differ from earlier
versions within their error bars; they are as reproducible as before.  The plain
path's stream is unchanged (its values can differ in the last bits).

**Bounded before any work.**  ``samples`` must be an integer >= 4 and ``seed``
an integer >= 0 (:func:`check_seed`); the total number of evaluations, samples
times the number of variances, is checked against the ``samples`` limit of
:mod:`gainderive.limits` before the first draw (:func:`check_samples`), and a
refusal states how long the run would take, from the rate measured in two
short runs of this very integrand (80-230 million evaluations a second on one
core of the 2-core reference machine, so 10^13 samples would take about a day).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DivergenceError, GainDeriveError
from ..estimate import Estimate

# the parity analysis and the paired evaluation live in gainderive.parity (shared with quadrature)
from ..parity import EVEN, ODD, output_parities
from ..parity import compiled as _compiled

if TYPE_CHECKING:
    from ..integrand import Integrand

__all__ = ["DEFAULT_SAMPLES", "FEATURE_SCALES", "Strata", "check_samples", "check_seed", "integrate", "stratify"]

DEFAULT_SAMPLES = 2**21
_CHUNK = 16384  # draws per chunk (x2 evaluations): large enough to amortise the calls, small enough for cache

#: Multiples of a feature's width at which strata are cut on either side of its centre (2^-2 .. 2^6).
FEATURE_SCALES = 2.0 ** np.arange(-2, 7)
# Feature cuts beyond |t| = 12 are dropped: P(|t| > 12) = 3.5e-33 is below every double result's resolution.
_FEATURE_REACH = 12.0
# Breakpoint cuts beyond |t| = 37 are dropped: P(|t| > 37) = 1.1e-299, and farther out it leaves the normal range.
_BREAKPOINT_REACH = 37.0
# A stratum is narrow when h * b < 0.1: phi varies across it by at most e^{+-0.1}.
_NARROW = 0.1
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(8)
_INV_SQRT_2PI = 0.3989422804014327  # 1/sqrt(2 pi)


@dataclass(frozen=True)
class Strata:
    r"""Strata of t = |z|/\sqrt q on [0, \infty): [lower_i, upper_i) with P(lower_i <= |t| < upper_i) = probability_i.

    ``narrow_sum`` is the Gauss-Legendre sum G_i of a narrow stratum (NaN for the others), which both
    its probability and its importance weights use.
    """

    lower: np.ndarray
    upper: np.ndarray
    probability: np.ndarray
    narrow_sum: np.ndarray

    @property
    def narrow(self) -> np.ndarray:
        return ~np.isnan(self.narrow_sum)


def stratify(integrand: Integrand, variance: float) -> Strata:
    """The strata of |t| for one variance q: cut at f's breakpoints and around each feature point."""
    from scipy.special import ndtr

    s = float(np.sqrt(variance))
    with np.errstate(all="ignore"):  # q at the ends of the double range: cuts overflow to inf or underflow to 0
        breakpoints = np.abs(np.asarray(integrand.breakpoints, dtype=float)) / s
        breakpoints = breakpoints[breakpoints <= _BREAKPOINT_REACH]
        around = [
            np.abs(centre + width * np.concatenate([-FEATURE_SCALES, FEATURE_SCALES])) / s
            for centre, width in _features(integrand)
        ]
    feature_cuts = np.concatenate(around) if around else np.empty(0)
    feature_cuts = feature_cuts[feature_cuts <= _FEATURE_REACH]
    cuts = np.concatenate([breakpoints, feature_cuts])
    edges = np.unique(np.concatenate([[0.0], cuts[(cuts > 0) & np.isfinite(cuts)], [np.inf]]))
    lower, upper = edges[:-1], edges[1:]
    upper_tail = ndtr(-edges)  # Q(t) = Phi(-t): full relative precision for t > 0
    probability = 2.0 * (upper_tail[:-1] - upper_tail[1:])
    half = 0.5 * (upper - lower)
    narrow = np.isfinite(upper) & (half * upper < _NARROW)
    narrow_sum = np.full(lower.shape, np.nan)
    if narrow.any():
        h, mid = half[narrow], 0.5 * (lower[narrow] + upper[narrow])
        v = _GL_NODES[None, :]
        g = np.exp(-(mid * h)[:, None] * v - 0.5 * (h * h)[:, None] * v * v) @ _GL_WEIGHTS
        narrow_sum[narrow] = g
        probability[narrow] = 2.0 * _INV_SQRT_2PI * np.exp(-0.5 * mid * mid) * h * g
    keep = probability > 0  # a stratum whose probability underflows contributes nothing representable
    return Strata(lower[keep], upper[keep], probability[keep], narrow_sum[keep])


def _features(integrand: Integrand) -> list[tuple[float, float]]:
    """The integrand's (centre, width) feature points in z with a finite centre and a finite width > 0."""
    out = []
    for centre, width in getattr(integrand, "features", ()):
        centre, width = float(centre), float(width)
        if np.isfinite(centre) and np.isfinite(width) and width > 0:
            out.append((centre, width))
    return out


def _allocate(probability: np.ndarray, pairs: int) -> np.ndarray:
    """Pairs per stratum: half the budget evenly, half in proportion to p_i; at least 2 each, summing to ``pairs``."""
    k = probability.size
    if pairs < 2 * k:
        raise GainDeriveError(
            f"samples must be at least {4 * k} for this integrand (its {k} strata need two antithetic pairs each), "
            f"got {2 * pairs}"
        )
    exact = pairs * (0.5 / k + 0.5 * probability / probability.sum())
    n = np.floor(exact).astype(np.int64)
    short = pairs - int(n.sum())  # 0 <= short < k, unless rounding of the shares made it -1
    if short > 0:
        n[np.argsort(exact - n, kind="stable")[::-1][:short]] += 1  # largest remainders first
    elif short < 0:
        n[np.argsort(n, kind="stable")[::-1][:-short]] -= 1
    while (n < 2).any():  # only when the even share is below 2: move pairs from the largest strata
        i, j = int(np.argmin(n)), int(np.argmax(n))
        n[i] += 1
        n[j] -= 1
    return n


def _shifted_sums(y: np.ndarray, shift: np.ndarray, labels) -> tuple[np.ndarray, np.ndarray]:
    """Sums of (y - shift) and its square over the samples (axis 1), shifted in place; refuses non-finite ones.

    The shift (the first chunk's mean) keeps the variance from cancelling when E[h] is large against its spread.
    """
    with np.errstate(all="ignore"):  # a non-finite sample is refused just below
        y -= shift[:, None]
        total = np.add.reduce(y, axis=1)
        square = np.einsum("jn...,jn...->j...", y, y)  # not BLAS's dot: its threads contend on a loaded machine
    if not all(map(math.isfinite, total.ravel().tolist() + square.ravel().tolist())):  # cheaper than ufuncs
        _check_finite(total, square, labels)
    return total, square


def _check_finite(chunk_total: np.ndarray, chunk_square: np.ndarray, labels: tuple[str, ...]) -> None:
    """Refuse a chunk with an inf or NaN sample (its sum is then not finite) or whose squares overflow."""
    bad = ~(np.isfinite(chunk_total) & np.isfinite(chunk_square))
    if bad.any():
        j = int(np.nonzero(bad.reshape(len(labels), -1).any(axis=1))[0][0])
        raise DivergenceError(
            f"E[{labels[j]}]: a sample of the integrand is not finite (overflow or undefined); "
            "the expectation diverges or leaves the double range"
        )


def _pair_sums(integrand: Integrand, z: np.ndarray) -> np.ndarray:
    """h_j(z) + h_j(-z) for every h_j on the plain path: f smooth, or with a kink at 0 only."""
    cuts = integrand.breakpoints
    programs = integrand.numpy_pieces
    y = np.empty((len(integrand.labels), *z.shape))
    with np.errstate(all="ignore"):
        if not cuts:
            odd_total = 0.0
            for j, (parity, hp, hm) in enumerate(_compiled(programs[0], "paired")(z)):
                if parity == ODD:  # the pair sums to 0 exactly; a non-finite value is still refused below
                    odd_total += np.sum(hp)
                    y[j] = 0.0
                elif parity == EVEN:
                    np.add(hp, hp, out=y[j])
                else:
                    np.add(hp, hm, out=y[j])
            plus_program = minus_program = programs[0]
            at = z
        elif cuts == (0.0,):
            # a kink at 0 only: of each pair (z, -z) one sample lies on each side, so no masks are needed
            odd_total = 0.0
            at = np.abs(z)
            negated = -at
            plus_program, minus_program = programs[1], programs[0]
            for j, ((_, hp, _), (_, hm, _)) in enumerate(zip(_compiled(plus_program, "plus")(at),
                                                          _compiled(minus_program, "minus")(negated))):
                np.add(hp, hm, out=y[j])
        else:  # other breakpoints are cut into strata (_integrate_strata), each inside one piece per side
            raise AssertionError(f"breakpoints {cuts} belong on the stratified path")
        if np.isfinite(odd_total) and np.isfinite(np.sum(y)):
            return y
        # a non-finite value: the programs' own evaluation, which rescues intermediate overflow
        parities = _compiled(programs[0], "paired").output_parity if not cuts else (None,) * len(y)
        for j, (hp, hm) in enumerate(zip(plus_program(at), minus_program(-at))):
            np.add(hp, hm, out=y[j])
            if parities[j] == ODD and np.isfinite(np.sum(y[j])):
                y[j] = 0.0
        return y


def check_seed(seed) -> int:
    """``seed`` as an int if it is an integer >= 0 (what numpy's generators accept), else GainDeriveError."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise GainDeriveError(f"seed must be an integer >= 0, got {seed!r}")
    return int(seed)


# Evaluations per second assumed when no integrand is at hand to time: below the slowest registry rate measured
# on the reference machine (sin, 8e7/s; relu 1.5e8/s; a user formula can be slower), so it errs long, not short.
_NOMINAL_RATE = 5e7


def check_samples(samples, variances: int = 1, integrand: Integrand | None = None, variance: float = 1.0) -> int:
    """``samples`` as an int if it is an integer >= 4 within the ``samples`` limit, else a one-line error.

    The limit applies to the total evaluations, ``samples`` per variance times ``variances``.  When it is
    exceeded the message estimates the run time from the sampling rate of ``integrand`` at ``variance``
    measured on short runs (tens of ms), or from a conservative nominal rate without an integrand.
    """
    from ..limits import check_size, limit

    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 4:
        raise GainDeriveError(f"samples must be an integer >= 4, got {samples!r}")
    samples = int(samples)
    total = samples * int(variances)
    if total > limit("samples"):
        overhead, rate = _measured_cost(integrand, variance) if integrand is not None else (0.0, _NOMINAL_RATE)
        seconds = int(variances) * (overhead + samples / rate)
        each = f"{int(variances):,} variances x {samples:,} samples, " if variances > 1 else ""
        check_size("samples", total, cost=f"{each}about {_duration(seconds)} here at {rate:.2g} evaluations/s")
    return samples


def _measured_cost(integrand: Integrand, variance: float) -> tuple[float, float]:
    """(seconds per variance, evaluations per second) of this very integrand, from two short real runs.

    t(n) = overhead + n / rate per variance; runs of 4 and 20 chunks (the fastest of three each, so that a
    pause of a loaded machine does not pass for speed) give the marginal rate and the overhead (the strata
    set-up), a few tens of milliseconds in all.  Should the two still not order (t_large <= t_small), the
    rate is the large run's own, overhead included: it errs long, not short.
    """
    def run(n: int) -> float:
        start = time.perf_counter()
        if _features(integrand) or integrand.breakpoints not in ((), (0.0,)):
            _integrate_strata(integrand, variance, n, 0, None)
        else:
            _integrate_plain(integrand, variance, n, 0, None)
        return time.perf_counter() - start

    small, large = 4 * _CHUNK, 20 * _CHUNK
    try:
        run(small)  # warm-up: first calls of the numpy programs
        t_small = min(run(small) for _ in range(3))
        t_large = min(run(large) for _ in range(3))
    except GainDeriveError:  # e.g. more strata than a short run can fill: the nominal rate, no overhead
        return 0.0, _NOMINAL_RATE
    if t_large <= t_small:
        return 0.0, large / max(t_large, 1e-9)
    rate = (large - small) / (t_large - t_small)
    return max(t_small - small / rate, 0.0), rate


def _duration(seconds: float) -> str:
    """A rough human duration: '40 seconds', '3.2 hours', '26 days'."""
    for unit, size in (("years", 365.25 * 86400), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.2g} {unit}"
    return f"{seconds:.2g} seconds"


def integrate(
    integrand: Integrand,
    variance,
    *,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Estimate, ...]:
    """Monte Carlo estimates of E[h_j(z)], z ~ N(0, q), with one standard error each.

    ``samples`` counts evaluations of h per variance (two per draw: z and -z); at least 4, and at
    least 4 per stratum when the integrand is stratified; samples times the number of variances is
    within the ``samples`` limit (:func:`check_samples`).  ``seed`` is an integer >= 0.
    ``progress(done, total)`` is called after each chunk if given, counting evaluations.
    """
    seed = check_seed(seed)
    first = float(np.ravel(np.asarray(variance, dtype=float))[0]) if np.size(variance) else 1.0
    samples = check_samples(samples, int(np.size(variance)), integrand, first)
    if _features(integrand) or integrand.breakpoints not in ((), (0.0,)):
        found = _integrate_strata(integrand, variance, samples, seed, progress)
    else:
        found = _integrate_plain(integrand, variance, samples, seed, progress)
    floor = _rounding_floor(integrand, np.asarray(variance, dtype=float))
    if not integrand.breakpoints:  # an output proven odd is exactly 0: E[h] = 0 by symmetry, with nothing to round
        floor[[parity == ODD for parity in output_parities(integrand.numpy_pieces[0])]] = 0.0
    return tuple(Estimate(e.value, np.maximum(e.error, floor[j].reshape(np.shape(e.error)))[()], e.method)
                 for j, e in enumerate(found))


#: Gauss-Hermite nodes and weights for E[g(x)], x ~ N(0, 1): only the size of E|h| is wanted (a floor's scale)
_PROBE_NODES = 40
_PROBE_Q_CHUNK = 4096


def _rounding_floor(integrand: Integrand, q: np.ndarray) -> np.ndarray:
    """(m, q.size): 8 eps E|h_j| at each q, the rounding every sample of h carries, as a floor under the bar.

    The spread of the samples cannot show a rounding that every pair shares: GELU at q = 1e-40 has
    f(z) = z Phi(z) with Phi(z) rounding to exactly 1/2, so every pair averages to 0 and the standard error is 0,
    for a true E f of 4e-41.  E|h| comes from a fixed 40-node Gauss-Hermite rule (deterministic, a few hundred
    evaluations per q); the quadrature backend's rounding floor is likewise a multiple of eps E|h|.
    """
    x, w = np.polynomial.hermite_e.hermegauss(_PROBE_NODES)
    w = w / np.sqrt(2 * np.pi)
    cuts = np.asarray(integrand.breakpoints, dtype=float)
    programs = integrand.numpy_pieces
    flat = q.ravel()
    floor = np.zeros((len(integrand.labels), flat.size))
    with np.errstate(all="ignore"):
        for lo in range(0, flat.size, _PROBE_Q_CHUNK):
            z = np.sqrt(flat[lo:lo + _PROBE_Q_CHUNK])[:, None] * x[None, :]
            piece = np.searchsorted(cuts, z, side="right")
            size = np.zeros((len(integrand.labels), *z.shape))
            for k, program in enumerate(programs):
                inside = piece == k
                if inside.any():
                    for j, h in enumerate(program(z[inside])):
                        size[j][inside] = np.abs(h)
            size[~np.isfinite(size)] = 0.0  # a far node that overflows: the samples decide divergence, not this
            floor[:, lo:lo + _PROBE_Q_CHUNK] = 8 * np.finfo(float).eps * (size @ w)
    return floor


def _integrate_plain(integrand, variance, samples, seed, progress) -> tuple[Estimate, ...]:
    """Antithetic pairs (x, -x), x ~ N(0, 1), shared by every variance in the array."""
    q = np.asarray(variance, dtype=float)
    shape = q.shape
    s = np.sqrt(q.ravel())
    m = len(integrand.labels)
    pairs = samples // 2
    per_chunk = max(1, _CHUNK // s.size)
    rng = np.random.default_rng(seed)
    x = np.empty(per_chunk)
    shift = None
    total = np.zeros((m, s.size))
    square = np.zeros((m, s.size))
    done = 0
    while done < pairs:
        n = min(per_chunk, pairs - done)
        rng.standard_normal(out=x[:n])
        y = _pair_sums(integrand, x[:n, None] * s)  # twice the pair averages; halved at the end
        if shift is None:
            shift = y.mean(axis=1)
        chunk_total, chunk_square = _shifted_sums(y, shift, integrand.labels)
        total += chunk_total
        square += chunk_square
        done += n
        if progress is not None:
            progress(2 * done, 2 * pairs)
    mean = total / pairs
    var = np.maximum(square - pairs * mean * mean, 0.0) / max(pairs - 1, 1)
    stderr = 0.5 * np.sqrt(var / pairs)
    value = 0.5 * (mean + shift)
    return tuple(
        Estimate(value[j].reshape(shape)[()], stderr[j].reshape(shape)[()], "monte_carlo") for j in range(m)
    )


def _integrate_strata(integrand, variance, samples, seed, progress) -> tuple[Estimate, ...]:
    """Stratified antithetic sampling, one variance at a time (the strata depend on q)."""
    q = np.asarray(variance, dtype=float)
    pairs = samples // 2
    m = len(integrand.labels)
    value = np.empty((m, q.size))
    stderr = np.empty((m, q.size))
    counter = _Progress(progress, 2 * pairs * q.size)
    for i, qi in enumerate(q.ravel()):
        value[:, i], stderr[:, i] = _stratified(integrand, float(qi), pairs, seed, counter)
    return tuple(
        Estimate(value[j].reshape(q.shape)[()], stderr[j].reshape(q.shape)[()], "monte_carlo") for j in range(m)
    )


class _Progress:
    """Evaluations done so far across all variances, reported after each chunk."""

    def __init__(self, callback: Callable[[int, int], None] | None, total: int):
        self.callback, self.total, self.done = callback, total, 0

    def add(self, pairs: int) -> None:
        self.done += 2 * pairs
        if self.callback is not None:
            self.callback(self.done, self.total)


def _stratified(integrand, q: float, pairs: int, seed, counter: _Progress) -> tuple[np.ndarray, np.ndarray]:
    """(values, standard errors) of every E[h_j] at one variance q."""
    strata = stratify(integrand, q)
    counts = _allocate(strata.probability, pairs)
    rng = np.random.default_rng(seed)
    s = float(np.sqrt(q))
    m = len(integrand.labels)
    cuts = np.asarray(integrand.breakpoints, dtype=float)
    domains = np.concatenate([[-np.inf], cuts, [np.inf]])
    programs = integrand.numpy_pieces
    means = np.empty((m, counts.size))
    variances = np.empty((m, counts.size))  # of each stratum's mean
    buffers = _Buffers(min(_CHUNK, int(counts.max())), m)
    for i, (a, b, n_i) in enumerate(zip(strata.lower, strata.upper, counts)):
        # each stratum lies inside one piece on each side of 0: find it from an interior point
        inside = a + 0.5 * min(b - a, 1.0)
        plus, minus = (int(np.searchsorted(cuts, side * inside * s)) for side in (1.0, -1.0))
        if plus == minus:  # z and -z in one piece: its program evaluated at both at once (_Compiled)
            lo, hi = max(domains[plus], -domains[plus + 1]), min(domains[plus + 1], -domains[plus])
            side = _Side(_compiled(programs[plus], "paired"), None, (lo, hi), None, s, integrand.labels)
        else:
            side = _Side(_compiled(programs[plus], "plus"), _compiled(programs[minus], "minus"),
                         (domains[plus], domains[plus + 1]), (domains[minus], domains[minus + 1]), s,
                         integrand.labels)
        sampler = _Sampler(a, b, strata.probability[i], bool(strata.narrow[i]), int(n_i))
        means[:, i], variances[:, i] = _sample_stratum(side, sampler, int(n_i), rng, buffers, counter)
    p = strata.probability
    return means @ p, np.sqrt(variances @ (p * p))


class _Side:
    """What a stratum evaluates: one paired program (``minus`` None) or a program per side of 0, with the
    piece each sample must stay in (rounding of t*sqrt(q) may put it a hair outside).

    :meth:`fill` writes the weighted pair averages y_j of the outputs with something to sum (``active``)
    for draws t of |z|/sqrt(q) with weights w (see :meth:`_Sampler.draw`).  On a paired side an odd h_j
    has y_j = 0 exactly (nothing summed) and an even one y_j = w h_j(z), its factor 2 applied to the
    stratum's mean and variance (``scale``) rather than to every sample.
    """

    def __init__(self, plus, minus, plus_domain, minus_domain, s: float, labels):
        self.plus, self.minus, self.s, self.labels = plus, minus, s, tuple(labels)
        self.plus_domain = plus_domain if np.isfinite(plus_domain).any() else None
        self.minus_domain = None if minus_domain is None or not np.isfinite(minus_domain).any() else minus_domain
        m = len(labels)
        self.parity = plus.output_parity if minus is None else (None,) * m
        self.active = [j for j in range(m) if self.parity[j] != ODD]
        self.odd = plus.unguarded_odd if minus is None else []  # odd outputs whose finiteness is checked alone
        self.scale = np.array([2.0 if self.parity[j] == EVEN else 1.0 for j in self.active])
        self.active_labels = tuple(labels[j] for j in self.active)

    def fill(self, t, weight, y, buffers) -> bool:
        """y[r] for the active outputs at draws t; False when a value is not finite (then see :meth:`careful`)."""
        n = t.size
        plus = self.plus
        z_plus = plus.input(n) if plus.static else buffers.both[0, :n]
        np.multiply(t, self.s, out=z_plus)
        if self.plus_domain is not None:
            np.clip(z_plus, *self.plus_domain, out=z_plus)
        if self.minus is None:
            outputs = plus.run() if plus.static else plus(z_plus)
            for r, j in enumerate(self.active):
                kind, hp, hm = outputs[j]
                if kind == EVEN:
                    np.multiply(hp, weight, out=y[r])
                else:
                    np.add(hp, hm, out=y[r])
                    y[r] *= weight  # the importance weight, with the 1/2 of the pair average folded in
            return math.isfinite(sum(float(np.add.reduce(outputs[j][1], axis=None)) for j in self.odd))
        minus = self.minus
        z_minus = minus.input(n) if minus.static else buffers.both[1, :n]
        np.negative(z_plus, out=z_minus)
        if self.minus_domain is not None:
            np.clip(z_minus, *self.minus_domain, out=z_minus)
        at_plus = plus.run() if plus.static else plus(z_plus)
        at_minus = minus.run() if minus.static else minus(z_minus)
        for r, ((_, hp, _), (_, hm, _)) in enumerate(zip(at_plus, at_minus)):
            np.add(hp, hm, out=y[r])
            y[r] *= weight
        return True

    def careful(self, t, weight, y, buffers) -> None:
        """y from the programs' own evaluation (:class:`gainderive.evaluate.Program`), which re-evaluates a
        non-finite value in interval arithmetic; one still not finite is a DivergenceError naming the moment."""
        n = t.size
        z_plus, z_minus = buffers.both[0, :n], buffers.both[1, :n]
        np.multiply(t, self.s, out=z_plus)
        if self.plus_domain is not None:
            np.clip(z_plus, *self.plus_domain, out=z_plus)
        np.negative(z_plus, out=z_minus)
        domain = self.plus_domain if self.minus is None else self.minus_domain
        if domain is not None:
            np.clip(z_minus, *domain, out=z_minus)
        plus_program = self.plus.program
        minus_program = plus_program if self.minus is None else self.minus.program
        for j, (hp, hm) in enumerate(zip(plus_program(z_plus), minus_program(z_minus))):
            pair = np.add(hp, hm)
            total = float(np.sum(pair))
            if not math.isfinite(total):
                _check_finite(np.array([total]), np.array([0.0]), (self.labels[j],))
            if self.parity[j] == ODD:  # finite: its pair sum is 0 (up to the program's rounding)
                continue
            r = self.active.index(j)
            np.multiply(pair, weight, out=y[r])
            if self.parity[j] == EVEN:
                y[r] *= 0.5  # scaled by 2 with the stratum's mean and variance


class _Buffers:
    """Scratch arrays for one chunk, allocated once per variance and reused by every stratum and chunk."""

    def __init__(self, chunk: int, outputs: int):
        self.u, self.work = np.empty(chunk), np.empty((2, chunk))
        self.both = np.empty((2, chunk))  # z and -z
        self.y = np.empty((outputs, chunk))
        self.difference = np.empty(outputs * (chunk // 2 + 1))


def _sample_stratum(side, sampler: _Sampler, count: int, rng, buffers: _Buffers,
                    counter: _Progress | None) -> tuple[np.ndarray, np.ndarray]:
    r"""(mean, variance of the mean) over one stratum of every pair average y_j, from ``count`` draws.

    The draws come in rows of one per sub-interval (:class:`_Sampler`), so each of the K sub-intervals,
    of probability 1/K each, holds n_k draws (c, c + 1 or c + 2, c >= 2 even): a stratified estimate
    within the stratum (Owen 2013, ch. 8),

    .. math:: \hat\mu = \frac1K \sum_k \bar y_k, \qquad
              \widehat{\mathrm{Var}}\,\hat\mu = \frac1{K^2} \sum_k \frac{\hat\sigma_k^2}{n_k}, \qquad
              \hat\sigma_k^2 = \frac1c \sum_{i < c/2} (y_{2i,k} - y_{2i+1,k})^2,

    unbiased whatever the rounding of the sub-intervals (the weights are exact).  \hat\sigma_k^2 is the
    unbiased variance estimate from c/2 independent pairs of rows (E (y - y')^2 = 2 \sigma_k^2): one pass over
    the differences, which do not cancel however little y varies within a sub-interval; rows beyond the
    first c enter the means only.
    """
    m = len(side.labels)
    k_count = sampler.columns
    paired_rows = 2 * (count // (2 * k_count))
    extra_row, rest = divmod(count - paired_rows * k_count, k_count)  # extra_row: 0 or 1; rest < K
    rows_per_chunk = max(2, (buffers.u.size // k_count) // 2 * 2)
    a = len(side.active)
    total, square = np.zeros((a, k_count)), np.zeros((a, k_count))
    counts = np.zeros(k_count)
    plan = [(min(rows_per_chunk, paired_rows - r), k_count) for r in range(0, paired_rows, rows_per_chunk)]
    plan += [(1, k_count)] * extra_row + [(1, rest)] * (rest > 0)
    sampler.exact_rows(rng, paired_rows + extra_row)
    for number, (rows, columns) in enumerate(plan):
        paired = number * rows_per_chunk < paired_rows
        with np.errstate(all="ignore"):  # a non-finite value is refused in _column_sums
            if columns == k_count:
                t, weight = sampler.draw(rng, rows, buffers)
            else:  # the last rest < K draws, one in each of the first ``rest`` sub-intervals
                t, weight = sampler.draw_partial(rng, rest, buffers)
            n = t.size
            y = buffers.y[:a, :n]
            if not side.fill(t, weight, y, buffers):
                side.careful(t, weight, y, buffers)
            try:
                chunk_total, chunk_square = _column_sums(y, rows, columns, paired, side.active_labels,
                                                         buffers.difference)
            except DivergenceError:  # a non-finite value: the programs' own evaluation, which rescues overflow
                side.careful(t, weight, y, buffers)
                chunk_total, chunk_square = _column_sums(y, rows, columns, paired, side.active_labels,
                                                         buffers.difference)
        total[:, :columns] += chunk_total
        square[:, :columns] += chunk_square
        counts[:columns] += rows
        if counter is not None:
            counter.add(n)
    factor = sampler.column_factor  # each column's constant part of the weight, applied once here
    spread = square * (factor * factor / paired_rows)  # \hat\sigma_k^2
    mean, variance = np.zeros(m), np.zeros(m)
    mean[side.active] = side.scale * (total * (factor / counts)).mean(axis=1)
    variance[side.active] = side.scale**2 * (spread / counts).sum(axis=1) / k_count**2
    return mean, variance


def _column_sums(y: np.ndarray, rows: int, columns: int, paired: bool, labels,
                 scratch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per output and sub-interval, the sum of y over the rows and, for paired rows, of the squared differences
    of rows 2i and 2i + 1 (formed in ``scratch``); refuses a non-finite sample."""
    y3 = y.reshape(len(y), rows, columns)
    total = np.add.reduce(y3, axis=1)
    if paired:
        difference = scratch[: len(y) * (rows // 2) * columns].reshape(len(y), rows // 2, columns)
        np.subtract(y3[:, 0::2, :], y3[:, 1::2, :], out=difference)
        square = np.einsum("jrk,jrk->jk", difference, difference)
    else:
        square = np.zeros_like(total)
    if not math.isfinite(float(np.add.reduce(total, axis=None)) + float(np.add.reduce(square, axis=None))):
        _check_finite(total.sum(axis=1), square.sum(axis=1), labels)
    return total, square


# Regular sub-intervals of equal probability in a wide stratum, at most: a power of two.  At 256 the tables stay
# in L1 cache and, over the strata of every registry activation at q = 1e-4..1e4, every weight lies within
# e^{+-0.37} of 1 and E[w^2] <= 1.0003: the weights cost under 0.03 % of variance against exact draws (the narrow
# strata's uniform draws: 0.2 %).
_SUBINTERVALS = 256
# Fewest draws per sub-interval: its variance then rests on >= 32 pairs of rows.  With fewer (2 each, say) the
# stratum's variance estimate can rest on a handful of degrees of freedom when one sub-interval dominates (the
# exact tail), and the error bar is then itself too uncertain: at 1,000 samples gelu's E f^2 came out 5 SE off.
_PER_SUBINTERVAL = 64


class _Sampler:
    r"""Draws of |t| inside one stratum [a, b), in rows of one draw per sub-interval, and their exact weights.

    The stratum is cut at its conditional quantiles into K = R + 1 sub-intervals of probability 1/K each:
    R regular ones [e_k, e_k + \Delta_k) (R a power of two, at most :data:`_SUBINTERVALS`, and small enough
    that every sub-interval gets at least :data:`_PER_SUBINTERVAL` draws) and the last, [e_R, b), where the
    density falls off fastest (to b = \infty in the tail stratum).  Column k of a row is uniform in
    regular sub-interval k (one uniform u each, no table look-up), density 1/\Delta_k there, and carries
    the weight of the stratum's law 2\phi(t)/p_i restricted to the sub-interval,

    .. math::  w(t) = 2\phi(t) K \Delta_k / p_i = C \Delta_k e^{-(t - a)(t + a)/2}, \qquad C = 2 K \phi(a) / p_i;

    the last column is drawn exactly from the law restricted to [e_R, b), t = -\Phi^{-1}(Q(e_R) - v (Q(e_R)
    - Q(b))), and weighs the constant 2 K (Q(e_R) - Q(b)) / p_i.  E[w y] over sub-interval k is K times the
    stratum's integral of y over it, so the mean over the K columns is unbiased whatever the rounding of
    the e_k; with e_k the conditional quantiles w stays close to 1.  The weight's constant part per column,
    C \Delta_k / 2 (halved: the 1/2 of the pair average), is applied to the column's sums, not to every
    draw (:attr:`column_factor`).  A narrow stratum is one uniform sub-interval (K = 1, no exact part); a stratum with
    too few draws for that is drawn exactly (K = 1).
    """

    def __init__(self, a: float, b: float, probability: float, narrow: bool, count: int | None = None):
        from scipy.special import ndtr, ndtri

        self.anchor = a
        if narrow:  # phi varies by e^{+-0.1} at most across it: uniform draws
            regular, parts, edges = 1, 1, np.array([a, b])
        else:
            tail_a, tail_b = ndtr(-a), ndtr(-b)  # upper tails Q: full relative precision far out
            # K = R + 1 <= count / 64: at least 64 draws in every sub-interval (see _PER_SUBINTERVAL)
            most = _SUBINTERVALS if count is None else max(count // _PER_SUBINTERVAL - 1, 0)
            regular = 0 if most < 1 else min(_SUBINTERVALS, 1 << (most.bit_length() - 1))
            while True:
                parts = regular + 1
                with np.errstate(all="ignore"):  # Q^{-1}(0) = inf at the end of an unbounded stratum
                    edges = -ndtri(tail_a - np.arange(parts + 1) / parts * (tail_a - tail_b))
                edges[0], edges[-1] = a, b
                # quantiles that round together would leave a sub-interval empty: use fewer
                if regular == 0 or np.all(np.diff(edges)[:regular] > 0):
                    break
                regular //= 2
        self.regular, self.columns = regular, parts
        self.lower = edges[:parts].copy()
        self.width = np.diff(edges)
        scale = parts * _INV_SQRT_2PI * np.exp(-0.5 * a * a) / probability  # C / 2
        self.tail = None
        if not narrow:
            # the last sub-interval, where the density falls off fastest (or to infinity): exact draws
            tail_last, tail_b = float(ndtr(-edges[-2])), float(ndtr(-b))
            self.tail = (tail_last, tail_last - tail_b, parts * (tail_last - tail_b) / probability)
            self.lower[-1], self.width[-1] = a, 0.0  # placeholders, overwritten by the exact draws
        # the weight's constant part per column, C Delta_k / 2 (the last column's whole weight when drawn
        # exactly): draw() returns only e^{-(t - a)(t + a)/2}, the stratum's sums apply these once
        self.column_factor = scale * self.width
        if self.tail is not None:
            self.column_factor[-1] = self.tail[2]
        self.cell = self.width * 2.0**-32  # the 2^32 cells of each sub-interval (see _place)
        self.start = self.lower + 0.5 * self.cell

    def draw(self, rng: np.random.Generator, rows: int, buffers) -> tuple[np.ndarray, np.ndarray]:
        """rows x K draws t (row-major: column k in sub-interval k) and their weights divided by their column's
        :attr:`column_factor`, flat views of ``buffers.u`` and ``buffers.work[0]`` (``buffers.work[1]`` is
        scratch)."""
        k_count = self.columns
        n = rows * k_count
        t = buffers.u[:n].reshape(rows, k_count)
        weight = self._place(rng, t, self.cell, self.start, buffers, n)
        if self.tail is not None:  # the last column: exact draws, made ahead (see exact_rows)
            t[:, -1] = self._exact[self._next : self._next + rows]
            self._next += rows
            weight[:, -1] = 1.0  # its weight is the constant column_factor[-1]
        return buffers.u[:n], buffers.work[0, :n]

    def exact_rows(self, rng: np.random.Generator, rows: int) -> None:
        r"""Draw the last column's exact points of the next ``rows`` full rows at once, from 53-bit uniforms:
        t = -\Phi^{-1}(Q(e_R) - v (Q(e_R) - Q(b))), one ndtri call per stratum rather than per chunk."""
        if self.tail is None:
            return
        from scipy.special import ndtri

        exact = rng.random(rows)
        exact *= -self.tail[1]
        exact += self.tail[0]
        ndtri(exact, out=exact)
        self._exact, self._next = np.negative(exact, out=exact), 0

    def draw_partial(self, rng: np.random.Generator, columns: int, buffers) -> tuple[np.ndarray, np.ndarray]:
        """One draw in each of the first ``columns`` < K sub-intervals (all regular), as :meth:`draw`."""
        t = buffers.u[:columns].reshape(1, columns)
        self._place(rng, t, self.cell[:columns], self.start[:columns], buffers, columns)
        return buffers.u[:columns], buffers.work[0, :columns]

    def _place(self, rng, t, cell, start, buffers, n):
        r"""Points of the sub-intervals into t (rows x columns), from 32-bit uniforms; returns e^{-(t-a)(t+a)/2}.

        t = e_k + (j + 1/2) \Delta_k 2^{-32}, j a uniform 32-bit integer: the midpoint of one of 2^32 equal
        cells, so a draw costs half a 64-bit random word.  Against a continuous uniform this is the midpoint
        rule on cells of width \Delta_k 2^{-32}, an error below 10^-19 of the sub-interval's integral for any
        integrand smooth on it: far below rounding.
        """
        shape = t.shape
        bits = rng.bit_generator.random_raw((n + 1) // 2).view(np.uint32)[:n].reshape(shape)
        np.multiply(bits, cell, out=t)
        t += start
        weight = buffers.work[0, :n].reshape(shape)
        np.subtract(t, self.anchor, out=weight)
        weight *= np.add(t, self.anchor, out=buffers.work[1, :n].reshape(shape))
        weight *= -0.5
        np.exp(weight, out=weight)
        return weight
