"""The kernels' fixed rule (issue #13, point 3): every correlation by one fixed product rule, refined only where its
error estimate fails, and within its bar of references computed here in mpmath at 32 digits.

References: E[tanh(u) tanh(v)] and E[sech^2(u) sech^2(v)] by a product Gauss-Legendre rule written below (not the
library's code); E[e^u e^v] = exp((q1 + q2 + 2 c sqrt(q1 q2)) / 2) by hand (the moment generating function of
u + v); the arc-cosine kernel of Cho & Saul (2009) in its textbook form.  Every check is |value - reference| <= error
+ a few ulps: the bars are what is tested, not a tolerance chosen here.
"""

import functools
import math

import mpmath as mp
import numpy as np
import pytest
from mpmath.calculus.quadrature import GaussLegendre

import gainderive.correlation as correlation
from gainderive.correlation import kernel

ULP = 2.0**-52
Q1, Q2 = 1.3, 0.7  # q1 != q2 on purpose: the two variables' rules have different steps


def _holds(value, error, reference, ulps=4):
    """|value - reference| <= error + ``ulps`` ulps of the reference (and of the smallest normal, where it is 0)."""
    with mp.workdps(40):
        slack = ulps * ULP * abs(reference) + mp.mpf(2.0**-1022)
        return abs(mp.mpf(float(value)) - reference) <= mp.mpf(float(error)) + slack


# ---------------------------------------------------------------- references

_TANH = (mp.tanh, lambda z: mp.sech(z) ** 2)  # f and f'


@functools.cache
def _nodes():
    """24-node Gauss-Legendre panels of width 2 on [-10, 10] (32 digits), with the Gaussian density folded in.

    The Gaussian beyond 10 weighs 1.5e-23.  tanh and sech^2 have their poles at Im z = +-pi/2, so f(sqrt(q) x) is
    analytic within |Im x| < pi / (2 sqrt(q)) >= 1.38 for q <= 1.3; on a panel of half-width 1 the 24-node rule then
    converges like rho^-48 with rho = 1.38 + sqrt(1 + 1.38^2) = 3.08, i.e. 4e-24 (the inner expectation G(x) is f
    smoothed by a Gaussian, analytic at least as far).  Well below the float64 values' ulps (1e-17 here).
    """
    with mp.workdps(32):
        rule = GaussLegendre(mp.mp).calc_nodes(4, mp.mp.prec)
        points, weights = [], []
        for left in range(-10, 10, 2):
            for t, w in rule:
                x = left + 1 + t
                points.append(x)
                weights.append(w * mp.exp(-x * x / 2) / mp.sqrt(2 * mp.pi))
        return points, weights


@functools.cache
def _reference(q1, q2, c, derivative=False):
    """E[g(u) g(v)], g = tanh (or sech^2), u = sqrt(q1) x, v = sqrt(q2) (c x + s y), at 32 digits.

    c = +-1: v = +-sqrt(q2/q1) u, a 1-D integral; c = 0: the product of the two means; otherwise the 2-D product
    rule.  Odd tanh gives K(-c) = -K(c), even sech^2 K(-c) = K(c) (v -> -v): one 2-D integral serves both signs.
    """
    g = _TANH[derivative]
    if c < 0 and c != -1:
        return (1 if derivative else -1) * _reference(q1, q2, -c, derivative)
    xs, ws = _nodes()
    with mp.workdps(32):
        s1, s2, mc = mp.sqrt(mp.mpf(q1)), mp.sqrt(mp.mpf(q2)), mp.mpf(c)
        if abs(c) == 1:
            return mp.fsum(w * g(s1 * x) * g(s2 * mc * x) for x, w in zip(xs, ws))
        if c == 0:
            return mp.fsum(w * g(s1 * x) for x, w in zip(xs, ws)) * mp.fsum(w * g(s2 * x) for x, w in zip(xs, ws))
        s = mp.sqrt((1 - mc) * (1 + mc))
        steps = [s2 * s * y for y in xs]
        return mp.fsum(wx * g(s1 * x) * mp.fsum(wy * g(s2 * mc * x + t) for t, wy in zip(steps, ws))
                       for x, wx in zip(xs, ws))


def _exp_reference(q1, q2, c):
    """E[e^u e^v] = E[e^(u + v)] = exp(Var(u + v) / 2), Var(u + v) = q1 + q2 + 2 c sqrt(q1 q2)."""
    with mp.workdps(40):
        return mp.exp((mp.mpf(q1) + mp.mpf(q2) + 2 * mp.mpf(c) * mp.sqrt(mp.mpf(q1) * mp.mpf(q2))) / 2)


@pytest.fixture
def paths(monkeypatch):
    """Records which correlations each rule was asked for: ("fixed", refinement, c, accepted) and ("adaptive", c)."""
    calls = []
    fixed, adaptive = correlation._fixed_rule, correlation._adaptive_quadrature

    def spy_fixed(act, q1, q2, c, derivative, rtol, refine=0):
        out = fixed(act, q1, q2, c, derivative, rtol, refine)
        calls.append(("fixed", refine, c.copy(), None if out is None else out[2].copy()))
        return out

    def spy_adaptive(act, q1, q2, c, derivative, rtol):
        calls.append(("adaptive", c.copy()))
        return adaptive(act, q1, q2, c, derivative, rtol)

    monkeypatch.setattr(correlation, "_fixed_rule", spy_fixed)
    monkeypatch.setattr(correlation, "_adaptive_quadrature", spy_adaptive)
    return calls


# ---------------------------------------------------------------- values within their bars

TANH_C = (-1.0, -0.999, 0.0, 0.3, 0.999, 1.0)


def test_tanh_kernel_is_settled_by_the_fixed_rule_within_its_bars(paths):
    """E[tanh u tanh v] at q = (1.3, 0.7): near c = -1 (the inner Gaussian collapses), at c = 0 (the product of the
    means, 0 for odd tanh) and at c = +-1 exactly; all in one call, all by the first fixed rule."""
    k = kernel("tanh", list(TANH_C), Q1, Q2)
    assert k.method == "quadrature"
    assert [call[0] for call in paths] == ["fixed"] and paths[0][3].all()  # no refinement, no adaptive rule
    for c, value, error in zip(TANH_C, k.value, k.error):
        reference = _reference(Q1, Q2, c)
        assert _holds(value, error, reference), (c, value, error, float(reference))
        # the bar is useful, not just honest: within the 1e-12 target (absolute 100 eps E|h| where K = 0)
        assert error <= 1e-12 * abs(value) + 1e-14, (c, error)


def test_tiny_correlation_of_an_odd_activation():
    """c = 1e-9: K ~ 4e-10, far below E|f(u) f(v)| (the adaptive rule alone raised ConvergenceError here).  By the
    Hermite expansion (Price's theorem), K = c r E[f'(u)] E[f'(v)] + c^3 r^3 / 6 E[f^(3)(u)] E[f^(3)(v)] + ..., the
    even terms 0 for odd tanh; the c^3 term is ~1e-27, far below the bar."""
    c = 1e-9
    k = kernel("tanh", c, Q1, Q2)
    with mp.workdps(40):
        reference = mp.mpf(c) * mp.sqrt(mp.mpf(Q1) * mp.mpf(Q2)) * _reference(Q1, Q2, 0.0, True)
    assert _holds(k.value, k.error, reference), (float(k.value), float(k.error), float(reference))
    assert float(k.error) <= 1e-14


def test_derivative_kernel_refines_only_the_correlations_that_need_it(paths):
    """E[sech^2 u sech^2 v] at q = 1: near c = +-1 the integrand is sech^4-like (fourth-order poles), and the first
    lattice's estimate fails there; those c, and only those, get the lattice with half the steps."""
    cs = [-1.0, -0.97, 0.0, 0.5, 0.97, 1.0]
    k = kernel("tanh", cs, 1.0, derivative=True)
    first, *rest = paths
    assert first[:2] == ("fixed", 0) and first[3][2] and first[3][3]  # c = 0 and 0.5 settled at once
    refined = np.concatenate([call[2] for call in rest if call[0] == "fixed"]) if rest else np.zeros(0)
    assert set(refined) <= {-1.0, -0.97, 0.97, 1.0}
    assert not any(call[0] == "adaptive" for call in paths)
    for c, value, error in zip(cs, k.value, k.error):
        if c in (-1.0, 0.0, 1.0):  # 1-D references; the others are checked below against 2-D ones
            assert _holds(value, error, _reference(1.0, 1.0, c, True)), (c, value, error)


def test_derivative_kernel_near_one_within_its_bar():
    k = kernel("tanh", [-0.97, 0.97], 1.0, derivative=True)
    reference = _reference(1.0, 1.0, 0.97, True)  # sech^2 is even: K(-c) = K(c)
    for value, error in zip(k.value, k.error):
        assert _holds(value, error, reference)


def test_growing_activation_falls_back_to_the_adaptive_rule_where_the_tails_matter(paths):
    """E[e^u e^v] at q = 4: for c >= -0.5 the integrand peaks near the lattice's edge (u + v has variance up to 16),
    the tail bound fails and those c go to the adaptive rule; c = -1 and -0.75 do not need it."""
    cs = np.linspace(-1, 1, 9)
    k = kernel("exp(x)", cs, 4.0)
    settled = paths[0][3]
    assert settled[0] and not settled[-1]
    adaptive = np.concatenate([call[1] for call in paths if call[0] == "adaptive"])
    assert np.array_equal(np.sort(adaptive), np.sort(cs[~settled]))  # the lattices refused them, and only them
    for c, value, error in zip(cs, k.value, k.error):
        assert _holds(value, error, _exp_reference(4.0, 4.0, c)), (c, value, error)


@pytest.mark.parametrize("name, q", [("tanh", 400.0), ("elu", 1.0)])
def test_fixed_rule_is_not_tried_where_it_cannot_work(paths, name, q):
    """A sharp activation at large q (tanh at q = 400: transitions 1/20 of a standard deviation wide, more lattice
    nodes than the cap) and a kink (ELU: the trapezoid rule would converge like h^2) go to the adaptive rule."""
    kernel(name, [0.2, 0.5], q)
    assert paths[0][:2] == ("fixed", 0) and paths[0][3] is None
    assert paths[-1][0] == "adaptive" and list(paths[-1][1]) == [0.2, 0.5]


def test_a_correlation_does_not_depend_on_the_others_in_the_call():
    """Each c is accepted or refined on its own: alone, or next to correlations that need refinement or the
    adaptive rule, it gets the same value within both bars."""
    for name, q, c, companions, kw in [("tanh", 1.0, 0.5, [-1.0, 0.97, 1.0], {"derivative": True}),
                                       ("exp(x)", 4.0, -1.0, [0.5, 1.0], {}),
                                       ("tanh", Q1, 0.3, list(np.linspace(-1, 1, 41)), {})]:
        alone = kernel(name, c, q, **kw)
        for batch in ([c, *companions], [*companions, c]):
            together = kernel(name, batch, q, **kw)
            i = batch.index(c)
            value, error = together.value[i], together.error[i]
            assert abs(value - float(alone.value)) <= error + float(alone.error) + 4 * ULP * abs(value), (name, c)


def test_shapes_and_scalars_are_kept():
    grid = np.array([[0.1, -0.2], [0.3, 1.0]])
    for name in ("tanh", "relu"):
        assert kernel(name, grid).value.shape == (2, 2)
        assert np.ndim(kernel(name, 0.5).value) == 0 and np.ndim(kernel(name, 0.5).error) == 0


# ---------------------------------------------------------------- the closed forms without sin and cos

def _arc_cosine_reference(q1, q2, c):
    """Cho & Saul (2009): r (sin θ + (π - θ) cos θ) / (2π), θ = arccos c, at 60 digits (it cancels near c = -1)."""
    with mp.workdps(60):
        c = mp.mpf(c)
        theta = mp.acos(c)
        return mp.sqrt(mp.mpf(q1) * mp.mpf(q2)) * (mp.sin(theta) + (mp.pi - theta) * c) / (2 * mp.pi)


def test_arc_cosine_kernel_on_both_sides_of_the_series_switch():
    """J(θ') = sqrt(1 - c^2) + c θ' cancels most at θ' = 3/4 (c = -cos 3/4 = -0.7317), where the series takes over:
    on both sides the value is within its bar and the bar a few ulps (the cancellation costs < 3 bits)."""
    switch = -math.cos(0.75)
    cs = sorted({switch, np.nextafter(switch, 0), np.nextafter(switch, -1), *np.linspace(-0.76, -0.70, 13),
                 -0.999, -0.5, 0.0, 0.5, 0.999})
    k = kernel("relu", cs, Q1, Q2)
    for c, value, error in zip(cs, k.value, k.error):
        reference = _arc_cosine_reference(Q1, Q2, c)
        assert _holds(value, error, reference), (c, value, error)
        assert error <= 64 * ULP * abs(value), (c, error / value)
