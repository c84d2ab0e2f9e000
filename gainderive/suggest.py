"""Did-you-mean hints for the names a newcomer types: activations, functions, parameters, moments, keywords.

A hint compares the typed word with the accepted ones after folding case and the separators ``-``, ``_`` and
spaces (``Leaky-ReLU`` folds to ``leakyrelu``, as does ``leaky_relu``); an exact folded match wins, otherwise
the closest candidate by :func:`difflib.get_close_matches` (ratio >= 0.75 on the folded words, about one typo
in a short name).  The hint is a phrase to append to an error message, or ``""`` when nothing is close, so a
message never guesses wildly.

This module is imported by error paths only and needs nothing beyond the standard library.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "API_KEYWORDS",
    "KEYWORD_ALIASES",
    "VARIABLE_NAMES",
    "Call",
    "accepted",
    "closest",
    "did_you_mean",
    "fold",
    "framework_hint",
    "unknown_parameters",
]

#: difflib similarity (2 * matches / total length) a folded candidate needs: one typo in a 4-6 letter name
#: (gleu/gelu 0.75, sigmod/sigmoid 0.92, alpah/alpha 0.8) passes, unrelated short names (foo/tanh) do not.
CUTOFF = 0.75

_SEPARATORS = re.compile(r"[-_\s]+")

#: The keywords of the library's own functions (not activation parameters), and what each one is, for messages
#: on a keyword given where an activation parameter was expected.
API_KEYWORDS = {
    "variance": "the input variance q",
    "mode": "the gain convention (fan_in, fan_out, variance)",
    "method": "the backend (auto, quadrature, high_precision, monte_carlo)",
    "digits": "the working precision of method='high_precision'",
    "samples": "the number of Monte Carlo samples",
    "seed": "the Monte Carlo seed",
    "rtol": "the relative tolerance",
    "progress": "the progress callback",
}


@dataclass(frozen=True)
class Call:
    """The API function that received activation parameters, for hints on a keyword passed as one.

    ``signature`` is shown (``"gain(activation, variance=1.0, ...)"``), ``keywords`` are the ones it takes, and
    ``instead`` (formatted with ``given``, e.g. ``"digits=30"``) says where a keyword it does not take goes.
    """

    signature: str
    keywords: tuple[str, ...]
    instead: str = ""


#: Names people give the pre-activation variable, which is x in every formula.
VARIABLE_NAMES = ("z", "Z", "X", "t", "u", "input", "inp", "preact", "pre_activation", "preactivation")

#: Names people carry over from papers and other libraries for the library's keywords.
KEYWORD_ALIASES = {
    "q": "variance", "var": "variance", "sigma2": "variance", "sigma_sq": "variance", "input_variance": "variance",
    "q_in": "variance", "variances": "variance",
    "fan": "mode", "fan_mode": "mode", "gain_mode": "mode",
    "backend": "method",
    "dps": "digits", "precision": "digits", "prec": "digits",
    "n_samples": "samples", "num_samples": "samples", "nsamples": "samples",
    "random_state": "seed", "rng": "seed",
    "tol": "rtol", "tolerance": "rtol",
}


def fold(word: str) -> str:
    """``word`` in lower case without ``-``, ``_`` and spaces: the spelling differences that never matter."""
    return _SEPARATORS.sub("", word).lower()


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``word`` most plausibly means, or None when none is close (see the module docstring)."""
    if not isinstance(word, str) or not word:
        return None
    candidates = list(candidates)
    if word in candidates:
        return None  # an accepted word needs no hint
    by_fold: dict[str, str] = {}
    for candidate in candidates:
        by_fold.setdefault(fold(candidate), candidate)  # the first spelling of a folded name wins
    folded = fold(word)
    if folded in by_fold:
        return by_fold[folded]
    matches = difflib.get_close_matches(folded, list(by_fold), n=1, cutoff=CUTOFF)
    return by_fold[matches[0]] if matches else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'relu'?"`` for the closest candidate to ``word``, or ``""`` when none is close.

    >>> did_you_mean("gleu", ["relu", "gelu", "elu"])
    "; did you mean 'gelu'?"
    >>> did_you_mean("Leaky-ReLU", ["relu", "leaky_relu"])
    "; did you mean 'leaky_relu'?"
    >>> did_you_mean("foo", ["relu", "tanh"])
    ''
    """
    match = closest(word, candidates)
    return f"; did you mean {match!r}?" if match is not None else ""


def accepted(hint: str, names: Iterable[str] | str) -> str:
    """The tail of a message: ``hint`` and the accepted names, ``"; did you mean 'gelu'? (accepted: ...)"`` after a
    question, ``"; <hint>; accepted: ..."`` after another hint, ``"; accepted: ..."`` without one."""
    listed = names if isinstance(names, str) else ", ".join(names) or "none"
    return f"{hint} (accepted: {listed})" if hint.endswith("?") else f"{hint}; accepted: {listed}"


def _shown(value: object) -> str:
    """A value as typed: numbers and numeric text bare (``0.2``, also from the CLI's ``--param a=0.2``), other
    text quoted (``'tanh'``)."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return repr(value)
    return str(value)


def _gelu_approximate(value: object) -> str:
    if isinstance(value, str) and value.strip().lower() == "none":
        return "approximate='none' is the exact GELU, which gelu already is: drop the keyword"
    return ("gelu's approximate='tanh' (PyTorch) is the separate activation gelu_tanh: use the name gelu_tanh, "
            "or gelu_tanh(x) in a formula")


#: Keywords other libraries give these activations -> what they are here.  A callable gets the typed value.
_FRAMEWORK = {
    ("gelu", "approximate"): _gelu_approximate,
    ("softplus", "threshold"): "PyTorch's threshold only switches to x for speed; gainderive's softplus is exact "
                               "everywhere: drop the keyword",
    ("leaky_relu", "alpha"): "the slope for x < 0 (Keras's alpha) is negative_slope here: negative_slope={value}",
    ("leaky_relu", "slope"): "the slope for x < 0 is negative_slope here: negative_slope={value}",
    ("prelu", "weight"): "PyTorch's weight (the learned slope) is the parameter a here: a={value}",
    ("prelu", "init"): "PyTorch's init (the initial slope) is the parameter a here: a={value}",
    ("prelu", "alpha"): "the slope for x < 0 is the parameter a here: a={value}",
    ("relu", "max_value"): "relu with a cap is relu6 for max_value=6, or the formula clip(x, 0, {value})",
    ("silu", "beta"): "swish with a slope beta is the formula x*sigmoid(beta*x) with beta={value}",
    ("swish", "beta"): "swish with a slope beta is the formula x*sigmoid(beta*x) with beta={value}",
}
_ANY_ACTIVATION = {
    "inplace": "inplace is a memory option of PyTorch, not part of f: drop the keyword",
}


def framework_hint(activation: str, keyword: str, value: object = None) -> str | None:
    """What another library's keyword ``activation(..., keyword=value)`` is in gainderive, or None.

    >>> framework_hint("gelu", "approximate", "tanh").split(":")[0]
    "gelu's approximate='tanh' (PyTorch) is the separate activation gelu_tanh"
    """
    hint = _FRAMEWORK.get((activation, keyword), _ANY_ACTIVATION.get(keyword))
    if hint is None:
        return None
    if callable(hint):
        return hint(value)
    return hint.format(value=_shown(value) if value is not None else "VALUE")


def _keyword_hint(name: str, value: object, call: Call | None) -> str:
    """A phrase for an unknown parameter that looks like one of the library's own keywords, or ""."""
    keyword = KEYWORD_ALIASES.get(name) or KEYWORD_ALIASES.get(name.lower())
    if keyword is None and name in API_KEYWORDS:
        keyword = name
    if keyword is None:
        keyword = closest(name, call.keywords if call else API_KEYWORDS)
    if keyword is None:
        return ""
    what = API_KEYWORDS.get(keyword, keyword)
    given = f"{keyword}={_shown(value)}"
    if call is None:
        return f"; {what} is not an activation parameter: give it as {given}"
    if keyword in call.keywords:
        return f"; {what} is {given} ({call.signature})"
    instead = f": {call.instead.format(given=given)}" if call.instead else ""
    return f"; {call.signature} takes no {keyword} ({what}){instead}"


def unknown_parameters(owner: str, given: dict[str, object], parameters: Iterable[str], *,
                       call: Call | None = None) -> str:
    """The one-line message for parameters ``owner`` does not have, with the most useful hint for the first.

    ``given`` maps each unknown name to the value typed; ``parameters`` are the activation's.  The hint
    is, in order: what another library's keyword is here (:func:`framework_hint`), the closest parameter name, or
    the library keyword it looks like (``q`` -> ``variance``; ``call``, the API function that received the
    parameters, says whether that function takes it).
    """
    known = list(parameters)
    names = list(given)
    first = names[0]
    hint = framework_hint(owner, first, given[first])
    if hint is not None:
        hint = f"; {hint}"
    else:
        hint = did_you_mean(first, known) or _keyword_hint(first, given[first], call)
    plural = "s" if len(names) > 1 else ""
    return f"{owner} has no parameter{plural} {', '.join(names)}{accepted(hint, known)}"
