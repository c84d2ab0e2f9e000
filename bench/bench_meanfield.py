"""Correlation kernels and mean-field quantities: speed and accuracy against scipy baselines measured in the same run.

(a) E[f(u) f(v)] for 101 correlations c in [-1, 1] (q1 = 1.3, q2 = 0.7): gainderive's vectorised 2-D
    quadrature against scipy.integrate.dblquad, one call per c (split at the kinks for relu), both checked
    against the arc-cosine closed form (relu) and against each other (tanh).
(b) The edge of chaos for tanh at 21 bias variances: gainderive.meanfield.critical_line against the research-code
    recipe (brentq on chi_1(sigma_w^2) - 1, each chi_1 needing a fixed point by 200 iterations of the variance
    map, every moment by scipy.integrate.quad).
Usage: python bench/bench_meanfield.py
"""

from __future__ import annotations

import math
import time

import numpy as np

from gainderive import meanfield
from gainderive.correlation import kernel

Q1, Q2 = 1.3, 0.7
C = np.linspace(-1, 1, 101)


def dblquad_kernel(f, c, kink):
    from scipy.integrate import dblquad, quad

    s = math.sqrt(1 - c * c)
    phi = 1 / (2 * math.pi)
    if s == 0:  # v = +-sqrt(q2/q1) u: one dimension
        return quad(lambda x: f(math.sqrt(Q1) * x) * f(math.sqrt(Q2) * c * x) * math.exp(-x * x / 2), -40, 40,
                    points=[0.0], limit=200)[0] / math.sqrt(2 * math.pi)

    def h(y, x):
        return f(math.sqrt(Q1) * x) * f(math.sqrt(Q2) * (c * x + s * y)) * math.exp(-(x * x + y * y) / 2) * phi

    if not kink:
        return dblquad(h, -12, 12, -12, 12, epsabs=1e-14, epsrel=1e-12)[0]
    # split where u and v change sign: x = 0, and y = -c x / s
    total = 0.0
    for xa, xb in ((-12, 0), (0, 12)):
        total += dblquad(h, xa, xb, -12, lambda x: -c * x / s, epsabs=1e-14, epsrel=1e-12)[0]
        total += dblquad(h, xa, xb, lambda x: -c * x / s, 12, epsabs=1e-14, epsrel=1e-12)[0]
    return total


def best_of(fn, repeats=3):
    best, result = math.inf, None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def research_recipe_critical(bias_variances):
    from scipy.integrate import quad
    from scipy.optimize import brentq

    def expect(g, q):
        value = quad(lambda z: g(math.sqrt(q) * z) * math.exp(-z * z / 2), -40, 40, limit=200)[0]
        return value / math.sqrt(2 * math.pi)

    def chi1(sw, sb):
        q = 1.0
        for _ in range(200):
            q = sw * expect(lambda z: math.tanh(z) ** 2, q) + sb
        return sw * expect(lambda z: 1 / math.cosh(z) ** 4, q) - 1

    return [brentq(chi1, 0.5, 5.0, args=(sb,), xtol=1e-12) for sb in bias_variances]


def main() -> None:
    relu, tanh = (lambda z: max(z, 0.0)), math.tanh
    truth = kernel("relu", C, Q1, Q2).value  # the arc-cosine closed form
    print(f"(a) E[f(u) f(v)] at {C.size} correlations, q1 = {Q1}, q2 = {Q2}")
    sample = C[::10]  # dblquad is slow: time 11 of the 101 and scale
    for name, f, kink in (("relu", relu, True), ("tanh", tanh, False)):
        kernel(name, C[:3], Q1, Q2, method="quadrature")  # compile the activation once, outside the timing
        t_ours, ours = best_of(lambda name=name: kernel(name, C, Q1, Q2, method="quadrature").value)
        t_base, base = best_of(lambda f=f, kink=kink: [dblquad_kernel(f, c, kink) for c in sample], repeats=1)
        t_base *= C.size / sample.size
        print(f"    {name:<5} gainderive quadrature : {t_ours:8.3f} s")
        print(f"    {name:<5} scipy dblquad loop    : {t_base:8.3f} s   (11 of 101 timed, scaled)   "
              f"speed-up {t_base / t_ours:6.1f} x")
        if name == "relu":
            scale = math.sqrt(Q1 * Q2)
            print(f"    relu  largest error vs closed form: gainderive {np.max(np.abs(ours - truth)) / scale:.1e}, "
                  f"dblquad {np.max(np.abs(np.array(base) - truth[::10])) / scale:.1e}   (relative to sqrt(q1 q2))")
        else:
            print(f"    tanh  largest |gainderive - dblquad| {np.max(np.abs(ours[::10] - np.array(base))):.1e}")

    sb = np.linspace(0.0, 0.5, 21)[1:]
    meanfield.critical_line("tanh", [0.1])  # build the integrand once, outside the timing
    t_ours, line = best_of(lambda: meanfield.critical_line("tanh", sb))
    t_base, base = best_of(lambda: research_recipe_critical(sb), repeats=1)
    ours = np.array([p.weight_variance for p in line])
    print(f"(b) tanh edge of chaos at {sb.size} bias variances")
    print(f"    gainderive critical_line        : {t_ours:8.3f} s")
    print(f"    iterate + quad + brentq recipe  : {t_base:8.3f} s   speed-up {t_base / t_ours:6.1f} x")
    print(f"    largest relative difference in sigma_w^2: {np.max(np.abs(ours - base) / base):.1e}")


if __name__ == "__main__":
    main()
