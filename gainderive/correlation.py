r"""Correlation kernels: E[f(u) f(v)] for a bivariate Gaussian pair (u, v).

For (u, v) Gaussian with variances q1, q2 and correlation c, the kernel

.. math::  K_f(q_1, q_2, c) = E[f(u)\,f(v)]

drives how a wide network maps the correlation of two inputs from layer to
layer (Poole et al. 2016; Schoenholz et al. 2017, ICLR); the same kernel of
f' gives the correlation map's slope.

**Closed forms** (each verified against quadrature on first use), with
r = sqrt(q1 q2) and theta = arccos c:

* relu, the arc-cosine kernel of degree 1 (Cho & Saul 2009, NeurIPS):
  r (sin theta + (pi - theta) c) / (2 pi); its f' (a step) gives (pi - theta) / (2 pi);
* leaky_relu and prelu with slope a, as a x + (1 - a) relu(x):
  a r c + (1 - a)^2 K_relu, and a + (1 - a)^2 (pi - theta) / (2 pi);
* abs = 2 relu(x) - x: 4 K_relu - r c; its f' (the sign) gives (2 / pi) arcsin c;
* erf (Williams 1997, NeurIPS): (2 / pi) arcsin(2 r c / sqrt((1 + 2 q1)(1 + 2 q2)));
  its f' gives (4 / pi) / sqrt((1 + 2 q1)(1 + 2 q2) - 4 r^2 c^2);
* sin: e^{-(q1 + q2)/2} sinh(r c); its f' (cos) gives e^{-(q1 + q2)/2} cosh(r c);
* gelu = x Phi(x): orthant moments of a bivariate Gaussian (see :func:`_gelu`); its f' kernel uses quadrature;
* identity: r c, and 1.

**Quadrature** otherwise.  Write u = sqrt(q1) x, v = sqrt(q2) (c x + s y) with
s = sqrt(1 - c^2) and x, y independent standard normals:

.. math::  K = \int \varphi(x) f(\sqrt{q_1}x)\, G(x)\, dx, \qquad
           G(x) = \int \varphi(y) f(\sqrt{q_2}(c x + s y))\, dy .

Both integrals are adaptive Gauss-Kronrod (G10/K21) over panels split at the
kinks: the outer one at f's breakpoints b, x = b / sqrt(q1), and where G's
inner kink crosses y = 0, x = b / (c sqrt(q2)) (for c near +-1, G is nearly a
kink there); the inner one, for every outer node at once, at
y = (b / sqrt(q2) - c x) / s.  Inner integrals are taken to 1e-14 relative,
the outer to ``rtol`` (default 1e-12).  At c = +-1 the inner integral is
f(+-sqrt(q2) x) itself.

**High precision**: the same splitting with nested mpmath Gauss-Legendre
panels at ``digits`` digits, for verification (one c at a time; tens of
seconds per value).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import mpmath as mp
import numpy as np

from .errors import ConvergenceError, DivergenceError, GainDeriveError
from .estimate import Estimate

if TYPE_CHECKING:
    from .activation import Activation

__all__ = ["KERNEL_METHODS", "closed_form_kernel", "kernel"]

KERNEL_METHODS = ("auto", "closed_form", "quadrature", "high_precision")
DEFAULT_RTOL = 1e-12
_INNER_RTOL = 1e-14
_TAIL = 38.5
_GRID = (0.0, 2.0, -2.0, 5.0, -5.0, 9.0, -9.0)
_MAX_ROUNDS = 50
_MAX_PANELS = 400_000
_EPS = np.finfo(float).eps


# ---------------------------------------------------------------- closed forms

def _relu(r, c, theta):
    # sin(arccos c) as sqrt((1 - c)(1 + c)): exactly 0 at c = +-1, where np.sin(np.pi) is 1.2e-16
    return r * (np.sqrt((1 - c) * (1 + c)) + (np.pi - theta) * c) / (2 * np.pi)


def _step(theta):
    return (np.pi - theta) / (2 * np.pi)


def _gelu(q1, q2, r, c, theta):
    """E[u Phi(u) v Phi(v)] by hand: Phi(u) = P(A <= u), Phi(v) = P(B <= v) with A, B ~ N(0, 1) independent.

    With W = (u - A, v - B) (covariance S = [[1 + q1, rho], [rho, 1 + q2]], rho = r c), regress u = a.W + e1,
    v = b.W + e2; then E = E[(a.W)(b.W); W > 0] + Cov(e1, e2) P(W > 0), and the orthant moments of a
    standardised pair (X, Y) of correlation k are P = 1/4 + asin(k)/(2 pi), E[X^2; +] = P + k sqrt(1 - k^2)/(2 pi),
    E[XY; +] = k P + sqrt(1 - k^2)/(2 pi) (Rosenbaum 1961, J. R. Stat. Soc. B 23).
    """
    rho = r * c
    s11, s22 = 1 + q1, 1 + q2
    det = s11 * s22 - rho * rho
    a1, a2 = (s22 * q1 - rho * rho) / det, (s11 * rho - rho * q1) / det  # S^-1 (q1, rho)
    b1, b2 = (s22 * rho - rho * q2) / det, (s11 * q2 - rho * rho) / det  # S^-1 (rho, q2)
    sd1, sd2 = np.sqrt(s11), np.sqrt(s22)
    k = rho / (sd1 * sd2)
    root = np.sqrt((1 - k) * (1 + k))
    p = 0.25 + np.arcsin(k) / (2 * np.pi)
    square, cross = p + k * root / (2 * np.pi), k * p + root / (2 * np.pi)
    residual = rho - (a1 * rho + a2 * q2)  # Cov(e1, e2) = rho - a.(rho, q2)
    return (a1 * b1 * s11 * square + (a1 * b2 + a2 * b1) * sd1 * sd2 * cross + a2 * b2 * s22 * square
            + residual * p)


def _leaky(a: float):
    return (lambda q1, q2, r, c, th: a * r * c + (1 - a) ** 2 * _relu(r, c, th),
            lambda q1, q2, r, c, th: a + (1 - a) ** 2 * _step(th))


#: name -> (slope parameter or None, builder returning (K_f, K_f')) of (q1, q2, r, c, theta)
_KERNELS: dict[str, tuple[str | None, Callable[[float], tuple[Callable, Callable]]]] = {
    "identity": (None, lambda _: (lambda q1, q2, r, c, th: r * c, lambda q1, q2, r, c, th: np.ones_like(c))),
    "relu": (None, lambda _: (lambda q1, q2, r, c, th: _relu(r, c, th), lambda q1, q2, r, c, th: _step(th))),
    "leaky_relu": ("negative_slope", _leaky),
    "prelu": ("a", _leaky),
    "abs": (None, lambda _: (lambda q1, q2, r, c, th: 4 * _relu(r, c, th) - r * c,
                             lambda q1, q2, r, c, th: 2 / np.pi * np.arcsin(c))),
    "erf": (None, lambda _: (
        lambda q1, q2, r, c, th: 2 / np.pi * np.arcsin(2 * r * c / np.sqrt((1 + 2 * q1) * (1 + 2 * q2))),
        lambda q1, q2, r, c, th: 4 / np.pi / np.sqrt((1 + 2 * q1) * (1 + 2 * q2) - 4 * (r * c) ** 2))),
    "gelu": (None, lambda _: (lambda q1, q2, r, c, th: _gelu(q1, q2, r, c, th), None)),
    "sin": (None, lambda _: (lambda q1, q2, r, c, th: np.exp(-(q1 + q2) / 2) * np.sinh(r * c),
                             lambda q1, q2, r, c, th: np.exp(-(q1 + q2) / 2) * np.cosh(r * c))),
}
_KERNELS["linear"] = _KERNELS["identity"]
_VERIFY_AT = ((1.0, 1.0, 0.5), (0.3, 2.0, -0.7), (4.0, 0.5, 0.95))


def closed_form_kernel(act: Activation, derivative: bool = False) -> Callable | None:
    """The verified closed-form kernel (q1, q2, c) -> K of ``act`` (of f' if ``derivative``), or None."""
    return _verified_kernel(act.name, tuple(sorted(act.parameter_values.items())), derivative)


@lru_cache(maxsize=64)
def _verified_kernel(name: str, params: tuple, derivative: bool) -> Callable | None:
    entry = _KERNELS.get(name)
    if entry is None:
        return None
    slope, build = entry
    forms = build(dict(params)[slope] if slope else 0.0)
    form = forms[1] if derivative else forms[0]
    if form is None:
        return None

    def kernel_value(q1: float, q2: float, c):
        c = np.clip(np.asarray(c, dtype=float), -1.0, 1.0)
        return form(q1, q2, math.sqrt(q1 * q2), c, np.arccos(c))

    # never shown unverified: agree with 2-D quadrature at three (q1, q2, c) to 1e-10
    from .registry import activation

    act = activation(name, **dict(params))
    for q1, q2, c in _VERIFY_AT:
        numeric = _quadrature(act, q1, q2, np.array([c]), derivative, DEFAULT_RTOL).value[0]
        closed = float(kernel_value(q1, q2, c))
        if abs(closed - numeric) > 1e-10 * max(abs(numeric), 1e-3):
            import warnings

            warnings.warn(f"the closed-form kernel of {name} disagrees with quadrature at q1={q1}, q2={q2}, c={c} "
                          f"({closed!r} vs {numeric!r}); using quadrature", RuntimeWarning, stacklevel=2)
            return None
    return kernel_value


# ---------------------------------------------------------------- public entry

def kernel(
    activation: str | Activation,
    correlation: Any,
    variance: Any = 1.0,
    variance2: Any = None,
    *,
    derivative: bool = False,
    method: str = "auto",
    digits: int | None = None,
    rtol: float = DEFAULT_RTOL,
    **params: Any,
) -> Estimate:
    """E[f(u) f(v)] (or E[f'(u) f'(v)] with ``derivative``) for Gaussian (u, v) of correlation c.

    u and v have variances ``variance`` (q1) and ``variance2`` (q2, default q1).
    ``correlation`` is a number or an array of c in [-1, 1] (vectorised, except
    for ``method="high_precision"``).  ``method``: ``"auto"`` (a verified
    closed form if the activation has one, else quadrature), ``"closed_form"``
    (an error if there is none), ``"quadrature"`` or ``"high_precision"``.

    >>> round(float(kernel("relu", 0.0).value), 15) == round(1 / (2 * math.pi), 15)   # E[relu]^2 at c = 0
    True
    """
    from .registry import activation as make_activation

    if method not in KERNEL_METHODS:
        raise GainDeriveError(f"unknown method {method!r}; accepted: {', '.join(KERNEL_METHODS)}")
    act = make_activation(activation, **params)
    q1 = _check_q(variance)
    q2 = q1 if variance2 is None else _check_q(variance2)
    c = check_correlation(correlation)
    if method in ("auto", "closed_form"):
        form = closed_form_kernel(act, derivative)
        if form is not None:
            value = np.asarray(form(q1, q2, c), dtype=float)
            # a few roundings in arccos, arcsin and the products
            return Estimate(value[()], (64 * _EPS * np.abs(value))[()], "closed_form")
        if method == "closed_form":
            raise GainDeriveError(f"{act.name} has no closed-form kernel; those with one: {', '.join(sorted(_KERNELS))}"
                                  "; use method='quadrature'")
    if method == "high_precision":
        if np.ndim(c):
            raise GainDeriveError("the high-precision kernel takes one correlation c at a time")
        return _high_precision(act, q1, q2, float(c), derivative, digits or 30)
    result = _quadrature(act, q1, q2, np.atleast_1d(c), derivative, rtol)
    return Estimate(result.value.reshape(np.shape(c))[()], result.error.reshape(np.shape(c))[()], "quadrature")


def _check_q(q: Any) -> float:
    from .moments import check_variance

    return float(check_variance(q, scalar=True))


def check_correlation(c: Any) -> np.ndarray:
    """Validate c: finite and within [-1, 1]."""
    try:
        arr = np.asarray(c, dtype=float)
    except (TypeError, ValueError):
        raise GainDeriveError(f"correlation c must be a number in [-1, 1], got {c!r}") from None
    if arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(np.abs(arr) > 1):
        bad = arr[~(np.isfinite(arr) & (np.abs(arr) <= 1))].ravel() if arr.size else arr
        raise GainDeriveError(f"correlation c must be in [-1, 1]; got {bad[0] if bad.size else 'an empty array'}")
    return arr


# ---------------------------------------------------------------- float64 quadrature

def _pieces(act: Activation, derivative: bool):
    """(breakpoints, numpy programs per piece) for f or f'."""
    from .integrand import DF, F, integrand

    ig = integrand(act, {"df": DF} if derivative else {"f": F})
    return np.asarray(ig.breakpoints, dtype=float), ig


def _evaluate(cuts: np.ndarray, programs, z: np.ndarray) -> np.ndarray:
    """f(z) piece by piece; panels never straddle a kink, so each node lies inside one piece."""
    out = np.empty_like(z)
    index = np.searchsorted(cuts, z)
    with np.errstate(all="ignore"):
        for k, program in enumerate(programs):
            mask = index == k
            if mask.any():
                out[mask] = program(z[mask])[0]
    if not np.all(np.isfinite(out)):
        bad = z[~np.isfinite(out)].ravel()[0]
        raise DivergenceError(f"the activation is not finite at z = {bad:.6g}, inside the range the kernel needs")
    return out


@lru_cache(maxsize=1)
def _gauss_kronrod():
    from .backends._gauss_kronrod import GAUSS_INDEX, GAUSS_WEIGHTS, KRONROD_NODES, KRONROD_WEIGHTS

    wg = np.zeros(len(KRONROD_WEIGHTS))
    wg[list(GAUSS_INDEX)] = GAUSS_WEIGHTS
    return np.array(KRONROD_NODES), np.array(KRONROD_WEIGHTS), wg


def _panels(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Panels between the sorted rows of ``points`` (one row per integral), dropping empty ones."""
    mesh = np.sort(np.clip(points, -_TAIL, _TAIL), axis=1)
    a, b = mesh[:, :-1], mesh[:, 1:]
    owner = np.broadcast_to(np.arange(mesh.shape[0])[:, None], a.shape)
    keep = b > a
    return a[keep], b[keep], owner[keep]


def _adaptive(func: Callable[[np.ndarray, np.ndarray], np.ndarray], a, b, owner, n: int, rtol: float,
              shared: float = 0.0):
    """Adaptive G10/K21 for n integrals at once: ∫ func(t, owner) φ(t) dt over each owner's panels.

    Returns (value, error, E|.|) per owner.  A panel is accepted when its
    owner has converged or its error is within its share of the tolerance.
    ``shared`` > 0 adds an absolute floor, that fraction of the largest E|.|
    of all owners: the inner integrals feed one outer sum, and an inner value
    that underflows towards 0 (a far outer node) needs no relative accuracy.
    """
    xk, wk, wg = _gauss_kronrod()
    total, error, l1 = np.zeros(n), np.zeros(n), np.zeros(n)
    for _ in range(_MAX_ROUNDS):
        if not a.size:
            return total, error, l1
        mid, half = 0.5 * (a + b), 0.5 * (b - a)
        t = mid[:, None] + half[:, None] * xk
        values = func(t, owner) * (np.exp(-0.5 * t * t) / math.sqrt(2 * math.pi))
        k, g = values @ wk * half, values @ wg * half
        ab = np.abs(values) @ wk * half
        e = np.maximum(np.abs(k - g), 50 * _EPS * ab)
        all_total = total + np.bincount(owner, k, n)
        all_error = error + np.bincount(owner, e, n)
        all_l1 = l1 + np.bincount(owner, ab, n)
        tol = np.maximum(np.maximum(rtol * np.abs(all_total), 100 * _EPS * all_l1), shared * all_l1.max())
        done = all_error <= tol
        share = np.maximum(half / _TAIL, ab / np.where(all_l1 > 0, all_l1, 1.0)[owner])
        accept = done[owner] | (e <= 0.5 * tol[owner] * share)
        total += np.bincount(owner, k * accept, n)
        error += np.bincount(owner, e * accept, n)
        l1 += np.bincount(owner, ab * accept, n)
        if accept.all():
            return total, error, l1
        refine = ~accept
        if 2 * refine.sum() > _MAX_PANELS:
            break
        a, b, owner, mid = a[refine], b[refine], owner[refine], mid[refine]
        a, b, owner = np.concatenate([a, mid]), np.concatenate([mid, b]), np.concatenate([owner, owner])
    raise ConvergenceError("the correlation kernel did not converge: the activation is probably singular, or varies "
                           "too fast at this variance for double-precision quadrature (try method='high_precision')")


def _quadrature(act: Activation, q1: float, q2: float, c: np.ndarray, derivative: bool, rtol: float) -> Estimate:
    cuts, ig = _pieces(act, derivative)
    programs = ig.numpy_pieces
    s1, s2 = math.sqrt(q1), math.sqrt(q2)
    c = np.asarray(c, dtype=float)
    s = np.sqrt(np.maximum(0.0, 1.0 - c * c))
    grid = np.array(_GRID)

    def inner(x: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """G(x) = E_y[f(sqrt(q2) (c x + s y))] for every outer node."""
        flat_cx = (c[owner][:, None] * x).ravel()
        flat_s = np.broadcast_to(s[owner][:, None], x.shape).ravel()
        value = np.empty(flat_cx.size)
        sharp = flat_s == 0
        if sharp.any():  # |c| = 1: v is a multiple of u
            value[sharp] = _evaluate(cuts, programs, s2 * flat_cx[sharp])
        smooth = np.nonzero(~sharp)[0]
        if smooth.size:
            kinks = (cuts[None, :] / s2 - flat_cx[smooth, None]) / flat_s[smooth, None]
            points = np.concatenate([np.broadcast_to(grid, (smooth.size, grid.size)), kinks,
                                     np.full((smooth.size, 2), [-_TAIL, _TAIL])], axis=1)
            ia, ib, io = _panels(points)
            mean, sd = s2 * flat_cx[smooth], s2 * flat_s[smooth]

            def integrand(y: np.ndarray, o: np.ndarray) -> np.ndarray:
                return _evaluate(cuts, programs, mean[o][:, None] + sd[o][:, None] * y)

            value[smooth] = _adaptive(integrand, ia, ib, io, smooth.size, _INNER_RTOL, 1e-16)[0]
        return value.reshape(x.shape)

    def outer(x: np.ndarray, owner: np.ndarray) -> np.ndarray:
        return _evaluate(cuts, programs, s1 * x) * inner(x, owner)

    with np.errstate(divide="ignore", invalid="ignore"):
        crossings = np.where(c[:, None] != 0, cuts[None, :] / (c[:, None] * s2), 0.0)
    points = np.concatenate([np.broadcast_to(grid, (c.size, grid.size)),
                             np.broadcast_to(cuts / s1, (c.size, cuts.size)), crossings,
                             np.full((c.size, 2), [-_TAIL, _TAIL])], axis=1)
    a, b, owner = _panels(points)
    value, error, l1 = _adaptive(outer, a, b, owner, c.size, rtol)
    # each inner integral is within 1e-14 of its value or 100 eps of E|f|: at most ~3e-14 E|f(u) G| in all
    return Estimate(value, error + 3 * _INNER_RTOL * l1, "quadrature")


# ---------------------------------------------------------------- high precision

def _high_precision(act: Activation, q1: float, q2: float, c: float, derivative: bool, digits: int) -> Estimate:
    """Nested Gauss-Legendre panels at ``digits`` digits, split at every kink (for verification).

    Both integrals are truncated where the Gaussian weight drops below
    10^-(digits + 12) and cut into panels of width <= 2 at the kinks; the
    node count per panel doubles from 12 until two successive results agree
    to ``digits`` digits, and their difference is the error estimate.
    Refused (ConvergenceError) when 96 nodes do not get there: e.g. for |c|
    so close to 1 that the inner integral is nearly a kink.
    """
    from mpmath.calculus.quadrature import GaussLegendre

    from .integrand import DF, F, integrand

    ig = integrand(act, {"df": DF} if derivative else {"f": F})
    with mp.workdps(digits + 10):
        programs = ig.mpmath_pieces(digits + 10)
        cuts = [mp.mpf(str(b)) for b in ig.breakpoints]
        mq1, mq2, mc = (mp.mpf(repr(v)) for v in (q1, q2, c))
        s1, s2, s = mp.sqrt(mq1), mp.sqrt(mq2), mp.sqrt(1 - mc * mc)
        tail = mp.sqrt(2 * (digits + 12) * mp.log(10))
        norm = 1 / mp.sqrt(2 * mp.pi)

        def f(z):
            return programs[sum(1 for b in cuts if z > b)](z)[0]

        def panels(points):
            inside = sorted({mp.mpf(p) for p in points if -tail < p < tail} | {-tail, tail})
            out = []
            for a, b in zip(inside, inside[1:]):
                n = int(mp.ceil((b - a) / 2))
                out += [(a + (b - a) * k / n, a + (b - a) * (k + 1) / n) for k in range(n)]
            return out

        def integrate(func, points, nodes):
            total = mp.mpf(0)
            for a, b in panels(points):
                mid, half = (a + b) / 2, (b - a) / 2
                total += half * mp.fsum(w * func(mid + half * x) * mp.exp(-(mid + half * x) ** 2 / 2) for x, w in nodes)
            return total * norm

        def value(nodes):
            def inner(x):
                if s == 0:
                    return f(s2 * mc * x)
                return integrate(lambda y: f(s2 * (mc * x + s * y)), [(b / s2 - mc * x) / s for b in cuts], nodes)

            splits = [b / s1 for b in cuts] + ([b / (mc * s2) for b in cuts] if mc != 0 else [])
            return integrate(lambda x: f(s1 * x) * inner(x), splits, nodes)

        rule = GaussLegendre(mp.mp)
        target = mp.mpf(10) ** (-digits)
        previous = value(rule.calc_nodes(3, mp.mp.prec))
        for degree in (4, 5, 6):  # 24, 48, 96 nodes per panel, until two successive orders agree
            fine = value(rule.calc_nodes(degree, mp.mp.prec))
            error, previous = abs(fine - previous), fine
            if error <= target * max(abs(fine), target):
                break
        else:
            raise ConvergenceError(f"the high-precision kernel did not reach {digits} digits at c = {c:g} (estimate "
                                   f"{mp.nstr(error, 3)}): |c| too close to 1, q too large or f singular")
        # two orders agreeing to the last digit still carry the working precision's rounding
        return Estimate(+fine, max(error, mp.eps * abs(fine)), "high_precision")
