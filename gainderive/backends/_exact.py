r"""Exact Gaussian integrals of exponential-polynomial pieces, vectorised over q.

On an interval (lo, hi) where every h_j is a sum of terms c z^n e^{a z}, the
expectation over z ~ N(0, q) is a finite combination of normal CDFs and
densities.  With mu = a q,

.. math::
    E[z^n e^{az} 1\{lo < z < hi\}] = e^{a^2 q/2} K_n, \qquad
    K_n = \mu K_{n-1} + q (n-1) K_{n-2}
          + q\,[lo^{n-1} \varphi_q(lo - \mu) - hi^{n-1} \varphi_q(hi - \mu)],

K_0 = \Phi(\beta) - \Phi(\alpha), \alpha = (lo - \mu)/\sqrt q, \beta = (hi - \mu)/\sqrt q
(integration by parts; the truncated normal moments of Johnson, Kotz &
Balakrishnan 1994, ch. 13).  The factor e^{a^2 q/2} is never formed: it is
folded into each term, e^{a^2q/2}\varphi_q(x - \mu) = e^{a x - x^2/(2q)}/\sqrt{2\pi q}
and e^{a^2 q/2}\Phi(-x) = erfcx(x/\sqrt2)/2 \cdot e^{a\,lo - lo^2/(2q)} for the
tail beyond x = (lo - \mu)/\sqrt q \ge 0, so nothing overflows unless the
expectation itself does (the ELU term e^{2q}\Phi(-2\sqrt q) is erfcx(\sqrt{2q})/2).

Every result carries a bound on its rounding error, built from the sizes of
the terms it was summed from: where terms cancel (ELU's (e^z - 1)^2 expanded,
at small q) the bound says so, and the caller integrates that piece by panels
instead.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["piece_moments"]

_EPS = np.finfo(float).eps
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT2 = math.sqrt(2.0)


def _special():
    import scipy.special

    return scipy.special


def _erfcx(x: np.ndarray) -> np.ndarray:
    """erfc(x) e^{x^2} for x >= 0 (bounded by 1)."""
    return _special().erfcx(x)


def _upper_tail(x: np.ndarray) -> np.ndarray:
    """Phi(-x); math.erfc for a handful of values spares the command line importing scipy."""
    if x.size <= 64:
        return np.array([0.5 * math.erfc(v / _SQRT2) for v in x.ravel()]).reshape(x.shape)
    return _special().ndtr(-x)


def _tail(x: np.ndarray, exponent: np.ndarray, a: float) -> np.ndarray:
    """e^{a^2 q/2} Phi(-x) for x >= 0 (x may be +inf), given exponent = a^2 q/2 - x^2/2 computed stably."""
    with np.errstate(over="ignore", invalid="ignore"):
        if a == 0:  # no exponential factor: the plain tail, no scaling needed
            return _upper_tail(x)
        finite = np.where(np.isinf(x), 0.0, x)
        return np.where(np.isinf(x), 0.0, 0.5 * _erfcx(finite / _SQRT2) * np.exp(exponent))


def _edge(x: np.ndarray, a: float, q: np.ndarray, s: np.ndarray) -> np.ndarray:
    """e^{a^2 q/2} phi_q(x - a q) = e^{a x - x^2/(2q)} / sqrt(2 pi q); zero at infinite x."""
    with np.errstate(over="ignore", invalid="ignore"):
        finite = np.isfinite(x)
        xf = np.where(finite, x, 0.0)
        return np.where(finite, np.exp(a * xf - xf * xf / (2 * q)) * _INV_SQRT_2PI / s, 0.0)


def _mass(lo: float, hi: float, a: float, q: np.ndarray, s: np.ndarray):
    """e^{a^2 q/2} (Phi(beta) - Phi(alpha)), and the larger of the two terms it is the difference of.

    Each q needs one of three forms, by where the shifted mean a q lies against (lo, hi); only
    the form each q needs is evaluated.
    """
    mu = a * q
    alpha = (lo - mu) / s
    beta = (hi - mu) / s
    # e^{a^2q/2 - x^2/2} at x = (c - mu)/s equals e^{a c - c^2/(2q)}: no large intermediate
    ex_lo = a * lo - lo * lo / (2 * q) if np.isfinite(lo) else np.full_like(q, -np.inf)
    ex_hi = a * hi - hi * hi / (2 * q) if np.isfinite(hi) else np.full_like(q, -np.inf)
    value = np.empty_like(q)
    size = np.empty_like(q)
    right = alpha >= 0  # the whole interval lies right of the mean: difference of upper tails
    left = ~right & (beta <= 0)  # left of the mean: difference of lower tails
    middle = ~right & ~left
    with np.errstate(over="ignore", invalid="ignore"):
        if right.any():
            t_lo = _tail(alpha[right], ex_lo[right], a)
            value[right] = t_lo - _tail(beta[right], ex_hi[right], a)
            size[right] = t_lo
        if left.any():
            t_hi = _tail(-beta[left], ex_hi[left], a)
            value[left] = t_hi - _tail(-alpha[left], ex_lo[left], a)
            size[left] = t_hi
        if middle.any():
            whole = np.exp(a * a * q[middle] / 2)
            value[middle] = whole - _tail(-alpha[middle], ex_lo[middle], a) - _tail(beta[middle], ex_hi[middle], a)
            size[middle] = whole
    return value, size


def _moments(lo: float, hi: float, a: float, degree: int, q: np.ndarray, s: np.ndarray):
    """S_n = E[z^n e^{az} 1{lo<z<hi}], n = 0..degree, and the sizes B_n of the terms each was summed from."""
    mu = a * q
    s0, b0 = _mass(lo, hi, a, q, s)
    values, sizes = [s0], [b0]
    if degree == 0:
        return values, sizes
    e_lo = _edge(np.full_like(q, lo), a, q, s)
    e_hi = _edge(np.full_like(q, hi), a, q, s)
    for n in range(1, degree + 1):
        p_lo = e_lo * lo ** (n - 1) if np.isfinite(lo) else np.zeros_like(q)
        p_hi = e_hi * hi ** (n - 1) if np.isfinite(hi) else np.zeros_like(q)
        prev2 = values[n - 2] if n >= 2 else 0.0
        size2 = sizes[n - 2] if n >= 2 else 0.0
        values.append(mu * values[n - 1] + q * (n - 1) * prev2 + q * (p_lo - p_hi))
        sizes.append(np.abs(mu) * sizes[n - 1] + q * (n - 1) * size2 + q * (np.abs(p_lo) + np.abs(p_hi)))
    return values, sizes


def piece_moments(terms, lo: float, hi: float, q: np.ndarray, nonnegative=None):
    """E[h_j(z) 1{lo < z < hi}] for z ~ N(0, q), every h_j, every q; with rounding bounds and E|h_j| bounds.

    ``terms`` maps each exponent a to an (m, degree + 1) array c with
    h_j(z) = sum_a sum_n c[j, n] z^n e^{a z}.  Returns (value, error, l1),
    each (m, len(q)).  l1 is E|h_j 1{lo<z<hi}|: the value itself where h_j is
    known to be non-negative, otherwise the sum over terms of E|term| (an
    upper bound).
    """
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is real here; the caller reports it
        return _piece_moments(terms, lo, hi, q, nonnegative)


def _piece_moments(terms, lo, hi, q, nonnegative):
    s = np.sqrt(q)
    m = next(iter(terms.values())).shape[0]
    value = np.zeros((m, q.size))
    error = np.zeros((m, q.size))
    l1 = np.zeros((m, q.size))
    one_sided = lo >= 0 or hi <= 0  # each term z^n e^{az} keeps its sign on the piece
    for a, coeffs in terms.items():
        degree = coeffs.shape[1] - 1
        vals, sizes = _moments(lo, hi, a, degree, q, s)
        if not one_sided:  # E|z^n e^{az}|: the same moments on each side of 0
            pos, _ = _moments(0.0, hi, a, degree, q, s)
            neg, _ = _moments(lo, 0.0, a, degree, q, s)
        for n in range(degree + 1):
            c = coeffs[:, n : n + 1]
            if not c.any():
                continue  # 0 * (an overflowed moment) must not become NaN
            term = c * vals[n]
            value += term
            l1 += np.abs(term) if one_sided else np.abs(c) * (pos[n] + np.abs(neg[n]))
            # S_n sums about 2n + 2 rounded terms of at most B_n each (the tails are good to a few eps)
            error += (4 * n + 6) * _EPS * np.abs(c) * sizes[n] + 2 * _EPS * np.abs(term)
    # the sum over terms: its own rounding, relative to the size of what it adds up
    error += (len(terms) + 2) * _EPS * l1
    if nonnegative is not None:
        l1 = np.where(np.asarray(nonnegative)[:, None], np.abs(value), l1)
    return value, error, l1
