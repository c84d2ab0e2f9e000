"""Compile sympy expressions into straight-line numpy or mpmath programs.

A :class:`Program` evaluates several expressions that share subexpressions
(f, f**2 and f'**2 share f) with each distinct node computed once.  It walks
the expression tree itself instead of generating source for ``exec`` (what
``lambdify`` does), so only the operations listed here can ever run, and it
applies the rewrites double precision needs: ``exp(u) - 1`` is ``expm1(u)``,
``log(1 + u)`` is ``log1p(u)``, softplus and the sigmoid never overflow.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import mpmath as mp
import numpy as np
import sympy as sp

from .errors import FormulaError
from .functions import Phi, sigmoid, softplus

__all__ = ["Program"]


@functools.cache
def _special():
    # scipy.special costs ~0.2 s to import: only formulas that need it pay.
    import scipy.special

    return scipy.special


def _np_sigmoid(u):
    return _special().expit(u)


def _np_phi(u):
    return _special().ndtr(u)


def _np_erf(u):
    return _special().erf(u)


def _np_erfc(u):
    return _special().erfc(u)


def _np_softplus(u):
    return np.logaddexp(0.0, u)


def _np_heaviside(u):
    return np.heaviside(u, 0.5)


def _np_select(*args):
    conds, values = args[0::2], args[1::2]
    shape = np.broadcast_shapes(*(np.shape(a) for a in args))
    return np.select([np.broadcast_to(c, shape) for c in conds], [np.broadcast_to(v, shape) for v in values], np.nan)


_NUMPY: dict[Any, Callable] = {
    sp.exp: np.exp,
    sp.log: np.log,
    sp.sin: np.sin,
    sp.cos: np.cos,
    sp.tanh: np.tanh,
    sp.sinh: np.sinh,
    sp.cosh: np.cosh,
    sp.atan: np.arctan,
    sp.asinh: np.arcsinh,
    sp.erf: _np_erf,
    sp.erfc: _np_erfc,
    Phi: _np_phi,
    sigmoid: _np_sigmoid,
    softplus: _np_softplus,
    sp.Abs: np.abs,
    sp.sign: np.sign,
    sp.Heaviside: _np_heaviside,
    "expm1": np.expm1,
    "log1p": np.log1p,
    "sqrt": np.sqrt,
    "square": np.square,
    "add": lambda *a: functools.reduce(np.add, a),
    "mul": lambda *a: functools.reduce(np.multiply, a),
    "neg": np.negative,
    "reciprocal": lambda u: 1.0 / u,
    "pow": np.power,
    sp.Max: lambda *a: functools.reduce(np.maximum, a),
    sp.Min: lambda *a: functools.reduce(np.minimum, a),
    sp.Piecewise: _np_select,
    sp.StrictGreaterThan: np.greater,
    sp.StrictLessThan: np.less,
    sp.GreaterThan: np.greater_equal,
    sp.LessThan: np.less_equal,
    sp.Equality: np.equal,
    sp.Unequality: np.not_equal,
    sp.And: lambda *a: functools.reduce(np.logical_and, a),
    sp.Or: lambda *a: functools.reduce(np.logical_or, a),
    sp.Not: np.logical_not,
}


def _mp_piecewise(*args):
    for cond, value in zip(args[0::2], args[1::2]):
        if cond:
            return value
    return mp.nan


_MPMATH: dict[Any, Callable] = {
    sp.exp: mp.exp,
    sp.log: mp.log,
    sp.sin: mp.sin,
    sp.cos: mp.cos,
    sp.tanh: mp.tanh,
    sp.sinh: mp.sinh,
    sp.cosh: mp.cosh,
    sp.atan: mp.atan,
    sp.asinh: mp.asinh,
    sp.erf: mp.erf,
    sp.erfc: mp.erfc,
    Phi: mp.ncdf,
    sigmoid: lambda u: 1 / (1 + mp.exp(-u)),
    softplus: lambda u: mp.log1p(mp.exp(u)),
    sp.Abs: mp.fabs,
    sp.sign: mp.sign,
    sp.Heaviside: lambda u: mp.mpf(1) if u > 0 else (mp.mpf(0) if u < 0 else mp.mpf(0.5)),
    "expm1": mp.expm1,
    "log1p": mp.log1p,
    "sqrt": mp.sqrt,
    "square": lambda u: u * u,
    "add": lambda *a: mp.fsum(a),
    "mul": lambda *a: functools.reduce(lambda p, v: p * v, a),
    "neg": lambda u: -u,
    "reciprocal": lambda u: 1 / u,
    "pow": lambda u, v: u**v,
    sp.Max: max,
    sp.Min: min,
    sp.Piecewise: _mp_piecewise,
    sp.StrictGreaterThan: lambda a, b: a > b,
    sp.StrictLessThan: lambda a, b: a < b,
    sp.GreaterThan: lambda a, b: a >= b,
    sp.LessThan: lambda a, b: a <= b,
    sp.Equality: lambda a, b: a == b,
    sp.Unequality: lambda a, b: a != b,
    sp.And: lambda *a: all(a),
    sp.Or: lambda *a: any(a),
    sp.Not: lambda a: not a,
}


class Program:
    """Evaluate ``exprs`` at given values of ``inputs`` (symbols), numpy or mpmath.

    ``Program([f, f**2], [x])(t)`` returns ``[f(t), f(t)**2]`` computing f once.
    With ``backend="mpmath"`` constants are evaluated at ``dps`` digits and the
    program works on mpmath scalars.
    """

    def __init__(
        self,
        exprs: Sequence[sp.Expr],
        inputs: Sequence[sp.Symbol],
        *,
        backend: str = "numpy",
        dps: int = 15,
    ):
        self.backend = backend
        self.dps = dps
        self._table = _NUMPY if backend == "numpy" else _MPMATH
        self._ops: list[tuple[Any, tuple[int, ...]]] = []
        self._index: dict[sp.Basic, int] = {}
        self._inputs = tuple(inputs)
        for k, symbol in enumerate(self._inputs):
            self._index[symbol] = len(self._ops)
            self._ops.append(("input", (k,)))
        with mp.workdps(dps + 10):
            self._outputs = [self._node(sp.sympify(e) if not isinstance(e, sp.Basic) else e) for e in exprs]

    # -- building --------------------------------------------------------
    def _emit(self, key: sp.Basic | None, fn: Any, args: tuple[int, ...]) -> int:
        self._ops.append((fn, args))
        index = len(self._ops) - 1
        if key is not None:
            self._index[key] = index
        return index

    def _constant(self, e: sp.Basic) -> int:
        if e is sp.true or e is sp.false:
            return self._emit(e, "const", (bool(e),))  # type: ignore[arg-type]
        value = sp.N(e, self.dps + 10)
        if not value.is_real:
            raise FormulaError(f"constant {e} is not a real number")
        if self.backend == "numpy":
            number: Any = float(value)
        else:
            number = mp.mpf(str(value))
        return self._emit(e, "const", (number,))  # type: ignore[arg-type]

    def _call(self, key, name, *children: sp.Basic) -> int:
        return self._emit(key, self._table[name], tuple(self._node(c) for c in children))

    def _node(self, e: sp.Basic) -> int:
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
                return self._call(e, sp.exp, exp)
            return self._call(e, "pow", base, exp)
        if isinstance(e, sp.log) and isinstance(e.args[0], sp.Add) and sp.S.One in e.args[0].args:
            return self._call(e, "log1p", e.args[0] - 1)
        if isinstance(e, sp.Piecewise):
            children = [c for pair in e.args for c in (pair.cond, pair.expr)]
            return self._call(e, sp.Piecewise, *children)
        if isinstance(e, (sp.Max, sp.Min)):
            return self._call(e, type(e), *e.args)
        func = e.func
        if func in self._table:
            return self._call(e, func, *e.args)
        raise FormulaError(f"cannot evaluate {func.__name__}() numerically; it is outside the supported functions")

    def _add(self, e: sp.Add) -> int:
        terms = list(e.args)
        # k*exp(u) - k  ->  k*expm1(u): exact near u = 0, where the difference cancels.
        for term in terms:
            k, rest = term.as_coeff_Mul()
            if rest.func is sp.exp and -k in terms and k.is_number and k != 0:
                terms.remove(term)
                terms.remove(-k)
                node = self._emit(None, self._table["expm1"], (self._node(rest.args[0]),))
                if k != 1:
                    node = self._emit(None, self._table["mul"], (self._node(k), node))
                if not terms:
                    self._index[e] = node
                    return node
                return self._emit(e, self._table["add"], (node, *(self._node(t) for t in terms)))
        return self._call(e, "add", *terms)

    # -- evaluation ------------------------------------------------------
    def __call__(self, *values: Any) -> list[Any]:
        """Evaluate at the given input values; returns one result per expression."""
        results: list[Any] = [None] * len(self._ops)
        for i, (fn, args) in enumerate(self._ops):
            if fn == "input":
                results[i] = values[args[0]]
            elif fn == "const":
                results[i] = args[0]
            else:
                results[i] = fn(*[results[j] for j in args])
        out = [results[k] for k in self._outputs]
        if self.backend == "numpy":
            # constants (f' = 1 on a linear piece) come back as scalars: give every output the input's shape
            shape = np.shape(values[0]) if len(values) == 1 else np.broadcast_shapes(*(np.shape(v) for v in values))
            out = [v if isinstance(v, np.ndarray) and v.shape == shape else np.broadcast_to(np.asarray(v, dtype=float),
                                                                                              shape) for v in out]
        return out


def is_finite_number(value: Any) -> bool:
    """True for a finite real float or mpf."""
    if isinstance(value, mp.mpc):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, OverflowError):
        return False
