"""Speed of every path against its baseline, each pair measured in the same run, with both errors (issue #13).

Every row of the issue's table: gainderive's time beside a baseline's, the speed-up (baseline time / gainderive's,
so > 1 means gainderive is faster), and the largest error of each against a reference that shares no code with
gainderive:

* tests/data/references.json: 40-digit mpmath moments of every registry activation at 9 q
  (tools/make_references.py, from the hand-written activations of tests/reference_activations.py);
* closed forms derived by hand and evaluated in mpmath at >= 30 digits: ELU (tests/closed_forms.py), GELU
  (``gelu_closed_form`` below), the ReLU arc-cosine kernel (Cho & Saul 2009), checked against the JSON where both
  exist;
* for the tanh kernel, a 2-D product Gauss-Legendre rule in 80-bit long double (two node counts must agree to
  1e-17), itself checked against a 30-digit nested ``mpmath.quad`` value; for the edge of chaos and the fixed
  point, ``mpmath.findroot`` on ``mpmath.quad`` / closed-form moments at 40 digits.

An error is the largest over the moments (E f, E f^2, E f'^2, Var f) and q of |value - reference| / scale, the
scale being sqrt(E f^2) for the mean (which can vanish; |E f| <= sqrt(E f^2)) and the moment itself otherwise.
"bars hold" says whether every |value - reference| <= reported error + 4 ulp of the scale.

Times are CPU-time minima (``time.process_time``) over repeats -- the least noisy figure on a shared machine --
except the fresh-process rows, which give the wall time a user waits (minimum over repeats) with the child's own
CPU time (user + sys of all its threads, from ``os.wait4``) in the note.  A baseline too slow to run in full
(a ``scipy.integrate.quad`` loop over 1e5 q) is timed on a stated subsample of the q and scaled linearly to the
full size; such rows are marked "~" (an extrapolation, not a measurement).

Usage:  python bench/bench_speed.py [--quick] [--only ROW ...]
        (--quick: smaller sizes and fewer repeats, ~15 s; the full run takes ~65 s on an idle 2-core machine)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import mpmath as mp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the independent references live with the tests

from closed_forms import closed_form as hand_closed_form  # noqa: E402

MOMENTS = ("mean", "second_moment", "derivative_second_moment", "variance")
EPS = np.finfo(float).eps
REFERENCE_Q = ("0.001", "0.01", "0.1", "0.5", "1", "2", "10", "100", "1000")  # the q of references.json
SQRT_2PI = math.sqrt(2 * math.pi)


# ---------------------------------------------------------------- timing and printing

def cpu_min(fn: Callable[[], object], repeats: int, *, min_seconds: float = 0.02) -> float:
    """Minimum over ``repeats`` of the CPU seconds per call; fast calls are looped to last ~``min_seconds``."""
    start = time.process_time()
    fn()
    once = time.process_time() - start
    number = max(1, int(min_seconds / max(once, 1e-7)))
    best = once if number == 1 else math.inf
    for _ in range(repeats - (number == 1)):
        start = time.process_time()
        for _ in range(number):
            fn()
        best = min(best, (time.process_time() - start) / number)
    return best


def fmt_time(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 1e-6:
        return f"{seconds * 1e9:.2f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_err(error: float | None) -> str:
    return "-" if error is None else f"{error:.1e}"


HEADER = (f"{'work':<46} {'gainderive':>10} {'baseline':<30} {'':>10} {'speed-up':>9} {'err gd':>8} {'err base':>8}"
          "  note")


def row(work: str, ours: float | None, baseline: str, theirs: float | None, err_ours: float | None = None,
        err_theirs: float | None = None, note: str = "", *, extrapolated: bool = False) -> None:
    ratio = theirs / ours if ours and theirs else None
    shown = ("~" if extrapolated else "") + fmt_time(theirs)
    speed = "-" if ratio is None else (f"{ratio:.3g} x" if ratio < 1e4 else f"{ratio:.2e} x")
    print(f"{work[:46]:<46} {fmt_time(ours):>10} {baseline[:30]:<30} {shown:>10} {speed:>9} {fmt_err(err_ours):>8} "
          f"{fmt_err(err_theirs):>8}  {note}", flush=True)


#: (target as the issue states it, what was measured, met?) collected by the rows, printed at the end
TARGETS: list[tuple[str, str, bool]] = []


def target(goal: str, measured: str, met: bool) -> None:
    TARGETS.append((goal, measured, bool(met)))


def section(title: str) -> None:
    print(f"\n-- {title}", flush=True)


# ---------------------------------------------------------------- references

def _json_references() -> dict[str, dict[str, tuple]]:
    """name -> q string -> (E f, E f^2, E f'^2, Var f) in mpmath, for the registry's default parameters.

    tools/make_references.py writes each activation's default parameters first, then its variants.
    """
    out: dict[str, dict[str, tuple]] = {}
    records = json.loads((ROOT / "tests" / "data" / "references.json").read_text())
    with mp.workdps(45):
        for rec in records:
            per_q = out.setdefault(rec["name"], {})
            if rec["q"] in per_q:
                continue  # a variant's record: not the registry default
            mean, second, derivative = (mp.mpf(rec[k]) for k in MOMENTS[:3])
            per_q[rec["q"]] = (mean, second, derivative, second - mean**2)
    return out


REFERENCES = _json_references()


def elu_reference(q) -> tuple:
    """ELU (alpha = 1) by its hand-derived closed form (tests/closed_forms.py), at the current precision."""
    mean, second, derivative = hand_closed_form("elu", q)
    return mean, second, derivative, second - mean**2


def gelu_closed_form(q) -> tuple:
    """GELU f = z Phi(z), z ~ N(0, q), derived by hand (at the current mpmath precision).

    Stein's lemma E[z g(z)] = q E[g'(z)] and three Gaussian integrals give, with theta = asin(q / (1 + q))
    = atan(q / sqrt(1 + 2q)):
      E[Phi(z)^2] = 1/4 + theta / (2 pi)             (P(X1 <= z, X2 <= z): orthant probability, corr. q/(1+q))
      E[z Phi(z) phi(z)] = q / (2 pi (1 + q) sqrt(1 + 2q)),   E[z^2 phi(z)^2] = q / (2 pi (1 + 2q)^(3/2));
      E f = q / sqrt(2 pi (1 + q)),
      E f^2 = q E[Phi^2 + 2 z Phi phi] = q/4 + q theta/(2 pi) + q^2 / (pi (1 + q) sqrt(1 + 2q)),
      E f'^2 = E[(Phi + z phi)^2] = 1/4 + theta/(2 pi) + q / (pi (1 + q) sqrt(1 + 2q)) + q / (2 pi (1 + 2q)^(3/2)).
    At q = 1: E f'^2 = 0.455850..., the value sympy got wrong (docs' numerics notes).
    """
    q = mp.mpf(q)
    r = mp.sqrt(1 + 2 * q)
    theta = mp.atan(q / r)
    mean = q / mp.sqrt(2 * mp.pi * (1 + q))
    second = q / 4 + q * theta / (2 * mp.pi) + q**2 / (mp.pi * (1 + q) * r)
    derivative = mp.mpf(1) / 4 + theta / (2 * mp.pi) + q / (mp.pi * (1 + q) * r) + q / (2 * mp.pi * r**3)
    return mean, second, derivative, second - mean**2


CLOSED_FORMS = {"elu": elu_reference, "gelu": gelu_closed_form}


def references_at(name: str, qs: Sequence[float], q_strings: Sequence[str | None] | None = None) -> list[tuple]:
    """The reference 4-tuple at each q: the JSON's 40 digits where q is one of its q, else the closed form at 30."""
    out = []
    for i, q in enumerate(qs):
        key = q_strings[i] if q_strings is not None else None
        if key is not None and key in REFERENCES.get(name, {}):
            out.append(REFERENCES[name][key])
            continue
        with mp.workdps(30):
            out.append(CLOSED_FORMS[name](mp.mpf(float(q))))  # the float q exactly, as gainderive sees it
    return out


def check_closed_form_against_json(name: str) -> float:
    """Largest relative difference between a hand closed form (at 40 digits) and the JSON, over its 9 q."""
    worst = mp.mpf(0)
    with mp.workdps(45):
        for key, ref in REFERENCES[name].items():
            mine = CLOSED_FORMS[name](mp.mpf(key))
            for k, (a, b) in enumerate(zip(mine, ref)):
                scale = mp.sqrt(ref[1]) if k == 0 else abs(b)
                worst = max(worst, abs(a - b) / scale)
    return float(worst)


def worst_error(values: Sequence, refs: Sequence[tuple], errors: Sequence | None = None) -> tuple[float, bool | None]:
    """(largest relative error, whether every error bar holds) of 4 x n values against n reference 4-tuples.

    ``values[k][i]`` is moment k at q i (a float or an mpf); ``errors`` the same shape, or None (no bars).
    """
    worst, honest = mp.mpf(0), True
    with mp.workdps(45):
        for i, ref in enumerate(refs):
            for k in range(len(values)):
                value = values[k][i]
                value = mp.mpf(value) if isinstance(value, mp.mpf) else mp.mpf(float(value))
                scale = mp.sqrt(ref[1]) if k == 0 else abs(ref[k])
                miss = abs(value - ref[k])
                if scale > 0:
                    worst = max(worst, miss / scale)
                if errors is not None:
                    bar = errors[k][i]
                    bar = mp.mpf(bar) if isinstance(bar, mp.mpf) else mp.mpf(float(bar))
                    honest = honest and bool(miss <= bar + 4 * EPS * scale)
    return float(worst), (honest if errors is not None else None)


def bars(ok: bool | None) -> str:
    return "" if ok is None else ("bars hold" if ok else "ERROR BARS FAIL")


def moment_arrays(m, index=None) -> tuple[list, list]:
    """(values, errors) of a Moments, 4 lists (optionally at ``index`` of an array of q)."""
    values, errors = [], []
    for name in MOMENTS:
        e = getattr(m, name)
        v, err = np.atleast_1d(np.asarray(e.value, dtype=float)), np.atleast_1d(np.asarray(e.error, dtype=float))
        if index is not None:
            v, err = v[index], err[index]
        values.append(v)
        errors.append(err)
    return values, errors


def check(m, refs: Sequence[tuple], index=None) -> tuple[float, bool | None]:
    """:func:`worst_error` of a Moments (at ``index`` of its q) with its own error bars."""
    values, errors = moment_arrays(m, index)
    return worst_error(values, refs, errors)


def grid_with_references(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Exactly n q, log-spaced in [1e-3, 1e3] with the 9 reference q put in: (q, indices of the reference q)."""
    ref_q = np.array([float(s) for s in REFERENCE_Q])
    q = np.unique(np.concatenate([np.logspace(-3, 3, n), ref_q]))  # the end points coincide, a few others may
    spare = np.flatnonzero(~np.isin(q, ref_q))
    q = np.delete(q, spare[1:1 + q.size - n])  # thin the log points next to 1e-3 back to n in all
    return q, np.searchsorted(q, ref_q)


def subsample(q: np.ndarray, ref_index: np.ndarray, count: int) -> tuple[np.ndarray, list[str | None]]:
    """``count`` evenly spread indices of q plus the reference q's; the JSON key of each (None off the JSON)."""
    index = np.unique(np.concatenate([np.linspace(0, q.size - 1, count).round().astype(int), ref_index]))
    keys = {int(i): s for i, s in zip(ref_index, REFERENCE_Q)}
    return index, [keys.get(int(i)) for i in index]


# ---------------------------------------------------------------- the scipy.integrate.quad baseline

def _phi(t: float) -> float:
    return math.exp(-0.5 * t * t) / SQRT_2PI


def quad_moments(f: Callable[[float], float], df: Callable[[float], float], q: float,
                 kinks: Sequence[float] = ()) -> tuple[float, float, float, float]:
    """E f, E f^2, E f'^2 (and E f^2 - (E f)^2) by scipy.integrate.quad, one call per moment and smooth piece.

    z = sqrt(q) t so that the weight is phi(t) at every q (quad's infinite-range map would otherwise miss the
    mass at small q), split at the kinks: what a careful user writes, with math-module integrands.
    """
    from scipy.integrate import quad

    s = math.sqrt(q)
    cuts = [-math.inf, *(k / s for k in kinks), math.inf]
    out = []
    for g in (f, lambda z: f(z) ** 2, lambda z: df(z) ** 2):
        out.append(sum(quad(lambda t, g=g: g(s * t) * _phi(t), a, b)[0] for a, b in zip(cuts, cuts[1:])))
    return out[0], out[1], out[2], out[1] - out[0] ** 2


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1 / (1 + math.exp(-x))
    e = math.exp(x)
    return e / (1 + e)


def _sech2(x: float) -> float:
    e = math.exp(-2 * abs(x))  # no overflow at any x, unlike 1/cosh(x)**2
    return 4 * e / (1 + e) ** 2


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _ncdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


SCALAR = {  # (f, f', kinks) in the math module
    "elu": (lambda z: z if z > 0 else math.expm1(z), lambda z: 1.0 if z > 0 else math.exp(z), (0.0,)),
    "tanh": (math.tanh, _sech2, ()),
    "gelu": (lambda z: z * _ncdf(z), lambda z: _ncdf(z) + z * _phi(z), ()),
    "silu": (lambda z: z * _sigmoid(z), lambda z: _sigmoid(z) * (1 + z * (1 - _sigmoid(z))), ()),
    "mish": (lambda z: z * math.tanh(_softplus(z)),
             lambda z: math.tanh(_softplus(z)) + z * _sech2(_softplus(z)) * _sigmoid(z), ()),
    "hardtanh": (lambda z: min(max(z, -1.0), 1.0), lambda z: 1.0 if -1 < z < 1 else 0.0, (-1.0, 1.0)),
}


def quad_loop(name: str, qs: Sequence[float]) -> np.ndarray:
    f, df, kinks = SCALAR[name]
    return np.array([quad_moments(f, df, float(q), kinks) for q in qs]).T


# ---------------------------------------------------------------- rows

@dataclass
class Config:
    quick: bool
    repeats: int


def bench_one_q(cfg: Config) -> None:
    import gainderive as gd

    section("4 moments at one q (q = 1), warm; baseline: one scipy.integrate.quad call per moment and piece")
    refs = [REFERENCES[n]["1"] for n in ("elu", "tanh")]
    for name, ref in zip(("elu", "tanh"), refs):
        f, df, kinks = SCALAR[name]
        t_quad = cpu_min(lambda f=f, df=df, kinks=kinks: quad_moments(f, df, 1.0, kinks), cfg.repeats)
        err_quad, _ = worst_error([[v] for v in quad_moments(f, df, 1.0, kinks)], [ref])
        calls = 3 * (len(kinks) + 1)
        for label, act in ((f"{name} (registry name)", name), (f"{name} (Activation object)", gd.activation(name)),
                           (f'{name} ("{name}(x)" formula)', f"{name}(x)")):
            gd.moments(act, 1.0)  # warm: parse, analyse and compile once, as any session would
            t_ours = cpu_min(lambda act=act: gd.moments(act, 1.0), cfg.repeats)
            err, ok = check(gd.moments(act, 1.0), [ref])
            row(label, t_ours, f"quad x{calls}", t_quad, err, err_quad, bars(ok) + "; ref: references.json, 40 digits")
            target(f"one q, warm, {label}: faster than quad, <= 50 us",
                   f"{fmt_time(t_ours)}, {t_quad / t_ours:.2f} x quad", t_ours <= 50e-6 and t_ours < t_quad)
    # the floor: ELU's closed form by hand in the math module, one q
    from scipy.special import erfcx

    def elu_math(q=1.0):
        a, b = float(erfcx(math.sqrt(q / 2))), float(erfcx(math.sqrt(2 * q)))
        mean = math.sqrt(q) / SQRT_2PI + a / 2 - 0.5
        second = q / 2 + b / 2 - a + 0.5
        return mean, second, 0.5 + b / 2, second - mean * mean

    t_floor = cpu_min(elu_math, cfg.repeats)
    err_floor, _ = worst_error([[v] for v in elu_math()], [refs[0]])
    row("elu floor: closed form, math + erfcx", None, "hand closed form, 1 q", t_floor, None, err_floor,
        "the floor the issue quotes (~0.5 us)")


def numpy_elu(q: np.ndarray) -> tuple[np.ndarray, ...]:
    """ELU (alpha = 1) closed form by hand in numpy: e^{q/2} Phi(-sqrt q) = erfcx(sqrt(q/2)) / 2, likewise 2q."""
    from scipy.special import erfcx

    a, b = erfcx(np.sqrt(q / 2)), erfcx(np.sqrt(2 * q))
    mean = np.sqrt(q) / SQRT_2PI + a / 2 - 0.5
    second = q / 2 + b / 2 - a + 0.5
    return mean, second, 0.5 + b / 2, second - mean * mean


def numpy_gelu(q: np.ndarray) -> tuple[np.ndarray, ...]:
    """GELU's closed forms (``gelu_closed_form``) by hand in numpy."""
    r = np.sqrt(1 + 2 * q)
    theta = np.arctan(q / r)
    mean = q / np.sqrt(2 * np.pi * (1 + q))
    second = q / 4 + q * theta / (2 * np.pi) + q * q / (np.pi * (1 + q) * r)
    derivative = 0.25 + theta / (2 * np.pi) + q / (np.pi * (1 + q) * r) + q / (2 * np.pi * r**3)
    return mean, second, derivative, second - mean * mean


def bench_grid(cfg: Config, name: str, n: int, quad_sample: int, numpy_form=None, memory: bool = False,
               check_sample: int = 0) -> None:
    """One activation at n log-spaced q (with the 9 reference q): default method vs quad loop and/or numpy form.

    The quad loop, if ``quad_sample``, is timed at that many q of the grid (plus the 9) and scaled to n; errors are
    measured there (or at ``check_sample`` q without a quad loop): everywhere for a hand closed form, else at the 9.
    """
    import gainderive as gd

    q, ref_index = grid_with_references(n)
    index, keys = subsample(q, ref_index, max(quad_sample, check_sample))  # where the quad loop is timed
    closed = name in CLOSED_FORMS
    # errors: at every point of the subsample with a closed form, else at the JSON's 9 q only
    checked = np.arange(index.size) if closed else np.array([i for i, k in enumerate(keys) if k is not None])
    refs = references_at(name, q[index[checked]], [keys[i] for i in checked])
    gd.moments(name, q[:3])  # warm
    t_ours = cpu_min(lambda: gd.moments(name, q), max(1, cfg.repeats // 2))
    m = gd.moments(name, q)
    err, ok = check(m, refs, index[checked])
    methods = sorted({getattr(m, k).method for k in MOMENTS})
    where = f"at {checked.size} q ({'30-digit closed form + ' if closed else ''}references.json)"
    label = f"{name}, {q.size:,} q (default method)"
    note = f"{bars(ok)}; errors {where}; methods {','.join(methods)}"
    baselines = []  # (label, seconds, error, note, extrapolated)
    if memory:
        tracemalloc.start()
        gd.moments(name, q)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        note = f"peak traced {peak / 2**20:.0f} MiB; " + note
    if quad_sample:
        sample = q[index]
        start = time.process_time()
        base = quad_loop(name, sample)
        t_quad = (time.process_time() - start) * q.size / sample.size
        baselines.append((f"quad loop ({sample.size} q, scaled)", t_quad, worst_error(base[:, checked], refs)[0], "",
                          True))
    if numpy_form is not None:
        t_np = cpu_min(lambda: numpy_form(q), cfg.repeats)
        err_np, _ = worst_error([v[index[checked]] for v in numpy_form(q)], refs)
        np_note = f"gainderive / numpy time {t_ours / t_np:.1f} x"
        if memory:
            tracemalloc.start()
            numpy_form(q)
            np_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            np_note += f"; numpy peak traced {np_peak / 2**20:.0f} MiB (gainderive / numpy {peak / np_peak:.1f} x)"
        baselines.append(("numpy closed form (by hand)", t_np, err_np, np_note, False))
    for base_label, t_base, _, _, _ in baselines:
        if base_label.startswith("quad loop"):
            need = 1000 if closed else 100
            kind = "closed-form" if closed else "quadrature-only"
            target(f"{kind} {name} at {q.size:,} q: >= {need} x the quad loop", f"{t_base / t_ours:.0f} x",
                   t_base / t_ours >= need)
        else:
            target(f"{name} at {q.size:,} q: within 3 x a hand numpy closed form", f"{t_ours / t_base:.1f} x",
                   t_ours <= 3 * t_base)
    if ok is not None:
        target(f"{name} at {q.size:,} q: error bars hold", bars(ok), ok)
    for i, (base_label, t_base, err_base, base_note, extrapolated) in enumerate(baselines):
        first = i == 0
        row(label if first else "", t_ours if first else None, base_label, t_base, err if first else None, err_base,
            note if first else base_note, extrapolated=extrapolated)


def bench_scaling(cfg: Config) -> None:
    """tanh (quadrature only) at 10^4 ... 10^6 q (10^7 in a full run): time per q, and peak memory beyond the result."""
    import gainderive as gd

    sizes = [10_000, 100_000] if cfg.quick else [10_000, 100_000, 1_000_000, 10_000_000]
    section("tanh at growing grids: time per q (should stay flat) and peak traced memory beyond the result arrays")
    per_q = []
    os.environ["GAINDERIVE_MAX_GRID"] = str(max(sizes))  # the grid limit (1e6 by default) is raised for this row
    for n in sizes:
        q = np.logspace(-3, 3, n)
        gd.moments("tanh", q[:3])
        t = cpu_min(lambda q=q: gd.moments("tanh", q), 1 if n >= 1_000_000 else max(1, cfg.repeats // 2))
        per_q.append(t / n)
        note = f"{t / n * 1e6:.2f} us per q"
        if n <= 1_000_000:
            tracemalloc.start()
            gd.moments("tanh", q)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            result = 8 * 8 * n  # four Estimates, value and error, float64
            note += (f"; peak traced {peak / 2**20:.0f} MiB, of which the result is {result / 2**20:.0f} MiB "
                     f"({(peak - result) / n:.0f} bytes per q beyond it)")
        row(f"tanh, {n:,} q", t, "", None, None, None, note)
    os.environ.pop("GAINDERIVE_MAX_GRID", None)
    flat = max(per_q) / min(per_q)
    target(f"quadrature-only time proportional to N up to {sizes[-1]:.0e} q", f"time per q varies {flat:.2f} x",
           flat <= 2.0)


def bench_registry(cfg: Config, n: int, quad_per_activation: int) -> None:
    import sympy as sp

    import gainderive as gd
    from gainderive.formula import X

    section(f"whole registry x {n:,} q (gd.table, method auto) vs a scipy.quad loop over each activation's pieces")
    names = list(gd.REGISTRY)
    q, ref_index = grid_with_references(n)
    for name in names:
        gd.table(name, q[:2])  # warm
    t_ours = cpu_min(lambda: [gd.table(name, q) for name in names], max(1, cfg.repeats // 3))
    worst, worst_name, honest = 0.0, "", True
    for name in names:
        t = gd.table(name, q)
        values = [np.asarray(t.columns[c])[ref_index] for c in ("mean", "second_moment", "derivative_second_moment",
                                                                "variance_f")]
        errors = [np.asarray(t.columns[c + "_error"])[ref_index] for c in ("mean", "second_moment",
                                                                          "derivative_second_moment", "variance_f")]
        refs = [REFERENCES[name][k] for k in REFERENCE_Q]
        err, ok = worst_error(values, refs, errors)
        honest = honest and bool(ok)
        if err > worst:
            worst, worst_name = err, name
    # baseline: quad per moment and piece; integrands compiled to the math module by sympy.lambdify (bench_tables)
    special = {"Phi": lambda u: 0.5 * math.erfc(-u / math.sqrt(2)), "sigmoid": _sigmoid,
               "softplus": _softplus}
    index, keys = subsample(q, ref_index, quad_per_activation)
    from scipy.integrate import quad

    elapsed, worst_quad, worst_quad_name = 0.0, 0.0, ""
    for name in names:
        act = gd.activation(name)
        pieces = [(p.lower, p.upper, [sp.lambdify(X, h, [special, "math"])
                                      for h in (p.expression, p.expression**2, p.derivative**2)]) for p in act.pieces]
        values = np.empty((4, index.size))
        start = time.process_time()
        for i, qi in enumerate(q[index]):
            s = math.sqrt(qi)
            for j in range(3):
                values[j, i] = sum(quad(lambda t, fn=fns[j], s=s: fn(s * t) * _phi(t), lo / s, hi / s, limit=200)[0]
                                   for lo, hi, fns in pieces)
        values[3] = values[1] - values[0] ** 2
        elapsed += time.process_time() - start
        on_json = [i for i, k in enumerate(keys) if k is not None]
        err, _ = worst_error([v[on_json] for v in values], [REFERENCES[name][keys[i]] for i in on_json])
        if err > worst_quad:
            worst_quad, worst_quad_name = err, name
    t_quad = elapsed * q.size / index.size
    row(f"{len(names)} activations x {q.size:,} q, warm", t_ours, f"quad loop ({index.size} q each, scaled)", t_quad,
        worst, worst_quad, f"{bars(honest)}; worst: gd {worst_name}, quad {worst_quad_name}; errors at the 9 JSON q",
        extrapolated=True)


# ---- kernels

Q1, Q2 = 1.3, 0.7
#: E[tanh(u) tanh(v)] at c = 0.5, q1 = 1.3, q2 = 0.7: nested mpmath.quad (x outer on [-inf, 0, inf], y inner split
#: where v = 0), working precision 40 digits, asked for 30; the same at 20 and 25 working digits agreed to 1e-26.
TANH_KERNEL_MP_C05 = "0.180772482844218538290198620436603"


def _gauss_legendre_long(nodes_degree: int) -> tuple[np.ndarray, np.ndarray]:
    from mpmath.calculus.quadrature import GaussLegendre

    with mp.workdps(30):
        nodes = GaussLegendre(mp.mp).calc_nodes(nodes_degree, mp.mp.prec)
        t = np.array([np.longdouble(mp.nstr(x, 25)) for x, _ in nodes])
        w = np.array([np.longdouble(mp.nstr(wt, 25)) for _, wt in nodes])
    return t, w


def _panel_rule(degree: int, half_width: float = 12.0, width: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Composite Gauss-Legendre on [-L, L] in long double, panels ``width`` wide (phi(12) ~ 2e-32)."""
    t, w = _gauss_legendre_long(degree)
    panels = math.ceil(2 * half_width / width)
    edges = np.linspace(-half_width, half_width, panels + 1).astype(np.longdouble)
    mid, half = (edges[1:] + edges[:-1]) / 2, (edges[1:] - edges[:-1]) / 2
    return (mid[:, None] + half[:, None] * t).ravel(), (half[:, None] * w).ravel()


def tanh_kernel_long_double(c: float) -> tuple[float, float]:
    """E[tanh(u) tanh(v)] by a 2-D product rule in long double, and the size sqrt(E tanh(u)^2 E tanh(v)^2).

    u = sqrt(q1) x, v = sqrt(q2) (c x + s y), x and y standard normal.  tanh's poles at +-i pi/2 are >= 1.38 away
    from the real axis in x and y, so 24 and 48 nodes on panels 1.5 wide converge far below 1e-18; the two node
    counts must agree to 1e-17 of the size.
    """
    results = []
    ld = np.longdouble
    for degree in (4, 5):
        x, w = _panel_rule(degree)
        wx = w * np.exp(-x * x / 2) / np.sqrt(2 * ld(np.pi))
        s = np.sqrt(1 - ld(c) * ld(c))
        inner = np.tanh(np.sqrt(ld(Q2)) * (ld(c) * x[:, None] + s * x[None, :])) @ wx
        value = np.sum(wx * np.tanh(np.sqrt(ld(Q1)) * x) * inner)
        size = np.sqrt(np.sum(wx * np.tanh(np.sqrt(ld(Q1)) * x) ** 2) * np.sum(wx * np.tanh(np.sqrt(ld(Q2)) * x) ** 2))
        results.append((value, size))
    (a, size), (b, _) = results
    if not abs(a - b) <= 1e-17 * size:
        raise ArithmeticError(f"long-double kernel reference not converged at c = {c}: {a} vs {b}")
    return float(b), float(size)


def dblquad_tanh(c: float) -> float:
    from scipy.integrate import dblquad

    s = math.sqrt(1 - c * c)

    def h(y, x):
        return math.tanh(math.sqrt(Q1) * x) * math.tanh(math.sqrt(Q2) * (c * x + s * y)) * _phi(x) * _phi(y)

    return dblquad(h, -12, 12, -12, 12, epsabs=1e-14, epsrel=1e-12)[0]


def bench_kernel(cfg: Config) -> None:
    from gainderive.correlation import kernel

    section(f"correlation kernels E[f(u) f(v)], q1 = {Q1}, q2 = {Q2}")
    c = np.linspace(-1, 1, 101)
    kernel("tanh", c[:3], Q1, Q2)  # warm
    t_grid = cpu_min(lambda: kernel("tanh", c, Q1, Q2), max(1, cfg.repeats // 3)) / c.size
    t_one = cpu_min(lambda: kernel("tanh", 0.5, Q1, Q2), cfg.repeats)
    sample = np.array([-0.9, 0.5] if cfg.quick else [-0.9, -0.5, 0.2, 0.5, 0.8, 0.99])
    start = time.process_time()
    base = [dblquad_tanh(float(x)) for x in sample]
    t_base = (time.process_time() - start) / sample.size
    refs = [tanh_kernel_long_double(float(x)) for x in sample]
    k = kernel("tanh", sample, Q1, Q2)
    ours, bar = np.atleast_1d(k.value), np.atleast_1d(k.error)
    err = max(abs(o - r) / size for o, (r, size) in zip(ours, refs))
    err_base = max(abs(o - r) / size for o, (r, size) in zip(base, refs))
    honest = all(abs(o - r) <= b + 4 * EPS * size for o, b, (r, size) in zip(ours, bar, refs))
    with mp.workdps(40):
        check = abs(mp.mpf(refs[list(sample).index(0.5)][0]) - mp.mpf(TANH_KERNEL_MP_C05))
    note = (f"{bars(honest)}; ref: long-double 2-D rule at {sample.size} c (vs 30-digit mpmath at c = 0.5: "
            f"{float(check):.0e} abs.)")
    row("tanh, per correlation (101 c in one call)", t_grid, "dblquad per c", t_base, err, err_base, note)
    target("kernel tanh: <= 100 us per correlation at 1e-13, bars hold", f"{fmt_time(t_grid)}, err {err:.1e}",
           t_grid <= 100e-6 and err <= 1e-13 and honest)
    row("tanh, one correlation (c = 0.5)", t_one, "dblquad per c", t_base, None, None,
        f"dblquad timed on {sample.size} c")

    # ReLU: the arc-cosine closed form vs the same formula by hand in numpy (Cho & Saul 2009)
    def arccos_numpy(c):
        theta = np.arccos(c)
        return np.sqrt(Q1 * Q2) / (2 * np.pi) * (np.sin(theta) + (np.pi - theta) * c)

    many = np.linspace(-1, 1, 10_001)
    kernel("relu", many[:3], Q1, Q2)
    t_relu = cpu_min(lambda: kernel("relu", many, Q1, Q2), cfg.repeats)
    t_np = cpu_min(lambda: arccos_numpy(many), cfg.repeats)
    check_c = many[::100]
    with mp.workdps(30):
        def arccos_mp(x):
            x = mp.mpf(float(x))
            theta = mp.acos(x)
            return mp.sqrt(mp.mpf(Q1) * mp.mpf(Q2)) / (2 * mp.pi) * (mp.sin(theta) + (mp.pi - theta) * x)

        truth = [arccos_mp(x) for x in check_c]
        scale = math.sqrt(Q1 * Q2) / 2  # E[relu(u)^2]^(1/2) E[relu(v)^2]^(1/2)
        k = kernel("relu", check_c, Q1, Q2)
        err = max(float(abs(mp.mpf(float(v)) - t)) for v, t in zip(k.value, truth)) / scale
        err_np = max(float(abs(mp.mpf(float(v)) - t)) for v, t in zip(arccos_numpy(check_c), truth)) / scale
        honest = all(abs(mp.mpf(float(v)) - t) <= float(b) + 4 * EPS * scale
                     for v, b, t in zip(k.value, np.broadcast_to(k.error, check_c.shape), truth))
    row(f"relu, {many.size:,} correlations (closed form)", t_relu, "numpy arc-cosine by hand", t_np, err, err_np,
        f"{bars(honest)}; ref: arc-cosine in mpmath at 30 digits, {check_c.size} c; target within 2x")
    target("kernel relu closed form: within 2 x numpy's arc-cosine", f"{t_relu / t_np:.1f} x", t_relu <= 2 * t_np)


# ---- mean field

def _tanh_expectation_mp(g, q):
    """E[g(z)], z ~ N(0, q), g even, by mpmath.quad on the folded half-line (current precision)."""
    s = mp.sqrt(q)
    return 2 * mp.quad(lambda t: g(s * t) * mp.npdf(t), [0, 1, 2, 4, 8, mp.inf])


def tanh_critical_reference(bias_variance: float, guess: float) -> tuple[float, float]:
    """(q*, sigma_w^2) on the edge of chaos: q - E[tanh^2] / E[sech^4] = sigma_b^2, at 40 digits."""
    with mp.workdps(40):
        f2 = lambda q: _tanh_expectation_mp(lambda z: mp.tanh(z) ** 2, q)  # noqa: E731
        d2 = lambda q: _tanh_expectation_mp(lambda z: mp.sech(z) ** 4, q)  # noqa: E731
        root = mp.findroot(lambda q: q - f2(q) / d2(q) - mp.mpf(bias_variance), mp.mpf(guess))
        return float(root), float(1 / d2(root))


def brentq_quad_critical(bias_variances: np.ndarray) -> list[tuple[float, float]]:
    """The baseline: brentq on q - E[f^2]/E[f'^2] = sigma_b^2 for each sigma_b^2, each moment by quad."""
    from scipy.optimize import brentq

    f, df, _ = SCALAR["tanh"]

    def moments(q):
        m = quad_moments(f, df, q)
        return m[1], m[2]

    out = []
    for sb in bias_variances:
        def gap(q, sb=sb):
            f2, d2 = moments(q)
            return q - f2 / d2 - sb

        root = brentq(gap, 1e-6, 100.0, xtol=1e-15, rtol=4 * EPS)
        out.append((root, 1 / moments(root)[1]))
    return out


def bench_meanfield(cfg: Config) -> None:
    from gainderive import meanfield

    count = 21 if cfg.quick else 101
    section(f"mean field: tanh edge of chaos at {count} sigma_b^2 in (0, 0.5]; ELU fixed point")
    sb = np.linspace(0, 0.5, count + 1)[1:]
    meanfield.critical_line("tanh", [0.1])  # warm
    t_ours = cpu_min(lambda: meanfield.critical_line("tanh", sb), max(1, cfg.repeats // 3))
    line = meanfield.critical_line("tanh", sb)
    start = time.process_time()
    base = brentq_quad_critical(sb)
    t_base = time.process_time() - start
    picks = [0, count // 2, count - 1] if not cfg.quick else [count // 2]
    err, err_base = 0.0, 0.0
    for i in picks:
        q_ref, sw_ref = tanh_critical_reference(float(sb[i]), base[i][0])
        err = max(err, abs(line[i].weight_variance - sw_ref) / sw_ref, abs(line[i].variance - q_ref) / q_ref)
        err_base = max(err_base, abs(base[i][1] - sw_ref) / sw_ref, abs(base[i][0] - q_ref) / q_ref)
    row(f"critical line tanh, {count} sigma_b^2", t_ours, "brentq + quad per sigma_b^2", t_base, err, err_base,
        f"{len(line)} points; rel. error of sigma_w^2 and q* vs mpmath findroot (40 digits) at {len(picks)} sigma_b^2")
    # the issue measured 0.50 s for gainderive against 0.39 s for this baseline: 10 x faster is 7.8 x the baseline
    target("critical line tanh: >= 10 x faster than at the issue (>= 7.8 x brentq + quad)",
           f"{t_base / t_ours:.1f} x brentq + quad, err {err:.1e}", t_base / t_ours >= 7.8 and err <= 1e-12)

    sw, sbias = 1.5, 0.05
    meanfield.fixed_point("elu", sw, sbias)  # warm
    t_fp = cpu_min(lambda: meanfield.fixed_point("elu", sw, sbias), cfg.repeats)
    fp = meanfield.fixed_point("elu", sw, sbias)
    from scipy.optimize import brentq

    f, df, kinks = SCALAR["elu"]

    def baseline():
        return brentq(lambda q: q - sw * quad_moments(f, df, q, kinks)[1] - sbias, 1e-2, 100.0, xtol=1e-15,
                      rtol=4 * EPS)

    t_bfp = cpu_min(baseline, max(1, cfg.repeats // 2))
    with mp.workdps(40):
        truth = mp.findroot(lambda q: q - mp.mpf(sw) * hand_closed_form("elu", q)[1] - mp.mpf(sbias), fp.variance)
        err_fp = float(abs(mp.mpf(fp.variance) - truth) / truth)
        err_bfp = float(abs(mp.mpf(baseline()) - truth) / truth)
        honest = abs(mp.mpf(fp.variance) - truth) <= fp.error + 4 * EPS * truth
    row(f"elu fixed point (sw2 = {sw}, sb2 = {sbias})", t_fp, "brentq + quad", t_bfp, err_fp, err_bfp,
        f"{bars(bool(honest))}; ref: findroot on ELU's closed form, 40 digits")


# ---- high precision

def direct_mp_quad(name: str, q: str, dps: int) -> tuple:
    """The four moments by mpmath.quad at ``dps`` digits directly: split at the kink, z = sqrt(q) t."""
    with mp.workdps(dps):
        s = mp.sqrt(mp.mpf(q))
        if name == "elu":
            f = lambda z: z if z > 0 else mp.expm1(z)  # noqa: E731
            df = lambda z: mp.mpf(1) if z > 0 else mp.exp(z)  # noqa: E731
        else:
            f = lambda z: z * mp.ncdf(z)  # noqa: E731
            df = lambda z: mp.ncdf(z) + z * mp.npdf(z)  # noqa: E731
        out = [mp.quad(lambda t, g=g: g(s * t) * mp.npdf(t), [-mp.inf, 0, mp.inf])
               for g in (f, lambda z: f(z) ** 2, lambda z: df(z) ** 2)]
        return out[0], out[1], out[2], out[1] - out[0] ** 2


def bench_high_precision(cfg: Config) -> None:
    import gainderive as gd

    digits = 30
    section(f"high precision, {digits} digits, q = 1; baseline: mpmath.quad directly at {digits + 10} digits")
    for name in ("elu", "gelu"):
        with mp.workdps(60):
            truth = [CLOSED_FORMS[name](mp.mpf(1))]
        gd.moments(name, "1", method="high_precision", digits=digits)  # warm
        repeats = 1 if cfg.quick else 3
        t_ours = cpu_min(lambda name=name: gd.moments(name, "1", method="high_precision", digits=digits), repeats)
        t_base = cpu_min(lambda name=name: direct_mp_quad(name, "1", digits + 10), repeats)
        m = gd.moments(name, "1", method="high_precision", digits=digits)
        values = [[getattr(m, k).value] for k in MOMENTS]
        errors = [[getattr(m, k).error] for k in MOMENTS]
        err, ok = worst_error(values, truth, errors)
        err_base, _ = worst_error([[v] for v in direct_mp_quad(name, "1", digits + 10)], truth)
        row(f"{name}, {digits} digits, 4 moments", t_ours, f"mp.quad x3 at dps {digits + 10}", t_base, err, err_base,
            f"{bars(ok)}; ref: hand closed form at 60 digits")
        target(f"high precision {name}, {digits} digits: no slower than a direct mp.quad", f"{t_base / t_ours:.2f} x",
               t_ours <= t_base and bool(ok))


# ---- Monte Carlo

def bench_monte_carlo(cfg: Config) -> None:
    import gainderive as gd
    from gainderive.backends import monte_carlo

    n = 2**20 if cfg.quick else 2**22
    chunk = int(getattr(monte_carlo, "_CHUNK", 2**20))
    section(f"Monte Carlo at q = 1, {n:,} samples: samples/s relative to numpy standard_normal into a {chunk:,} "
            "buffer")
    rng = np.random.default_rng(0)
    buf = np.empty(chunk)

    def raw():
        for _ in range(max(1, n // chunk)):
            rng.standard_normal(out=buf)

    repeats = 2 if cfg.quick else 3
    t_raw = cpu_min(raw, repeats) / (max(1, n // chunk) * chunk)
    ratios = {}
    for name in gd.REGISTRY:
        gd.moments(name, 1.0, method="monte_carlo", samples=10_000)  # warm
        t = cpu_min(lambda name=name: gd.moments(name, 1.0, method="monte_carlo", samples=n, seed=0), repeats) / n
        t_raw = min(t_raw, cpu_min(raw, 1) / (max(1, n // chunk) * chunk))  # interleaved: the same stretch of load
        m = gd.moments(name, 1.0, method="monte_carlo", samples=n, seed=0)
        ref = REFERENCES[name]["1"]
        values, errors = moment_arrays(m)
        with mp.workdps(30):
            z = max(float(abs(mp.mpf(float(v[0])) - r) / float(e[0])) if e[0] > 0 else 0.0
                    for v, e, r in zip(values, errors, ref))
        ratios[name] = (t, z)
    for name in ("elu", "tanh", "hardtanh"):
        t, z = ratios[name]
        row(f"{name}: time per sample", t, "numpy normal per draw", t_raw, None, None,
            f"rate ratio {t_raw / t:.2f} (target >= 0.6); largest |error| {z:.1f} standard errors (JSON ref)")
    worst = max(z for _, z in ratios.values())
    slowest = min(ratios, key=lambda k: t_raw / ratios[k][0])
    target("Monte Carlo: every registry activation >= 0.6 of numpy's normal rate",
           f"slowest {slowest} {t_raw / ratios[slowest][0]:.2f}", t_raw / ratios[slowest][0] >= 0.6)
    print("   every registry activation, rate / numpy's: "
          + ", ".join(f"{k} {t_raw / t:.2f}" for k, (t, _) in ratios.items()), flush=True)
    print(f"   slowest {min(ratios, key=lambda k: t_raw / ratios[k][0])}; largest deviation from the JSON references "
          f"{worst:.1f} standard errors (5 would fail --check)", flush=True)


# ---- the CLI in fresh processes

FORMULA = "x*erf(x) + 0.1*sin(3*x)"

SCIPY_SCRIPT = r"""
import json, math
from scipy.integrate import quad
f = lambda z: z * math.erf(z) + 0.1 * math.sin(3 * z)
df = lambda z: math.erf(z) + 2 / math.sqrt(math.pi) * z * math.exp(-z * z) + 0.3 * math.cos(3 * z)
phi = lambda t: math.exp(-t * t / 2) / math.sqrt(2 * math.pi)
m = [quad(lambda t: g(t) * phi(t), -math.inf, math.inf)[0] for g in (f, lambda z: f(z) ** 2, lambda z: df(z) ** 2)]
print(json.dumps({"mean": m[0], "second_moment": m[1], "derivative_second_moment": m[2],
                  "variance": m[1] - m[0] ** 2}))
"""


def run_child(argv: list[str], env: dict, cwd: str) -> tuple[float, float, str]:
    """(wall seconds, the child's own CPU seconds, stdout) of ``python argv`` in a fresh process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *argv], stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                                cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {err.read().decode()[-300:]}")
        return wall, usage.ru_utime + usage.ru_stime, out.read().decode()


def formula_reference() -> tuple:
    with mp.workdps(40):
        f = lambda z: z * mp.erf(z) + mp.mpf("0.1") * mp.sin(3 * z)  # noqa: E731
        df = lambda z: mp.erf(z) + 2 / mp.sqrt(mp.pi) * z * mp.exp(-z * z) + mp.mpf("0.3") * mp.cos(3 * z)  # noqa: E731
        m = [mp.quad(lambda t, g=g: g(t) * mp.npdf(t), [-mp.inf, -2, 0, 2, mp.inf])
             for g in (f, lambda z: f(z) ** 2, lambda z: df(z) ** 2)]
        return m[0], m[1], m[2], m[1] - m[0] ** 2


def bench_init(cfg: Config) -> None:
    """calculate_gain and spec, warm (repeated calls are cached), against torch's calculate_gain (a table lookup)
    and Keras's VarianceScaling arithmetic sqrt(scale / fan), both as plain Python in this process."""
    import gainderive as gd

    section("initialisers, warm: calculate_gain and spec (cached) vs a table lookup and sqrt(scale / fan)")
    try:
        from torch.nn.init import calculate_gain as torch_gain
        lookup, label = (lambda: torch_gain("leaky_relu", 0.2)), "torch.nn.init.calculate_gain"
    except ImportError:  # torch is optional: its table, as a dict lookup
        table = {"relu": math.sqrt(2.0)}
        lookup, label = (lambda: table["relu"]), "dict lookup (torch not installed)"
    shape = (64, 32, 3, 3)
    fan_in = 32 * 9
    for name, ours, theirs, base in (
            ("calculate_gain leaky_relu 0.2", lambda: gd.calculate_gain("leaky_relu", 0.2), lookup, label),
            ("spec gelu (64,32,3,3) fan_in", lambda: gd.init.spec("gelu", shape), lambda: math.sqrt(2.0 / fan_in),
             "sqrt(scale / fan) in Python"),
            ("std_for gelu", lambda: gd.init.std_for("gelu", fan_in, 64 * 9), lambda: math.sqrt(2.0 / fan_in),
             "sqrt(scale / fan) in Python")):
        ours()
        t_ours, t_base = cpu_min(ours, cfg.repeats), cpu_min(theirs, cfg.repeats)
        row(name, t_ours, base, t_base, note=f"gainderive / baseline {t_ours / t_base:.0f} x")


def bench_cli(cfg: Config) -> None:
    section(f'CLI in fresh processes: derive "{FORMULA}" (first run: empty GAINDERIVE_CACHE_DIR; second: same dir)')
    repeats = 1 if cfg.quick else 3
    truth = [formula_reference()]

    def json_errors(text: str, refs: list[tuple]) -> tuple[float, bool | None]:
        """Errors of a printed JSON: gainderive's (moments -> value, error) or the scipy script's (values only)."""
        data = json.loads(text)
        if "moments" in data:
            data = data["moments"]
            return worst_error([[data[k]["value"]] for k in MOMENTS], refs, [[data[k]["error"]] for k in MOMENTS])
        return worst_error([[data[k]] for k in MOMENTS], refs)

    results: dict[str, list] = {"first": [], "second": [], "registry": [], "scipy": []}
    with tempfile.TemporaryDirectory() as cwd:
        for i in range(repeats):
            env = {**os.environ, "GAINDERIVE_CACHE_DIR": os.path.join(cwd, f"cache{i}")}  # empty before each first
            argv = ["-m", "gainderive", "derive", FORMULA, "--json"]
            results["first"].append(run_child(argv, env, cwd))
            results["second"].append(run_child(argv, env, cwd))
            results["registry"].append(run_child(["-m", "gainderive", "derive", "elu", "--json"], env, cwd))
            results["scipy"].append(run_child(["-c", SCIPY_SCRIPT], dict(os.environ), cwd))
    best = {k: min(v, key=lambda r: r[0]) for k, v in results.items()}  # by wall time: what a user waits
    err_scipy, _ = json_errors(best["scipy"][2], truth)
    for label, key, refs in (("user formula, first run", "first", truth), ("user formula, second run", "second", truth),
                             ("registry name (elu; error vs JSON)", "registry", [REFERENCES["elu"]["1"]])):
        wall, cpu, text = best[key]
        err, ok = json_errors(text, refs)
        row(label, wall, "scipy quad script, fresh", best["scipy"][0], err, err_scipy,
            f"{bars(ok)}; wall, min of {repeats}; child CPU {cpu:.2f} s (scipy {best['scipy'][1]:.2f} s)")
        if key != "registry":
            limit = 1.5 if key == "first" else 0.5
            target(f"CLI, a user formula, {key} run: <= {limit} s", f"{wall:.2f} s", wall <= limit)
    target("CLI, a user formula: the second run prints what the first did", "identical" if
           best["first"][2] == best["second"][2] else "different", best["first"][2] == best["second"][2])


# ---------------------------------------------------------------- main

ROWS = ("one_q", "gelu", "quadrature_only", "scaling", "elu_many", "registry", "kernel", "meanfield", "high_precision",
        "monte_carlo", "cli", "init")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (a < 1 minute smoke run)")
    parser.add_argument("--only", nargs="+", choices=ROWS, metavar="ROW", help=f"run only these: {', '.join(ROWS)}")
    args = parser.parse_args()
    cfg = Config(quick=args.quick, repeats=3 if args.quick else 7)
    quick = args.quick
    import scipy
    import scipy.integrate
    import scipy.optimize
    import scipy.special  # imported before any timing: an import inside a timed baseline would be charged to it

    import gainderive as gd

    print(f"gainderive {gd.__version__}, numpy {np.__version__}, scipy {scipy.__version__}, mpmath {mp.__version__}, "
          f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
          f"{'  [--quick: reduced sizes]' if quick else ''}")
    print("times: CPU-time minima; speed-up = baseline / gainderive (> 1: gainderive faster); err: largest relative "
          "error vs the stated reference")
    print(f"hand closed forms vs references.json: elu {check_closed_form_against_json('elu'):.0e}, "
          f"gelu {check_closed_form_against_json('gelu'):.0e} (relative, 9 q)")
    print("\n" + HEADER + "\n" + "-" * len(HEADER))
    runs: dict[str, Callable[[], None]] = {
        "one_q": lambda: bench_one_q(cfg),
        "gelu": lambda: (section("closed-form activation on a grid (default method)"),
                         bench_grid(cfg, "gelu", 100_000, 10 if quick else 60, numpy_gelu)),  # the sizes
        "quadrature_only": lambda: (section("quadrature-only activations on a grid (default method)"),
                                    [bench_grid(cfg, name, 10_000, 10 if quick else 30)
                                     for name in ("tanh", "silu", "mish")]),
        "scaling": lambda: bench_scaling(cfg),
        "elu_many": lambda: (section("ELU at many q: time and peak memory (tracemalloc, a separate run)"),
                             bench_grid(cfg, "elu", 100_000 if quick else 1_000_000, 10 if quick else 30, numpy_elu,
                                        memory=True, check_sample=200)),
        "registry": lambda: bench_registry(cfg, 101 if quick else 1_001, 3 if quick else 11),
        "kernel": lambda: bench_kernel(cfg),
        "meanfield": lambda: bench_meanfield(cfg),
        "high_precision": lambda: bench_high_precision(cfg),
        "monte_carlo": lambda: bench_monte_carlo(cfg),
        "cli": lambda: bench_cli(cfg),
        "init": lambda: bench_init(cfg),
    }
    failed = []
    start = time.perf_counter()
    for name in args.only or ROWS:
        try:
            runs[name]()
        except Exception as exc:  # one broken row must not hide the others' numbers
            failed.append(name)
            print(f"   {name}: FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}",
                  flush=True)
            traceback.print_exc(limit=3, file=sys.stderr)
    if TARGETS:
        print(f"\n-- targets of issue #13 ({sum(met for *_, met in TARGETS)} of {len(TARGETS)} met)")
        for goal, measured, met in TARGETS:
            print(f"   {'met    ' if met else 'NOT MET'}  {goal}: {measured}")
    print(f"\ndone in {time.perf_counter() - start:.0f} s wall" + (f"; FAILED rows: {', '.join(failed)}" if failed
                                                                    else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
