r"""Monte Carlo backend: a cross-check that shares nothing with quadrature but f itself.

Draws x ~ N(0, 1) with numpy's PCG64 generator from ``seed`` and uses each
draw twice, as the antithetic pair (x, -x): z = \sqrt q\,x and -z.  The pair
average y = (h(z) + h(-z))/2 is an unbiased estimate of E[h] whose variance is
never larger than that of two independent draws (and is zero for odd h).  The
estimate is the mean of n/2 pair averages; its standard error is the sample
standard deviation of y over \sqrt{n/2}.

Samples are processed in fixed-size chunks, so memory does not grow with the
sample count; sums are accumulated around a shift (the first chunk's mean) so
that the variance does not cancel when E[h] is large against its spread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DivergenceError, GainDeriveError
from ..estimate import Estimate

if TYPE_CHECKING:
    from ..integrand import Integrand

__all__ = ["DEFAULT_SAMPLES", "integrate"]

DEFAULT_SAMPLES = 2**21
_CHUNK = 16384  # draws per chunk (x2 evaluations): large enough to amortise the calls, small enough for cache


def _pair_sums(integrand: Integrand, z: np.ndarray) -> np.ndarray:
    """h_j(z) + h_j(-z) for every h_j, each piece's program on the samples in its interval."""
    cuts = integrand.breakpoints
    programs = integrand.numpy_pieces
    with np.errstate(all="ignore"):
        if not cuts:
            plus, minus = programs[0](z), programs[0](-z)
        elif cuts == (0.0,):
            # a kink at 0 only: of each pair (z, -z) one sample lies on each side, so no masks are needed
            a = np.abs(z)
            plus, minus = programs[1](a), programs[0](-a)
        else:
            both = np.concatenate([z, -z])
            values = np.empty((len(integrand.labels), *both.shape))
            which = np.searchsorted(np.asarray(cuts), both)
            for k, program in enumerate(programs):
                mask = which == k
                if mask.any():
                    for j, h in enumerate(program(both[mask])):
                        values[j][mask] = h
            n = z.shape[0]
            return values[:, :n] + values[:, n:]
        y = np.empty((len(plus), *z.shape))
        for j, (hp, hm) in enumerate(zip(plus, minus)):
            np.add(hp, hm, out=y[j])
        return y


def integrate(
    integrand: Integrand,
    variance,
    *,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Estimate, ...]:
    """Monte Carlo estimates of E[h_j(z)], z ~ N(0, q), with one standard error each.

    ``samples`` counts evaluations of h (two per draw: x and -x); at least 4.
    ``progress(done, total)`` is called after each chunk if given.
    """
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 4:
        raise GainDeriveError(f"samples must be an integer >= 4, got {samples!r}")
    q = np.asarray(variance, dtype=float)
    shape = q.shape
    s = np.sqrt(q.ravel())
    m = len(integrand.labels)
    pairs = int(samples) // 2
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
        y -= shift[:, None, :]
        chunk_total = y.sum(axis=1)
        if not np.isfinite(chunk_total).all():  # any inf or NaN sample makes its sum non-finite
            j = int(np.nonzero(~np.isfinite(chunk_total))[0][0])
            raise DivergenceError(
                f"E[{integrand.labels[j]}]: a sample of the integrand is not finite (overflow or undefined); "
                "the expectation diverges or leaves the double range"
            )
        total += chunk_total
        square += np.einsum("jnq,jnq->jq", y, y)
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
