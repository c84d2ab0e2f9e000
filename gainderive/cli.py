"""The ``gainderive`` command line.

Every path ends in one of three exit statuses: 0 (done), 1 (a check failed: a Monte Carlo cross-check that
disagrees beyond 5 standard errors, or a refuted ``verify``) or 2 (bad input, including sizes beyond the limits
of :mod:`gainderive.limits`), each failure with one line on stderr.  Status 70 is reserved for a bug, 130 for
Ctrl-C and 141 for a closed pipe.  Sizes are checked while the arguments are parsed, before any work starts.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
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

# The choices argparse checks (kept equal to the library's own lists; tests/test_cli.py compares them).
DERIVE_METHODS = ("auto", "closed_form", "quadrature", "high_precision", "monte_carlo")
TABLE_METHODS = ("auto", "closed_form", "quadrature")
KERNEL_METHODS = ("auto", "closed_form", "quadrature", "high_precision")
FORMATS = ("csv", "json", "markdown")
MODES = ("fan_in", "fan_out", "fan_avg")
LAYOUTS = ("torch", "torch_transposed", "tf", "tf_transposed", "tf_depthwise")
INIT_DISTRIBUTIONS = ("normal", "uniform", "truncated_normal", "orthogonal", "looks_linear", "delta_orthogonal")
PROPAGATE_DISTRIBUTIONS = ("normal", "uniform", "truncated_normal", "orthogonal")
DEFAULT_HIGH_PRECISION_DIGITS = 30


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors that point at this (sub)command's help and suggest a near choice."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"gainderive: error: {_did_you_mean(message)} (see {self.prog} --help)\n")


_INVALID_CHOICE = re.compile(r"invalid choice: '?(?P<value>[^'(]*?)'? \(choose from (?P<choices>.*)\)")


def _did_you_mean(message: str) -> str:
    """argparse's "invalid choice" message, with the closest accepted choice suggested when one is close."""
    match = _INVALID_CHOICE.search(message)
    if not match:
        return message
    choices = [c.strip().strip("'\"") for c in match["choices"].split(",")]
    value = match["value"].strip()
    near = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    if not near:
        near = [c for c in choices if c.lower() == value.lower().replace("-", "_")]
    return message + (f"; did you mean {near[0]!r}?" if near else "")


# ---------------------------------------------------------------- argument types (checked at parse time)

def _integer(text: str) -> int | None:
    """An integer from ``12``, ``1_000`` or ``1e6`` (an integral float), else None."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if math.isfinite(value) and value == int(value) else None


class _Once(argparse.Action):
    """A list-valued option (-q 1,2,3; -c ...) given twice is an error: "the last one wins" would drop values."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if getattr(namespace, f"_{self.dest}_given", False):
            raise argparse.ArgumentError(self, f"is given twice; give several values as one comma list, "
                                         f"{option_string} A,B,...")
        setattr(namespace, f"_{self.dest}_given", True)
        setattr(namespace, self.dest, values)


def _count(limit_name: str | None = None, *, minimum: int = 1) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum`` and within ``gainderive.limits`` limit ``limit_name``."""

    def parse(text: str) -> int:
        value = _integer(text)
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"takes an integer >= {minimum}, got {text!r}")
        if limit_name is not None:
            _within_limit(limit_name, value)
        return value

    return parse


def _within_limit(limit_name: str, value: int) -> None:
    """check_size, its message without the API keyword it starts with (the flag is named by argparse)."""
    from .limits import LIMITS, LimitError, check_size

    try:
        check_size(limit_name, value)
    except LimitError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{LIMITS[limit_name].keyword}: ")) from None


def _digits(text: str) -> int:
    """Significant digits for mpmath, as :func:`gainderive.moments.check_digits` accepts them (5 up to the limit)."""
    from .moments import check_digits

    value = _integer(text)
    try:
        return check_digits(value if value is not None else text, None)
    except GainDeriveError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("digits: ")) from None


def _positive_real(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"takes a finite number > 0, got {text!r}")
    return value


# ---------------------------------------------------------------- parameters and values

#: Python keyword arguments -> the command-line flags that set them (the API's messages name the former)
_FLAGS = {
    "digits": "--digits", "samples": "--samples", "seed": "--seed", "rtol": "--rtol", "variance": "--variance",
    "mode": "--mode", "distribution": "--distribution", "layout": "--layout", "groups": "--groups",
    "shape": "--shape", "depth": "--depth", "width": "--width", "batch": "--batch", "networks": "--networks",
    "weight_variance": "--weight-variance", "bias_variance": "--bias-variance", "correlation": "--correlation",
    "derivative": "--derivative", "moment": "--moment", "expected": "--expected", "method": "--method",
    "format": "--format", "line": "--line",
}
#: keyword arguments of the API calls behind the commands: an activation parameter of the same name would clash
_RESERVED = set(_FLAGS) | {"activation", "variance2", "progress", "gain", "params", "output", "size", "ax",
                           "runs", "points", "formula", "unknowns", "constraints"}


def _pairs(items: Sequence[str], flag: str, example: str) -> dict[str, str]:
    """NAME=VALUE items of a repeatable flag; a name given twice is an error, not "the last one wins"."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise GainDeriveError(f"{flag} takes NAME=VALUE, e.g. {flag} {example}; got {item!r}")
        if name in out:
            raise GainDeriveError(f"{flag} {name} is given twice ({name}={out[name]}, {name}={value}); give each "
                                  "name once")
        out[name] = value
    return out


def _params(pairs: Sequence[str]) -> dict[str, str]:
    """Activation parameters from repeated ``--param NAME=VALUE``."""
    out = _pairs(pairs, "--param", "alpha=1.5")
    for name, value in out.items():
        if name in _RESERVED:
            flag = _FLAGS.get(name)
            hint = f" (use {flag})" if flag else ""
            raise GainDeriveError(f"--param {name}={value}: {name!r} is an option of the command, not an activation "
                                  f"parameter{hint}")
    return out


def _exact_variance(text: str):
    """q for the high-precision backend: exact at the working precision, any q > 0 (1e-400 included)."""
    from .moments import check_variance

    return check_variance(str(text).strip(), exact=True)


def _variance(text: str, *, high_precision: bool = False) -> float:
    """q as a float64; one that float64 cannot hold (1e-400, 1e400) is refused by name, never rounded.

    The refusal names the high-precision path only where the command has one (``high_precision``).
    """
    from .errors import VarianceError
    from .moments import check_variance, double_precision_message

    try:
        return float(check_variance(str(text).strip()))
    except VarianceError as exc:
        if high_precision:
            raise
        raise VarianceError(double_precision_message(exc)) from None


def _shown_q(exact: Any, text: str) -> Any:
    """A high-precision q for the report: the float when float64 holds it, else its decimal text."""
    value = float(exact)
    return value if math.isfinite(value) and value >= sys.float_info.min else text


def _real(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise GainDeriveError(f"{what} must be a finite number; got {text!r}")
    return value


def _plot_destination(text: str) -> str:
    """Refuse a bad plot destination or extension before a long run (the write checks again)."""
    from .plotting import check_output

    check_output(text)
    return text


# ---------------------------------------------------------------- the parser

_ACTIVATION_HELP = "registry name (see `gainderive list`) or a formula in x, e.g. 'x*sigmoid(1.702*x)'"


def _add_param(p: argparse.ArgumentParser) -> None:
    p.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE",
                   help="activation parameter, repeatable, each name once (e.g. --param alpha=2); default: the "
                   "registry's values")


def _add_mean_field(p: argparse.ArgumentParser) -> None:
    """The options critical and meanfield share: sigma_b^2 and the depth of the isometry diagnostics."""
    p.add_argument("--bias-variance", "-b", default="0", help="sigma_b^2 >= 0; default %(default)s")
    p.add_argument("--depth", type=_count("depth"), default=50,
                   help="depth L of the isometry diagnostics; default %(default)s")


def _add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bar (one is drawn on stderr only when it is a "
                   "terminal)")


def _build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and each subcommand's parser (whose prog, e.g. ``gainderive derive``, errors name)."""
    from ._version import __version__

    parser = _Parser(prog="gainderive", description="Weight-initialisation gains for any activation from exact "
                     "Gaussian moments. Every size is bounded (GAINDERIVE_MAX_<NAME> raises a limit); "
                     "`gainderive COMMAND --help` describes each command.")
    parser.add_argument("--version", action="version", version=f"gainderive {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    commands: dict[str, argparse.ArgumentParser] = {}

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        commands[name] = sub.add_parser(name, **kwargs)
        return commands[name]

    derive = command("derive", help="moments and gains of one activation at one or several input variances",
                     description="E[f], E[f^2], E[f'^2], Var f and the gains for z ~ N(0, q); several q (-q 1,100,1e3) "
                     "give one table with a row per q.")
    derive.add_argument("activation", help=_ACTIVATION_HELP)
    derive.add_argument("--variance", "-q", action=_Once, default="1",
                        help="input variance q > 0, a comma list of them (e.g. 1,100,1e3) or "
                        "start:stop:count[:log|lin] as for table; default %(default)s")
    _add_param(derive)
    derive.add_argument("--method", choices=DERIVE_METHODS, default="auto",
                        help="auto (verified closed forms where they exist, quadrature otherwise), closed_form, "
                        "quadrature, high_precision (mpmath; same as --digits "
                        f"{DEFAULT_HIGH_PRECISION_DIGITS}) or monte_carlo (the sampling of --check, printed as the "
                        "estimate); default %(default)s")
    derive.add_argument("--digits", type=_digits, help="mpmath at this many significant digits (5 up to "
                        "GAINDERIVE_MAX_DIGITS, 200 by default; implies --method high_precision); default: float64")
    derive.add_argument("--check", action="store_true", help="cross-check by Monte Carlo; exit 1 beyond 5 standard "
                        "errors")
    derive.add_argument("--samples", type=_count("samples", minimum=1000), default=None,
                        help="Monte Carlo evaluations for --check or --method monte_carlo, at least 1000 (below "
                        "that the standard error is too rough for a 5 SE test); default 2^21")
    derive.add_argument("--seed", type=_count(minimum=0), default=0, help="Monte Carlo seed >= 0; default %(default)s")
    derive.add_argument("--json", action="store_true", help="print JSON (a list of reports for several q) instead of "
                        "a table")
    derive.add_argument("--latex", action="store_true", help="show the closed forms in LaTeX")
    _add_quiet(derive)

    tab = command("table", help="moments and gains of activations over a grid of input variances",
                  description="A lookup table of moments and gains against q, as CSV, JSON or Markdown.")
    tab.add_argument("activations", nargs="+", metavar="ACT", help="registry names or formulas in x")
    tab.add_argument("--variance", "-q", action=_Once, default="1e-3:1e3:121",
                     help="start:stop:count[:log|lin] (log spacing by default) or a comma list; at most "
                     "GAINDERIVE_MAX_GRID q; default %(default)s")
    _add_param(tab)
    tab.add_argument("--format", "-f", choices=FORMATS, default="csv", help="output format; default %(default)s")
    tab.add_argument("--method", choices=TABLE_METHODS, default="auto",
                     help="auto (verified closed forms where they exist, quadrature otherwise), closed_form or "
                     "quadrature; default %(default)s")
    tab.add_argument("--output", "-o", help="write to this file (atomically) instead of standard output")
    _add_quiet(tab)

    plot = command("plot", help="gain_fan_in and gain_fan_out against q (PNG, PDF or SVG)",
                   description="Plot the gains against q, with PyTorch's table values where it has them; the file's "
                   "extension (.png, .pdf or .svg) chooses the format. Needs matplotlib.")
    plot.add_argument("activations", nargs="+", metavar="ACT", help="registry names or formulas in x")
    plot.add_argument("--output", "-o", required=True, help="the file to write: .png, .pdf or .svg")
    plot.add_argument("--variance", "-q", action=_Once, default="1e-3:1e3:241",
                      help="as for table, at most GAINDERIVE_MAX_PLOT_POINTS q; default %(default)s")
    plot.add_argument("--size", default="900x600", help="WIDTHxHEIGHT in pixels, 100..8000 each; default %(default)s")
    _add_param(plot)

    verify = command("verify", help="check a hand-derived moment or gain",
                     description="Prove a claimed moment or gain symbolically, or check it at 30 digits; "
                     "exit 0 if verified, 1 if refuted, 2 for bad input.")
    verify.add_argument("activation", help=_ACTIVATION_HELP)
    target = verify.add_mutually_exclusive_group()
    target.add_argument("--moment", default="second_moment",
                        help="mean, second_moment, derivative_second_moment, variance, or h in f, df and x; "
                        "default %(default)s")
    target.add_argument("--gain", choices=("fan_in", "fan_out", "variance"), help="check this gain instead of a moment")
    verify.add_argument("--expected", required=True, help="a number or a formula in q and the parameters")
    verify.add_argument("--variance", "-q", action=_Once, help="check at this q only; default: a spread of q")
    _add_param(verify)
    verify.add_argument("--rtol", type=_positive_real, help="relative tolerance; default: 30 digits for formulas, "
                        "1e-12 for numbers")

    ini = command("init", help="the initialiser for one weight tensor, with framework snippets",
                  description="std, bound, gain and fans for a weight tensor, and one-line snippets for "
                  "torch.nn.init, jax.nn.initializers and Keras that use them (none is imported).")
    ini.add_argument("activation", help=_ACTIVATION_HELP)
    ini.add_argument("--shape", required=True, help="weight shape, e.g. 64,32,3,3")
    ini.add_argument("--layout", choices=LAYOUTS, default="torch",
                     help="torch (out, in, *kernel), torch_transposed (in, out, *kernel), tf (*kernel, in, out), "
                     "tf_transposed (*kernel, out, in) or tf_depthwise (*kernel, in, multiplier); default %(default)s")
    ini.add_argument("--mode", choices=MODES, default="fan_in", help="which fan the gain divides; default %(default)s")
    ini.add_argument("--distribution", choices=INIT_DISTRIBUTIONS, default="normal",
                     help="weight distribution; default %(default)s")
    ini.add_argument("--groups", type=_count(), default=1, help="convolution groups (channels for depthwise); "
                     "default %(default)s")
    ini.add_argument("--variance", "-q", action=_Once, default="1", help="input variance q > 0; default %(default)s")
    _add_param(ini)

    prop = command("propagate", help="depth check: the signal through a random numpy MLP",
                   description="Per-layer pre-activation second moment and backward gradient second moment "
                   "with the derived gain and, where PyTorch has one, its table gain. Sizes are bounded by "
                   "GAINDERIVE_MAX_DEPTH, _WIDTH, _BATCH, _NETWORKS and _PROPAGATE_WORK.")
    prop.add_argument("activation", help=_ACTIVATION_HELP)
    prop.add_argument("--depth", type=_count("depth"), default=50, help="layers; default %(default)s")
    prop.add_argument("--width", type=_count("width"), default=512, help="units per layer; default %(default)s")
    prop.add_argument("--batch", type=_count("batch"), default=64, help="inputs per network; default %(default)s")
    prop.add_argument("--networks", type=_count("networks"), default=8,
                      help="independent weight draws averaged; default %(default)s")
    prop.add_argument("--variance", "-q", action=_Once, default="1", help="input variance q > 0; default %(default)s")
    prop.add_argument("--mode", choices=MODES, default="fan_in", help="which fan the gain divides; default "
                      "%(default)s")
    prop.add_argument("--distribution", choices=PROPAGATE_DISTRIBUTIONS, default="normal",
                      help="weight distribution; default %(default)s")
    prop.add_argument("--seed", type=_count(minimum=0), default=0, help="random seed >= 0; default %(default)s")
    prop.add_argument("--plot", help="also draw the per-layer curves to this file (.png, .pdf or .svg; needs "
                      "matplotlib)")
    _add_param(prop)
    _add_quiet(prop)

    solve = command("solve", help="activation parameters that meet moment constraints",
                    description="Solve for parameters, e.g. SELU's: gainderive solve "
                    "'scale*where(x > 0, x, alpha*(exp(x) - 1))' --unknown alpha --unknown scale "
                    "--constraint mean=0 --constraint second_moment=1")
    solve.add_argument("formula", help="a formula in x and the unknowns")
    solve.add_argument("--unknown", action="append", default=[], metavar="NAME[=GUESS]", required=True,
                       help="a parameter to solve for, with a starting guess (default 1); repeatable, each once")
    solve.add_argument("--constraint", action="append", default=[], metavar="MOMENT=VALUE", required=True,
                       help="e.g. mean=0 or second_moment=1; repeatable, each moment once")
    solve.add_argument("--variance", "-q", action=_Once, default="1", help="input variance q > 0; default %(default)s")
    _add_param(solve)
    solve.add_argument("--json", action="store_true", help="print JSON instead of NAME = VALUE lines")

    crit = command("critical", help="the edge of chaos: sigma_w^2 with chi_1 = 1 for given sigma_b^2",
                   description="Mean-field criticality (Schoenholz et al. 2017): for a bias variance, the "
                   "weight variance at which chi_1 = sigma_w^2 E[f'(z)^2] = 1 at the fixed point q*, with "
                   "depth scales and isometry diagnostics; --line tabulates, --plot draws the line.")
    crit.add_argument("activation", help=_ACTIVATION_HELP)
    _add_mean_field(crit)
    crit.add_argument("--line", metavar="SPEC", help="the critical line over sigma_b^2 = start:stop:count "
                      "(linear, 2 points up to the line limit, 10,000 by default) or a comma list, e.g. 0:0.5:11")
    crit.add_argument("--plot", help="draw the critical line to this file (.png, .pdf or .svg; needs matplotlib)")
    _add_param(crit)
    crit.add_argument("--json", action="store_true", help="print JSON instead of text")

    field = command("meanfield", help="fixed point, chi_1, c*, chi_c, depth scales at given sigma_w^2, sigma_b^2",
                    description="Mean-field signal propagation (Poole et al. 2016; Schoenholz et al. 2017; "
                    "Pennington et al. 2017) for one (sigma_w^2, sigma_b^2).")
    field.add_argument("activation", help=_ACTIVATION_HELP)
    field.add_argument("--weight-variance", "-w", required=True, help="sigma_w^2 > 0")
    _add_mean_field(field)
    field.add_argument("--variance", "-q", action=_Once,
                       help="use this q instead of solving for q*; default: solve for q*")
    _add_param(field)
    field.add_argument("--json", action="store_true", help="print JSON instead of text")

    kern = command("kernel", help="the correlation kernel E[f(u) f(v)] of a bivariate Gaussian",
                   description="E[f(u) f(v)] (or E[f'(u) f'(v)] with --derivative) for Gaussian (u, v) with "
                   "variances q1, q2 and correlation c: closed forms for relu, leaky_relu, prelu, abs, erf, "
                   "sin, identity and gelu; kink-aware 2-D quadrature otherwise.")
    kern.add_argument("activation", help=_ACTIVATION_HELP)
    kern.add_argument("--correlation", "-c", action=_Once, required=True,
                      help="c in [-1, 1], a comma list, or start:stop:count (linear); at most "
                      "GAINDERIVE_MAX_CORRELATIONS values")
    kern.add_argument("--variance", "-q", action=_Once, default="1", help="q1, or q1,q2; default %(default)s")
    kern.add_argument("--derivative", action="store_true", help="the kernel of f' instead of f")
    kern.add_argument("--method", choices=KERNEL_METHODS, default="auto",
                      help="auto (a verified closed form where one exists, quadrature otherwise), closed_form, "
                      "quadrature or high_precision; default %(default)s")
    kern.add_argument("--digits", type=_digits, help="digits for high precision (5 up to GAINDERIVE_MAX_DIGITS, "
                      "200 by default; implies --method high_precision); default "
                      f"{DEFAULT_HIGH_PRECISION_DIGITS} with --method high_precision")
    _add_param(kern)
    kern.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_quiet(kern)

    listing = command("list", help="the registry of named activations",
                      description="Registry names, formulas, parameters and references.")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser, commands


# ---------------------------------------------------------------- derive

def _number(value: Any, digits: int | None) -> Any:
    """A float, or the value printed to ``digits`` digits; an infinite moment is the string "inf" (valid JSON)."""
    if digits is None:  # float64: no mpmath needed (a table of a million q calls this eight million times)
        value = float(value)
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else value
    import mpmath as mp

    if mp.isinf(value):
        return "inf" if value > 0 else "-inf"
    with mp.workdps(digits + 5):  # mp.mpf() rounds to the working precision: widen it first
        return mp.nstr(mp.mpf(value), digits, strip_zeros=False, min_fixed=-5, max_fixed=digits + 1)


def _error(value: Any, digits: int | None) -> Any:
    import mpmath as mp

    return float(value) if digits is None else mp.nstr(mp.mpf(value), 3)


def _derive_method(args: argparse.Namespace) -> tuple[str, int | None]:
    """The backend and the mpmath digits (None for float64) that --method, --digits, --check and --samples ask for."""
    method, digits = args.method, args.digits
    if digits is not None:
        if method not in ("auto", "high_precision"):
            raise GainDeriveError(f"--digits applies to --method high_precision (or auto), not --method {method}")
        method = "high_precision"
    elif method == "high_precision":
        digits = DEFAULT_HIGH_PRECISION_DIGITS
    if args.samples is not None and not (args.check or method == "monte_carlo"):
        raise GainDeriveError("--samples applies to the Monte Carlo check or estimate; add --check or --method "
                              "monte_carlo")
    if args.check and method == "monte_carlo":
        raise GainDeriveError("--check compares with Monte Carlo, which --method monte_carlo already is; drop one")
    return method, digits


def _slice(estimates, i: int | None) -> list:
    """(name, Estimate) pairs of moments or gains, at the i-th q of a vectorised result (``i`` None: all of it)."""
    from .estimate import Estimate

    return [(name, e if i is None else Estimate(e.value[i], e.error[i], e.method)) for name, e in estimates]


def _derive(args: argparse.Namespace) -> int:
    import numpy as np

    from .gains import gains
    from .limits import check_size
    from .moments import moments
    from .progress import progress_bar

    params = _params(args.param)
    method, digits = _derive_method(args)
    if ":" in args.variance:  # a grid, as for table
        from .tables import parse_variance_spec

        # validated there: finite and > 0, at most the derive_points limit
        qs = [float(q) for q in parse_variance_spec(args.variance, limit="derive_points")]
        texts = [repr(q) for q in qs]
    else:
        texts = [t.strip() for t in str(args.variance).split(",")]
        check_size("derive_points", len(texts))
        # at --digits q is exact at the working precision, so any q > 0 is accepted (1e-310 included)
        qs = [_shown_q(_exact_variance(t), t) if digits is not None else _variance(t, high_precision=True)
              for t in texts]
    several = len(qs) > 1
    runs = []  # per q: (moments, gains) as (name, Estimate) pairs
    if digits is not None:  # mpmath takes one q at a time, each exact from its decimal string
        with progress_bar("high precision", enabled=not args.quiet and several) as bar:
            for k, text in enumerate(texts):
                m = moments(args.activation, text, "high_precision", digits=digits, **params)
                runs.append((_slice(m, None), _slice(gains(m, strict=False), None)))
                if k == 0:
                    first = m
                if bar is not None:
                    bar(k + 1, len(texts))
    else:
        with progress_bar("Monte Carlo", enabled=not args.quiet and method == "monte_carlo") as bar:
            extra = {"samples": args.samples, "seed": args.seed, "progress": bar} if method == "monte_carlo" else {}
            first = moments(args.activation, np.array(qs) if several else qs[0], method, **extra, **params)
        g = gains(first, strict=False)
        runs = [(_slice(first, k if several else None), _slice(g, k if several else None)) for k in range(len(qs))]
    act = first.activation
    forms = first.closed_forms
    if not forms and method not in ("quadrature", "monte_carlo"):  # high precision does not choose per moment
        from .verify import closed_forms

        forms = closed_forms(act)
    notes = {}
    if method not in ("quadrature", "monte_carlo") and "_closed_forms" not in act.__dict__:
        from .compile import closed_form_notes  # the registry cache holds verified forms; a formula's were derived

        notes = closed_form_notes(act)
    reports = []
    for q, (at, g) in zip(qs, runs):
        reports.append({
            "activation": act.name,
            "formula": act.formula,
            "params": act.parameter_values,
            "variance": q,
            "moments": {name: {"value": _number(e.value, digits), "error": _error(e.error, digits),
                               "method": e.method,
                               "closed_form": forms[name].text if forms.get(name) else None,
                               "latex": forms[name].latex if forms.get(name) else None,
                               "closed_form_note": notes.get(name)} for name, e in at},
            "gains": {name: None if e.method.startswith("undefined: ") else _number(e.value, digits)
                      for name, e in g},
        })
        undefined = {name: e.method.removeprefix("undefined: ") for name, e in g if e.method.startswith("undefined: ")}
        if undefined:  # a gain that does not exist (its moment is 0): null in "gains", the reason here
            reports[-1]["gain_notes"] = undefined
    checks = []
    if args.check:
        with progress_bar("Monte Carlo", enabled=not args.quiet) as bar:
            mc = moments(args.activation, np.array(qs) if several else qs[0], "monte_carlo", samples=args.samples,
                         seed=args.seed, progress=bar, **params)
        for k, (report, (at, _)) in enumerate(zip(reports, runs)):
            report["monte_carlo"] = _compare(at, _slice(mc, k if several else None), args)
            checks.append(report["monte_carlo"])
    if args.json:
        print(json.dumps(reports if several else reports[0], indent=2))
    elif several:
        print(_many_q_table(reports, act, latex=args.latex, method=method))
    else:
        print(_table(reports[0], act, latex=args.latex, method=method))
    failed = [(report, check) for report, check in zip(reports, checks) if not check["passed"]]
    if failed:
        report, check = max(failed, key=lambda rc: rc[1]["max_abs_z"])
        name, worst = max(check["moments"].items(), key=lambda kv: abs(kv[1]["z_score"]))
        at_q = f" at q = {_q_text(report['variance'])}" if several else ""
        raise CheckError(
            f"Monte Carlo disagrees with {report['moments'][name]['method']} on {name}{at_q} by "
            f"{worst['z_score']:+.2f} standard errors (limit {CHECK_LIMIT:g}); one of the two methods is wrong for "
            "this activation"
        )
    return 0


def _compare(m, mc, args) -> dict[str, Any]:
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


def _header(report: dict[str, Any], act, q_text: str) -> list[str]:
    """The activation's name, q, formula, parameters, reference and where it is not smooth."""
    params = "  ".join(f"{k}={v:g}" for k, v in report["params"].items())
    lines = [f"{act.name}   {q_text}"]
    if act.formula != act.name:
        lines.append(f"  f(x) = {act.formula}" + (f"   {params}" if params else ""))
    elif params:
        lines.append(f"  {params}")
    if act.reference and act.reference != "user formula":
        lines.append(f"  reference: {act.reference}")
    lines.append(f"  {_kinks(act, report)}")
    return lines


def _kinks(act, report: dict[str, Any]) -> str:
    """Where f is not smooth: its kinks (f' jumps) and jumps (f jumps), or "none (smooth)"."""
    points = list(act.breakpoints)
    if not points:
        return "kinks: none (smooth)"
    jumps: list[float] = []
    if report["moments"]["derivative_second_moment"]["value"] == "inf":  # only then can f itself jump
        jumps = [float(j.at) for j in act.jumps]
    kinks = [b for b in points if b not in jumps]
    parts = []
    if kinks:
        parts.append("kinks at x = " + ", ".join(f"{b:g}" for b in kinks))
    if jumps:
        parts.append("jumps at x = " + ", ".join(f"{b:g}" for b in jumps))
    return "; ".join(parts)


def _closed_form_lines(report: dict[str, Any], *, latex: bool, method: str = "auto") -> list[str]:
    if method in ("quadrature", "monte_carlo"):
        return [f"  closed forms: not used (--method {method})"]
    lines = []
    key = "latex" if latex else "closed_form"
    if any(entry[key] or entry["closed_form_note"] for entry in report["moments"].values()):
        note = "; \\Phi is the standard normal CDF" if latex else ""
        lines.append(f"  closed forms (each verified against quadrature before it is shown{note}):")
        for name, entry in report["moments"].items():
            shown = entry[key] or ("∞ (" + entry["method"].removeprefix("infinite: ") + ")" if entry["value"] == "inf"
                                   else "none: this moment is computed by quadrature")
            note_text = entry["closed_form_note"]
            if not entry[key] and note_text:
                skipped = note_text.startswith("closed form skipped")
                shown = note_text if skipped else f"derived but dropped: {note_text}"
            lines.append(f"  {_LABELS[name]:<12}= {shown}")
            if entry[key] and entry["closed_form_note"]:
                lines.append(f"  {'':<12}  ({entry['closed_form_note']})")
    else:
        lines.append("  closed forms: none for this activation (outside the rule-based class); quadrature is used")
    return lines


def _table(report: dict[str, Any], act, *, latex: bool = False, method: str = "auto") -> str:
    lines = _header(report, act, f"q = {_q_text(report['variance'])}")
    lines.append("")
    lines.append(f"  {'moment':<12}{'value':>26}  {'error':>9}  method")
    for name, entry in report["moments"].items():
        value, error = _fmt(entry["value"]), _fmt_err(entry["error"])
        if value == "∞":
            error = ""
        lines.append(f"  {_LABELS[name]:<12}{value:>26}  {error:>9}  {entry['method']}")
    lines.append("")
    lines.extend(_closed_form_lines(report, latex=latex, method=method))
    lines.append("")
    lines.append(f"  {'gain':<12}{'value':>26}  std = gain / sqrt(fan)")
    infinite = report["moments"]["derivative_second_moment"]["value"] == "inf"
    for name, value in report["gains"].items():
        note = _GAIN_NOTES[name]
        if name == "fan_out" and infinite:
            note = "1 / sqrt(E[f'^2]) = 0: E[f'^2] is infinite, no scale preserves the backward signal"
        if value is None:
            value, note = "undefined", report["gain_notes"][name]  # only present when a gain is undefined
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


def _many_q_table(reports: list[dict[str, Any]], act, *, latex: bool = False, method: str = "auto") -> str:
    """Several q in one table: a row per q, a column per moment (with its error) and per gain."""
    first = reports[0]
    lines = _header(first, act, f"{len(reports)} input variances q")
    lines.append("")
    header = ["q"]
    for name in first["moments"]:
        header += [_LABELS[name], "error"]
    header += [f"gain {name}" for name in first["gains"]]
    rows = []
    for report in reports:
        row = [_q_text(report["variance"])]
        for entry in report["moments"].values():
            row += [_fmt(entry["value"]), "" if entry["value"] in ("inf", "-inf") else _fmt_err(entry["error"])]
        row += [_fmt("undefined" if value is None else value) for value in report["gains"].values()]
        if "monte_carlo" in report:
            mc = report["monte_carlo"]
            row.append(f"{mc['max_abs_z']:.2f}" + ("" if mc["passed"] else " DISAGREES"))
        rows.append(row)
    if "monte_carlo" in first:
        header.append("MC max |z|")
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    for row in [header, *rows]:
        lines.append("  " + "  ".join(cell.rjust(w) for cell, w in zip(row, widths)))
    lines.append("")
    methods = {name: sorted({r["moments"][name]["method"] for r in reports}) for name in first["moments"]}
    lines.append("  methods: " + "; ".join(f"{_LABELS[name]} {', '.join(m)}" for name, m in methods.items()))
    lines.append("  gains: std = gain / sqrt(fan); " + "; ".join(f"{name} = {note.split('  ')[0]}"
                                                                 for name, note in _GAIN_NOTES.items()))
    if "monte_carlo" in first:
        mc = first["monte_carlo"]
        lines.append(f"  Monte Carlo check: {mc['samples']:,} samples per q, seed {mc['seed']} (antithetic pairs); "
                     f"limit {CHECK_LIMIT:g} standard errors")
    lines.append("")
    lines.extend(_closed_form_lines(first, latex=latex, method=method))
    return "\n".join(lines)


def _q_text(q: Any) -> str:
    return q if isinstance(q, str) else f"{q:g}"


def _fmt(value: Any) -> str:
    if value in ("inf", "-inf"):
        return value.replace("inf", "∞")
    return value if isinstance(value, str) else f"{value:.16g}"


def _fmt_err(value: Any) -> str:
    return value if isinstance(value, str) else f"{value:.2g}"


# ---------------------------------------------------------------- table, plot, verify, init, propagate, solve

def _table_command(args: argparse.Namespace) -> int:
    from .output import write_atomic
    from .progress import progress_bar
    from .tables import parse_variance_spec, table, write_tables

    if args.output in ("-", "/dev/stdout"):  # clearly meant as standard output, where the table goes without -o
        args.output = None
    if args.output is not None:  # before the work: the write checks again
        from .output import check_destination

        check_destination(args.output, what="table")
    q = parse_variance_spec(args.variance)
    params = _params(args.param)
    n = len(args.activations)

    def emit(stream) -> None:
        # tables are computed as they are written, one at a time: memory holds one table, never the whole text
        with progress_bar("tables", enabled=not args.quiet) as bar:
            def tables():
                for k, name in enumerate(args.activations):
                    # one bar over all activations: activation k's chunk progress fills the k-th of n equal parts
                    step = None if bar is None else (
                        lambda done, total, k=k: bar(k * 1000 + (1000 * done) // max(total, 1), n * 1000))
                    yield table(name, q, method=args.method, progress=step, **params)

            write_tables(stream, tables(), args.format, as_list=n > 1, indent=1)

    if args.output:
        write_atomic(args.output, emit, what="table")
    else:
        emit(sys.stdout)
    return 0


def _plot_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise GainDeriveError(f"--size takes WIDTHxHEIGHT in pixels, e.g. 900x600; got {text!r}") from None
    return width, height  # the range is plotting's to check


def _plot_command(args: argparse.Namespace) -> int:
    size = _plot_size(args.size)
    params = _params(args.param)
    from .plotting import plot_gains

    plot_gains(args.activations, args.output, variance=args.variance, size=size, params=params or None)
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
        _variance(variance, high_precision=True)  # validates: one line, exit 2
    what = f"gain_{args.gain}" if args.gain else args.moment
    try:
        if args.gain:
            result = assert_gain(args.activation, expected, mode=args.gain, variance=variance, params=params,
                                 rtol=args.rtol)
        else:
            result = assert_moment(args.activation, args.moment, expected, variance=variance, params=params,
                                   rtol=args.rtol)
    except DerivationError as exc:
        first, _, rest = str(exc).partition("\n")
        print(f"refuted: {first}" + (f"\n{rest}" if rest else ""))
        print(f"gainderive: check failed: {what} of {args.activation} = {args.expected} is refuted (the comparison "
              "is on standard output)", file=sys.stderr)
        return 1
    how = ("proved equal to the derived closed form" if result.how == "symbolic"
           else f"agrees numerically at {result.points} point(s)"
           + (f" to {result.digits - 5} digits" if result.digits else f" to relative {args.rtol or 1e-12:g}"))
    print(f"verified: {what} of {args.activation} = {args.expected}: {how}")
    return 0


def _init_command(args: argparse.Namespace) -> int:
    from .init import snippets, spec

    try:
        shape = tuple(int(v) for v in args.shape.split(","))
    except ValueError:
        raise GainDeriveError(f"--shape takes comma-separated integers, e.g. 64,32,3,3; got {args.shape!r}") from None
    s = spec(args.activation, shape, mode=args.mode, distribution=args.distribution,
             variance=_variance(args.variance), layout=args.layout, groups=args.groups, **_params(args.param))
    print(f"{s.activation}  shape {s.shape} ({s.layout} layout)  q = {s.variance:g}")
    print(f"  fan_in {s.fan_in}   fan_out {s.fan_out}   mode {s.mode}")
    print(f"  gain {s.gain:.10g}   std {s.std:.10g}" + (f"   bound {s.bound:.10g}" if s.bound else ""))
    print(f"  how: {s.how}")
    print("")
    for framework, line in snippets(s).items():
        print(f"  {framework:<6} {line}")
    return 0


def _propagate_command(args: argparse.Namespace) -> int:
    from .plotting import PYTORCH_GAINS
    from .progress import progress_bar
    from .propagate import propagate

    if args.plot:
        _plot_destination(args.plot)
    params = _params(args.param)
    q = _variance(args.variance)
    gains: dict[str, float | None] = {"derived": None}
    if args.activation in PYTORCH_GAINS and not params:  # PyTorch's table has the default parameters only
        gains["torch table"] = PYTORCH_GAINS[args.activation]
    runs = {}
    for label, gain in gains.items():
        with progress_bar(f"propagate ({label} gain)", enabled=not args.quiet) as bar:
            runs[label] = propagate(args.activation, gain=gain, depth=args.depth, width=args.width, batch=args.batch,
                                    networks=args.networks, variance=q, seed=args.seed, mode=args.mode,
                                    distribution=args.distribution, progress=bar, **params)
    print(f"{args.activation}: {args.depth} layers of width {args.width}, {args.networks} networks averaged "
          f"(q = {q:g}, {args.mode}, {args.distribution} weights, seed {args.seed})")
    for label, run in runs.items():
        print(f"  {label:<12} gain {run.gain:.6g}: E[x^2] last/first {run.forward_drift:.4g} "
              f"(range {run.forward.min():.4g}..{run.forward.max():.4g}), gradient first/last {run.backward_drift:.4g}")
    header = "".join(f"  {label + ' E[x^2]':>20}  {label + ' E[g^2]':>20}" for label in runs)
    print(f"\n  {'layer':>5}{header}")
    for layer in range(args.depth + 1):
        cells = "".join(f"  {run.forward[layer]:>20.6g}  {run.backward[layer]:>20.6g}" for run in runs.values())
        print(f"  {layer:>5}{cells}")
    if args.plot:
        from .plotting import plot_propagation

        plot_propagation(args.activation, runs, args.plot)
    return 0


def _solve_command(args: argparse.Namespace) -> int:
    from .solve import solve_parameters

    unknowns = {}
    for item in args.unknown:
        name, _, guess = item.partition("=")
        name = name.strip()
        if name in unknowns:
            raise GainDeriveError(f"--unknown {name} is given twice; give each unknown once")
        try:
            unknowns[name] = float(guess) if guess else 1.0
        except ValueError:
            raise GainDeriveError(f"--unknown takes NAME or NAME=GUESS; got {item!r}") from None
    constraints = {}
    for name, value in _pairs(args.constraint, "--constraint", "mean=0").items():
        try:
            constraints[name] = float(value)
        except ValueError:
            raise GainDeriveError(f"--constraint takes MOMENT=VALUE, e.g. mean=0; got {name}={value!r}") from None
    q = _variance(args.variance)
    solution = solve_parameters(args.formula, unknowns, constraints, variance=q, **_params(args.param))
    if args.json:
        print(json.dumps({"formula": args.formula, "variance": q, "solution": solution}))
    else:
        for name, value in solution.items():
            print(f"{name} = {value!r}")
    return 0


# ---------------------------------------------------------------- mean field and kernels

def _linear_spec(spec: str, what: str, limit_name: str) -> list[float]:
    """start:stop:count (linear, count >= 2) or a comma list of numbers, at most the size limit ``limit_name``."""
    from .limits import check_size

    def bound(count: int) -> None:
        check_size(limit_name, count)

    if ":" in spec:
        parts = spec.split(":")
        count = _integer(parts[2].strip()) if len(parts) == 3 else None
        if count is None or count < 2:
            raise GainDeriveError(f"{what} takes start:stop:count (linear, count >= 2) or a comma list; got {spec!r}")
        bound(count)
        start, stop = _real(parts[0], what), _real(parts[1], what)
        return [start + (stop - start) * k / (count - 1) for k in range(count)]
    values = spec.split(",")
    bound(len(values))
    return [_real(v, what) for v in values]


def _isometry_lines(iso) -> list[str]:
    return [f"  isometry at depth L = {iso.depth} (Pennington et al. 2017):",
            f"    E[f'^2] = {iso.mu1:.12g}, E[f'^4] = {iso.mu2:.12g}",
            f"    squared singular values of J: mean {iso.mean:.6g}; variance {iso.variance_gaussian:.6g} "
            f"(Gaussian W), {iso.variance_orthogonal:.6g} (orthogonal W)"]


def _critical_command(args: argparse.Namespace) -> int:
    from .meanfield import critical_line, edge_of_chaos, isometry
    from .progress import progress_bar

    params = _params(args.param)
    if args.plot:
        _plot_destination(args.plot)
    line = None
    if args.line:
        with progress_bar("critical line", enabled=not args.json) as bar:
            values = _linear_spec(args.line, "--line", "line")
            points = line = critical_line(args.activation, values, progress=bar, **params)
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
        from .plotting import plot_critical_line

        if line is None:  # without --line: sigma_b^2 over [0, 0.5]
            line = critical_line(args.activation, [0.5 * k / 40 for k in range(41)], **params)
        plot_critical_line(args.activation, line, args.plot)
    return 0


def _meanfield_command(args: argparse.Namespace) -> int:
    from .meanfield import mean_field
    from .progress import progress_bar

    sw, sb = _real(args.weight_variance, "--weight-variance"), _real(args.bias_variance, "--bias-variance")
    q = None if args.variance is None else _variance(args.variance)
    with progress_bar("mean field", enabled=not args.json) as bar:
        r = mean_field(args.activation, sw, sb, depth=args.depth, variance=q, progress=bar, **_params(args.param))
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
    from .progress import progress_bar

    qs = [_variance(v, high_precision=True) for v in args.variance.split(",")]
    if len(qs) > 2:
        raise GainDeriveError(f"--variance takes q1 or q1,q2; got {args.variance!r}")
    cs = _linear_spec(args.correlation, "--correlation", "correlations")
    params = _params(args.param)
    method, digits = args.method, args.digits
    if digits is not None:
        if method not in ("auto", "high_precision"):
            raise GainDeriveError(f"--digits applies to --method high_precision (or auto), not --method {method}")
        method = "high_precision"
    elif method == "high_precision":
        digits = DEFAULT_HIGH_PRECISION_DIGITS
    with progress_bar("kernel", enabled=not args.quiet) as bar:
        if method == "high_precision":  # mpmath takes one c at a time
            values = []
            for k, c in enumerate(cs):
                r = kernel(args.activation, c, *qs, derivative=args.derivative, method=method, digits=digits,
                           **params)
                values.append((r.value, r.error, r.method))
                if bar is not None:
                    bar(k + 1, len(cs))
        else:
            r = kernel(args.activation, cs, *qs, derivative=args.derivative, method=method, progress=bar, **params)
            values = [(v, e, r.method) for v, e in zip(r.value, r.error)]
    what = "E[f'(u) f'(v)]" if args.derivative else "E[f(u) f(v)]"
    q1, q2 = qs[0], qs[-1]
    if args.json:
        print(json.dumps({"activation": args.activation, "variance": [q1, q2], "derivative": args.derivative,
                          "kernel": [{"correlation": c, "value": _number(v, digits), "error": float(e),
                                      "method": m} for c, (v, e, m) in zip(cs, values)]}))
        return 0
    print(f"{args.activation}: {what}, var u = {q1:g}, var v = {q2:g}")
    for c, (v, e, m) in zip(cs, values):
        shown = _number(v, digits) if m == "high_precision" else repr(float(v))
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

    # a size limit names the API keyword first ("depth: 10 layers exceeds ..."): here that is the flag
    text = re.sub(r"^(?P<name>[a-z_]+): ", lambda m: f"{_FLAGS[m['name']]}: " if m["name"] in _FLAGS else m[0], text)
    # parameters are keyword arguments in Python and --param NAME=VALUE here
    text = _KEYWORDS.sub(lambda m: "with " + " ".join(f"--param {kw}" for kw in m["list"].split(", ")), text)
    text = _ARGUMENT.sub(flag, text)
    return text.replace("--digits N (--digits ", "--digits (").replace("--digits N, --digits ", "--digits ")


class _StdoutError(Exception):
    """Standard output could not be written (a full disk, a vanished terminal): bad surroundings, not a bug."""


class _GuardedStdout:
    """sys.stdout, with its write errors turned into :class:`_StdoutError` (a broken pipe stays itself)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        if self._stream is None:  # started with 1>&-: what does not print (plot -o, table -o) still works
            raise _StdoutError("it is closed")
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _StdoutError(exc.strerror or str(exc)) from None

    def flush(self) -> None:
        if self._stream is None:
            return
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _StdoutError(exc.strerror or str(exc)) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _silence_stdout() -> None:
    """Point file descriptor 1 at /dev/null so the interpreter's exit-time flush cannot fail a second time."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # an in-memory stream (tests): nothing to flush at exit
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


_COMMANDS = {"derive": _derive, "list": _list, "table": _table_command, "plot": _plot_command,
             "verify": _verify_command, "init": _init_command, "propagate": _propagate_command,
             "solve": _solve_command, "critical": _critical_command, "meanfield": _meanfield_command,
             "kernel": _kernel_command}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gainderive`` command; returns the exit status."""
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        return _main(argv)


#: options whose value may start with a minus sign (a correlation, a list, a claimed formula)
_SIGNED = {"-c", "--correlation", "-b", "--bias-variance", "--line", "--expected", "-w", "--weight-variance"}
_NEGATIVE = re.compile(r"-[\d.(]")


def _negative_values(argv: list[str]) -> list[str]:
    """``-c -1:1:5`` as ``-c=-1:1:5``: argparse takes a value like -1:1:5 or -0.5,0.5 for an unknown option."""
    out: list[str] = []
    for token in argv:
        if out and out[-1] in _SIGNED and _NEGATIVE.match(token):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line on stderr, as everything else the command says there."""
    print(f"gainderive: warning: {' '.join(str(message).split())}", file=sys.stderr)


def _main(argv: Sequence[str] | None) -> int:
    command = None
    if sys.stderr is None:  # started with 2>&-: print(file=None) would put the messages on standard output
        sys.stderr = open(os.devnull, "w")
    real_stdout = sys.stdout
    sys.stdout = _GuardedStdout(real_stdout)
    try:
        parser, subparsers = _build_parser()
        args, extra = parser.parse_known_args(_negative_values(sys.argv[1:] if argv is None else list(argv)))
        command = args.command
        if extra:  # argparse would blame the top-level parser; the subcommand's help is the one that helps
            subparsers[command].error(f"unrecognized arguments: {' '.join(extra)}")
        status = _COMMANDS[command](args)
        sys.stdout.flush()  # here, not at exit: a full disk is reported as an error, not an exit-time traceback
        return status
    except CheckError as exc:
        print(f"gainderive: check failed: {_cli_message(str(exc), command)}", file=sys.stderr)
        return 1
    except GainDeriveError as exc:
        print(f"gainderive: error: {_cli_message(str(exc), command)}", file=sys.stderr)
        return 2
    except _StdoutError as exc:
        sys.stdout = real_stdout
        _silence_stdout()
        print(f"gainderive: error: cannot write standard output: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gainderive: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader (e.g. head) went away: stop quietly, as a pipeline expects
        sys.stdout = real_stdout
        _silence_stdout()
        return 141
    except Exception as exc:  # a bug, not bad input: one line, and the traceback on request
        if os.environ.get("GAINDERIVE_DEBUG"):
            raise
        print(f"gainderive: internal error: {type(exc).__name__}: {exc} (please report it; set GAINDERIVE_DEBUG=1 "
              "for the traceback)", file=sys.stderr)
        return 70
    finally:
        sys.stdout = real_stdout
        try:  # the status is decided; output left in the buffer must not fail again at exit (a full disk)
            if real_stdout is not None:
                real_stdout.flush()
        except (OSError, ValueError):
            _silence_stdout()
