"""Independent high-precision reference moments of activations under a Gaussian.

For z ~ N(0, q) and an activation f this module computes

    mean                      E[f(z)]
    second_moment             E[f(z)^2]
    derivative_second_moment  E[f'(z)^2]

with ``mpmath.quad``.  It deliberately shares no code with ``gainderive``: every
activation and its derivative is written out by hand below with mpmath, so the
values can serve as an independent oracle for the library's tests.  Only mpmath
and the standard library are used.

How the integrals are computed (see ``reference_moments``):

* z = sqrt(q) t, so the weight is the standard normal density phi(t) whatever q is.
* The integral is folded onto t >= 0,  int_R g(sqrt(q) t) phi(t) dt =
  int_0^inf [g(sqrt(q) t) + g(-sqrt(q) t)] phi(t) dt.  The split points below are
  symmetric in t, so this is the same split as on the whole line, but an odd f
  gives an exact zero mean (f(x) + f(-x) is computed as exactly 0) instead of
  rounding noise, and t = 0 becomes a natural interval endpoint.
* The t-axis is split at every kink |c|/sqrt(q) of f or f', at 0, at k/sqrt(q) for
  k in (0.25, 1, 4, 16) and at 2, 5, 10.  At large q the structure of f near z = 0
  lives at t ~ 1/sqrt(q) and would be invisible to a quadrature rule spread over
  t ~ 1; at small q the kinks are far out in the tail.  Each piece is smooth, so
  tanh-sinh converges double-exponentially on it.
* Oscillating activations (sin) also get split points at every half period in z
  out to t = 15 (beyond that phi(t) < 1e-48), because one tanh-sinh panel cannot
  resolve tens of oscillations to 40 digits when q is large.
* The work is done with guard digits, and the precision is raised further when
  the result is small in absolute terms (quad's stopping test is absolute) or
  when the mean nearly cancels (selu at q = 1), so that the returned value has
  ``dps`` significant digits rather than ``dps`` digits relative to sqrt(E[f^2]).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import mpmath
from mpmath import mp

__all__ = ["ACTIVATIONS", "MOMENT_NAMES", "Activation", "reference_moments", "resolve_params"]

MOMENT_NAMES = ("mean", "second_moment", "derivative_second_moment")

SELU_ALPHA = "1.6732632423543772848170429916717"
SELU_SCALE = "1.0507009873554804934193349852946"

# Split points, in units of z (divided by sqrt(q)) and of t respectively.
_Z_SCALES = ("0.25", "1", "4", "16")
_T_POINTS = (2, 5, 10)
# Oscillation splitting stops here: phi(15) ~ 1e-49, below any dps we use.
_OSCILLATION_T_MAX = 15

# Guard digits on top of the requested dps (quad itself adds ~6 more internally), plus
# slack so that moments down to ~1e-8 (see _digits_lost) need no second pass.
_GUARD_DIGITS = 12
_SLACK_DIGITS = 8

Params = Mapping[str, mpmath.mpf]
Scalar = Callable[[mpmath.mpf, Params], mpmath.mpf]


@dataclass(frozen=True)
class Activation:
    """An activation, its hand-derived derivative, and where either is not smooth.

    ``kinks(p)`` lists the z where f or f' has a jump or a jump in some derivative.
    ``half_period`` (for oscillating f) is the spacing of extra split points in z.
    """

    f: Scalar
    df: Scalar
    kinks: Callable[[Params], list] = lambda p: []
    defaults: dict[str, str] = field(default_factory=dict)
    half_period: Callable[[], mpmath.mpf] | None = None


def _sigmoid(x):
    # exp of a negative argument only, so both tails keep full relative precision.
    if x >= 0:
        return 1 / (1 + mp.exp(-x))
    e = mp.exp(x)
    return e / (1 + e)


def _sigmoid_prime(x):
    # s(1 - s) written so that neither factor is a difference of nearly equal numbers.
    e = mp.exp(-abs(x))
    return e / (1 + e) ** 2


def _softplus(x):
    # log1p keeps the left tail (softplus ~ exp(x)) accurate; mpmath exp cannot overflow.
    return mp.log1p(mp.exp(x))


def _normal_cdf(x):
    # erfc form keeps relative precision deep in the left tail.
    return mp.erfc(-x / mp.sqrt(2)) / 2


def _normal_pdf(x):
    return mp.exp(-(x**2) / 2) / mp.sqrt(2 * mp.pi)


def _step(x, lo, hi, value=1):
    """value on the open interval (lo, hi), else 0 (derivative of a clip)."""
    return mp.mpf(value) if lo < x < hi else mp.zero


def _clip(x, lo, hi):
    return min(max(x, lo), hi)


def _gelu_tanh_parts(x):
    c = mp.sqrt(2 / mp.pi)
    k = mp.mpf("0.044715")
    u = c * (x + k * x**3)
    du = c * (1 + 3 * k * x**2)
    return u, du


def _gelu_tanh(x, p):
    u, _ = _gelu_tanh_parts(x)
    return x * (1 + mp.tanh(u)) / 2


def _gelu_tanh_prime(x, p):
    u, du = _gelu_tanh_parts(x)
    return (1 + mp.tanh(u)) / 2 + x * mp.sech(u) ** 2 * du / 2


def _mish(x, p):
    return x * mp.tanh(_softplus(x))


def _mish_prime(x, p):
    # d/dx tanh(softplus(x)) = sech^2(softplus(x)) * sigmoid(x)
    sp = _softplus(x)
    return mp.tanh(sp) + x * mp.sech(sp) ** 2 * _sigmoid(x)


def _elu_like(x, alpha, rate):
    """x for x > 0, else alpha*(exp(rate*x) - 1); elu has rate 1, celu rate 1/alpha."""
    return x if x > 0 else alpha * mp.expm1(rate * x)


def _elu_like_prime(x, alpha, rate):
    return mp.one if x > 0 else alpha * rate * mp.exp(rate * x)


def _hardswish_prime(x, p):
    if x <= -3:
        return mp.zero
    if x >= 3:
        return mp.one
    return (2 * x + 3) / 6


_ZERO_KINK = lambda p: [mp.zero]  # noqa: E731

ACTIVATIONS: dict[str, Activation] = {
    "identity": Activation(f=lambda x, p: x, df=lambda x, p: mp.one),
    "relu": Activation(f=lambda x, p: max(x, mp.zero), df=lambda x, p: _step(x, 0, mp.inf), kinks=_ZERO_KINK),
    "leaky_relu": Activation(
        f=lambda x, p: x if x > 0 else p["negative_slope"] * x,
        df=lambda x, p: mp.one if x > 0 else p["negative_slope"],
        kinks=_ZERO_KINK,
        defaults={"negative_slope": "0.01"},
    ),
    "prelu": Activation(
        f=lambda x, p: x if x > 0 else p["a"] * x,
        df=lambda x, p: mp.one if x > 0 else p["a"],
        kinks=_ZERO_KINK,
        defaults={"a": "0.25"},
    ),
    "elu": Activation(
        f=lambda x, p: _elu_like(x, p["alpha"], 1),
        df=lambda x, p: _elu_like_prime(x, p["alpha"], 1),
        kinks=_ZERO_KINK,
        defaults={"alpha": "1"},
    ),
    "selu": Activation(
        f=lambda x, p: p["scale"] * _elu_like(x, p["alpha"], 1),
        df=lambda x, p: p["scale"] * _elu_like_prime(x, p["alpha"], 1),
        kinks=_ZERO_KINK,
        defaults={"alpha": SELU_ALPHA, "scale": SELU_SCALE},
    ),
    "celu": Activation(
        f=lambda x, p: _elu_like(x, p["alpha"], 1 / p["alpha"]),
        df=lambda x, p: _elu_like_prime(x, p["alpha"], 1 / p["alpha"]),
        kinks=_ZERO_KINK,
        defaults={"alpha": "1"},
    ),
    "gelu": Activation(
        f=lambda x, p: x * _normal_cdf(x),
        df=lambda x, p: _normal_cdf(x) + x * _normal_pdf(x),
    ),
    "gelu_tanh": Activation(f=_gelu_tanh, df=_gelu_tanh_prime),
    "silu": Activation(
        f=lambda x, p: x * _sigmoid(x),
        df=lambda x, p: _sigmoid(x) + x * _sigmoid_prime(x),
    ),
    "mish": Activation(f=_mish, df=_mish_prime),
    "softplus": Activation(
        f=lambda x, p: _softplus(p["beta"] * x) / p["beta"],
        df=lambda x, p: _sigmoid(p["beta"] * x),
        defaults={"beta": "1"},
    ),
    "tanh": Activation(f=lambda x, p: mp.tanh(x), df=lambda x, p: mp.sech(x) ** 2),
    "sigmoid": Activation(f=lambda x, p: _sigmoid(x), df=lambda x, p: _sigmoid_prime(x)),
    "erf": Activation(f=lambda x, p: mp.erf(x), df=lambda x, p: 2 / mp.sqrt(mp.pi) * mp.exp(-(x**2))),
    "sin": Activation(f=lambda x, p: mp.sin(x), df=lambda x, p: mp.cos(x), half_period=lambda: mp.pi),
    # f' = 1/(1+|x|)^2 has a corner at 0.
    "softsign": Activation(f=lambda x, p: x / (1 + abs(x)), df=lambda x, p: 1 / (1 + abs(x)) ** 2, kinks=_ZERO_KINK),
    "hardtanh": Activation(
        f=lambda x, p: _clip(x, p["min_val"], p["max_val"]),
        df=lambda x, p: _step(x, p["min_val"], p["max_val"]),
        kinks=lambda p: [p["min_val"], p["max_val"]],
        defaults={"min_val": "-1", "max_val": "1"},
    ),
    "relu6": Activation(
        f=lambda x, p: _clip(x, mp.zero, mp.mpf(6)),
        df=lambda x, p: _step(x, 0, 6),
        kinks=lambda p: [mp.zero, mp.mpf(6)],
    ),
    "hardsigmoid": Activation(
        f=lambda x, p: _clip(x / 6 + mp.mpf(1) / 2, mp.zero, mp.one),
        df=lambda x, p: _step(x, -3, 3, mp.mpf(1) / 6),
        kinks=lambda p: [mp.mpf(-3), mp.mpf(3)],
    ),
    "hardswish": Activation(
        f=lambda x, p: x * _clip(x + 3, mp.zero, mp.mpf(6)) / 6,
        df=_hardswish_prime,
        kinks=lambda p: [mp.mpf(-3), mp.mpf(3)],
    ),
    "abs": Activation(f=lambda x, p: abs(x), df=lambda x, p: mp.sign(x), kinks=_ZERO_KINK),
}


def resolve_params(name: str, params: Mapping[str, object] | None = None) -> dict[str, str]:
    """Defaults overridden by ``params``, all as decimal strings (exactly as given)."""
    act = ACTIVATIONS[name]
    given = dict(params or {})
    unknown = sorted(set(given) - set(act.defaults))
    if unknown:
        raise ValueError(f"{name}: unknown parameter(s) {unknown}; accepted: {sorted(act.defaults)}")
    return {k: str(given.get(k, v)) for k, v in act.defaults.items()}


def _breakpoints(act: Activation, p: Params, sqrt_q: mpmath.mpf) -> list:
    """Sorted split points on the folded half-line t >= 0, ending at +inf."""
    points = {mp.zero, *(mp.mpf(t) for t in _T_POINTS)}
    points.update(abs(c) / sqrt_q for c in act.kinks(p))
    points.update(mp.mpf(k) / sqrt_q for k in _Z_SCALES)
    if act.half_period is not None:
        step = act.half_period() / sqrt_q
        n = int(mp.floor(_OSCILLATION_T_MAX / step))
        points.update(i * step for i in range(1, n + 1))
    return [*sorted(points), mp.inf]


def _integrate(act: Activation, p: Params, q: mpmath.mpf, maxdegree: int):
    """Folded quadrature at the current precision: (values, error estimates), keyed by moment."""
    sqrt_q = mp.sqrt(q)
    norm = 1 / mp.sqrt(2 * mp.pi)
    totals = dict.fromkeys(MOMENT_NAMES, mp.zero)
    errors = dict.fromkeys(MOMENT_NAMES, mp.zero)
    points = _breakpoints(act, p, sqrt_q)
    for a, b in itertools.pairwise(points):
        # The three moments are integrated separately but mostly at the same nodes;
        # caching f and f' at each t makes that nearly free.
        cache: dict = {}

        def values(t, cache=cache):
            v = cache.get(t)
            if v is None:
                x = sqrt_q * t
                w = norm * mp.exp(-(t**2) / 2)
                fp, fm = act.f(x, p), act.f(-x, p)
                dp, dm = act.df(x, p), act.df(-x, p)
                v = cache[t] = (w * (fp + fm), w * (fp**2 + fm**2), w * (dp**2 + dm**2))
            return v

        for i, key in enumerate(MOMENT_NAMES):
            value, err = mp.quad(lambda t, i=i: values(t)[i], [a, b], error=True, maxdegree=maxdegree)
            totals[key] += value
            errors[key] += err
    return totals, errors


def _scales(totals: Mapping[str, mpmath.mpf]) -> dict[str, mpmath.mpf]:
    """Natural size of each moment: E|f| <= sqrt(E f^2) bounds what the mean can cancel from."""
    return {
        "mean": mp.sqrt(totals["second_moment"]),
        "second_moment": totals["second_moment"],
        "derivative_second_moment": totals["derivative_second_moment"],
    }


def _digits_lost(totals: Mapping[str, mpmath.mpf]) -> int:
    """Digits by which an absolute-accuracy quadrature falls short of relative accuracy.

    quad stops on an absolute error estimate, so a moment of size 1e-k loses k digits;
    a mean that cancels from sqrt(E f^2) down to |E f| loses the ratio's digits on top.
    """
    lost = 0
    for key, scale in _scales(totals).items():
        value = abs(totals[key])
        if value == 0:
            continue  # exact zero (odd f folded), or f = 0 a.e.: nothing to resolve
        lost = max(lost, int(mp.ceil(-mp.log10(min(value, scale, 1)))))
    return lost


def reference_moments(
    name: str, q, params: Mapping[str, object] | None = None, dps: int = 40, maxdegree: int = 12
) -> dict[str, mpmath.mpf]:
    """E[f], E[f^2], E[f'^2] for z ~ N(0, q), to ``dps`` significant digits.

    ``q`` and parameter values may be decimal strings or numbers; they are read via
    ``mpf(str(v))`` inside the working precision, so "0.1" is rounded once, to dps + guard digits.
    Raises ``ArithmeticError`` if quad's error estimate is not below 10**(-dps + 5)
    relative to the moment's size.
    """
    act = ACTIVATIONS[name]
    strings = resolve_params(name, params)
    guard = _GUARD_DIGITS + _SLACK_DIGITS
    for _ in range(3):
        with mp.workdps(dps + guard):
            # Convert inside the working precision so decimal inputs are not pre-rounded.
            qq = mp.mpf(str(q))
            if not qq > 0:
                raise ValueError(f"q must be positive, got {q!r}")
            p = {k: mp.mpf(v) for k, v in strings.items()}
            totals, errors = _integrate(act, p, qq, maxdegree)
            lost = _digits_lost(totals)
        if _GUARD_DIGITS + lost <= guard:
            break
        guard = _GUARD_DIGITS + lost
    else:
        raise ArithmeticError(f"{name} q={q}: precision requirement did not settle")

    with mp.workdps(dps + guard):
        scales = _scales(totals)
        tol = mp.mpf(10) ** (-dps + 5)
        for key in MOMENT_NAMES:
            scale = abs(totals[key]) or scales[key]
            if not errors[key] <= tol * scale:
                raise ArithmeticError(
                    f"{name} {strings} q={q}: {key} = {mp.nstr(totals[key], 20)} has estimated error "
                    f"{mp.nstr(errors[key], 5)} (tolerance {mp.nstr(tol * scale, 5)})"
                )
    with mp.workdps(dps):
        return {key: +totals[key] for key in MOMENT_NAMES}
