"""Compile sympy expressions into straight-line numpy or mpmath programs.

A :class:`Program` evaluates several expressions that share subexpressions
(f, f**2 and f'**2 share f) with each distinct node computed once.  It walks
the expression tree itself instead of generating source for ``exec`` (what
``lambdify`` does), so only the operations named in the tables below can ever
run, and it applies the rewrites double precision needs: ``k*exp(u) - k`` is
``k*expm1(u)``, ``log(1 + u)`` is ``log1p(u)``, softplus and the sigmoid never
overflow.

A program is a list of operations by name (``("expm1", (0,))``) and constants,
so it can also be stored as JSON and run without sympy: the command line's
cache of the registry does that (:meth:`Program.from_ops`).

An intermediate overflow is not a divergence.  Where a numpy program built
from sympy expressions returns a non-finite value (``x*tanh(inf)``,
``inf/inf``, ``inf*0``), those inputs are evaluated again in interval
arithmetic (mpmath's ``iv`` context, whose exponent range is unbounded) at
40 and, if that is not tight enough, 400 digits.  The value is used when the
enclosure is finite, inside the double range and narrower than 2^-52 of its
magnitude, so it is the double nearest the true value up to an ulp; anything
else -- a true infinity, a complex value, an enclosure too wide to pin a
double -- stays non-finite and the backends report it as before.  The cost
when every value is finite is one ``np.isfinite`` per output.
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import mpmath as mp
import numpy as np

from .errors import FormulaError

if TYPE_CHECKING:
    import sympy as sp

__all__ = ["Program"]


@functools.cache
def _special():
    # scipy.special costs ~0.2 s to import: only formulas that need it pay.
    import scipy.special

    return scipy.special


def _scaled_phi(c, b):
    """e^{c + b^2/2} Phi(b) without overflow or underflow: erfcx carries the Gaussian tail for b < 0."""
    c, b = np.broadcast_arrays(np.asarray(c, dtype=float), np.asarray(b, dtype=float))
    with np.errstate(over="ignore", invalid="ignore"):
        tail = np.exp(c) * 0.5 * _special().erfcx(-b / np.sqrt(2.0))
        head = np.exp(c + 0.5 * b * b) * _special().ndtr(b)
    return np.where(b < 0, tail, head)


def _np_select(*args):
    conds, values = args[0::2], args[1::2]
    shape = np.broadcast_shapes(*(np.shape(a) for a in args))
    return np.select([np.broadcast_to(c, shape) for c in conds], [np.broadcast_to(v, shape) for v in values], np.nan)


def _mp_select(*args):
    for cond, value in zip(args[0::2], args[1::2]):
        if cond:
            return value
    return mp.nan


# Operation name -> implementation.  The names of sympy functions are their class names.
def _np_pow(u, v):
    """u**v; a cube by two multiplications (np.power(u, 3.0) costs 45 ns an element, u*u*u 0.3 ns: measured),
    within 2 ulps where power is within 1 -- far inside every error bar built on it."""
    if np.ndim(v) == 0 and v == 3:
        return u * u * u
    return np.power(u, v)


_NUMPY: dict[str, Callable] = {
    "exp": np.exp,
    "log": np.log,
    "sin": np.sin,
    "cos": np.cos,
    "tanh": np.tanh,
    "sinh": np.sinh,
    "cosh": np.cosh,
    "atan": np.arctan,
    "asinh": np.arcsinh,
    "asin": np.arcsin,
    "ScaledPhi": lambda c, b: _scaled_phi(c, b),
    "erf": lambda u: _special().erf(u),
    "erfc": lambda u: _special().erfc(u),
    "Phi": lambda u: _special().ndtr(u),
    "sigmoid": lambda u: _special().expit(u),
    # max(u, 0) + log1p(e^-|u|): logaddexp's own stable form, 8x faster than np.logaddexp(0, u) (measured)
    "softplus": lambda u: np.maximum(u, 0.0) + np.log1p(np.exp(-np.abs(u))),
    "Abs": np.abs,
    "sign": np.sign,
    "Heaviside": lambda u: np.heaviside(u, 0.5),
    "expm1": np.expm1,
    "log1p": np.log1p,
    "sqrt": np.sqrt,
    "square": np.square,
    "add": lambda *a: functools.reduce(np.add, a),
    "mul": lambda *a: functools.reduce(np.multiply, a),
    "neg": np.negative,
    "reciprocal": lambda u: 1.0 / u,
    "pow": lambda u, v: _np_pow(u, v),
    "Max": lambda *a: functools.reduce(np.maximum, a),
    "Min": lambda *a: functools.reduce(np.minimum, a),
    "Piecewise": _np_select,
    "StrictGreaterThan": np.greater,
    "StrictLessThan": np.less,
    "GreaterThan": np.greater_equal,
    "LessThan": np.less_equal,
    "Equality": np.equal,
    "Unequality": np.not_equal,
    "And": lambda *a: functools.reduce(np.logical_and, a),
    "Or": lambda *a: functools.reduce(np.logical_or, a),
    "Not": np.logical_not,
}

_MPMATH: dict[str, Callable] = {
    "exp": mp.exp,
    "log": mp.log,
    "sin": mp.sin,
    "cos": mp.cos,
    "tanh": mp.tanh,
    "sinh": mp.sinh,
    "cosh": mp.cosh,
    "atan": mp.atan,
    "asinh": mp.asinh,
    "asin": mp.asin,
    "ScaledPhi": lambda c, b: mp.exp(c + b * b / 2) * mp.ncdf(b),
    "erf": mp.erf,
    "erfc": mp.erfc,
    "Phi": mp.ncdf,
    "sigmoid": lambda u: 1 / (1 + mp.exp(-u)),
    "softplus": lambda u: mp.log1p(mp.exp(u)),
    "Abs": mp.fabs,
    "sign": mp.sign,
    "Heaviside": lambda u: mp.mpf(1) if u > 0 else (mp.mpf(0) if u < 0 else mp.mpf(0.5)),
    "expm1": mp.expm1,
    "log1p": mp.log1p,
    "sqrt": mp.sqrt,
    "square": lambda u: u * u,
    "add": lambda *a: mp.fsum(a),
    "mul": lambda *a: functools.reduce(lambda p, v: p * v, a),
    "neg": lambda u: -u,
    "reciprocal": lambda u: 1 / u,
    "pow": lambda u, v: u**v,
    "Max": max,
    "Min": min,
    "Piecewise": _mp_select,
    "StrictGreaterThan": lambda a, b: a > b,
    "StrictLessThan": lambda a, b: a < b,
    "GreaterThan": lambda a, b: a >= b,
    "LessThan": lambda a, b: a <= b,
    "Equality": lambda a, b: a == b,
    "Unequality": lambda a, b: a != b,
    "And": lambda *a: all(a),
    "Or": lambda *a: any(a),
    "Not": lambda a: not a,
}


# -- interval arithmetic: enclosures of the true value, for the inputs where double precision overflows ------------
_IV = mp.iv


class _UndecidedError(ArithmeticError):
    """An interval straddles a condition's boundary or a kink: no single branch holds."""


@contextlib.contextmanager
def _interval_digits(dps: int) -> Iterator[None]:
    saved = _IV.prec
    _IV.dps = dps
    try:
        yield
    finally:
        _IV.prec = saved


_IV_REAL = type(_IV.mpf(0))


def _ends(u) -> tuple[mp.mpf, mp.mpf]:
    if not isinstance(u, _IV_REAL):
        raise _UndecidedError("not a real interval")  # an ivmpc: the value is complex
    return mp.make_mpf(u._mpi_[0]), mp.make_mpf(u._mpi_[1])


def _monotone(fn: Callable, increasing: bool = True) -> Callable:
    """An enclosure of a monotone fn from mpmath's values at the ends, 20 guard bits, widened by 2^-prec."""

    def enclose(u):
        lo, hi = _ends(u)
        with mp.workprec(_IV.prec + 20):
            a, b = (fn(lo), fn(hi)) if increasing else (fn(hi), fn(lo))
            if not (isinstance(a, mp.mpf) and isinstance(b, mp.mpf)):
                raise _UndecidedError("complex value")
            slack = mp.ldexp(1, -_IV.prec)
            return _IV.mpf([a - abs(a) * slack, b + abs(b) * slack])

    return enclose


def _iv_abs(u):
    lo, hi = _ends(u)
    if lo >= 0:
        return u
    if hi <= 0:
        return -u
    return _IV.mpf([0, max(-lo, hi)])


def _iv_step(negative, zero, positive) -> Callable:
    def step(u):
        lo, hi = _ends(u)
        if lo > 0:
            return _IV.mpf(positive)
        if hi < 0:
            return _IV.mpf(negative)
        if lo == hi == 0:
            return _IV.mpf(zero)
        raise _UndecidedError("the interval contains the jump")

    return step


def _iv_extreme(pick: Callable) -> Callable:
    def extreme(*args):
        ends = [_ends(a) for a in args]
        return _IV.mpf([pick(e[0] for e in ends), pick(e[1] for e in ends)])

    return extreme


def _iv_pow(u, v):
    lo, hi = _ends(v)
    if lo == hi and lo == int(lo):
        return u ** int(lo)  # an integer power is defined for every real base
    if _ends(u)[0] < 0:
        raise _UndecidedError("non-integer power of a negative number")
    return u**v


def _iv_compare(decide: Callable) -> Callable:
    """A comparison that holds or fails for every point of both intervals; otherwise undecided."""

    def compare(a, b):
        (alo, ahi), (blo, bhi) = _ends(a), _ends(b)
        verdict = decide(alo, ahi, blo, bhi)
        if verdict is None:
            raise _UndecidedError("the interval straddles a condition")
        return verdict

    return compare


def _iv_select(*args):
    for cond, value in zip(args[0::2], args[1::2]):
        if cond:
            return value
    raise _UndecidedError("no branch holds")


_INTERVAL: dict[str, Callable] = {
    "exp": _IV.exp,
    "log": _IV.log,
    "sin": _IV.sin,
    "cos": _IV.cos,
    "tanh": _monotone(mp.tanh),
    "sinh": _monotone(mp.sinh),
    "cosh": lambda u: (_IV.exp(u) + _IV.exp(-u)) / 2,
    "atan": _monotone(mp.atan),
    "asinh": _monotone(mp.asinh),
    "asin": _monotone(mp.asin),
    "ScaledPhi": lambda c, b: _IV.exp(c + b * b / 2) * _monotone(mp.ncdf)(b),
    "erf": _monotone(mp.erf),
    "erfc": _monotone(mp.erfc, increasing=False),
    "Phi": _monotone(mp.ncdf),
    "sigmoid": _monotone(lambda u: 1 / (1 + mp.exp(-u))),
    "softplus": _monotone(lambda u: mp.log1p(mp.exp(u))),
    "Abs": _iv_abs,
    "sign": _iv_step(-1, 0, 1),
    "Heaviside": _iv_step(0, 0.5, 1),
    "expm1": _monotone(mp.expm1),  # mp.iv's are exp(u) - 1 and log(1 + u): no relative accuracy near 0
    "log1p": _monotone(mp.log1p),
    "sqrt": _IV.sqrt,
    "square": lambda u: u**2,
    "add": lambda *a: functools.reduce(operator.add, a),
    "mul": lambda *a: functools.reduce(operator.mul, a),
    "neg": operator.neg,
    "reciprocal": lambda u: 1 / u,
    "pow": _iv_pow,
    "Max": _iv_extreme(max),
    "Min": _iv_extreme(min),
    "Piecewise": _iv_select,
    "StrictGreaterThan": _iv_compare(lambda al, ah, bl, bh: True if al > bh else (False if ah <= bl else None)),
    "StrictLessThan": _iv_compare(lambda al, ah, bl, bh: True if ah < bl else (False if al >= bh else None)),
    "GreaterThan": _iv_compare(lambda al, ah, bl, bh: True if al >= bh else (False if ah < bl else None)),
    "LessThan": _iv_compare(lambda al, ah, bl, bh: True if ah <= bl else (False if al > bh else None)),
    "Equality": _iv_compare(lambda al, ah, bl, bh: True if al == ah == bl == bh else (False if ah < bl or bh < al
                                                                                       else None)),
    "Unequality": _iv_compare(lambda al, ah, bl, bh: False if al == ah == bl == bh else (True if ah < bl or bh < al
                                                                                          else None)),
    "And": lambda *a: all(a),
    "Or": lambda *a: any(a),
    "Not": lambda a: not a,
}

#: Interval precisions tried in turn for a non-finite double; the second resolves sums that cancel 300+ digits.
RESCUE_DIGITS = (40, 400)
#: At most this many points per call are re-evaluated (a Monte Carlo chunk that overflows everywhere stays so).
MAX_RESCUED = 5000
_DOUBLE_MAX = mp.mpf(np.finfo(float).max)
_DOUBLE_TINY = mp.mpf(np.finfo(float).tiny)

# An operation: ("input", (k,)), ("const", (value,)) or (name, argument indices).
Op = tuple[str, tuple]


# How much an operation magnifies the relative rounding of its arguments, beyond the last bit (see
# Program.amplification): the exponent of exp-like operations, u^2 for the Gaussian tails of Phi/erf/erfc.
_AMPLIFY: dict[str, Callable] = {
    "exp": lambda u: u,
    "expm1": lambda u: u,
    "sinh": lambda u: u,
    "cosh": lambda u: u,
    # e^{c + b^2/2} Phi(b): the exponent for b >= 0; for b < 0 erfcx carries the tail (condition ~1)
    "ScaledPhi": lambda c, b: np.abs(c) + np.where(b >= 0, 0.5 * np.square(b), 1.0),
    # only the Gaussian tails magnify: Phi(u) for u < 0, erfc(u) for u > 0 (erf is bounded: condition ~1)
    "Phi": lambda u: np.where(u < 0, 0.5 * np.square(u), 0.0),
    "erfc": lambda u: np.where(u > 0, np.square(u), 0.0),
    "pow": lambda u, v: v * np.log(np.abs(u)),
}


class Program:
    """Evaluate ``exprs`` at given values of ``inputs`` (symbols), numpy or mpmath.

    ``Program([f, f**2], [x])(t)`` returns ``[f(t), f(t)**2]`` computing f once.
    With ``backend="mpmath"`` constants are evaluated at ``dps`` digits and the
    program works on mpmath scalars; ``backend="interval"`` works on mpmath
    intervals (``mp.iv``) and encloses every constant.  A numpy program built
    from expressions re-evaluates non-finite outputs in interval arithmetic
    (see the module docstring).
    """

    def __init__(self, exprs: Sequence[sp.Basic], inputs: Sequence[sp.Symbol], *, backend: str = "numpy",
                 dps: int = 15):
        self.backend = backend
        self.dps = dps
        self._source = (tuple(exprs), tuple(inputs)) if backend == "numpy" else None
        self._enclosures: dict[int, Program | None] = {}
        self.ops: list[Op] = []
        self._index: dict[Any, int] = {}
        self._n_inputs = len(inputs)
        for k, symbol in enumerate(inputs):
            self._index[symbol] = len(self.ops)
            self.ops.append(("input", (k,)))
        with mp.workdps(dps + 10):
            self.outputs = [self._node(e) for e in exprs]
        self._compile()

    @classmethod
    def from_ops(cls, ops: Sequence[Sequence], outputs: Sequence[int], n_inputs: int = 1) -> Program:
        """A numpy program from stored operations (see :meth:`to_ops`); needs no sympy."""
        program = cls.__new__(cls)
        program.backend, program.dps, program._n_inputs = "numpy", 15, n_inputs
        program._source, program._enclosures = None, {}  # no expressions to re-evaluate: non-finite stays so
        program.ops = [(name, tuple(args)) for name, args in ops]
        if any(name not in _NUMPY and name not in ("input", "const") for name, _ in program.ops):
            raise FormulaError("a stored program names an unknown operation")
        program.outputs = list(outputs)
        program._compile()
        return program

    def to_ops(self) -> dict[str, Any]:
        """The program as plain data: {"ops": [[name, args], ...], "outputs": [...]}."""
        if self.backend != "numpy":
            raise ValueError("only numpy programs are stored")
        return {"ops": [[name, list(args)] for name, args in self.ops], "outputs": list(self.outputs)}

    def _compile(self) -> None:
        table = {"numpy": _NUMPY, "mpmath": _MPMATH, "interval": _INTERVAL}[self.backend]
        self._steps = [(name if name in ("input", "const") else table[name], args) for name, args in self.ops]

    # -- building from sympy ---------------------------------------------------
    def _emit(self, key: Any, name: str, args: tuple) -> int:
        self.ops.append((name, args))
        index = len(self.ops) - 1
        if key is not None:
            self._index[key] = index
        return index

    def _constant(self, e: sp.Basic) -> int:
        import sympy as sp

        if e is sp.true or e is sp.false:
            return self._emit(e, "const", (bool(e),))
        value = sp.N(e, self.dps + 10)
        if not value.is_real:
            raise FormulaError(f"constant {e} is not a real number")
        number: Any
        if self.backend == "numpy":
            number = float(value)
        elif self.backend == "mpmath":
            number = mp.mpf(str(value))
        else:  # sympy's value is good to dps + 9 digits: widen by 10^-(dps+5) to enclose the exact constant
            with mp.workdps(self.dps + 20):
                centre = mp.mpf(str(value))
                slack = abs(centre) * mp.mpf(10) ** -(self.dps + 5)
                with _interval_digits(self.dps + 20):
                    number = _IV.mpf([centre - slack, centre + slack])
        return self._emit(e, "const", (number,))

    def _call(self, key, name: str, *children: sp.Basic) -> int:
        return self._emit(key, name, tuple(self._node(c) for c in children))

    def _node(self, e: sp.Basic) -> int:
        import sympy as sp

        if e in self._index:
            return self._index[e]
        if not e.free_symbols:
            return self._constant(e)
        if isinstance(e, sp.Add):
            return self._add(e)
        if isinstance(e, sp.Mul):
            coeff, rest = e.as_coeff_Mul()
            if coeff == -1:
                return self._call(e, "neg", rest)
            return self._call(e, "mul", *e.args)
        if isinstance(e, sp.Pow):
            base, exp = e.args
            if exp == 2:
                return self._call(e, "square", base)
            if exp == -1:
                return self._call(e, "reciprocal", base)
            if exp == sp.S.Half:
                return self._call(e, "sqrt", base)
            if base is sp.E:
                return self._call(e, "exp", exp)
            return self._call(e, "pow", base, exp)
        if isinstance(e, sp.log) and isinstance(e.args[0], sp.Add) and sp.S.One in e.args[0].args:
            return self._call(e, "log1p", e.args[0] - 1)
        if isinstance(e, sp.Piecewise):
            return self._call(e, "Piecewise", *(c for pair in e.args for c in (pair.cond, pair.expr)))
        name = type(e).__name__
        if name in _NUMPY:
            return self._call(e, name, *e.args)
        raise FormulaError(f"cannot evaluate {name}() numerically; it is outside the supported functions")

    def _add(self, e: sp.Add) -> int:
        import sympy as sp

        # the constant terms as one constant, evaluated exactly: -1 + erf(3) summed in floats loses five digits
        constants = [t for t in e.args if not t.free_symbols]
        terms = [t for t in e.args if t.free_symbols]
        if len(constants) > 1:
            terms.append(sp.Add(*constants, evaluate=False))
        else:
            terms.extend(constants)
        # k*exp(u) - k  ->  k*expm1(u): exact near u = 0, where the difference cancels.
        for term in terms:
            k, rest = term.as_coeff_Mul()
            if type(rest).__name__ == "exp" and -k in terms and k.is_number and k != 0:
                terms.remove(term)
                terms.remove(-k)
                node = self._emit(None, "expm1", (self._node(rest.args[0]),))
                if k != 1:
                    node = self._emit(None, "mul", (self._node(k), node))
                if not terms:
                    self._index[e] = node
                    return node
                return self._emit(e, "add", (node, *(self._node(t) for t in terms)))
        return self._call(e, "add", *terms)

    # -- evaluation ------------------------------------------------------------
    def __call__(self, *values: Any) -> list[Any]:
        """Evaluate at the given input values; returns one result per expression."""
        results: list[Any] = [None] * len(self._steps)
        for i, (fn, args) in enumerate(self._steps):
            if fn == "input":
                results[i] = values[args[0]]
            elif fn == "const":
                results[i] = args[0]
            else:
                results[i] = fn(*[results[j] for j in args])
        out = [results[k] for k in self.outputs]
        if self.backend == "numpy":
            # constants (f' = 1 on a linear piece) come back as scalars: give every output the input's shape
            shape = np.shape(values[0]) if len(values) == 1 else np.broadcast_shapes(*(np.shape(v) for v in values))
            out = [v if isinstance(v, np.ndarray) and v.shape == shape else np.broadcast_to(np.asarray(v, dtype=float),
                                                                                              shape) for v in out]
            if self._source is not None:
                finite = [np.isfinite(v) for v in out]
                if not all(f.all() for f in finite):
                    out = self._rescue(values, shape, out, finite)
        return out

    def amplification(self, *values: Any) -> list[np.ndarray]:
        """Per output, how much the rounding of its inputs is magnified: A with relative error <= (1 + A) eps.

        Rounding an argument u by eps |u| moves exp(u) by eps |u| relative, so each exponential-like operation
        adds the size of its exponent (for Phi/erf/erfc of a large argument, of the Gaussian's: u^2), and an
        operation inherits the largest amplification of its arguments.  Cancellation in sums is not counted
        here: callers bound that by the sizes of the summands.
        """
        results: list[Any] = [None] * len(self._steps)
        amp: list[Any] = [0.0] * len(self._steps)
        with np.errstate(all="ignore"):
            for i, ((fn, args), (name, _)) in enumerate(zip(self._steps, self.ops)):
                if fn == "input":
                    results[i] = values[args[0]]
                    continue
                if fn == "const":
                    results[i] = args[0]
                    continue
                children = [results[j] for j in args]
                results[i] = fn(*children)
                inherited = functools.reduce(np.maximum, [amp[j] for j in args], 0.0)
                grow = _AMPLIFY.get(name)
                amp[i] = inherited + (np.abs(grow(*children)) if grow is not None else 0.0)
        shape = np.shape(values[0]) if len(values) == 1 else np.broadcast_shapes(*(np.shape(v) for v in values))
        return [np.broadcast_to(np.asarray(amp[k], dtype=float), shape) for k in self.outputs]

    # -- non-finite doubles: interval arithmetic -------------------------------------------------------------
    def _rescue(self, values: Sequence[Any], shape: tuple, out: list, finite: list) -> list:
        """Replace non-finite outputs by the double that interval arithmetic pins down, where it does."""
        bad = ~functools.reduce(np.logical_and, finite)
        points = np.flatnonzero(bad)
        if points.size > MAX_RESCUED:
            return out
        inputs = [np.broadcast_to(np.asarray(v, dtype=float), shape).ravel() for v in values]
        out = [v if f.all() else np.array(v, dtype=float) for v, f in zip(out, finite)]
        for i in points:
            wanted = [j for j, f in enumerate(finite) if not f.flat[i]]
            for j, value in self._enclosed([float(x[i]) for x in inputs], wanted).items():
                out[j].flat[i] = value
        return out

    def _enclosed(self, point: list[float], wanted: list[int]) -> dict[int, float]:
        """{output: double} for the wanted outputs whose interval enclosure at ``point`` pins a finite double."""
        found: dict[int, float] = {}
        for dps in RESCUE_DIGITS:
            program = self._enclosure(dps)
            if program is None:
                return found
            with _interval_digits(dps):
                results = program._tolerant([_IV.mpf(x) for x in point])
                for j in wanted:
                    verdict = _pinned(results[j])
                    if verdict is not None:
                        found[j] = verdict
            wanted = [j for j in wanted if j not in found and _worth_more_digits(results[j])]
            if not wanted:
                break
        return found

    def _enclosure(self, dps: int) -> Program | None:
        if dps not in self._enclosures:
            exprs, inputs = self._source
            try:
                self._enclosures[dps] = Program(exprs, inputs, backend="interval", dps=dps)
            except (FormulaError, TypeError, ValueError, ArithmeticError):
                self._enclosures[dps] = None  # e.g. a constant sympy cannot evaluate: no rescue
        return self._enclosures[dps]

    def _tolerant(self, values: Sequence[Any]) -> list[Any]:
        """Evaluate, with None for every node whose value is undefined or undecidable (and all that use it)."""
        results: list[Any] = [None] * len(self._steps)
        for i, (fn, args) in enumerate(self._steps):
            if fn == "input":
                results[i] = values[args[0]]
            elif fn == "const":
                results[i] = args[0]
            else:
                operands = [results[j] for j in args]
                if any(v is None for v in operands):
                    continue
                if self.ops[i][0] in _EXPONENTIAL and _beyond(operands, _HUGE_EXPONENT):
                    continue  # e^(e^30) has 10^13 digits in its exponent: beyond any double, and hours to compute
                try:
                    results[i] = fn(*operands)
                except (ArithmeticError, ValueError, TypeError, MemoryError):  # undecided, complex, 1/0, e^(e^800)
                    results[i] = None
        return [results[k] for k in self.outputs]


_EXPONENTIAL = {"exp", "expm1", "sinh", "cosh", "pow", "ScaledPhi"}
_HUGE_EXPONENT = mp.mpf(10) ** 6


def _beyond(operands: list, limit: mp.mpf) -> bool:
    """Whether any interval operand reaches |u| > limit."""
    for u in operands:
        try:
            lo, hi = _ends(u)
        except _UndecidedError:
            return True
        if not (abs(lo) <= limit and abs(hi) <= limit):
            return True
    return False


def _pinned(value: Any) -> float | None:
    """The double an enclosure pins down: finite, inside the double range, narrower than 2^-52 of its size.

    A finite enclosure wholly beyond the double range is ``±inf``: the value exists but overflows.
    """
    try:
        lo, hi = _ends(value)
    except _UndecidedError:
        return None
    if not (mp.isfinite(lo) and mp.isfinite(hi)):
        return None
    if lo > _DOUBLE_MAX or hi < -_DOUBLE_MAX:
        return math.copysign(math.inf, lo)
    size = max(abs(lo), abs(hi))
    if size > _DOUBLE_MAX:
        return None
    if size < _DOUBLE_TINY or hi - lo <= mp.ldexp(size, -52):
        return float((lo + hi) / 2)
    return None


def _worth_more_digits(value: Any) -> bool:
    """A finite enclosure too wide to pin a double: more digits may narrow it (a cancellation)."""
    try:
        lo, hi = _ends(value)
    except _UndecidedError:
        return False
    return bool(mp.isfinite(lo) and mp.isfinite(hi) and lo <= _DOUBLE_MAX and hi >= -_DOUBLE_MAX)

