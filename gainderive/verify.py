r"""Verification of derived closed forms: each is checked against quadrature before anything uses it.

The symbolic integrator (:mod:`gainderive.gaussian_rules`) derives forms by rules; the float backends
(:mod:`gainderive.backends`) integrate numerically.  This module sits above both and imports neither's callers:
it evaluates a form at 30 digits and compares it with quadrature of the same moment at the q of
:data:`VERIFY_Q` (and at a second parameter point), within ``VERIFY_RTOL`` times the moment's scale plus twice
quadrature's error bar.  Where they disagree, the high-precision backend at 30 digits with the same cuts
arbitrates (:func:`verdicts`).

The moments checked are those :func:`gainderive.moments.moments` reports, E[f], E[f^2], E[f'^2] and
Var f = E[(f - c)^2] - (E[f - c])^2 with c = f(0) (:func:`moment_functions`), so a verified form answers for
exactly the quantity quadrature would have computed.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from .closed_form import ClosedForm, Verdict
from .errors import ConvergenceError, DivergenceError, GainDeriveError
from .estimate import Estimate

if TYPE_CHECKING:
    import sympy as sp

    from .activation import Activation

__all__ = ["RANGE_RTOL", "VERIFY_Q", "VERIFY_RTOL", "closed_forms", "decide_ranges", "moment_functions", "programs",
           "small_q_series", "verdicts", "verified_forms"]

VERIFY_Q = (1e-3, 0.1, 1.0, 10.0, 1e3)
VERIFY_RTOL = 1e-12
#: The error bar, relative to |value|, within which a verified form answers instead of quadrature (its default rtol).
RANGE_RTOL = 1e-13
#: The q at which :func:`decide_ranges` evaluates a form: 8 per decade over the double range.
RANGE_GRID = 10.0 ** np.arange(-307.0, 308.0 + 1e-9, 0.125)
#: The moment names, in the order they are reported.
MOMENTS = ("mean", "second_moment", "derivative_second_moment", "variance")
_DERIVATIVE = "f'(z)^2"
_EPS = float(np.finfo(float).eps)
_FLOATS = (float, np.float64)


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


def combine_variance(mean: Estimate, centred: Estimate, shifted: Estimate | None, *, second: Estimate) -> Estimate:
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
    if type(centred.value) in _FLOATS and type(source.value) in _FLOATS and type(second.value) in _FLOATS:
        # one q: the same operations in the same order on Python floats (numpy scalars cost ~1 us per operation)
        d, d_error, c = float(source.value), float(source.error), float(centred.value)
        delta = 4 * _EPS * math.sqrt(abs(float(second.value)))
        rounding = 2 * math.sqrt(abs(c)) * delta + delta**2
        error = float(centred.error) + 2 * abs(d) * d_error + d_error**2 + rounding
        return Estimate(np.float64(c - d * d), np.float64(error), mean.method)
    # in place: a grid of 1e6 q would otherwise hold a dozen temporaries of its size at once
    d, d_error = np.asarray(source.value, dtype=float), np.asarray(source.error, dtype=float)
    c = np.asarray(centred.value, dtype=float)
    value = np.multiply(d, d)
    np.subtract(c, value, out=value)
    delta = np.abs(np.asarray(second.value, dtype=float))
    np.sqrt(delta, out=delta)
    delta *= 4 * _EPS
    error = np.abs(c)  # then the rounding term 2 sqrt|c| delta + delta^2 = delta (2 sqrt|c| + delta)
    np.sqrt(error, out=error)
    error *= 2
    error += delta
    error *= delta
    del delta
    propagated = np.abs(d)  # 2 |d| d_error + d_error^2 = d_error (2 |d| + d_error)
    propagated *= 2
    propagated += d_error
    propagated *= d_error
    error += propagated
    error += np.asarray(centred.error, dtype=float)
    return Estimate(value[()], error[()], mean.method)


def _as_moments(labels: tuple[str, ...], estimates: tuple[Estimate, ...]) -> dict[str, Estimate]:
    """{moment: estimate} from the estimates of :func:`moment_functions`' integrands (f'^2 possibly left out)."""
    by_label = dict(zip(labels, estimates))
    mean, second = by_label["f(z)"], by_label["f(z)^2"]
    centred = [e for label, e in by_label.items() if label.startswith("(f(z) - ")]
    shifted = [e for label, e in by_label.items() if label.startswith("f(z) - ")]
    out = {"mean": mean, "second_moment": second}
    if _DERIVATIVE in by_label:
        out["derivative_second_moment"] = by_label[_DERIVATIVE]
    out["variance"] = combine_variance(mean, centred[0] if centred else second, shifted[0] if shifted else None,
                                       second=second)
    return out


def _checked_functions(act: Activation, q: Any) -> dict:
    """The integrands of the moments that are finite at q: f'^2 left out when it is infinite (a jump, log|x|).

    An infinite E[f] or E[f^2] at q raises :class:`DivergenceError` (the q is then skipped).
    """
    from .singular import analyse, raise_if_infinite

    functions, _ = moment_functions(act)
    if act.jumps:
        functions.pop(_DERIVATIVE)
    infinite = analyse(act, functions)
    raise_if_infinite(infinite, [label for label in functions if label != _DERIVATIVE], q, act.name)
    verdict = infinite.get(_DERIVATIVE)
    if verdict is not None and np.any(verdict.at(q)):
        functions.pop(_DERIVATIVE)
    return functions


def _reference(act: Activation, q: float) -> dict:
    """Quadrature's moments at one q; without the derivative moment where it is infinite (when f jumps).

    Where double-precision quadrature fails at an integrable singularity (log|x| at 0), the high-precision backend
    at 20 digits answers instead, rounded to float64 with the rounding in its bar, as :func:`gainderive.moments`
    itself does.
    """
    from .backends import quadrature
    from .integrand import integrand

    functions = _checked_functions(act, q)
    ig = integrand(act, functions)
    try:
        return _as_moments(ig.labels, quadrature.integrate(ig, q))
    except (ConvergenceError, DivergenceError):
        from .singular import integrable_singularities

        if not integrable_singularities(act, functions):
            raise
    import mpmath as mp

    from .backends import high_precision

    with mp.workdps(30):
        estimates = high_precision.integrate(ig, mp.mpf(repr(float(q))), digits=20)
    rounded = tuple(Estimate(float(e.value), float(e.error) + abs(float(e.value)) * 2.0**-53, "high_precision")
                    for e in estimates)
    return _as_moments(ig.labels, tuple(Estimate(e.value, e.error, "quadrature") for e in rounded))


def _values(act: Activation) -> dict:
    from ._structure import exact
    from .formula import parameter_symbol

    return {parameter_symbol(k): exact(v) for k, v in act.params.items()}


def programs(act: Activation, moment: str):
    """The numpy program of a verified closed form, or None.

    It evaluates the stable rewrite in one piece (so k e^u - k becomes expm1); its running error bound
    (:meth:`~gainderive.evaluate.Program.bounded`) needs nothing else.
    """
    from .closed_form import Q
    from .evaluate import Program
    from .gaussian_rules import stable

    form = verified_forms(act).get(moment)
    if form is None:
        return None
    expr = stable(form.expression.subs(_values(act)))
    return Program([expr], [Q])


def _mp_value(form: ClosedForm, values: dict, q: float, dps: int = 30):
    import mpmath as mp

    from .closed_form import Q
    from .evaluate import Program

    with mp.workdps(dps):
        return Program([form.expression.subs(values)], [Q], backend="mpmath", dps=dps)(mp.mpf(q))[0]


def _perturbed(act: Activation) -> list[Activation]:
    """The activation at its parameters and, if it has any, at a second point with the same breakpoint order."""
    import sympy as sp

    from .registry import activation

    out = [act]
    if act.params:
        try:
            moved = {k: v * sp.Rational(6, 5) + sp.Rational(1, 10) for k, v in _values_by_name(act).items()}
            other = activation(act, **moved)
            if len(other.breakpoints) == len(act.breakpoints):  # the same piece structure
                out.append(other)
        except GainDeriveError:
            pass
    return out


def _values_by_name(act: Activation) -> dict:
    from ._structure import exact

    return {k: exact(v) for k, v in act.params.items()}


@lru_cache(maxsize=128)
def _verdicts(act: Activation) -> dict[str, Verdict]:
    """:func:`verdicts` of a built activation (cached per activation object)."""
    from .gaussian_rules import closed_forms, skipped  # looked up at each call: a test may replace closed_forms

    forms, stopped = closed_forms(act), skipped(act)
    out = {name: Verdict(form, "derived") if form is not None else
           Verdict(None, "skipped", f"{stopped[name]}; quadrature is used") if name in stopped else
           Verdict(None, "none") for name, form in forms.items()}
    if all(f is None for f in forms.values()):
        return out
    points = dict.fromkeys(forms, 0)
    for point in _perturbed(act):
        values = _values(point)
        for qi in VERIFY_Q:
            try:
                reference = _reference(point, qi)
            except GainDeriveError:
                continue
            for name, form in forms.items():
                if out[name].status not in ("derived", "preferred") or name not in reference:
                    continue
                try:
                    exact_value = _mp_value(form, values, qi)
                    scale = _scale(forms, name, values, qi, exact_value)
                except GainDeriveError:  # a function (e.g. a Bessel function from sympy) we cannot evaluate
                    out[name] = Verdict(form, "rejected", "the form cannot be evaluated numerically")
                    continue
                est = reference[name]
                # a 30-digit evaluation of a form that cancels (a variance ~0) is exact only to ~1e-30 E[f^2]
                floor = 1e-25 * _scale(forms, "second_moment", values, qi, exact_value) if forms["second_moment"] \
                    else 0.0
                if abs(float(exact_value) - float(est.value)) <= VERIFY_RTOL * scale + 2 * float(est.error) + floor:
                    points[name] += 1
                    continue
                out[name] = _arbitrate(point, name, form, qi, exact_value, est, scale, floor)
                if out[name].status == "preferred":
                    points[name] += 1
    for name, verdict in out.items():
        if verdict.status == "rejected":
            import warnings

            warnings.warn(f"closed form of {name} for {act.name} dropped: {verdict.reason}", stacklevel=2)
        elif verdict.form is not None and points[name] < 2:
            out[name] = Verdict(verdict.form, "rejected", "fewer than two q at which it could be checked")
        elif verdict.status == "derived":
            out[name] = Verdict(verdict.form, "verified")
    return out


def verdicts(activation: str | Activation, **params: Any) -> dict[str, Verdict]:
    """For each moment, the derived closed form (if any) and whether it was verified, preferred or rejected.

    Each form derived by :mod:`gainderive.gaussian_rules` is checked against quadrature at :data:`VERIFY_Q` (and at
    a second parameter point).  Where the form and quadrature disagree, neither is trusted: a third method settles
    it, the high-precision backend at 30 digits with the same cuts.  A form that agrees with it is kept and marked
    ``preferred`` (quadrature was wrong for this activation, so the form replaces quadrature wherever it evaluates);
    a form that does not is ``rejected`` with the reason.  A q at which quadrature cannot answer (the expectation
    leaves the double range) is skipped; a form needs at least two q at which it was checked.

    >>> verdicts("relu")["second_moment"].status
    'verified'
    """
    from .registry import activation as make_activation

    return _verdicts(make_activation(activation, **params))


verdicts.cache_clear = _verdicts.cache_clear  # what a test that replaces the derivation calls first
verdicts.cache_info = _verdicts.cache_info


def _scale(forms, name, values, qi, exact_value) -> float:
    """What 1e-12 is relative to: |value|, or sqrt(E[f^2]) for a mean (which may be 0)."""
    import mpmath as mp

    second = forms["second_moment"]
    if name == "mean" and second is not None:
        return float(mp.sqrt(abs(_mp_value(second, values, qi))))
    if name == "second_moment" and second is not None:
        return abs(float(_mp_value(second, values, qi)))
    return abs(float(exact_value))


_ARBITER_DIGITS = 30


def _arbitrate(point: Activation, name: str, form: ClosedForm, qi: float, exact_value, est, scale: float,
               floor: float) -> Verdict:
    """Form and quadrature disagree at qi: settle it by the high-precision backend (same cuts, 30 digits)."""
    import mpmath as mp

    quad = float(est.value)
    try:
        truth, error = _high_precision_reference(point, name, qi)
    except GainDeriveError as exc:
        return Verdict(form, "rejected", f"disagrees with quadrature at q = {qi:g} ({float(exact_value):.17g} vs "
                                         f"{quad:.17g}) and high precision could not settle it ({exc})")
    tolerance = VERIFY_RTOL * scale + float(error) + floor
    form_off = abs(float(exact_value - truth))
    if form_off <= tolerance and abs(quad - float(truth)) <= tolerance + 2 * float(est.error):
        return Verdict(form, "derived")  # both right: they differed by less than their combined bars
    if form_off <= tolerance:
        return Verdict(form, "preferred",
                       f"quadrature was off at q = {qi:g} ({quad:.17g}, high precision {mp.nstr(truth, 17)}); the "
                       "closed form agrees with high precision and replaces quadrature")
    rel = form_off / max(abs(float(truth)), 1e-300)
    return Verdict(form, "rejected", f"disagrees with {_ARBITER_DIGITS}-digit quadrature at q = {qi:g} "
                                     f"(form {float(exact_value):.17g}, high precision {mp.nstr(truth, 17)}, "
                                     f"relative {rel:.2g})")


def _high_precision_reference(act: Activation, name: str, q: float):
    """(value, error) of one moment at q by the high-precision backend, as mpmath numbers."""
    import mpmath as mp

    from .backends import high_precision
    from .integrand import integrand

    text = repr(float(q))
    with mp.workdps(_ARBITER_DIGITS + 10):
        functions = _checked_functions(act, q)
        if name not in ("mean", "second_moment"):  # the derivative moment, or the variance from its parts
            wanted = {"derivative_second_moment": (_DERIVATIVE,)}.get(name, tuple(functions))
        else:
            wanted = {"mean": ("f(z)",), "second_moment": ("f(z)^2",)}[name]
        if any(label not in functions for label in wanted):
            raise DivergenceError(f"E[f'(z)^2] of {act.name} is infinite at q = {text}")
        if name != "variance":
            (est,) = high_precision.integrate(integrand(act, {label: functions[label] for label in wanted}),
                                              mp.mpf(text), digits=_ARBITER_DIGITS)
            return est.value, est.error
        functions.pop(_DERIVATIVE, None)
        ig = integrand(act, functions)
        est = _as_moments(ig.labels, high_precision.integrate(ig, mp.mpf(text), digits=_ARBITER_DIGITS))["variance"]
        return est.value, est.error


def decide_ranges(program, *, preferred: bool) -> tuple[tuple[float, float], ...]:
    """The q-intervals [lo, hi] where a verified form answers instead of quadrature, decided once, as data.

    The form's programs are evaluated on :data:`RANGE_GRID` (8 q per decade from 1e-307 to 1e308); a grid point
    is covered where the value is finite and its error bar (:func:`gainderive.closed_form.evaluate`) is at most
    :data:`RANGE_RTOL` |value|, or, for a form *preferred* over quadrature (quadrature was shown wrong for it),
    wherever value and bar are finite.  Each run of consecutive covered points is one interval, so a q between
    a covered and an uncovered grid point is left to quadrature.  Evaluation still checks the bar at each q.
    A grid point where the double evaluation overflows is not covered: pinning it in interval arithmetic took
    ~1 ms a point, seconds per form on the 5,000-point grid.
    """
    from .closed_form import evaluate

    with np.errstate(all="ignore"):  # a form overflows at the top of the double range: not covered there
        value, error = evaluate(program, RANGE_GRID, rescue=False)
        covered = np.isfinite(value) & np.isfinite(error)
        if not preferred:
            covered &= error <= RANGE_RTOL * np.abs(value)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], covered.astype(np.int8), [0]))))
    return tuple((float(RANGE_GRID[lo]), float(RANGE_GRID[hi - 1])) for lo, hi in zip(edges[::2], edges[1::2]))


def verified_forms(act: Activation) -> dict[str, ClosedForm | None]:
    """The closed forms of ``act`` that passed :func:`verdicts` (verified, or preferred over quadrature)."""
    return {name: v.form if v.status in ("verified", "preferred") else None for name, v in _verdicts(act).items()}


def closed_forms(activation: str | Activation, **params: Any) -> dict[str, ClosedForm | None]:
    """The verified closed forms of mean, second_moment, derivative_second_moment and variance.

    None where there is none (tanh, sigmoid, ...) or where the derived form failed verification.

    >>> str(closed_forms("relu")["second_moment"])
    'q/2'
    """
    from .registry import activation as make_activation

    return verified_forms(make_activation(activation, **params))



# -- small-q series: where a form cancels (ELU's mean ~ q/4 from terms of size sqrt(q)) -------------------------------
#: The highest power of sqrt(q) whose coefficient is derived exactly; those above the truncation order bound the tail.
SERIES_TERMS = 48
#: The terms derived first (orders up to 20); :data:`SERIES_TERMS` only when those do not reach the form's range.
SERIES_TERMS_FIRST = 24
#: Truncation orders tried (powers of sqrt(q)), lowest first: the lowest that closes the gap below the form's
#: range is kept (each order costs a multiply-add per q).
SERIES_ORDERS = (8, 12, 16, 20, 24, 28, 32, 36, 40)
#: The truncation bound a series may leave, relative to |value|: below the rounding of the forms themselves, so
#: that a series is as accurate as the form it replaces (its whole bar is within RANGE_RTOL).
SERIES_TRUNCATION_RTOL = 1e-16
#: The q at which a series' range is decided (the grid of :func:`decide_ranges` from 1e-30 to 10).
_SERIES_GRID = RANGE_GRID[(RANGE_GRID >= 1e-30) & (RANGE_GRID <= 10.0)]


def small_q_series(act: Activation, ranges: dict) -> dict:
    r"""{moment: :class:`~gainderive.closed_form.SmallQSeries`} for each verified form that needs one.

    A form needs one where its own error bar leaves the smallest q to quadrature (its first decided range,
    ``ranges[moment]``, starts above the bottom of the double range): ELU, CELU and SELU cancel there (GELU's
    second moment below 1e-205); a form that keeps its digits to the bottom gets none.  The form
    (its stable rewrite, with ScaledPhi(0, b) = erfcx(-b/sqrt 2)/2 expanded by that series) is expanded exactly in
    s = sqrt(q) to :data:`SERIES_TERMS` (:func:`_series_coefficients`); the truncation order and q_max are
    chosen (:func:`_fit_series`) so that the bar of :func:`~gainderive.closed_form.evaluate_series` is within
    :data:`RANGE_RTOL` |value| on the grid up to q_max; and the series is checked against the form at 40+ digits
    at six q up to q_max (:func:`_check_series`).  A form whose series cannot be derived within the symbolic time
    budget (``closed_form_seconds``), or fails the check, has none: quadrature answers there as before.
    """
    import warnings

    from sympy.core.function import PoleError

    from .budget import Budget, SymbolicBudgetError
    from .gaussian_rules import stable

    budget = Budget(f"small-q series of {act.name} skipped", "closed_form_seconds")
    out = {}
    values = _values(act)
    forms = {moment: form for moment, form in verified_forms(act).items() if form is not None}
    needed = [moment for moment in forms if not (ranges.get(moment) and ranges[moment][0][0] <= RANGE_GRID[0])]
    for moment in needed:
        spans = ranges.get(moment, ())
        target = spans[0][0] if spans else math.inf
        series = None
        try:
            expr = stable(forms[moment].expression.subs(values))
            for terms in (SERIES_TERMS_FIRST, SERIES_TERMS):  # few terms first: the expansion costs ~terms^2
                budget.check(moment)
                coefficients = _series_coefficients(expr, terms, budget)
                if coefficients is None:
                    break
                found = _fit_series(coefficients, target)
                if found is not None and (series is None or found.q_max > series.q_max):
                    series = found
                if series is not None and series.q_max >= target:
                    break
        except SymbolicBudgetError:
            break
        except (ArithmeticError, ValueError, TypeError, NotImplementedError, AttributeError, GainDeriveError,
                PoleError):  # sympy found no power series in sqrt(q)
            continue
        if series is None:
            continue
        problem = _check_series(series, forms[moment], values)
        if problem:
            warnings.warn(f"small-q series of {moment} for {act.name} dropped: {problem}", stacklevel=2)
            continue
        out[moment] = series
    return out


def _series_coefficients(expr, terms: int, budget) -> list | None:
    """The exact coefficients c_0..c_terms of the form ``expr`` (in q) as a power series in s = sqrt(q).

    ScaledPhi(0, beta s) = erfcx(-beta s/sqrt 2)/2 = (1/2) sum_k (beta s/sqrt 2)^k / Gamma(k/2 + 1) (Abramowitz
    and Stegun 7.1.5 times e^{x^2}), so the ELU family becomes a polynomial in s and the cancelling terms cancel
    in exact arithmetic.  None for any other form (GELU's asin, sqrt(1 + q): no ScaledPhi to expand) and when the
    form is not a power series in s (a ScaledPhi with another argument).
    """
    import sympy as sp

    from .closed_form import Q
    from .functions import Phi
    from .gaussian_rules import ScaledPhi

    s = sp.Symbol("s", positive=True)
    expr = expr.subs(Q, s**2)
    replacements = {}
    for scaled in expr.atoms(ScaledPhi):
        shift, b = scaled.args
        beta = sp.simplify(b / s)
        if shift != 0 or beta.has(s) or not beta.is_number:
            return None
        x = beta / sp.sqrt(2)
        replacements[scaled] = sp.Add(*(x**k / sp.gamma(sp.Rational(k, 2) + 1) * s**k for k in range(terms + 1))) / 2
    if not replacements:
        # the forms that cancel at small q are the ELU family's; any other form would need sympy.series, which
        # took 0.8-2.6 s per form (GELU, x*erf(x)), cannot be interrupted, and buys little: those forms keep their
        # digits down to q ~ 1e-205, and quadrature answers below
        return None
    expr = expr.xreplace(replacements)
    if expr.has(Phi, sp.erf, sp.erfc, ScaledPhi):  # Phi(3/sqrt(q)) (hardsigmoid): not a power series in sqrt(q)
        return None
    budget.check("the small-q series")
    expanded = sp.expand(expr)
    poly = sp.Poly(expanded, s)
    if any(not c.is_number for c in poly.coeffs()):
        return None
    by_power = dict(zip((m[0] for m in poly.monoms()), poly.coeffs()))
    return [by_power.get(k, sp.S.Zero) for k in range(terms + 1)]


def _fit_series(exact: list, target: float):
    """The :class:`~gainderive.closed_form.SmallQSeries` of the lowest order in :data:`SERIES_ORDERS` whose range
    reaches ``target`` (where the form's own range starts), else the one reaching furthest; None if none has a
    range.

    For a candidate q_max (each point of the grid), the remainder beyond order n at x <= x_max is at most
    x^(n+1) T with T = sum_{n < k <= K} |a_k| x_max^(k-n-1) + (rho^(K+1) / (1 - rho)) / x_max^(n+1), where
    rho = x_max max_{K-7 <= k <= K} |a_k|^(1/k) (a root test on the last derived coefficients, accepted only
    when rho <= 1/2; :func:`_check_series` then confirms the bound against the form).  q_max is the largest grid
    point up to which every grid point has a bar within :data:`RANGE_RTOL` |value|.
    """
    import sympy as sp

    from .closed_form import _SMALLEST_SUBNORMAL, SmallQSeries, _power, _series_relative, series_magnitude

    floats = [float(sp.N(c, 40)) for c in exact]
    in_q = all(c == 0 for c in exact[1::2])
    a = floats[::2] if in_q else floats
    top = len(a) - 1
    grid = _SERIES_GRID
    x_grid = grid if in_q else np.sqrt(grid)
    nonzero = [(k, abs(a[k])) for k in range(max(1, top - 7), top + 1) if a[k] != 0]
    root = max((c ** (1.0 / k) for k, c in nonzero), default=0.0)
    rho = x_grid * root
    usable = int(np.argmin(rho <= 0.5)) if not np.all(rho <= 0.5) else len(grid)
    grid, x_grid, rho = grid[:usable], x_grid[:usable], rho[:usable]
    best = None
    for order in SERIES_ORDERS:
        n = order // 2 if in_q else order
        if n >= top or not usable:
            break
        head = tuple(a[: n + 1])
        if not any(head):
            continue
        value = np.zeros(grid.shape)
        for c in reversed(head):
            value = value * x_grid + c
        # for each candidate x_max (columns): T = sum_{n<k<=K} |a_k| x_max^(k-n-1) + rho^(K+1) / (1 - rho) / x_max^(n+1)
        tail = np.zeros(grid.shape)
        for c in reversed(a[n + 1:]):
            tail = tail * x_grid + abs(c)
        tail += root ** (top + 1) * x_grid ** (top - n) / (1 - rho)
        tail *= 1 + 1e-6  # the float rounding of this sum and of x^(n+1) at evaluation
        j, magnitude = series_magnitude(head, in_q, grid)
        scaled = _series_relative(n) * magnitude
        # bound[i, m]: the bar at grid point i of the series whose q_max is grid point m (used where i <= m)
        bound = scaled[None, :] * _power(x_grid, j)[:, None] + tail[None, :] * _power(x_grid, n + 1)[:, None]
        bound += (2 * n + 2) * _SMALLEST_SUBNORMAL
        truncation = tail[None, :] * _power(x_grid, n + 1)[:, None]
        with np.errstate(invalid="ignore"):
            fine = (bound <= RANGE_RTOL * np.abs(value)[:, None]) & \
                (truncation <= SERIES_TRUNCATION_RTOL * np.abs(value)[:, None])
        fine |= np.tri(len(grid), dtype=bool).T == 0  # i > m: not used
        good = np.all(fine, axis=0)
        if not good[0]:
            continue
        m = int(np.argmin(good)) - 1 if not good.all() else len(grid) - 1
        found = SmallQSeries(head, in_q, float(grid[m]), float(tail[m]))
        if best is None or found.q_max > best.q_max:
            best = found
        if found.q_max >= target:
            return found
    return best


def _check_series(series, form: ClosedForm, values: dict) -> str:
    """'' if the series' value is within its error bar of the form at 40+ digits at six q up to q_max, else why.

    The digits lost to the form's own cancellation at small q (ELU's mean: terms ~sqrt(q) leave ~q) are added to
    the working precision, so the reference is good to ~1e-40 relative.
    """
    from .closed_form import evaluate_series

    for fraction in (1.0, 0.3, 0.1, 1e-2, 1e-4, 1e-8):
        q = series.q_max * fraction
        if q <= 0:
            continue
        dps = 40 + int(max(0.0, -math.log10(q)) / 2) + 5
        reference = _mp_value(form, values, q, dps)
        value, error = evaluate_series(series, q)
        off = abs(float(reference - value)) if math.isfinite(value) else math.inf
        if not off <= error:
            return (f"at q = {q:.3g} the series gives {value:.17g}, the form {float(reference):.17g}: off by "
                    f"{off:.3g}, more than its error bar {error:.3g}")
    return ""
