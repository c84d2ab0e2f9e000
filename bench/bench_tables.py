"""The whole registry's table (22 activations x 1,001 q) against a scipy.integrate.quad loop over the same grid.

gainderive: gd.table(name, "1e-3:1e3:1001") for every registry activation (moments and gains, method "auto").
Baseline, measured in the same run: for every activation and q, scipy.integrate.quad of E[f], E[f^2] and E[f'^2]
on each smooth piece (split at the kinks, integrands compiled to the math module by sympy.lambdify, the
fastest fair loop), summed over pieces.  The maximum relative difference between the two is printed too.
Usage: python bench/bench_tables.py
"""

from __future__ import annotations

import math
import time

import numpy as np

import gainderive as gd

GRID = "1e-3:1e3:1001"


def quad_loop(names, qs):
    import sympy as sp
    from scipy.integrate import quad

    from gainderive.formula import X

    special = {  # scalar versions of gainderive's special functions, overflow-safe like the library's
        "Phi": lambda u: 0.5 * math.erfc(-u / math.sqrt(2)),
        "sigmoid": lambda u: 1 / (1 + math.exp(-u)) if u >= 0 else math.exp(u) / (1 + math.exp(u)),
        "softplus": lambda u: max(u, 0.0) + math.log1p(math.exp(-abs(u))),
    }
    out = {}
    for name in names:
        act = gd.activation(name)
        pieces = [(p.lower, p.upper, [sp.lambdify(X, h, [special, "math"])
                                      for h in (p.expression, p.expression**2, p.derivative**2)])
                  for p in act.pieces]
        values = np.empty((3, qs.size))
        for i, q in enumerate(qs):
            norm = 1 / math.sqrt(2 * math.pi * q)
            for j in range(3):
                total = 0.0
                for lo, hi, fns in pieces:
                    def integrand(z, fn=fns[j], q=q, norm=norm):
                        weight = norm * math.exp(-z * z / (2 * q))
                        return fn(z) * weight if weight > 0 else 0.0

                    total += quad(integrand, lo, hi, limit=200)[0]
                values[j, i] = total
        out[name] = values
    return out


def main() -> None:
    names = list(gd.REGISTRY)
    qs = gd.table("relu", GRID).q
    gd.table("elu", "1,2")  # load the registry cache once, as any session would
    start = time.perf_counter()
    tables = {name: gd.table(name, GRID) for name in names}
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    baseline = quad_loop(names, qs)
    t_quad = time.perf_counter() - start
    worst, where = 0.0, ""
    for name in names:
        t = tables[name]
        ours = np.array([t.columns["mean"], t.columns["second_moment"], t.columns["derivative_second_moment"]])
        scale = np.array([np.sqrt(t.columns["second_moment"]), t.columns["second_moment"],
                          np.maximum(t.columns["derivative_second_moment"], 1e-300)])
        difference = np.abs(ours - baseline[name]) / scale
        if difference.max() > worst:
            j, i = np.unravel_index(np.argmax(difference), difference.shape)
            worst, where = float(difference.max()), f"{name}, {('E f', 'E f^2', 'E f`^2')[j]}, q = {qs[i]:.3g}"
    print(f"whole registry, {len(names)} activations x {qs.size} q")
    print(f"    gainderive tables     : {t_ours:8.2f} s   (target <= 2 s)")
    print(f"    scipy.quad loop       : {t_quad:8.2f} s")
    print(f"    speed-up              : {t_quad / t_ours:8.1f} x")
    print(f"    largest relative difference {worst:.1e} ({where}); quad's default tolerance is 1.5e-8, and the")
    print("    40-digit references in tests/ put gainderive within 1e-12 (tests/test_quadrature.py)")


if __name__ == "__main__":
    main()
