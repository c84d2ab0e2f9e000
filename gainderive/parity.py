r"""Parity in z of a program's values, and h(z), h(-z) from one evaluation: shared by the sampling and quadrature
backends.

For z ~ N(0, q) and a rule or sampler symmetric about 0, E[h(z)] needs h only through h(z) + h(-z).  An abstract
interpretation of the program's straight-line operations (:func:`node_parities`) proves some values even or odd
in z: an odd output's expectation is 0 exactly (h(z) + h(-z) = 0 for every z), an even one's is twice the
half-line integral.  :class:`Compiled` evaluates a program at z and -z together, each node of known parity
once and, for Phi, sigmoid, erfc and softplus of an odd argument, both signs from one special-function call.
(Moved out of the Monte Carlo backend so that the quadrature backend uses it without importing a sibling.)
"""

from __future__ import annotations

import functools
import threading
import weakref

import numpy as np

__all__ = ["EVEN", "ODD", "Compiled", "compiled", "node_parities", "output_parities"]

EVEN, ODD = "even", "odd"  # a node's parity in z; None: neither (or not proven)

# v(-u) = -v(u) for every real u (and in IEEE arithmetic up to the function's own rounding)
_ODD_FUNCTIONS = frozenset({"neg", "reciprocal", "sin", "tanh", "sinh", "atan", "asinh", "asin", "erf", "sign"})
# v(-u) = v(u)
_EVEN_FUNCTIONS = frozenset({"square", "cos", "cosh", "Abs"})


def node_parities(ops) -> list[str | None]:
    r"""The parity in z of every node of a one-input program (:meth:`gainderive.evaluate.Program.to_ops` format).

    An abstract interpretation over the straight-line program, sound by construction: the input z is odd and a
    constant even; any operation whose arguments are all even is even (it sees the same values at z and -z);
    odd functions (sin, tanh, erf, atan, asinh, asin, sinh, sign, 1/u, -u) keep an odd argument odd and even
    ones (cos, cosh, |u|, u^2) make it even; a sum is odd when every term is odd; a product of odd and even
    factors has the parity of the number of odd ones; u^k for an integer constant k is even or odd with k.
    Everything else -- exp, log, sqrt, Phi of an odd argument, a sum of odd and even terms, a comparison --
    is ``None``: no parity claimed.  Only the program's own formula is analysed, so a piecewise function
    (whose pieces are separate programs) never inherits a parity from one of its pieces: the backend pairs
    z with -z inside one program only when both lie in the piece that program describes.
    """
    parity: list[str | None] = []
    for name, args in ops:
        if name == "input":
            if tuple(args) != (0,):
                raise ValueError("parity is defined for programs of one input")
            parity.append(ODD)
            continue
        if name == "const":
            parity.append(EVEN)
            continue
        kinds = [parity[j] for j in args]
        if all(k == EVEN for k in kinds):
            p = EVEN
        elif None in kinds:
            p = None
        elif name in _ODD_FUNCTIONS and len(args) == 1:
            p = ODD
        elif name in _EVEN_FUNCTIONS and len(args) == 1:
            p = EVEN
        elif name == "add":
            p = ODD if all(k == ODD for k in kinds) else None
        elif name == "mul":
            p = ODD if sum(k == ODD for k in kinds) % 2 else EVEN
        elif name == "pow" and kinds[1] == EVEN and ops[args[1]][0] == "const":
            exponent = ops[args[1]][1][0]
            integer = isinstance(exponent, (int, float)) and not isinstance(exponent, bool) \
                and np.isfinite(exponent) and float(exponent).is_integer()
            p = (ODD if int(exponent) % 2 else EVEN) if integer else None
        else:
            p = None
        parity.append(p)
    return parity


def output_parities(program) -> tuple[str | None, ...]:
    """The parity of each output of ``program`` (a :class:`gainderive.evaluate.Program`): "even", "odd" or None."""
    parity = node_parities(program.ops)
    return tuple(parity[k] for k in program.outputs)


# Operations written straight into a preallocated buffer (the numpy functions of gainderive.evaluate's table,
# called with out=): a chunk then allocates nothing, where fresh 128 KiB temporaries per operation cost page
# faults (glibc hands such blocks back to the system) -- up to 4x the arithmetic itself, measured.
_UFUNCS = {"exp": np.exp, "log": np.log, "sin": np.sin, "cos": np.cos, "tanh": np.tanh, "sinh": np.sinh,
           "cosh": np.cosh, "atan": np.arctan, "asinh": np.arcsinh, "asin": np.arcsin, "Abs": np.abs,
           "sign": np.sign, "expm1": np.expm1, "log1p": np.log1p, "sqrt": np.sqrt, "square": np.square,
           "neg": np.negative}
_SPECIAL_UFUNCS = {"erf": "erf", "erfc": "erfc", "Phi": "ndtr", "sigmoid": "expit"}  # scipy.special names


def _primitives(name: str, out: tuple, args: list) -> list[tuple] | None:
    """Operation ``name`` into the slot ``out`` as ufunc calls [(ufunc, positional slots, out last)], or None
    where only the allocating form exists.  ufuncs take ``out`` positionally: no keyword dictionary per call."""
    if name in _UFUNCS:
        return [(_UFUNCS[name], (args[0], out))]
    if name in _SPECIAL_UFUNCS:
        return [(getattr(_special(), _SPECIAL_UFUNCS[name]), (args[0], out))]
    if name in ("add", "mul"):
        ufunc = np.add if name == "add" else np.multiply
        return [(ufunc, (args[0], args[1], out))] + [(ufunc, (out, a, out)) for a in args[2:]]
    if name == "reciprocal":
        return [(np.divide, (("scalar", 1.0), args[0], out))]
    if name == "pow":
        if args[1][0] == "scalar" and np.ndim(args[1][1]) == 0 and args[1][1] == 3:
            # as gainderive.evaluate: a cube by two multiplications
            return [(np.multiply, (args[0], args[0], out)), (np.multiply, (out, args[0], out))]
        return [(np.power, (args[0], args[1], out))]
    return None


def _reflect_phi(plus, minus, scratch, u):
    """(Phi(u), Phi(-u)) from one ndtr: Phi(-|u|) itself, and 1 - it (>= 1/2, so exact to an ulp)."""
    np.abs(u, out=minus)
    np.negative(minus, out=minus)
    _special().ndtr(minus, out=minus)
    np.subtract(1.0, minus, out=plus)
    _swap_where_negative(plus, minus, scratch, u)


def _reflect_sigmoid(plus, minus, scratch, u):
    """(sigmoid(u), sigmoid(-u)) from one exp: with e = e^{-|u|}, sigmoid(|u|) = 1/(1 + e) and sigmoid(-|u|) =
    e/(1 + e), each within 2 ulps (no cancellation, no overflow); 3x faster than two calls of scipy's expit."""
    np.abs(u, out=minus)
    np.negative(minus, out=minus)
    np.exp(minus, out=minus)
    np.add(minus, 1.0, out=plus)
    np.divide(1.0, plus, out=plus)
    minus *= plus
    _swap_where_negative(plus, minus, scratch, u)


def _reflect_erfc(plus, minus, scratch, u):
    """(erfc(u), erfc(-u)) from one erfc: erfc(|u|) <= 1 itself, erfc(-|u|) = 2 - erfc(|u|) in [1, 2]."""
    np.abs(u, out=plus)
    _special().erfc(plus, out=plus)
    np.subtract(2.0, plus, out=minus)
    _swap_where_negative(plus, minus, scratch, u)


def _reflect_softplus(plus, minus, scratch, u):
    """(softplus(u), softplus(-u)) = max(+-u, 0) + log1p(e^{-|u|}), evaluate's stable form, the log1p shared."""
    np.abs(u, out=scratch)
    np.negative(scratch, out=scratch)
    np.exp(scratch, out=scratch)
    np.log1p(scratch, out=scratch)
    np.maximum(u, 0.0, out=plus)
    plus += scratch
    np.negative(u, out=minus)
    np.maximum(minus, 0.0, out=minus)
    minus += scratch


def _swap_where_negative(plus, minus, scratch, u):
    """The reflection kernels fill plus with the value at |u| and minus with the value at -|u|: swap where u < 0."""
    negative = np.less(u, 0.0)
    if negative.any():
        np.copyto(scratch, plus)
        np.copyto(plus, minus, where=negative)
        np.copyto(minus, scratch, where=negative)


# functions of an odd argument whose values at u and -u come from one evaluation, each to its own precision
_REFLECT = {"Phi": _reflect_phi, "sigmoid": _reflect_sigmoid, "erfc": _reflect_erfc, "softplus": _reflect_softplus}


@functools.cache
def _special():
    import scipy.special

    return scipy.special


class Compiled:
    r"""A numpy program run on chunks into preallocated buffers; ``paired``: at z and -z together.

    Paired, each node of known parity (:func:`node_parities`) is computed once, at z: for an even node
    v(-z) = v(z) and for an odd one v(-z) = -v(z) (its negation formed once, when a node without parity
    needs it).  A node without parity is computed at both z and -z, from one special-function call where
    :data:`_REFLECT` knows the reflection (Phi, sigmoid, erfc, softplus of an odd argument).  Outputs come
    back as (parity, value at z, value at -z or None); unpaired, as (None, value at z, None).  The operations
    are those of the program (:data:`gainderive.evaluate._NUMPY`; the common ones called with ``out=``), so
    values agree with calling the program to within its own rounding.  Returned arrays are buffers that the
    next call overwrites.
    """

    def __init__(self, program, paired: bool):
        from .evaluate import _NUMPY

        self.program = program
        ops = program.ops
        self.parity = node_parities(ops) if paired else [None] * len(ops)
        self.outputs = tuple(program.outputs)
        self.output_parity = tuple(self.parity[k] for k in self.outputs)
        needed = set(self.outputs)
        for i in range(len(ops) - 1, -1, -1):
            if i in needed and ops[i][0] not in ("input", "const"):
                needed.update(ops[i][1])
        # slots: ("input",), ("scalar", value) or ("buffer", k) / ("array", k) for a computed value.  A step is
        # (fn, out slots, argument slots, kind, the slots fn is called with): kind "into" writes its outs in place,
        # "call" returns the value of its one out (an "array" slot)
        self.steps: list[tuple] = []
        self._buffers = 0
        plus: dict[int, tuple] = {}
        minus: dict[int, tuple] = {}

        def new():
            self._buffers += 1
            return ("buffer", self._buffers - 1)

        def reflected(j):
            if self.parity[j] == EVEN:
                return plus[j]
            if j not in minus:  # an odd node, negated once
                if plus[j][0] == "scalar":
                    minus[j] = ("scalar", -plus[j][1])
                else:
                    minus[j] = new()
                    self.steps.append((np.negative, (minus[j],), (plus[j],), "into", (plus[j], minus[j])))
            return minus[j]

        with np.errstate(all="ignore"):
            for i, (name, args) in enumerate(ops):
                if i not in needed:
                    continue
                if name == "input":
                    plus[i] = ("input",)
                    continue
                if name == "const":
                    plus[i] = ("scalar", args[0])
                    continue
                slots = [plus[j] for j in args]
                if all(s[0] == "scalar" for s in slots):  # a constant subexpression: computed here, once
                    plus[i] = ("scalar", _NUMPY[name](*[s[1] for s in slots]))
                    continue
                if self.parity[i] is not None or not paired:
                    plus[i] = self._emit(name, slots, new)
                elif name in _REFLECT and len(args) == 1 and self.parity[args[0]] == ODD:
                    plus[i], minus[i] = new(), new()
                    outs = (plus[i], minus[i], new())
                    self.steps.append((_REFLECT[name], outs, (slots[0],), "into", (*outs, slots[0])))
                else:
                    plus[i] = self._emit(name, slots, new)
                    minus[i] = self._emit(name, [reflected(j) for j in args], new)
        self._plus = [plus[k] for k in self.outputs]
        self._minus = [None if p is not None or not paired else minus[k]
                       for k, p in zip(self.outputs, self.output_parity)]
        self._share_buffers()
        # odd outputs that an even or unpaired output takes directly through +, *, x^2, -x or |x|: a non-finite
        # value there makes that output, whose sums are checked, non-finite too (IEEE), so they need no check
        active = {k for k, p in zip(self.outputs, self.output_parity) if p != ODD}
        guards = {j for k in active if ops[k][0] in ("add", "mul", "square", "neg", "Abs") for j in ops[k][1]}
        self.unguarded_odd = [r for r, (k, p) in enumerate(zip(self.outputs, self.output_parity))
                              if p == ODD and k not in guards]
        self.static = all(kind == "into" for *_, kind, _ in self.steps)  # bindable: see input()
        self._capacity, self._storage = 0, []
        self._bound: dict[int, tuple] = {}  # n -> (steps bound to views of n points, outputs, input view)
        self._bound_size = -1
        self._steps_bound: list[tuple] = []

    def _share_buffers(self) -> None:
        """Give a buffer whose value is dead to later steps: fewer, cache-resident buffers (linear scan)."""
        last: dict[int, int] = {}
        for n, (_, _, args, _, _) in enumerate(self.steps):
            for a in args:
                if a[0] == "buffer":
                    last[a[1]] = n
        for slot in (*self._plus, *self._minus):
            if slot is not None and slot[0] == "buffer":
                last[slot[1]] = len(self.steps)  # outputs live to the end
        physical: dict[int, int] = {}
        free: list[int] = []
        count = 0

        def place(slot):
            return ("buffer", physical[slot[1]]) if slot is not None and slot[0] == "buffer" else slot

        for n, (_, outs, args, _, _) in enumerate(self.steps):
            for o in outs:
                if o[0] == "buffer" and o[1] not in physical:
                    if free:
                        physical[o[1]] = free.pop()
                    else:
                        physical[o[1]], count = count, count + 1
            for a in {a[1] for a in args if a[0] == "buffer"}:
                if last[a] == n:  # freed after the step: an output never shares a buffer with its arguments
                    free.append(physical[a])
            for o in outs:  # a scratch buffer (written, never read) is free at once
                if o[0] == "buffer" and last.get(o[1], -1) < n:
                    free.append(physical[o[1]])
        self.steps = [(fn, tuple(place(o) for o in outs), tuple(place(a) for a in args), kind,
                       tuple(place(s) for s in order)) for fn, outs, args, kind, order in self.steps]
        self._plus = [place(s) for s in self._plus]
        self._minus = [place(s) for s in self._minus]
        self._physical = count

    def _emit(self, name, slots, new):
        from .evaluate import _NUMPY

        if _primitives(name, ("buffer", -1), slots) is None:  # the allocating form, held in an "array" slot
            self._buffers += 1
            out = ("array", self._buffers - 1)
            self.steps.append((_NUMPY[name], (out,), tuple(slots), "call", tuple(slots)))
            return out
        out = new()
        for fn, order in _primitives(name, out, slots):
            args = tuple(s for s in order if s != out)
            self.steps.append((fn, (out,), args, "into", order))
        return out

    def _storage_for(self, size: int) -> list[np.ndarray]:
        """Flat buffers of at least ``size`` points, allocated once and reused (fresh arrays fault in their pages)."""
        if self._capacity < size:
            self._storage = [np.empty(size) for _ in range(self._physical + 1)]  # the last one: the input
            self._capacity = size
            self._bound.clear()
            self._bound_size = -1
        return self._storage

    def input(self, n: int) -> np.ndarray:
        """The input buffer for ``n`` points (a static program only): write z there, then :meth:`run`."""
        storage = self._storage_for(n)
        if n != self._bound_size:
            if n not in self._bound:
                values = [a[:n] for a in storage]

                def resolve(slot):
                    kind = slot[0]
                    return values[-1] if kind == "input" else (slot[1] if kind == "scalar" else values[slot[1]])

                steps = [(fn, tuple(resolve(s) for s in order)) for fn, _, _, _, order in self.steps]
                returns = [(p, resolve(a), None if b is None else resolve(b))
                           for p, a, b in zip(self.output_parity, self._plus, self._minus)]
                if len(self._bound) > 8:  # sizes seen: full chunks and the few last ones of each stratum
                    self._bound.clear()
                self._bound[n] = (steps, returns, values[-1])
            self._steps_bound, self._returns, self._input = self._bound[n]
            self._bound_size = n
        return self._input

    def run(self) -> list[tuple]:
        """Evaluate at the points written into :meth:`input`: the steps bound to their buffers, nothing looked up."""
        for fn, args in self._steps_bound:
            fn(*args)
        return self._returns

    def __call__(self, z: np.ndarray) -> list[tuple]:
        """Evaluate at z of any shape (the plain path: points x variances), looking every slot up."""
        values = [a[: z.size].reshape(z.shape) for a in self._storage_for(z.size)]
        arrays: dict[int, np.ndarray] = {}  # results of the allocating forms

        def get(slot):
            kind = slot[0]
            if kind == "input":
                return z
            if kind == "scalar":
                return slot[1]
            return values[slot[1]] if kind == "buffer" else arrays[slot[1]]

        for fn, outs, _, kind, order in self.steps:
            if kind == "into":
                fn(*[get(s) for s in order])
            else:
                arrays[outs[0][1]] = fn(*[get(s) for s in order])
        return [(p, get(a), None if b is None else get(b)) for p, a, b in zip(self.output_parity, self._plus,
                                                                           self._minus)]


_LOCAL = threading.local()  # compiled programs hold buffers: one set per thread


def compiled(program, use: str) -> Compiled:
    """``program`` compiled for chunks (:class:`Compiled`), once per program, use and thread: "paired" (at z
    and -z together), or "plus" / "minus" (one side of 0; separate buffers, so both sides' outputs stay valid)."""
    cache = getattr(_LOCAL, "compiled", None)
    if cache is None:
        cache = _LOCAL.compiled = weakref.WeakKeyDictionary()
    forms = cache.setdefault(program, {})
    if use not in forms:
        forms[use] = Compiled(program, paired=use == "paired")
    return forms[use]
