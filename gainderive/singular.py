r"""Divergence, decided once from the formula before any backend runs.

For z ~ N(0, q) the expectation :math:`E[h(z)] = \int h(z)\,\varphi_q(z)\,dz` of a function h built from an
activation f (h = f, f^2, f'^2, ...) can be infinite in two ways, and a backend handed such an integrand
either fails slowly or, worse, returns a large finite number (tanh-sinh sums a divergent integral to one).
This module decides both ways up front, from the formula:

* **Growth at infinity.**  The Gaussian weight is exp(-z^2 / 2q).  If log|h(z)| ~ c z^2 as |z| -> inf, E[h]
  is finite for q < 1/(2c) and infinite for q > 1/(2c) (exp(c x^2): E[f] exists for q < 1/(2c), E[f^2] for
  q < 1/(4c)); at q = 1/(2c) it is finite only if the remaining factor decays faster than 1/|z|.  If
  log|h(z)| / z^2 grows without bound (exp(x^3), exp(exp(x))), E[h] is infinite for every q.  The rate c is
  measured with mpmath from log|h(z)| at |z| = 10, 10^2, 10^4, 10^8, 10^16 on the outermost pieces (mpmath does
  not overflow), which also covers growth that is not written as an exponential of a polynomial (cosh(x^2),
  2**(x**2)).
* **Singular points at a finite z.**  Near a point z0 where |h(z)| ~ |z - z0|^a, h is integrable iff a > -1
  (any power of a logarithm is integrable).  Candidate points are the real roots of the bases of negative or
  fractional powers (1/x, |x - b|^p, sqrt), of the arguments of logarithms and arcsines, and the breakpoints
  of f; the exponent a is the slope of log|h(z0 +- eps)| against log eps at eps = 1e-20, 1e-40, 1e-80
  (mpmath at 120 digits, so the point itself is exact far below eps).  The smaller of the two slopes decides.

A jump of f is a third way for E[f'^2]: f' carries a Dirac mass there (:attr:`Activation.jumps`).

What the callers do with a verdict: :func:`gainderive.moments.moments` refuses (DivergenceError) when
E[f] or E[f^2] is infinite, and reports an infinite E[f'^2] as an *answer* (value inf, the reason in the
method); :func:`gainderive.moments.expectation` refuses for any infinite E[h].
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import mpmath as mp
import numpy as np

from .errors import DivergenceError

if TYPE_CHECKING:
    import sympy as sp

    from .activation import Activation

__all__ = ["Infinite", "analyse", "infinite_estimate", "raise_if_infinite"]

_GROWTH_POINTS = (10, 10**2, 10**4, 10**8, 10**16)
_GROWTH_DPS = 60
_LOCAL_DPS = 120
_EPSILONS = (mp.mpf("1e-20"), mp.mpf("1e-40"), mp.mpf("1e-80"))
_JITTER = (1, mp.mpf("1.37"), mp.mpf("1.93"))  # an oscillating h (sin(1/x)) may vanish at one eps, not at three
_INTEGRABLE = -1 + 1e-6  # |z - z0|^a is integrable iff a > -1; log factors move the measured slope by ~0.01
_BOUNDARY = 1e-12  # |2 c q - 1| below this: q is the threshold itself, where the prefactor decides
_SCAN = np.linspace(-60.0, 60.0, 4801)  # where roots of non-polynomial bases are looked for


@dataclass(frozen=True)
class Infinite:
    """Why E[h(z)] is infinite, for the h labelled ``label``.

    ``kind`` is ``"jump"`` or ``"singular"`` (infinite at every q) or ``"growth"``: log|h(z)| ~ ``rate`` z^2
    with a factor ~|z|^``power`` left over, infinite for q > 1/(2 rate), at q = 1/(2 rate) iff power >= -1;
    ``rate`` is inf for growth faster than every exp(c z^2).
    """

    label: str
    kind: str
    reason: str
    rate: float = math.inf
    power: float = 0.0

    @property
    def everywhere(self) -> bool:
        """Infinite at every q > 0."""
        return self.kind != "growth" or math.isinf(self.rate)

    @property
    def threshold(self) -> float:
        """1/(2 rate): E[h] is finite below this q (0 if it is infinite for every q)."""
        return 0.0 if self.everywhere else 1.0 / (2.0 * self.rate)

    def at(self, q: Any) -> Any:
        """True where E[h] is infinite at variance q (a bool, or a bool array for an array of q)."""
        if self.everywhere:
            return True if np.ndim(q) == 0 else np.ones(np.shape(q), dtype=bool)
        t = 2 * self.rate * (float(q) if isinstance(q, mp.mpf) else np.asarray(q, dtype=float))
        out = (t > 1 + _BOUNDARY) | ((np.abs(t - 1) <= _BOUNDARY) & (self.power >= -1))
        return bool(out) if np.ndim(out) == 0 else out

    def exists(self) -> str:
        """Where E[h] exists, as a phrase: "for q < 0.5" or "for no q"."""
        if self.everywhere:
            return "for no q"
        return f"for q {'<=' if self.power < -1 else '<'} {self.threshold:.6g}"

    def message(self, name: str, q: Any = None) -> str:
        """One line: which expectation, of which activation, why it is infinite, where it exists."""
        head = f"E[{self.label}] of {name} is infinite"
        if self.everywhere:
            return f"{head} for every q: {self.reason}"
        at = "" if q is None else f" at q = {_show(q)}"
        return (f"{head}{at}: {self.reason}, faster than the Gaussian weight exp(-z^2/(2q)) decays for "
                f"q {'>' if self.power < -1 else '>='} {self.threshold:.6g}; it exists only {self.exists()}")


def _show(q: Any) -> str:
    if isinstance(q, mp.mpf):
        return mp.nstr(q, 8)
    q = np.asarray(q, dtype=float)
    return f"{float(q):g}" if q.ndim == 0 else f"{float(np.max(q)):g}"


def analyse(act: Activation, functions: Mapping[str, sp.Expr]) -> dict[str, Infinite]:
    """For each ``label: h`` (h in f, df and x) whose E[h] is infinite at some q, the reason; finite ones are left out.

    An h in df with f jumping is reported as a jump only if it contains df squared or a higher power (a
    single df is a finite Dirac contribution, which the integrand builder refuses on its own).
    """
    return dict(_analyse(act, tuple(functions.items()))[0])


def integrable_singularities(act: Activation, functions: Mapping[str, sp.Expr]) -> tuple[tuple[str, float, float], ...]:
    """(label, z0, a) for each h that is unbounded but integrable near z0, |h| ~ |z - z0|^a with -1 < a < 0.

    log|x| (a ~ 0 from below) and |x|^-0.2 are such points: E[h] is finite, but double-precision quadrature
    may not resolve it (:func:`gainderive.moments.moments` then uses the high-precision backend).
    """
    return _analyse(act, tuple(functions.items()))[1]


@lru_cache(maxsize=256)
def _analyse(act: Activation, functions: tuple[tuple[str, Any], ...]) -> tuple[tuple, tuple]:
    from .integrand import DF

    out, integrable = [], []
    points = None
    for label, h in functions:
        if h.has(DF) and act.jumps:
            if _dirac_squared(h):
                out.append((label, Infinite(label, "jump", _jump_reason(act))))
            continue
        if points is None:
            points = _candidate_points(act)
        verdict, singular = _local(act, label, h, points)
        integrable.extend((label, z0, alpha) for z0, alpha in singular)
        verdict = verdict or _growth(act, label, h)
        if verdict is not None:
            out.append((label, verdict))
    return tuple(out), tuple(integrable)


def _dirac_squared(h) -> bool:
    """h contains f' to a power >= 2 (a Dirac mass squared), or inside a nonlinear function."""
    import sympy as sp

    from .integrand import DF

    try:
        return sp.Poly(h, DF).degree() >= 2
    except sp.PolynomialError:
        return True


def _jump_reason(act: Activation) -> str:
    jumps = ", ".join(f"{j.size:.6g} at z = {j.at:.6g}" for j in act.jumps)
    plural = "s" if len(act.jumps) > 1 else ""
    return f"jump{plural} of {jumps}: f' has a Dirac mass there"


def raise_if_infinite(verdicts: Mapping[str, Infinite], labels, q: Any, name: str) -> None:
    """DivergenceError for the first of ``labels`` whose expectation is infinite at some q."""
    for label in labels:
        verdict = verdicts.get(label)
        if verdict is not None and np.any(verdict.at(q)):
            shown = q if np.ndim(q) == 0 else np.asarray(q)[np.asarray(verdict.at(q))]
            raise DivergenceError(verdict.message(name, shown if np.ndim(shown) == 0 else np.min(shown)))


def infinite_estimate(verdict: Infinite, q: Any, high_precision: bool):
    """E[h] = inf as an :class:`Estimate` shaped like q, error 0 (it is exactly infinite), the reason as method."""
    from .estimate import Estimate

    method = f"infinite: {verdict.reason}"
    if high_precision:
        return Estimate(mp.inf, mp.mpf(0), method)
    shape = np.shape(q)
    if not shape:
        return Estimate(math.inf, 0.0, method)
    return Estimate(np.full(shape, math.inf), np.zeros(shape), method)


# ---------------------------------------------------------------- programs on the pieces

def _piece_functions(act: Activation, h) -> list:
    """h on each piece of f, with f and f' substituted."""
    from .integrand import DF, F

    return [h.subs({F: p.expression, DF: p.derivative}, simultaneous=True) for p in act.pieces]


def _program(expr, dps: int):
    from .evaluate import Program
    from .formula import X

    return Program([expr], (X,), backend="mpmath", dps=dps)


class _TooLargeError(ArithmeticError):
    """An intermediate value so large that the next operation on it would take unbounded time."""


_MAX_BITS = 20_000  # sin(exp(x^2)) at x = 1e4 needs an argument reduction on ~1.4e8 bits: stop well before
#: operations whose cost grows with the magnitude of their argument (arithmetic and log on huge numbers are cheap)
_COSTLY = {"exp", "expm1", "sin", "cos", "tanh", "sinh", "cosh", "atan", "asinh", "asin", "erf", "erfc", "Phi",
           "sigmoid", "softplus", "ScaledPhi", "pow"}


def _evaluate(program, x) -> Any:
    """program(x)[0], refusing a transcendental operation on an argument beyond 2^20000 in magnitude."""
    results: list[Any] = [None] * len(program._steps)
    for i, ((fn, args), (name, _)) in enumerate(zip(program._steps, program.ops)):
        if fn == "input":
            results[i] = x
        elif fn == "const":
            results[i] = args[0]
        else:
            values = [results[j] for j in args]
            if name in _COSTLY and any(isinstance(v, (mp.mpf, mp.mpc)) and v != 0 and mp.mag(v) > _MAX_BITS
                                       for v in values):
                raise _TooLargeError
            results[i] = fn(*values)
    return results[program.outputs[0]]


def _log_abs(program, x) -> Any:
    """log|h(x)|, -inf where h = 0, None where h is not a finite real number (or cannot be evaluated)."""
    try:
        value = _evaluate(program, x)
    except _TooLargeError:
        raise
    except (ValueError, ZeroDivisionError, ArithmeticError, TypeError):
        return None
    if isinstance(value, mp.mpc):
        if abs(value.imag) > mp.mpf(10) ** (-mp.mp.dps // 2) * abs(value):
            return None
        value = value.real
    value = mp.mpf(value)
    if mp.isnan(value) or mp.isinf(value):
        return None
    return mp.ninf if value == 0 else mp.log(abs(value))


# ---------------------------------------------------------------- growth at infinity

def _growth(act: Activation, label: str, h) -> Infinite | None:
    """The worse side's verdict on log|h(z)| ~ c z^2 as z -> +-inf, or None if E[h] is finite for every q."""
    pieces = _piece_functions(act, h)
    sides = {side: _rate(expr, side) for side, expr in ((-1, pieces[0]), (1, pieces[-1]))}
    rate, power = max(sides.values())
    if rate <= 0:
        return None
    where = ("|z| -> inf" if sides[-1] == sides[1] else "z -> +inf" if sides[1] == (rate, power) else "z -> -inf")
    if math.isinf(rate):
        reason = f"{label} grows faster than exp(c z^2) for every c as {where}"
    else:
        shown = "" if rate == 1 else f"{rate:.6g} "
        reason = f"{label} grows like exp({shown}z^2) as {where}"
    return Infinite(label, "growth", reason, rate, power)


def _rate(expr, side: int) -> tuple[float, float]:
    """(c, k) with log|h(side * X)| ~ c X^2 + k log X; c = inf for super-Gaussian growth, c <= 0 if none."""
    if not expr.free_symbols:
        return 0.0, 0.0
    with mp.workdps(_GROWTH_DPS):
        program = _program(expr, _GROWTH_DPS)
        xs, logs = [], []
        for x in _GROWTH_POINTS:
            try:
                value = _log_abs(program, mp.mpf(side * x))
            except _TooLargeError:
                break  # decide from the points so far
            if value is None or value == mp.ninf:
                return 0.0, 0.0  # not real out there (the backends say so), or h vanishes on this side (relu)
            xs.append(mp.mpf(x))
            logs.append(value)
            rates = [v / (t * t) for v, t in zip(logs, xs)]
            # log|h| / z^2 grew tenfold as z squared: not c z^2 (stop before it explodes); only from a |h| >= e,
            # since a log|h| barely above 0 (0.1000000015 z at z = 10) is no rate at all
            if len(rates) >= 2 and rates[-2] > 0 and logs[-2] >= 1 and rates[-1] >= 10 * rates[-2]:
                return math.inf, 0.0
        if len(logs) < 2:
            return 0.0, 0.0
        rates = [v / (t * t) for v, t in zip(logs, xs)]
        if not rates[-1] >= 0.5 * rates[-2] > 0:
            return 0.0, 0.0  # log|h| / z^2 not settled at a c > 0: exp(z), polynomials, bounded
        if len(rates) >= 3 and all(r > 0 for r in rates) and all(b > a * (1 + 1e-3) for a, b in zip(rates, rates[1:])):
            return math.inf, 0.0  # log|h| / z^2 growing at every step, e.g. exp(z^2 log z)
        if len(logs) < 3:
            return float(rates[-1]), 0.0
        # log|h| = c X^2 + k log X + d through the last three points (exact for x^k exp(c x^2))
        rows = [[t * t, mp.log(t), 1] for t in xs[-3:]]
        c, k, _ = mp.lu_solve(mp.matrix(rows), mp.matrix(logs[-3:]))
        return float(c), float(k)


# ---------------------------------------------------------------- singular points at finite z

def _candidate_points(act: Activation) -> list[tuple[Any, int]]:
    """(z0, piece index) pairs where a piece of f or f' may be singular: roots of power bases, log arguments."""
    import sympy as sp

    out: list[tuple[Any, int]] = []
    for k, piece in enumerate(act.pieces):
        bases = set()
        for expr in (piece.expression, piece.derivative):
            for node in sp.preorder_traversal(expr):
                if isinstance(node, sp.Pow) and node.base.free_symbols and not (
                        node.exp.is_Integer and node.exp >= 0):
                    bases.add(node.base)
                elif isinstance(node, sp.log):
                    bases.add(node.args[0])
                elif isinstance(node, sp.asin):
                    bases.update((node.args[0] - 1, node.args[0] + 1))
        lo, hi = piece.lower, piece.upper
        for base in bases:
            for root in _real_roots(base):
                value = float(root)
                if lo - 1e-12 * (1 + abs(lo)) <= value <= hi + 1e-12 * (1 + abs(hi)):
                    out.append((root, k))
        for end in (lo, hi):  # a piece may be singular at its own breakpoint (where(x > 0, 1/x, 0))
            if math.isfinite(end):
                out.append((_exact_breakpoint(act, end), k))
    return out


def _exact_breakpoint(act: Activation, value: float):
    for b in act.exact_breakpoints:
        if float(b) == value:
            return b
    return value


def _real_roots(base) -> list:
    """Real roots of a power base or log argument: exact for polynomials, by a scan and refinement otherwise.

    A product or a power is split into its factors first: the roots of ``((x + 1)**64)**64`` are those of
    ``x + 1``.  A polynomial beyond the ``degree`` budget (:mod:`gainderive.budget`) is not handed to
    ``Poly.real_roots`` (which did not finish on ``(x + 1)**4096 + 1``): it is scanned like any other function.
    """
    import sympy as sp

    from .budget import in_force, polynomial_degree
    from .formula import X

    if base.free_symbols - {X}:
        return []
    if base.is_Mul:
        return [r for factor in base.args if factor.has(X) for r in _real_roots(factor)]
    if base.is_Pow and base.exp.is_number and base.exp.is_positive and base.base.has(X):
        return _real_roots(base.base)
    if polynomial_degree(base, X) > in_force().degree:
        return _scanned_roots(base)
    try:
        poly = sp.Poly(base, X)
        if all(c.is_number for c in poly.all_coeffs()):
            return [] if poly.degree() < 1 else list(poly.real_roots())
    except (sp.PolynomialError, NotImplementedError, ValueError):
        pass
    numerator = sp.fraction(sp.together(base))[0]
    if numerator != base:
        return _real_roots(numerator)
    return _scanned_roots(base)


def _scanned_roots(base) -> list:
    from .evaluate import Program
    from .formula import X

    try:
        with np.errstate(all="ignore"):
            values = np.asarray(Program([base], (X,))(_SCAN)[0], dtype=float)
    except Exception:  # an unevaluable base is left to the backends, which name the problem
        return []
    finite = np.isfinite(values)
    candidates = list(_SCAN[finite & (values == 0)])
    sign = np.sign(values)
    changes = np.nonzero(finite[:-1] & finite[1:] & (sign[:-1] * sign[1:] < 0))[0]
    candidates += [0.5 * (_SCAN[i] + _SCAN[i + 1]) for i in changes]
    magnitude = np.abs(values)
    touching = np.nonzero(finite[1:-1] & (magnitude[1:-1] < magnitude[:-2]) & (magnitude[1:-1] < magnitude[2:])
                          & (magnitude[1:-1] < 1e-2))[0] + 1
    candidates += list(_SCAN[touching])
    program = _program(base, _LOCAL_DPS)
    roots = []
    with mp.workdps(_LOCAL_DPS):
        for start in candidates[:50]:
            try:
                root = mp.findroot(lambda t: program(t)[0], mp.mpf(float(start)), tol=mp.mpf(10) ** (-_LOCAL_DPS + 10))
            except (ValueError, ZeroDivisionError, ArithmeticError, TypeError):
                continue
            if isinstance(root, mp.mpf) and abs(root - start) < 0.1:
                roots.append(root)
    return roots


def _local(act: Activation, label: str, h, points) -> tuple[Infinite | None, list[tuple[float, float]]]:
    """The first candidate point where h is not integrable (or None), and the (z0, a) where it is but |h| -> inf."""
    pieces = _piece_functions(act, h)
    singular = []
    programs: dict[int, Any] = {}
    seen = set()
    with mp.workdps(_LOCAL_DPS):
        cuts = [mp.ninf, *(_mp(b) for b in act.exact_breakpoints), mp.inf]
        for root, k in points:
            key = (mp.nstr(mp.mpf(_mp(root)), 30), k)
            if key in seen:
                continue
            seen.add(key)
            z0 = _mp(root)
            if not pieces[k].free_symbols:
                continue
            if k not in programs:
                programs[k] = _program(pieces[k], _LOCAL_DPS)
            for side in (-1, 1):
                if not cuts[k] < z0 + side * _EPSILONS[0] < cuts[k + 1]:
                    continue
                alpha = _exponent(programs[k], z0, side)
                if alpha is not None and alpha <= _INTEGRABLE:
                    return Infinite(label, "singular", _singular_reason(label, z0, alpha)), singular
                if alpha is not None and alpha < -1e-3:
                    singular.append((float(z0), alpha))
    return None, singular


def _mp(root) -> mp.mpf:
    import sympy as sp

    if isinstance(root, mp.mpf):
        return root
    if isinstance(root, float):
        return mp.mpf(root)
    return mp.mpf(str(sp.N(root, _LOCAL_DPS + 10)))


def _exponent(program, z0, side: int) -> float | None:
    """The slope of log|h(z0 + side eps)| against log eps (the power a of |h| ~ |z - z0|^a), or None."""
    logs = []
    for eps in _EPSILONS:
        values = [_log_abs(program, z0 + side * eps * j) for j in _JITTER]
        values = [v for v in values if v is not None]
        if not values:
            return None
        logs.append(max(values))
    if any(v == mp.ninf for v in logs):
        return None  # h vanishes next to z0: nothing singular
    slopes = [(b - a) / (mp.log(e2) - mp.log(e1)) for a, b, e1, e2 in zip(logs, logs[1:], _EPSILONS, _EPSILONS[1:])]
    return float(min(slopes))


def _singular_reason(label: str, z0, alpha: float) -> str:
    point = float(z0)
    distance = "|z|" if point == 0 else f"|z - {point:.6g}|" if point > 0 else f"|z + {-point:.6g}|"
    shown = f"{round(alpha, 6):.6g}"
    return f"{label} ~ {distance}^{shown} is not integrable at z = {point:.6g}"
