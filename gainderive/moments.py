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

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import mpmath as mp
import numpy as np

from .errors import FormulaError, GainDeriveError, VarianceError
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


def check_variance(variance: Any, *, scalar: bool = False) -> Any:
    """Validate q: finite and > 0 (a number, or an array unless ``scalar``)."""
    if isinstance(variance, bool):
        raise VarianceError(f"variance q must be a finite number > 0, got {variance!r}")
    if isinstance(variance, (mp.mpf, str)):
        try:
            value = mp.mpf(variance)  # at the caller's working precision: decimal strings stay exact there
        except (ValueError, TypeError):
            raise VarianceError(f"variance q must be a finite number > 0, got {variance!r}") from None
        if not (mp.isfinite(value) and value > 0):
            raise VarianceError(f"variance q must be a finite number > 0, got {variance!r}")
        return value
    try:
        q = np.asarray(variance, dtype=float)
    except (TypeError, ValueError):
        raise VarianceError(f"variance q must be a finite number > 0, got {variance!r}") from None
    if scalar and q.ndim:
        raise VarianceError("the high-precision backend takes one variance q at a time")
    if q.size == 0 or not np.all(np.isfinite(q)) or not np.all(q > 0):
        bad = q[~(np.isfinite(q) & (q > 0))] if q.size else q
        shown = bad.ravel()[0] if bad.size else "an empty array"
        raise VarianceError(f"variance q must be finite and > 0; got {shown}")
    return q[()] if q.ndim == 0 else q


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
    raise GainDeriveError(f"unknown method {method!r}; accepted: {', '.join(METHODS)}")


def _only(options: dict, *names: str) -> dict:
    return {k: v for k, v in options.items() if k in names and v is not None}


def moment_functions(act: Activation) -> tuple[dict[str, sp.Expr], sp.Expr]:
    """The integrands h of E[h] that the four moments need, and the centre c = f(0) they use.

    c keeps Var f = E[(f - c)^2] - (E f - c)^2 well conditioned; it is 0 where f(0) is not finite,
    and when c = 0 the centred integrand is f^2 itself.
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
    return functions, c


def _prepare(activation, method: str, params: dict) -> tuple[Activation, Any, Any]:
    """The activation, its integrand for the four moments, and the centre c."""
    if isinstance(activation, str) and not params and method != "high_precision":
        from ._cache import lookup

        cached = lookup(activation.strip())
        if cached is not None:
            return cached
    from .integrand import integrand
    from .registry import activation as make_activation

    act = make_activation(activation, **params)
    functions, c = moment_functions(act)
    return act, integrand(act, functions), c


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

    Raises :class:`DiracDerivativeError` if f jumps (E[f'^2] is infinite).
    """
    act, ig, c = _prepare(activation, method, params)
    options = {"digits": digits, "samples": samples, "seed": seed, "rtol": rtol, "progress": progress}
    with _working_precision(method, digits, variance) as (q, digits):
        mean, second, derivative, *centred = _run(ig, q, method, {**options, "digits": digits})
        variance_f = _variance(mean, centred[0] if centred else second, c)
        result = Moments(act, q, mean, second, derivative, variance_f, digits=digits)
    if method in ("auto", "closed_form"):
        result = _with_closed_forms(result, rtol or 1e-13)
    return result


def _with_closed_forms(m: Moments, rtol: float) -> Moments:
    """Replace each moment by its verified closed form where that is at least as accurate at every q."""
    cached = m.activation.__dict__.get("_closed_forms")  # set by the registry cache: no sympy needed
    if cached is not None:
        forms, programs = cached
    else:
        from .gaussian_rules import programs as compile_form
        from .gaussian_rules import verified_forms

        forms = verified_forms(m.activation)
        programs = {name: compile_form(m.activation, name) for name in MOMENTS}
    from .closed_form import evaluate

    better = {}
    for name in MOMENTS:
        if programs.get(name) is None:
            continue
        value, error = evaluate(*programs[name], m.q)
        quadrature = getattr(m, name)
        if np.all(np.isfinite(value)) and np.all(error <= np.maximum(rtol * np.abs(value), quadrature.error)):
            better[name] = Estimate(value[()], error[()], "closed_form")
    return replace(m, closed_forms=forms, **better)


DEFAULT_DIGITS = 40
_GUARD = 10


@contextmanager
def _working_precision(method: str, digits: int | None, variance: Any) -> Iterator[tuple[Any, int | None]]:
    """Yield (q, digits): validated q; for high precision, inside mpmath's working precision with q exact at it."""
    if method != "high_precision":
        yield check_variance(variance), None
        return
    digits = digits or DEFAULT_DIGITS
    with mp.workdps(digits + _GUARD):
        yield _exact_variance(variance), digits


def _exact_variance(variance: Any) -> mp.mpf:
    """q at the current mpmath precision; a float means the decimal it prints as (0.1 is 1/10)."""
    if isinstance(variance, float):  # np.float64 included: its repr() is not a plain decimal in numpy 2
        variance = repr(float(variance))
    elif isinstance(variance, (int, np.integer)) and not isinstance(variance, bool):
        variance = str(int(variance))
    return check_variance(variance if isinstance(variance, (str, mp.mpf)) else check_variance(variance, scalar=True))


def _variance(mean: Estimate, centred: Estimate, c: sp.Expr) -> Estimate:
    """Var f = E[(f - c)^2] - (E f - c)^2, with the errors propagated to first order (plus the square)."""
    if mean.method == "high_precision":  # runs inside the caller's working precision
        import sympy as sp

        cc = mp.mpf(str(sp.N(c, mp.mp.dps + 5))) if c != 0 else mp.mpf(0)
        d = mean.value - cc
        return Estimate(centred.value - d * d, centred.error + 2 * abs(d) * mean.error + mean.error**2, mean.method)
    d = np.asarray(mean.value) - float(c)
    value = np.asarray(centred.value) - d * d
    error = np.asarray(centred.error) + 2 * np.abs(d) * np.asarray(mean.error) + np.asarray(mean.error) ** 2
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

    >>> round(float(expectation("relu", "df**4", 2.0).value), 12)
    0.5
    """
    import sympy as sp

    from .formula import parse_formula
    from .integrand import DF, F, integrand
    from .registry import activation as make_activation

    act = make_activation(activation, **params)
    if isinstance(h, str):
        expr = parse_formula(h)
    elif isinstance(h, sp.Basic):
        expr = h
    else:
        raise FormulaError(f"h must be a formula string or a sympy expression, got {type(h).__name__}")
    extra = {s.name for s in expr.free_symbols} - {"f", "df", "x"}
    if extra:
        raise FormulaError(f"h may use f, df (the derivative) and x only; got {', '.join(sorted(extra))}")
    expr = expr.subs({sp.Symbol(n, real=True): v for n, v in (("f", F), ("df", DF))})
    ig = integrand(act, {str(h): expr})
    options = {"digits": digits, "samples": samples, "seed": seed, "rtol": rtol}
    with _working_precision(method, digits, variance) as (q, digits):
        return _run(ig, q, method, {**options, "digits": digits})[0]
