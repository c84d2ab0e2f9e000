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

Each is evaluated in a form that does not cancel, and returned with a bound on its rounding error: near
c = -1, sin theta and (pi - theta) cos theta are both ~ (pi - theta) and their sum ~ (pi - theta)^3, so the
arc-cosine and orthant forms are written in theta' = pi - theta = arccos(-c) (to an ulp) with a series in
theta' where they would cancel (the arc-cosine form as sqrt((1 - c)(1 + c)) + c theta', without sin or cos,
and the series only for the c that need it: within 2x of the textbook formula in numpy); abs as
(2 r / pi)(sqrt(1 - c^2) + c arcsin c); erf's arcsine as an atan2 of
sums of positive terms (its argument is within 1/q of 1 at large q); sin and cos as e^{-E} (1 -+ e^{-2 r |c|}) / 2
with E >= 0 a sum of positive terms (no overflow times underflow); 1 - c^2 always as (1 - c)(1 + c).

**Quadrature** otherwise.  Write u = sqrt(q1) x, v = sqrt(q2) (c x + s y) with
s = sqrt(1 - c^2) and x, y independent standard normals:

.. math::  K = \int \varphi(x) f(\sqrt{q_1}x)\, G(x)\, dx, \qquad
           G(x) = \int \varphi(y) f(\sqrt{q_2}(c x + s y))\, dy .

**The fixed rule first** (:func:`_fixed_rule`), for an f without kinks: one product of trapezoid rules in x and
y on [-8.5, 8.5]^2 for every c at once, exact for a Gaussian times a function analytic in a strip up to
exp(-2 pi d / h) (Trefethen & Weideman 2014, SIAM Review 56), with steps h set by f's features (the strip's
half-width d is (pi/2) w / sqrt(q) for a feature of width w) and the same for every c.  Rules of steps 2h and
4h on shifted lattices estimate its error; a correlation whose bar is within ``rtol`` is done (for tanh at
q ~ 1: 16k evaluations, ~80 us per correlation), the others get the lattices with half the steps, and what is
still left goes to the adaptive rule below (2.8 ms per correlation of tanh).

**The adaptive rule**: both integrals are adaptive Gauss-Kronrod (G10/K21) over panels split at the
kinks: the outer one at f's breakpoints b, x = b / sqrt(q1), and where G's
inner kink crosses y = 0, x = b / (c sqrt(q2)) (for c near +-1, G is a kink
smoothed over |x| ~ s, and gets panels at that scale); the inner one, for every
outer node at once, at y = (b / sqrt(q2) - c x) / s; and both at f's features
(:mod:`gainderive.features`) on their own scale.  Every inner integral is taken
to 1e-14 of itself, every correlation's outer integral to ``rtol`` (default
1e-12) of itself, each with its own panel budget: a value never depends on the
other correlations in the batch.  The bar adds the outer rule's error, the
inner integrals' errors carried through the outer sum, the rounding of f's
argument and the Gaussian tails beyond 38.5 standard deviations.  At c = +-1
the inner integral is f(+-sqrt(q2) x) itself.  Either way each correlation is
accepted or refined on its own.

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
_HIGH_PRECISION_DIGITS = 30
_C_CHUNK = 1024  # correlations integrated together: ~25 MB of panels and nodes, whatever the batch
_SECONDS_PER_CORRELATION = 0.01  # tanh on 2 shared cores: 10,001 correlations took 48-100 s, 100,000 took 1,079 s
_INNER_RTOL = 1e-14
_TAIL = 38.5
_GRID = (0.0, 2.0, -2.0, 5.0, -5.0, 9.0, -9.0)
_MAX_ROUNDS = 50
_MAX_PANELS = 20_000  # outer panels per correlation
_INNER_PANELS = 2_000  # panels per inner integral
_INNER_CHUNK = 4_000  # inner integrals evaluated together: ~ chunk x panels x 21 floats per temporary (~15 MB)
_EPS = np.finfo(float).eps
_TINY = np.finfo(float).tiny
_SUBNORMAL = 8 * np.finfo(float).smallest_subnormal  # a result's last bits where it underflows


# ---------------------------------------------------------------- closed forms
#
# Each form returns (value, error): the kernel at the given floats and a bound on its rounding error.  Near
# c = -1 the arc-cosine and orthant forms cancel (sin θ + (π - θ) cos θ with both terms ~ π - θ), so they are
# written in θ' = π - θ = arccos(-c), which numpy computes to an ulp for every c, with a series where the
# difference of two near-equal terms would cancel.

_PI2 = 2 * np.pi


def _series(coefficients: tuple[float, ...]) -> Callable[[np.ndarray], np.ndarray]:
    """t -> a_1 + a_2 t^2 + a_3 t^4 + ..., Horner in t^2."""
    def value(t):
        u, total = t * t, np.zeros_like(t)
        for a in reversed(coefficients):
            total = total * u + a
        return total
    return value


# (sin t - t cos t) / t^3 = sum_k (-1)^(k+1) 2k t^(2k-2) / (2k+1)!;  (t - sin t cos t) / t^3 = sum_k (-1)^(k+1) 4^k
# t^(2k-2) / (2k+1)!: alternating, terms falling by t^2 / 4 or faster, 15 of them below 1e-17 of the first at t < 3/4
_J_SERIES = _series(tuple((-1) ** (k + 1) * 2 * k / math.factorial(2 * k + 1) for k in range(1, 16)))
_G_SERIES = _series(tuple((-1) ** (k + 1) * 4 ** k / math.factorial(2 * k + 1) for k in range(1, 16)))
_SERIES_BELOW = 0.75  # above, the differences lose less than 3 bits (J(3/4) = 0.13, g(3/4) = 0.25)


def _arcs(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(g(t) / t^3, its relative error bound, J(t) / t^3, its relative error bound) on [0, pi], t known to an ulp.

    J(t) = sin t - t cos t and g(t) = t - sin t cos t.  Divided by t^3 so that callers multiply t in one factor at
    a time: t^3 alone underflows for t < 1e-103, which θ' reaches in the GELU kernel at q ~ 1e206 and c = -1.
    sin and cos once each; the series only where t < 3/4 (the differences cancel there).
    """
    t = np.asarray(t, dtype=float)
    with np.errstate(all="ignore"):
        sine, cosine = np.sin(t), np.cos(t)
        j, g = sine - t * cosine, t - sine * cosine
        cube = t * t * t
        # the difference: the roundings of its terms and the argument's ulp through h', relative to h
        # (>= 0.13 where it is used)
        j_relative = 4 * _EPS * (np.abs(sine) + np.abs(t * cosine) + t * t * np.abs(sine)) / np.abs(j)
        g_relative = 4 * _EPS * (t + np.abs(sine * cosine) + 2 * t * sine * sine) / np.abs(g)
        j, g = j / cube, g / cube
        small = t < _SERIES_BELOW
        if small.any():
            # the series: a few roundings, and the argument's ulp through t h'/h <= 3
            near = t[small]
            j[small], g[small] = _J_SERIES(near), _G_SERIES(near)
            j_relative[small] = g_relative[small] = 16 * _EPS
    return g, g_relative, j, j_relative


def _cube(x, t):
    """x t^3, one factor of t at a time (x t^3 is representable where t^3 is not)."""
    return x * t * t * t


def _one_minus_c2(c: np.ndarray) -> np.ndarray:
    """1 - c^2 as (1 - c)(1 + c): to an ulp or two near c = +-1, where 1 - c*c keeps only the digits of 1e-16."""
    return (1 - c) * (1 + c)


def _arc_cosine(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(J(θ'), a bound on its rounding error) for θ' = arccos(-c), J = sin θ' - θ' cos θ' = sqrt(1 - c^2) + c θ'.

    Written in c itself: sin θ' = sqrt((1 - c)(1 + c)) and cos θ' = -c need neither sin nor cos.  The two terms are
    positive for c >= 0; for c < 0 they cancel, by less than 3 bits while θ' >= 3/4 (c >= -0.73), and below that
    J is θ'^3 times its series.  The sine's roundings are 2 eps of it, c θ' carries θ's few ulps (5 eps), the sum 1.
    """
    theta = np.arccos(-c)
    sine = np.sqrt((1 - c) * (1 + c))
    cross = c * theta
    j = sine + cross
    error = _EPS * (2 * sine + 5 * np.abs(cross) + j)
    small = theta < _SERIES_BELOW
    if small.any():
        # the series in θ' (16 eps: a few roundings and θ's ulps through t J'/J <= 3); θ'^3 >= 3e-24 for c >= -1
        near = theta[small]
        j[small] = near * near * near * _J_SERIES(near)
        error[small] = 24 * _EPS * j[small]
    return j, error


def _relu(q1, q2, c):
    """Arc-cosine kernel of degree 1 (Cho & Saul 2009): r (sin θ' - θ' cos θ') / (2 pi), θ' = pi - θ = arccos(-c)."""
    scale = math.sqrt(q1) * math.sqrt(q2) / _PI2
    j, j_error = _arc_cosine(c)
    return scale * j, scale * (j_error + 4 * _EPS * j)


def _step(q1, q2, c):
    """E[H(u) H(v)] = θ' / (2 pi): the probability that both are positive."""
    value = np.arccos(-c) / _PI2
    return value, 3 * _EPS * value


def _leaky(a: float):
    """Slope a: a x + (1 - a) relu(x) gives a r c + (1 - a)^2 K_relu, and a + (1 - a)^2 θ' / (2 pi) for f'."""
    b = (1 - a) ** 2

    def form(q1, q2, c):
        relu, relu_error = _relu(q1, q2, c)
        linear = a * (math.sqrt(q1) * math.sqrt(q2)) * c
        return linear + b * relu, b * relu_error + 4 * _EPS * (np.abs(linear) + b * relu)

    def derivative(q1, q2, c):
        step, step_error = _step(q1, q2, c)
        return a + b * step, b * step_error + 4 * _EPS * (abs(a) + b * step)

    return form, derivative


def _abs(q1, q2, c):
    """E|u||v| = (2 r / pi) (sqrt(1 - c^2) + c arcsin c): two non-negative terms, no cancellation."""
    r = math.sqrt(q1) * math.sqrt(q2)
    value = 2 * r / np.pi * (np.sqrt(_one_minus_c2(c)) + c * np.arcsin(c))
    return value, 8 * _EPS * value


def _sign(q1, q2, c):
    value = 2 / np.pi * np.arcsin(c)
    return value, 4 * _EPS * np.abs(value)


def _erf_scale(q1, q2, c):
    """(numerator, sqrt(D)) up to a common factor, D = (1 + 2 q1)(1 + 2 q2) - 4 r^2 c^2 written as a sum of positive
    terms 1 + 2 (q1 + q2) + 4 q1 q2 (1 - c^2), and divided by r^2 when r >= 1 so that nothing overflows."""
    r = math.sqrt(q1) * math.sqrt(q2)
    if r < 1:
        return r, np.sqrt(1 + 2 * (q1 + q2) + 4 * (r * r) * _one_minus_c2(c))
    return 1.0, np.sqrt((1 / r) ** 2 + 2 / q1 + 2 / q2 + 4 * _one_minus_c2(c))


def _erf(q1, q2, c):
    """Williams (1997): (2 / pi) arcsin(2 r c / sqrt((1 + 2 q1)(1 + 2 q2))) = (2 / pi) atan2(2 r c, sqrt(D)).

    atan2 of two arguments known to a few ulps is correct to a few ulps relative, even where the arcsine's
    argument is within 1/q of 1 and arcsin would magnify its rounding by sqrt(q).
    """
    scale, root = _erf_scale(q1, q2, c)
    value = 2 / np.pi * np.arctan2(2 * scale * c, root)
    return value, 12 * _EPS * np.abs(value)


def _erf_derivative(q1, q2, c):
    """E[erf'(u) erf'(v)] = (4 / pi) / sqrt(D)."""
    root = _erf_scale(q1, q2, c)[1]
    r = math.sqrt(q1) * math.sqrt(q2)
    value = 4 / np.pi / root if r < 1 else 4 / np.pi / root / r
    return value, 8 * _EPS * value


def _sin(q1, q2, c):
    """E[sin u sin v] = e^{-(q1 + q2)/2} sinh(r c) = sign(c) e^{-E} (1 - e^{-2 r |c|}) / 2.

    E = (q1 + q2)/2 - r |c| = (sqrt q1 - sqrt q2)^2 / 2 + r (1 - |c|) >= 0 is a sum of non-negative terms, so
    neither factor overflows and the exponent carries no cancellation; its own size sets the rounding.
    """
    exponent, x = _sin_exponent(q1, q2, c)
    with np.errstate(over="ignore"):
        value = np.sign(c) * 0.5 * np.exp(-exponent) * -np.expm1(-2 * x)
    return value, _EPS * (10 + 4 * exponent + 8 * x) * np.abs(value)


def _cos(q1, q2, c):
    """E[cos u cos v] = e^{-(q1 + q2)/2} cosh(r c) = e^{-E} (1 + e^{-2 r |c|}) / 2."""
    exponent, x = _sin_exponent(q1, q2, c)
    value = 0.5 * np.exp(-exponent) * (1 + np.exp(-2 * x))
    return value, _EPS * (10 + 4 * exponent + 8 * x) * value


def _sin_exponent(q1, q2, c):
    r = math.sqrt(q1) * math.sqrt(q2)
    x = r * np.abs(c)
    return (math.sqrt(q1) - math.sqrt(q2)) ** 2 / 2 + r * (1 - np.abs(c)), x


def _gelu(q1, q2, c):
    """E[u Phi(u) v Phi(v)] by hand: Phi(u) = P(A <= u), Phi(v) = P(B <= v) with A, B ~ N(0, 1) independent.

    With W = (u - A, v - B) (covariance S = [[1 + q1, rho], [rho, 1 + q2]], rho = r c), regress u = a.W + e1,
    v = b.W + e2; then E = E[(a.W)(b.W); W > 0] + Cov(e1, e2) P(W > 0), and the orthant moments of a
    standardised pair (X, Y) of correlation k are P = 1/4 + asin(k)/(2 pi), E[X^2; +] = P + k sqrt(1 - k^2)/(2 pi),
    E[XY; +] = k P + sqrt(1 - k^2)/(2 pi) (Rosenbaum 1961, J. R. Stat. Soc. B 23).

    Solved: with det S = 1 + q1 + q2 + q1 q2 (1 - c^2), a = ((q1 + q1 q2 (1 - c^2)), rho) / det S,
    b = (rho, q2 + q1 q2 (1 - c^2)) / det S and Cov(e1, e2) = rho / det S.  In θ' = arccos(-k) =
    atan2(sqrt(det S), -rho): P = θ' / (2 pi), E[X^2; +] = (θ' - sin θ' cos θ') / (2 pi) and
    E[XY; +] = (sin θ' - θ' cos θ') / (2 pi), each free of the cancellation at k -> -1 (large q, c -> -1).
    Every sum is of positive terms; for r >= 1 all of it is divided by q1 q2 so that nothing overflows.
    """
    r = math.sqrt(q1) * math.sqrt(q2)
    w = _one_minus_c2(c)
    if r < 1:
        det = 1 + q1 + q2 + (r * r) * w
        a1, b2, e = (q1 + (r * r) * w) / det, (q2 + (r * r) * w) / det, r * c / det
        theta = np.arctan2(np.sqrt(det), -r * c)
    else:
        det = (1 / r) ** 2 + 1 / q1 + 1 / q2 + w
        a1, b2, e = (1 / q2 + w) / det, (1 / q1 + w) / det, c / (r * det)
        theta = np.arctan2(np.sqrt(det), -c)
    g, g_relative, j, j_relative = _arcs(theta)
    s11, s22 = 1 + q1, 1 + q2
    square = e * (a1 * s11 + b2 * s22)
    cross = (a1 * b2 + e * e) * (math.sqrt(s11) * math.sqrt(s22))
    terms = (_cube(square, theta) * g / _PI2, _cube(cross, theta) * j / _PI2, e * theta / _PI2)
    value = terms[0] + terms[1] + terms[2]
    error = (np.abs(terms[0]) * g_relative + np.abs(terms[1]) * j_relative
             + 16 * _EPS * (np.abs(terms[0]) + np.abs(terms[1]) + np.abs(terms[2])))
    return value, error


def _identity(q1, q2, c):
    value = math.sqrt(q1) * math.sqrt(q2) * c
    return value, 2 * _EPS * np.abs(value)


def _one(q1, q2, c):
    return np.ones_like(c), np.zeros_like(c)


#: name -> (slope parameter or None, builder: slope -> (K_f, K_f' or None)), each (q1, q2, c) -> (value, error)
_KERNELS: dict[str, tuple[str | None, Callable[[float], tuple[Callable, Callable | None]]]] = {
    "identity": (None, lambda _: (_identity, _one)),
    "relu": (None, lambda _: (_relu, _step)),
    "leaky_relu": ("negative_slope", _leaky),
    "prelu": ("a", _leaky),
    "abs": (None, lambda _: (_abs, _sign)),
    "erf": (None, lambda _: (_erf, _erf_derivative)),
    "gelu": (None, lambda _: (_gelu, None)),
    "sin": (None, lambda _: (_sin, _cos)),
}
_KERNELS["linear"] = _KERNELS["identity"]
_VERIFY_AT = ((1.0, 1.0, 0.5), (0.3, 2.0, -0.7), (4.0, 0.5, 0.95))


def closed_form_kernel(act: Activation, derivative: bool = False) -> Callable | None:
    """The verified closed-form kernel (q1, q2, c) -> (K, error bound) of ``act`` (of f' if ``derivative``), or None."""
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
        """(value, error bound) at float q1, q2 and c (a number or an array)."""
        c = np.asarray(c, dtype=float)
        shape = c.shape
        # one dimension inside the forms: a 0-d array would come back from arithmetic as a scalar, which a form's
        # masked assignments cannot take
        value, error = form(float(q1), float(q2), np.clip(c.reshape(-1), -1.0, 1.0))
        error = error + _SUBNORMAL  # where the value underflows, its last bits
        return np.broadcast_to(value, c.size).reshape(shape)[()], np.broadcast_to(error, c.size).reshape(shape)[()]

    # never shown unverified: agree with 2-D quadrature at three (q1, q2, c) to 1e-10
    from .registry import activation

    act = activation(name, **dict(params))
    for q1, q2, c in _VERIFY_AT:
        numeric = _quadrature(act, q1, q2, np.array([c]), derivative, DEFAULT_RTOL).value[0]
        closed = float(kernel_value(q1, q2, c)[0])
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
    progress: Callable[[int, int], None] | None = None,
    **params: Any,
) -> Estimate:
    """E[f(u) f(v)] (or E[f'(u) f'(v)] with ``derivative``) for Gaussian (u, v) of correlation c.

    u and v have variances ``variance`` (q1) and ``variance2`` (q2, default q1).
    ``correlation`` is a number or an array of c in [-1, 1] (vectorised, except
    for ``method="high_precision"``), at most ``limit("correlations")`` of them
    (:mod:`gainderive.limits`).  ``method``: ``"auto"`` (a verified
    closed form if the activation has one, else quadrature), ``"closed_form"``
    (an error if there is none), ``"quadrature"`` or ``"high_precision"``
    (``digits`` significant digits, an int from 5 to ``limit("digits")``, default 30).

    Quadrature takes the correlations ``_C_CHUNK`` at a time: a fixed product rule for all of them at once
    (f without kinks), refined for the correlations whose error estimate misses ``rtol``, then the adaptive rule
    for what is left, each with its own tolerance and panel budget (a value does not depend on the others), so
    memory stays that of one chunk; ``progress(done, total)`` is called after each chunk with the number of
    correlations done.

    >>> round(float(kernel("relu", 0.0).value), 15) == round(1 / (2 * math.pi), 15)   # E[relu]^2 at c = 0
    True
    """
    from .limits import check_size
    from .moments import check_digits
    from .registry import activation as make_activation

    if method not in KERNEL_METHODS:
        raise GainDeriveError(f"unknown method {method!r}; accepted: {', '.join(KERNEL_METHODS)}")
    digits = check_digits(digits, _HIGH_PRECISION_DIGITS)
    q1 = _check_q(variance)
    q2 = q1 if variance2 is None else _check_q(variance2)
    c = check_correlation(correlation)
    check_size("correlations", c.size, cost=f"about {c.size * _SECONDS_PER_CORRELATION / 60:.0f} minutes of "
               "quadrature here")
    act = make_activation(activation, **params)
    if method in ("auto", "closed_form"):
        form = closed_form_kernel(act, derivative)
        if form is not None:
            value, error = form(q1, q2, c)
            return Estimate(value, error, "closed_form")
        if method == "closed_form":
            raise GainDeriveError(f"{act.name} has no closed-form kernel; those with one: {', '.join(sorted(_KERNELS))}"
                                  "; use method='quadrature'")
    if method == "high_precision":
        if np.ndim(c):
            raise GainDeriveError("the high-precision kernel takes one correlation c at a time")
        return _high_precision(act, q1, q2, float(c), derivative, digits)
    flat = np.atleast_1d(c).ravel()
    value, error = np.empty(flat.size), np.empty(flat.size)
    for lo in range(0, flat.size, _C_CHUNK):
        hi = min(lo + _C_CHUNK, flat.size)
        part = _quadrature(act, q1, q2, flat[lo:hi], derivative, rtol)
        value[lo:hi], error[lo:hi] = part.value, part.error
        if progress is not None:
            progress(hi, flat.size)
    return Estimate(value.reshape(np.shape(c))[()], error.reshape(np.shape(c))[()], "quadrature")


def _check_q(q: Any) -> float:
    from .moments import check_variance

    return float(check_variance(q, scalar=True))


def check_correlation(c: Any) -> np.ndarray:
    """Validate c: real numbers (not booleans, strings or complex), finite and within [-1, 1]."""
    try:
        arr = np.asarray(c)
    except (TypeError, ValueError):
        arr = np.asarray(None)
    if arr.dtype.kind not in "fiu":
        shown = " ".join(repr(c).split())
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise GainDeriveError(f"correlation c must be a real number in [-1, 1] or an array of them, got {shown}")
    arr = arr.astype(float, copy=False)
    inside = np.abs(arr) <= 1  # False for nan and +-inf too: one pass over the correlations
    if arr.size == 0 or not inside.all():
        bad = arr[~inside].ravel() if arr.size else arr
        raise GainDeriveError(f"correlation c must be in [-1, 1]; got {bad[0] if bad.size else 'an empty array'}")
    return arr


# ---------------------------------------------------------------- float64 quadrature

@lru_cache(maxsize=64)
def _pieces(act: Activation, derivative: bool):
    """(breakpoints, numpy programs per piece) for f or f' (cached: the integrand's own cache hashes sympy trees)."""
    from .integrand import DF, F, integrand

    ig = integrand(act, {"df": DF} if derivative else {"f": F})
    return np.asarray(ig.breakpoints, dtype=float), ig


def _evaluate(cuts: np.ndarray, programs, z: np.ndarray) -> np.ndarray:
    """f(z) piece by piece; panels never straddle a kink, so each node lies inside one piece."""
    with np.errstate(all="ignore"):
        if len(programs) == 1:
            out = np.asarray(programs[0](z)[0], dtype=float) * np.ones_like(z)
        else:
            out = np.empty_like(z)
            index = np.searchsorted(cuts, z)
            for k, program in enumerate(programs):
                mask = index == k
                if mask.any():
                    out[mask] = program(z[mask])[0]
    if not np.all(np.isfinite(out)):
        bad = z[~np.isfinite(out)].ravel()[0]
        raise DivergenceError(f"the activation is not finite at z = {bad:.6g}, inside the 38.5-standard-deviation "
                              "range the kernel needs: it diverges or leaves the double range (method="
                              "'high_precision' uses mpmath, which does not overflow)")
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


def _gaussian(t: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)


def _tails(func: Callable, n: int) -> np.ndarray:
    """A bound on ∫ over |t| > T of each owner's integrand h (with its Gaussian weight), T = 38.5.

    From h at T - 1 and T on each side: where |h| falls by a factor e^λ over that unit step with λ >= 1, and
    log|h| is concave beyond (the Gaussian's -t^2/2 outweighs any growth of f at most exponential), the tail is
    at most |h(T)| / λ.  Values below 1e-290 (|f| <= 1e32 at 38.5 sd: polynomial growth) get 64 |h(T)|.  An
    integrand still not decaying at T has an infinite bound: the owner does not converge.
    """
    t = np.broadcast_to(np.array([-_TAIL, 1 - _TAIL, _TAIL - 1, _TAIL]), (n, 4))
    h, h_error = func(t, np.arange(n), _gaussian(t))
    h = np.abs(h)
    bound = np.zeros(n)
    for edge, inside in ((0, 1), (3, 2)):
        h0, h1 = h[:, edge], h[:, inside]
        with np.errstate(all="ignore"):
            decay = np.log(h1 / h0)
        side = np.where(h0 == 0, 0.0, np.where(h0 < 1e-290, 64 * h0, np.where(decay >= 1, h0 / decay, np.inf)))
        bound += side + (0.0 if h_error is None else h_error[:, edge])
    return bound


def _adaptive(func: Callable, a, b, owner, n: int, rtol: float, max_panels: int, argument_scale=None):
    """Adaptive G10/K21 for n independent integrals at once: ∫ h(t) dt over each owner's panels of [-T, T].

    ``func(t, owner, weight)`` (t and weight: one row of nodes per panel, owner: one per panel) returns
    (h, h_error): the integrand including its Gaussian ``weight`` at the nodes, and an absolute bound on
    each value's error (the inner integrals' errors; None if exact).
    The panel error is QUADPACK's scaling of |K21 - G10|, at least 50 eps ∫|h| for the rounding of the sum.
    Added to it is the error neither rule can see because both share the nodes: f's argument at a node is
    only known to ~eps (|t| + ``argument_scale``) (per owner, in units of t; default 1), so f is integrated
    at shifted nodes, which costs up to that shift times ∫|d(h / weight)/dt| weight dt over the panel.

    Each owner (one correlation, or one inner integral) has its own tolerance, max(rtol |I|, 100 eps ∫|h|,
    the smallest normal float), its own budget of ``max_panels`` panels and ``_MAX_ROUNDS`` bisections, and
    its own sums: nothing about one integral depends on the others evaluated alongside it.  A panel is
    accepted when its owner has converged or its error is within its share of the tolerance.  The tolerance
    judges the rule's own error; the errors the panels carry in (h_error, integrated with the Kronrod
    weights), the shifted nodes' and the tails beyond T are added to the bar, since refining the panels
    does not reduce them.

    Returns (value, error, E|h|, converged) per owner.  An owner that runs out of budget, or whose integrand
    is not finite or does not decay at T, keeps its (honest, large) error and ``converged`` False.
    """
    xk, wk, wg = _gauss_kronrod()
    total, error, l1 = np.zeros(n), np.zeros(n), np.zeros(n)
    carried = _tails(func, n)  # errors no refinement of these panels reduces: the tails and the inner integrals'
    used = np.zeros(n, dtype=np.int64)
    converged = np.isfinite(carried)
    for round_ in range(_MAX_ROUNDS):
        if not a.size:
            break
        used += np.bincount(owner, minlength=n)
        mid, half = 0.5 * (a + b), 0.5 * (b - a)
        t = mid[:, None] + half[:, None] * xk
        weight = _gaussian(t)
        h, h_error = func(t, owner, weight)
        k, g = h @ wk * half, h @ wg * half
        ab = np.abs(h) @ wk * half
        spread = np.abs(h - (0.5 * k / half)[:, None]) @ wk * half
        with np.errstate(invalid="ignore", divide="ignore"):
            e = np.abs(k - g)
            e = np.where((spread > 0) & (e > 0), spread * np.minimum(1.0, (200 * e / spread) ** 1.5), e)
            e = np.maximum(e, 50 * _EPS * ab)
            # f's argument is off by up to 4 eps (|t| + scale) in t: that times ∫|d(h / weight)/dt| weight dt
            shift = 4 * _EPS * (np.maximum(np.abs(a), np.abs(b))
                                + (1.0 if argument_scale is None else argument_scale[owner]))
            # |d(h / weight)| (w_k + w_k+1) / 2 = |h_k+1 (1 + 1/ratio) - h_k (1 + ratio)| / 2 with ratio = w_k+1 / w_k
            # from t: h / weight alone overflows where f is large and the weight small (exp(x) at large q)
            ratio = np.exp(-0.5 * (t[:, 1:] - t[:, :-1]) * (t[:, 1:] + t[:, :-1]))
            steps = np.abs(h[:, 1:] * (1 + 1 / ratio) - h[:, :-1] * (1 + ratio))
            noise = shift * (0.5 * steps.sum(axis=1))
        all_total = total + np.bincount(owner, k, n)
        all_error = error + np.bincount(owner, e, n)
        all_l1 = l1 + np.bincount(owner, ab, n)
        tol = np.maximum(np.maximum(rtol * np.abs(all_total), 100 * _EPS * all_l1), _TINY)
        done = all_error <= tol
        share = np.maximum(half / _TAIL, ab / np.where(all_l1 > 0, all_l1, 1.0)[owner])
        accept = done[owner] | (e <= 0.5 * tol[owner] * share)
        # out of budget (the next round would double this owner's refined panels), or a non-finite integrand:
        # stop this owner and keep what it has, with its error
        wanted = np.bincount(owner, ~accept, n)
        stop = (wanted > 0) & ((used + 2 * wanted > max_panels) | (round_ == _MAX_ROUNDS - 1)
                               | ~np.isfinite(all_error) | ~converged)
        converged &= ~stop
        accept |= stop[owner]
        total += np.bincount(owner, k * accept, n)
        error += np.bincount(owner, e * accept, n)
        l1 += np.bincount(owner, ab * accept, n)
        carried += np.bincount(owner, noise * accept, n)
        if h_error is not None:
            carried += np.bincount(owner, (h_error @ wk * half) * accept, n)
        refine = ~accept
        a, b, owner, mid = a[refine], b[refine], owner[refine], mid[refine]
        a, b, owner = np.concatenate([a, mid]), np.concatenate([mid, b]), np.concatenate([owner, owner])
    error = error + carried
    converged &= np.isfinite(error) & np.isfinite(total)
    return total, error, l1, converged


def _feature_cuts(centre: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Cuts at centre +- width m (m from :func:`gainderive.features.cut_offsets`) for rows of features.

    ``centre`` and ``width`` are (n, F), in the integration variable: each feature's transition and tails get
    panels of their own size out to REACH_T, where the grid (0, +-2, +-5, +-9, +-38.5) takes over.  Width 0 (a
    kink) is its centre alone; non-finite centres (no feature) fall on the tail, and so do features at least
    REACH_T wide, which need no cuts of their own.
    """
    from .features import REACH_T, cut_offsets

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # a feature at least REACH_T wide is resolved by the grid's panels (2 to 4 wide, 21 nodes) and bisection
        centre = np.where(width < REACH_T, centre, np.inf)
        positive = width[(width > 0) & (width < REACH_T)]
        reach = float(min(np.max(REACH_T / positive), 1e300)) if positive.size else 0.0
        m = np.array(cut_offsets(reach)) if positive.size else np.zeros(0)
        offsets = width[..., None] * m
        offsets[~(offsets <= 16 * REACH_T)] = np.inf  # past the reach: merged into the clip at the tail
        centre = np.where(np.isfinite(centre), centre, _TAIL)[..., None]
        points = np.concatenate([centre, centre - offsets, centre + offsets], axis=-1)
    return np.clip(points.reshape(width.shape[0], -1), -_TAIL, _TAIL)


# ---------------------------------------------------------------- the fixed rule
#
# Trapezoid rules on lattices are exact for e^{-t^2/2} times a function analytic in a strip |Im t| < d, up to
# exp(-2 pi d / h) (Trefethen & Weideman 2014, SIAM Review 56, section 5): no panels, one evaluation per node.
# Three rules of steps h, 2h, 4h on lattices shifted by irrational fractions of a step estimate each other's
# errors: unshifted coarse lattices would be subsets of the fine one and all three would alias a frequency
# 2 pi k / h alike, where shifted lattices see it with different phases.

_FIXED_TAIL = 8.5  # the lattices span [-8.5, 8.5]^2: beyond, the Gaussian's mass is 2e-17, and a tail bound is added
_FIXED_STEP = 0.1  # h = this x the strip d: the 2h rule's exp(-pi d / h) is 2e-14, the fine rule's its square
_FIXED_MAX_STEP = 0.35  # the Gaussian itself: the 2h rule's exp(-2 pi^2 / (2h)^2) is 4e-18, the 4h rule's 4e-5
_STRIP = math.pi / 2  # the strip of a feature of width w: w pi/2 (tanh's poles at +- i pi/2 for w = 1)
_FIXED_NODES = 200_000  # fine nodes per correlation (~1 ms) above which the fixed rule is not tried
_FIXED_BLOCK = 1_000_000  # lattice nodes evaluated together: 8 MB per temporary (fewer, larger numpy calls)
_FIXED_REFINEMENTS = 2  # the lattices tried, each with half the steps of the last, before the adaptive rule
_SHIFTS = (0.0, 0.3819660112501051, 0.6180339887498949)  # the lattices' offsets, in their own steps


@lru_cache(maxsize=256)
def _lattice(tail: float, step: float, stride: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes t = (k + shift) h in [-T, T] (T = ``tail``), h = stride x ``step``, and trapezoid weights h phi(t).

    Cached (the steps depend on q only): callers must not write into the arrays.
    """
    h = stride * step
    # a hair of slack: tail / h is an integer for the fine lattice, and must not round to one node fewer (the tail
    # bounds read the lattice's last nodes as +-T)
    k = np.arange(math.ceil(-tail / h - shift - 1e-9), math.floor(tail / h - shift + 1e-9) + 1)
    t = (k + shift) * h
    return t, h * _gaussian(t)


def _tail_bound(values: np.ndarray, tail: float, step: float) -> np.ndarray:
    """Bounds on both tails beyond T of |f| phi, from f on the fine lattice over [-T, T] (the last axis).

    As :func:`_tails`: where |f| phi falls by e^λ over the distance Δ ~ 1 from T - Δ to T, with λ >= Δ, and log |f| phi
    is concave beyond, the tail is at most |f(T)| phi(T) Δ / λ.  Each |f| is the largest of it and its lattice
    neighbours, so that a zero of f at T or T - Δ reads neither as no tail nor as growth.
    """
    inward = round(1 / step)
    distance = inward * step
    decay = (tail ** 2 - (tail - distance) ** 2) / 2  # the Gaussian's part of λ
    phi_edge = math.exp(-tail ** 2 / 2) / math.sqrt(2 * math.pi)
    bound = 0.0
    for edge, inside in ((values[..., -2:], values[..., -inward - 2:-inward + 1]),
                         (values[..., :2], values[..., inward - 1:inward + 2])):
        edge, inside = np.max(np.abs(edge), axis=-1), np.max(np.abs(inside), axis=-1)
        with np.errstate(all="ignore"):
            rate = np.log(inside / edge) + decay
            beyond = np.where(rate >= distance, edge * phi_edge * distance / rate, np.inf)
            bound = bound + np.where(edge == 0, 0.0, np.where(edge * phi_edge < 1e-290, 64 * edge * phi_edge, beyond))
    return bound


def _fixed_rule(act: Activation, q1: float, q2: float, c: np.ndarray, derivative: bool, rtol: float,
                refine: int = 0):
    """The kernel by a fixed product rule for every c at once: (value, error, accepted), or None if it does not apply.

    With u = sqrt(q1) x and v = sqrt(q2) (c x + s y), s = sqrt(1 - c^2) (as (1 - c)(1 + c): to an ulp near c = +-1),
    the double integral over (x, y) is taken by trapezoid rules on [-T, T]^2 in both variables (T = 8.5, and one
    more for each refinement).  Only for an f
    without kinks: its features of width w (in z) make f(sqrt(q1) x) analytic in |Im x| < (pi/2) w / sqrt(q1)
    and the inner f(sqrt(q2)(c x + s y)) in |Im y| < (pi/2) w / (sqrt(q2) s) >= (pi/2) w / sqrt(q2); the inner
    expectation G(x) is f smoothed by a Gaussian, analytic at least as far as f(sqrt(q2) c x).  The steps follow
    from those strips and are the same for every c, so no correlation's value depends on the others.

    The error bar: where the 4h, 2h and h rules converge geometrically (|V_h - V_2h| <= |V_h - V_4h|^1.5, in units
    of ∫|h|), the fine rule's error is about the square of the coarse one's, bounded here by QUADPACK's
    (200 |V_h - V_2h|)^1.5 (Piessens et al. 1983); otherwise |V_h - V_2h| itself.  Added: the tails beyond T (as
    :func:`_tails`), the rounding of f's arguments (4 eps (|x| + |y|) times |f'| sqrt(q2) <= |dF/dx| + |dF/dy|,
    and 2 eps |x| for f(sqrt(q1) x)) and 50 eps ∫|h| for the sums.  A correlation is accepted when that is within
    the adaptive rule's tolerance, max(rtol |K|, 100 eps ∫|h|); the others go to :func:`_adaptive_quadrature`.
    """
    cuts, ig = _pieces(act, derivative)
    programs = ig.numpy_pieces
    if cuts.size or len(programs) != 1:
        return None  # a kink: the lattice would converge like h^2, the panels of the adaptive rule are needed
    width = min(w for _, w in ((0.0, 1.0), *getattr(ig, "features", ())))
    if not width > 0:
        return None
    s1, s2 = math.sqrt(q1), math.sqrt(q2)
    # each refinement halves the steps and reaches a standard deviation further; steps divide T, so that the fine
    # lattices end on +-T
    tail = _FIXED_TAIL + refine
    steps_x = 2 ** refine * math.ceil(tail / min(_FIXED_MAX_STEP, _FIXED_STEP * _STRIP * width / max(s1, s2)))
    steps_y = 2 ** refine * math.ceil(tail / min(_FIXED_MAX_STEP, _FIXED_STEP * _STRIP * width / s2))
    if (2 * steps_x + 1) * (2 * steps_y + 1) > _FIXED_NODES:
        return None
    step_x, step_y = tail / steps_x, tail / steps_y
    program = programs[0]

    def f(z):
        with np.errstate(all="ignore"):
            out = program(z)[0]
        return out if np.shape(out) == z.shape else np.broadcast_to(np.asarray(out, dtype=float), z.shape)

    lattices = [(_lattice(tail, step_x, stride, shift), _lattice(tail, step_y, stride, shift))
                for stride, shift in zip((1, 2, 4), _SHIFTS)]
    outer_all = f(s1 * np.concatenate([x for (x, _), _ in lattices]))  # f(sqrt(q1) x) on all three, in one call
    ends = np.cumsum([x.size for (x, _), _ in lattices])[:-1]
    rules = [(x, wx, y, wy, fx) for ((x, wx), (y, wy)), fx in zip(lattices, np.split(outer_all, ends))]
    c = np.asarray(c, dtype=float)
    s = np.sqrt(_one_minus_c2(c))
    n = c.size
    value, differences, l1, noise, tails = np.zeros(n), np.zeros((2, n)), np.zeros(n), np.zeros(n), np.zeros(n)
    finite = np.ones(n, dtype=bool)
    fine = rules[0]
    block = max(1, _FIXED_BLOCK // (fine[0].size * fine[2].size))
    for lo in range(0, n, block):
        part = slice(lo, min(lo + block, n))
        mean_step, sd_step = (s2 * c[part])[:, None, None], (s2 * s[part])[:, None, None]
        results = []
        for index, (x, wx, y, wy, fx) in enumerate(rules):
            inner = f(mean_step * x[:, None] + sd_step * y)  # f(sqrt(q2) (c x + s y)), (c, x, y)
            g = inner @ wy
            results.append(g @ (fx * wx))
            if index == 0:
                # the tails beyond T: in y for every x (then weighted by the outer integrand), and in x
                outer_weight = np.abs(fx * wx)  # an inner tail times an outer weight 0 is 0, even when unbounded
                tails[part] = (np.where(outer_weight > 0, _tail_bound(inner, tail, step_y), 0.0) @ outer_weight
                               + _tail_bound(fx * g, tail, step_x))
                finite[part] = np.isfinite(g).all(axis=1) & np.all(np.isfinite(fx))
            elif index == 1:
                # on the 2h lattice (a quarter of the nodes): ∫|h| and the arguments' rounding
                l1[part] = np.abs(inner) @ wy @ np.abs(fx * wx)
                phi_x, phi_y = _gaussian(x), _gaussian(y)
                mid_phi_x, mid_x = 0.5 * (phi_x[1:] + phi_x[:-1]), 0.5 * (np.abs(x[1:]) + np.abs(x[:-1]))
                mid_phi_y, mid_y = 0.5 * (phi_y[1:] + phi_y[:-1]), 0.5 * (np.abs(y[1:]) + np.abs(y[:-1]))
                along_y = np.abs(np.diff(inner, axis=2))  # |dF/dy| h, (c, x, y - 1)
                along_x = np.abs(np.diff(inner, axis=1))  # |dF/dx| h, (c, x - 1, y)
                by_y = (along_y @ mid_phi_y * np.abs(x) + along_y @ (mid_phi_y * mid_y)) @ np.abs(fx * wx)
                outer_mid = np.maximum(np.abs(fx[1:]), np.abs(fx[:-1])) * mid_phi_x
                by_x = (along_x @ wy * mid_x + along_x @ (wy * np.abs(y))) @ outer_mid
                outer_steps = np.abs(np.diff(fx)) * mid_phi_x * mid_x
                by_f = np.maximum(np.abs(g[:, 1:]), np.abs(g[:, :-1])) @ outer_steps
                noise[part] = 4 * _EPS * (by_y + by_x) + 2 * _EPS * by_f
        value[part] = results[0]
        differences[:, part] = np.abs(results[0] - results[1]), np.abs(results[0] - results[2])
    with np.errstate(all="ignore"):
        scale = np.where(l1 > 0, l1, 1.0)
        r1, r2 = differences / scale
        geometric = r1 <= r2 ** 1.5
        rule_error = np.where(geometric, scale * np.minimum(r1, (200 * r1) ** 1.5), differences[0])
        error = rule_error + tails + noise + 50 * _EPS * l1
        tol = np.maximum(np.maximum(rtol * np.abs(value), 100 * _EPS * l1), _TINY)
        accepted = finite & np.isfinite(error) & np.isfinite(value) & (error <= tol)
    return value, error, accepted


def _quadrature(act: Activation, q1: float, q2: float, c: np.ndarray, derivative: bool, rtol: float) -> Estimate:
    """The fixed rule (:func:`_fixed_rule`) for every c, and the adaptive rule for those it does not settle."""
    c = np.asarray(c, dtype=float)
    value, error = np.empty(c.size), np.empty(c.size)
    todo = np.arange(c.size)
    for refine in range(_FIXED_REFINEMENTS):
        fixed = _fixed_rule(act, q1, q2, c[todo], derivative, rtol, refine) if todo.size else None
        if fixed is None:
            break
        part_value, part_error, accepted = fixed
        value[todo[accepted]], error[todo[accepted]] = part_value[accepted], part_error[accepted]
        todo = todo[~accepted]
    if todo.size:
        rest = _adaptive_quadrature(act, q1, q2, c[todo], derivative, rtol)
        value[todo], error[todo] = rest.value, rest.error
    return Estimate(value, error, "quadrature")


def _adaptive_quadrature(act: Activation, q1: float, q2: float, c: np.ndarray, derivative: bool,
                         rtol: float) -> Estimate:
    """The nested adaptive quadrature of the module docstring, every c on its own (see :func:`_adaptive`).

    Panels are cut at f's kinks and at its features (centre b, width w in z; :mod:`gainderive.features`, with
    the default (0, 1) of every activation): in x at (b +- w m) / sqrt(q1) for f(sqrt(q1) x), and at
    (b +- W m) / (c sqrt(q2)) with W = sqrt(w^2 + q2 (1 - c^2)) for G, which is f smoothed by the inner Gaussian
    of standard deviation sqrt(q2 (1 - c^2)), a kink (w = 0) included; in y at (b - sqrt(q2) c x +- w m) /
    sqrt(q2 (1 - c^2)).  Near c = +-1, G is a kink smoothed over |x| ~ sqrt(1 - c^2): without its own panels
    there, both rules see a kink and agree on the wrong value.
    """
    cuts, ig = _pieces(act, derivative)
    programs = ig.numpy_pieces
    s1, s2 = math.sqrt(q1), math.sqrt(q2)
    c = np.asarray(c, dtype=float)
    s = np.sqrt(_one_minus_c2(c))  # sqrt(1 - c^2) to an ulp near c = +-1, where 1 - c*c loses all but 4 digits
    grid = np.array(_GRID)
    features = [(0.0, 1.0), *getattr(ig, "features", ())]
    f_centre = np.array([b for b, _ in features], dtype=float)
    f_width = np.array([w for _, w in features], dtype=float)
    all_centre = np.concatenate([f_centre, cuts])  # kinks are features of width 0
    all_width = np.concatenate([f_width, np.zeros(cuts.size)])

    def inner(x: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """G(x) = E_y[f(sqrt(q2) (c x + s y))] and its error bound, for every outer node x (flat)."""
        mean_all, sd_all = s2 * (c[owner] * x), s2 * s[owner]
        value, error = np.empty(x.size), np.zeros(x.size)
        sharp = sd_all == 0
        if sharp.any():  # |c| = 1: v is a multiple of u
            value[sharp] = _evaluate(cuts, programs, mean_all[sharp])
        smooth = np.nonzero(~sharp)[0]
        for chunk in np.array_split(smooth, max(1, -(-smooth.size // _INNER_CHUNK))):
            if not chunk.size:
                continue
            mean, sd = mean_all[chunk], sd_all[chunk]
            kinks = (cuts[None, :] - mean[:, None]) / sd[:, None]
            feature = _feature_cuts((f_centre[None, :] - mean[:, None]) / sd[:, None],
                                    np.broadcast_to(f_width, (chunk.size, f_width.size)) / sd[:, None])
            points = np.concatenate([np.broadcast_to(grid, (chunk.size, grid.size)), kinks, feature,
                                     np.full((chunk.size, 2), [-_TAIL, _TAIL])], axis=1)
            ia, ib, io = _panels(points)

            def integrand(y, o, weight, mean=mean, sd=sd):
                return _evaluate(cuts, programs, mean[o][:, None] + sd[o][:, None] * y) * weight, None

            # each inner integral on its own: relative 1e-14 of itself (or 100 eps of its E|f|), whatever the
            # outer node; one that does not get there returns its error, which the outer sum carries.  The
            # argument sqrt(q2) (c x + s y) is known to eps (|mean| + |sd y|): |mean| / sd in units of y
            value[chunk], error[chunk], _, _ = _adaptive(integrand, ia, ib, io, chunk.size, _INNER_RTOL,
                                                         _INNER_PANELS, np.abs(mean) / sd)
        return value, error

    def outer(x: np.ndarray, owner: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g, g_error = inner(x.ravel(), np.repeat(owner, x.shape[1]))
        f = _evaluate(cuts, programs, s1 * x)
        # the weight first: G(x) phi(x) stays finite where G and f alone are large (exp-like f at large q)
        with np.errstate(over="ignore", invalid="ignore"):
            return f * (g.reshape(x.shape) * weight), np.abs(f) * (g_error.reshape(x.shape) * weight)

    n = c.size
    with np.errstate(divide="ignore", invalid="ignore"):
        # G's features: f's, smoothed by the inner Gaussian (sd s2 s), seen through v's mean s2 c x
        g_centre = np.where(c[:, None] != 0, all_centre[None, :] / (c[:, None] * s2), np.inf)
        g_width = np.hypot(all_width[None, :], s2 * s[:, None]) / (np.abs(c[:, None]) * s2)
    points = np.concatenate([np.broadcast_to(grid, (n, grid.size)),
                             np.broadcast_to(cuts / s1, (n, cuts.size)),
                             _feature_cuts(np.broadcast_to(f_centre / s1, (n, f_centre.size)),
                                           np.broadcast_to(f_width / s1, (n, f_width.size))),
                             _feature_cuts(g_centre, np.where(np.isfinite(g_width), g_width, 0.0)),
                             np.full((n, 2), [-_TAIL, _TAIL])], axis=1)
    a, b, owner = _panels(points)
    value, error, _, converged = _adaptive(outer, a, b, owner, n, rtol, _MAX_PANELS)
    if not converged.all():
        bad = float(c[~converged][0])
        raise ConvergenceError(f"the correlation kernel did not converge at c = {bad!r}: the activation is probably "
                               "singular, grows too fast, or varies too fast at this variance for double-precision "
                               "quadrature (try method='high_precision')")
    return Estimate(value, error, "quadrature")


# ---------------------------------------------------------------- high precision

# Measured with tanh at q = 1 on 2 shared cores: 30 digits (2.4e6 units) took 150 s, 20 digits 22 s, and
# 60 digits (1e7 units) ran 10 minutes before failing to converge: the budget admits the default 30 digits
# for an activation with up to ~8 kinks (P ~ 22 panels) and refuses what would take much longer.
_HIGH_PRECISION_WORK = 6e6
_HIGH_PRECISION_MINUTES = 6  # what the full budget costs with tanh here (2.4e6 units: 150 s)
_HIGH_PRECISION_NODES = (12, 24, 48, 96)  # Gauss-Legendre degrees 3..6


def _high_precision_work(kinks: int, digits: int) -> float:
    """Work units of :func:`_high_precision`'s four passes: evaluations of f, weighted by their precision.

    Each pass evaluates f at (outer panels x n) points, each with an inner integral of (inner panels x n)
    points; both ranges are |t| < T = sqrt(2 (digits + 12) ln 10) in panels of width <= 2, plus one
    panel per cut (f's kinks, twice for the outer integral).  An evaluation at dps = digits + 10 costs
    about (dps / 40)^1.5 of one at the default 30 digits.
    """
    tail = math.sqrt(2 * (digits + 12) * math.log(10))
    outer, inner = math.ceil(tail) + 2 * kinks, math.ceil(tail) + kinks
    evaluations = sum(outer * n * (1 + inner * n) for n in _HIGH_PRECISION_NODES)
    return evaluations * ((digits + 10) / 40) ** 1.5


def _high_precision(act: Activation, q1: float, q2: float, c: float, derivative: bool, digits: int) -> Estimate:
    """Nested Gauss-Legendre panels at ``digits`` digits, split at every kink (for verification).

    Both integrals are truncated where the Gaussian weight drops below
    10^-(digits + 12) and cut into panels of width <= 2 at the kinks; the
    node count per panel doubles from 12 until two successive results agree
    to ``digits`` digits, and their difference is the error estimate.
    Refused (ConvergenceError) when 96 nodes do not get there: e.g. for |c|
    so close to 1 that the inner integral is nearly a kink.

    The work is bounded before it starts (:func:`_high_precision_work`): the four passes cost
    ~ (outer panels x nodes)(inner panels x nodes) evaluations of f each, at a price growing with the
    digits, so 200 digits would take about an hour here.  Beyond ``_HIGH_PRECISION_WORK`` a LimitError
    says how many digits do fit.
    """
    from mpmath.calculus.quadrature import GaussLegendre

    from .integrand import DF, F, integrand

    ig = integrand(act, {"df": DF} if derivative else {"f": F})
    work = _high_precision_work(len(ig.breakpoints), digits)
    if work > _HIGH_PRECISION_WORK:
        from .limits import LimitError

        fit = next((d for d in range(digits - 1, 4, -1)
                    if _high_precision_work(len(ig.breakpoints), d) <= _HIGH_PRECISION_WORK), None)
        raise LimitError(f"digits: the high-precision kernel at {digits} digits could take up to "
                         f"{work / _HIGH_PRECISION_WORK * _HIGH_PRECISION_MINUTES:.0f} minutes here (nested "
                         f"Gauss-Legendre, {work:.2g} work units against a budget of {_HIGH_PRECISION_WORK:.2g}); "
                         + (f"at most {fit} digits fit for this activation" if fit else "no digits fit")
                         + " (method='quadrature' gives about 12 digits in milliseconds)")
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
