"""The registry, precompiled: each entry's moment integrands as plain data.

Importing sympy costs about half a second, more than everything else
``gainderive derive relu`` does.  For the registry's activations at their
default parameters everything sympy would produce (breakpoints, feature
points, exact exponential-polynomial terms, the straight-line programs of each
piece, the centre f(0)) is a deterministic function of the registry, so it is stored in
``registry_cache.json`` and loaded without sympy.  ``tools/make_registry_cache.py``
writes the file from :func:`build`; a test rebuilds it and requires it to be
identical, so the cache can never drift from the code that defines it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from .closed_form import ClosedForm
from .evaluate import Program

__all__ = ["CACHE_FILE", "CompiledIntegrand", "build", "lookup"]

CACHE_FILE = Path(__file__).with_name("registry_cache.json")


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


def build() -> dict[str, Any]:
    """The cache contents, computed from the registry through the symbolic layer (imports sympy)."""
    from . import __version__
    from .backends import series
    from .gaussian_rules import programs, verified_forms
    from .integrand import integrand
    from .moments import MOMENTS, moment_functions
    from .registry import REGISTRY, activation

    def form(act, moment):
        found = verified_forms(act)[moment]
        if found is None:
            return None
        whole, terms = programs(act, moment)
        return {"text": found.text, "latex": found.latex, "whole": whole.to_ops(), "terms": terms.to_ops()}

    entries = {}
    for name in REGISTRY:
        act = activation(name)
        functions, c = moment_functions(act)
        ig = integrand(act, functions)
        entries[name] = {
            "closed_forms": {moment: form(act, moment) for moment in MOMENTS},
            "breakpoints": list(ig.breakpoints),
            "features": [list(feature) for feature in ig.features],
            "taylor": series.coefficients(ig) or {},
            "centre": float(c),
            "centre_exact": str(c),
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
    from . import __version__
    from .registry import REGISTRY

    data = _contents()
    name = data["aliases"].get(name, name)
    entry = data["activations"].get(name)
    if entry is None or data.get("version") != __version__ or name not in REGISTRY:
        return None
    act = replace(REGISTRY[name])
    # what the symbolic layer would compute for these, filled in so that reporting needs no sympy
    act.__dict__["breakpoints"] = tuple(entry["breakpoints"])
    act.__dict__["jumps"] = ()
    forms, programs = {}, {}
    for moment, stored in entry["closed_forms"].items():
        forms[moment] = None if stored is None else ClosedForm(moment, stored["text"], stored["latex"])
        programs[moment] = None if stored is None else tuple(
            Program.from_ops(stored[part]["ops"], stored[part]["outputs"]) for part in ("whole", "terms"))
    act.__dict__["_closed_forms"] = (forms, programs)
    exact = tuple(
        None if p["exact"] is None else {float(a): np.array(c) for a, c in p["exact"].items()} for p in entry["pieces"]
    )
    programs = tuple(Program.from_ops(p["program"]["ops"], p["program"]["outputs"]) for p in entry["pieces"])
    # a cache written before feature points were stored has none: the backends' default feature still applies
    features = tuple((float(c), float(w)) for c, w in entry.get("features", ()))
    compiled = CompiledIntegrand(tuple(entry["labels"]), tuple(entry["breakpoints"]), tuple(entry["nonnegative"]),
                                 exact, programs, features, entry.get("taylor"))
    return act, compiled, entry["centre"]
