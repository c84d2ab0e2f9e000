r"""Gaussian moments of an activation: the quantities every gain is built from.

For a pre-activation z ~ N(0, q) and an activation f:

.. math::
    \text{mean} = E[f(z)], \quad
    \text{second\_moment} = E[f(z)^2], \quad
    \text{derivative\_second\_moment} = E[f'(z)^2], \quad
    \text{variance} = \operatorname{Var} f(z).

The variance is computed as E[(f - c)^2] - (E[f] - c)^2 with c = f(0), not as
E[f^2] - E[f]^2: for activations that are nearly constant over the Gaussian
(hardsigmoid, softplus or sigmoid at small q) the latter cancels to a few
digits, the former does not.
"""

from __future__ import annotations

import ast
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

import mpmath as mp
import numpy as np

from .errors import ConvergenceError, DivergenceError, FormulaError, GainDeriveError, VarianceError
from .estimate import Estimate

if TYPE_CHECKING:  # sympy and the symbolic layer load on first use; a cached registry activation needs neither
    import sympy as sp

    from .activation import Activation
    from .integrand import Integrand

__all__ = ["METHODS", "MOMENTS", "Moments", "expectation", "moments"]

#: The moment names, in the order they are reported.
MOMENTS = ("mean", "second_moment", "derivative_second_moment", "variance")
#: Backends a computation can use.  "auto" takes a verified closed form where one exists and is at least as
#: accurate as quadrature at every q, quadrature otherwise; "closed_form" is the same, named explicitly.
METHODS = ("auto", "closed_form", "quadrature", "high_precision", "monte_carlo")


@dataclass(frozen=True)
class Moments:
    """E[f], E[f^2], E[f'^2] and Var f at input variance ``q``, each an :class:`Estimate`."""

    activation: Activation
    q: Any
    mean: Estimate
    second_moment: Estimate
    derivative_second_moment: Estimate
    variance: Estimate
    digits: int | None = None  # working precision of high-precision results; None for float64
    closed_forms: Mapping[str, Any] = field(default_factory=dict)  # moment -> verified ClosedForm or None

    def __iter__(self):
        return iter((name, getattr(self, name)) for name in MOMENTS)


_SMALLEST_NORMAL = float(np.finfo(float).tiny)
_LARGEST = float(np.finfo(float).max)
_REAL_KINDS = "fiu"  # numpy dtype kinds taken as q: float, signed and unsigned integer


def check_variance(variance: Any, *, scalar: bool = False, exact: bool = False) -> Any:
    """Validate q: a real number, finite and > 0 (a number, or an array of them unless ``scalar``).

    By default q is for double precision and comes back as a float or a float64 array; a q written as a
    string, an mpmath number, a Decimal or a Fraction that under- or overflows double precision is refused
    with a message naming it, never rounded to 0 or inf.  ``exact=True`` (one q, for the high-precision
    backend) returns strings, mpmath numbers, Decimals and Fractions as an ``mp.mpf`` at the working
    precision: a decimal string stays exact there, and any q > 0 is accepted.

    Refused with a one-line :class:`VarianceError`: booleans, None, complex numbers (a q is never silently
    stripped of its imaginary part), strings that are not numbers, arrays of strings or of Python objects,
    ragged sequences, empty arrays, q <= 0, nan, inf and (in double precision) subnormal q.
    """
    if isinstance(variance, (bool, np.bool_)) or variance is None:
        raise VarianceError(f"variance q must be a finite number > 0, got {variance!r}")
    if isinstance(variance, (complex, np.complexfloating, mp.mpc)):
        raise VarianceError(f"variance q must be a real number > 0, got the complex number {variance!r}")
    if isinstance(variance, (str, mp.mpf, Decimal, Fraction)):
        value, shown = _exact_number(variance)
        if exact:
            return value
        return _double(value, shown, variance)
    if exact:
        raise VarianceError("the high-precision backend takes one variance q at a time, as a number or a decimal "
                            f"string; got {type(variance).__name__}")
    from .limits import check_size

    # an array of q is one grid: at most limit("grid"), checked before range(10**10) could be copied
    check_size("grid", len(variance) if hasattr(variance, "__len__") and not hasattr(variance, "shape")
               else int(np.size(variance)) if hasattr(variance, "shape") else 1)
    if isinstance(variance, int):  # a Python int of any size: float() raises rather than return inf
        try:
            variance = float(variance)
        except OverflowError:
            value, shown = _exact_number(str(variance))
            return _double(value, shown, value)
    try:
        array = np.asarray(variance)
    except (TypeError, ValueError):
        raise VarianceError("variance q must be a finite number > 0 or a rectangular array of them; got "
                            f"{_short(variance)}") from None
    kind = array.dtype.kind
    if kind == "c":
        raise VarianceError(f"variance q must be real numbers > 0; got complex numbers ({_short(variance)}): the "
                            "imaginary part would be lost")
    if kind not in _REAL_KINDS:
        what = {"b": "booleans", "U": "strings", "S": "bytes", "O": "Python objects"}.get(kind, array.dtype.name)
        raise VarianceError(f"variance q must be a finite number > 0 or an array of them (float or int); got an "
                            f"array of {what} ({_short(variance)})")
    if scalar and array.ndim:
        raise VarianceError("the high-precision backend takes one variance q at a time")
    with np.errstate(over="ignore", under="ignore"):
        q = array.astype(float)
    if q.size == 0 or not np.all(np.isfinite(q)) or not np.all(q > 0):
        if q.size and kind == "f":  # a longdouble beyond the double range: say so, not "inf" or "0"
            lost = np.isfinite(array) & (array > 0) & ~(np.isfinite(q) & (q > 0))
            if lost.any():
                shown = np.format_float_scientific(array[lost].ravel()[0], precision=6, trim="-")
                raise VarianceError(_out_of_double_range(shown, np.isinf(q[lost].ravel()[0])))
        bad = q[~(np.isfinite(q) & (q > 0))] if q.size else q
        shown = bad.ravel()[0] if bad.size else "an empty array"
        raise VarianceError(f"variance q must be finite and > 0; got {shown}")
    if np.any(q < _SMALLEST_NORMAL):  # subnormal: fewer than 53 bits, so no value could carry a 1e-13 bar
        raise VarianceError(f"variance q = {q[q < _SMALLEST_NORMAL].ravel()[0]:g} is subnormal; in double precision "
                            f"q must be >= {_SMALLEST_NORMAL:.4g} (method=\"high_precision\" takes any q > 0)")
    return q[()] if q.ndim == 0 else q


def _short(value: Any) -> str:
    """A repr short enough for a one-line message."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def double_precision_message(exc: VarianceError) -> str:
    """check_variance's message without its high-precision hint, for callers that work in double precision only."""
    import re

    return re.sub(r' \(method="high_precision"[^)]*\)', "", str(exc))


def _exact_number(variance: str | mp.mpf | Decimal | Fraction) -> tuple[mp.mpf, str]:
    """(q as an mpf at the working precision, how to show it), for a string, mpf, Decimal or Fraction q > 0.

    A q too long to show in a one-line message (a Fraction of 400-digit integers) is shown to 6 digits.
    """
    if isinstance(variance, Fraction):
        value, shown = mp.mpf(variance.numerator) / variance.denominator, str(variance)
    else:
        shown = variance.strip() if isinstance(variance, str) else str(variance)
        try:
            value = mp.mpf(shown)  # at the caller's working precision: decimal strings stay exact there
        except (ValueError, TypeError):
            try:
                number = complex(shown.replace(" ", ""))
            except ValueError:
                number = None
            if number is None or number.imag == 0:  # "Infinity", or digits past Python's int-from-string limit
                raise VarianceError(f"variance q must be a finite number > 0, got {_short(variance)}") from None
            raise VarianceError(f"variance q must be a real number > 0, got the complex number "
                                f"{_short(variance)}") from None
    if not (mp.isfinite(value) and value > 0):
        raise VarianceError(f"variance q must be a finite number > 0, got {_short(variance)}")
    return value, (shown if len(shown) <= 30 else mp.nstr(value, 6))


def _double(value: mp.mpf, shown: str, original: str | mp.mpf | Decimal | Fraction) -> float:
    """The double nearest q > 0 (``value`` is q at the working precision), refused if out of double range.

    The double is rounded once from ``original`` (float() of a decimal string, a Decimal or a Fraction is
    correctly rounded), not from ``value``, which may already be rounded at the working precision.
    """
    if value > _LARGEST or value < np.finfo(float).smallest_subnormal:  # mpf against a double: exact
        raise VarianceError(_out_of_double_range(shown, value > _LARGEST))
    nearest = float(original.strip() if isinstance(original, str) else original)
    return float(check_variance(nearest))  # a subnormal q is refused there, with its own message


def _out_of_double_range(shown: str, over: bool) -> str:
    if over:
        return (f"variance q = {shown} overflows double precision: the largest q is {_LARGEST:.4g} "
                "(method=\"high_precision\" takes it)")
    return (f"variance q = {shown} underflows double precision: the smallest normal q is {_SMALLEST_NORMAL:.4g} "
            "(method=\"high_precision\" takes it)")


#: Fewest significant digits the high-precision backends take: below, their own guard digits dominate.
MIN_DIGITS = 5


def check_digits(digits: Any, default: int) -> int:
    """The working digits: ``default`` for None, else an int from ``MIN_DIGITS`` to ``limit("digits")``.

    Anything else (0, -5, 30.5, "40", True) is a one-line :class:`GainDeriveError`; more digits than the
    limit a :class:`~gainderive.limits.LimitError` naming the variable that raises it (mpmath's cost grows
    faster than the square of the digits: 100,000 would not finish).
    """
    from .limits import check_size, limit

    if digits is None:
        return default
    if isinstance(digits, (bool, np.bool_)) or not isinstance(digits, (int, np.integer)) or digits < MIN_DIGITS:
        raise GainDeriveError(f"digits must be an integer from {MIN_DIGITS} to {limit('digits')}; got {digits!r}")
    return check_size("digits", int(digits))


def _run(ig: Integrand, q: Any, method: str, options: dict) -> tuple[Estimate, ...]:
    """Dispatch to a backend (imported on demand: the CLI pays only for the one it uses)."""
    if method in ("auto", "closed_form", "quadrature"):
        from .backends import quadrature

        return quadrature.integrate(ig, q, **_only(options, "rtol"))
    if method == "high_precision":
        from .backends import high_precision

        return high_precision.integrate(ig, q, **_only(options, "digits"))
    if method == "monte_carlo":
        from .backends import monte_carlo

        return monte_carlo.integrate(ig, q, **_only(options, "samples", "seed", "progress"))
    from .suggest import accepted, did_you_mean

    raise GainDeriveError(f"unknown method {method!r}{accepted(did_you_mean(str(method), METHODS), METHODS)}")


def _only(options: dict, *names: str) -> dict:
    return {k: v for k, v in options.items() if k in names and v is not None}


def moment_functions(act: Activation) -> tuple[dict[str, sp.Expr], sp.Expr]:
    """The integrands h of E[h] that the four moments need, and the centre c = f(0) they use.

    c keeps Var f = E[(f - c)^2] - (E[f - c])^2 well conditioned; it is 0 where f(0) is not finite,
    and when c = 0 the centred integrand is f^2 itself.  E[f - c] is integrated as its own expectation
    rather than formed as E[f] - c: for softplus at q = 1e-20, E[f] - log 2 = q/8 would be all rounding.
    """
    import sympy as sp

    from .formula import X
    from .integrand import DF, F

    try:
        c = act.expression.subs(X, 0)
    except (TypeError, ValueError, ArithmeticError):  # e.g. a condition on log(x), undefined at 0
        c = sp.S.Zero
    if not (c.is_number and c.is_finite and c.is_real):
        c = sp.S.Zero
    functions = {"f(z)": F, "f(z)^2": F**2, "f'(z)^2": DF**2}
    if c != 0:
        functions[f"(f(z) - {c})^2"] = (F - c) ** 2
        functions[f"f(z) - {c}"] = F - c
    return functions, c


class Prepared(NamedTuple):
    """An activation ready for :func:`_moments`: what :func:`_prepare` returns (a table prepares it once)."""

    activation: Activation  # the caller's activation (its name and reference are what results report)
    integrand: Any  # Integrand, the registry cache's CompiledIntegrand, or {label: h} when some moment is infinite
    centre: Any  # c = f(0)
    infinite: Mapping[str, Any]  # {label: Infinite} from gainderive.singular.analyse
    compiled: Compiled | None = None  # the cache entry they came from; None for an activation that is not cached


class Compiled:
    """What evaluating the moments of one activation needs, built once and kept in :data:`_COMPILED`.

    Keyed by the activation's normalised formula and exact parameter values (:func:`compile_key`), so a registry
    name, the same formula typed as a string and an equal :class:`Activation` share one entry; parts are filled on
    first use: the float64 integrand (the registry cache's, without sympy, or the symbolic one), the symbolic
    integrand the high-precision backend needs, and the closed-form part: the verified forms, their compiled
    programs and the set of forms *preferred* over quadrature (:func:`gainderive.gaussian_rules.verdicts`).
    Parts are assigned whole, never mutated, so a race only builds a part twice.
    """

    __slots__ = ("closed", "exact_part", "float_part", "key")

    def __init__(self, key: tuple) -> None:
        self.key = key
        self.float_part: tuple | None = None  # (integrand, centre, infinite) for the float64 backends
        self.exact_part: tuple | None = None  # the same with the symbolic Integrand, which every backend takes
        self.closed: tuple | None = None  # (forms, programs, preferred)


#: Entries of the compile cache, least recently used first; at most :data:`COMPILE_CACHE_SIZE`.
_COMPILED: OrderedDict[tuple, Compiled] = OrderedDict()
_COMPILED_LOCK = threading.Lock()
_COMPILED_COUNTS = {"hits": 0, "misses": 0}
#: How many compiled activations are kept in memory (a user-formula entry holds sympy expressions: ~1 MB).
COMPILE_CACHE_SIZE = 256
#: Formulas longer than gainderive.formula.MAX_LENGTH are refused by the parser: never keyed, so never cached.
_KEYED_LENGTH = 2000


def compile_cache_info() -> dict[str, int]:
    """{"hits", "misses", "size", "maxsize"} of the in-memory compile cache (for tests and benchmarks)."""
    with _COMPILED_LOCK:
        return {**_COMPILED_COUNTS, "size": len(_COMPILED), "maxsize": COMPILE_CACHE_SIZE}


def clear_compile_cache() -> None:
    """Forget every compiled activation (a test that replaces the closed-form verification calls this first)."""
    with _COMPILED_LOCK:
        _COMPILED.clear()
        _COMPILED_COUNTS.update(hits=0, misses=0)


def _compiled_entry(key: tuple) -> Compiled:
    """The cache entry for ``key``, created (and the least recently used dropped beyond the bound) if new."""
    with _COMPILED_LOCK:
        entry = _COMPILED.get(key)
        if entry is not None:
            _COMPILED.move_to_end(key)
            _COMPILED_COUNTS["hits"] += 1
            return entry
        _COMPILED_COUNTS["misses"] += 1
        entry = _COMPILED[key] = Compiled(key)
        while len(_COMPILED) > COMPILE_CACHE_SIZE:
            _COMPILED.popitem(last=False)
        return entry


@lru_cache(maxsize=1024)
def _normalised_formula(text: str) -> str | None:
    """The formula's syntax tree as text: the parser reads only the tree, so equal trees are the same formula.

    ``x*Phi(x)`` and ``x * Phi(x)`` are one formula; text that is not an expression is None (never cached).
    """
    if len(text) > _KEYED_LENGTH:
        return None
    try:
        return ast.dump(ast.parse(text.strip(), mode="eval"))
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return None


def _exact_key(value: Any) -> Any:
    """A parameter value as a hashable key that is equal exactly when the value means the same number.

    Registry defaults are decimal strings and built activations hold sympy rationals: both become a Fraction
    (``exact("1.5")`` is Rational(3, 2)).  A float stays a tagged float (sympy substitutes it as a Float, not
    as a rational); another sympy number is its ``srepr``.  Anything else is None: that activation is not cached.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, Fraction)):
        return Fraction(value)
    if isinstance(value, float):
        return ("float", value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            return Fraction(value.strip())
        except (ValueError, ZeroDivisionError):
            return None
    if type(value).__module__.startswith("sympy"):
        if getattr(value, "is_Rational", False) is True:
            return Fraction(int(value.p), int(value.q))
        if getattr(value, "is_number", False) is True:
            from sympy import srepr

            return ("sympy", srepr(value))
    return None


_NOT_KEYED = object()


def compile_key(act: Activation) -> tuple | None:
    """The compile-cache key of ``act``: normalised formula, exact parameter values, symbolic budgets in force.

    The budgets (:func:`gainderive.budget.in_force`) are part of it because what the symbolic work finds depends
    on them: an activation analysed under ``limits(closed_form_seconds=0)`` has no closed forms.  None for an
    activation that cannot be keyed (a formula that does not parse, a parameter value that is not a number).
    """
    content = act.__dict__.get("_compile_key", _NOT_KEYED)
    if content is _NOT_KEYED:  # the record is immutable (params is a read-only copy): its key never changes
        formula = _normalised_formula(act.formula) if isinstance(act.formula, str) else None
        values = tuple(sorted((str(k), _exact_key(v)) for k, v in act.params.items()))
        content = None if formula is None or any(v is None for _, v in values) else (formula, values)
        act.__dict__["_compile_key"] = content
    if content is None:
        return None
    from .budget import SymbolicBudgetError, in_force

    try:
        return (*content, in_force())
    except SymbolicBudgetError:  # a malformed GAINDERIVE_BUDGET_*: not cached; the symbolic work reports it, if any
        return None


def _prepare(activation, method: str, params: dict) -> Prepared:
    """The activation, its integrand for the four moments, the centre c, which moments are infinite, its entry.

    The infinite moments are {label: :class:`~gainderive.singular.Infinite`} from
    :func:`gainderive.singular.analyse`, decided from the formula before any backend runs; the registry's cached
    activations have none.  When it is not empty the integrand is returned as {label: h}, to be compiled for the
    moments that are finite.  Everything is taken from the compile cache (:class:`Compiled`) when the activation
    was prepared before; the activation returned is always the caller's (a registry name gives the registry
    cache's record, which reports without sympy).
    """
    if isinstance(activation, str) and not params and method != "high_precision":
        from ._cache import lookup

        cached = lookup(activation.strip())
        if cached is not None:
            act, compiled_integrand, centre = cached
            key = compile_key(act)
            entry = None if key is None else _compiled_entry(key)
            if entry is None or entry.float_part is None:
                part = (compiled_integrand, centre, MappingProxyType({}))
                if entry is not None:
                    entry.float_part = part
            else:
                part = entry.float_part
            return Prepared(act, *part, entry)
    from .registry import activation as make_activation

    act = make_activation(activation, **params)
    key = compile_key(act)
    entry = None if key is None else _compiled_entry(key)
    part = None if entry is None else entry.exact_part if method == "high_precision" else entry.float_part
    if part is None:
        part = _symbolic_part(act)
        if entry is not None:
            entry.exact_part = part
            if entry.float_part is None:
                entry.float_part = part
    return Prepared(act, *part, entry)


def _symbolic_part(act: Activation) -> tuple[Any, Any, Mapping[str, Any]]:
    """(integrand, centre, infinite) of ``act`` through the symbolic layer (imports sympy)."""
    from .integrand import integrand
    from .singular import analyse

    functions, c = moment_functions(act)
    infinite = analyse(act, functions)
    return (MappingProxyType(functions) if infinite else integrand(act, functions)), c, MappingProxyType(infinite)


def _closed_part(prepared: Prepared) -> tuple[dict, dict, frozenset]:
    """(forms, programs, preferred) of the prepared activation, from its cache entry once built."""
    entry = prepared.compiled
    if entry is not None and entry.closed is not None:
        return entry.closed
    closed = _derive_closed_part(prepared.activation)
    if entry is not None:
        entry.closed = closed
    return closed


def _derive_closed_part(act: Activation) -> tuple[dict, dict, frozenset]:
    """The verified closed forms of ``act``, their (whole, terms) programs, and which are preferred.

    From the registry cache when ``act`` came from it (no sympy), else derived and verified
    (:func:`gainderive.gaussian_rules.verdicts`) and compiled.
    """
    cached = act.__dict__.get("_closed_forms")  # set by the registry cache: no sympy needed
    if cached is not None:
        forms, programs = cached
        return forms, programs, frozenset()
    from .gaussian_rules import programs as compile_form
    from .gaussian_rules import verdicts

    found = verdicts(act)
    forms = {name: v.form if v.status in ("verified", "preferred") else None for name, v in found.items()}
    preferred = frozenset(name for name, v in found.items() if v.status == "preferred")
    return forms, {name: compile_form(act, name) for name in MOMENTS}, preferred


def moments(
    activation: str | Activation,
    variance: Any = 1.0,
    method: str = "auto",
    *,
    digits: int | None = None,
    samples: int | None = None,
    seed: int | None = None,
    rtol: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    **params: Any,
) -> Moments:
    """E[f(z)], E[f(z)^2], E[f'(z)^2] and Var f(z) for z ~ N(0, q).

    Parameters
    ----------
    activation:
        A registry name, a formula in ``x``, or an :class:`Activation`.
    variance:
        q > 0, a number or an array (vectorised; the high-precision backend
        takes one q at a time).
    method:
        ``"auto"`` or ``"quadrature"`` (float64, relative error ~1e-13),
        ``"high_precision"`` (mpmath, ``digits`` digits, default 40) or
        ``"monte_carlo"`` (``samples`` evaluations from ``seed``; the error is
        one standard error).
    params:
        Activation parameters, e.g. ``alpha=2``.

    Divergence is decided from the formula first (:mod:`gainderive.singular`): if E[f] or E[f^2] is
    infinite at some q (f grows like exp(c x^2) with q >= 1/(4c), or is not square-integrable near a point,
    as |x|^-0.6 or 1/x), :class:`DivergenceError` says which, why, and for which q it exists.  An infinite
    E[f'^2] is an answer, not an error: when f jumps (sign, a step) or f' is not square-integrable at a point
    (log|x|, |x|^-0.2, sqrt|x|), ``derivative_second_moment`` is ``Estimate(inf, 0, "infinite: <reason>")``
    (arrays of inf for an array of q) and the other three moments are computed as usual.

    An unbounded but integrable f, f^2 or f'^2 (log|x|, |x|^-0.2 near 0) can be beyond double-precision
    quadrature; float methods then compute at most 32 variances with the high-precision backend at 20 digits,
    rounded to float64 with the rounding added to the error bar, and report ``"high_precision"`` as the method.
    """
    options = {"digits": digits, "samples": samples, "seed": seed, "rtol": rtol, "progress": progress}
    return _moments(_prepare(activation, method, params), variance, method, options)


def _moments(prepared: Prepared, variance: Any, method: str, options: dict) -> Moments:
    """:func:`moments` for an activation already prepared by :func:`_prepare` (a table prepares it once).

    Closed forms first: for ``auto`` and ``closed_form``, when every moment has a verified form that covers every q
    (:func:`_closed_forms_first`), the forms are the answer and no quadrature runs.  Otherwise quadrature runs and
    its results are replaced by the forms where they are at least as accurate (:func:`_with_closed_forms`).
    """
    act, ig, _, infinite = prepared[:4]
    prepared = prepared if isinstance(prepared, Prepared) else Prepared(act, ig, prepared[2], infinite)
    rtol = options.get("rtol")
    with _working_precision(method, options.get("digits"), variance) as (q, digits):
        options = {**options, "digits": digits}
        if infinite:
            from .singular import raise_if_infinite

            raise_if_infinite(infinite, [label for label in ig if label != _DERIVATIVE], q, act.name)
        evaluated: dict = {}
        if method in ("auto", "closed_form") and not infinite:  # an infinite moment keeps the path below
            closed = _closed_part(prepared)
            first, evaluated = _closed_forms_first(act, q, closed, rtol or 1e-13)
            if first is not None:
                return first
        try:
            if infinite:
                mean, second, derivative, *centred = _singular_moments(act, ig, infinite, q, method, options)
            else:
                mean, second, derivative, *centred = _run(ig, q, method, options)
        except (ConvergenceError, DivergenceError) as exc:
            if method not in ("auto", "closed_form", "quadrature"):
                raise
            if method != "quadrature" and not infinite and isinstance(exc, ConvergenceError):
                covered = _closed_forms_alone(act, q, rtol or 1e-13, _closed_part(prepared), evaluated)
                if covered is not None:  # sin at q = 1e8: too oscillatory for panels, exact in closed form
                    return covered
            return _resolve_singularity(act, q, exc)
        variance_f = _variance(mean, *(centred or (second, None)), second=second)
        result = Moments(act, q, mean, second, derivative, variance_f, digits=digits)
    if method in ("auto", "closed_form"):
        result = _with_closed_forms(result, rtol or 1e-13, _closed_part(prepared), evaluated)
        if np.any(np.isinf(np.asarray(derivative.value, dtype=float))):  # a closed form never replaces an infinity
            result = replace(result, derivative_second_moment=derivative)
    return result


def _closed_forms_first(act: Activation, q: Any, closed: tuple, rtol: float) -> tuple[Moments | None, dict]:
    """(the moments from closed forms alone, or None; {moment: (value, error)} of the forms evaluated so far).

    A moment is covered at a q where its verified form is finite with an error bar <= rtol |value| (there is no
    quadrature error to compare with yet: a form less accurate than rtol leaves that moment to quadrature), or,
    for a form *preferred* over quadrature, wherever it is finite.  None unless every moment is covered at every
    q; the evaluations are returned so that the merge after quadrature does not repeat them.
    """
    forms, programs, preferred = closed
    if any(programs.get(name) is None for name in MOMENTS):
        return None, {}
    from .closed_form import evaluate

    evaluated = {}
    for name in MOMENTS:
        value, error = evaluated[name] = evaluate(*programs[name], q)
        if name in preferred:
            covered = np.isfinite(value) & np.isfinite(error)
        else:
            covered = np.isfinite(value) & (error <= rtol * np.abs(value))
        if not np.all(covered):
            return None, evaluated
    estimates = (Estimate(evaluated[name][0][()], evaluated[name][1][()], "closed_form") for name in MOMENTS)
    return Moments(act, q, *estimates, closed_forms=forms), evaluated


def _closed_forms_alone(act: Activation, q: Any, rtol: float, closed: tuple, evaluated: dict) -> Moments | None:
    """The moments from verified closed forms alone, where quadrature failed; None unless every one is covered."""
    shape = np.shape(q)
    missing = Estimate(np.full(shape, np.nan)[()], np.full(shape, np.inf)[()], "none")
    m = _with_closed_forms(Moments(act, q, missing, missing, missing, missing), rtol, closed, evaluated)
    if all(e.method == "closed_form" and np.all(np.isfinite(e.value)) for _, e in m):
        return m
    return None


_DERIVATIVE = "f'(z)^2"
_FALLBACK_DIGITS = 20
_FALLBACK_LIMIT = 32


def _resolve_singularity(act: Activation, q: Any, failure: GainDeriveError) -> Moments:
    """The moments by the high-precision backend, q by q, when quadrature failed at an integrable singularity.

    Re-raises ``failure`` (with the singular point named) if f has no such point or there are too many q.
    """
    from .singular import integrable_singularities

    if "not a real number" in str(failure):  # f is not real somewhere: no precision helps
        raise failure
    points = integrable_singularities(act, moment_functions(act)[0])
    if not points:
        raise failure
    label, z0, alpha = min(points, key=lambda p: p[2])
    distance = "|z|" if z0 == 0 else f"|z - {z0:.6g}|"
    singular = f"{label} ~ {distance}^{alpha:.3g} is unbounded but integrable at z = {z0:.6g}"
    qs = np.atleast_1d(np.asarray(q, dtype=float))
    if qs.size > _FALLBACK_LIMIT:
        raise type(failure)(f"{failure} ({singular}; method=\"high_precision\" resolves it one q at a time, here "
                            f"for up to {_FALLBACK_LIMIT} q)") from None
    try:
        rows = [moments(act, repr(float(v)), "high_precision", digits=_FALLBACK_DIGITS) for v in qs]
    except GainDeriveError as exc:
        raise type(failure)(f"{failure} ({singular}; {_FALLBACK_DIGITS}-digit tanh-sinh did not resolve it "
                            f"either: {exc})") from None

    def column(name: str) -> Estimate:
        values = np.array([float(getattr(r, name).value) for r in rows])
        rounding = np.abs(values) * np.finfo(float).eps / 2  # mpf -> float64: half an ulp
        errors = np.array([float(getattr(r, name).error) for r in rows]) + np.where(np.isfinite(values), rounding, 0)
        shape = np.shape(q)
        return Estimate(values.reshape(shape)[()], errors.reshape(shape)[()], getattr(rows[0], name).method)

    return Moments(act, q, *(column(name) for name in MOMENTS))


def _singular_moments(act: Activation, functions: dict, infinite: dict, q: Any, method: str,
                      options: dict) -> tuple[Estimate, ...]:
    """The moments when E[f'^2] may be infinite (E[f] and E[f^2] are finite): inf for f'^2 where it is infinite.

    Each backend sees only integrands whose expectations are finite at the q it is given.
    """
    from .integrand import integrand
    from .singular import infinite_estimate

    verdict = infinite.get(_DERIVATIVE)
    where = False if verdict is None else verdict.at(q)
    if not np.any(where):  # growth that sets in only beyond these q
        return _run(integrand(act, functions), q, method, options)
    finite = {label: h for label, h in functions.items() if label != _DERIVATIVE}
    mean, second, *centred = _run(integrand(act, finite), q, method, options)
    derivative = infinite_estimate(verdict, q, method == "high_precision")
    if not np.all(where):  # growth: infinite only for q >= 1/(2c), so only some q of an array
        (part,) = _run(integrand(act, {_DERIVATIVE: functions[_DERIVATIVE]}), q[~where], method, options)
        value, error = derivative.value.copy(), derivative.error.copy()
        value[~where], error[~where] = part.value, part.error
        derivative = Estimate(value, error, f"{part.method}; {derivative.method} (for q >= {verdict.threshold:.6g})")
    return (mean, second, derivative, *centred)


def _with_closed_forms(m: Moments, rtol: float, closed: tuple, evaluated: dict | None = None) -> Moments:
    """Replace each moment by its verified closed form where that is at least as accurate at every q.

    A form that won arbitration against quadrature (high precision sided with it) replaces quadrature wherever
    it evaluates to a finite number: there quadrature's own error bar was shown not to hold.  ``closed`` is
    (forms, programs, preferred) from :func:`_closed_part`; ``evaluated`` holds forms already evaluated at ``m.q``.
    """
    forms, programs, preferred = closed
    evaluated = evaluated or {}
    from .closed_form import evaluate

    better = {}
    for name in MOMENTS:
        if programs.get(name) is None:
            continue
        value, error = evaluated[name] if name in evaluated else evaluate(*programs[name], m.q)
        previous = getattr(m, name)
        if name in preferred:
            use = np.isfinite(value) & np.isfinite(error)
        else:
            use = np.isfinite(value) & (error <= np.maximum(rtol * np.abs(value), previous.error))
        if np.all(use):
            better[name] = Estimate(value[()], error[()], "closed_form")
        elif name in preferred and np.any(use):  # per q: the form where it evaluates, quadrature elsewhere
            keep = np.asarray(previous.value, dtype=float)
            keep_error = np.asarray(previous.error, dtype=float)
            better[name] = Estimate(np.where(use, value, keep)[()], np.where(use, error, keep_error)[()],
                                    "closed_form")
    return replace(m, closed_forms=forms, **better)


DEFAULT_DIGITS = 40
_GUARD = 10


@contextmanager
def _working_precision(method: str, digits: int | None, variance: Any) -> Iterator[tuple[Any, int | None]]:
    """Yield (q, digits): validated q; for high precision, inside mpmath's working precision with q exact at it.

    ``digits`` is validated whatever the method (:func:`check_digits`); float methods do not use it.
    """
    digits = check_digits(digits, DEFAULT_DIGITS)
    if method != "high_precision":
        yield check_variance(variance), None
        return
    with mp.workdps(digits + _GUARD):
        yield _exact_variance(variance), digits


def _exact_variance(variance: Any) -> mp.mpf:
    """q at the current mpmath precision; a float means the decimal it prints as (0.1 is 1/10)."""
    if isinstance(variance, (bool, np.bool_)):
        return check_variance(variance)  # refused
    if isinstance(variance, float):  # np.float64 included: its repr() is not a plain decimal in numpy 2
        variance = repr(float(variance))
    elif isinstance(variance, np.floating):  # float16/32/longdouble: the decimal it prints as in its own type
        variance = np.format_float_scientific(variance, unique=True, trim="-")
    elif isinstance(variance, (int, np.integer)):
        variance = str(int(variance))
    elif not isinstance(variance, (str, mp.mpf, Decimal, Fraction)):
        variance = repr(float(check_variance(variance, scalar=True)))
    return check_variance(variance, exact=True)


def _variance(mean: Estimate, centred: Estimate, shifted: Estimate | None, *, second: Estimate) -> Estimate:
    """Var f = E[(f - c)^2] - (E[f - c])^2, with the errors propagated to first order (plus the square).

    ``shifted`` is E[f - c] integrated directly (None when c = 0, where it is E[f] itself).  In double
    precision f - c carries f's own rounding, about delta = 4 eps |f| absolute however small f - c is, which
    moves E[(f - c)^2] by up to 2 sqrt(E[(f - c)^2]) delta + delta^2: a nearly constant f (sigmoid nested 39
    deep, Var f ~ 1e-50) evaluates to exactly c, and only this term keeps its bar above the true variance.
    """
    if mean.method == "high_precision":  # runs inside the caller's working precision
        if shifted is not None:
            d, d_error = shifted.value, shifted.error
        else:
            d, d_error = mean.value, mean.error
        return Estimate(centred.value - d * d, centred.error + 2 * abs(d) * d_error + d_error**2, mean.method)
    source = shifted if shifted is not None else mean
    d, d_error = np.asarray(source.value, dtype=float), np.asarray(source.error, dtype=float)
    value = np.asarray(centred.value) - d * d
    delta = 4 * np.finfo(float).eps * np.sqrt(np.abs(np.asarray(second.value, dtype=float)))
    rounding = 2 * np.sqrt(np.abs(np.asarray(centred.value, dtype=float))) * delta + delta**2
    error = np.asarray(centred.error) + 2 * np.abs(d) * d_error + d_error**2 + rounding
    return Estimate(value[()], error[()], mean.method)


def expectation(
    activation: str | Activation,
    h: str | sp.Expr,
    variance: Any = 1.0,
    method: str = "auto",
    *,
    digits: int | None = None,
    samples: int | None = None,
    seed: int | None = None,
    rtol: float | None = None,
    **params: Any,
) -> Estimate:
    """E[h(z)] for z ~ N(0, q), where h is a formula in ``f``, ``df`` (f') and ``x`` (z).

    An infinite E[h] raises :class:`DivergenceError` (one line: which expectation, why, at which point or
    for which q it exists), decided from the formula before any backend runs (:mod:`gainderive.singular`);
    h in ``df`` when f jumps raises :class:`DiracDerivativeError`.  Unlike :func:`moments`, which reports an
    infinite E[f'^2] as ``inf``, this never returns an infinite value.

    >>> round(float(expectation("relu", "df**4", 2.0).value), 12)
    0.5
    """
    import sympy as sp

    from .formula import parse_formula
    from .integrand import DF, F, integrand
    from .registry import activation as make_activation
    from .singular import analyse, raise_if_infinite

    act = make_activation(activation, **params)
    if isinstance(h, str):
        expr = parse_formula(h)
    elif isinstance(h, sp.Basic):
        expr = h
    else:
        raise FormulaError(f"h must be a formula string or a sympy expression, got {type(h).__name__}")
    extra = {s.name for s in expr.free_symbols} - {"f", "df", "x"}
    if extra:
        from .suggest import VARIABLE_NAMES, did_you_mean

        name = sorted(extra)[0]
        hint = "; the variable is x" if name in VARIABLE_NAMES else did_you_mean(name, ("f", "df", "x"))
        raise FormulaError(f"h may use f, df (the derivative) and x only; got {', '.join(sorted(extra))}{hint}")
    expr = expr.subs({sp.Symbol(n, real=True): v for n, v in (("f", F), ("df", DF))})
    functions = {str(h): expr}
    ig = integrand(act, functions)
    options = {"digits": digits, "samples": samples, "seed": seed, "rtol": rtol}
    with _working_precision(method, digits, variance) as (q, digits):
        raise_if_infinite(analyse(act, functions), functions, q, act.name)
        return _run(ig, q, method, {**options, "digits": digits})[0]
