"""Every size a user can type, bounded before any work starts.

A size beyond its limit is refused with one line naming the limit, what it
would cost, and how to raise it: each limit below can be raised (or lowered)
for one run with the environment variable ``GAINDERIVE_MAX_<NAME>`` (e.g.
``GAINDERIVE_MAX_SAMPLES=1e11``).  The defaults keep every command within a
few minutes and well under 1 GB on a 2-core machine; the work itself is
chunked, so memory does not grow with the size (see ``bench/bench_limits.py``
for the time and peak memory at each limit).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from .errors import GainDeriveError

__all__ = ["LIMITS", "Limit", "LimitError", "check_size", "limit"]


class LimitError(GainDeriveError):
    """A size beyond what this machine is allowed to attempt (raise it with GAINDERIVE_MAX_<NAME>)."""


@dataclass(frozen=True)
class Limit:
    """The largest accepted value of one size, and what it counts."""

    name: str
    default: int
    counts: str
    keyword: str  # the API keyword (the CLI names the matching flag)


LIMITS: dict[str, Limit] = {lim.name: lim for lim in (
    Limit("grid", 1_000_000, "input variances q in one table or call", "variance"),
    Limit("derive_points", 10_000, "input variances q in one derive (gainderive table writes larger grids)",
          "variance"),
    Limit("plot_points", 20_000, "input variances q on one plot", "variance"),
    Limit("correlations", 20_000, "correlations c in one kernel call", "correlation"),
    Limit("samples", 2**31, "Monte Carlo samples", "samples"),
    Limit("digits", 200, "significant digits", "digits"),
    Limit("depth", 100_000, "layers", "depth"),
    Limit("width", 4096, "units per layer", "width"),
    Limit("batch", 1_000_000, "inputs per batch", "batch"),
    Limit("networks", 100_000, "independent networks", "networks"),
    Limit("propagate_work", 10**11, "multiply-adds of the depth check (depth x networks x width^2 x (batch + 250))",
          "work"),
    Limit("memory", 768 * 2**20, "bytes of working memory", "memory"),
    Limit("line", 10_000, "bias variances on one critical line", "line"),
)}


def limit(name: str) -> int:
    """The limit in force: the default, or ``GAINDERIVE_MAX_<NAME>`` when that is set to a positive number."""
    lim = LIMITS[name]
    env = f"GAINDERIVE_MAX_{name.upper()}"
    text = os.environ.get(env)
    if text is None:
        return lim.default
    try:
        value = float(text)
    except ValueError:
        raise LimitError(f"{env}={text!r} must be a number >= 1") from None
    if not (math.isfinite(value) and value >= 1):
        raise LimitError(f"{env}={text!r} must be a number >= 1")
    return int(value)


def check_size(name: str, value: int, *, cost: str = "") -> int:
    """Return ``value`` if it is within limit ``name``; otherwise raise :class:`LimitError` naming the limit.

    ``cost`` is a short phrase on what the size would take (e.g. "about 40 minutes here"), shown in the message.
    """
    lim = LIMITS[name]
    top = limit(name)
    if value > top:
        why = f" ({cost})" if cost else ""
        shown, raised = (f"{value:,}", str(value)) if value < 10**15 else (f"{value:.3g}", f"{value:.3g}")
        raise LimitError(f"{lim.keyword}: {shown} {lim.counts} exceeds the limit of {top:,}{why}; raise it with "
                         f"GAINDERIVE_MAX_{name.upper()}={raised} if this machine can take it")
    return value
