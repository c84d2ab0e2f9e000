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
    if np.any(q < _SMALLEST_NORMAL):  # subnormal: fewer than 53 bits, so no value could carry a 1e-13 bar
        raise VarianceError(f"variance q = {q[q < _SMALLEST_NORMAL].ravel()[0]:g} is subnormal; in double precision "
                            f"q must be >= {_SMALLEST_NORMAL:.4g} (method=\"high_precision\" takes any q > 0)")
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


def _prepare(activation, method: str, params: dict) -> tuple[Activation, Any, Any, dict]:
    """The activation, its integrand for the four moments, the centre c, and which moments are infinite.

    The last is {label: :class:`~gainderive.singular.Infinite`} from :func:`gainderive.singular.analyse`,
    decided from the formula before any backend runs; the registry's cached activations have none.  When it
    is not empty the integrand is returned as {label: h}, to be compiled for the moments that are finite.
    """
    if isinstance(activation, str) and not params and method != "high_precision":
        from ._cache import lookup

        cached = lookup(activation.strip())
        if cached is not None:
            return (*cached, {})
    from .integrand import integrand
    from .registry import activation as make_activation
    from .singular import analyse

    act = make_activation(activation, **params)
    functions, c = moment_functions(act)
    infinite = analyse(act, functions)
    return act, (functions if infinite else integrand(act, functions)), c, infinite


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
    act, ig, _, infinite = _prepare(activation, method, params)
    options = {"digits": digits, "samples": samples, "seed": seed, "rtol": rtol, "progress": progress}
    with _working_precision(method, digits, variance) as (q, digits):
        options["digits"] = digits
        if infinite:
            from .singular import raise_if_infinite

            raise_if_infinite(infinite, [label for label in ig if label != _DERIVATIVE], q, act.name)
        try:
            if infinite:
                mean, second, derivative, *centred = _singular_moments(act, ig, infinite, q, method, options)
            else:
                mean, second, derivative, *centred = _run(ig, q, method, options)
        except (ConvergenceError, DivergenceError) as exc:
            if method not in ("auto", "closed_form", "quadrature"):
                raise
            if method != "quadrature" and not infinite and isinstance(exc, ConvergenceError):
                covered = _closed_forms_alone(act, q, rtol or 1e-13)
                if covered is not None:  # sin at q = 1e8: too oscillatory for panels, exact in closed form
                    return covered
            return _resolve_singularity(act, q, params, exc)
        variance_f = _variance(mean, *(centred or (second, None)))
        result = Moments(act, q, mean, second, derivative, variance_f, digits=digits)
    if method in ("auto", "closed_form"):
        result = _with_closed_forms(result, rtol or 1e-13)
        if np.any(np.isinf(np.asarray(derivative.value, dtype=float))):  # a closed form never replaces an infinity
            result = replace(result, derivative_second_moment=derivative)
    return result


def _closed_forms_alone(act: Activation, q: Any, rtol: float) -> Moments | None:
    """The moments from verified closed forms alone, where quadrature failed; None unless every one is covered."""
    shape = np.shape(q)
    missing = Estimate(np.full(shape, np.nan)[()], np.full(shape, np.inf)[()], "none")
    m = _with_closed_forms(Moments(act, q, missing, missing, missing, missing), rtol)
    if all(e.method == "closed_form" and np.all(np.isfinite(e.value)) for _, e in m):
        return m
    return None


_DERIVATIVE = "f'(z)^2"
_FALLBACK_DIGITS = 20
_FALLBACK_LIMIT = 32


def _resolve_singularity(act: Activation, q: Any, params: dict, failure: GainDeriveError) -> Moments:
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


def _with_closed_forms(m: Moments, rtol: float) -> Moments:
    """Replace each moment by its verified closed form where that is at least as accurate at every q.

    A form that won arbitration against quadrature (high precision sided with it) replaces quadrature wherever
    it evaluates to a finite number: there quadrature's own error bar was shown not to hold.
    """
    cached = m.activation.__dict__.get("_closed_forms")  # set by the registry cache: no sympy needed
    preferred: set[str] = set()
    if cached is not None:
        forms, programs = cached
    else:
        from .gaussian_rules import programs as compile_form
        from .gaussian_rules import verdicts

        found = verdicts(m.activation)
        forms = {name: v.form if v.status in ("verified", "preferred") else None for name, v in found.items()}
        preferred = {name for name, v in found.items() if v.status == "preferred"}
        programs = {name: compile_form(m.activation, name) for name in MOMENTS}
    from .closed_form import evaluate

    better = {}
    for name in MOMENTS:
        if programs.get(name) is None:
            continue
        value, error = evaluate(*programs[name], m.q)
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
    elif isinstance(variance, np.floating):  # float16/32/longdouble: the decimal it prints as in its own type
        variance = np.format_float_scientific(variance, unique=True, trim="-")
    elif isinstance(variance, (int, np.integer)) and not isinstance(variance, bool):
        variance = str(int(variance))
    return check_variance(variance if isinstance(variance, (str, mp.mpf)) else check_variance(variance, scalar=True))


def _variance(mean: Estimate, centred: Estimate, shifted: Estimate | None) -> Estimate:
    """Var f = E[(f - c)^2] - (E[f - c])^2, with the errors propagated to first order (plus the square).

    ``shifted`` is E[f - c] integrated directly (None when c = 0, where it is E[f] itself).
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
    error = np.asarray(centred.error) + 2 * np.abs(d) * d_error + d_error**2
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
        raise FormulaError(f"h may use f, df (the derivative) and x only; got {', '.join(sorted(extra))}")
    expr = expr.subs({sp.Symbol(n, real=True): v for n, v in (("f", F), ("df", DF))})
    functions = {str(h): expr}
    ig = integrand(act, functions)
    options = {"digits": digits, "samples": samples, "seed": seed, "rtol": rtol}
    with _working_precision(method, digits, variance) as (q, digits):
        raise_if_infinite(analyse(act, functions), functions, q, act.name)
        return _run(ig, q, method, {**options, "digits": digits})[0]
