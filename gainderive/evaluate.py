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
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
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
    "softplus": lambda u: np.logaddexp(0.0, u),
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
    "pow": np.power,
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

# An operation: ("input", (k,)), ("const", (value,)) or (name, argument indices).
Op = tuple[str, tuple]


class Program:
    """Evaluate ``exprs`` at given values of ``inputs`` (symbols), numpy or mpmath.

    ``Program([f, f**2], [x])(t)`` returns ``[f(t), f(t)**2]`` computing f once.
    With ``backend="mpmath"`` constants are evaluated at ``dps`` digits and the
    program works on mpmath scalars.
    """

    def __init__(self, exprs: Sequence[sp.Basic], inputs: Sequence[sp.Symbol], *, backend: str = "numpy",
                 dps: int = 15):
        self.backend = backend
        self.dps = dps
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
        table = _NUMPY if self.backend == "numpy" else _MPMATH
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
        number: Any = float(value) if self.backend == "numpy" else mp.mpf(str(value))
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
        return out

