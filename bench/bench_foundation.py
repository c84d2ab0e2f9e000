"""Benchmarks for the foundation: quadrature speed and accuracy, Monte Carlo throughput and memory, start-up.

Every figure is printed beside a baseline measured in the same run, on the same machine:

(a) ELU's moments (E f, E f^2, E f'^2, Var f) at 1,000 log-spaced q in [1e-3, 1e3] by gainderive's
    vectorised quadrature, against a Python loop of scipy.integrate.quad over the same grid computing the
    same moments (split at the kink, math-module integrands: the fastest fair loop), with the maximum
    relative error of each against ELU's closed form evaluated in mpmath at 30 digits.
(b) Monte Carlo evaluations per second against numpy's raw standard_normal rate, and the peak traced
    memory of a 1e6- and a 1e8-sample run.
(c) Wall time of `gainderive derive relu` in a fresh process against a bare `python -c pass`.

Timings are the minimum over repeats (this machine is a shared VM; the minimum is the least noisy).
Usage:  python bench/bench_foundation.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
import tracemalloc

import mpmath as mp
import numpy as np


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def elu_closed_form(q: float) -> tuple[float, float, float, float]:
    """E f, E f^2, E f'^2, Var f for ELU(alpha=1), derived by hand (see tests/closed_forms.py)."""
    with mp.workdps(30):
        q = mp.mpf(q)
        s = mp.sqrt(q)
        mean = s / mp.sqrt(2 * mp.pi) + mp.exp(q / 2) * mp.ncdf(-s) - mp.mpf(1) / 2
        second = q / 2 + mp.exp(2 * q) * mp.ncdf(-2 * s) - 2 * mp.exp(q / 2) * mp.ncdf(-s) + mp.mpf(1) / 2
        derivative = mp.mpf(1) / 2 + mp.exp(2 * q) * mp.ncdf(-2 * s)
        return float(mean), float(second), float(derivative), float(second - mean**2)


def quad_loop(qs: np.ndarray) -> np.ndarray:
    """The baseline: scipy.integrate.quad per q and per moment, each side of the kink separately."""
    from scipy.integrate import quad

    out = np.empty((4, qs.size))
    for i, q in enumerate(qs):
        norm = 1.0 / math.sqrt(2 * math.pi * q)

        def pdf(z, q=q, norm=norm):
            return norm * math.exp(-z * z / (2 * q))

        def both(neg, pos, pdf=pdf):
            return quad(lambda z: neg(z) * pdf(z), -math.inf, 0)[0] + quad(lambda z: pos(z) * pdf(z), 0, math.inf)[0]

        mean = both(math.expm1, lambda z: z)
        second = both(lambda z: math.expm1(z) ** 2, lambda z: z * z)
        derivative = both(lambda z: math.exp(2 * z), lambda z: 1.0)
        out[:, i] = mean, second, derivative, second - mean * mean
    return out


def bench_quadrature(repeats: int) -> None:
    import gainderive as gd

    qs = np.logspace(-3, 3, 1000)
    exact = np.array([elu_closed_form(q) for q in qs]).T
    gd.moments("elu", qs, method="quadrature")  # build the activation and compile its pieces once, as any session would

    def ours():
        m = gd.moments("elu", qs, method="quadrature")
        return np.array([m.mean.value, m.second_moment.value, m.derivative_second_moment.value, m.variance.value])

    t_ours = best_of(ours, repeats)
    t_quad = best_of(lambda: quad_loop(qs), max(1, repeats // 5))
    scale = np.sqrt(exact[1])  # E f can vanish; measure it against sqrt(E f^2) as the tests do
    scales = np.array([scale, exact[1], exact[2], exact[3]])
    err_ours = np.max(np.abs(ours() - exact) / scales)
    err_quad = np.max(np.abs(quad_loop(qs) - exact) / scales)
    m = gd.moments("elu", qs, method="quadrature")
    honest = all(np.all(np.abs(np.asarray(e.value) - x) <= np.asarray(e.error) + 4e-16 * s)
                 for (_, e), x, s in zip(m, exact, scales))
    print("(a) ELU moments (mean, E f^2, E f'^2, Var f) at 1,000 log-spaced q in [1e-3, 1e3]")
    print(f"    gainderive quadrature : {t_ours * 1e3:9.2f} ms   max rel. error {err_ours:.1e}   "
          f"reported errors honest: {honest}")
    print(f"    scipy.quad loop       : {t_quad * 1e3:9.2f} ms   max rel. error {err_quad:.1e}")
    print(f"    speed-up              : {t_quad / t_ours:9.1f} x   (target >= 50 x, with a smaller error)")


def bench_monte_carlo(repeats: int, big: int) -> None:
    import gainderive as gd
    from gainderive.backends import monte_carlo

    n = 2**22
    rng = np.random.default_rng(0)
    buf = np.empty(monte_carlo._CHUNK)

    def raw():
        for _ in range(n // buf.size):
            rng.standard_normal(out=buf)

    gd.moments("elu", 1.0, method="monte_carlo", samples=10_000)
    # interleaved, so that both minima come from the same stretch of time on a shared machine
    t_raw, t_mc = float("inf"), float("inf")
    for _ in range(repeats):
        t_raw = min(t_raw, best_of(raw, 1))
        t_mc = min(t_mc, best_of(lambda: gd.moments("elu", 1.0, method="monte_carlo", samples=n), 1))
    raw_rate, mc_rate = n / t_raw, n / t_mc
    print("(b) Monte Carlo, ELU moments at q = 1 (antithetic pairs: one normal draw per two samples)")
    print(f"    numpy standard_normal : {raw_rate / 1e6:9.1f} M normals/s")
    print(f"    gainderive samples    : {mc_rate / 1e6:9.1f} M samples/s   ratio {mc_rate / raw_rate:.2f} "
          "(target >= 0.5)")
    peaks = {}
    for samples in (10**6, big):
        tracemalloc.start()
        gd.moments("elu", 1.0, method="monte_carlo", samples=samples)
        peaks[samples] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    print("    peak traced memory    : " + "   ".join(f"{k:.0e} samples {v / 2**20:6.2f} MiB" for k, v in peaks.items())
          + f"   ratio {peaks[big] / peaks[10**6]:.2f} (target: flat)")


def bench_startup(repeats: int) -> None:
    def run(*argv):
        subprocess.run([sys.executable, *argv], check=True, capture_output=True)

    t_bare = best_of(lambda: run("-c", "pass"), repeats)
    t_import = best_of(lambda: run("-c", "import numpy, sympy"), repeats)
    t_cli = best_of(lambda: run("-m", "gainderive", "derive", "relu"), repeats)
    print("(c) start-up, fresh process")
    print(f"    python -c pass        : {t_bare * 1e3:9.0f} ms")
    print(f"    import numpy, sympy   : {t_import * 1e3:9.0f} ms")
    print(f"    gainderive derive relu: {t_cli * 1e3:9.0f} ms   (target < 1000 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and 1e7 instead of 1e8 samples")
    args = parser.parse_args()
    repeats = 3 if args.quick else 10
    bench_quadrature(repeats)
    bench_monte_carlo(max(3, repeats), 10**7 if args.quick else 10**8)
    bench_startup(max(3, repeats // 2))


if __name__ == "__main__":
    main()
