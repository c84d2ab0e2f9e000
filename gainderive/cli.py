"""The ``gainderive`` command line.

Every user error ends in one line on stderr and exit status 2; a Monte Carlo
cross-check that disagrees beyond 5 standard errors ends in exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from .errors import CheckError, GainDeriveError

__all__ = ["main"]

CHECK_LIMIT = 5.0  # |z| beyond this many standard errors is a failed cross-check
_LABELS = {
    "mean": "E[f(z)]",
    "second_moment": "E[f(z)^2]",
    "derivative_second_moment": "E[f'(z)^2]",
    "variance": "Var f(z)",
}
_GAIN_NOTES = {
    "fan_in": "sqrt(q / E[f^2])   forward signal",
    "fan_out": "1 / sqrt(E[f'^2])  backward signal",
    "variance": "sqrt(q / Var f)    next layer re-centres",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"gainderive: error: {message} (see {self.prog} --help)\n")


def _params(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise GainDeriveError(f"--param takes NAME=VALUE, e.g. --param alpha=1.5; got {pair!r}")
        out[name.strip()] = value.strip()
    return out


def _exact_variance(text: str):
    from .moments import check_variance

    return check_variance(str(text))


def _variance(text: str) -> float:
    from .moments import check_variance

    try:
        value = float(text)
    except ValueError:
        value = text  # check_variance names it in the error
    return float(check_variance(value))


def _build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="gainderive", description="Weight-initialisation gains for any activation from exact "
                     "Gaussian moments.")
    parser.add_argument("--version", action="version", version=f"gainderive {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    derive = sub.add_parser("derive", help="moments and gains of one activation at one input variance",
                            description="E[f], E[f^2], E[f'^2], Var f and the gains for z ~ N(0, q).")
    derive.add_argument("activation", help="registry name (see `gainderive list`) or a formula in x, "
                        "e.g. 'x*sigmoid(1.702*x)'")
    derive.add_argument("--variance", "-q", default="1", help="input variance q > 0 (default 1)")
    derive.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE",
                        help="activation parameter, repeatable (e.g. --param alpha=2)")
    derive.add_argument("--method", choices=("auto", "closed_form", "quadrature"), default="auto",
                        help="auto (default): verified closed forms where they exist, quadrature otherwise")
    derive.add_argument("--digits", type=int, help="use mpmath at this many significant digits (5..200)")
    derive.add_argument("--check", action="store_true", help="cross-check by Monte Carlo; fail beyond 5 SE")
    derive.add_argument("--samples", type=int, default=None, help="Monte Carlo evaluations (default 2^21)")
    derive.add_argument("--seed", type=int, default=0, help="Monte Carlo seed (default 0)")
    derive.add_argument("--json", action="store_true", help="print JSON instead of a table")
    derive.add_argument("--latex", action="store_true", help="show the closed forms in LaTeX")
    derive.add_argument("--quiet", action="store_true", help="no progress bar")

    tab = sub.add_parser("table", help="moments and gains of activations over a grid of input variances",
                         description="A lookup table of moments and gains against q, as CSV, JSON or Markdown.")
    tab.add_argument("activations", nargs="+", metavar="ACT", help="registry names or formulas in x")
    tab.add_argument("--variance", "-q", default="1e-3:1e3:121",
                     help="start:stop:count[:log|lin] (log spacing by default) or a comma list; default 1e-3:1e3:121")
    tab.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE", help="activation parameter")
    tab.add_argument("--format", "-f", default="csv", help="csv (default), json or markdown")
    tab.add_argument("--method", choices=("auto", "closed_form", "quadrature"), default="auto")
    tab.add_argument("--output", "-o", help="write to this file (atomically) instead of standard output")
    tab.add_argument("--quiet", action="store_true", help="no progress bar")

    plot = sub.add_parser("plot", help="gain_fan_in and gain_fan_out against q, with PyTorch's table values",
                          description="Plot the gains against q on a log axis (needs matplotlib: pip install "
                          "'gainderive[plot]').")
    plot.add_argument("activations", nargs="+", metavar="ACT", help="registry names or formulas in x")
    plot.add_argument("--output", "-o", required=True, help="the PNG file to write")
    plot.add_argument("--variance", "-q", default="1e-3:1e3:241", help="as for table; default 1e-3:1e3:241")
    plot.add_argument("--size", default="900x600", help="WIDTHxHEIGHT in pixels (default 900x600)")

    verify = sub.add_parser("verify", help="check a hand-derived moment or gain",
                            description="Prove a claimed moment or gain symbolically, or check it at 30 digits; "
                            "exit 0 if verified, 1 if refuted, 2 for bad input.")
    verify.add_argument("activation", help="registry name or formula in x")
    target = verify.add_mutually_exclusive_group()
    target.add_argument("--moment", default="second_moment",
                        help="mean, second_moment (default), derivative_second_moment, variance, or h in f, df, x")
    target.add_argument("--gain", choices=("fan_in", "fan_out", "variance"), help="check a gain instead")
    verify.add_argument("--expected", required=True, help="a number or a formula in q and the parameters")
    verify.add_argument("--variance", "-q", help="check at this q only (default: a spread of q)")
    verify.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE")
    verify.add_argument("--rtol", type=float, help="relative tolerance (default: 30 digits for formulas, "
                        "1e-12 for numbers)")

    ini = sub.add_parser("init", help="the initialiser for one weight tensor, with framework snippets",
                         description="std, bound, gain and fans for a weight tensor, and one-line snippets for "
                         "torch.nn.init, jax.nn.initializers and Keras that use them (none is imported).")
    ini.add_argument("activation")
    ini.add_argument("--shape", required=True, help="weight shape, e.g. 64,32,3,3")
    ini.add_argument("--layout", default="torch", help="torch (out, in, *k; default) or tf (*k, in, out)")
    ini.add_argument("--mode", default="fan_in", help="fan_in (default), fan_out or fan_avg")
    ini.add_argument("--distribution", default="normal",
                     help="normal (default), uniform, truncated_normal, orthogonal, looks_linear, delta_orthogonal")
    ini.add_argument("--groups", type=int, default=1, help="convolution groups (channels for depthwise)")
    ini.add_argument("--variance", "-q", default="1", help="input variance q (default 1)")
    ini.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE")

    prop = sub.add_parser("propagate", help="depth check: the signal through a random numpy MLP",
                          description="Per-layer pre-activation second moment and backward gradient second moment "
                          "with the derived gain and, where PyTorch has one, its table gain.")
    prop.add_argument("activation")
    prop.add_argument("--depth", type=int, default=50)
    prop.add_argument("--width", type=int, default=512)
    prop.add_argument("--batch", type=int, default=64)
    prop.add_argument("--networks", type=int, default=8, help="independent weight draws averaged (default 8)")
    prop.add_argument("--plot", help="also draw the per-layer curves to this PNG (needs matplotlib)")

    solve = sub.add_parser("solve", help="activation parameters that meet moment constraints",
                           description="Solve for parameters, e.g. SELU's: gainderive solve "
                           "'scale*where(x > 0, x, alpha*(exp(x) - 1))' --unknown alpha --unknown scale "
                           "--constraint mean=0 --constraint second_moment=1")
    solve.add_argument("formula")
    solve.add_argument("--unknown", action="append", default=[], metavar="NAME[=GUESS]", required=True)
    solve.add_argument("--constraint", action="append", default=[], metavar="MOMENT=VALUE", required=True)
    solve.add_argument("--variance", "-q", default="1")
    solve.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE")
    solve.add_argument("--json", action="store_true")

    crit = sub.add_parser("critical", help="the edge of chaos: sigma_w^2 with chi_1 = 1 for given sigma_b^2",
                          description="Mean-field criticality (Schoenholz et al. 2017): for a bias variance, the "
                          "weight variance at which chi_1 = sigma_w^2 E[f'(z)^2] = 1 at the fixed point q*, with "
                          "depth scales and isometry diagnostics; --line tabulates, --plot draws the line.")
    crit.add_argument("activation")
    crit.add_argument("--bias-variance", "-b", default="0", help="sigma_b^2 >= 0 (default 0)")
    crit.add_argument("--line", metavar="SPEC", help="the critical line over sigma_b^2 = start:stop:count "
                      "(linear) or a comma list, e.g. 0:0.5:11")
    crit.add_argument("--depth", type=int, default=50, help="depth L of the isometry diagnostics (default 50)")
    crit.add_argument("--plot", help="draw the critical line to this PNG (needs matplotlib)")
    crit.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE")
    crit.add_argument("--json", action="store_true")

    field = sub.add_parser("meanfield", help="fixed point, chi_1, c*, chi_c, depth scales at given sigma_w^2, "
                           "sigma_b^2", description="Mean-field signal propagation (Poole et al. 2016; Schoenholz et "
                           "al. 2017; Pennington et al. 2017) for one (sigma_w^2, sigma_b^2).")
    field.add_argument("activation")
    field.add_argument("--weight-variance", "-w", required=True, help="sigma_w^2 > 0")
    field.add_argument("--bias-variance", "-b", default="0", help="sigma_b^2 >= 0 (default 0)")
    field.add_argument("--depth", type=int, default=50, help="depth L of the isometry diagnostics (default 50)")
    field.add_argument("--variance", "-q", help="use this q instead of solving for q* (where every q is fixed)")
    field.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE")
    field.add_argument("--json", action="store_true")

    kern = sub.add_parser("kernel", help="the correlation kernel E[f(u) f(v)] of a bivariate Gaussian",
                          description="E[f(u) f(v)] (or E[f'(u) f'(v)] with --derivative) for Gaussian (u, v) with "
                          "variances q1, q2 and correlation c: closed forms for relu, leaky_relu, prelu, abs, erf, "
                          "sin, identity and gelu; kink-aware 2-D quadrature otherwise.")
    kern.add_argument("activation")
    kern.add_argument("--correlation", "-c", required=True, help="c in [-1, 1], or a comma list")
    kern.add_argument("--variance", "-q", default="1", help="q1, or q1,q2 (default 1)")
    kern.add_argument("--derivative", action="store_true", help="the kernel of f' instead of f")
    kern.add_argument("--method", default="auto", help="auto (default), closed_form, quadrature, high_precision")
    kern.add_argument("--digits", type=int, help="digits for --method high_precision (default 30)")
    kern.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE")
    kern.add_argument("--json", action="store_true")

    listing = sub.add_parser("list", help="the registry of named activations",
                             description="Registry names, formulas, parameters and references.")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def _number(value: Any, digits: int | None) -> Any:
    """A float, or the value printed to ``digits`` digits; an infinite moment is the string "inf" (valid JSON)."""
    import mpmath as mp

    if mp.isinf(value):
        return "inf" if value > 0 else "-inf"
    if digits is None:
        return float(value)
    with mp.workdps(digits + 5):  # mp.mpf() rounds to the working precision: widen it first
        return mp.nstr(mp.mpf(value), digits, strip_zeros=False, min_fixed=-5, max_fixed=digits + 1)


def _error(value: Any, digits: int | None) -> Any:
    import mpmath as mp

    return float(value) if digits is None else mp.nstr(mp.mpf(value), 3)


def _derive(args: argparse.Namespace) -> int:
    from .gains import gains
    from .moments import moments
    from .progress import progress_bar

    params = _params(args.param)
    # at --digits q is exact at the working precision, so any q > 0 is accepted (1e-310 included)
    q = _variance(args.variance) if args.digits is None else float(_exact_variance(args.variance))
    if args.digits is not None and not 5 <= args.digits <= 200:
        raise GainDeriveError(f"--digits takes 5..200, got {args.digits}")
    if args.samples is not None and not args.check:
        raise GainDeriveError("--samples applies to the Monte Carlo check; add --check")
    if args.digits is not None:
        m = moments(args.activation, args.variance, "high_precision", digits=args.digits, **params)
    else:
        m = moments(args.activation, q, args.method, **params)
    g = gains(m)
    act = m.activation
    forms = m.closed_forms
    if not forms and args.method != "quadrature":  # high precision does not choose per moment; show them anyway
        from .closed_form import closed_forms

        forms = closed_forms(act)
    notes = {}
    if args.method != "quadrature" and "_closed_forms" not in act.__dict__:  # the registry cache holds verified forms
        from .closed_form import verdicts

        notes = {name: v.reason for name, v in verdicts(act).items() if v.status in ("rejected", "preferred")}
    report: dict[str, Any] = {
        "activation": act.name,
        "formula": act.formula,
        "params": act.parameter_values,
        "variance": q,
        "moments": {name: {"value": _number(e.value, args.digits), "error": _error(e.error, args.digits),
                           "method": e.method,
                           "closed_form": forms[name].text if forms.get(name) else None,
                           "latex": forms[name].latex if forms.get(name) else None,
                           "closed_form_note": notes.get(name)} for name, e in m},
        "gains": {name: _number(e.value, args.digits) for name, e in g},
    }
    check = None
    if args.check:
        with progress_bar("Monte Carlo", enabled=not args.quiet) as bar:
            mc = moments(args.activation, q, "monte_carlo", samples=args.samples, seed=args.seed, progress=bar,
                         **params)
        check = _compare(m, mc, args)
        report["monte_carlo"] = check
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_table(report, act, m, g, latex=args.latex))
    if check is not None and not check["passed"]:
        worst = max(check["moments"].items(), key=lambda kv: abs(kv[1]["z_score"]))
        raise CheckError(
            f"Monte Carlo disagrees with {m.mean.method} on {worst[0]} by {worst[1]['z_score']:+.2f} standard "
            f"errors (limit {CHECK_LIMIT:g}); one of the two methods is wrong for this activation"
        )
    return 0


def _compare(m, mc, args) -> dict[str, Any]:
    import math

    out: dict[str, Any] = {"samples": 2 * (args.samples or _default_samples()) // 2, "seed": args.seed, "moments": {}}
    for (name, exact), (_, sampled) in zip(m, mc):
        if math.isinf(float(exact.value)):  # infinite (f jumps, or f' is singular): nothing to sample
            out["moments"][name] = {"value": "inf", "error": 0.0, "z_score": 0.0}
            continue
        se = float(sampled.error)
        diff = float(sampled.value) - float(exact.value)
        z = diff / se if se > 0 else (0.0 if abs(diff) <= 1e-12 * (1 + abs(float(exact.value))) else math.inf)
        out["moments"][name] = {"value": float(sampled.value), "error": se, "z_score": z}
    out["max_abs_z"] = max(abs(v["z_score"]) for v in out["moments"].values())
    out["passed"] = out["max_abs_z"] <= CHECK_LIMIT
    return out


def _default_samples() -> int:
    from .backends.monte_carlo import DEFAULT_SAMPLES

    return DEFAULT_SAMPLES


def _table(report: dict[str, Any], act, m, g, *, latex: bool = False) -> str:
    params = "  ".join(f"{k}={v:g}" for k, v in report["params"].items())
    lines = [f"{act.name}   q = {report['variance']:g}"]
    if act.formula != act.name:
        lines.append(f"  f(x) = {act.formula}" + (f"   {params}" if params else ""))
    elif params:
        lines.append(f"  {params}")
    if act.reference and act.reference != "user formula":
        lines.append(f"  reference: {act.reference}")
    cuts = ", ".join(f"{b:g}" for b in act.breakpoints)
    lines.append(f"  breakpoints: {cuts or 'none (smooth)'}")
    lines.append("")
    lines.append(f"  {'moment':<12}{'value':>26}  {'error':>9}  method")
    for name, entry in report["moments"].items():
        value, error = _fmt(entry["value"]), _fmt_err(entry["error"])
        if value == "∞":
            error = ""
        lines.append(f"  {_LABELS[name]:<12}{value:>26}  {error:>9}  {entry['method']}")
    lines.append("")
    key = "latex" if latex else "closed_form"
    if any(entry[key] or entry["closed_form_note"] for entry in report["moments"].values()):
        note = "; \\Phi is the standard normal CDF" if latex else ""
        lines.append(f"  closed forms (each verified against quadrature before it is shown{note}):")
        for name, entry in report["moments"].items():
            shown = entry[key] or ("∞ (" + entry["method"].removeprefix("infinite: ") + ")" if entry["value"] == "inf"
                                   else "none: this moment is computed by quadrature")
            if not entry[key] and entry["closed_form_note"]:
                shown = f"derived but dropped: {entry['closed_form_note']}"
            lines.append(f"  {_LABELS[name]:<12}= {shown}")
            if entry[key] and entry["closed_form_note"]:
                lines.append(f"  {'':<12}  ({entry['closed_form_note']})")
    else:
        lines.append("  closed forms: none for this activation (outside the rule-based class); quadrature is used")
    lines.append("")
    lines.append(f"  {'gain':<12}{'value':>26}  std = gain / sqrt(fan)")
    infinite = report["moments"]["derivative_second_moment"]["value"] == "inf"
    for name, value in report["gains"].items():
        note = _GAIN_NOTES[name]
        if name == "fan_out" and infinite:
            note = "1 / sqrt(E[f'^2]) = 0: E[f'^2] is infinite, no scale preserves the backward signal"
        lines.append(f"  {name:<12}{_fmt(value):>26}  {note}")
    if "monte_carlo" in report:
        mc = report["monte_carlo"]
        lines.append("")
        lines.append(f"  Monte Carlo check: {mc['samples']:,} samples, seed {mc['seed']} (antithetic pairs)")
        for name, entry in mc["moments"].items():
            shown = _fmt(entry["value"]) if isinstance(entry["value"], str) else f"{entry['value']:.10g}"
            lines.append(f"  {_LABELS[name]:<12}{shown:>26}  ± {entry['error']:.2g}  z = {entry['z_score']:+.2f}")
        verdict = "agrees" if mc["passed"] else "DISAGREES"
        lines.append(f"  {verdict}: max |z| = {mc['max_abs_z']:.2f} (limit {CHECK_LIMIT:g} standard errors)")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value in ("inf", "-inf"):
        return value.replace("inf", "∞")
    return value if isinstance(value, str) else f"{value:.16g}"


def _fmt_err(value: Any) -> str:
    return value if isinstance(value, str) else f"{value:.2g}"


def _table_command(args: argparse.Namespace) -> int:
    from .progress import progress_bar
    from .tables import parse_variance_spec, table, write_atomic

    formats = ("csv", "json", "markdown")
    if args.format not in formats:
        raise GainDeriveError(f"unknown format {args.format!r}; accepted: {', '.join(formats)}")
    q = parse_variance_spec(args.variance)
    params = _params(args.param)
    tables = []
    with progress_bar("tables", enabled=not args.quiet) as bar:
        for done, name in enumerate(args.activations, 1):
            tables.append(table(name, q, method=args.method, **params))
            if bar is not None:
                bar(done, len(args.activations))
    if args.format == "csv":
        text = "\n".join(t.to_csv() for t in tables)
    elif args.format == "json":
        payload = [t.to_json() for t in tables]
        text = json.dumps(payload[0] if len(payload) == 1 else payload, indent=1) + "\n"
    else:
        text = "\n".join(t.to_markdown() for t in tables)
    if args.output:
        write_atomic(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def _plot_command(args: argparse.Namespace) -> int:
    from .plot import plot_gains

    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise GainDeriveError(f"--size takes WIDTHxHEIGHT in pixels, e.g. 900x600; got {args.size!r}") from None
    plot_gains(args.activations, args.output, variance=args.variance, size=(width, height))
    return 0


def _verify_command(args: argparse.Namespace) -> int:
    from .testing import DerivationError, assert_gain, assert_moment

    try:
        expected: Any = float(args.expected)
    except ValueError:
        expected = args.expected
    params = _params(args.param) or None
    variance = args.variance
    if variance is not None:
        _variance(variance)  # validates: one line, exit 2
    try:
        if args.gain:
            result = assert_gain(args.activation, expected, mode=args.gain, variance=variance, params=params,
                                 rtol=args.rtol)
            what = f"gain_{args.gain}"
        else:
            result = assert_moment(args.activation, args.moment, expected, variance=variance, params=params,
                                   rtol=args.rtol)
            what = args.moment
    except DerivationError as exc:
        print(f"refuted: {exc}")
        return 1
    how = ("proved equal to the derived closed form" if result.how == "symbolic"
           else f"agrees numerically at {result.points} point(s)"
           + (f" to {result.digits - 5} digits" if result.digits else f" to relative {args.rtol or 1e-12:g}"))
    print(f"verified: {what} of {args.activation} = {args.expected}: {how}")
    return 0


def _init_command(args: argparse.Namespace) -> int:
    from . import init

    try:
        shape = tuple(int(v) for v in args.shape.split(","))
    except ValueError:
        raise GainDeriveError(f"--shape takes comma-separated integers, e.g. 64,32,3,3; got {args.shape!r}") from None
    s = init.spec(args.activation, shape, mode=args.mode, distribution=args.distribution,
                  variance=_variance(args.variance), layout=args.layout, groups=args.groups, **_params(args.param))
    print(f"{s.activation}  shape {s.shape} ({s.layout} layout)  q = {s.variance:g}")
    print(f"  fan_in {s.fan_in}   fan_out {s.fan_out}   mode {s.mode}")
    print(f"  gain {s.gain:.10g}   std {s.std:.10g}" + (f"   bound {s.bound:.10g}" if s.bound else ""))
    print(f"  how: {s.how}")
    print("")
    for framework, line in init.snippets(s).items():
        print(f"  {framework:<6} {line}")
    return 0


def _propagate_command(args: argparse.Namespace) -> int:
    from .plot import PYTORCH_GAINS
    from .propagate import propagate

    runs = {"derived": propagate(args.activation, depth=args.depth, width=args.width, batch=args.batch,
                                 networks=args.networks)}
    if args.activation in PYTORCH_GAINS:
        runs["torch table"] = propagate(args.activation, gain=PYTORCH_GAINS[args.activation], depth=args.depth,
                                        width=args.width, batch=args.batch, networks=args.networks)
    print(f"{args.activation}: {args.depth} layers of width {args.width}, {args.networks} networks averaged")
    for label, run in runs.items():
        print(f"  {label:<12} gain {run.gain:.6g}: E[x^2] last/first {run.forward_drift:.4g} "
              f"(range {run.forward.min():.4g}..{run.forward.max():.4g}), gradient first/last {run.backward_drift:.4g}")
    header = "".join(f"  {label + ' E[x^2]':>20}  {label + ' E[g^2]':>20}" for label in runs)
    print(f"\n  {'layer':>5}{header}")
    for layer in range(args.depth + 1):
        cells = "".join(f"  {run.forward[layer]:>20.6g}  {run.backward[layer]:>20.6g}" for run in runs.values())
        print(f"  {layer:>5}{cells}")
    if args.plot:
        from .plot import plot_propagation

        plot_propagation(args.activation, runs, args.plot)
    return 0


def _solve_command(args: argparse.Namespace) -> int:
    from .solve import solve_parameters

    unknowns = {}
    for item in args.unknown:
        name, _, guess = item.partition("=")
        try:
            unknowns[name.strip()] = float(guess) if guess else 1.0
        except ValueError:
            raise GainDeriveError(f"--unknown takes NAME or NAME=GUESS; got {item!r}") from None
    constraints = {}
    for item in args.constraint:
        name, _, value = item.partition("=")
        try:
            constraints[name.strip()] = float(value)
        except ValueError:
            raise GainDeriveError(f"--constraint takes MOMENT=VALUE, e.g. mean=0; got {item!r}") from None
    solution = solve_parameters(args.formula, unknowns, constraints, variance=_variance(args.variance),
                                **_params(args.param))
    if args.json:
        print(json.dumps({"formula": args.formula, "variance": _variance(args.variance), "solution": solution}))
    else:
        for name, value in solution.items():
            print(f"{name} = {value!r}")
    return 0


def _real(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise GainDeriveError(f"{what} must be a number; got {text!r}") from None


def _linear_spec(spec: str, what: str) -> list[float]:
    """start:stop:count (linear, count >= 2) or a comma list of numbers."""
    if ":" in spec:
        parts = spec.split(":")
        try:
            start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
        except (ValueError, IndexError):
            raise GainDeriveError(f"{what} takes start:stop:count or a comma list; got {spec!r}") from None
        if len(parts) != 3 or count < 2 or count > 10_000:
            raise GainDeriveError(f"{what} takes start:stop:count with 2 <= count <= 10000; got {spec!r}")
        return [start + (stop - start) * k / (count - 1) for k in range(count)]
    return [_real(v, what) for v in spec.split(",")]


def _isometry_lines(iso) -> list[str]:
    return [f"  isometry at depth L = {iso.depth} (Pennington et al. 2017):",
            f"    E[f'^2] = {iso.mu1:.12g}, E[f'^4] = {iso.mu2:.12g}",
            f"    squared singular values of J: mean {iso.mean:.6g}; variance {iso.variance_gaussian:.6g} "
            f"(Gaussian W), {iso.variance_orthogonal:.6g} (orthogonal W)"]


def _critical_command(args: argparse.Namespace) -> int:
    from .meanfield import critical_line, edge_of_chaos, isometry

    params = _params(args.param)
    line = None
    if args.line:
        points = line = critical_line(args.activation, _linear_spec(args.line, "--line"), **params)
        rows = [{"bias_variance": p.bias_variance, "weight_variance": p.weight_variance, "fixed_point": p.variance,
                 "slope": p.slope} for p in points]
        if args.json:
            print(json.dumps({"activation": args.activation, "critical_line": rows}))
        else:
            print(f"{args.activation}: edge of chaos (chi_1 = 1)")
            print(f"  {'sigma_b^2':>12}  {'sigma_w^2':>20}  {'q*':>14}  {'dV/dq at q*':>12}")
            for r in rows:
                q = "any" if r["fixed_point"] is None else f"{r['fixed_point']:.8g}"
                slope = "" if r["slope"] is None else f"{r['slope']:.6g}"
                print(f"  {r['bias_variance']:>12.6g}  {r['weight_variance']:>20.15g}  {q:>14}  {slope:>12}")
    else:
        sb = _real(args.bias_variance, "--bias-variance")
        point = edge_of_chaos(args.activation, sb, **params)
        # every q (homogeneous f): any q will do; the limit q* -> 0: a q small enough to be that limit
        q = {None: 1.0, 0.0: 1e-9}.get(point.variance, point.variance)
        iso = isometry(args.activation, point.weight_variance, args.depth, variance=q, **params)
        report = {"activation": args.activation, "bias_variance": sb, "weight_variance": point.weight_variance,
                  "fixed_point": point.variance, "slope": point.slope, "chi1": 1.0,
                  "depth_scale_q": point.depth_scale,
                  "isometry": vars(iso)}
        if args.json:
            print(json.dumps(report))
        else:
            print(f"{args.activation}: edge of chaos at sigma_b^2 = {sb:g}")
            print(f"  sigma_w^2 = {point.weight_variance!r}   (chi_1 = sigma_w^2 E[f'(z)^2] = 1)")
            if point.variance is None:
                print("  q*        = any q: f is positively homogeneous, every q is a fixed point")
            elif point.variance == 0:
                print("  q*        = 0 (the limit q* -> 0: sigma_w^2 = 1 / f'(0)^2); isometry in that limit")
            else:
                print(f"  q*        = {point.variance!r}")
                stable = "stable" if abs(point.slope) < 1 else "unstable"
                print(f"  V'(q*)    = {point.slope:.12g} ({stable}; depth scale xi_q = {point.depth_scale:.6g})")
            print("\n".join(_isometry_lines(iso)))
    if args.plot:
        from .plot import plot_critical_line

        if line is None:  # without --line: sigma_b^2 over [0, 0.5]
            line = critical_line(args.activation, [0.5 * k / 40 for k in range(41)], **params)
        plot_critical_line(args.activation, line, args.plot)
    return 0


def _meanfield_command(args: argparse.Namespace) -> int:
    from .meanfield import mean_field

    sw, sb = _real(args.weight_variance, "--weight-variance"), _real(args.bias_variance, "--bias-variance")
    q = None if args.variance is None else _variance(args.variance)
    r = mean_field(args.activation, sw, sb, depth=args.depth, variance=q, **_params(args.param))
    fp = r.fixed_point
    if args.json:
        print(json.dumps({"activation": args.activation, "weight_variance": sw, "bias_variance": sb,
                          "fixed_point": fp.variance, "fixed_point_error": float(fp.error), "slope": fp.slope,
                          "stable": fp.stable, "chi1": r.chi1, "phase": r.phase, "correlation_fixed_point":
                          r.correlation, "chi_c": r.chi_c, "depth_scale_q": r.depth_scale_q,
                          "depth_scale_c": r.depth_scale_c, "isometry": vars(r.isometry)}))
        return 0
    print(f"{args.activation}: sigma_w^2 = {sw:g}, sigma_b^2 = {sb:g}")
    print(f"  q*     = {fp.variance!r} (+- {float(fp.error):.2g})" + ("  [given]" if q is not None else ""))
    stability = "marginal" if abs(abs(fp.slope) - 1) < 1e-12 else ("stable" if fp.stable else "unstable")
    print(f"  V'(q*) = {fp.slope:.12g} ({stability}), xi_q = {r.depth_scale_q:.6g}")
    print(f"  chi_1  = {r.chi1:.12g}: {r.phase} phase")
    print(f"  c*     = {r.correlation:.12g}, chi_c = {r.chi_c:.12g}, xi_c = {r.depth_scale_c:.6g}")
    print("\n".join(_isometry_lines(r.isometry)))
    return 0


def _kernel_command(args: argparse.Namespace) -> int:
    from .correlation import kernel

    qs = [_variance(v) for v in args.variance.split(",")]
    if len(qs) > 2:
        raise GainDeriveError(f"--variance takes q1 or q1,q2; got {args.variance!r}")
    cs = [_real(c, "--correlation") for c in args.correlation.split(",")]
    params = _params(args.param)
    if args.method == "high_precision":
        results = [kernel(args.activation, c, *qs, derivative=args.derivative, method=args.method,
                          digits=args.digits, **params) for c in cs]
        values = [(r.value, r.error, r.method) for r in results]
    else:
        r = kernel(args.activation, cs, *qs, derivative=args.derivative, method=args.method, **params)
        values = [(v, e, r.method) for v, e in zip(r.value, r.error)]
    what = "E[f'(u) f'(v)]" if args.derivative else "E[f(u) f(v)]"
    q1, q2 = qs[0], qs[-1]
    if args.json:
        print(json.dumps({"activation": args.activation, "variance": [q1, q2], "derivative": args.derivative,
                          "kernel": [{"correlation": c, "value": _number(v, args.digits), "error": float(e),
                                      "method": m} for c, (v, e, m) in zip(cs, values)]}))
        return 0
    print(f"{args.activation}: {what}, var u = {q1:g}, var v = {q2:g}")
    for c, (v, e, m) in zip(cs, values):
        shown = _number(v, args.digits) if m == "high_precision" else repr(float(v))
        print(f"  c = {c:<10g} {shown}  +- {float(e):.2g}  ({m})")
    return 0


def _list(args: argparse.Namespace) -> int:
    from .registry import REGISTRY

    entries = []
    for act in REGISTRY.values():
        entries.append({
            "name": act.name,
            "aliases": list(act.aliases),
            "formula": act.formula,
            "params": act.parameter_values,
            "description": act.description,
            "reference": act.reference,
        })
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    width = max(len(e["name"]) for e in entries)
    for e in entries:
        names = e["name"] + (f" ({', '.join(e['aliases'])})" if e["aliases"] else "")
        params = ", ".join(f"{k}={v:.17g}" for k, v in e["params"].items())
        print(f"{names:<{width + 10}} {e['formula']}" + (f"   [{params}]" if params else ""))
        print(f"{'':<{width + 10}} {e['reference']}")
    return 0


#: Python keyword arguments -> the command-line flags that set them (the API's messages name the former)
_FLAGS = {
    "digits": "--digits", "samples": "--samples", "seed": "--seed", "rtol": "--rtol", "variance": "--variance",
    "mode": "--mode", "distribution": "--distribution", "layout": "--layout", "groups": "--groups",
    "shape": "--shape", "depth": "--depth", "width": "--width", "batch": "--batch", "networks": "--networks",
    "weight_variance": "--weight-variance", "bias_variance": "--bias-variance", "correlation": "--correlation",
    "derivative": "--derivative", "moment": "--moment", "expected": "--expected", "method": "--method",
    "format": "--format",
}
_ARGUMENT = re.compile(r"(?<![\w.-])(?P<name>[a-z_]+)=(?P<quote>[\"']?)(?P<value>[\w.+-]*)(?P=quote)(?!=)")


_KEYWORDS = re.compile(r"as keyword arguments: (?P<list>\w+=VALUE(?:, \w+=VALUE)*)")


def _cli_message(text: str, command: str) -> str:
    """An API message with its Python arguments (``method="high_precision"``, ``digits=60``) as this command's flags.

    ``derive`` has no --method high_precision or monte_carlo: it takes --digits N and --check for those.
    """

    def flag(match: re.Match) -> str:
        name, value = match["name"], match["value"]
        if name not in _FLAGS:
            return match[0]
        if command == "derive" and name == "method" and value == "high_precision":
            return "--digits N"
        if command == "derive" and name == "method" and value == "monte_carlo":
            return "--check"
        if name == "derivative":
            return "--derivative" if value == "True" else "no --derivative"
        return f"{_FLAGS[name]} {value}" if value else _FLAGS[name]

    # parameters are keyword arguments in Python and --param NAME=VALUE here
    text = _KEYWORDS.sub(lambda m: "with " + " ".join(f"--param {kw}" for kw in m["list"].split(", ")), text)
    text = _ARGUMENT.sub(flag, text)
    return text.replace("--digits N (--digits ", "--digits (").replace("--digits N, --digits ", "--digits ")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gainderive`` command; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        commands = {"derive": _derive, "list": _list, "table": _table_command, "plot": _plot_command,
                    "verify": _verify_command, "init": _init_command, "propagate": _propagate_command,
                    "solve": _solve_command, "critical": _critical_command, "meanfield": _meanfield_command,
                    "kernel": _kernel_command}
        return commands[args.command](args)
    except CheckError as exc:
        print(f"gainderive: check failed: {_cli_message(str(exc), args.command)}", file=sys.stderr)
        return 1
    except GainDeriveError as exc:
        print(f"gainderive: error: {_cli_message(str(exc), args.command)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gainderive: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader (e.g. head) went away: stop quietly, as a pipeline expects
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:  # a bug, not bad input: one line, and the traceback on request
        if os.environ.get("GAINDERIVE_DEBUG"):
            raise
        print(f"gainderive: internal error: {type(exc).__name__}: {exc} (please report it; set GAINDERIVE_DEBUG=1 "
              "for the traceback)", file=sys.stderr)
        return 70
