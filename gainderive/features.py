r"""Feature points of an integrand: where, and on what scale, it changes faster than the panels see.

Adaptive quadrature bisects a panel only when its two rules disagree.  A
feature much narrower than the panel (``x*exp(-1e8*(x - 0.5)**2)``, or
``tanh(z)`` at q = 1e8, whose whole transition fits in t = z/\sqrt q < 1e-4)
can fall between every node of both rules: they agree on the wrong answer and
the error estimate is 0.  The remedy is to cut the panels where the features
are, at their scale, before any rule is applied.

For every non-polynomial function application g(u) of an integrand (exp, tanh,
sigmoid, softplus, erf, Phi, log, sin, ..., and u^p with p negative or
fractional) whose argument u is a polynomial in x with numeric coefficients,
g(u(x)) changes where u does:

* near a real root x_0 of u (the sign change of tanh(k(x - b)), the pole of
  1/u, the singularity of log u) and
* near a real stationary point of u (the peak of exp(-a(x - b)^2), the
  near-pole of 1/(1 + a(x - b)^2)),

on the scale over which the Taylor series of u about x_0 moves by one:

.. math::  w(x_0) = \min_{n \ge 1,\; u^{(n)}(x_0) \ne 0} \bigl(n! / |u^{(n)}(x_0)|\bigr)^{1/n},

which is 1/|u'(x_0)| at a simple root and \sqrt{2/|u''(x_0)|} at a simple
stationary point.  So tanh(k(x - b)) has the feature (b, 1/k),
exp(-a(x - b)^2) and 1/(1 + a(x - b)^2) have (b, 1/\sqrt a), sigmoid(kx + c)
has (-c/k, 1/k).  Where g is singular at u = 0 (u^p, log u) a complex root
x_0 + i y close to the real line is a feature of width |y| too
(\sqrt{x^2 + \epsilon} at x = 0 on the scale \sqrt\epsilon).

Arguments that are not polynomials (tanh(softplus(x)) inside Mish) are left
to adaptivity: their inner polynomial arguments are found anyway.

:func:`cut_offsets` and :func:`feature_cuts` place the panel cuts around each
feature, one rule shared by the quadrature and high-precision backends.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import mpmath as mp
import numpy as np

if TYPE_CHECKING:
    import sympy as sp

__all__ = [
    "DEFAULT_FEATURE", "MAX_FEATURES", "REACH_T", "cut_offsets", "feature_cuts", "feature_cuts_array", "feature_points",
]

#: Every activation has structure at |z| of order 1 (its kink, its saturation), whatever its formula says.
DEFAULT_FEATURE = (0.0, 1.0)
#: At most this many features are kept, the narrowest first: they are the ones adaptivity cannot find alone.
MAX_FEATURES = 32
# Cuts at centre +- width * 4^k / 2 for k = 0..4 resolve the transition and its exponential tails (e^{-128}
# beyond); then every factor 16 out to the reach, so that an algebraic tail (1/z^4) is never skipped by a whole
# panel.  A panel [r, 16 r] from the centre still has its first Kronrod node at 1.03 r: it sees the tail.
_FINE = (0.5, 2.0, 8.0, 32.0, 128.0)
_COARSE_RATIO = 16.0
# Widths whose ratio is below this describe one feature: the narrower one's cuts resolve both.
_SAME_SCALE = 4.0
#: In t = z/sqrt(q): the offsets of a feature's cuts stop past this distance from its centre, where the t-grid
#: (0, +-2, +-5, +-9, ...) takes over; its panels are then no longer wide compared to that distance.
REACH_T = 1.0
_MAX_DEGREE = 64  # polynomials beyond this degree are left to adaptivity (their roots cost more than they help)


def feature_points(expressions: Iterable[sp.Expr]) -> tuple[tuple[float, float], ...]:
    """(centre, width) in z of every feature of the given expressions in x, narrowest first, deduplicated.

    At most :data:`MAX_FEATURES` are returned; the default feature (0, 1) is not included (the backends add it).
    """
    import sympy as sp

    from .formula import X

    found: list[tuple[float, float]] = []
    seen: set[tuple[sp.Expr, bool]] = set()
    for expr in expressions:
        for node in sp.preorder_traversal(expr):
            for argument, singular in _arguments(node):
                if (argument, singular) not in seen:
                    seen.add((argument, singular))
                    found.extend(_polynomial_features(argument, X, singular))
    return _deduplicate(found)


def _arguments(node: Any) -> list[tuple[Any, bool]]:
    """The arguments u of a non-polynomial application g(u), each with whether g is singular at u = 0."""
    import sympy as sp

    if node.is_Pow:
        p = node.exp
        if p.is_number and p.is_real and (p.is_negative or not p.is_integer):
            return [(node.base, True)]
        return []
    if isinstance(node, sp.Function) and not isinstance(node, sp.Piecewise):
        singular = isinstance(node, sp.log)
        return [(a, singular) for a in node.args if isinstance(a, sp.Expr) and not a.is_number]
    return []


def _polynomial_features(u: Any, x: Any, singular: bool) -> list[tuple[float, float]]:
    """Features of g(u) for a polynomial u in x: its real roots and real stationary points, with their widths."""
    import sympy as sp

    from .budget import polynomial_degree

    if not u.has(x) or polynomial_degree(u, x) > _MAX_DEGREE or not u.is_polynomial(x):
        return []  # the degree bound first: Poly would expand ((x + 1)**64)**64 before its degree could be seen
    try:
        poly = sp.Poly(u, x)
    except sp.PolynomialError:
        return []
    if not 1 <= poly.degree() <= _MAX_DEGREE or not all(c.is_number and c.is_real for c in poly.all_coeffs()):
        return []
    try:
        coeffs = [float(c) for c in poly.all_coeffs()]
    except (TypeError, ValueError):
        return []
    if not all(math.isfinite(c) for c in coeffs):
        return []
    derivatives = _derivatives(coeffs)
    out = []
    # roots of u, from its square-free factors (exact where the coefficients are rational: a double root
    # stays one point instead of splitting into a complex pair), then stationary points of u
    candidates = [(root, True) for root in _roots(poly, x)]
    if poly.degree() >= 2:
        candidates += [(point, False) for point in _roots(sp.Poly(poly.diff(x), x), x)]
    for root, is_root in candidates:
        centre = root.real
        width = _local_scale(derivatives, centre)
        if not (math.isfinite(centre) and math.isfinite(width) and width > 0):
            continue
        if abs(root.imag) > width:
            continue  # too far from the real line to shape g(u(x)) for real x
        out.append((centre, width))
        if singular and is_root and root.imag != 0 and abs(root.imag) < width:
            out.append((centre, abs(root.imag)))  # the singularity of g(u) sits that close to the real line
    return out


def _roots(poly: Any, x: Any) -> Iterable[complex]:
    """The distinct roots of ``poly`` as complex numbers (one per root, whatever its multiplicity)."""
    import sympy as sp

    if poly.degree() < 1:
        return []
    try:
        _, factors = sp.sqf_list(poly)
        parts = [factor for factor, _ in factors]
    except (sp.polys.polyerrors.BasePolynomialError, NotImplementedError, TypeError, ValueError):
        parts = [poly]  # e.g. coefficients sympy cannot factor over: numeric roots of the whole polynomial
    out = []
    for factor in parts:
        coeffs = [complex(c) for c in sp.Poly(factor, x).all_coeffs()]
        if len(coeffs) > 1:
            out.extend(complex(r) for r in np.roots(coeffs))
    return out


def _derivatives(coeffs: list[float]) -> list[list[float]]:
    """Coefficient lists (highest power first) of u, u', u'', ... down to the constant."""
    out = [coeffs]
    while len(out[-1]) > 1:
        c = out[-1]
        n = len(c) - 1
        out.append([c[i] * (n - i) for i in range(n)])
    return out


def _local_scale(derivatives: list[list[float]], x0: float) -> float:
    """min over n >= 1 of (n!/|u^(n)(x0)|)^(1/n): the distance over which u moves by about 1."""
    best = math.inf
    for n in range(1, len(derivatives)):
        with np.errstate(over="ignore", invalid="ignore"):
            d = abs(float(np.polyval(derivatives[n], x0)))
            # a derivative that vanishes up to rounding at a computed root or stationary point is 0
            size = max(abs(float(np.polyval(np.abs(derivatives[n]), abs(x0)))), 1e-300)
        if not math.isfinite(d):
            continue
        if d > 1e-9 * size and d > 0:
            with np.errstate(over="ignore"):
                best = min(best, (math.factorial(n) / d) ** (1.0 / n))
    return best


def _deduplicate(found: list[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """Merge features at the same centre whose widths are within a factor 4; keep the narrowest MAX_FEATURES."""
    kept: list[tuple[float, float]] = []
    for centre, width in sorted(found, key=lambda f: f[1]):
        same = any(abs(centre - c) <= 1e-9 * max(1.0, abs(c)) + 0.25 * w and width <= _SAME_SCALE * w
                   for c, w in kept)
        if not same:
            kept.append((centre, width))
        if len(kept) == MAX_FEATURES:
            break
    return tuple(kept)


def cut_offsets(reach: float) -> list[float]:
    """Multiples m of a feature's width to cut at on each side of its centre, up to the first m >= ``reach``.

    1/2, 2, 8, 32, 128 (the transition and its exponential tails), then a factor 16 at a time: a panel that
    spans a much larger factor in distance from the feature could have every node beyond an algebraic tail.
    """
    out = []
    # in the arithmetic of reach: an mpmath reach (q beyond the double range) may need offsets beyond 1e308
    fine = _FINE if isinstance(reach, (float, int)) else [mp.mpf(m) for m in _FINE]
    for m in fine:
        out.append(m)
        if m >= reach:
            return out
    while out[-1] < reach and len(out) < 2048:
        out.append(out[-1] * _COARSE_RATIO)
    return out


def feature_cuts(features: Iterable[tuple[float, float]], s: Any, tail: Any) -> list[Any]:
    """Cuts t = (centre +- width * m) / s inside (-tail, tail) for one standard deviation s = sqrt(q).

    Works in whatever arithmetic ``s`` is (float or mpmath); the default feature (0, 1) is always included.
    The offsets m go out to REACH_T in t, beyond which the t-grid's panels (0, 2, 5, 9, ...) are no wider
    than their distance from the feature.
    """
    cuts = []
    for centre, width in _deduplicate([DEFAULT_FEATURE, *features]):
        c, w = centre / s, width / s
        cuts.append(c)
        reach = REACH_T / w  # an mpmath number is never infinite; a float can be
        for m in cut_offsets(min(reach, 1e300) if isinstance(reach, float) else reach):
            cuts.extend((c - w * m, c + w * m))
    return sorted({t for t in cuts if -tail < t < tail})


def feature_cuts_array(features: Iterable[tuple[float, float]], s: np.ndarray, tail: float) -> np.ndarray:
    """:func:`feature_cuts` for many s at once: an array (len(s), n), clipped to [-tail, tail] (numpy).

    Every s gets the offsets the widest reach needs; the surplus lands beyond REACH_T, where it only adds panels
    the t-grid would have had anyway, or on +-tail, where it adds none.
    """
    columns = []
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        for centre, width in _deduplicate([DEFAULT_FEATURE, *features]):
            c, w = centre / s, width / s
            m = np.array(cut_offsets(float(min(np.max(REACH_T / w), 1e300))))
            offsets = np.outer(w, m)
            offsets[offsets > 16 * REACH_T] = np.inf  # beyond the reach for this s: merged into the clip at +-tail
            columns += [c[:, None], c[:, None] - offsets, c[:, None] + offsets]
        return np.clip(np.concatenate(columns, axis=1), -tail, tail)
