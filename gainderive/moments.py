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

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from decimal import Decimal
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import mpmath as mp
import numpy as np

# the compile step, re-exported: tests and tools import these names from here
from .compile import (  # noqa: F401
    COMPILE_CACHE_SIZE,
    ClosedPart,
    Compiled,
    Prepared,
    _closed_part,
    _compiled_entry,
    _derive_closed_part,
    _exact_key,
    _normalised_formula,
    _prepare,
    _symbolic_part,
    clear_compile_cache,
    compile_cache_info,
    compile_key,
    moment_functions,
)
from .errors import ConvergenceError, DivergenceError, FormulaError, GainDeriveError, VarianceError
from .estimate import Estimate
from .verify import combine_variance as _variance

if TYPE_CHECKING:  # sympy and the symbolic layer load on first use; a cached registry activation needs neither
    import sympy as sp

    from .activation import Activation
    from .integrand import Integrand

__all__ = ["METHODS", "MOMENTS", "Moments", "expectation", "moments"]

#: The moment names, in the order they are reported.
MOMENTS = ("mean", "second_moment", "derivative_second_moment", "variance")
#: Backends a computation can use.  "auto" takes, q by q, a verified closed form where one exists and is at least
#: as accurate as quadrature there, quadrature otherwise; "closed_form" is the same, named explicitly.
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

    # -- notebook display: IPython calls these two (nothing here imports it) ----------------------------------
    def _form(self, name: str) -> Any:
        """The verified closed form of moment ``name`` if it answered (at every q, or at some q of a grid)."""
        form = self.closed_forms.get(name)
        return form if form is not None and getattr(self, name).method == "closed_form" else None

    def _repr_html_(self) -> str:
        r"""HTML for Jupyter: per moment the value +- error, the method and, where one answered, the closed form.

        Closed forms are their LaTeX between ``\( \)`` (the notebook's MathJax renders them).  For a grid of q,
        the first and last :data:`~gainderive._display.DISPLAY_ROWS` q with an ellipsis row between, so the
        text is bounded whatever the grid.  Every string is HTML-escaped: names and formulas are user input.
        """
        from ._display import (
            _ERROR_NOTE,
            _LABELS,
            _activation_title,
            _at,
            _error,
            _finite,
            _html,
            _html_cell,
            _html_table,
            _number,
            _rows_note,
            _shown_rows,
        )

        title = _activation_title(self.activation, html=True) + "; z ~ N(0, q)"
        precision = f"; {self.digits} digits" if self.digits is not None else ""
        forms = {name: self._form(name) for name in MOMENTS}
        shape = np.shape(self.q)
        if not shape:
            rows = [[_LABELS[name][0], _html(_number(est.value, self.digits)),
                     _html(_error(est.error)) if _finite(est.value) else "", _html(est.method),
                     "" if forms[name] is None else _html(rf"\({forms[name].latex}\)")]
                    for name, est in self]
            table = _html_table(["moment", "value", "&plusmn; error", "method", "closed form"], rows, 0)
            title += f", q = {_html(_number(self.q, self.digits))}{precision}"
        else:
            n = math.prod(shape)
            title += (f"; {n:,} values of q from {_html(_number(np.min(self.q)))} to "
                      f"{_html(_number(np.max(self.q)))}")
            head = [["method", *(_html(est.method) for _, est in self)]]
            if any(forms.values()):
                head.append(["closed form", *("" if f is None else _html(rf"\({f.latex}\)") for f in forms.values())])
            rows = [None if i is None else
                    [_html(_number(_at(self.q, shape, i))),
                     *(_html_cell(_at(est.value, shape, i), _at(est.error, shape, i)) for _, est in self)]
                    for i in _shown_rows(n)]
            table = _html_table(["q", *(_LABELS[name][0] for name in MOMENTS)], rows,
                                n - sum(row is not None for row in rows), head=head)
            note = _rows_note(n)
            title += f"{precision}" + (f" ({note})" if note else "")
        return (f'<div class="gainderive-moments">\n<p>{title}</p>\n{table}\n<p><small>{_ERROR_NOTE}</small></p>\n'
                "</div>")

    def _repr_latex_(self) -> str:
        """LaTeX for Jupyter: each moment as its closed form (where one answered) = value \\pm error, and the method.

        For a grid of q, the closed forms (or methods) with the largest error bar, then an array of the first and
        last :data:`~gainderive._display.DISPLAY_ROWS` q.  Names, formulas and methods are escaped
        (:func:`~gainderive._display._latex_text`); closed forms are their own LaTeX.
        """
        from ._display import (
            _LABELS,
            _activation_title,
            _at,
            _error,
            _latex_array,
            _latex_cell,
            _latex_display,
            _latex_number,
            _latex_text,
            _number,
            _rows_note,
            _shown_rows,
        )

        title = _activation_title(self.activation, html=False) + r",\quad z \sim \mathcal{N}(0, q)"
        precision = rf",\quad \text{{{self.digits} digits}}" if self.digits is not None else ""
        shape = np.shape(self.q)
        lines = []
        for name, est in self:
            form = self._form(name)
            equals = f" = {form.latex}" if form is not None else ""
            if shape:
                values, errors = np.asarray(est.value, dtype=float), np.asarray(est.error, dtype=float)
                finite = np.isfinite(values)
                bar = (rf",\ \text{{error}} \le {_latex_number(_error(np.max(errors[finite])))}"
                       if finite.any() else "")
                lines.append(rf"{_LABELS[name][1]} &{equals} && {_latex_text(est.method)}{bar}")
            else:
                lines.append(rf"{_LABELS[name][1]} &{equals} = {_latex_cell(est.value, est.error, self.digits)} && "
                             rf"{_latex_text(est.method)}")
        block = r"\begin{aligned}" + "\n" + " \\\\\n".join(lines) + "\n" + r"\end{aligned}"
        if not shape:
            title += rf",\quad q = {_latex_number(_number(self.q, self.digits))}{precision}"
            return _latex_display([title, block])
        n = math.prod(shape)
        rows = [None if i is None else [_latex_number(_number(_at(self.q, shape, i))),
                                        *(_latex_number(_number(_at(est.value, shape, i))) for _, est in self)]
                for i in _shown_rows(n)]
        array = _latex_array(["q", *(_LABELS[name][1] for name in MOMENTS)], rows)
        note = _rows_note(n)
        return _latex_display([title + precision, block, array, *([rf"\text{{{note}}}"] if note else [])])


_SMALLEST_NORMAL = float(np.finfo(float).tiny)
_LARGEST = float(np.finfo(float).max)
_REAL_KINDS = "fiu"  # numpy dtype kinds taken as q: float, signed and unsigned integer
_FLOATS = (float, np.float64)


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
    if type(variance) in _FLOATS and not exact and _SMALLEST_NORMAL <= variance <= _LARGEST:  # the common case
        return np.float64(variance)
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
    if digits is None:
        return default
    from .limits import check_size, limit

    if isinstance(digits, (bool, np.bool_)) or not isinstance(digits, (int, np.integer)) or digits < MIN_DIGITS:
        raise GainDeriveError(f"digits must be an integer from {MIN_DIGITS} to {limit('digits')}; got {digits!r}")
    return check_size("digits", int(digits))


def _run(ig: Integrand, q: Any, method: str, options: dict) -> tuple[Estimate, ...]:
    """Dispatch to a backend (imported on demand: the CLI pays only for the one it uses)."""
    if method in ("auto", "closed_form", "quadrature"):
        from .backends import quadrature

        rtol = options.get("rtol")
        return quadrature.integrate(ig, q) if rtol is None else quadrature.integrate(ig, q, rtol=rtol)
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

    Closed forms first, per q: for ``auto`` and ``closed_form`` each verified form is evaluated at every q and
    answers where it is *covered* (:func:`_covered`: inside the q-ranges decided at verification, finite, and
    its error bar within rtol |value|); quadrature runs only at the q where some moment is not covered, and
    there each form still replaces quadrature where it is at least as accurate (:func:`_merge_closed_forms`).
    A moment answered by its form at some q and by quadrature at others reports the method ``closed_form``.
    """
    act, ig, _, infinite = prepared[:4]
    prepared = prepared if isinstance(prepared, Prepared) else Prepared(act, ig, prepared[2], infinite)
    rtol = options.get("rtol")
    if method != "high_precision":
        check_digits(options.get("digits"), DEFAULT_DIGITS)  # validated whatever the method
        q = check_variance(variance)
        if method in ("auto", "closed_form") and not infinite:
            return _closed_forms_first(prepared, q, rtol or DEFAULT_RTOL, options)
        return _computed(prepared, q, method, {**options, "digits": None}, rtol)
    with _working_precision(method, options.get("digits"), variance) as (q, digits):
        return _computed(prepared, q, method, {**options, "digits": digits}, rtol)


DEFAULT_RTOL = 1e-13


def _computed(prepared: Prepared, q: Any, method: str, options: dict, rtol: float | None) -> Moments:
    """The moments by the backend of ``method`` at every q, the verified forms merged in for auto/closed_form."""
    act, ig, _, infinite = prepared[:4]
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
        return _resolve_singularity(act, q, exc)
    result = Moments(act, q, mean, second, derivative, _variance(mean, *(centred or (second, None)), second=second),
                     digits=options.get("digits"))
    if method in ("auto", "closed_form"):
        closed = _closed_part(prepared)
        rtol = rtol or DEFAULT_RTOL
        result = _merge_closed_forms(result, rtol, closed, _evaluated(closed, q, rtol))
        if np.any(np.isinf(np.asarray(derivative.value, dtype=float))):  # a closed form never replaces an infinity
            result = replace(result, derivative_second_moment=derivative)
    return result


def _evaluated(closed: ClosedPart, q: Any, rtol: float | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{moment: (value, error)} of each verified form at q, the forms fused into one program (shared terms once).

    :func:`gainderive.closed_form.evaluate_many`: ELU's e^{q/2} Phi(-sqrt q) appears in three of its forms.  A
    grid (a 1-d array) takes :func:`_evaluated_grid`, with ``rtol`` the tolerance the forms must meet there.
    """
    from .closed_form import evaluate_many

    names = [name for name, program in closed.programs.items() if program is not None]
    if not names:
        return {}
    if isinstance(q, np.ndarray) and q.ndim == 1:
        return _evaluated_grid(closed, names, q, rtol or DEFAULT_RTOL)[0]
    evaluated = dict(zip(names, evaluate_many([closed.programs[name] for name in names], q)))
    for name, found in closed.series.items():
        if name in evaluated:
            evaluated[name] = _with_series(found, q, *evaluated[name])
    return evaluated


def _evaluated_grid(closed: ClosedPart, names: list, q: np.ndarray, rtol: float) -> tuple[dict, dict]:
    """({moment: (value, error)}, {moment: covered}) of the verified forms on a grid of q, chunk by chunk.

    The bars are looked up by bin of q (:class:`gainderive.closed_form.BinnedForms`; where one exceeds rtol
    |value| the running bound, tighter, decides: not for a preferred form).  A form that cancels at small q (its
    decided range starts above the bottom of the double range: ELU's mean) is replaced by its small-q series
    (:func:`gainderive.closed_form.evaluate_series`) up to the series' q_max; the forms are evaluated only
    where some moment needs one: above the shortest such series' q_max all of them, below it only those that
    do not cancel.  ``covered`` is :func:`_covered`.  Each chunk of q is evaluated, bounded and checked while in
    cache: at 1e6 q a pass over a whole array costs more than the arithmetic.
    """
    from .closed_form import BIN_CHUNK, BinnedForms, bin_index, evaluate_series

    size = q.size
    index = bin_index(q)
    first, last = int(index.min()), int(index.max())
    series = {name: closed.series[name] for name in names if name in closed.series
              and not _reaches_bottom(closed.ranges.get(name, ()))}
    cut = min((found.q_max for found in series.values()), default=0.0)
    rest = [name for name in names if name not in series]

    def forms(wanted: list) -> BinnedForms | None:
        tolerances = [None if name in closed.preferred else rtol for name in wanted]
        return BinnedForms([closed.programs[name] for name in wanted], first, last, tolerances) if wanted else None

    every, below_cut = forms(names), forms(rest) if series else None
    values = {name: np.empty(size) for name in names}
    errors = {name: np.empty(size) for name in names}
    covered = {name: np.empty(size, dtype=bool) for name in names}
    spans = {name: _spans(closed, name) for name in names}
    for start in range(0, size, BIN_CHUNK):
        part = slice(start, start + BIN_CHUNK)
        qc, ic = q[part], index[part]
        within = {name: covered[name][part] for name in names}  # within the tolerance: then inside the ranges
        if series:
            low, high = _split(qc, cut)
            _run_forms(every, qc, ic, [(values[name][part], errors[name][part]) for name in names],
                       [within[name] for name in names], high)
            if below_cut is not None:
                _run_forms(below_cut, qc, ic, [(values[name][part], errors[name][part]) for name in rest],
                           [within[name] for name in rest], low)
            for name, found in series.items():
                below, _ = _split(qc, found.q_max)
                v, e = evaluate_series(found, qc[below])
                values[name][part][below], errors[name][part][below] = v, e
                within[name][below] = np.isfinite(e) & (True if name in closed.preferred else e <= rtol * np.abs(v))
        else:
            for name, ok in zip(names, every(qc, ic, [(values[name][part], errors[name][part]) for name in names])):
                within[name][...] = ok
        lo, hi = float(qc.min()), float(qc.max())
        for name in names:
            if rtol > _RANGE_RTOL and name not in closed.preferred:
                continue  # a looser tolerance than the ranges were decided at: the bar alone decides
            if not any(a <= lo and hi <= b for a, b in spans[name]):  # the chunk is not inside one range
                within[name] &= _inside(qc, spans[name])
    return {name: (values[name], errors[name]) for name in names}, covered


def _inside(q: np.ndarray, spans: tuple) -> np.ndarray:
    """Where q lies in one of the closed intervals ``spans``."""
    inside = np.zeros(q.shape, dtype=bool)
    for lo, hi in spans:
        inside |= (q >= lo) & (q <= hi)
    return inside


def _run_forms(forms: Any, q: np.ndarray, index: np.ndarray, targets: list, within: list, at: Any) -> None:
    """``forms`` (a BinnedForms) at q[at], written into each (value, error) of ``targets`` and ``within``."""
    if isinstance(at, slice):
        if at.stop > at.start:
            for ok, found in zip(within, forms(q[at], index[at], [(value[at], error[at]) for value, error in targets])):
                ok[at] = found
        return
    if at.size:
        found = [(np.empty(at.size), np.empty(at.size)) for _ in targets]
        for ok, good in zip(within, forms(q[at], index[at], found)):
            ok[at] = good
        for (value, error), (v, e) in zip(targets, found):
            value[at], error[at] = v, e


def _reaches_bottom(spans: tuple) -> bool:
    """Whether a form's decided q-ranges reach down to the smallest q a grid may hold (no series needed there)."""
    return bool(spans) and spans[0][0] <= _RANGE_BOTTOM


def _split(q: np.ndarray, cut: float) -> tuple[Any, Any]:
    """(q <= cut, q > cut) as indices: slices when every q <= cut comes first (an increasing grid), else arrays."""
    above = q > cut
    count = q.size - int(np.count_nonzero(above))
    if not above[:count].any():
        return slice(0, count), slice(count, q.size)
    return np.flatnonzero(~above), np.flatnonzero(above)


def _with_series(series: Any, q: Any, value: Any, error: Any) -> tuple[Any, Any]:
    """(value, error) of a form with its small-q series answering at q <= series.q_max (where the form cancels).

    :func:`gainderive.closed_form.evaluate_series`: Horner's rule in sqrt(q) (or q), with the truncation, Horner
    and coefficient rounding in the bar.
    """
    from .closed_form import evaluate_series

    if np.ndim(value) == 0:
        qf = float(q)
        if not 0.0 <= qf <= series.q_max:
            return value, error
        found = evaluate_series(series, qf)
        return np.float64(found[0]), np.float64(found[1])
    below = q <= series.q_max
    if not below.any():
        return value, error
    value, error = np.array(value, dtype=float), np.array(error, dtype=float)
    if below.all():
        return evaluate_series(series, q)
    value[below], error[below] = evaluate_series(series, q[below])
    return value, error


def _spans(closed: ClosedPart, name: str) -> tuple:
    """The q-ranges where ``name`` answers without quadrature: its form's, and (0, q_max] of its small-q series."""
    spans = closed.ranges.get(name, ())
    series = closed.series.get(name)
    return spans if series is None else ((0.0, series.q_max), *spans)


def _covered(value: Any, error: Any, q: Any, spans: tuple, preferred: bool, rtol: float) -> Any:
    """Where a form answers without quadrature: inside its decided q-ranges, finite, and within rtol |value|.

    A form *preferred* over quadrature needs only be finite there.  A tolerance looser than the one the ranges
    were decided at (:data:`gainderive.verify.RANGE_RTOL`) is met by the error bar alone.
    """
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(value) & np.isfinite(error)
        if not preferred:
            ok = ok & (error <= rtol * np.abs(value))
            if rtol > _RANGE_RTOL:
                return ok
    return ok & _inside(q, spans)


def _covered_scalar(value: Any, error: Any, q: float, spans: tuple, preferred: bool, rtol: float) -> bool:
    """:func:`_covered` at one q, in Python floats (the same comparisons, without numpy's per-call overhead)."""
    value, error = float(value), float(error)
    if not (math.isfinite(value) and math.isfinite(error)):
        return False
    if not preferred:
        if not error <= rtol * abs(value):
            return False
        if rtol > _RANGE_RTOL:
            return True
    return any(lo <= q <= hi for lo, hi in spans)


_RANGE_BOTTOM = 1e-307  # gainderive.verify.RANGE_GRID[0]: a form whose ranges start there needs no series
_RANGE_RTOL = 1e-13  # gainderive.verify.RANGE_RTOL (not imported: verify loads sympy's symbolic layer on use)


def _closed_forms_first(prepared: Prepared, q: Any, rtol: float, options: dict) -> Moments:
    """The moments at q: each verified form where it is covered, quadrature at the q that remain.

    Where quadrature fails (sin at q = 1e8: too oscillatory for panels), the forms answer wherever they are
    finite if that covers every moment at those q; otherwise the high-precision fallback of
    :func:`_resolve_singularity` decides, as when no form exists.
    """
    act = prepared.activation
    closed = _closed_part(prepared)
    scalar = type(q) is np.float64  # check_variance returns one q as a float64, several as an array
    preferred = closed.preferred
    names = [name for name, program in closed.programs.items() if program is not None]
    if scalar or not names or q.ndim != 1:
        evaluated = _evaluated(closed, q, rtol)
    else:
        evaluated, covered = _evaluated_grid(closed, names, q, rtol)
        every = all(c.all() for c in covered.values())
    if scalar:
        covered = {name: _covered_scalar(*evaluated[name], q, _spans(closed, name), name in preferred, rtol)
                   for name in evaluated}
        every = all(covered.values())
    elif not names or q.ndim != 1:
        covered = {name: _covered(*evaluated[name], q, _spans(closed, name), name in preferred, rtol)
                   for name in evaluated}
        every = all(np.all(c) for c in covered.values())
    if every and len(covered) == len(MOMENTS):
        estimates = [Estimate(evaluated[name][0][()], evaluated[name][1][()], "closed_form") for name in MOMENTS]
        return Moments(act, q, *estimates, closed_forms=closed.forms)
    if scalar:
        rest, at = q, None
    else:
        missing = np.zeros(np.shape(q), dtype=bool)
        for name in MOMENTS:
            missing |= ~covered[name] if name in covered else True
        if missing.all():  # no form covers any q (tanh): quadrature's own arrays are the answer, not copies of them
            at, rest = slice(None), q
        else:
            at = np.nonzero(missing)
            rest = q[at]
    try:
        mean, second, derivative, *centred = _run(prepared.integrand, rest, "quadrature", options)
    except (ConvergenceError, DivergenceError) as exc:
        if isinstance(exc, ConvergenceError):
            alone = _closed_forms_alone(act, q, closed, evaluated)
            if alone is not None:
                return alone
        return _resolve_singularity(act, q, exc)
    quad = {"mean": mean, "second_moment": second, "derivative_second_moment": derivative,
            "variance": _variance(mean, *(centred or (second, None)), second=second)}
    out = []
    for name in MOMENTS:
        part = quad[name]
        if name not in evaluated:
            if not scalar and not isinstance(at, slice):
                part = _scatter(part, at, np.shape(q))
            out.append(part)
            continue
        value, error = evaluated[name]
        rest_value, rest_error = (value, error) if scalar else (value[at], error[at])
        if scalar:
            if covered[name]:
                out.append(Estimate(value[()], error[()], "closed_form"))
                continue
            # at the q quadrature answered, the form still replaces it where it is at least as accurate
            use = _better_scalar(float(value), float(error), part, rtol, name in closed.preferred)
            out.append(Estimate(value[()], error[()], "closed_form") if use else part)
            continue
        use = _better(rest_value, rest_error, part, rtol, name in closed.preferred)
        merged_value, merged_error = value.copy(), error.copy()
        merged_value[at] = np.where(use, rest_value, part.value)
        merged_error[at] = np.where(use, rest_error, part.error)
        from_form = covered[name].copy()
        from_form[at] = use
        method = "closed_form" if np.any(from_form) else part.method
        out.append(Estimate(merged_value[()], merged_error[()], method))
    return Moments(act, q, *out, closed_forms=closed.forms)


def _better(value: Any, error: Any, quadrature: Estimate, rtol: float, preferred: bool) -> Any:
    """Where a form is at least as accurate as quadrature's estimate (a preferred form: wherever it is finite)."""
    with np.errstate(invalid="ignore"):
        use = np.isfinite(value) & np.isfinite(error)
        if preferred:
            return use
        return use & (error <= np.maximum(rtol * np.abs(value), quadrature.error))


def _better_scalar(value: float, error: float, quadrature: Estimate, rtol: float, preferred: bool) -> bool:
    """:func:`_better` at one q, in Python floats."""
    if not (math.isfinite(value) and math.isfinite(error)):
        return False
    return preferred or error <= max(rtol * abs(value), float(quadrature.error))


def _scatter(part: Estimate, at: tuple, shape: tuple) -> Estimate:
    """An estimate computed at q[at] only, as a full array (nan with an infinite bar at the other q)."""
    value, error = np.full(shape, np.nan), np.full(shape, np.inf)
    value[at], error[at] = part.value, part.error
    return Estimate(value, error, part.method)


def _closed_forms_alone(act: Activation, q: Any, closed: ClosedPart, evaluated: dict) -> Moments | None:
    """The moments from verified closed forms alone, where quadrature failed; None unless every one is finite."""
    if len(evaluated) < len(MOMENTS):
        return None
    out = []
    for name in MOMENTS:
        value, error = evaluated[name]
        if not np.all(np.isfinite(value) & np.isfinite(error)):
            return None
        out.append(Estimate(value[()], error[()], "closed_form"))
    return Moments(act, q, *out, closed_forms=closed.forms)


def _merge_closed_forms(m: Moments, rtol: float, closed: ClosedPart, evaluated: dict) -> Moments:
    """Replace each moment by its verified closed form at each q where that is at least as accurate.

    A form that won arbitration against quadrature (high precision sided with it) replaces quadrature wherever
    it evaluates to a finite number: there quadrature's own error bar was shown not to hold.
    """
    better = {}
    for name, (value, error) in evaluated.items():
        previous = getattr(m, name)
        use = _better(value, error, previous, rtol, name in closed.preferred)
        if np.all(use):
            better[name] = Estimate(value[()], error[()], "closed_form")
        elif np.any(use):  # per q: the form where it is better, quadrature elsewhere
            keep = np.asarray(previous.value, dtype=float)
            keep_error = np.asarray(previous.error, dtype=float)
            better[name] = Estimate(np.where(use, value, keep)[()], np.where(use, error, keep_error)[()],
                                    "closed_form")
    return replace(m, closed_forms=closed.forms, **better)


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
