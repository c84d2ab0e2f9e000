"""Closed forms: time to derive and verify each registry activation's, beside sympy.stats.E in the same run.

For every activation with closed forms, gainderive's derivation of all four moments (rule-based integration,
tidying, verification against quadrature at 5 q and 2 parameter points) is timed cold (caches cleared), and
sympy.stats.E(f(Z)**2) with Z = Normal(0, sqrt(q)) is run in a subprocess with a time limit, reporting its time
and whether its answer matches ours.  Usage: python bench/bench_closed_forms.py [--limit SECONDS]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

SYMPY_STATS = r"""
import json, sys, time, sympy as sp
from sympy.stats import E, Normal
from gainderive import activation
from gainderive.formula import X
from gainderive._structure import exact
from gainderive.formula import parameter_symbol
name = sys.argv[1]
act = activation(name)
q = sp.Symbol("q", positive=True)
z = Normal("z", 0, sp.sqrt(q))
f = act.symbolic_expression.subs({parameter_symbol(k): exact(v) for k, v in act.params.items()})
f = f.rewrite(sp.Piecewise)
start = time.perf_counter()
value = E(f.subs(X, z) ** 2)
elapsed = time.perf_counter() - start
evaluated = not value.has(sp.Integral)
number = float(value.subs(q, sp.Rational(7, 10)).evalf()) if evaluated else None
print(json.dumps({"seconds": elapsed, "evaluated": evaluated, "value": number}))
"""


def ours(name: str) -> tuple[float, float | None]:
    import gainderive as gd
    from gainderive import gaussian_rules, verify
    from gainderive.closed_form import Q

    verify.verdicts.cache_clear()
    act = gd.activation(name)
    start = time.perf_counter()
    forms = verify.verified_forms(act)
    elapsed = time.perf_counter() - start
    second = forms["second_moment"]
    values = gaussian_rules._values(act)
    value = None if second is None else float(second.expression.subs(values).subs(Q, 0.7).evalf())
    return elapsed, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=float, default=20.0, help="seconds allowed to sympy.stats.E (default 20)")
    args = parser.parse_args()
    covered = ["identity", "relu", "leaky_relu", "prelu", "abs", "elu", "celu", "selu", "gelu", "erf", "sin",
               "hardtanh", "relu6", "hardsigmoid", "hardswish"]
    header = f"{'activation':<12} {'gainderive (derive + verify, cold)':>36} {'sympy.stats.E(f(z)^2)':>30}"
    print(header + "  agree at q=0.7")
    worst = 0.0
    for name in covered:
        t_ours, v_ours = ours(name)
        worst = max(worst, t_ours)
        try:
            done = subprocess.run([sys.executable, "-c", SYMPY_STATS, name], capture_output=True, text=True,
                                  timeout=args.limit, check=True)
            result = json.loads(done.stdout)
            if result["evaluated"]:
                sympy_text = f"{result['seconds']:8.2f} s"
                agree = "yes" if abs(result["value"] - v_ours) <= 1e-9 * abs(v_ours) else "NO (sympy is wrong)"
            else:
                sympy_text, agree = f"{result['seconds']:8.2f} s, unevaluated", "-"
        except subprocess.TimeoutExpired:
            sympy_text, agree = f"> {args.limit:g} s (stopped)", "-"
        except subprocess.CalledProcessError as exc:
            sympy_text, agree = f"failed: {exc.stderr.strip().splitlines()[-1][:30]}", "-"
        print(f"{name:<12} {t_ours:34.2f} s {sympy_text:>30}  {agree}")
    print(f"slowest gainderive derivation: {worst:.2f} s (target <= 2 s cold)")


if __name__ == "__main__":
    main()
