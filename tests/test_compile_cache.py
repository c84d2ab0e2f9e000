"""Closed forms first, and one compiled entry per activation (issue #13, points 1-2, first step).

``moments`` keeps what it prepares for an activation (integrand, centre, divergence verdicts, verified closed forms
and their compiled programs) in an in-memory LRU keyed by the normalised formula and the exact parameter values, and
for method auto / closed_form evaluates the verified forms first, running quadrature only when some moment at some
q is not covered.

References are independent of the code under test: ELU's moments derived by hand (z ~ N(0, q), f = z for z > 0 and
a(e^z - 1) below; the truncated exponential moments E[e^{kz} 1{z<0}] = e^{k^2 q/2} Phi(-k sqrt q)):

    E f     = sqrt(q/(2 pi)) + a (e^{q/2} Phi(-sqrt q) - 1/2)
    E f^2   = q/2 + a^2 (e^{2q} Phi(-2 sqrt q) - 2 e^{q/2} Phi(-sqrt q) + 1/2)
    E f'^2  = 1/2 + a^2 e^{2q} Phi(-2 sqrt q)

and GELU's mean by Stein's lemma, E[z Phi(z)] = q E[phi(z)] = q / sqrt(2 pi (1 + q)); its other moments by mp.quad
at 30 digits.  All evaluated by mpmath at 30 digits, so the reference is exact to ~1e-30 and every comparison is
|value - reference| <= error bar + 4 ulps of the reference (the rounding of the reference to float64, and of the
value's last operation).
"""

import importlib
import threading

import mpmath as mp
import numpy as np
import pytest
from closed_forms import elu_like

import gainderive as gd
from gainderive import verify
from gainderive.activation import Activation
from gainderive.backends import quadrature
from gainderive.closed_form import BinnedForms, bin_index, evaluate, evaluate_many
from gainderive.registry import REGISTRY
from gainderive.registry import activation as make_activation

MOMENTS = ("mean", "second_moment", "derivative_second_moment", "variance")
ULP = 2.0**-52
DPS = 30
moments_module = importlib.import_module("gainderive.moments")  # the package's `moments` is the function
compile_module = importlib.import_module("gainderive.compile")


@pytest.fixture(autouse=True)
def _no_disk_cache(monkeypatch):
    """The in-memory cache alone: no entry is read from, or written to, the per-user disk cache."""
    monkeypatch.setenv("GAINDERIVE_NO_CACHE", "1")


@pytest.fixture
def empty_cache():
    """A compile cache with nothing in it, emptied again afterwards (it holds no state another test relies on)."""
    moments_module.clear_compile_cache()
    yield
    moments_module.clear_compile_cache()


def entry_of(spec, **params):
    return moments_module._prepare(spec, "auto", params).compiled


# -- one entry for every spelling -----------------------------------------------------------------------------------
def test_registry_name_equal_activation_and_the_same_formula_typed_share_one_entry(empty_cache):
    formula = REGISTRY["elu"].formula  # where(x > 0, x, alpha*expm1(x)), alpha = 1
    by_name = entry_of("elu")
    assert by_name is not None and moments_module.compile_cache_info()["misses"] == 1
    spellings = [
        make_activation("elu"),  # the registry's Activation object (sympy numbers as parameters)
        Activation(name="my elu", formula=formula, params={"alpha": "1"}),  # an equal record, built by hand
        Activation(name="other", formula=formula, params={"alpha": 1}),
        formula,  # the same formula typed as a string...
        formula.replace(" ", ""),  # ...with other spacing (the key is the syntax tree, not the text)
    ]
    for spec in spellings:
        params = {"alpha": 1} if isinstance(spec, str) else {}
        assert entry_of(spec, **params) is by_name, spec
    info = moments_module.compile_cache_info()
    assert info["misses"] == 1 and info["hits"] == len(spellings) and info["size"] == 1
    hash(by_name.key)  # the key is hashable: strings, Fractions and the frozen budgets only

    # the result reports the caller's activation, not the one the entry was built from
    assert gd.moments(spellings[1], 1.0).activation is spellings[1]


def test_other_parameters_and_other_formulas_get_their_own_entry(empty_cache):
    elu = entry_of("elu")
    assert entry_of("elu", alpha=2) is not elu
    assert entry_of("elu", alpha="1.0") is elu  # the same number
    # a float parameter is substituted as a sympy Float, not a rational: another entry, never a wrong one
    assert entry_of(Activation(name="f", formula=REGISTRY["elu"].formula, params={"alpha": 0.5})) is not \
        entry_of("elu", alpha="1/2")
    typed = entry_of("elu(x)")  # a different formula of the same function: its own entry...
    assert typed is not elu
    assert entry_of(" elu( x ) ") is typed  # ...shared by its other spellings
    assert entry_of(make_activation("elu(x)")) is typed


def test_warm_calls_hit_the_cache_for_the_three_spellings(empty_cache):
    for spec in ("gelu", make_activation("gelu"), "gelu(x)"):
        gd.moments(spec, 1.0)
        before = moments_module.compile_cache_info()
        gd.moments(spec, 1.0)
        after = moments_module.compile_cache_info()
        assert after["misses"] == before["misses"] and after["hits"] == before["hits"] + 1, spec


def test_the_cache_is_a_bounded_lru(empty_cache, monkeypatch):
    monkeypatch.setattr(compile_module, "COMPILE_CACHE_SIZE", 3)
    first = {name: entry_of(name) for name in ("relu", "elu", "gelu")}
    assert entry_of("relu") is first["relu"]  # used again: now the most recent
    entry_of("tanh")  # a fourth entry pushes out the least recently used, elu
    assert moments_module.compile_cache_info()["size"] == 3
    assert entry_of("relu") is first["relu"] and entry_of("tanh") is entry_of("tanh")
    assert entry_of("elu") is not first["elu"]  # rebuilt (and gelu, now the oldest, went out)
    assert moments_module.compile_cache_info()["size"] == 3


def test_concurrent_callers_get_one_entry_and_the_same_numbers(empty_cache):
    results, entries = [], []

    def work():
        for _ in range(5):
            entries.append(entry_of("gelu"))
            results.append(gd.moments("gelu", 2.0).second_moment.value)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(e) for e in entries}) == 1
    assert len(results) == 20 and all(r == results[0] for r in results)


# -- closed forms first: the same numbers where the form decides ----------------------------------------------------
def pre_change(spec, q, rtol=1e-13):
    """The moments as moments() computed them before closed forms first: quadrature at every q, then each moment
    replaced by its verified form at each q where that is at least as accurate (the former ``_with_closed_forms``,
    per q as it now is, written out here so that the comparison does not go through the code under test)."""
    quad = gd.moments(spec, q, "quadrature")
    act = quad.activation
    if "_closed_forms" in act.__dict__:  # a registry name: the stored forms
        programs = act.__dict__["_closed_forms"][1]
        preferred = set()
    else:
        found = verify.verdicts(act)
        preferred = {name for name, v in found.items() if v.status == "preferred"}
        programs = {name: verify.programs(act, name) for name in MOMENTS}
    out = {}
    # the forms evaluated together, as moments() does (evaluate_many fuses them: shared terms computed once)
    names = [name for name in MOMENTS if programs.get(name) is not None]
    evaluated = dict(zip(names, evaluate_many([programs[name] for name in names], quad.q))) if names else {}
    for name in MOMENTS:
        previous = getattr(quad, name)
        out[name] = (previous.value, previous.error, previous.method)
        if programs.get(name) is None or (name == "derivative_second_moment" and np.any(np.isinf(previous.value))):
            continue
        value, error = evaluated[name]
        if name in preferred:
            use = np.isfinite(value) & np.isfinite(error)
        else:
            use = np.isfinite(value) & (error <= np.maximum(rtol * np.abs(value), previous.error))
        if np.all(use):
            out[name] = (value[()], error[()], "closed_form")
        elif np.any(use):  # per q: the form where it is at least as accurate, quadrature elsewhere
            out[name] = (np.where(use, value, previous.value)[()], np.where(use, error, previous.error)[()],
                         "closed_form")
    return out


GRID = np.logspace(-3, 3, 25)


@pytest.mark.parametrize("spec, q", [
    ("gelu", 1.0), ("gelu", GRID), ("gelu(x)", 1.0), ("elu", 1.0), ("elu", GRID), ("relu", GRID), ("erf", GRID),
    ("hardtanh", GRID), ("sin", np.array([0.5, 2.0])), ("x*Phi(x)", np.array([0.01, 3.0])), ("sign(x)", GRID),
    ("tanh", np.array([0.1, 1.0])),
])
def test_the_numbers_agree_with_the_former_ones(spec, q):
    # Where every form is within rtol |value| the former rule (error <= max(rtol |value|, quadrature's error)) chose
    # every form too, so skipping quadrature changes nothing; anywhere else quadrature runs and the former rule
    # merges.  Either way the same method, and values that agree within their bars.  Not bit for bit: quadrature
    # now runs on only the uncovered q, and its error estimate (not its value) may differ in the last digits with
    # the q it is batched with.
    before = pre_change(spec, q)
    now = gd.moments(spec, q)
    for name in MOMENTS:
        value, error, method = before[name]
        est = getattr(now, name)
        assert est.method == method, name
        with np.errstate(invalid="ignore"):  # inf - inf where E[f'^2] is infinite (sign): equal infinities agree
            gap = np.where(np.asarray(est.value) == value, 0.0, np.abs(np.asarray(est.value) - value))
        assert np.all(gap <= np.asarray(est.error) + error), name


# -- closed forms first: no quadrature where the forms cover everything --------------------------------------------
def test_no_quadrature_runs_when_the_forms_cover_every_moment_at_every_q(monkeypatch):
    specs = [("relu", GRID), ("gelu", 1.0), (make_activation("gelu"), 1.0), ("max(x, 0) - 0.1*min(x, 0)", GRID)]
    for spec, q in specs:
        gd.moments(spec, q)  # derives and verifies the forms (verification itself runs quadrature)

    def refused(*_, **__):
        raise AssertionError("quadrature ran although closed forms cover every moment")

    monkeypatch.setattr(quadrature, "integrate", refused)
    for spec, q in specs:
        m = gd.moments(spec, q)
        assert all(est.method == "closed_form" for _, est in m), spec


def _hand_elu(q, a=1):
    """ELU's four moments at one q, derived by hand (tests/closed_forms.py), at DPS digits."""
    with mp.workdps(DPS):
        mean, second, derivative = elu_like(mp.mpf(q), mp.mpf(a))
        return {"mean": mean, "second_moment": second, "derivative_second_moment": derivative,
                "variance": second - mean**2}


def _assert_within_bars(m, reference, q):
    for name in MOMENTS:
        est = getattr(m, name)
        exact = np.array([float(r[name]) for r in reference])
        assert np.all(np.abs(np.atleast_1d(est.value) - exact) <= np.atleast_1d(est.error) + 4 * ULP * np.abs(exact)), \
            (name, q)


def _without_series(monkeypatch):
    """ELU's forms alone, as before their small-q series (tests/test_small_q_series.py): below q ~ 0.1 their bars
    exceed 1e-13 |value|, which is what the two tests below need (the series now cover those q)."""
    real = moments_module._closed_part
    monkeypatch.setattr(moments_module, "_closed_part", lambda prepared: real(prepared)._replace(series={}))


def test_a_q_where_a_form_is_not_accurate_enough_still_gets_quadrature(monkeypatch):
    _without_series(monkeypatch)
    qs = np.logspace(-3, 3, 13)
    # the mean form's own error bar decides: at which q is it above 1e-13 |E f|?
    programs = moments_module._closed_part(moments_module._prepare("elu", "auto", {}))[1]
    value, error = evaluate(programs["mean"], qs)
    loose = qs[error > 1e-13 * np.abs(value)]
    assert loose.size, "the ELU mean form is accurate to 1e-13 everywhere: pick another activation for this test"
    q = float(loose[len(loose) // 2])
    calls = []
    real = quadrature.integrate

    def counted(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(quadrature, "integrate", counted)
    m = gd.moments("elu", q)
    assert len(calls) == 1 and m.mean.method == "quadrature"
    _assert_within_bars(m, [_hand_elu(q)], q)


@pytest.mark.parametrize("spec", ["elu", "where(x > 0, x, expm1(x))"])
def test_elu_within_its_bars_of_the_hand_derived_moments(spec):
    qs = np.array([1e-3, 0.1, 1.0, 7.0, 100.0])
    for q in (*qs, qs):  # one q at a time (closed forms first or quadrature) and the grid at once
        m = gd.moments(spec, q)
        _assert_within_bars(m, [_hand_elu(v) for v in np.atleast_1d(q)], q)
    # the form of E f^2 was not evaluated by the code under test alone: at q = 1 it is the closed form
    assert gd.moments(spec, 1.0).second_moment.method == "closed_form"


def _gelu_reference(q):
    """GELU's moments at q: the mean by Stein's lemma, the rest by mp.quad at DPS digits (f = x Phi(x))."""
    with mp.workdps(DPS):
        q = mp.mpf(q)
        s = mp.sqrt(q)

        def expect(h):
            return mp.quad(lambda t: h(s * t) * mp.npdf(t), [-mp.inf, 0, mp.inf])

        mean = q / mp.sqrt(2 * mp.pi * (1 + q))
        second = expect(lambda z: (z * mp.ncdf(z)) ** 2)
        derivative = expect(lambda z: (mp.ncdf(z) + z * mp.npdf(z)) ** 2)
        return {"mean": mean, "second_moment": second, "derivative_second_moment": derivative,
                "variance": second - mean**2}


def test_gelu_within_its_bars_of_a_30_digit_reference():
    qs = np.array([0.01, 1.0, 50.0])
    reference = [_gelu_reference(v) for v in qs]
    _assert_within_bars(gd.moments("gelu", qs), reference, qs)
    for q, ref in zip(qs, reference):
        for spec in ("gelu", "gelu(x)", make_activation("gelu")):
            _assert_within_bars(gd.moments(spec, q), [ref], q)


def test_an_infinite_derivative_moment_is_still_reported_as_infinite():
    m = gd.moments("sign(x)", np.array([0.5, 2.0]))  # f jumps at 0: E f'^2 is infinite, E f = 0, E f^2 = 1
    assert np.all(np.isinf(m.derivative_second_moment.value))
    assert m.derivative_second_moment.method.startswith("infinite")
    assert np.all(np.abs(m.mean.value) <= m.mean.error)
    assert np.all(np.abs(m.second_moment.value - 1) <= m.second_moment.error + 4 * ULP)


def test_quadrature_runs_only_at_the_q_the_forms_do_not_cover(monkeypatch):
    # closed forms first, per q: a grid where ELU's forms cover some q and not others sends only the others to
    # quadrature (formerly one uncovered q sent every q to it); the numbers stay within their bars of the hand forms
    _without_series(monkeypatch)
    qs = np.array([1e-3, 3.0, 0.02, 10.0])
    closed = moments_module._closed_part(moments_module._prepare("elu", "auto", {}))
    loose = np.zeros(qs.shape, dtype=bool)
    fused = dict(zip(MOMENTS, evaluate_many([closed.programs[name] for name in MOMENTS], qs)))  # as moments() does
    for name in MOMENTS:
        value, error = fused[name]
        inside = np.zeros(qs.shape, dtype=bool)
        for lo, hi in closed.ranges[name]:
            inside |= (qs >= lo) & (qs <= hi)
        loose |= ~inside | (error > 1e-13 * np.abs(value))
    assert loose.any() and not loose.all(), "pick q on both sides of the forms' ranges"
    calls = []
    real = quadrature.integrate

    def counted(integrand, q, **kwargs):
        calls.append(np.array(q, dtype=float))
        return real(integrand, q, **kwargs)

    monkeypatch.setattr(quadrature, "integrate", counted)
    m = gd.moments("elu", qs)
    assert len(calls) == 1 and np.array_equal(calls[0], qs[loose])
    _assert_within_bars(m, [_hand_elu(v) for v in qs], qs)
    # where a form covers a q, the value is the form's, bit for bit, and the bar its bin's (closed_form.BinnedForms:
    # a grid's bars are looked up by bin of q, the running bound only where that exceeds the tolerance)
    index = bin_index(qs)
    binned = [(np.empty(qs.size), np.empty(qs.size)) for _ in MOMENTS]
    BinnedForms([closed.programs[name] for name in MOMENTS], int(index.min()), int(index.max()),
                [1e-13] * len(MOMENTS))(qs, index, binned)
    for name, (value, error) in zip(MOMENTS, binned):
        est = getattr(m, name)
        assert np.array_equal(est.value[~loose], value[~loose]) and np.array_equal(est.error[~loose], error[~loose])
        assert np.array_equal(value[~loose], fused[name][0][~loose])
        assert est.method == "closed_form"


def test_the_decided_ranges_are_data_where_each_form_met_the_tolerance():
    # decided once, at verification: each interval's ends are grid points where the form's bar is within 1e-13
    closed = moments_module._closed_part(moments_module._prepare("gelu", "auto", {}))
    for name in MOMENTS:
        spans = closed.ranges[name]
        assert spans and all(isinstance(lo, float) and isinstance(hi, float) and lo <= hi for lo, hi in spans)
        ends = np.array([q for span in spans for q in span])
        value, error = evaluate(closed.programs[name], ends)
        assert np.all(np.isfinite(value)) and np.all(error <= 1e-13 * np.abs(value)), name
