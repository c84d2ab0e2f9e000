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

:meth:`Program.bounded` returns each output with a bound on its rounding error (a running error bound: the
comment above :class:`_BoundPlan` gives the rules), in one pass over the program and in cache-sized chunks;
:meth:`Program.bounded_scalar` does the same for one point in Python floats and the ``math`` module (a few
microseconds), and :meth:`Program.fuse` merges programs that share subexpressions.  Closed forms are evaluated
this way (:func:`gainderive.closed_form.evaluate`).
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
    if np.ndim(c) == 0 and np.ndim(b) != 0:  # a constant c (0 in every registry form): e^c once, not per element
        b = np.asarray(b, dtype=float)
        scale = math.exp(float(c)) if float(c) < 709.0 else np.exp(np.float64(c))
        negative = b < 0
        with np.errstate(over="ignore", invalid="ignore"):
            if negative.all():
                out = _special().erfcx(b / _MINUS_SQRT_2)
                out *= 0.5 * scale
                return out
            head = np.exp(0.5 * b * b)
            head *= _special().ndtr(b)
            head *= scale
            if not negative.any():
                return head
            tail = _special().erfcx(b / _MINUS_SQRT_2)
            tail *= 0.5 * scale
        return np.where(negative, tail, head)
    c, b = np.broadcast_arrays(np.asarray(c, dtype=float), np.asarray(b, dtype=float))
    negative = b < 0
    with np.errstate(over="ignore", invalid="ignore"):
        if negative.all():  # only the branch that is used: erfcx and ndtr cost ~1-10 ns an element
            return np.exp(c) * 0.5 * _special().erfcx(-b / np.sqrt(2.0))
        if not negative.any():
            return np.exp(c + 0.5 * b * b) * _special().ndtr(b)
        tail = np.exp(c) * 0.5 * _special().erfcx(-b / np.sqrt(2.0))
        head = np.exp(c + 0.5 * b * b) * _special().ndtr(b)
    return np.where(negative, tail, head)


_MINUS_SQRT_2 = -math.sqrt(2.0)  # -b / sqrt(2) exactly as the general branch rounds it


def _fold(ufunc: np.ufunc, args: tuple) -> Any:
    """ufunc(...ufunc(ufunc(a0, a1), a2)..., an), left to right as functools.reduce, into the first result's array:
    the same roundings in the same order, without a fresh temporary per operand."""
    out = ufunc(args[0], args[1])
    for x in args[2:]:
        if type(out) is np.ndarray and (np.ndim(x) == 0 or np.shape(x) == out.shape):
            ufunc(out, x, out=out)
        else:
            out = ufunc(out, x)
    return out


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
    "add": lambda *a: _fold(np.add, a),
    "mul": lambda *a: _fold(np.multiply, a),
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
        # the intermediates each step is the last to read (outputs are kept): dropped there, so that a long
        # program over a large array holds only its live values, not every one it has computed
        last = {j: i for i, (_, args) in enumerate(self.ops) for j in args}
        outputs = set(self.outputs)
        self._dead = [tuple(j for j in set(args) if last.get(j) == i and j not in outputs
                            and self.ops[j][0] not in ("input", "const")) if name not in ("input", "const") else ()
                      for i, (name, args) in enumerate(self.ops)]

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
        for i, ((fn, args), dead) in enumerate(zip(self._steps, self._dead)):
            if fn == "input":
                results[i] = values[args[0]]
            elif fn == "const":
                results[i] = args[0]
            else:
                results[i] = fn(*[results[j] for j in args])
                for j in dead:
                    results[j] = None
        out = [results[k] for k in self.outputs]
        if self.backend == "numpy":
            # constants (f' = 1 on a linear piece) come back as scalars: give every output the input's shape
            shape = np.shape(values[0]) if len(values) == 1 else np.broadcast_shapes(*(np.shape(v) for v in values))
            out = [v if isinstance(v, np.ndarray) and v.shape == shape else np.broadcast_to(np.asarray(v, dtype=float),
                                                                                              shape) for v in out]
            # one pass per output: the sum of finite values is finite unless it overflows, and then the exact
            # check below finds every value finite and changes nothing
            if self._source is not None and not all(math.isfinite(np.sum(v)) for v in out):
                finite = [np.isfinite(v) for v in out]
                if not all(f.all() for f in finite):
                    out = self._rescue(values, shape, out, finite)
        return out

    # -- values with rounding-error bounds ---------------------------------------------------------------------
    def _bound_plan(self, scalar: bool) -> _BoundPlan:
        name = "_scalar_plan" if scalar else "_array_plan"
        plan = self.__dict__.get(name)
        if plan is None:
            if self.backend != "numpy":
                raise ValueError("error bounds are for numpy programs")
            plan = _BoundPlan(self, scalar)
            setattr(self, name, plan)
        return plan

    def bounded(self, *values: Any, rescue: bool = True) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(values, error bounds): per output, its value at arrays of inputs and a bound on its rounding error.

        The bound is a running (forward) error bound, first order in each operation's rounding and times 1.25
        for what first order leaves out (see the comment above :class:`_BoundPlan`); the inputs are exact.
        Where the double evaluation is not finite, an expression-built program re-evaluates in interval
        arithmetic (:meth:`__call__`) unless ``rescue`` is false: a value pinned there is within an ulp (bound
        2 eps |value|).  Elsewhere a non-finite value or a nan bound comes with an infinite bound: it claims
        nothing.
        """
        plan = self._bound_plan(False)
        shape = np.shape(values[0]) if len(values) == 1 else np.broadcast_shapes(*(np.shape(v) for v in values))
        size = math.prod(shape)
        length = max(512, min(BOUND_CHUNK, 1 << (BOUND_WORKING_SET // max(len(plan.steps), 1)).bit_length() - 1))
        with np.errstate(all="ignore"):
            if size <= length:
                out, bounds = self._bounded(plan, values, shape)
            else:
                flat = [np.broadcast_to(np.asarray(v, dtype=float), shape).ravel() for v in values]
                out = [np.empty(size) for _ in plan.outputs]
                bounds = [np.empty(size) for _ in plan.outputs]
                for start in range(0, size, length):
                    part = slice(start, start + length)
                    chunk = [v[part] for v in flat]
                    values_part, bounds_part = self._bounded(plan, chunk, chunk[0].shape)
                    for k in range(len(out)):
                        out[k][part], bounds[k][part] = values_part[k], bounds_part[k]
                out = [x.reshape(shape) for x in out]
                bounds = [x.reshape(shape) for x in bounds]
            if all(math.isfinite(x.sum()) for x in out):  # one pass, no temporary: the usual case
                finite = [True] * len(out)
            else:
                finite = [np.isfinite(x) for x in out]
            if not all(np.all(f) for f in finite):
                rescued = self._rescue(values, shape, out, finite) if self._source is not None and rescue else out
                for k, f in enumerate(finite):
                    if not f.all():
                        pinned = np.isfinite(rescued[k]) & ~f
                        bounds[k] = np.where(pinned, 2 * _EPS * np.abs(rescued[k]) + _TINY,
                                             np.where(f, bounds[k], np.inf))
                out = list(rescued)
            for k, bound in enumerate(bounds):
                if not math.isfinite(bound.sum()) and np.isnan(bound).any():  # an inf times 0: it claims nothing
                    bounds[k] = np.where(np.isnan(bound), np.inf, bound)
        return out, bounds

    @staticmethod
    def _bounded(plan: _BoundPlan, values: Sequence[Any], shape: tuple) -> tuple[list, list]:
        v, e = _run(plan, values)
        out, bounds = [], []
        for i, floor in zip(plan.outputs, plan.floors):
            value = v[i]
            bound = _absolute(value, *e[i])
            bound = _SAFETY * bound + floor if bound is not _ZERO else floor
            if not (isinstance(value, np.ndarray) and value.shape == shape):  # a constant, or a scalar q
                value = np.full(shape, value, dtype=float)
            elif any(value is x for x in values):  # the input itself: the caller's array is not ours to return
                value = value.copy()
            if not (isinstance(bound, np.ndarray) and bound.shape == shape):
                bound = np.full(shape, bound, dtype=float)
            out.append(value)
            bounds.append(bound)
        return out, bounds

    def bounded_scalar(self, *values: float) -> tuple[list[float], list[float]] | None:
        """:meth:`bounded` at one point of Python floats, in the ``math`` module: a few microseconds.

        None where that does not give a finite value and bound (an overflow, a domain error): ask :meth:`bounded`.
        """
        plan = self.__dict__.get("_scalar_plan") or self._bound_plan(True)
        try:
            v, e = _run_scalar(plan, values)
        except (ArithmeticError, ValueError, TypeError):
            return None
        out = [v[i] for i in plan.outputs]
        bounds = [_SAFETY * e[i] + floor for i, floor in zip(plan.outputs, plan.floors)]
        if not math.isfinite(sum(out) + sum(bounds)):  # (or an overflow of the sum: the array path decides)
            return None
        return out, bounds

    @classmethod
    def fuse(cls, programs: Sequence[Program]) -> Program:
        """One numpy program computing the outputs of all ``programs`` (same inputs), each shared node once."""
        ops: list[Op] = []
        outputs: list[int] = []
        index: dict[tuple, int] = {}
        for program in programs:
            if program.backend != "numpy":
                raise ValueError("only numpy programs are fused")
            renumber: list[int] = []
            for name, args in program.ops:
                if name == "const":
                    key: tuple = (name, type(args[0]).__name__, repr(args[0]))
                elif name == "input":
                    key = (name, args)
                else:
                    args = tuple(renumber[j] for j in args)
                    key = (name, args)
                if key not in index:
                    index[key] = len(ops)
                    ops.append((name, args))
                renumber.append(index[key])
            outputs.extend(renumber[k] for k in program.outputs)
        fused = cls.__new__(cls)
        fused.backend, fused.dps, fused._enclosures = "numpy", 15, {}
        fused._n_inputs = max(p._n_inputs for p in programs)
        sources = [p._source for p in programs]
        if all(s is not None for s in sources) and len({s[1] for s in sources}) == 1:
            fused._source = (tuple(e for s in sources for e in s[0]), sources[0][1])
        else:
            fused._source = None
        fused.ops, fused.outputs = ops, outputs
        fused._compile()
        return fused

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


# -- forward error bounds: a value of a numpy program with a bound on its rounding error ---------------------------
#
# A running error bound (Wilkinson; Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., sec. 3.3):
# each node carries a bound on |computed - exact| of its value, at the exact input, as rel |value| + abs.  An
# operation adds its own rounding (given its computed arguments) to its arguments' errors, each times the
# operation's condition, to first order:
#   * x * y, 1/x, sqrt x, x^2: relative errors add (times 1, 1, 1/2, 2), plus half an ulp (correctly rounded);
#   * x + y + ...: absolute errors add, plus half an ulp of every partial sum (numpy sums left to right);
#   * exp(u): the absolute error of u becomes a relative one (|d exp(u)| = exp(u)); log(u): the reverse;
#   * f(u) in general: |f'(u)| times the absolute error of u, plus 4 ulp of f (numpy's SIMD transcendental
#     functions are documented to 4 ulp; scipy.special and math measured <= 1.4), more where the function scales
#     its argument inside (scipy's erfc(u) computes exp(-u^2) from a rounded u^2: 4 (1 + u^2) ulp);
#   * e^{c + b^2/2} Phi(b) (ScaledPhi): the error of c, and that of b times d log/db = b + phi(b)/Phi(b), which
#     is between 0 and 1/|b| for b < 0 (Mills' ratio bounds), so erfcx's tail is well conditioned.
# The input is exact; a float constant is the expression's constant rounded once.  Errors are summed in
# absolute value, so correlated errors that cancel are counted twice: against 40-digit references the bound is
# 2-25 times the worst error at ordinary q (tests/test_closed_form_evaluation.py).  The first-order bound is
# scaled by _SAFETY for the second-order terms; below the underflow threshold a floor of one subnormal ulp an
# operation bounds what relative errors cannot.  (A signed backward pass -- d output / d node for every node
# used twice -- was tried: at most 1.1x tighter on these forms, for twice the work.)
_EPS = 2.0**-52  # machine epsilon: one ulp of a number in [1, 2)
_UNIT = 2.0**-53  # unit roundoff: the error of a correctly rounded operation, relative
_TINY = float(np.finfo(float).tiny)
_SUBNORMAL = 2.0**-1074
_LIBRARY = 4 * _EPS
_SAFETY = 1.25
_SQRT_HALF = math.sqrt(0.5)
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
_TWO_OVER_SQRT_PI = 2 / math.sqrt(math.pi)
_MILLS_ASYMPTOTE = -1e4  # below it d log ScaledPhi / db = 1/|b| (1 - 2/b^2 + ...), and b + 1/R cancels
#: Arrays are bounded in chunks of at most BOUND_CHUNK elements and at most BOUND_WORKING_SET / (number of
#: operations) -- a power of two --, each intermediate freed after its last use, so that a chunk's working set
#: stays in the L2 cache while numpy's per-call overhead is spread over many elements.  Measured (1e5 q, CPU
#: minima, bench/bench_speed.py's grid): GELU's four fused forms (55 operations) 17.8 ms with a 120,000 working
#: set, 12.3 ms at 262,144, 8.7-9.7 ms at 524,288-1,048,576; ELU's (18) 2.8 ms and 1.9-2.1 ms.  Whole 1e5-element
#: arrays are slower again (every temporary is fresh memory).
BOUND_CHUNK = 16384
BOUND_WORKING_SET = 1_048_576
_ZERO = 0.0  # "no error", recognised by identity so that exact nodes cost no array operation


def _exact_constant(value: Any) -> bool:
    """A constant that is exactly what the expression means: a small integer or dyadic (1/2, 3/4, -2)."""
    if isinstance(value, (bool, np.bool_)):
        return True
    scaled = float(value) * 256.0
    return abs(scaled) < 2.0**52 and scaled == int(scaled)


def _relative(v: Any, rel: Any, ab: Any) -> Any:
    if ab is _ZERO:
        return rel
    r = ab / np.maximum(abs(v), _TINY)  # 0 for an exact 0 (an underflow is the absolute floor's)
    return r if rel is _ZERO else rel + r


def _absolute(v: Any, rel: Any, ab: Any) -> Any:
    if rel is _ZERO:
        return ab
    r = rel * abs(v)
    return r if ab is _ZERO else r + ab


def _add(x: Any, y: Any) -> Any:
    if y is _ZERO:
        return x
    return y if x is _ZERO else x + y


def _times(weight: Any, error: Any) -> Any:
    return _ZERO if error is _ZERO else weight * error


# An error rule: rule(values, errors) -> (value, rel, abs), errors being the arguments' (rel, abs) pairs.  One set
# on numpy arrays, one on Python floats (the scalar path: math and scalar scipy.special; they raise on trouble,
# and the caller then asks the array path).
def _smooth(fn: Callable, derivative: Callable, ulps: float = _LIBRARY) -> Callable:
    """f(u): ulps of f, plus |f'(u)| times the absolute error of u."""

    def rule(a, errors):
        u = a[0]
        r = fn(u)
        eu = _absolute(u, *errors[0])
        return r, ulps, (_ZERO if eu is _ZERO else abs(derivative(u, r)) * eu)

    return rule


def _exponential(fn: Callable) -> Callable:
    def rule(a, errors):
        u = a[0]
        return fn(u), _add(_LIBRARY, _absolute(u, *errors[0])), _ZERO

    return rule


def _logarithm(fn: Callable) -> Callable:
    def rule(a, errors):
        u = a[0]
        return fn(u), _LIBRARY, _relative(u, *errors[0])

    return rule


def _power_rule(fn: Callable, exponent: float, ulps: float = _UNIT) -> Callable:
    """u^p computed to ``ulps``: relative errors times |p|."""

    def rule(a, errors):
        u = a[0]
        ru = _relative(u, *errors[0])
        return fn(u), _add(ulps, _times(abs(exponent), ru)), _ZERO

    return rule


def _same_error(fn: Callable) -> Callable:
    def rule(a, errors):
        rel, ab = errors[0]
        return fn(a[0]), rel, ab

    return rule


def _exact_step(fn: Callable) -> Callable:
    """Conditions, steps, logic: exact; a rounding that flips one is not bounded."""

    def rule(a, errors):
        return fn(*a), _ZERO, _ZERO

    return rule


def _pow(lib_power: Callable, log: Callable) -> Callable:
    def rule(a, errors):
        u, v = a
        r = u * u * u if (np.ndim(v) == 0 and v == 3) else lib_power(u, v)
        rel = _add(_LIBRARY, _times(abs(v), _relative(u, *errors[0])))
        ev = _absolute(v, *errors[1])
        if ev is not _ZERO:
            rel = rel + abs(log(abs(u))) * ev
        return r, rel, _ZERO

    return rule


def _extreme(fn: Callable, largest: Callable) -> Callable:
    """max/min: within the largest error of the arguments (exactly, not only to first order)."""

    def rule(a, errors):
        bounds = [_absolute(x, *e) for x, e in zip(a, errors)]
        nonzero = [b for b in bounds if b is not _ZERO]
        return fn(*a), _ZERO, (functools.reduce(largest, nonzero) if nonzero else _ZERO)

    return rule


def _branches(select: Callable, largest: Callable) -> Callable:
    """Piecewise: within the largest error of the branches' values (a rounding that flips a condition is not
    bounded)."""

    def rule(a, errors):
        bounds = [_absolute(a[k], *errors[k]) for k in range(1, len(a), 2)]
        nonzero = [b for b in bounds if b is not _ZERO]
        return select(*a), _ZERO, (functools.reduce(largest, nonzero) if nonzero else _ZERO)

    return rule


def _a_erfc(a, errors):
    u = a[0]
    r = _special().erfc(u)
    eu = _absolute(u, *errors[0])
    ab = _ZERO if eu is _ZERO else _TWO_OVER_SQRT_PI * np.exp(-np.square(u)) * eu
    return r, _LIBRARY * (1 + np.square(np.maximum(u, 0.0))), ab  # exp(-u^2) of a rounded u^2 inside


def _a_phi(a, errors):
    u = a[0]
    r = _special().ndtr(u)
    eu = _absolute(u, *errors[0])
    ab = _ZERO if eu is _ZERO else _INV_SQRT_2PI * np.exp(-0.5 * np.square(u)) * eu
    return r, _LIBRARY * (1 + 0.5 * np.square(np.minimum(u, 0.0))), ab  # erfc(-u / sqrt 2) inside


def _a_scaled_phi(a, errors):
    """e^{c + b^2/2} Phi(b), each branch only where it is needed (see _scaled_phi)."""
    c, b = a
    b = np.asarray(b, dtype=float)
    tail = b < 0
    if tail.all():
        value, slope, rel = _a_scaled_phi_tail(c, b)
    elif not tail.any():
        value, slope, rel = _a_scaled_phi_head(c, b)
    else:
        shape = np.broadcast_shapes(np.shape(c), b.shape)
        cc, bb, tail = np.broadcast_to(c, shape), np.broadcast_to(b, shape), np.broadcast_to(tail, shape)
        value, slope, rel = np.empty(shape), np.empty(shape), np.empty(shape)
        for where, branch in ((tail, _a_scaled_phi_tail), (~tail, _a_scaled_phi_head)):
            value[where], slope[where], rel[where] = branch(cc[where], bb[where])
    ec, eb = _absolute(c, *errors[0]), _absolute(b, *errors[1])
    return value, _add(_add(rel, ec), _times(slope, eb)), _ZERO


def _a_scaled_phi_tail(c, b):
    # b < 0: e^c erfcx(-b/sqrt 2)/2, and phi(b)/Phi(b) = sqrt(2/pi)/erfcx(-b/sqrt 2)
    scaled = _special().erfcx(-b * _SQRT_HALF)
    value = (0.5 * np.exp(c)) * scaled
    if b.size and b.min() < _MILLS_ASYMPTOTE:
        slope = np.where(b < _MILLS_ASYMPTOTE, -1 / b, b + _SQRT_2_OVER_PI / scaled)
    else:
        slope = b + _SQRT_2_OVER_PI / scaled
    return value, slope, 16 * _EPS  # exp and erfcx (4 ulp each), four roundings


def _a_scaled_phi_head(c, b):
    # b >= 0: e^{c + b^2/2} Phi(b), whose exponent is rounded: (|c| + b^2) / 2 ulp more
    cdf = _special().ndtr(b)
    value = np.exp(c + 0.5 * b * b) * cdf
    slope = b + _INV_SQRT_2PI * np.exp(-0.5 * b * b) / cdf
    return value, slope, (16 + 0.5 * (np.abs(c) + b * b)) * _EPS


_ARRAY_RULES: dict[str, Callable] = {
    "exp": _exponential(np.exp),
    "expm1": _smooth(np.expm1, lambda u, r: r + 1),
    "log": _logarithm(np.log),
    "log1p": _smooth(np.log1p, lambda u, r: 1 / (1 + u)),
    "sin": _smooth(np.sin, lambda u, r: np.cos(u)),
    "cos": _smooth(np.cos, lambda u, r: np.sin(u)),
    "tanh": _smooth(np.tanh, lambda u, r: 1 - r * r),
    "sinh": _smooth(np.sinh, lambda u, r: np.cosh(u)),
    "cosh": _smooth(np.cosh, lambda u, r: np.sinh(u)),
    "atan": _smooth(np.arctan, lambda u, r: 1 / (1 + u * u)),
    "asinh": _smooth(np.arcsinh, lambda u, r: 1 / np.sqrt(1 + u * u)),
    "asin": _smooth(np.arcsin, lambda u, r: 1 / np.sqrt((1 - u) * (1 + u))),
    "erf": _smooth(lambda u: _special().erf(u), lambda u, r: _TWO_OVER_SQRT_PI * np.exp(-u * u)),
    "erfc": _a_erfc,
    "Phi": _a_phi,
    "ScaledPhi": _a_scaled_phi,
    "sigmoid": _smooth(lambda u: _special().expit(u), lambda u, r: r * (1 - r)),
    "softplus": _smooth(_NUMPY["softplus"], lambda u, r: _special().expit(u), 9 * _EPS),
    "sqrt": _power_rule(np.sqrt, 0.5),
    "square": _power_rule(np.square, 2.0),
    "reciprocal": _power_rule(lambda u: 1.0 / u, 1.0),
    "pow": _pow(np.power, np.log),
    "neg": _same_error(np.negative),
    "Abs": _same_error(np.abs),
    "Max": _extreme(_NUMPY["Max"], np.maximum),
    "Min": _extreme(_NUMPY["Min"], np.maximum),
    "Piecewise": _branches(_np_select, np.maximum),
    **{name: _exact_step(_NUMPY[name]) for name in ("sign", "Heaviside", "StrictGreaterThan", "StrictLessThan",
                                                    "GreaterThan", "LessThan", "Equality", "Unequality", "And",
                                                    "Or", "Not")},
}


# The scalar path: one absolute error bound per node, in Python floats; the same bounds as the array rules.
# A unary rule is rule(u, error of u) -> (value, error); others rule(values, errors).  math raises on a domain
# error or an overflow (and 1/0 raises ZeroDivisionError): the caller then asks the array path.
def _s_smooth(fn: Callable, derivative: Callable, ulps: float = _LIBRARY) -> Callable:
    def rule(u, eu):
        r = fn(u)
        return r, ulps * abs(r) + (abs(derivative(u, r)) * eu if eu else 0.0)

    return rule


def _s_exp(fn: Callable) -> Callable:
    def rule(u, eu):
        r = fn(u)
        return r, abs(r) * (_LIBRARY + eu)

    return rule


def _s_log(u, eu):
    r = math.log(u)
    return r, _LIBRARY * abs(r) + eu / abs(u)


def _s_power(fn: Callable, exponent: float, ulps: float = _UNIT) -> Callable:
    def rule(u, eu):
        r = fn(u)
        return r, abs(r) * (ulps + (exponent * eu / abs(u) if eu else 0.0))

    return rule


def _s_same(fn: Callable) -> Callable:
    def rule(u, eu):
        return fn(u), eu

    return rule


def _s_exact_step(fn: Callable) -> Callable:
    def rule(a, errors):
        return fn(*a), 0.0

    return rule


def _s_erfc(u, eu):
    r = math.erfc(u)
    return r, _LIBRARY * r * (1 + u * u if u > 0 else 1.0) + (
        _TWO_OVER_SQRT_PI * math.exp(-u * u) * eu if eu else 0.0)


def _s_phi(u, eu):
    r = 0.5 * math.erfc(-u * _SQRT_HALF)
    return r, _LIBRARY * r * (1 + 0.5 * u * u if u < 0 else 1.0) + (
        _INV_SQRT_2PI * math.exp(-0.5 * u * u) * eu if eu else 0.0)


def _s_pow(a, errors):
    u, v = a
    eu, ev = errors
    r = u * u * u if v == 3 else math.pow(u, v)
    rel = _LIBRARY + (abs(v) * eu / abs(u) if eu else 0.0) + (abs(math.log(abs(u))) * ev if ev else 0.0)
    return r, abs(r) * rel


def _s_scaled_phi(a, errors):
    c, b = a
    ec, eb = errors
    if b < 0:
        scaled = float(_erfcx(-b * _SQRT_HALF))
        value = 0.5 * math.exp(c) * scaled
        slope = -1 / b if b < _MILLS_ASYMPTOTE else b + _SQRT_2_OVER_PI / scaled
        rel = 16 * _EPS
    else:
        cdf = 0.5 * math.erfc(-b * _SQRT_HALF)
        value = math.exp(c + 0.5 * b * b) * cdf
        slope = b + _INV_SQRT_2PI * math.exp(-0.5 * b * b) / cdf
        rel = (16 + 0.5 * (abs(c) + b * b)) * _EPS
    return value, value * (rel + ec + slope * eb)


def _erfcx(x):
    global _erfcx
    _erfcx = _special().erfcx  # on first use: scipy.special costs ~0.2 s to import
    return _erfcx(x)


def _s_extreme(fn: Callable) -> Callable:
    def rule(a, errors):
        return fn(a), max(errors)

    return rule


def _s_piecewise(a, errors):
    return _s_select(*a), max(errors[1::2], default=0.0)


def _s_sigmoid(u):
    if u >= 0:
        return 1 / (1 + math.exp(-u))
    t = math.exp(u)
    return t / (1 + t)


def _s_sign(u):
    return float((u > 0) - (u < 0))


def _s_select(*args):
    for cond, value in zip(args[0::2], args[1::2]):
        if cond:
            return value
    return math.nan


_SCALAR_UNARY: dict[str, Callable] = {
    "exp": _s_exp(math.exp),
    "expm1": _s_smooth(math.expm1, lambda u, r: r + 1),
    "log": _s_log,
    "log1p": _s_smooth(math.log1p, lambda u, r: 1 / (1 + u)),
    "sin": _s_smooth(math.sin, lambda u, r: math.cos(u)),
    "cos": _s_smooth(math.cos, lambda u, r: math.sin(u)),
    "tanh": _s_smooth(math.tanh, lambda u, r: 1 - r * r),
    "sinh": _s_smooth(math.sinh, lambda u, r: math.cosh(u)),
    "cosh": _s_smooth(math.cosh, lambda u, r: math.sinh(u)),
    "atan": _s_smooth(math.atan, lambda u, r: 1 / (1 + u * u)),
    "asinh": _s_smooth(math.asinh, lambda u, r: 1 / math.sqrt(1 + u * u)),
    "asin": _s_smooth(math.asin, lambda u, r: 1 / math.sqrt((1 - u) * (1 + u))),
    "erf": _s_smooth(math.erf, lambda u, r: _TWO_OVER_SQRT_PI * math.exp(-u * u)),
    "erfc": _s_erfc,
    "Phi": _s_phi,
    "sigmoid": _s_smooth(_s_sigmoid, lambda u, r: r * (1 - r)),
    "softplus": _s_smooth(lambda u: max(u, 0.0) + math.log1p(math.exp(-abs(u))), lambda u, r: _s_sigmoid(u),
                          9 * _EPS),
    "sqrt": _s_power(math.sqrt, 0.5),
    "square": _s_power(lambda u: u * u, 2.0),
    "reciprocal": _s_power(lambda u: 1.0 / u, 1.0),
    "neg": _s_same(operator.neg),
    "Abs": _s_same(abs),
}
_SCALAR_RULES: dict[str, Callable] = {
    "ScaledPhi": _s_scaled_phi,
    "pow": _s_pow,
    "Max": _s_extreme(max),
    "Min": _s_extreme(min),
    "Piecewise": _s_piecewise,
    "sign": _s_exact_step(_s_sign),
    "Heaviside": _s_exact_step(lambda u: 1.0 if u > 0 else (0.0 if u < 0 else 0.5)),
    "StrictGreaterThan": _s_exact_step(operator.gt),
    "StrictLessThan": _s_exact_step(operator.lt),
    "GreaterThan": _s_exact_step(operator.ge),
    "LessThan": _s_exact_step(operator.le),
    "Equality": _s_exact_step(operator.eq),
    "Unequality": _s_exact_step(operator.ne),
    "And": _s_exact_step(lambda *a: all(a)),
    "Or": _s_exact_step(lambda *a: any(a)),
    "Not": _s_exact_step(operator.not_),
}


def _s_step(i: int, rule: Callable, args: tuple[int, ...], unary: bool) -> Callable:
    """A closure computing node i from the value and error lists (the scalar path's inner loop)."""
    if rule is _s_scaled_phi:
        j, k = args

        def step(v, e):
            c, b = v[j], v[k]
            if b < 0:
                scaled = float(_erfcx(-b * _SQRT_HALF))
                r = v[i] = 0.5 * math.exp(c) * scaled
                slope = -1 / b if b < _MILLS_ASYMPTOTE else b + _SQRT_2_OVER_PI / scaled
                e[i] = r * (16 * _EPS + e[j] + slope * e[k])
            else:
                v[i], e[i] = rule((c, b), (e[j], e[k]))
    elif unary:
        (j,) = args

        def step(v, e):
            v[i], e[i] = rule(v[j], e[j])
    elif len(args) == 2:
        j, k = args

        def step(v, e):
            v[i], e[i] = rule((v[j], v[k]), (e[j], e[k]))
    else:
        def step(v, e):
            v[i], e[i] = rule([v[j] for j in args], [e[j] for j in args])
    return step


def _s_sum_step(constant: float, constant_error: float) -> Callable:
    def make(i: int, args: tuple[int, ...]) -> Callable:
        if len(args) == 1 and constant != 0.0:
            (j,) = args

            def step(v, e):
                r = v[i] = v[j] + constant
                e[i] = e[j] + _UNIT * abs(r) + constant_error
        elif len(args) == 2 and constant == 0.0:
            j, k = args

            def step(v, e):
                r = v[i] = v[j] + v[k]
                e[i] = e[j] + e[k] + _UNIT * abs(r) + constant_error
        elif len(args) == 2:
            j, k = args

            def step(v, e):
                partial = v[j] + v[k]
                r = v[i] = partial + constant
                e[i] = e[j] + e[k] + _UNIT * (abs(partial) + abs(r)) + constant_error
        else:
            def step(v, e):
                total = v[args[0]]
                error = e[args[0]] + constant_error
                partial = 0.0
                for j in args[1:]:
                    total += v[j]
                    partial += abs(total)
                    error += e[j]
                if constant != 0.0:
                    total += constant
                    partial += abs(total)
                v[i] = total
                e[i] = error + _UNIT * partial
        return step

    return make


def _s_product_step(constant: float, relative: float) -> Callable:
    def make(i: int, args: tuple[int, ...]) -> Callable:
        if len(args) == 1:
            (j,) = args

            def step(v, e):
                x = v[j]
                r = v[i] = constant * x
                ex = e[j]
                e[i] = abs(r) * (relative + ex / abs(x)) if ex else abs(r) * relative
        else:
            def step(v, e):
                r = constant
                rel = relative
                for j in args:
                    x = v[j]
                    r *= x
                    ex = e[j]
                    if ex:
                        rel += ex / abs(x)
                v[i] = r
                e[i] = abs(r) * rel
        return step

    return make


def _sum_rule(constant: float, constant_error: float, arrays: bool) -> Callable:
    """u_1 + ... + u_n (+ the constant terms, summed once when the plan was made) left to right, as numpy's
    reduce does: the arguments' absolute errors plus half an ulp of every partial sum."""

    def rule(a, errors):
        if arrays and len(a) > 1 and all(type(x) is np.ndarray and x.shape == a[0].shape for x in a):
            return _array_sum(a, errors, constant, constant_error)
        total = a[0]
        error = _add(_absolute(total, *errors[0]), constant_error or _ZERO)
        partial = _ZERO
        for x, e in zip(a[1:], errors[1:]):
            total = total + x
            partial = _add(partial, abs(total))
            error = _add(error, _absolute(x, *e))
        if constant != 0.0:
            total = total + constant
            partial = _add(partial, abs(total))
        return total, _ZERO, _add(error, _times(_UNIT, partial))

    return rule


def _array_sum(a, errors, constant, constant_error):
    """The same on arrays of one shape, in place: no temporary beyond two buffers (a 1e5-element temporary is
    fresh memory, and costs more than the arithmetic)."""
    total = np.add(a[0], a[1])
    partial = np.abs(total)
    scratch = np.empty_like(total)
    for x in a[2:]:
        np.add(total, x, out=total)
        np.abs(total, out=scratch)
        partial += scratch
    if constant != 0.0:
        total += constant
        np.abs(total, out=scratch)
        partial += scratch
    error = partial
    error *= _UNIT
    for x, (rel, ab) in zip(a, errors):
        if rel is not _ZERO:
            np.abs(x, out=scratch)
            scratch *= rel
            error += scratch
        if ab is not _ZERO:
            error += ab
    if constant_error:
        error += constant_error
    return total, _ZERO, error


def _product_rule(constant: float, relative: float) -> Callable:
    """constant * u_1 * ... * u_n: the arguments' relative errors, plus the roundings of the products and the
    constants' own (``relative``, fixed when the plan was made)."""

    def rule(a, errors):
        r = _accumulate(a if constant == 1.0 else (constant, *a), operator.mul, operator.imul)
        arrays, scalar = [], relative
        for x, (rel, ab) in zip(a, errors):
            for part in (rel, ab):
                if part is _ZERO:
                    continue
                if part is ab:
                    part = ab / np.maximum(np.abs(x), _TINY)
                if type(part) is np.ndarray:
                    arrays.append(part)
                else:
                    scalar += part
        if arrays:
            total = _accumulate(arrays, operator.add, operator.iadd)
            return r, (total + scalar if scalar else total), _ZERO
        return r, (scalar or _ZERO), _ZERO

    return rule


def _accumulate(items: Sequence[Any], combine: Callable, in_place: Callable) -> Any:
    """items[0] op items[1] op ..., left to right, into the first fresh array (not into any argument)."""
    r = items[0]
    fresh = False
    for x in items[1:]:
        if fresh and (type(x) is not np.ndarray or x.shape == r.shape):
            r = in_place(r, x)
        else:
            r = combine(r, x)
            fresh = type(r) is np.ndarray
    return r


_RELATIVE_USERS = {"mul", "sqrt", "square", "reciprocal", "pow", "log"}


class _BoundPlan:
    """A program's operations with their error rules, constants folded into sums and products."""

    def __init__(self, program: Program, scalar: bool):
        ops, outputs = program.ops, program.outputs
        reachable: set[int] = set()
        stack = list(outputs)
        while stack:
            i = stack.pop()
            if i not in reachable:
                reachable.add(i)
                if ops[i][0] not in ("input", "const"):
                    stack.extend(ops[i][1])
        self.n = len(ops)
        self.outputs = list(outputs)
        self.inputs = [(i, args[0]) for i, (name, args) in enumerate(ops) if name == "input"]
        value: list[Any] = [None] * self.n  # the constants, copied into every run
        error: list[Any] = [(_ZERO, _ZERO)] * self.n
        constant = [False] * self.n
        self.steps: list[tuple] = []
        for i in sorted(reachable):
            name, args = ops[i]
            if name == "const":
                c = args[0]
                value[i], constant[i] = c, True
                if not _exact_constant(c):  # the expression's constant rounded once: half an ulp
                    error[i] = (_UNIT, _ZERO)
                continue
            if name == "input":
                continue
            if name in ("add", "mul"):
                folded = [j for j in args if constant[j]]
                args = tuple(j for j in args if not constant[j])
                numbers = [float(value[j]) for j in folded]
                if name == "add":
                    total = math.fsum(numbers)  # exactly, then rounded once
                    bound = sum(abs(c) * error[j][0] for j, c in zip(folded, numbers)) + (
                        _UNIT * abs(total) if len(folded) > 1 else 0.0)
                    rule = _s_sum_step(total, bound) if scalar else _sum_rule(total, bound, True)
                    folded_value, folded_error = total, ((bound / abs(total) if total else 0.0) or _ZERO, _ZERO)
                else:
                    product = functools.reduce(operator.mul, numbers, 1.0)
                    roundings = max(len(args) - 1, 0) + max(len(folded) - 1, 0) + (1 if folded and args else 0)
                    relative = _UNIT * roundings + sum(error[j][0] for j in folded)
                    rule = _s_product_step(product, relative) if scalar else _product_rule(product, relative)
                    folded_value, folded_error = product, (relative or _ZERO, _ZERO)
                if not args:  # constants alone: a constant
                    value[i], error[i], constant[i] = folded_value, folded_error, True
                    continue
            elif scalar:
                rule = _SCALAR_UNARY.get(name) or _SCALAR_RULES[name]
            else:
                rule = _ARRAY_RULES[name]
            self.steps.append((i, rule, args, name))
        # a node whose every user wants its relative error (products, powers) is converted once, after it is
        # computed, rather than by each user
        wants: dict[int, set[bool]] = {}
        for _, _, args, name in self.steps:
            for position, j in enumerate(args):
                wants.setdefault(j, set()).add(name in _RELATIVE_USERS and (name != "pow" or position == 0))
        for i in outputs:
            wants.setdefault(i, set()).add(False)
        computed = {i for i, *_ in self.steps}
        if scalar:  # one absolute bound per node; each step a closure reading its arguments from the lists
            self.steps = [rule(i, args) if name in ("add", "mul") else _s_step(i, rule, args, name in _SCALAR_UNARY)
                          for i, rule, args, name in self.steps]
            error = [rel * abs(float(value[i])) if rel is not _ZERO else 0.0 for i, (rel, _) in enumerate(error)]
        else:
            # each step also names the arrays no later step reads, so that they are freed at once: the working
            # set of a chunk then stays in cache (a fused program holds dozens of nodes)
            last_use: dict[int, int] = {}
            for position, (_, _, args, _) in enumerate(self.steps):
                for j in args:
                    last_use[j] = position
            kept = set(outputs)
            release: list[list[int]] = [[] for _ in self.steps]
            for j, position in last_use.items():
                if j not in kept and j in computed:
                    release[position].append(j)
            self.steps = [(i, rule, args, wants.get(i) == {True}, tuple(release[position]))
                          for position, (i, rule, args, _) in enumerate(self.steps)]
        self.value, self.error = value, error
        # below the underflow threshold errors are absolute: at most one subnormal ulp (2^-1074) an operation
        self.floors = [len(self.steps) * _SUBNORMAL if i in computed else 0.0 for i in outputs]


def _run_scalar(plan: _BoundPlan, values: Sequence[float]) -> tuple[list, list]:
    """Every node's value and absolute error bound, in Python floats."""
    v = plan.value.copy()
    e = plan.error.copy()
    for i, k in plan.inputs:
        v[i] = values[k]
    for step in plan.steps:
        step(v, e)
    return v, e


def _run(plan: _BoundPlan, values: Sequence[Any]) -> tuple[list, list]:
    """Every node's value and (rel, abs) error bound."""
    v = plan.value.copy()
    e = plan.error.copy()
    for i, k in plan.inputs:
        v[i] = values[k]
    for i, rule, args, relative, release in plan.steps:
        r, rel, ab = rule([v[j] for j in args], [e[j] for j in args])
        if relative and ab is not _ZERO:
            rel, ab = _relative(r, rel, ab), _ZERO
        v[i], e[i] = r, (rel, ab)
        for j in release:
            v[j] = e[j] = None
    return v, e
