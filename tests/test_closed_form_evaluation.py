"""Closed forms evaluated in double precision: values within their error bars, and bars that are not loose.

:func:`gainderive.closed_form.evaluate` returns a value and a forward rounding-error bound (see the comment
above ``_BoundPlan`` in gainderive/evaluate.py).  Here the value is compared with the moment computed by hand:
closed forms derived independently of gainderive's rules and evaluated in mpmath at 40 digits (so the reference
is exact for this purpose), at 49 log-spaced q from 1e-8 to 1e8, through every evaluation path (an array of q,
one float q, a 0-d array, several forms fused).  The test is |value - reference| <= bar + 2 ulp(reference),
the 2 ulp for the reference's own rounding to a double.

The references, for z ~ N(0, q), s = sqrt q, Phi/phi the standard normal cdf/pdf, all from
E[e^{tz} 1{z < 0}] = e^{t^2 q/2} Phi(-t s) and E[z 1{z > 0}] = s / sqrt(2 pi), E[z^2 1{z > 0}] = q/2:
  ReLU:          E f = s/sqrt(2 pi), E f^2 = q/2, E f'^2 = 1/2                          (He et al. 2015)
  leaky ReLU a:  E f = (1 - a) s/sqrt(2 pi), E f^2 = (1 + a^2) q/2, E f'^2 = (1 + a^2)/2
  ELU alpha (f = alpha (e^z - 1) for z < 0, z above), CELU alpha (alpha (e^{z/alpha} - 1)), t = 1/alpha for
  CELU and 1 for ELU:
      E f    = s/sqrt(2 pi) + alpha (e^{t^2 q/2} Phi(-t s) - 1/2)
      E f^2  = q/2 + alpha^2 (e^{2 t^2 q} Phi(-2 t s) - 2 e^{t^2 q/2} Phi(-t s) + 1/2)
      E f'^2 = 1/2 + (alpha t)^2 e^{2 t^2 q} Phi(-2 t s)
  SELU = lambda ELU(alpha), alpha and lambda from Klambauer et al. 2017 (eqs. 14-15, to 32 digits);
  GELU f = z Phi(z): Stein's lemma E[z g(z)] = q E[g'(z)] and the orthant probability
      P(X1 < z, X2 < z) with correlation q/(1+q) give, with theta = atan(q / sqrt(1 + 2q)):
      E f = q / sqrt(2 pi (1 + q)),  E f^2 = q/4 + q theta/(2 pi) + q^2 / (pi (1 + q) sqrt(1 + 2q)),
      E f'^2 = 1/4 + theta/(2 pi) + q / (pi (1 + q) sqrt(1 + 2q)) + q / (2 pi (1 + 2q)^{3/2}).
Variance is E f^2 - (E f)^2 throughout.  Each reference is checked against mpmath quadrature at q = 1 below.
"""

import math

import mpmath as mp
import numpy as np
import pytest
from closed_forms import elu_like, gelu

from gainderive import registry
from gainderive.closed_form import evaluate, evaluate_many
from gainderive.verify import programs

MOMENTS = ("mean", "second_moment", "derivative_second_moment", "variance")
EPS = np.finfo(float).eps
Q_GRID = np.logspace(-8, 8, 49)
DIGITS = 40
# Klambauer et al. 2017, "Self-Normalizing Neural Networks", eq. 14-15
SELU_ALPHA = "1.6732632423543772848170429916717"
SELU_SCALE = "1.0507009873554804934193349852946"


def _by_hand(name, q):
    """(E f, E f^2, E f'^2, Var f) at q (an mpf), from the formulas of the module docstring."""
    s = mp.sqrt(q)
    if name == "relu":
        m = (s / mp.sqrt(2 * mp.pi), q / 2, mp.mpf(1) / 2)
    elif name == "leaky_relu":
        a = mp.mpf(1) / 100
        m = ((1 - a) * s / mp.sqrt(2 * mp.pi), (1 + a * a) * q / 2, (1 + a * a) / 2)
    elif name in ("elu", "celu"):
        m = elu_like(q, mp.mpf(1), mp.mpf(1))
    elif name == "selu":
        m = elu_like(q, mp.mpf(SELU_ALPHA), mp.mpf(1), mp.mpf(SELU_SCALE))
    elif name == "gelu":
        m = gelu(q)
    else:
        raise KeyError(name)
    return (*m, m[1] - m[0] ** 2)


NAMES = ("relu", "leaky_relu", "elu", "celu", "selu", "gelu")


def _references(name, qs):
    with mp.workdps(DIGITS):
        return np.array([[_by_hand(name, mp.mpf(float(q)))[k] for q in qs] for k in range(4)], dtype=object)


def _errors(values, refs):
    """|value - reference| (as floats: the difference is exact at 40 digits, then rounded once)."""
    with mp.workdps(DIGITS):
        return np.array([float(abs(mp.mpf(float(v)) - r)) for v, r in zip(values, refs)])


def _ulps(refs):
    return np.array([2 * EPS * abs(float(r)) for r in refs])


@pytest.fixture(scope="module")
def forms():
    return {name: [programs(registry.activation(name), m) for m in MOMENTS] for name in NAMES}


def test_the_references_agree_with_quadrature():
    """The hand formulas against mpmath quadrature of the activation at q = 1 (30 digits)."""
    def quad(f):
        return mp.quad(lambda z: f(z) * mp.exp(-z * z / 2) / mp.sqrt(2 * mp.pi), [-mp.inf, 0, mp.inf])

    with mp.workdps(30):
        alpha, scale = mp.mpf(SELU_ALPHA), mp.mpf(SELU_SCALE)
        activations = {
            "relu": (lambda z: max(z, 0), lambda z: 1 if z > 0 else 0),
            "leaky_relu": (lambda z: z if z > 0 else z / 100, lambda z: 1 if z > 0 else mp.mpf(1) / 100),
            "elu": (lambda z: z if z > 0 else mp.expm1(z), lambda z: 1 if z > 0 else mp.exp(z)),
            "selu": (lambda z: scale * (z if z > 0 else alpha * mp.expm1(z)),
                     lambda z: scale * (1 if z > 0 else alpha * mp.exp(z))),
            "gelu": (lambda z: z * mp.ncdf(z), lambda z: mp.ncdf(z) + z * mp.npdf(z)),
        }
        for name, (f, df) in activations.items():
            mean, second, derivative, _ = _by_hand(name, mp.mpf(1))
            assert abs(quad(f) - mean) < mp.mpf(10) ** -25, name
            assert abs(quad(lambda z, f=f: f(z) ** 2) - second) < mp.mpf(10) ** -25, name
            assert abs(quad(lambda z, df=df: df(z) ** 2) - derivative) < mp.mpf(10) ** -25, name


@pytest.mark.parametrize("name", NAMES)
def test_bars_hold_on_arrays_of_q_from_1e_8_to_1e8(forms, name):
    refs = _references(name, Q_GRID)
    for k, whole in enumerate(forms[name]):
        value, error = evaluate(whole, Q_GRID)
        assert value.shape == error.shape == Q_GRID.shape
        assert np.all(np.isfinite(value)) and np.all(np.isfinite(error)), (name, MOMENTS[k])
        gap = _errors(value, refs[k])
        bad = gap > error + _ulps(refs[k])
        assert not bad.any(), (name, MOMENTS[k], Q_GRID[bad], gap[bad], error[bad])


@pytest.mark.parametrize("name", NAMES)
def test_bars_hold_for_one_q_and_for_fused_forms(forms, name):
    """The scalar path (a float q: math functions) and evaluate_many (the four forms fused) are as honest."""
    refs = _references(name, Q_GRID)
    fused = evaluate_many(forms[name], Q_GRID)
    for k, whole in enumerate(forms[name]):
        one = [evaluate(whole, float(q)) for q in Q_GRID]
        assert all(type(v) is np.float64 and type(e) is np.float64 for v, e in one)  # callers index [()]
        zero_d = evaluate(whole, np.asarray(Q_GRID[17]))
        assert np.ndim(zero_d[0]) == 0 and np.ndim(zero_d[1]) == 0
        for value, error in ((np.array([v for v, _ in one]), np.array([e for _, e in one])), fused[k]):
            gap = _errors(value, refs[k])
            bad = gap > error + _ulps(refs[k])
            assert not bad.any(), (name, MOMENTS[k], Q_GRID[bad], gap[bad], error[bad])


@pytest.mark.parametrize("name", NAMES)
def test_bars_are_tight_at_ordinary_q(forms, name):
    """At q from 0.01 to 100 the bar is at most 100 times the worst error seen nearby.

    The worst error of 33 q within 1e-3 of each q (rounding errors vary from q to q; their maximum is their
    size), floored at eps |value| -- rounding noise is never compared at a relative tolerance: only its size.
    Measured: at most 21 (GELU) and 4 (ReLU): the bar counts every rounding at its largest, and numpy's
    documented 4 ulp for transcendental functions.  The old bound was up to 1e4 times the error (and did not
    hold for GELU at q > 1e6).
    """
    for q0 in (0.01, 0.1, 1.0, 10.0, 100.0):
        qs = q0 * (1 + np.linspace(0, 1e-3, 33))
        refs = _references(name, qs)
        for k, whole in enumerate(forms[name]):
            value, error = evaluate(whole, qs)
            gap = _errors(value, refs[k])
            scale = max(gap.max(), EPS * np.abs(value).max())
            assert error.max() <= 100 * scale, (name, MOMENTS[k], q0, error.max(), gap.max())


def test_bars_count_asin_near_one():
    """GELU's E f^2 has q asin(q/(1+q)): near 1, asin's slope 1/sqrt(1 - x^2) ~ sqrt(q/2) magnifies the rounding
    of q/(1+q).  At q = 1e8 that is ~7e3 ulp of asin: the bar must include it (the old one did not)."""
    whole = programs(registry.activation("gelu"), "second_moment")
    q = 1e8
    with mp.workdps(DIGITS):
        ref = _by_hand("gelu", mp.mpf(q))[1]
    for value, error in (evaluate(whole, q), evaluate(whole, np.array([q]))):
        value, error = float(np.ravel(value)[0]), float(np.ravel(error)[0])
        with mp.workdps(DIGITS):
            gap = float(abs(mp.mpf(value) - ref))
        assert gap <= error + 2 * EPS * abs(value)
        assert error >= 1e3 * EPS * abs(value)  # the conditioning is in the bar, not only 4 ulp


def test_non_finite_points_claim_nothing():
    """Where a form cannot be evaluated (q = 0 divides by zero in GELU's forms) the bar is infinite or the
    value is not finite: never a finite bar on a wrong number."""
    whole = programs(registry.activation("gelu"), "derivative_second_moment")
    value, error = evaluate(whole, np.array([0.0, 1.0]))
    assert not (np.isfinite(value[0]) and np.isfinite(error[0])) or abs(value[0] - 0.25) <= error[0]
    assert np.isfinite(value[1]) and np.isfinite(error[1])


def test_scalar_and_array_paths_agree_within_their_bars(forms):
    for name in NAMES:
        for whole in forms[name]:
            for q in (1e-6, 0.3, 1.0, 7.5, 1e5):
                v1, e1 = evaluate(whole, q)
                v2, e2 = evaluate(whole, np.array([q]))
                assert abs(v1 - v2[0]) <= e1 + e2[0] + 2 * EPS * abs(v1)
                assert math.isfinite(e1)
                assert e1 == e2[0] == 0 or (0 < e1 <= 10 * e2[0] and 0 < e2[0] <= 10 * e1)  # 0: an exact constant


# -- the error rules of other operations: expressions in q against the same expressions written in mpmath ----------
def _cases():
    import sympy as sp

    from gainderive.closed_form import Q
    from gainderive.functions import Phi

    return [
        (sp.exp(-Q) * sp.sin(Q) + sp.log(1 + Q), lambda q: mp.exp(-q) * mp.sin(q) + mp.log1p(q)),
        (sp.tanh(Q) - sp.atan(Q) / sp.asinh(Q), lambda q: mp.tanh(q) - mp.atan(q) / mp.asinh(q)),
        (sp.erfc(sp.sqrt(Q)) * sp.exp(Q) - sp.erf(Q / 3), lambda q: mp.erfc(mp.sqrt(q)) * mp.exp(q) - mp.erf(q / 3)),
        (sp.sqrt(Q) * Phi(-sp.sqrt(Q) / 2) + sp.cos(Q) ** 2, lambda q: mp.sqrt(q) * mp.ncdf(-mp.sqrt(q) / 2)
         + mp.cos(q) ** 2),
        (Q ** sp.Rational(3, 2) / (1 + Q) ** 3 - sp.exp(-1 / Q), lambda q: q**1.5 / (1 + q) ** 3 - mp.exp(-1 / q)),
        (sp.Max(Q, 2) - sp.Min(sp.cosh(Q / 50), 3) + sp.sinh(Q / 50) - sp.Abs(1 - Q),
         lambda q: max(q, 2) - min(mp.cosh(q / 50), 3) + mp.sinh(q / 50) - abs(1 - q)),
    ]


def test_bars_hold_for_the_other_operations():
    """Every path (array, float) of expressions using exp, log1p, sin, cos, tanh, atan, asinh, erf, erfc, Phi,
    sqrt, powers, 1/u, sinh, cosh, Max, Min, Abs, at 25 q from 1e-3 to 1e3 (q = 1 + 2^-40 near Abs's kink)."""
    from gainderive.closed_form import Q
    from gainderive.evaluate import Program

    qs = np.concatenate([np.logspace(-3, 3, 24), [1 + 2.0**-40]])
    for expr, reference in _cases():
        program = Program([expr], [Q])
        values, bounds = program.bounded(qs)
        with mp.workdps(DIGITS):
            refs = [reference(mp.mpf(float(q))) for q in qs]
        assert np.all(np.isfinite(values[0])) and np.all(np.isfinite(bounds[0])), expr
        gap = _errors(values[0], refs)
        assert np.all(gap <= bounds[0] + _ulps(refs)), (expr, qs[gap > bounds[0]])
        one = [program.bounded_scalar(float(q)) for q in qs]
        for q, found, ref in zip(qs, one, refs):
            if found is None:  # the scalar path declined (it never guesses): the array path answered above
                continue
            (value,), (bound,) = found
            gap = float(abs(mp.mpf(value) - ref))
            assert gap <= bound + 2 * EPS * abs(float(ref)), (expr, q)


def test_overflowing_intermediates_are_rescued_with_an_ulp_bar():
    """e^q erfc(sqrt q) at q = 800: e^800 overflows and erfc underflows (inf * 0); interval arithmetic pins the
    value (module docstring of gainderive.evaluate), and its bar is then 2 eps |value|, which must hold."""
    import sympy as sp

    from gainderive.closed_form import Q
    from gainderive.evaluate import Program

    program = Program([sp.exp(Q) * sp.erfc(sp.sqrt(Q))], [Q])
    qs = np.array([1.0, 800.0])
    (value,), (bound,) = program.bounded(qs)
    with mp.workdps(DIGITS):
        refs = [mp.exp(mp.mpf(q)) * mp.erfc(mp.sqrt(mp.mpf(q))) for q in qs]
    assert np.all(np.isfinite(value)) and np.all(_errors(value, refs) <= bound + _ulps(refs))
    assert bound[1] <= 4 * EPS * value[1]
    assert program.bounded_scalar(800.0) is None  # math.exp(800) overflows: the scalar path declines
    v, e = evaluate(program, 800.0)  # and evaluate then takes the array path
    assert v == value[1] and e == bound[1]


def test_fused_programs_and_stored_programs_give_the_same_bars(forms):
    """Program.fuse (evaluate_many) and Program.from_ops (the registry cache's format) change nothing."""
    from gainderive.evaluate import Program

    qs = np.logspace(-4, 4, 9)
    elu_programs = forms["elu"]
    fused = Program.fuse(list(elu_programs))
    assert len(fused.ops) < sum(len(whole.ops) for whole in elu_programs)  # e^{q/2} Phi(-sqrt q) once, not thrice
    values, bounds = fused.bounded(qs)
    for k, whole in enumerate(elu_programs):
        stored = Program.from_ops(**whole.to_ops())
        for value, bound in (whole.bounded(qs), stored.bounded(qs)):
            assert np.all(np.abs(value[0] - values[k]) <= bound[0] + bounds[k])
            assert np.all(bound[0] <= 2 * bounds[k]) and np.all(bounds[k] <= 2 * bound[0])
    for value, bound, called in zip(values, bounds, fused(qs)):  # the plain evaluation (Program.__call__)
        assert np.all(np.abs(called - value) <= 2 * bound)


def test_scaled_phi_on_both_branches():
    """e^{c + b^2/2} Phi(b) (the stable form of ELU-like terms) with b of both signs in one array, and c != 0:
    the erfcx branch (b < 0, and b < -1e4 where its slope is taken as 1/|b|) and the exp * Phi branch (b >= 0)
    each within their bars, on both paths."""
    from gainderive.closed_form import Q
    from gainderive.evaluate import Program
    from gainderive.gaussian_rules import ScaledPhi

    program = Program([ScaledPhi((Q - 20) / 1000, 3 - Q)], [Q])
    qs = np.concatenate([np.linspace(0.01, 40, 37), [3.0, 1e3, 2e4]])
    (value,), (bound,) = program.bounded(qs)
    with mp.workdps(DIGITS):
        refs = []
        for q in qs:
            c, b = (mp.mpf(float(q)) - 20) / 1000, 3 - mp.mpf(float(q))
            refs.append(mp.exp(c + b * b / 2) * mp.ncdf(b))
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(bound))
    assert np.all(_errors(value, refs) <= bound + _ulps(refs))
    for q, ref, v, e in zip(qs, refs, value, bound):
        found = program.bounded_scalar(float(q))
        if found is not None:
            assert float(abs(mp.mpf(found[0][0]) - ref)) <= found[1][0] + 2 * EPS * abs(float(ref))
            assert abs(found[0][0] - v) <= found[1][0] + e


def test_every_numeric_operation_has_error_rules():
    """A program may use any operation of the numpy table; each needs an error rule on both paths."""
    from gainderive import evaluate as ev

    operations = set(ev._NUMPY) - {"add", "mul"}  # sums and products have rules made per node
    assert operations <= set(ev._ARRAY_RULES)
    assert operations <= set(ev._SCALAR_RULES) | set(ev._SCALAR_UNARY)


# -- a grid's bars looked up by bin of q (closed_form.BinnedForms, bin_bars) -------------------------------------------
def _binned(programs, qs, rtol=None):
    from gainderive.closed_form import BinnedForms, bin_index

    index = bin_index(qs)
    out = [(np.empty(qs.size), np.empty(qs.size)) for _ in programs]
    within = BinnedForms(programs, int(index.min()), int(index.max()), rtol)(qs, index, out)
    return out, within


@pytest.mark.parametrize("name", NAMES)
def test_binned_bars_hold_at_random_q_between_the_samples(forms, name):
    """The bar of a bin (twice the largest running bound at 5 samples across it) holds between the samples.

    400 q drawn log-uniformly (seeded) from 1e-8 to 1e8, so almost none is a sample point; the test is the
    module's |value - reference| <= bar + 2 ulp(reference), the reference the hand formula at 40 digits.
    """
    qs = np.sort(10.0 ** np.random.default_rng(20261129).uniform(-8, 8, 400))
    refs = _references(name, qs)
    for k, (value, error) in enumerate(_binned(forms[name], qs)[0]):
        assert np.all(np.isfinite(value)) and np.all(np.isfinite(error)), (name, MOMENTS[k])
        gap = _errors(value, refs[k])
        bad = gap > error + _ulps(refs[k])
        assert not bad.any(), (name, MOMENTS[k], qs[bad], gap[bad], error[bad])


def test_binned_bars_are_at_least_the_running_bound_and_at_most_a_few_times_it(forms):
    """Between the samples the bin's bar covers the running bound at that q (the smoothness it relies on), and
    it is not loose: at most 2 x 1.25^4 (the safety factor and the largest step allowed over a bin's 4 steps)."""
    qs = np.sort(10.0 ** np.random.default_rng(7).uniform(-6, 6, 2000))
    for name in NAMES:
        running = evaluate_many(forms[name], qs)
        for k, ((_, binned), (_, bound)) in enumerate(zip(_binned(forms[name], qs)[0], running)):
            tabulated = binned != bound  # (q whose bin is not tabulated carry the running bound itself)
            assert np.all(binned[tabulated] >= bound[tabulated]), (name, MOMENTS[k])
            assert np.all(binned <= 2 * 1.25**4 * bound + 1e-300), (name, MOMENTS[k])


def test_a_bin_where_the_value_changes_sign_takes_the_running_bound():
    """q - 1 changes sign at q = 1: the relative bound has a pole there, so that bin is not tabulated (nan) and
    its q are evaluated with the running bound; the bins around it are tabulated.  An exact constant gets 0."""
    import sympy as sp

    from gainderive.closed_form import bin_bars, bin_index
    from gainderive.evaluate import Program

    q = sp.Symbol("q", positive=True)
    program = Program([q - 1, sp.Integer(1) / 2], [q])
    at = bin_index(np.array([1.0, 0.999, 1.01, 4.0]))
    table = bin_bars(program, int(at.min()), int(at.max()))
    assert np.isnan(table[0, at[0]]) and np.isnan(table[0, at[1]])  # [1, 1.125) and [0.9375, 1) hold or touch 1
    assert np.isfinite(table[0, at[3]]) and table[0, at[3]] > 0
    assert np.all(table[1, at] == 0)  # 1/2 is exact
    qs = np.array([0.999999, 1.0, 1.000001, 4.0])
    [(value, error)], _ = _binned([program], qs)
    _, running_bound = evaluate(program, qs)
    assert np.array_equal(error[:3], running_bound[:3])
    assert np.all(np.abs(value - (qs - 1)) <= error)  # q - 1 is exact in double arithmetic near 1 (Sterbenz)


def test_binned_tolerance_hands_the_edge_of_a_range_to_the_running_bound(forms):
    """Where a bin's bar exceeds rtol |value| the running bound decides (it is tighter); ``within`` reports it."""
    qs = np.logspace(-3, 0, 200)
    (mean, *_), within = _binned(forms["elu"], qs, [1e-13] * 4)
    _, running_bound = evaluate(forms["elu"][0], qs)
    loose = ~within[0]
    assert loose.any() and not loose.all()  # ELU's mean cancels at small q
    assert np.array_equal(mean[1][loose], running_bound[loose])
    assert np.all(mean[1][~loose] <= 1e-13 * np.abs(mean[0][~loose]))
