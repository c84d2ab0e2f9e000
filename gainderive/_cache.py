"""Compiled activations as plain data: the registry cache, and the per-user disk cache of formulas.

Importing sympy costs about a third of a second, more than everything else
``gainderive derive relu`` does.  Everything the symbolic layer produces for an
activation (breakpoints, feature points, exact exponential-polynomial terms, the
straight-line programs of each piece, the centre f(0), the verified closed forms
with their programs, the q-ranges where each replaces quadrature and the small-q series of those that cancel
at small q) is a
deterministic function of the formula, its parameters, the symbolic budgets and
the code, so it is stored as data (JSON: numbers, strings and the programs'
operation lists, never pickle or code) and loaded without sympy.

* ``registry_cache.json``: the registry at its default parameters.
  ``tools/make_registry_cache.py`` writes it from :func:`build`; a test rebuilds it
  and requires it to be identical, so it can never drift from the code that defines it.
* the disk cache: any other activation a user computes (a formula, a registry name
  with other parameters), one file per activation in :func:`cache_directory`,
  named by a hash of (normalised formula, exact parameters, budgets in force,
  gainderive version, :data:`FORMAT`, the sizes and times of the package's
  source files).  An entry that is corrupt, truncated, from other code or
  unreadable is ignored (and rebuilt by the caller); a directory that cannot be
  written means no caching, silently.  ``GAINDERIVE_CACHE_DIR`` chooses the
  directory (default ``$XDG_CACHE_HOME/gainderive`` or ``~/.cache/gainderive``);
  ``GAINDERIVE_CACHE_DIR=""`` or ``GAINDERIVE_NO_CACHE=1`` turns it off.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._version import __version__
from .closed_form import ClosedForm, SmallQSeries, Verdict
from .evaluate import Program

if TYPE_CHECKING:
    from .activation import Activation

__all__ = ["CACHE_FILE", "FORMAT", "MAX_ENTRY_BYTES", "CompiledIntegrand", "build", "cache_directory", "lookup"]

CACHE_FILE = Path(__file__).with_name("registry_cache.json")
#: Version of the entry format: part of every disk key, so an entry of another format is never read.
FORMAT = 4
#: Largest disk entry written (a formula with hundreds of pieces is recompiled rather than stored).
MAX_ENTRY_BYTES = 1 << 20
_MOMENTS = ("mean", "second_moment", "derivative_second_moment", "variance")


@dataclass(frozen=True, eq=False)
class CompiledIntegrand:
    """The parts of :class:`gainderive.integrand.Integrand` the float64 backends use, without sympy."""

    labels: tuple[str, ...]
    breakpoints: tuple[float, ...]
    nonnegative: tuple[bool, ...]
    exact_terms: tuple[dict[float, np.ndarray] | None, ...]
    numpy_pieces: tuple[Program, ...]
    features: tuple[tuple[float, float], ...] = ()  # (centre, width) in z: see gainderive.features
    # exact Taylor data at z = 0 for the small-q series (gainderive.backends.series); {} = not analytic at 0
    taylor_coefficients: dict[str, list] | None = None


# -- the entry format, shared by the registry cache and the disk cache ----------------------------------------------
def integrand_entry(ig, centre) -> dict[str, Any]:
    """The float64 integrand of the four moments and the centre c = f(0), as JSON data (imports sympy)."""
    from .backends import series

    return {
        "breakpoints": list(ig.breakpoints),
        "features": [list(feature) for feature in ig.features],
        "taylor": series.coefficients(ig) or {},
        "centre": float(centre),
        "centre_exact": str(centre),
        "labels": list(ig.labels),
        "nonnegative": list(ig.nonnegative),
        "pieces": [
            {
                "exact": None if terms is None else {repr(a): c.tolist() for a, c in terms.items()},
                "program": program.to_ops(),
            }
            for terms, program in zip(ig.exact_terms, ig.numpy_pieces)
        ],
    }


def closed_entry(forms: dict, programs: dict, ranges: dict, series: dict | None = None) -> dict[str, Any]:
    """{moment: None or {text, latex, whole, ranges, series}}: each verified form, its program, where it is
    used, and its small-q series (None if it has none; else coefficients as a list of floats, in_q, q_max, tail)."""
    out = {}
    for moment in _MOMENTS:
        form, program = forms.get(moment), programs.get(moment)
        found = (series or {}).get(moment)
        out[moment] = None if form is None or program is None else {
            "text": form.text, "latex": form.latex, "whole": program.to_ops(),
            "ranges": [list(span) for span in ranges.get(moment, ())],
            "series": None if found is None else found.to_data()}
    return out


def load_integrand(entry: dict[str, Any]) -> CompiledIntegrand:
    exact = tuple(
        None if p["exact"] is None else {float(a): np.array(c) for a, c in p["exact"].items()} for p in entry["pieces"]
    )
    programs = tuple(Program.from_ops(p["program"]["ops"], p["program"]["outputs"]) for p in entry["pieces"])
    # a cache written before feature points were stored has none: the backends' default feature still applies
    features = tuple((float(c), float(w)) for c, w in entry.get("features", ()))
    return CompiledIntegrand(tuple(entry["labels"]), tuple(entry["breakpoints"]), tuple(entry["nonnegative"]),
                             exact, programs, features, entry.get("taylor"))


def load_closed(stored_forms: dict[str, Any]) -> tuple[dict, dict, dict, dict]:
    """(forms, programs, ranges, series) from :func:`closed_entry`'s data."""
    forms, programs, ranges, series = {}, {}, {}, {}
    for moment, stored in stored_forms.items():
        if stored is not None and stored.get("series") is not None:
            series[moment] = SmallQSeries.from_data(stored["series"])
        forms[moment] = None if stored is None else ClosedForm(moment, stored["text"], stored["latex"])
        programs[moment] = None if stored is None else Program.from_ops(stored["whole"]["ops"],
                                                                         stored["whole"]["outputs"])
        ranges[moment] = () if stored is None else tuple((float(lo), float(hi)) for lo, hi in stored["ranges"])
    return forms, programs, ranges, series


def build() -> dict[str, Any]:
    """The registry cache's contents, computed from the registry through the symbolic layer (imports sympy)."""
    from .integrand import integrand
    from .registry import REGISTRY, activation
    from .verify import decide_ranges, moment_functions, programs, small_q_series, verified_forms

    entries = {}
    for name in REGISTRY:
        act = activation(name)
        functions, c = moment_functions(act)
        forms = verified_forms(act)
        compiled = {moment: programs(act, moment) for moment in _MOMENTS}
        ranges = {moment: decide_ranges(compiled[moment], preferred=False) for moment in _MOMENTS
                  if compiled[moment] is not None}
        entries[name] = {"closed_forms": closed_entry(forms, compiled, ranges, small_q_series(act, ranges)),
                         **integrand_entry(integrand(act, functions), c)}
    aliases = {alias: act.name for act in REGISTRY.values() for alias in act.aliases}
    return {"version": __version__, "aliases": aliases, "activations": entries}


@cache
def _contents() -> dict[str, Any]:
    try:
        return json.loads(CACHE_FILE.read_text())
    except (OSError, ValueError):
        return {"aliases": {}, "activations": {}}  # no cache: everything takes the symbolic path


@cache
def lookup(name: str):
    """(activation, compiled integrand, centre) for a registry name or alias, or None."""
    from .activation import _ALIASES, REGISTRY

    data = _contents()
    name = data["aliases"].get(name, _ALIASES.get(name, name))
    entry = data["activations"].get(name)
    if entry is None or data.get("version") != __version__ or name not in REGISTRY:
        return None
    act = replace(REGISTRY[name])
    # what the symbolic layer would compute for these, filled in so that reporting needs no sympy
    act.__dict__["breakpoints"] = tuple(entry["breakpoints"])
    act.__dict__["jumps"] = ()
    act.__dict__["_closed_forms"] = load_closed(entry["closed_forms"])
    return act, load_integrand(entry), entry["centre"]


# -- the per-user disk cache ------------------------------------------------------------------------------------------
def cache_directory() -> Path | None:
    """Where compiled formulas are kept: ``GAINDERIVE_CACHE_DIR``, else the per-user cache directory; None if off.

    ``GAINDERIVE_CACHE_DIR=""`` or ``GAINDERIVE_NO_CACHE`` set to anything but ``""``/``0`` turns the cache off.
    """
    if os.environ.get("GAINDERIVE_NO_CACHE", "") not in ("", "0"):
        return None
    chosen = os.environ.get("GAINDERIVE_CACHE_DIR")
    if chosen is not None:
        return Path(chosen) if chosen.strip() else None
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    try:
        root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    except (RuntimeError, KeyError):  # no home directory
        return None
    return root / "gainderive"


@cache
def code_fingerprint() -> str:
    """A hash of the size and modification time of every module of the package.

    Part of every disk key, beside the version: an edited source tree (a development install, where the version
    does not change) never reads an entry compiled by other code.  Computed once per process (~0.1 ms).
    """
    root = Path(__file__).parent
    parts = []
    for path in sorted(root.rglob("*.py")):
        try:
            info = path.stat()
        except OSError:
            continue
        parts.append(f"{path.relative_to(root)}:{info.st_size}:{info.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def disk_key(content: tuple, budgets: Any) -> str:
    """The file name of an activation's entry: a hash of what decides its contents."""
    text = repr((content, repr(budgets), __version__, FORMAT, code_fingerprint()))
    return hashlib.sha256(text.encode()).hexdigest()[:40] + ".json"


def read_entry(key: str) -> dict[str, Any] | None:
    """The stored entry named ``key``, or None if there is none or it is unusable (never an error)."""
    folder = cache_directory()
    if folder is None:
        return None
    try:
        path = folder / key
        if path.stat().st_size > MAX_ENTRY_BYTES:
            return None
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeError):
        return None
    if not isinstance(entry, dict) or entry.get("version") != __version__ or entry.get("format") != FORMAT \
            or entry.get("key") != key:
        return None
    return entry


def write_entry(key: str, entry: dict[str, Any]) -> bool:
    """Store ``entry`` atomically under ``key``; False (and nothing written) when that is not possible."""
    folder = cache_directory()
    if folder is None:
        return False
    text = json.dumps({**entry, "version": __version__, "format": FORMAT, "key": key}, sort_keys=True)
    if len(text) > MAX_ENTRY_BYTES:
        return False
    from .errors import GainDeriveError
    from .output import write_atomic

    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / key, text, what="gainderive cache entry")
    except (OSError, GainDeriveError):  # read-only, full, refused: compute without a cache
        return False
    return True


def activation_entry(act: Activation) -> dict[str, Any] | None:
    """The activation record as data, or None when its parameters are not all rational (those are not stored)."""
    params = {}
    for name, value in act.params.items():
        if getattr(value, "is_Rational", False) is not True:
            return None
        params[name] = [int(value.p), int(value.q)]
    return {"name": act.name, "formula": act.formula, "params": params, "reference": act.reference,
            "description": act.description, "aliases": list(act.aliases), "constraints": list(act.constraints),
            "breakpoints": list(act.breakpoints)}


def load_activation(stored: dict[str, Any]) -> Activation:
    """The activation record of :func:`activation_entry`, with what reporting needs filled in (no sympy)."""
    from fractions import Fraction

    from .activation import Activation

    act = Activation(name=stored["name"], formula=stored["formula"],
                     params={k: Fraction(int(p), int(q)) for k, (p, q) in stored["params"].items()},
                     reference=stored["reference"], description=stored["description"],
                     aliases=tuple(stored["aliases"]), constraints=tuple(stored["constraints"]))
    act.__dict__["breakpoints"] = tuple(float(b) for b in stored["breakpoints"])
    act.__dict__["jumps"] = ()
    return act


def verdicts_entry(found: dict[str, Verdict]) -> dict[str, Any]:
    return {name: [v.status, v.reason] for name, v in found.items()}


def load_verdicts(stored: dict[str, Any], forms: dict) -> dict[str, Verdict]:
    return {name: Verdict(forms.get(name), status, reason) for name, (status, reason) in stored.items()}
