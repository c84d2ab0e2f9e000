"""Monte Carlo's paired evaluation: parity read soundly off the numpy programs, h(z) and h(-z) from one pass.

References are independent of gainderive: parities are those of the formulas (checked by hand below), values
come from tests/data/references.json (40-digit mpmath, tools/make_references.py) or are derived by hand in the
docstrings, and the reflection kernels are compared with mpmath at 40 digits.  Monte Carlo tests use fixed seeds
and bounds of 5 standard errors, as in tests/test_monte_carlo.py.
"""

import json
import pathlib

import mpmath as mp
import numpy as np
import pytest

import gainderive as gd
from gainderive import parity as analysis
from gainderive.backends import monte_carlo
from gainderive.evaluate import Program
from gainderive.formula import X, parse_formula
from gainderive.integrand import DF, F, integrand
from gainderive.moments import moment_functions
from gainderive.registry import REGISTRY, activation

LIMIT = 5.0  # standard errors
REFERENCES = json.loads((pathlib.Path(__file__).parent / "data" / "references.json").read_text())


def parity(formula):
    return analysis.output_parities(Program([parse_formula(formula)], [X]))[0]


# ---------------------------------------------------------------- the abstract interpretation


@pytest.mark.parametrize("formula", ["x", "tanh(x)", "sin(x)", "x**3", "x/(1 + abs(x))", "erf(x)", "asinh(x)",
                                     "x**(-3)", "x*cos(x)", "sinh(x)*x**2", "atan(x)**3"])
def test_odd_formulas_are_found_odd(formula):
    assert parity(formula) == analysis.ODD


@pytest.mark.parametrize("formula", ["abs(x)", "x**2", "cos(x)", "x*tanh(x)", "cosh(x)", "exp(x**2)",
                                     "log1p(x**2)", "sin(x)**2", "sigmoid(x**2)", "where(x**2 > 1, 1, x**2)", "3"])
def test_even_formulas_are_found_even(formula):
    # any function of even arguments is even, exp / log1p / sigmoid / a condition included
    assert parity(formula) == analysis.EVEN


@pytest.mark.parametrize("formula", ["max(x, 0)", "where(x > 0, x, 0)", "x*Phi(x)", "x*sigmoid(x)", "exp(x)",
                                     "x + 1", "sin(x) + cos(x)", "softplus(x)", "x**(1/3)", "sqrt(abs(x)) + x",
                                     # |x| written as a condition is even, but nothing is claimed: sound, not
                                     # complete
                                     "where(x > 0, x, -x)"])
def test_no_parity_is_claimed_without_proof(formula):
    assert parity(formula) is None


def test_registry_programs_have_the_parities_of_their_formulas():
    # by hand: tanh, erf, sin are odd, so f is odd and f^2, f'^2 even; gelu, silu, mish, softplus have none
    for name in ("tanh", "erf", "sin"):
        ig = integrand(activation(name), moment_functions(activation(name))[0])
        assert analysis.output_parities(ig.numpy_pieces[0]) == ("odd", "even", "even"), name
    for name in ("gelu", "silu", "mish", "softplus"):
        ig = integrand(activation(name), moment_functions(activation(name))[0])
        assert set(analysis.output_parities(ig.numpy_pieces[0])) == {None}, name


def test_a_piecewise_function_of_odd_pieces_is_not_taken_for_odd():
    # f = x^3 for z > 1/2, x otherwise: both pieces are odd formulas, f is not odd.  With z ~ N(0, 1) and
    # c = 1/2, by parts (z phi = -phi'): E[z 1{z <= c}] = -phi(c), E[z^3 1{z > c}] = (c^2 + 2) phi(c), so
    # E f = (c^2 + 1) phi(c) = 0.44005...; E f^2 = E[z^6 1{z > c}] + E[z^2 1{z <= c}], with
    # E[z^6 1{z > c}] = (c^5 + 5 c^3 + 15 c) phi(c) + 15 Q(c) and E[z^2 1{z <= c}] = Phi(c) - c phi(c).
    act = activation("where(x > 0.5, x**3, x)")
    ig = integrand(act, {"f": F, "f^2": F**2})  # f jumps at 1/2: no f'^2
    for program in ig.numpy_pieces:  # each piece alone is odd in f (and even in f^2)
        assert analysis.output_parities(program)[0] == analysis.ODD
    with mp.workdps(30):
        c = mp.mpf(1) / 2
        phi, tail = mp.npdf(c), mp.ncdf(-c)
        mean = (c**2 + 1) * phi
        second = (c**5 + 5 * c**3 + 15 * c) * phi + 15 * tail + mp.ncdf(c) - c * phi
    for seed in (0, 1):
        m, s = monte_carlo.integrate(ig, 1.0, samples=2**17, seed=seed)
        assert m.error > 0 and abs(m.value - float(mean)) <= LIMIT * m.error
        assert abs(s.value - float(second)) <= LIMIT * s.error
        assert abs(m.value) > 10 * m.error  # clearly not the 0 a wrong parity would give


# ---------------------------------------------------------------- paired evaluation agrees with the programs

USER_FORMULAS = ["x*exp(x)", "log1p(x**2)*sin(x)", "erfc(x)*x + Phi(x**3) + softplus(-x)*sigmoid(2*x)",
                 "cosh(x)*atan(x)**3/(1 + x**2)", "where(x > 1, x**2 - 0.5, sigmoid(x)*x + 0.5 - sigmoid(1))"]


def test_buffered_operations_are_the_programs_own():
    # the ufuncs called into buffers are the very functions gainderive.evaluate's numpy table names: a change
    # there (a faster or more accurate implementation) must be made here too, or this fails
    from gainderive.evaluate import _NUMPY

    for name, ufunc in analysis._UFUNCS.items():
        assert _NUMPY[name] is ufunc, name


@pytest.mark.parametrize("name", list(REGISTRY) + USER_FORMULAS)
def test_paired_evaluation_matches_the_program_at_both_signs(name):
    # the paired form returns h(z) and h(-z) (from the parity, or computed) for every output; they agree with
    # the program run at z and at -z to a few ulps of max(1, |h|): the reflections are accurate to 2 ulps of
    # their own values, and the rest is the same operations in the same order
    act = activation(name)
    functions = moment_functions(act)[0]
    if act.jumps:
        functions = {k: v for k, v in functions.items() if not v.has(DF)}
    ig = integrand(act, functions)
    z = np.random.default_rng(1).standard_normal(999) * 3
    z[:4] = (0.0, 1e-300, 40.0, -40.0)
    with np.errstate(all="ignore"):
        for program in ig.numpy_pieces:
            outputs = analysis.Compiled(program, paired=True)(z)
            for (kind, hp, hm), at_plus, at_minus in zip(outputs, program(z), program(-z)):
                hm = hp if kind == analysis.EVEN else (-hp if kind == analysis.ODD else hm)
                for ours, theirs in ((hp, at_plus), (hm, at_minus)):
                    ours, theirs = np.broadcast_to(ours, z.shape), np.broadcast_to(theirs, z.shape)
                    same = np.isnan(theirs) == np.isnan(ours)
                    close = np.abs(ours - theirs) <= 8 * np.spacing(np.maximum(1.0, np.abs(theirs)))
                    assert np.all(same & (close | np.isnan(theirs))), (name, kind)


@pytest.mark.parametrize("kernel, exact, direct", [
    ("_reflect_phi", mp.ncdf, "ndtr"),
    ("_reflect_sigmoid", lambda u: 1 / (1 + mp.exp(-u)), "expit"),
    ("_reflect_erfc", mp.erfc, "erfc"),
    ("_reflect_softplus", lambda u: mp.log1p(mp.exp(u)), None),
])
def test_reflections_keep_the_relative_precision_of_both_values(kernel, exact, direct):
    # f(u) and f(-u) from one special-function call: the small one is computed directly, the large one as
    # (1 or 2) minus it, where it is >= 1/2 and no digits cancel.  Each is within 4 ulps of the 40-digit value,
    # or, where scipy's own function is less accurate than that (ndtr far in the tail), within twice its error
    import scipy.special

    u = np.concatenate([np.linspace(-38, 38, 761), [0.0, 1e-300, -1e-300, 5e-17, -5e-17]])
    plus, minus, scratch = np.empty_like(u), np.empty_like(u), np.empty_like(u)
    with np.errstate(all="ignore"):
        getattr(analysis, kernel)(plus, minus, scratch, u)
    with mp.workdps(40):
        for x, p, m in zip(u, plus, minus):
            for ours, arg in ((p, x), (m, -x)):
                truth = exact(mp.mpf(float(arg)))
                if truth < 1e-300:  # subnormal results: an absolute error below the smallest normal
                    assert abs(ours - float(truth)) < 1e-300
                    continue
                allowed = 4 * 2.0**-53 * truth
                if direct is not None:
                    allowed = max(allowed, 2 * abs(mp.mpf(float(getattr(scipy.special, direct)(arg))) - truth))
                assert abs(mp.mpf(float(ours)) - truth) <= allowed, (kernel, arg, ours, truth)


# ---------------------------------------------------------------- every registry activation, against the references

def _references(name, q):
    for record in REFERENCES:  # the first record of a name is at its default parameters
        if record["name"] == name and record["q"] == q:
            return [float(mp.mpf(record[k])) for k in ("mean", "second_moment", "derivative_second_moment")]
    raise KeyError((name, q))


@pytest.mark.parametrize("q", ["0.1", "1", "10"])
@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_registry_activation_within_five_standard_errors(name, q):
    m = gd.moments(name, float(q), method="monte_carlo", samples=2**17, seed=3)
    truths = _references(name, q)
    # the scale of each moment: sqrt(E f^2) for E f (selu's mean is ~1e-32 at q = 1), the value for the others
    scales = (np.sqrt(truths[1]), truths[1], truths[2])
    for est, truth, scale in zip((m.mean, m.second_moment, m.derivative_second_moment), truths, scales):
        assert est.method == "monte_carlo"
        assert abs(est.value - truth) <= LIMIT * est.error + 4 * np.spacing(abs(truth)), (name, q, est, truth)
        # and the bar is tight enough for that to mean something: 5 SE under 5 % of the moment's scale (plain
        # sampling of E z^2 from 2^16 pairs: sd(z^2) = sqrt(2) q, so 5 SE = 5 sqrt(2) q / 256 = 2.8 % of q)
        assert LIMIT * est.error <= 0.05 * scale, (name, q, est)


@pytest.mark.parametrize("name", ["tanh", "erf", "sin", "softsign", "hardtanh", "identity"])
def test_odd_activations_have_an_exactly_zero_mean(name):
    # (f(z) + f(-z))/2 = 0 for every pair, found from the program (tanh, erf, sin, identity: exactly 0 +- 0) or
    # because the pieces on the two sides are each other's reflection (softsign, hardtanh: the sums cancel in
    # floating point, but no parity is proven, so the bar keeps its rounding floor of 8 eps E|f| <= 8 eps)
    m = gd.moments(name, 1.3, method="monte_carlo", samples=2**15, seed=0)
    assert m.mean.value == 0.0
    if name in ("softsign", "hardtanh"):
        assert 0 < m.mean.error <= 8.5 * np.finfo(float).eps  # |f| <= 1; the weights sum to 1 + ulps
    else:
        assert m.mean.error == 0.0


@pytest.mark.parametrize("samples", [200, 1000, 5000, 50_000])
def test_small_budgets_use_fewer_sub_intervals_and_stay_within_five_standard_errors(samples):
    # gelu has 7 strata at q = 1: from ~14 draws a stratum (exact draws: too few for sub-intervals of 64 draws)
    # to ~3,500 (32 sub-intervals)
    truth = _references("gelu", "1")
    for seed in range(3):
        m = gd.moments("gelu", 1.0, method="monte_carlo", samples=samples, seed=seed)
        for est, exact in zip((m.mean, m.second_moment, m.derivative_second_moment), truth):
            assert est.error > 0 and abs(est.value - exact) <= LIMIT * est.error, (samples, seed, est, exact)


def test_a_non_finite_value_in_an_odd_output_is_still_refused():
    # f = x exp(x^2) is odd, so its pair average is 0 -- but at q = 1e6 it overflows, and E f does not exist:
    # the backend must not report the 0 that parity alone would give
    from gainderive.errors import DivergenceError

    act = activation("x*exp(x**2)")
    for functions in ({"f": F}, {"f": F, "f^2": F**2}):  # checked alone; checked through f^2 = (f)^2
        with pytest.raises(DivergenceError, match="not finite"):
            monte_carlo.integrate(integrand(act, functions), 1.0e6, samples=20_000)


def test_error_bars_of_the_rows_of_sub_intervals_are_calibrated():
    # the within-stratum estimate (one draw per sub-interval per row, variance from pairs of rows) is smaller
    # than independent draws would give; it must still be the spread it claims.  z-scores of gelu's moments at
    # q = 1 over 40 seeds should look standard normal: the mean of 40 z has SE 0.16, so |mean| < 0.6 is > 3.5 SE;
    # the sd of 40 z has SE ~0.11, so [0.65, 1.35] is a > 3 SE band
    truth = _references("gelu", "1")
    z = []
    for seed in range(40):
        m = gd.moments("gelu", 1.0, method="monte_carlo", samples=2**16, seed=seed)
        z.append([(e.value - t) / e.error for e, t in zip((m.mean, m.second_moment, m.derivative_second_moment),
                                                          truth)])
    z = np.array(z)
    assert np.all(np.abs(z.mean(axis=0)) < 0.6), z.mean(axis=0)
    assert np.all((0.65 < z.std(axis=0)) & (z.std(axis=0) < 1.35)), z.std(axis=0)


def test_threads_sampling_the_same_activation_do_not_share_buffers():
    # the compiled programs evaluate into reused buffers: kept per thread, so concurrent runs (numpy releases
    # the GIL inside every operation) give exactly the sequential results
    from concurrent.futures import ThreadPoolExecutor

    def run(seed):
        m = gd.moments("gelu", 1.0, method="monte_carlo", samples=2**18, seed=seed)
        return m.mean.value, m.second_moment.value, m.derivative_second_moment.error

    sequential = [run(seed) for seed in range(4)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        assert list(pool.map(run, range(4))) == sequential
