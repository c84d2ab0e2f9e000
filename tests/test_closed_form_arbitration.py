"""A closed form and quadrature that disagree are settled by a third method, never by trusting quadrature.

The references are hand-derived: E[relu(z)^2] = q/2 and E[relu'(z)^2] = 1/2 (He et al. 2015), and for the narrow
bump f(x) = x + x exp(-a (x - b)^2) the 40-digit mpmath integral written below, split at the bump.
"""

import importlib
import warnings

import mpmath as mp
import numpy as np
import pytest

import gainderive as gd
from gainderive import gaussian_rules, verify
from gainderive.activation import Activation
from gainderive.closed_form import ClosedForm
from gainderive.estimate import Estimate
from gainderive.verify import verdicts


@pytest.fixture(autouse=True)
def _no_compiled_activations(monkeypatch):
    """moments() keeps each activation's verified forms per formula (its compile cache), not per object: empty it
    before and after each test here, so that a form verified elsewhere is not used and a monkeypatched verdict does
    not outlive its test.  The disk cache is off: a monkeypatched verdict must never be stored, nor one stored by
    an earlier run be used instead of the patched verification."""
    monkeypatch.setenv("GAINDERIVE_NO_CACHE", "1")
    moments_module = importlib.import_module("gainderive.moments")  # gainderive.moments is the function
    moments_module.clear_compile_cache()
    yield
    moments_module.clear_compile_cache()


def fresh(formula: str) -> Activation:
    """A new Activation object: the verdict cache is per object, so monkeypatched runs do not leak."""
    return Activation(name=formula, formula=formula, reference="user formula")


def with_form(moment: str, text: str, act: Activation):
    """The rules' derived forms for ``act``, with ``moment`` replaced by ``text``."""
    forms = dict(gaussian_rules.closed_forms(act))
    forms[moment] = ClosedForm(moment, text, text)
    return forms


def test_wrong_form_is_rejected_with_the_reason_and_quadrature_is_kept(monkeypatch):
    act = fresh("max(x, 0)")
    wrong = with_form("second_moment", "q/2 + q**2/1000", act)  # right at q -> 0 only
    monkeypatch.setattr(gaussian_rules, "closed_forms", lambda a: wrong if a is act else {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        verdict = verdicts(act)["second_moment"]
        m = gd.moments(act, 2.0)
    assert verdict.status == "rejected"
    assert "30-digit" in verdict.reason and "q = " in verdict.reason
    assert m.second_moment.method == "quadrature"
    # q/2 by hand; the quadrature bar plus a few ulps
    assert abs(m.second_moment.value - 1.0) <= m.second_moment.error + 4 * np.finfo(float).eps
    assert verdicts(act)["mean"].status == "verified"


def test_form_that_high_precision_confirms_replaces_a_wrong_quadrature(monkeypatch):
    act = fresh("max(x, 0)")
    true_reference = verify._reference

    def wrong_quadrature(point, q):
        out = dict(true_reference(point, q))
        est = out["derivative_second_moment"]
        out["derivative_second_moment"] = Estimate(est.value + 1e-6, est.error, est.method)  # off, tiny bar
        return out

    monkeypatch.setattr(verify, "_reference", wrong_quadrature)
    verdict = verdicts(act)["derivative_second_moment"]
    assert verdict.status == "preferred" and "high precision" in verdict.reason
    m = gd.moments(act, np.array([0.5, 3.0]))
    assert m.derivative_second_moment.method == "closed_form"
    # E[relu'^2] = P(z > 0) = 1/2 at every q
    assert np.all(np.abs(m.derivative_second_moment.value - 0.5) <= m.derivative_second_moment.error + 1e-16)


def test_arbitration_that_cannot_be_settled_rejects_the_form(monkeypatch):
    from gainderive.errors import ConvergenceError

    act = fresh("max(x, 0)")
    wrong = with_form("mean", "sqrt(q)/3", act)

    def no_answer(*_):
        raise ConvergenceError("stand-in for a high-precision failure")

    monkeypatch.setattr(gaussian_rules, "closed_forms", lambda a: wrong if a is act else {})
    monkeypatch.setattr(verify, "_high_precision_reference", no_answer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        verdict = verdicts(act)["mean"]
    assert verdict.status == "rejected" and "could not settle" in verdict.reason


NARROW = "x + x*exp(-100000000*(x - 0.5)**2)"


def _narrow_reference(h) -> mp.mpf:
    """E[h(z)], z ~ N(0, 1), at 40 digits, split at the bump's centre 0.5 and at 0.5 +- 1e-4 * 2^k."""
    a, b = mp.mpf(10) ** 8, mp.mpf("0.5")
    with mp.workdps(40):
        w = 1 / mp.sqrt(a)
        cuts = sorted({b + s * w * mp.mpf(2) ** k for k in range(-2, 8) for s in (-1, 1)} | {b, mp.mpf(0)})
        return mp.quad(lambda z: h(z, a, b) * mp.npdf(z), [-mp.inf, *cuts, mp.inf])


def test_narrow_bump_forms_survive_and_match_the_40_digit_integral():
    def dfsq(z, a, b):
        return (1 + mp.exp(-a * (z - b) ** 2) * (1 - 2 * a * z * (z - b))) ** 2

    truth = _narrow_reference(dfsq)  # 1104.12...
    act = fresh(NARROW)
    found = verdicts(act)
    assert all(v.status in ("verified", "preferred") for v in found.values()), found
    m = gd.moments(act, 1.0)
    d = m.derivative_second_moment
    assert abs(d.value - float(truth)) <= d.error + 8 * np.finfo(float).eps * float(truth)
    assert abs(gd.gains(m).fan_out.value - float(1 / mp.sqrt(truth))) < 1e-12


def test_cli_reports_a_dropped_form_with_its_reason_never_none(monkeypatch, capsys):
    from gainderive.cli import main

    formula = "max(x, 0) + 0*x**3"  # relu, spelled so that no other test has its verdicts cached
    real = gaussian_rules.closed_forms

    def wrong_mean(act):
        forms = dict(real(act))
        if act.formula == formula:
            forms["mean"] = ClosedForm("mean", "sqrt(q)/3", "sqrt(q)/3")  # the truth is sqrt(q/(2 pi))
        return forms

    monkeypatch.setattr(gaussian_rules, "closed_forms", wrong_mean)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["derive", formula, "-q", "2"]) == 0
    out = capsys.readouterr().out
    assert "closed forms: none" not in out
    assert "derived but dropped: disagrees with 30-digit quadrature" in out
    mean_line = next(line for line in out.splitlines() if line.strip().startswith("E[f(z)] "))
    value = float(mean_line.split()[1])
    assert abs(value - np.sqrt(2 / (2 * np.pi))) < 1e-14  # E[relu(z)] = sqrt(q/(2 pi)), by hand
