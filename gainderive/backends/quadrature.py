r"""Quadrature backend: exact pieces where possible, Gauss-Kronrod panels split at the kinks otherwise.

A piece of f on which every integrand is a sum of terms c z^n e^{a z}
(polynomials, ELU's exponential side, their squares) is integrated exactly by
:mod:`._exact`, unless its terms cancel beyond the tolerance.  Every other
piece (and those, at the q where they cancel) gets adaptive Gauss-Kronrod
panels, all variances at once.

For z ~ N(0, q) write z = \sqrt{q}\,t with t standard normal, so

.. math::  E[h(z)] = \int_{-T}^{T} h(\sqrt{q}\,t)\,\varphi(t)\,dt,
           \qquad \varphi(t) = e^{-t^2/2}/\sqrt{2\pi},

with T = 38.5, where \varphi underflows double precision.  The t-line is cut
into panels at

* the breakpoints of f, t = b/\sqrt q (so every panel lies inside one smooth
  piece and the rule never straddles a kink);
* a fixed grid in t that resolves the Gaussian weight (0, ±2, ±5, ±9);
* every feature of the integrand (:mod:`gainderive.features`), a centre c and
  a width w in z (the sign change of tanh(k(z - b)), the peak of
  exp(-a(z - b)^2)), and the default feature (0, 1) that every activation
  has: t = (c ± w m)/\sqrt q for m = 1/2, 2, 8, 32, 128, then every factor 16
  until the offset passes 1 in t, where the t-grid takes over.  A feature far narrower
  than the panels (a bump of width 1e-4, or tanh's transition at q = 1e8,
  which fills |t| < 1e-4) would otherwise fall between the nodes of both
  rules, which then agree on a wrong value with an error estimate of 0.

Each panel gets the 21-point Gauss-Kronrod rule; |K21 - G10| scaled as in
QUADPACK (Piessens et al. 1983) is its error estimate.  Panels whose error
exceeds their share of the tolerance are bisected, all variances at once:
each round evaluates every unfinished panel of every q in one numpy call per
piece, and only the piece's own expression is evaluated on its panels.

The tolerance for E[h] is max(rtol |E[h]|, 100 eps E|h|): relative to the
value, except where the value is so much smaller than E|h| (a mean near 0)
that rounding in the integrand sets the floor.  The reported error is the sum
of the panel estimates plus a rounding floor no rule can see: the nodes are
floats, so h is sampled up to ~eps |t| away from where the rule assumes, an
error of eps |t| times the variation of h phi over the panel.  It matters
around a narrow feature far from z = 0 (relative error |z|/w eps for a bump of
width w at z) and is left out of the refinement test, since bisection cannot
reduce it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

import numpy as np

from ..errors import ConvergenceError, DivergenceError
from ..estimate import Estimate
from ..features import feature_cuts_array
from ._exact import piece_moments
from ._gauss_kronrod import GAUSS_INDEX, GAUSS_WEIGHTS, KRONROD_NODES, KRONROD_WEIGHTS

if TYPE_CHECKING:
    from ..integrand import Integrand

__all__ = ["DEFAULT_RTOL", "integrate"]

DEFAULT_RTOL = 1e-13
TAIL = 38.5
_T_GRID = (2.0, 5.0, 9.0, TAIL)
_MAX_ROUNDS = 64
#: Variances integrated together: the working memory is that of one chunk (a few tens of MB), whatever the grid.
Q_CHUNK = 4096
_PANELS_PER_Q = 50_000  # panels one q may evaluate in one adaptive pass: its own budget, never the batch's
_IN_FLIGHT = 250_000  # panels in one round of a batch (~60 MB of rule output); beyond, the batch is split
_CHUNK = 1024
_EPS = np.finfo(float).eps
_TINY = np.finfo(float).tiny

_XK = np.array(KRONROD_NODES)
_WK = np.array(KRONROD_WEIGHTS)
_WG = np.zeros_like(_WK)
_WG[list(GAUSS_INDEX)] = GAUSS_WEIGHTS
_W2 = np.stack([_WK, _WG], axis=1)
_ONES = np.ones(_XK.size - 1)
_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)


def _initial_panels(cuts: np.ndarray, s: np.ndarray, pieces, features=()):
    """Panel ends (a, b) and owning variance index for every q, in the given pieces only."""
    grid = np.array([0.0, *_T_GRID, *(-g for g in _T_GRID)])
    points = [np.broadcast_to(grid, (s.size, grid.size)), feature_cuts_array(features, s, TAIL)]
    if cuts.size:
        points.append(np.outer(1.0 / s, cuts))
    mesh = np.sort(np.clip(np.concatenate(points, axis=1), -TAIL, TAIL), axis=1)
    a, b = mesh[:, :-1], mesh[:, 1:]
    owner = np.broadcast_to(np.arange(s.size)[:, None], a.shape)
    wanted = np.isin(np.arange(cuts.size + 1), pieces)
    keep = (b > a) & wanted[np.searchsorted(cuts, 0.5 * (a + b) * s[:, None])]
    return a[keep], b[keep], owner[keep]


def _panel_rule(integrand: Integrand, a, b, owner, piece, s, q):
    """Kronrod value, error estimate, E|h|, tail size and rounding floor of every panel, for every h_j.

    The rounding floor is what neither rule can see, because both share the nodes: a node t_k is
    only known to a relative eps, so h phi is integrated at nodes shifted by up to ~eps |t|, an
    error up to eps max|t| times the total variation of h phi over the panel.  Around a feature of
    width w at |z| >> w (a bump of width 1e-4 at z = 0.5) that is |z|/w times eps |E h|.

    Panels arrive sorted by piece and are processed in chunks small enough
    that numpy's temporaries are recycled rather than freshly mapped: fresh
    multi-megabyte temporaries cost more in page faults than the arithmetic.
    """
    m = len(integrand.labels)
    signed = [j for j, nonneg in enumerate(integrand.nonnegative) if not nonneg]
    kron = np.empty((m, a.size))
    err = np.empty((m, a.size))
    absolute = np.empty((m, a.size))
    edge = np.empty((m, a.size))
    noise = np.empty((m, a.size))
    work = np.empty((m, _CHUNK, _XK.size))
    work_steps = np.empty((m, _CHUNK, _XK.size - 1))
    for lo in range(0, a.size, _CHUNK):
        hi = min(lo + _CHUNK, a.size)
        mid, half = 0.5 * (a[lo:hi] + b[lo:hi]), 0.5 * (b[lo:hi] - a[lo:hi])
        t = mid[:, None] + half[:, None] * _XK
        z = t * s[owner[lo:hi], None]
        np.multiply(t, t, out=t)
        t *= -0.5
        phi = np.exp(t, out=t)
        phi *= _INV_SQRT_2PI
        values = work[:, : hi - lo]
        cuts = np.searchsorted(piece[lo:hi], np.arange(len(integrand.numpy_pieces) + 1))
        with np.errstate(all="ignore"):
            for k, program in enumerate(integrand.numpy_pieces):
                p0, p1 = cuts[k], cuts[k + 1]
                if p0 < p1:
                    for j, h in enumerate(program(z[p0:p1])):
                        if not np.isfinite(h).all():
                            _not_finite(j, h, z[p0:p1], owner[lo:hi][p0:p1], q, integrand.labels)
                        np.multiply(h, phi[p0:p1], out=values[j, p0:p1])
        # |h phi| at the node nearest a truncation point |t| = T, times the panel width
        outer = np.nonzero((b[lo:hi] >= TAIL) | (a[lo:hi] <= -TAIL))[0]
        edge[:, lo:hi] = 0.0
        if outer.size:
            node = np.where(b[lo:hi][outer] >= TAIL, -1, 0)
            edge[:, lo + outer] = np.abs(values[:, outer, node]) * (2 * half[outer])
        # total variation of h phi along the (sorted) nodes, times the largest |t| on the panel
        reach = np.maximum(np.abs(a[lo:hi]), np.abs(b[lo:hi]))
        steps = np.subtract(values[..., 1:], values[..., :-1], out=work_steps[:, : hi - lo])
        noise[:, lo:hi] = np.abs(steps, out=steps) @ _ONES
        noise[:, lo:hi] *= 4 * _EPS * reach
        kg = values @ _W2
        k_, g_ = kg[..., 0] * half, kg[..., 1] * half
        ab = np.abs(k_)  # E|h| = E[h] on a panel where h >= 0
        if signed:
            ab[signed] = np.abs(values[signed]) @ _WK * half
        values -= (0.5 * kg[..., 0])[..., None]
        np.abs(values, out=values)
        spread = values @ _WK * half
        # QUADPACK's scaling of |K21 - G10|, with a floor for rounding in the sum
        e = np.abs(k_ - g_)
        with np.errstate(divide="ignore", invalid="ignore"):
            scaled = spread * np.minimum(1.0, (200.0 * e / spread) ** 1.5)
        e = np.where((spread > 0) & (e > 0), scaled, e)
        kron[:, lo:hi], err[:, lo:hi], absolute[:, lo:hi] = k_, np.maximum(50 * _EPS * ab, e), ab
    return kron, err, absolute, edge, noise


def _not_finite(j: int, h: np.ndarray, z: np.ndarray, owner: np.ndarray, q, labels) -> NoReturn:
    bad = ~np.isfinite(h)
    # report the offending point nearest the centre: that is where the trouble starts
    p, n = np.unravel_index(np.argmin(np.where(bad, np.abs(z), np.inf)), h.shape)
    where = f"E[{labels[j]}] at q = {q[owner[p]]:g}: the integrand"
    if np.isinf(h[p, n]):
        raise DivergenceError(
            f"{where} overflows double precision at z = {z[p, n]:.6g}, inside the 38.5-standard-deviation range "
            "the expectation needs; it diverges or leaves the double range (method='high_precision' uses mpmath, "
            "which does not overflow)"
        )
    raise DivergenceError(
        f"{where} is undefined (not a real number) at z = {z[p, n]:.6g}; a formula must be real for every real x "
        "(e.g. log(abs(x)) rather than log(x))"
    )


def integrate(integrand: Integrand, variance, *, rtol: float = DEFAULT_RTOL,
              small_variance_series: bool = True) -> tuple[Estimate, ...]:
    """E[h_j(z)], z ~ N(0, q), for every h_j of ``integrand`` and every q in ``variance``.

    Returns one :class:`Estimate` per h_j whose value and error have the shape
    of ``variance`` (q > 0 and finite).  Raises :class:`DivergenceError` when
    the integrand is not finite or does not decay, :class:`ConvergenceError`
    when the tolerance is not met at some q (a singular or divergent integrand).

    The variances are taken ``Q_CHUNK`` at a time, so the working memory is that of one chunk whatever the
    number of q; every q has its own tolerance and its own panel budget, so its value and error do not depend
    on the other q of the call.

    Where q is so small that the integrand is rounding noise (sigmoid's (f - 1/2)^2 at q = 1e-20) or its
    halves cancel (ELU's mean at q = 1e-40), E[h_j] comes from the Taylor series of h at 0
    (:mod:`.series`) for each (h_j, q) where that meets the tolerance; ``small_variance_series=False``
    turns this off.
    """
    q = np.asarray(variance, dtype=float)
    shape, flat = q.shape, q.ravel()
    value = np.empty((len(integrand.labels), flat.size))
    error = np.empty_like(value)
    for lo in range(0, flat.size, Q_CHUNK):
        hi = min(lo + Q_CHUNK, flat.size)
        value[:, lo:hi], error[:, lo:hi] = _integrate_chunk(integrand, flat[lo:hi], rtol, small_variance_series)
    return tuple(Estimate(value[j].reshape(shape)[()], error[j].reshape(shape)[()], "quadrature")
                 for j in range(len(integrand.labels)))


def _integrate_chunk(integrand: Integrand, q: np.ndarray, rtol: float,
                     small_variance_series: bool) -> tuple[np.ndarray, np.ndarray]:
    """(value, error), each (m, len(q)), for a flat array of at most ``Q_CHUNK`` variances."""
    # ---- begin: small-variance Taylor series (gainderive/backends/series.py) ----
    if small_variance_series:
        from . import series

        found = series.integrate(integrand, q, rtol)
        if found is not None and found[2].any():
            value, error, usable = found
            rest = ~usable.all(axis=0)
            if rest.any():  # quadrature for the q where some h_j is not served by the series
                quad_value, quad_error = _integrate_chunk(integrand, q[rest], rtol, False)
                take = ~usable[:, rest]
                value[:, rest] = np.where(take, quad_value, value[:, rest])
                error[:, rest] = np.where(take, quad_error, error[:, rest])
            return value, error
    # ---- end: small-variance Taylor series ----
    m = len(integrand.labels)
    cuts = np.asarray(integrand.breakpoints, dtype=float)
    exact = [k for k, terms in enumerate(integrand.exact_terms) if terms is not None]

    # 1. pieces that are sums of z^n e^{az}: exact, with a bound on their rounding error.  A piece is trusted
    # where it is finite and its bound is below half its size; elsewhere (ELU's (e^z - 1)^2 at small q, a
    # polynomial piece whose terms q^2... cancel or overflow at q = 1e100) it goes to panels in step 3.
    bounds = [-np.inf, *cuts, np.inf]
    parts = {k: [np.array(v) for v in piece_moments(integrand.exact_terms[k], bounds[k], bounds[k + 1], q,
                                                    integrand.nonnegative)] for k in exact}
    trusted = {}
    for k, (value, err, absolute) in parts.items():
        trusted[k] = np.isfinite(value) & np.isfinite(err) & np.isfinite(absolute) & (err <= 0.5 * np.abs(value))
        trusted[k] |= (err == 0) & (value == 0)
        for v in (value, err, absolute):
            v[~trusted[k]] = 0.0  # counted once step 3 has integrated it by panels

    def exact_sum(which: int, skip=None) -> np.ndarray:
        return sum((p[which] for k, p in parts.items() if k != skip), np.zeros((m, q.size)))

    # 2. the other pieces by adaptive panels, against the tolerance of the whole
    panels = [k for k in range(len(integrand.numpy_pieces)) if k not in exact]
    panel = [np.zeros((m, q.size)) for _ in range(3)]
    if panels:
        panel = list(_adaptive(integrand, cuts, q, panels, rtol, exact_sum(0), exact_sum(2)))

    # 3. exact pieces that are untrusted or whose rounding exceeds their share of the tolerance: panels there.
    # The rest of the sum is formed from the other pieces, never as total - this piece: where this piece's
    # terms cancelled to 1e149 the difference would have lost everything else.
    tol = np.maximum(rtol * np.abs(panel[0] + exact_sum(0)), 100 * _EPS * (panel[2] + exact_sum(2)))
    for k in exact:
        value, err, absolute = parts[k]
        redo = np.nonzero(np.any(~trusted[k] | (err > 0.5 * tol / max(len(exact), 1)), axis=0))[0]
        if redo.size:
            rest_total = (panel[0] + exact_sum(0, skip=k))[:, redo]
            rest_l1 = (panel[2] + exact_sum(2, skip=k))[:, redo]
            value[:, redo], err[:, redo], absolute[:, redo] = _adaptive(integrand, cuts, q[redo], [k], rtol,
                                                                       rest_total, rest_l1)
    total, error = panel[0] + exact_sum(0), panel[1] + exact_sum(1)
    if not np.all(np.isfinite(total)):
        j, i = (int(v[0]) for v in np.nonzero(~np.isfinite(total)))
        raise DivergenceError(f"E[{integrand.labels[j]}] at q = {q[i]:g} overflows double precision; the "
                              "expectation diverges or leaves the double range (method='high_precision' uses mpmath)")
    return total, error


def _adaptive(integrand: Integrand, cuts, q, pieces, rtol, offset_total, offset_l1):
    """Adaptive Gauss-Kronrod over the given pieces for the variances q; (total, error, l1), each (m, len(q)).

    The tolerance is taken relative to offset + this part, i.e. to the whole expectation.  Every q has its
    own tolerance and budget (:func:`_adaptive_batch`), so a batch whose rounds would hold more than
    ``_IN_FLIGHT`` panels is split in two and each half done on its own, with the same result per q: memory
    stays bounded by ``_IN_FLIGHT`` panels however many q need many panels.
    """
    done = _adaptive_batch(integrand, cuts, q, pieces, rtol, offset_total, offset_l1)
    if done is None:
        half = q.size // 2
        parts = [_adaptive(integrand, cuts, q[part], pieces, rtol, offset_total[:, part], offset_l1[:, part])
                 for part in (slice(0, half), slice(half, None))]
        done = tuple(np.concatenate([x, y], axis=1) for x, y in zip(*parts))
    return done


def _adaptive_batch(integrand: Integrand, cuts, q, pieces, rtol, offset_total, offset_l1):
    """One pass of :func:`_adaptive`: every round bisects the unfinished panels of every q at once.

    Each q stops when it converges; it fails (ConvergenceError naming it) when it would evaluate more than
    ``_PANELS_PER_Q`` panels in all or needs more than ``_MAX_ROUNDS`` bisections, whatever the other q do.
    Returns None when a round would hold more than ``_IN_FLIGHT`` panels of a batch of several q.
    """
    s = np.sqrt(q)
    m = len(integrand.labels)
    a, b, owner = _initial_panels(cuts, s, pieces, getattr(integrand, "features", ()))

    def per_q(v: np.ndarray) -> np.ndarray:
        return np.stack([np.bincount(owner, w, q.size) for w in v])

    total = np.zeros((m, q.size))
    error = np.zeros((m, q.size))
    rounding = np.zeros((m, q.size))  # kept out of the refinement test: bisection cannot reduce it
    l1 = np.zeros((m, q.size))
    used = np.zeros(q.size, dtype=np.int64)  # panels evaluated so far, per q: each q's own budget
    for round_ in range(_MAX_ROUNDS):
        if not a.size:
            break
        if a.size > _IN_FLIGHT and q.size > 1:
            return None
        used += np.bincount(owner, minlength=q.size)
        piece = np.searchsorted(cuts, 0.5 * (a + b) * s[owner])
        order = np.argsort(piece, kind="stable")
        a, b, owner, piece = a[order], b[order], owner[order], piece[order]
        kron, err, absolute, edge, noise = _panel_rule(integrand, a, b, owner, piece, s, q)

        all_total, all_error = offset_total + total + per_q(kron), error + per_q(err)
        all_l1 = offset_l1 + l1 + per_q(absolute)
        _check_tails(edge, all_l1, owner, q, integrand.labels)
        tol = np.maximum(rtol * np.abs(all_total), 100 * _EPS * all_l1)
        # the rounding floor counts against the tolerance of the whole, but not of a panel: bisection cannot
        # reduce it, so where it alone exceeds the tolerance the panels are refined until each meets its share
        converged = np.all(all_error + rounding + per_q(noise) <= tol, axis=0)
        # a panel's share of the tolerance: its share of E|h|, or of the t-range where E|h| is negligible
        share = np.maximum(0.5 * (b - a) / TAIL, absolute / np.where(all_l1 > 0, all_l1, 1.0)[:, owner])
        accept = converged[owner] | np.all(err <= 0.5 * tol[:, owner] * share, axis=0)
        refine = ~accept
        # this q's budget: the next round would take it past _PANELS_PER_Q panels, or past _MAX_ROUNDS rounds
        wanted = np.bincount(owner, refine, q.size)
        broke = (wanted > 0) & ((used + 2 * wanted > _PANELS_PER_Q) | (round_ == _MAX_ROUNDS - 1))
        if broke.any():
            _not_converged(integrand.labels, q, s, broke, err, tol, refine, a, b, owner)

        total += per_q(kron * accept)
        error += per_q(err * accept)
        rounding += per_q(noise * accept)
        l1 += per_q(absolute * accept)
        mid = 0.5 * (a + b)
        a, b, owner, mid = a[refine], b[refine], owner[refine], mid[refine]
        a, b, owner = np.concatenate([a, mid]), np.concatenate([mid, b]), np.concatenate([owner, owner])
    return total, error + rounding, l1


def _not_converged(labels, q, s, broke, err, tol, refine, a, b, owner) -> NoReturn:
    """ConvergenceError at the q out of budget whose worst unfinished panel is furthest from its tolerance."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.max(err / np.maximum(tol[:, owner], _TINY), axis=0)
    ratio = np.where(refine & broke[owner], ratio, -np.inf)
    worst = int(np.argmax(ratio))
    j = int(np.argmax(err[:, worst] / np.maximum(tol[:, owner[worst]], _TINY)))
    raise ConvergenceError(
        f"E[{labels[j]}] did not converge at q = {q[owner[worst]]:g} near "
        f"z = {0.5 * (a[worst] + b[worst]) * s[owner[worst]]:.6g}: the integrand is probably singular there, and "
        "the expectation infinite or, for an integrable singularity, beyond double-precision quadrature "
        "(try method='high_precision')"
    )


def _check_tails(edge, l1, owner, q, labels) -> None:
    """Truncating at |t| = T is exact only if the integrand has decayed there."""
    bad = edge > 1e-15 * l1[:, owner]
    if bad.any():
        j, p = (int(i[0]) for i in np.nonzero(bad))
        qq = q[owner[p]]
        raise DivergenceError(
            f"E[{labels[j]}] at q = {qq:g}: the integrand has not decayed at |z| = {TAIL * np.sqrt(qq):.4g} "
            "(38.5 standard deviations); it grows too fast for the Gaussian weight, so the expectation "
            "diverges or leaves the double range"
        )
