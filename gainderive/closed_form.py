"""Closed forms of the Gaussian moments: what one is, how it is evaluated, where it comes from.

A :class:`ClosedForm` is a moment as an expression in q and the activation's
parameters.  They are derived by :mod:`gainderive.gaussian_rules` (rule-based
Gaussian integrals, then verified against quadrature); for the registry at its
default parameters they are also stored in the registry cache, so that they
can be shown and evaluated without importing sympy.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import sympy as sp

    from .evaluate import Program

__all__ = [
    "BinnedForms",
    "ClosedForm",
    "SmallQSeries",
    "Verdict",
    "bin_bars",
    "bin_index",
    "evaluate",
    "evaluate_many",
    "evaluate_series",
]


def __getattr__(name: str) -> Any:
    if name == "Q":  # the symbol q of every closed form (sympy, so created on first use)
        import sympy as sp

        globals()["Q"] = sp.Symbol("q", positive=True)
        return globals()["Q"]
    raise AttributeError(name)


@dataclass(frozen=True, eq=False)
class ClosedForm:
    """A moment as an expression in q and the activation's parameters.

    ``text`` is a string sympy parses (Phi written with erfc); ``latex`` its LaTeX;
    ``expression`` the sympy expression (parsed from ``text`` by the whitelist parser
    when the form came from the cache).
    """

    moment: str
    text: str
    latex: str

    @cached_property
    def expression(self) -> sp.Expr:
        from .formula import parameter_symbol, parse_formula

        return parse_formula(self.text).subs(parameter_symbol("q"), __getattr__("Q"))

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Verdict:
    """What became of a derived closed form.

    ``status`` is ``"verified"`` (agrees with quadrature), ``"preferred"`` (quadrature disagreed, high precision
    sided with the form, so the form replaces quadrature), ``"rejected"`` (high precision sided against the form,
    or could not settle it; ``reason`` says which), ``"skipped"`` (the derivation was stopped by a symbolic budget,
    :mod:`gainderive.budget`; ``reason`` names the budget, and quadrature answers) or ``"none"`` (the rules
    derived no form).
    """

    form: ClosedForm | None
    status: str
    reason: str = ""


def evaluate(program: Program, q: Any, *, rescue: bool = True) -> tuple[Any, Any]:
    """(value, error bound) of a closed form at q, from its numpy program (the stable rewrite, in one piece).

    The bound is a running rounding-error bound (:meth:`~gainderive.evaluate.Program.bounded`, Higham 2002,
    sec. 3.3): each operation's own rounding -- half an ulp for +, *, /, sqrt, 4 ulp for library functions, more
    where a function squares its argument inside -- plus its arguments' errors times its condition, so that
    rounding amplified by exp(u), by asin near 1 or by cancellation in a sum is counted.  Against 40-digit
    references it holds from q = 1e-8 to 1e8 and is 2-25 times the worst actual error at ordinary q
    (tests/test_closed_form_evaluation.py).

    A Python float (or 0-d array, or numpy scalar) q takes the scalar path (``math``, a few microseconds) and
    returns numpy float64 scalars; an array q returns arrays of its shape.  ``rescue=False`` leaves a value that
    is not finite in double precision so (bar inf), instead of pinning it in interval arithmetic (~1 ms a point).
    """
    if type(q) is float or isinstance(q, np.floating) or (isinstance(q, np.ndarray) and q.ndim == 0):
        found = program.bounded_scalar(float(q))
        if found is not None:
            return np.float64(found[0][0]), np.float64(found[1][0])
    values, bounds = program.bounded(np.asarray(q, dtype=float), rescue=rescue)
    return values[0], bounds[0]


@functools.lru_cache(maxsize=256)
def _fused(programs: tuple[Program, ...]) -> Program:
    from .evaluate import Program

    return Program.fuse(programs)


def evaluate_many(programs: Sequence[Program], q: Any) -> list[tuple[Any, Any]]:
    """[(value, error bound)] of several closed forms at the same q, as :func:`evaluate` gives each.

    Their programs are fused once (cached), so a subexpression they share -- e^{q/2} Phi(-sqrt q) in ELU's mean,
    second moment and variance -- is computed once.
    """
    fused = _fused(tuple(programs))
    if type(q) is float or isinstance(q, np.floating) or (isinstance(q, np.ndarray) and q.ndim == 0):
        found = fused.bounded_scalar(float(q))
        if found is not None:
            return [(np.float64(v), np.float64(e)) for v, e in zip(*found)]
    values, bounds = fused.bounded(np.asarray(q, dtype=float))
    return list(zip(values, bounds))


# -- bars by bin of q: a grid's error bars looked up, not recomputed per q ---------------------------------------------
#: A bin is 2^-BIN_BITS of an octave, read off a double's bits: q = 2^e (1 + m), m in [k/8, (k+1)/8), k = 0..7.
BIN_BITS = 3
#: Index of the bin of the smallest normal double (a grid holds normal q only: gainderive.moments.check_variance).
_FIRST_BIN = 1 << BIN_BITS
#: Bins: every normal double's.
BINS = 2046 << BIN_BITS
#: Samples per bin at which the running bound is evaluated (5 with both ends: steps of at most 3 % in q).
BIN_SAMPLES = 4
#: The factor on a bin's largest sampled relative bound (the bound moves by at most BIN_STEP between samples).
BIN_SAFETY = 2.0
#: A bin whose relative bound changes by more than this factor from one sample to the next (a value approaching
#: 0, a branch of the formula switching) is not tabulated: its q get the running bound itself.
BIN_STEP = 1.25
#: q per chunk of the plain evaluation (every intermediate of a chunk stays in cache).
BIN_CHUNK = 8192


def bin_index(q: np.ndarray) -> np.ndarray:
    """Index of each q's bin in :func:`bin_bars`' columns (q a float64 array of normal positive doubles)."""
    index = q.view(np.int64) >> (52 - BIN_BITS)
    index -= _FIRST_BIN
    return index


def _bin_edges(bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first q, first q of the next bin) of each bin: the doubles whose bits are the bin's, then zeros."""
    first = ((bins + _FIRST_BIN) << (52 - BIN_BITS)).astype(np.int64).view(np.float64)
    after = ((bins + _FIRST_BIN + 1) << (52 - BIN_BITS)).astype(np.int64).view(np.float64)
    return first, np.minimum(after, np.finfo(float).max)  # (the last bin ends at the largest double)


class _BinBars:
    """The table of :func:`bin_bars` for one program, its columns filled for the bins asked for, and the same
    table with the entries above given tolerances set to nan (kept per tuple of tolerances, filled alike)."""

    def __init__(self, program: Program, outputs: int) -> None:
        self.program = program
        self.table = np.full((outputs, BINS), np.nan)
        self.done = np.zeros(BINS, dtype=bool)
        self.masked: dict[tuple, np.ndarray] = {}

    def covering(self, first: int, last: int, tolerances: tuple | None = None) -> np.ndarray:
        if not self.done[first:last + 1].all():
            todo = first + np.flatnonzero(~self.done[first:last + 1])
            self.table[:, todo] = _sampled_bars(self.program, todo)
            for key, masked in self.masked.items():
                masked[:, todo] = _masked(self.table[:, todo], key)
            self.done[todo] = True
        if tolerances is None or all(tol is None for tol in tolerances):
            return self.table
        masked = self.masked.get(tolerances)
        if masked is None:
            masked = self.masked[tolerances] = _masked(self.table, tolerances)
        return masked


def _masked(table: np.ndarray, tolerances: tuple) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.stack([row if tol is None else np.where(row <= tol, row, np.nan)
                         for row, tol in zip(table, tolerances)])


def _sampled_bars(program: Program, bins: np.ndarray) -> np.ndarray:
    """(outputs, len(bins)): the relative bars of the given bins (:func:`bin_bars`)."""
    lo, hi = _bin_edges(bins)
    with np.errstate(all="ignore"):
        q = np.exp(np.log(lo)[:, None] + np.log(hi / lo)[:, None] * (np.arange(BIN_SAMPLES + 1) / BIN_SAMPLES))
        q[:, 0], q[:, -1] = lo, hi  # the ends exactly
        values, bounds = program.bounded(q.ravel(), rescue=False)
        table = np.empty((len(values), bins.size))
        for k, (value, bound) in enumerate(zip(values, bounds)):
            value, bound = value.reshape(q.shape), bound.reshape(q.shape)
            relative = bound / np.abs(value)
            smooth = np.all(np.isfinite(value) & (value != 0) & np.isfinite(relative), axis=1)
            smooth &= np.all(np.sign(value) == np.sign(value[:, :1]), axis=1)
            # (as products: an exact constant has bound 0 at every sample, and its entry is 0)
            after, before = relative[:, 1:], relative[:, :-1]
            smooth &= np.all((after <= BIN_STEP * before) & (before <= BIN_STEP * after), axis=1)
            table[k] = np.where(smooth, BIN_SAFETY * np.max(relative, axis=1), np.nan)
    return table


@functools.lru_cache(maxsize=16)  # 128 kB per output and tolerance: 16 programs of four forms hold about 16 MB
def _bin_bars(program: Program) -> _BinBars:
    return _BinBars(program, len(program.outputs))


def bin_bars(program: Program, first: int = 0, last: int = BINS - 1, tolerances: tuple | None = None) -> np.ndarray:
    """(outputs, BINS) relative error bars of a closed form's program by bin of q, each bin decided once.

    Columns ``first`` to ``last`` are decided (on first use; the others may still be nan); with ``tolerances``
    (one per output, or None), entries above an output's tolerance are nan in what is returned.  A bin is an eighth
    of an octave (:func:`bin_index`).  The running error bound of :meth:`~gainderive.evaluate.Program.bounded`
    (Higham 2002, sec. 3.3) is evaluated at BIN_SAMPLES + 1 log-spaced q spanning the bin, ends included, and
    the entry is BIN_SAFETY times the largest bound / |value| there.  Where the value stays away from 0 a form's
    relative rounding bound is a smooth function of q, and the entry is kept only where it moves by at most
    BIN_STEP between neighbouring samples, so twice the sampled largest bounds it between the samples too.
    Elsewhere the entry is nan and each q takes the running bound: a value not finite or 0, a change of sign,
    or a larger step.
    """
    return _bin_bars(program).covering(first, last, tolerances)


class BinnedForms:
    """Several closed forms evaluated at chunks of a grid of q, their bars looked up by bin of q.

    The forms' fused program runs without its error arithmetic (a third of the passes of :func:`evaluate_many`);
    each bar is |value| times its bin's relative bar (:func:`bin_bars`, for the bins ``first`` to ``last``).
    :func:`evaluate_many` decides the q where that is not finite -- a bin whose bar is not tabulated, a value not
    finite in double precision (the running bound, and the interval rescue of a value that overflows in the
    middle) -- and, for output k, those whose tabulated bar exceeds ``rtol[k]`` |value| (the running bound is the
    tighter: near the end of a form's range it may still meet the tolerance).  Call it on chunks of at most
    BIN_CHUNK q, so that every intermediate stays in cache.
    """

    def __init__(self, programs: Sequence[Program], first: int, last: int,
                 rtol: Sequence[float | None] | None = None) -> None:
        self.programs = tuple(programs)
        self.rtol = tuple(rtol) if rtol is not None else (None,) * len(self.programs)
        self.fused = _fused(self.programs)
        self.table = bin_bars(self.fused, first, last, self.rtol)

    def __call__(self, q: np.ndarray, index: np.ndarray, out: Sequence[tuple[np.ndarray, np.ndarray]]) -> list:
        """Write (value, error) of form k at q (1-d, bins ``index``) into out[k] (arrays of q's length).

        Returns, per form, where its bar is finite and within its ``rtol`` |value| (a tabulated bar is, by
        construction: its bin's entry is at most rtol): True for every q, or a boolean array.
        """
        retry = None
        within: list = []
        with np.errstate(all="ignore"):
            for (value, error), found, row in zip(out, self.fused(q), self.table):
                value[...] = found
                np.abs(found, out=error)
                error *= row.take(index)
                if math.isfinite(error.sum()):  # one pass, no temporary: the usual case
                    within.append(True)
                    continue
                ok = np.isfinite(error)
                within.append(ok)
                retry = ~ok if retry is None else retry | ~ok
            if retry is not None:
                at = np.flatnonzero(retry)
                for k, ((value, error), (v, e), tol) in enumerate(zip(out, evaluate_many(self.programs, q[at]),
                                                                      self.rtol)):
                    if within[k] is True:  # (an output whose tabulated bar held keeps it)
                        continue
                    need = ~within[k][at]
                    v, e, where = v[need], e[need], at[need]
                    value[where], error[where] = v, e
                    within[k][where] = np.isfinite(e) & np.isfinite(v) & (True if tol is None else e <= tol * np.abs(v))
        return within


_UNIT_ROUNDOFF = 2.0**-53
_SMALLEST_SUBNORMAL = 2.0**-1074


class SmallQSeries(NamedTuple):
    r"""A verified closed form's Taylor polynomial at q = 0, and where it answers instead of the form.

    The forms are analytic in x = sqrt(q) at 0 (erfcx(x) = sum_k (-x)^k / Gamma(k/2 + 1); exp, sqrt(1 + c q),
    asin likewise), so the moment is p(x) = sum_{k <= n} a_k x^k plus a remainder, with x = q when only even
    powers of sqrt(q) occur (``in_q``) and x = sqrt(q) otherwise.  The coefficients were derived exactly
    (:func:`gainderive.verify.small_q_series`), so the terms that cancel in the form (ELU's mean, q/4 from terms
    of size sqrt(q)) cancel exactly in them, and each was rounded once to float64.  For q <= ``q_max`` the
    remainder is at most ``tail`` * x^(n+1) (bounded at derivation from the next 8..40 terms and a geometric tail,
    then checked against the form at 40+ digits).
    """

    coefficients: tuple[float, ...]
    in_q: bool
    q_max: float
    tail: float

    def to_data(self) -> dict[str, Any]:
        return {"coefficients": [float(a) for a in self.coefficients], "in_q": bool(self.in_q),
                "q_max": float(self.q_max), "tail": float(self.tail)}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> SmallQSeries:
        coefficients = tuple(float(a) for a in data["coefficients"])
        q_max, tail = float(data["q_max"]), float(data["tail"])
        if not coefficients or not (q_max >= 0 and tail >= 0):
            raise ValueError("a small-q series needs coefficients, q_max >= 0 and tail >= 0")
        return cls(coefficients, bool(data["in_q"]), q_max, tail)


def series_magnitude(coefficients: Sequence[float], in_q: bool, q_max: Any) -> tuple[int, Any]:
    """(j, K) with sum_k |a_k| x^k <= K x^j for 0 <= x <= x_max = sqrt(q_max) (or q_max): j is the lowest power
    with a_j != 0 and K = sum_k |a_k| x_max^(k-j), since x^(k-j) <= x_max^(k-j).  ``q_max`` may be an array."""
    j = next((k for k, a in enumerate(coefficients) if a != 0), 0)
    x_max = np.asarray(q_max, dtype=float) if in_q else np.sqrt(np.asarray(q_max, dtype=float))
    magnitude = np.zeros(x_max.shape)
    for a in reversed(coefficients[j:]):
        magnitude = magnitude * x_max + abs(a)
    return j, magnitude * (1 + 1e-12)  # the rounding of this sum


@functools.lru_cache(maxsize=256)
def _series_constants(series: SmallQSeries) -> tuple[int, float, float]:
    """(j, C, floor) of :func:`evaluate_series`' bar C x^j + floor, computed once per series."""
    n = len(series.coefficients) - 1
    j, magnitude = series_magnitude(series.coefficients, series.in_q, series.q_max)
    x_max = series.q_max if series.in_q else math.sqrt(series.q_max)
    # the truncation tail x^(n+1) <= tail x_max^(n+1-j) x^j for x <= x_max: one power of x in the bar, not two
    bound = _series_relative(n) * float(magnitude) + series.tail * x_max ** (n + 1 - j)
    return j, bound * (1 + 1e-12), (2 * n + 2) * _SMALLEST_SUBNORMAL  # (1e-12: the rounding of this sum)


def _series_relative(n: int) -> float:
    return (3 * n + 3) * 1.03 * _UNIT_ROUNDOFF


def _power(x: np.ndarray, k: int) -> np.ndarray:
    """x^k by repeated squaring (a few multiplications, against ~60 ns a number for numpy's pow)."""
    out = base = None
    while k:
        if k & 1:
            if out is None:
                out = base.copy() if base is not None else x.copy()
            else:
                out *= x if base is None else base
        k >>= 1
        if k:
            base = x * x if base is None else np.multiply(base, base, out=base)
    return np.ones_like(x) if out is None else out


def evaluate_series(series: SmallQSeries, q: Any, x: Any = None) -> tuple[Any, Any]:
    r"""(value, error bound) of a small-q series at q <= series.q_max: Horner's rule in x = q or sqrt(q).

    With a_j the lowest nonzero coefficient, the value is x^j times the Horner sum of a_j..a_n.  The bound adds
    (Higham 2002, sec. 5.1, with u = 2^-53 and n the degree): Horner's rounding and that of the product by x^j,
    gamma_{2n} sum |a_k| x^k; each coefficient's own rounding to float64, u sum |a_k| x^k; the rounding of
    x = sqrt(q), which moves a_k x^k by at most k u |a_k| x^k; these together at most (3n + 3) u sum |a_k| x^k,
    with a 3% margin for gamma's denominator and the rounding of the bound itself, and sum |a_k| x^k <= K x^j
    (:func:`series_magnitude`); the truncation, tail * x^(n+1) <= tail * x_max^(n+1-j) x^j; and (2n + 2) times
    the smallest subnormal, for rounding below the normal range.  A Python float q returns Python floats; an
    array q returns arrays (``x``: sqrt(q) if the caller has it already).
    """
    j, bound, floor = _series_constants(series)
    top = series.coefficients[j:]
    if type(q) is float:
        x = q if series.in_q else math.sqrt(q)
        value = 0.0
        for a in reversed(top):
            value = value * x + a
        power = x**j
        return value * power, bound * power + floor
    q = np.asarray(q, dtype=float)
    if x is None:
        x = q if series.in_q else np.sqrt(q)
    if len(top) == 1:
        value = np.full(x.shape, top[0])
    else:
        value = x * top[-1]
        value += top[-2]
        for a in reversed(top[:-2]):
            value *= x
            value += a
    if j == 0:
        return value, np.full(x.shape, bound + floor)
    power = q if (j == 2 and not series.in_q) or (j == 1 and series.in_q) else _power(x, j)
    value *= power
    error = power * bound
    error += floor
    return value, error
