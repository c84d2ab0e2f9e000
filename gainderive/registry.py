"""The registry of named activations, and :func:`activation` to build any activation.

Each entry is a formula in the same whitelist language users write, with
parameter defaults and the paper it comes from.  Names and parameter names
follow PyTorch (``torch.nn.functional``) where PyTorch has the activation.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import replace
from functools import cache
from numbers import Real
from typing import TYPE_CHECKING

from .activation import _ALIASES, REGISTRY, Activation, _condition, parse_activation_formula
from .errors import FormulaError, ParameterError, UnknownActivationError

if TYPE_CHECKING:  # the parser and sympy load on first use: listing the registry needs neither
    import sympy as sp

    from .suggest import Call

__all__ = ["REGISTRY", "activation", "build", "parse_activation_formula", "registry_names"]

def registry_names() -> list[str]:
    """Registry names in registry order (aliases excluded)."""
    return list(REGISTRY)


_ACCEPTED = "a real number (int, float, numpy integer or float, Fraction, Decimal, sympy number, or text like '1/3')"


def _parameter_value(name: str, value: object) -> sp.Expr:
    """A parameter value as an exact sympy number.

    Integers, :class:`fractions.Fraction` and :class:`decimal.Decimal` keep their
    exact value.  A binary float means the shortest decimal that round-trips *in
    its own type* -- the decimal the user typed and numpy prints: ``0.1`` is
    1/10 and ``np.float32(0.2)`` is 1/5 (its binary value 13421773/67108864 is
    what a float32 tensor holds, but nobody writes that number), the same rule
    for float16, float32, float64, long double, mpmath and sympy floats at their
    own precision.  Strings are formulas without ``x`` (``"1/3"``,
    ``"sqrt(2)"``), exact.  Complex, non-finite and non-numeric values raise
    :class:`ParameterError`.
    """
    from .formula import parse_formula

    number = _exact_number(name, value)
    if number is None and isinstance(value, str):
        try:
            number = parse_formula(value)
        except FormulaError as exc:
            raise ParameterError(f"parameter {name}={value!r} is not a number ({exc})") from None
    if number is None:
        raise ParameterError(f"parameter {name} must be {_ACCEPTED}; got {_type_name(value)}")
    if number.free_symbols or not number.is_real or not number.is_finite:
        raise ParameterError(f"parameter {name}={value!r} must be a finite real number (e.g. 0.5, 1/3, sqrt(2))")
    return number


def _type_name(value: object) -> str:
    import numpy as np

    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape}"
    return f"{value!r} ({type(value).__name__})"


def _exact_number(name: str, value: object) -> sp.Expr | None:
    """``value`` as an exact sympy number, or None for strings and types that are not real numbers."""
    from decimal import Decimal
    from numbers import Rational

    import mpmath as mp
    import numpy as np
    import sympy as sp

    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]  # a 0-d array is its scalar, with its own dtype
    if isinstance(value, (bool, np.bool_, str)):
        return None
    if isinstance(value, sp.Basic):
        if isinstance(value, sp.Float):
            with mp.workprec(value._prec):  # mpf() rounds to the working precision
                return _from_binary(name, mp.mpf(value._mpf_), value._prec)
        return value
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ParameterError(f"parameter {name} must be finite, got {value!r}")
        return sp.Rational(*value.as_integer_ratio())
    if isinstance(value, Rational):  # int, numpy integers, Fraction: exact
        return sp.Rational(int(value.numerator), int(value.denominator))
    if isinstance(value, np.floating):  # float16 .. longdouble, float64 included
        if not np.isfinite(value):
            raise ParameterError(f"parameter {name} must be finite, got {value!r}")
        return sp.Rational(np.format_float_scientific(value, unique=True, trim="-"))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ParameterError(f"parameter {name} must be finite, got {value!r}")
        return sp.Rational(repr(value))
    if isinstance(value, mp.mpf):  # its precision: at least the working one, at least its mantissa's bits
        bits = int(abs(value.man)).bit_length() if mp.isfinite(value) else 0
        return _from_binary(name, value, max(mp.mp.prec, bits))
    if isinstance(value, Real):  # any other real type: the double it converts to
        return _exact_number(name, float(value))
    return None


def _from_binary(name: str, value, prec: int) -> sp.Expr:
    """The shortest decimal that rounds to ``value`` at ``prec`` bits (mpmath and sympy floats)."""
    import mpmath as mp
    import sympy as sp

    if not mp.isfinite(value):
        raise ParameterError(f"parameter {name} must be finite, got {value}")
    if value == 0:
        return sp.S.Zero
    with mp.workprec(prec):
        target = +value
        for digits in range(1, int(prec * math.log10(2)) + 3):
            text = mp.nstr(target, digits, min_fixed=1, max_fixed=0)  # scientific, exact digits
            if mp.mpf(text) == target:
                return sp.Rational(text)
    mantissa, exponent = target.man_exp  # unreachable: prec*log10(2) + 2 digits always round-trip
    return sp.Integer(mantissa) * sp.Integer(2) ** exponent


def _check_constraints(act: Activation) -> None:
    import sympy as sp

    from .formula import parameter_symbol

    values = {parameter_symbol(k): v for k, v in act.params.items()}
    for text in act.constraints:
        cond = _condition(text).subs(values)
        if cond is not sp.true and cond != sp.true:
            shown = ", ".join(f"{k}={float(v):g}" for k, v in act.params.items())
            raise ParameterError(f"{act.name} requires {text}; got {shown}")


@cache
def _registry_activation(name: str, items: tuple[tuple[str, sp.Expr], ...]) -> Activation:
    from ._structure import exact

    entry = REGISTRY[name]
    params = {k: exact(v) for k, v in entry.params.items()}
    params.update(items)
    act = replace(entry, params=params)
    _check_constraints(act)
    return act


@cache
def _formula_activation(text: str, items: tuple[tuple[str, sp.Expr], ...]) -> Activation:
    """A user formula with its parameters bound (names already checked by :func:`_check_formula_names`)."""
    import sympy as sp

    from .formula import parameter_symbol

    parsed = parse_activation_formula(text)
    given = dict(items)
    values = {parameter_symbol(k): v for k, v in given.items()}
    for cond in parsed.conditions:
        if cond.subs(values, simultaneous=True) is not sp.true:
            shown = ", ".join(f"{k}={float(v):g}" for k, v in given.items())
            raise ParameterError(f"the formula requires {cond} (a registry activation's parameter range); got {shown}")
    return Activation(name=text, formula=text, params=given, reference="user formula")


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Words joined by hyphens or spaces (``leaky-relu``, ``Leaky ReLU``): a name, not a formula, when it is close
#: to a registry name -- as a formula ``leaky - relu`` it would only fail with "'relu' is a function".
_SPACED_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[-\s]+[A-Za-z0-9]+)+$")
#: An identifier in formula text (to write a formula's stray variable name as x).
_WORD = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\b")


def _check_formula_names(text: str, given: Mapping[str, object], call: Call | None) -> None:
    """Every free name of the formula bound, and nothing else given: one-line ParameterErrors otherwise.

    The formula's variable is x: a formula without x whose only unbound name is another (``z*sigmoid(z)``,
    ``X``, ``input``) gets "the variable is x" with the formula rewritten, rather than "unbound parameter z".
    """
    from .suggest import unknown_parameters

    parsed = parse_activation_formula(text)
    free = {s.name for s in parsed.expression.free_symbols}
    has_x = "x" in free
    free.discard("x")
    unknown = {k: v for k, v in given.items() if k not in free}
    if unknown:
        raise ParameterError(unknown_parameters(f"formula {_short(text)}", unknown, sorted(free), call=call))
    missing = sorted(free - set(given))
    if len(missing) == 1 and not has_x:
        name = missing[0]
        rewritten = _WORD.sub(lambda m: "x" if m[0] == name else m[0], text)
        raise ParameterError(f"formula {_short(text)} has no x and leaves {name} unbound; the variable is x: write "
                             f"{rewritten} (or, if {name} is a parameter, bind it as keyword arguments: {name}=VALUE)")
    if missing:
        hint = ", ".join(f"{m}=VALUE" for m in missing)
        raise ParameterError(f"formula has unbound parameter(s) {', '.join(missing)}; bind them as keyword "
                             f"arguments: {hint}")


def _short(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _unknown_name(key: str) -> UnknownActivationError:
    from .suggest import VARIABLE_NAMES, accepted, did_you_mean

    names = registry_names()
    if key in VARIABLE_NAMES:
        return UnknownActivationError(f"unknown activation {key!r}; the variable of a formula is x: write x (or the "
                                      "name identity)")
    hint = did_you_mean(key, [*names, *_ALIASES])
    return UnknownActivationError(f"unknown activation {key!r}{accepted(hint, names)}, or a formula in x "
                                  "(`gainderive list` describes each name)")


def _merged_parameters(act: Activation, params: Mapping[str, object]) -> dict[str, object]:
    """An activation's own parameter values, with ``params`` replacing the ones it names."""
    return {**act.params, **params}


def activation(spec: str | Activation, **params: object) -> Activation:
    """Build an activation from a registry name, an alias, or a formula in ``x``.

    >>> activation("elu", alpha=2).params["alpha"]
    2
    >>> activation("x*sigmoid(1.702*x)").breakpoints
    ()

    Given an :class:`Activation`, ``params`` replace the values of the parameters they name and the others keep
    the activation's values.  Names are exact: ``Relu``, ``gleu`` and ``leaky-relu`` are refused with a
    did-you-mean, not mapped silently, since case matters inside formulas (``Phi`` is a function, ``phi`` a
    parameter).  Unknown names and parameters raise :class:`UnknownActivationError` or :class:`ParameterError`
    (with the closest name, and the API keyword meant when a parameter is one, e.g. ``q`` for ``variance``);
    formulas outside the whitelist raise :class:`FormulaError`.
    """
    return build(spec, params)


def build(spec: str | Activation, params: Mapping[str, object], *, call: Call | None = None) -> Activation:
    """:func:`activation`, with ``call`` describing the API function that received ``params``.

    ``call`` only improves the message for a parameter that is really one of that function's keywords
    (``gain("gelu", q=2)``: "the input variance q is variance=2 (gain(activation, variance, mode, method,
    **params))").
    """
    if isinstance(spec, Activation):
        if not params:
            return spec
        params = _merged_parameters(spec, params)
        spec = spec.name if spec.name in REGISTRY else spec.formula
    if not isinstance(spec, str):
        raise FormulaError(f"an activation is a registry name or a formula string, got {type(spec).__name__}")
    key = spec.strip()
    key = _ALIASES.get(key, key)
    if key in REGISTRY:
        from .suggest import unknown_parameters

        entry = REGISTRY[key]
        unknown = {k: v for k, v in params.items() if k not in entry.params}
        if unknown:
            raise ParameterError(unknown_parameters(key, unknown, entry.params, call=call))
        values = {name: _parameter_value(name, v) for name, v in params.items()}
        return _registry_activation(key, tuple(sorted(values.items())))
    if _IDENTIFIER.match(key) and key != "x":
        raise _unknown_name(key)
    if _SPACED_NAME.match(key) and "x" not in re.split(r"[-\s]+", key):
        from .suggest import closest, fold

        match = closest(key, [*REGISTRY, *_ALIASES])
        if match is not None and (fold(match) == fold(key) or len(fold(key)) >= 6):  # "a - b" is no "abs"
            raise _unknown_name(key)
    _check_formula_names(key, params, call)
    values = {name: _parameter_value(name, v) for name, v in params.items()}
    return _formula_activation(key, tuple(sorted(values.items())))
