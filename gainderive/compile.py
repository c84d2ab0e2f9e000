"""The compile step: an activation turned once into everything evaluating its moments needs.

:func:`compile_activation` (and :func:`_prepare`, which the evaluation layer calls) returns a :class:`Prepared`
activation: its float64 integrand (pieces, cuts and numeric programs of the four moment integrands), the centre
c = f(0), the divergence verdicts (:mod:`gainderive.singular`) and the :class:`Compiled` entry it came from, whose
closed part (:class:`ClosedPart`) holds the verified closed forms, their compiled programs, which of them are
preferred over quadrature, the q-ranges where each answers instead of quadrature (decided once, at
verification, by :func:`gainderive.verify.decide_ranges`) and, where a form cancels at small q, its small-q series
(:func:`gainderive.verify.small_q_series`).

Compiled activations are kept in memory (an LRU keyed by the normalised formula, the exact parameter values and
the symbolic budgets in force, so a registry name, the same formula typed as a string and an equal
:class:`~gainderive.activation.Activation` share one entry) and, for user formulas and registry names with other
parameters, on disk as data (:mod:`gainderive._cache`): a second process loads them without importing sympy.

Layering: formula -> activation -> (gaussian_rules | backends) -> verify -> compile -> moments.  This module
imports the verification layer only when a form has to be derived, and never :mod:`gainderive.moments`.
"""

from __future__ import annotations

import ast
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from fractions import Fraction
from functools import lru_cache
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from .budget import SymbolicBudgetError
from .registry import activation as make_activation

if TYPE_CHECKING:
    import sympy as sp

    from .activation import Activation

__all__ = ["ClosedPart", "Compiled", "Prepared", "clear_compile_cache", "closed_form_notes", "compile_cache_info",
           "compile_key", "moment_functions"]

MOMENTS = ("mean", "second_moment", "derivative_second_moment", "variance")


def moment_functions(act: Activation) -> tuple[dict[str, sp.Expr], sp.Expr]:
    """The integrands of the four moments and the centre c = f(0) (:func:`gainderive.verify.moment_functions`)."""
    from .verify import moment_functions as functions

    return functions(act)


class Prepared(NamedTuple):
    """An activation ready for evaluation: what :func:`_prepare` returns (a table prepares it once)."""

    activation: Activation  # the caller's activation (its name and reference are what results report)
    integrand: Any  # Integrand, the cache's CompiledIntegrand, or {label: h} when some moment is infinite
    centre: Any  # c = f(0)
    infinite: Mapping[str, Any]  # {label: Infinite} from gainderive.singular.analyse
    compiled: Compiled | None = None  # the cache entry they came from; None for an activation that is not cached


class ClosedPart(NamedTuple):
    """The verified closed forms of one activation, ready to evaluate."""

    forms: Mapping[str, Any]  # moment -> ClosedForm or None
    programs: Mapping[str, Any]  # moment -> its numpy Program, or None (verify.programs)
    preferred: frozenset  # moments whose form won arbitration against quadrature
    ranges: Mapping[str, tuple]  # moment -> ((lo, hi), ...): the q where the form answers instead of quadrature
    notes: Mapping[str, str] = MappingProxyType({})  # moment -> why a form was rejected, preferred or skipped
    # moment -> SmallQSeries: the form's Taylor polynomial in sqrt(q), answering for q <= its q_max (where the form
    # cancels); decided at verification (gainderive.verify.small_q_series)
    series: Mapping[str, Any] = MappingProxyType({})


class Compiled:
    """What evaluating the moments of one activation needs, built once and kept in :data:`_COMPILED`.

    Parts are filled on first use: the float64 integrand (the registry or disk cache's, without sympy, or the
    symbolic one), the symbolic integrand the high-precision backend needs, and the :class:`ClosedPart`.
    Parts are assigned whole, never mutated, so a race only builds a part twice.
    """

    __slots__ = ("closed", "disk_key", "exact_part", "float_part", "key")

    def __init__(self, key: tuple) -> None:
        self.key = key
        self.float_part: tuple | None = None  # (integrand, centre, infinite) for the float64 backends
        self.exact_part: tuple | None = None  # the same with the symbolic Integrand, which every backend takes
        self.closed: ClosedPart | None = None
        self.disk_key: str | None = None  # the disk cache entry to write once the closed part is known


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
    _FAST.clear()


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
_BUDGETS: dict[tuple, Any] = {}


@lru_cache(maxsize=1)
def _budget_variables() -> tuple[Any, ...]:
    """The ``GAINDERIVE_BUDGET_*`` names, as keys of :data:`_ENVIRONMENT`."""
    from dataclasses import fields

    from .budget import Limits

    names = tuple(f"GAINDERIVE_BUDGET_{f.name.upper()}" for f in fields(Limits))
    return tuple(os.fsencode(name) for name in names) if _ENVIRONMENT is not os.environ else names


# os.environ's own dictionary on POSIX (bytes keys, kept in step by os.environ and monkeypatch.setenv): reading it
# costs 50 ns a name, against ~1 us through os.environ.get, and the budgets are read on every call
_ENVIRONMENT = os.environ._data if os.name == "posix" and isinstance(getattr(os.environ, "_data", None), dict) \
    else os.environ


def _budgets() -> Any:
    """:func:`gainderive.budget.in_force`, recomputed only when a ``GAINDERIVE_BUDGET_*`` variable changed."""
    setting = tuple(map(_ENVIRONMENT.get, _budget_variables()))
    found = _BUDGETS.get(setting)
    if found is None:
        from .budget import in_force

        found = in_force()  # a malformed value raises SymbolicBudgetError, and nothing is remembered
        if len(_BUDGETS) > 64:
            _BUDGETS.clear()
        _BUDGETS[setting] = found
    return found


def _budgets_or_none() -> Any:
    try:
        return _budgets()
    except SymbolicBudgetError:
        return None


def compile_key(act: Activation) -> tuple | None:
    """The compile-cache key of ``act``: normalised formula, exact parameter values, symbolic budgets in force.

    The budgets (:func:`gainderive.budget.in_force`) are part of it because what the symbolic work finds depends
    on them: an activation analysed under ``limits(closed_form_seconds=0)`` has no closed forms.  None for an
    activation that cannot be keyed (a formula that does not parse, a parameter value that is not a number).
    """
    content = act.__dict__.get("_compile_key", _NOT_KEYED)
    if content is _NOT_KEYED:  # the record is immutable (params is a read-only copy): its key never changes
        content = _content_key(act.formula, act.params)
        act.__dict__["_compile_key"] = content
    if content is None:
        return None
    try:
        return (*content, _budgets())
    except SymbolicBudgetError:  # a malformed GAINDERIVE_BUDGET_*: not cached; the symbolic work reports it, if any
        return None


def _content_key(formula: Any, params: Mapping[str, Any]) -> tuple | None:
    normalised = _normalised_formula(formula) if isinstance(formula, str) else None
    values = tuple(sorted((str(k), _exact_key(v)) for k, v in params.items()))
    return None if normalised is None or any(v is None for _, v in values) else (normalised, values)


#: (spec, parameters) -> (from the registry cache?, Prepared) for the float64 methods, used while its entry is in
#: the LRU (and, unless from the registry cache, the budgets in force are those it was compiled under): a warm call
#: costs one dict lookup, not a formula parse, a registry lookup or a disk read.
_FAST: dict[tuple, tuple] = {}


def _prepare(activation, method: str, params: dict) -> Prepared:
    """The activation, its integrand for the four moments, the centre c, which moments are infinite, its entry.

    The infinite moments are {label: :class:`~gainderive.singular.Infinite`} from
    :func:`gainderive.singular.analyse`, decided from the formula before any backend runs; the cached
    activations have none.  When it is not empty the integrand is returned as {label: h}, to be compiled for the
    moments that are finite.  Everything is taken from the compile cache (:class:`Compiled`) when the activation
    was prepared before, else from the registry or disk cache, else built through the symbolic layer; the
    activation returned is always the caller's (a registry name gives the registry cache's record, which reports
    without sympy).
    """
    fast_key = None
    if isinstance(activation, str) and method != "high_precision":
        fast_key = _fast_key(activation, params)
        fast = _FAST.get(fast_key) if fast_key is not None else None
        if fast is not None and (fast[0] or fast[1].compiled.key[-1] is _budgets_or_none()):
            entry = fast[1].compiled
            with _COMPILED_LOCK:  # still in the LRU: counted as a hit and made the most recent, as below
                if _COMPILED.get(entry.key) is entry:
                    _COMPILED.move_to_end(entry.key)
                    _COMPILED_COUNTS["hits"] += 1
                    return fast[1]
        if not params:
            prepared = _registry_prepared(activation)
            if prepared is not None:  # the registry cache's data: the same whatever the budgets in force
                return _remember(fast_key, prepared, registry=True)
        prepared = _disk_prepared(activation, params)
        if prepared is not None:
            return _remember(fast_key, prepared, registry=False)
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
    if entry is not None and entry.disk_key is None and isinstance(activation, str) and not part[2]:
        entry.disk_key = _disk_name(activation, params, key[-1])
    prepared = Prepared(act, *part, entry)
    return prepared if method == "high_precision" else _remember(fast_key, prepared, registry=False)


def _fast_key(spec: str, params: Mapping[str, Any]) -> tuple | None:
    """The key of a string spec and its parameters in :data:`_FAST`: each value with its type (1, 1.0 and True
    are different parameters), None when a value is not hashable."""
    if not params:
        return (spec,)
    try:
        key = (spec, tuple(sorted((name, type(value), value) for name, value in params.items())))
        hash(key)
    except TypeError:
        return None
    return key


def _remember(fast_key: tuple | None, prepared: Prepared, *, registry: bool) -> Prepared:
    if fast_key is not None and prepared.compiled is not None:
        if len(_FAST) >= 4 * COMPILE_CACHE_SIZE:
            _FAST.clear()
        _FAST[fast_key] = (registry, prepared)
    return prepared


def _registry_prepared(name: str) -> Prepared | None:
    from ._cache import lookup

    cached = lookup(name.strip())
    if cached is None:
        return None
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


def _symbolic_part(act: Activation) -> tuple[Any, Any, Mapping[str, Any]]:
    """(integrand, centre, infinite) of ``act`` through the symbolic layer (imports sympy)."""
    from .integrand import integrand
    from .singular import analyse

    functions, c = moment_functions(act)
    infinite = analyse(act, functions)
    return (MappingProxyType(functions) if infinite else integrand(act, functions)), c, MappingProxyType(infinite)


def _closed_part(prepared: Prepared) -> ClosedPart:
    """The :class:`ClosedPart` of the prepared activation, from its cache entry once built."""
    entry = prepared.compiled
    if entry is not None and entry.closed is not None:
        return entry.closed
    closed = _derive_closed_part(prepared.activation)
    if entry is not None:
        entry.closed = closed
        if entry.disk_key is not None:
            _store(entry, prepared)
    return closed


def _derive_closed_part(act: Activation) -> ClosedPart:
    """The verified closed forms of ``act``, their programs, which are preferred, where each is used.

    From the registry cache when ``act`` came from it (no sympy), else derived and verified
    (:func:`gainderive.verify.verdicts`), compiled, and their q-ranges decided
    (:func:`gainderive.verify.decide_ranges`).
    """
    cached = act.__dict__.get("_closed_forms")  # set by the registry cache: no sympy needed
    if cached is not None:
        forms, programs, ranges, series = cached
        return ClosedPart(forms, programs, frozenset(), ranges, series=MappingProxyType(series))
    from .verify import decide_ranges, small_q_series, verdicts
    from .verify import programs as compile_form

    found = verdicts(act)
    forms = {name: v.form if v.status in ("verified", "preferred") else None for name, v in found.items()}
    preferred = frozenset(name for name, v in found.items() if v.status == "preferred")
    programs = {name: compile_form(act, name) for name in MOMENTS}
    ranges = {name: decide_ranges(programs[name], preferred=name in preferred) for name in MOMENTS
              if programs[name] is not None}
    notes = {name: v.reason for name, v in found.items() if v.status in ("rejected", "preferred", "skipped")}
    series = small_q_series(act, ranges)
    return ClosedPart(forms, programs, preferred, ranges, MappingProxyType(notes), MappingProxyType(series))


def closed_form_notes(act: Activation) -> dict[str, str]:
    """{moment: reason} for each form of ``act`` rejected, preferred over quadrature or skipped by a budget.

    From the compiled entry when there is one (a formula loaded from the disk cache needs no sympy for this).
    """
    key = compile_key(act)
    if key is not None:
        with _COMPILED_LOCK:
            entry = _COMPILED.get(key)
        if entry is not None and entry.closed is not None:
            return dict(entry.closed.notes)
    from .verify import verdicts

    return {name: v.reason for name, v in verdicts(act).items() if v.status in ("rejected", "preferred", "skipped")}


# -- the disk cache: user formulas and registry names with other parameters ------------------------------------------
def _disk_name(spec: str, params: Mapping[str, Any], budgets: Any) -> str | None:
    """The disk entry's file name for ``spec`` with ``params`` as the caller gave them; None if not stored."""
    content = _content_key(spec, params)
    if content is None:
        return None
    from ._cache import disk_key

    return disk_key(content, budgets)


def _disk_prepared(spec: str, params: Mapping[str, Any]) -> Prepared | None:
    """The prepared activation from its disk entry (no sympy), or None if there is none or it is unusable."""
    from ._cache import cache_directory

    if cache_directory() is None:
        return None
    try:
        name = _disk_name(spec, params, _budgets())
    except SymbolicBudgetError:
        return None
    if name is None:
        return None
    from ._cache import load_activation, load_closed, load_integrand, read_entry

    stored = read_entry(name)
    if stored is None:
        return None
    try:
        act = load_activation(stored["activation"])
        ig = load_integrand(stored["integrand"])
        forms, programs, ranges, series = load_closed(stored["closed_forms"])
        preferred = frozenset(stored["preferred"])
        notes = {str(k): str(v) for k, v in stored["notes"].items()}
        centre = float(stored["integrand"]["centre"])
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):  # a damaged entry: rebuilt by the caller
        return None
    key = compile_key(act)
    entry = None if key is None else _compiled_entry(key)
    part = (ig, centre, MappingProxyType({}))
    if entry is not None:
        if entry.float_part is None:
            entry.float_part = part
        if entry.closed is None:
            entry.closed = ClosedPart(forms, programs, preferred, ranges, MappingProxyType(notes),
                                      MappingProxyType(series))
        part = entry.float_part
    return Prepared(act, *part, entry)


def _store(entry: Compiled, prepared: Prepared) -> None:
    """Write the compiled activation to the disk cache (quietly nothing when that is not possible)."""
    from ._cache import activation_entry, cache_directory, closed_entry, integrand_entry, write_entry

    name, entry.disk_key = entry.disk_key, ""  # written at most once per entry
    if not name or cache_directory() is None:
        return
    act, ig, centre, infinite = prepared[:4]
    closed = entry.closed
    stored_act = activation_entry(act)
    if stored_act is None or infinite or act.jumps:
        return
    data = {
        "activation": stored_act,
        "integrand": integrand_entry(ig, centre),
        "closed_forms": closed_entry(closed.forms, closed.programs, closed.ranges, closed.series),
        "preferred": sorted(closed.preferred),
        "notes": dict(closed.notes),
    }
    write_entry(name, data)
