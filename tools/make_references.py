"""Generate tests/data/references.json: independent reference Gaussian moments.

How the values are computed
---------------------------
Every value comes from tests/reference_activations.py, which shares no code with
gainderive: each activation f and its derivative f' are written out by hand in
mpmath, and E[f(z)], E[f(z)^2], E[f'(z)^2] for z ~ N(0, q) are integrated with
mpmath.quad (tanh-sinh) after substituting z = sqrt(q) t and splitting the t-axis
at every kink, at 0, at k/sqrt(q) for k in (0.25, 1, 4, 16) and at 2, 5, 10.
Each record is computed twice, at 40 and at 50 significant digits, and must agree
to 38 digits; the stored strings are the 50-digit result rounded to 40 digits.
q and parameters are decimal strings read exactly by mpmath.  Closed forms (relu,
prelu, elu/selu/celu, sin, erf, hardtanh, ...) are checked at the end.

Usage
-----
    python tools/make_references.py                 # regenerate (a few minutes, 2 processes)
    python tools/make_references.py --check 10      # recompute 10 random records, compare to 30 digits
    python tools/make_references.py --sanity        # closed-form checks against the existing JSON
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sys
import time
from pathlib import Path

from mpmath import mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # module level, so spawned workers can import it too

from reference_activations import ACTIVATIONS, MOMENT_NAMES, reference_moments, resolve_params  # noqa: E402

DEFAULT_OUTPUT = ROOT / "tests" / "data" / "references.json"
DPS = 40
CONFIRM_DPS = DPS + 10
AGREE_DIGITS = 38  # dps vs dps + 10; the last couple of digits are rounding
CHECK_DIGITS = 30
Q_VALUES = ("0.001", "0.01", "0.1", "0.5", "1", "2", "10", "100", "1000")

# Non-default parameter sets, each generated after the activation's default record.
VARIANTS = {
    "leaky_relu": [{"negative_slope": "0.2"}],
    "prelu": [{"a": "-0.5"}],
    "elu": [{"alpha": "2"}],
    "celu": [{"alpha": "0.5"}],
    "softplus": [{"beta": "3"}],
    "hardtanh": [{"min_val": "-2", "max_val": "0.5"}],
}


def tasks() -> list[tuple[str, dict[str, str], str]]:
    out = []
    for name in ACTIVATIONS:
        for override in [{}, *VARIANTS.get(name, [])]:
            params = resolve_params(name, override)
            out.extend((name, params, q) for q in Q_VALUES)
    return out


def _fmt(value) -> str:
    return mp.nstr(value, DPS, strip_zeros=False)


def _agree(a, b, digits: int) -> bool:
    """a == b to ``digits`` significant digits of b (exact zeros must match exactly)."""
    if b == 0:
        return a == 0
    with mp.workdps(digits + 20):
        return abs(mp.mpf(a) - mp.mpf(b)) <= mp.mpf(10) ** (-digits) * abs(mp.mpf(b))


def compute_record(task: tuple[str, dict[str, str], str]) -> tuple[dict, float]:
    name, params, q = task
    start = time.perf_counter()
    low = reference_moments(name, q, params, dps=DPS)
    high = reference_moments(name, q, params, dps=CONFIRM_DPS)
    for key in MOMENT_NAMES:
        if not _agree(low[key], high[key], AGREE_DIGITS):
            raise ArithmeticError(
                f"{name} {params} q={q} {key}: dps {DPS} gives {_fmt(low[key])}, dps {CONFIRM_DPS} gives "
                f"{_fmt(high[key])}"
            )
    record = {"name": name, "params": params, "q": q, **{k: _fmt(high[k]) for k in MOMENT_NAMES}, "dps": DPS}
    return record, time.perf_counter() - start


def recheck_record(record: dict) -> tuple[dict, list[str]]:
    """Recompute one stored record from scratch and list the moments that disagree."""
    fresh = reference_moments(record["name"], record["q"], record["params"], dps=record["dps"])
    where = f"{record['name']} {record['params']} q={record['q']}"
    bad = [
        f"{where} {key}: stored {record[key]}, recomputed {_fmt(fresh[key])}"
        for key in MOMENT_NAMES
        if not _agree(fresh[key], record[key], CHECK_DIGITS)
    ]
    return record, bad


def generate(output: Path, workers: int) -> int:
    todo = tasks()
    print(f"computing {len(todo)} records at dps {DPS} and {CONFIRM_DPS} with {workers} processes", flush=True)
    start = time.perf_counter()
    records = {}
    with multiprocessing.Pool(workers) as pool:
        for done, (record, seconds) in enumerate(pool.imap_unordered(compute_record, todo), 1):
            key = (record["name"], tuple(record["params"].items()), record["q"])
            records[key] = record
            print(
                f"[{done:3d}/{len(todo)}] {record['name']:12s} {_params_text(record['params']):28s} "
                f"q={record['q']:6s} {seconds:6.1f}s",
                flush=True,
            )
    ordered = [records[(name, tuple(params.items()), q)] for name, params, q in todo]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(ordered, indent=1) + "\n")
    print(f"wrote {len(ordered)} records to {output} in {time.perf_counter() - start:.1f}s total", flush=True)
    return sanity(ordered)


def check(path: Path, count: int, seed: int, workers: int) -> int:
    records = json.loads(path.read_text())
    chosen = random.Random(seed).sample(records, min(count, len(records)))
    start = time.perf_counter()
    failures = []
    with multiprocessing.Pool(workers) as pool:
        for record, bad in pool.imap_unordered(recheck_record, chosen):
            print(f"{'ok ' if not bad else 'BAD'} {record['name']} {_params_text(record['params'])} q={record['q']}")
            failures.extend(bad)
    for line in failures:
        print("MISMATCH", line)
    print(f"checked {len(chosen)} records (seed {seed}) to {CHECK_DIGITS} digits in {time.perf_counter() - start:.1f}s")
    return 1 if failures else 0


def _params_text(params: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in params.items()) or "-"


# --- closed-form sanity checks ------------------------------------------------------
# x ~ N(0, q), s = sqrt(q).  Building blocks, all elementary Gaussian integrals:
#   E[exp(c x); x < 0] = exp(c^2 q / 2) Phi(-c s),   E[x; x > 0] = s / sqrt(2 pi),
#   E[x^2; a < x < b] = q [Phi(B) - Phi(A) + A phi(A) - B phi(B)]  with A = a/s, B = b/s.


def _Phi(x):  # noqa: N802 (standard notation)
    return mp.ncdf(x)


def _exp_left(c, q):
    return mp.exp(c**2 * q / 2) * _Phi(-c * mp.sqrt(q))


def _elu_family(alpha, rate, scale, q):
    """Moments of scale * (x if x > 0 else alpha*(exp(rate x) - 1))."""
    s = mp.sqrt(q)
    mean = s / mp.sqrt(2 * mp.pi) + alpha * (_exp_left(rate, q) - mp.mpf(1) / 2)
    second = q / 2 + alpha**2 * (_exp_left(2 * rate, q) - 2 * _exp_left(rate, q) + mp.mpf(1) / 2)
    deriv = mp.mpf(1) / 2 + (alpha * rate) ** 2 * _exp_left(2 * rate, q)
    return mean * scale, second * scale**2, deriv * scale**2


def _clip_family(lo, hi, q):
    """Moments of clip(x, lo, hi)."""
    s = mp.sqrt(q)
    a, b = lo / s, hi / s
    inside = _Phi(b) - _Phi(a)
    mean = lo * _Phi(a) + hi * (1 - _Phi(b)) + s * (mp.npdf(a) - mp.npdf(b))
    second = lo**2 * _Phi(a) + hi**2 * (1 - _Phi(b)) + q * (inside + a * mp.npdf(a) - b * mp.npdf(b))
    return mean, second, inside


def _closed_forms(name: str, p: dict, q) -> dict:
    """Known exact moments (a subset of activations/moments), as {moment: value}."""
    s = mp.sqrt(q)
    m = MOMENT_NAMES
    linear = {"identity": 1, "relu": 0, "abs": -1, "leaky_relu": p.get("negative_slope"), "prelu": p.get("a")}
    if name in linear:  # x for x > 0, slope*x otherwise; abs = slope -1
        a = linear[name]
        return dict(zip(m, ((1 - a) * s / mp.sqrt(2 * mp.pi), (1 + a**2) * q / 2, (1 + a**2) / 2), strict=True))
    if name == "elu":
        return dict(zip(m, _elu_family(p["alpha"], 1, 1, q), strict=True))
    if name == "selu":
        return dict(zip(m, _elu_family(p["alpha"], 1, p["scale"], q), strict=True))
    if name == "celu":
        return dict(zip(m, _elu_family(p["alpha"], 1 / p["alpha"], 1, q), strict=True))
    if name == "sin":
        return dict(zip(m, (0, (1 - mp.exp(-2 * q)) / 2, (1 + mp.exp(-2 * q)) / 2), strict=True))
    if name == "erf":
        return dict(zip(m, (0, 2 / mp.pi * mp.asin(2 * q / (1 + 2 * q)), 4 / mp.pi / mp.sqrt(1 + 4 * q)), strict=True))
    if name == "hardtanh":
        return dict(zip(m, _clip_family(p["min_val"], p["max_val"], q), strict=True))
    if name == "relu6":
        return dict(zip(m, _clip_family(0, 6, q), strict=True))
    if name == "hardsigmoid":  # = clip(x/6 + 1/2, 0, 1): f' = 1/6 on |x| < 3
        return {"mean": mp.mpf(1) / 2, "derivative_second_moment": (2 * _Phi(3 / s) - 1) / 36}
    if name == "gelu":  # Stein's lemma: E[x Phi(x)] = q E[phi(x)]
        return {"mean": q / mp.sqrt(2 * mp.pi * (1 + q))}
    if name in ("tanh", "softsign"):  # odd
        return {"mean": 0}
    if name == "sigmoid":  # sigmoid(x) - 1/2 is odd
        return {"mean": mp.mpf(1) / 2}
    return {}


def sanity(records: list[dict]) -> int:
    """Compare stored strings with closed forms; print the worst relative error per activation."""
    print("\nclosed-form sanity checks (worst relative error over q, per activation and moment):")
    failures = 0
    worst: dict[tuple, tuple] = {}
    # 100 digits: selu's mean at q = 1 cancels ~32 digits in the closed form.
    with mp.workdps(100):
        for rec in records:
            p = {k: mp.mpf(v) for k, v in rec["params"].items()}
            q = mp.mpf(rec["q"])
            for key, exact in _closed_forms(rec["name"], p, q).items():
                got, exact = mp.mpf(rec[key]), mp.mpf(exact)
                # Below 1e-80 the closed form is zero up to its own rounding (symmetric hardtanh).
                err = abs(got - exact) / abs(exact) if abs(exact) > mp.mpf(10) ** -80 else abs(got)
                ident = (rec["name"], _params_text(rec["params"]), key)
                if ident not in worst or err > worst[ident][0]:
                    worst[ident] = (err, rec["q"])
        for (name, params, key), (err, q) in worst.items():
            ok = err <= mp.mpf(10) ** -(DPS - 2)
            failures += not ok
            shown = "exact" if err == 0 else mp.nstr(err, 2)
            print(f"  {'ok ' if ok else 'BAD'} {name:11s} {params:28s} {key:24s} max rel err {shown:8s} (at q={q})")

        by_key = {(r["name"], r["q"]): r for r in records if r["params"] == resolve_params(r["name"])}
        selu = by_key[("selu", "1")]
        print(
            f"  selu at q=1: E[f] = {selu['mean']}, E[f^2] - 1 = {mp.nstr(mp.mpf(selu['second_moment']) - 1, 5)}"
            " (fixed point of the published constants)"
        )
        elu = by_key[("elu", "1")]["second_moment"]
        print(f"  elu(alpha=1) at q=1: E[f^2] = {elu} (expected 0.644945417492923863...)")
        if not elu.startswith("0.644945417492923863") or abs(mp.mpf(selu["mean"])) > 1e-15:
            failures += 1
        if abs(mp.mpf(selu["second_moment"]) - 1) > 1e-15:
            failures += 1
    print(f"sanity: {'all passed' if not failures else f'{failures} FAILED'}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON file to write or check")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--check", type=int, metavar="N", help="recompute N random records and compare")
    parser.add_argument("--seed", type=int, default=20240601, help="seed for --check's choice of records")
    parser.add_argument("--sanity", action="store_true", help="only run closed-form checks on the JSON")
    args = parser.parse_args(argv)
    if args.check is not None:
        return check(args.output, args.check, args.seed, args.workers)
    if args.sanity:
        return sanity(json.loads(args.output.read_text()))
    return generate(args.output, args.workers)


if __name__ == "__main__":
    sys.exit(main())
