"""Lookup tables of moments and gains against the input variance q.

A gain is exact at one q only (for everything but the positively homogeneous
activations): :func:`table` computes the moments and the three gains over a
grid of q in one vectorised pass, and a :class:`Table` converts to records, a
numpy structured array, CSV, JSON or Markdown, and interpolates between grid
points (monotone cubic in log q) with a stated, measured interpolation error.

Where E[f'(z)^2] is infinite (f jumps, as sign(x); f' not square-integrable, as
for log|x|) its column holds inf, gain_fan_out holds 0, and the column's method
(in the metadata) gives the reason.  CSV writes ``inf`` (which float() and
every CSV reader parse); JSON has no infinity, so JSON rows hold the string
``"inf"`` there; Markdown shows ``inf``.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import GainDeriveError

if TYPE_CHECKING:
    from .activation import Activation

__all__ = ["COLUMNS", "Lookup", "Table", "parse_variance_spec", "table", "write_atomic"]

MOMENT_COLUMNS = ("mean", "second_moment", "derivative_second_moment", "variance_f")
GAIN_COLUMNS = ("gain_fan_in", "gain_fan_out", "gain_variance")
#: Column order of every table: q, the four moments, the three gains, the moments' error bounds.
COLUMNS = ("variance", *MOMENT_COLUMNS, *GAIN_COLUMNS, *(f"{m}_error" for m in MOMENT_COLUMNS))
DEFAULT_SPEC = "1e-3:1e3:121"
CONVENTIONS = {
    "gain_fan_in": "sqrt(q / E[f(z)^2]), std = gain / sqrt(fan_in): forward signal",
    "gain_fan_out": "1 / sqrt(E[f'(z)^2]), std = gain / sqrt(fan_out): backward signal",
    "gain_variance": "sqrt(q / Var f(z)), std = gain / sqrt(fan_in): next layer re-centres",
    "variance_f": "Var f(z); z ~ N(0, q), q = 'variance'",
}


def parse_variance_spec(spec: str | Any) -> np.ndarray:
    """q values from ``start:stop:count[:log|lin]`` (log spacing by default) or a comma list, e.g. ``0.5,1,2``.

    An array-like is accepted as is.  Every q must be finite and > 0; count >= 1.
    """
    if not isinstance(spec, str):
        q = np.asarray(spec, dtype=float).ravel()
    elif ":" in spec:
        parts = spec.split(":")
        if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] not in ("log", "lin")):
            raise GainDeriveError(f"variance spec {spec!r}: accepted forms are start:stop:count[:log|lin] or a,b,c")
        try:
            start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
        except ValueError:
            raise GainDeriveError(f"variance spec {spec!r}: start and stop must be numbers, count an integer") from None
        if count < 1:
            raise GainDeriveError(f"variance spec {spec!r}: count must be at least 1")
        if not (math.isfinite(start) and math.isfinite(stop) and start > 0 and stop > 0):
            raise GainDeriveError(f"variance spec {spec!r}: start and stop must be finite and > 0")
        spacing = parts[3] if len(parts) == 4 else "log"
        q = np.geomspace(start, stop, count) if spacing == "log" else np.linspace(start, stop, count)
    else:
        try:
            q = np.array([float(v) for v in spec.split(",")])
        except ValueError:
            raise GainDeriveError(f"variance spec {spec!r}: accepted forms are start:stop:count[:log|lin] or a,b,c") \
                from None
    if q.size == 0 or not np.all(np.isfinite(q)) or not np.all(q > 0):
        raise GainDeriveError(f"variance spec {spec!r}: every q must be finite and > 0")
    return q


@dataclass(frozen=True)
class Lookup:
    """Interpolant of one column in log q (monotone cubic: PCHIP), with its measured interpolation error.

    ``max_relative_error`` is the largest relative difference between the interpolant and the exact value at
    four points inside every grid interval (at 0.2, 0.4, 0.6 and 0.8 of it in log q: PCHIP's error peaks near
    0.2 and 0.8, not at the midpoint, where its slope errors cancel); calls outside the grid raise.
    """

    column: str
    q_min: float
    q_max: float
    max_relative_error: float
    _interpolant: Any = field(repr=False)

    def __call__(self, q: Any) -> Any:
        q = np.asarray(q, dtype=float)
        if np.any(q < self.q_min * (1 - 1e-12)) or np.any(q > self.q_max * (1 + 1e-12)):
            raise GainDeriveError(f"q outside the table's range [{self.q_min:g}, {self.q_max:g}]")
        return self._interpolant(np.log(q))[()]


@dataclass(frozen=True)
class Table:
    """Moments and gains of one activation over a grid of q (see :data:`COLUMNS`)."""

    activation: Activation
    columns: dict[str, np.ndarray]
    methods: dict[str, str]

    @property
    def q(self) -> np.ndarray:
        return self.columns["variance"]

    @property
    def meta(self) -> dict[str, Any]:
        from . import __version__

        errors = {m: float(np.max(np.abs(self.columns[f"{m}_error"]))) for m in MOMENT_COLUMNS}
        return {
            "gainderive": __version__,
            "activation": self.activation.name,
            "formula": self.activation.formula,
            "params": self.activation.parameter_values,
            "reference": self.activation.reference,
            "conventions": CONVENTIONS,
            "method": self.methods,
            "max_reported_error": errors,
            "rows": int(self.q.size),
        }

    def records(self) -> list[dict[str, float]]:
        """One dict per q, in column order."""
        return [{c: float(self.columns[c][i]) for c in COLUMNS} for i in range(self.q.size)]

    def to_numpy(self) -> np.ndarray:
        """A numpy structured array with one float64 field per column."""
        out = np.empty(self.q.size, dtype=[(c, "f8") for c in COLUMNS])
        for c in COLUMNS:
            out[c] = self.columns[c]
        return out

    def lookup(self, column: str = "gain_fan_in") -> Lookup:
        """Interpolate ``column`` in log q; its interpolation error is measured inside every grid interval."""
        from scipy.interpolate import PchipInterpolator

        if column not in COLUMNS or column == "variance":
            raise GainDeriveError(f"unknown column {column!r}; accepted: {', '.join(COLUMNS[1:])}")
        if self.q.size < 2:
            raise GainDeriveError("a lookup needs a table of at least two q")
        order = np.argsort(self.q)
        logq, values = np.log(self.q[order]), self.columns[column][order]
        if not np.all(np.isfinite(values)):
            name = column.removesuffix("_error")
            reason = self.methods.get(name, "not finite")
            raise GainDeriveError(f"column {column} of {self.activation.name} is infinite ({reason}); "
                                  "there is nothing to interpolate")
        interpolant = PchipInterpolator(logq, values)
        inside = np.concatenate([logq[:-1] + f * np.diff(logq) for f in (0.2, 0.4, 0.6, 0.8)])
        exact = table(self.activation, np.exp(inside)).columns[column]
        scale = np.maximum(np.abs(exact), np.max(np.abs(values)) * 1e-12)
        error = float(np.max(np.abs(interpolant(inside) - exact) / np.where(scale > 0, scale, 1.0)))
        return Lookup(column, float(self.q.min()), float(self.q.max()), error, interpolant)

    # -- text formats ---------------------------------------------------------------------------------------
    def to_csv(self) -> str:
        buffer = io.StringIO()
        for key, value in self.meta.items():
            buffer.write(f"# {key}: {json.dumps(value)}\n")
        buffer.write(",".join(COLUMNS) + "\n")
        for i in range(self.q.size):
            buffer.write(",".join(repr(float(self.columns[c][i])) for c in COLUMNS) + "\n")
        return buffer.getvalue()

    def to_json(self) -> dict[str, Any]:
        """Metadata, column names and rows; an infinite entry is the string "inf" (JSON has no infinity)."""
        return {"meta": self.meta, "columns": list(COLUMNS), "rows": [[_json_number(self.columns[c][i])
                                                                       for c in COLUMNS] for i in range(self.q.size)]}

    def to_markdown(self) -> str:
        shown = ("variance", *MOMENT_COLUMNS, *GAIN_COLUMNS)
        lines = [f"### {self.activation.name}", "", f"f(x) = `{self.activation.formula}`; method: "
                 + ", ".join(f"{k}: {v}" for k, v in self.methods.items()), "",
                 "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
        for i in range(self.q.size):
            lines.append("| " + " | ".join(f"{self.columns[c][i]:.10g}" for c in shown) + " |")
        return "\n".join(lines) + "\n"


def _json_number(value: Any) -> float | str:
    value = float(value)
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf" if value < 0 else "nan")


def table(activation: str | Activation, variance: Any = DEFAULT_SPEC, *, method: str = "auto",
          **params: Any) -> Table:
    """Moments and gains of ``activation`` at every q of ``variance`` (a spec string or an array)."""
    from .gains import gains
    from .moments import moments

    q = parse_variance_spec(variance)
    m = moments(activation, q, method, **params)
    g = gains(m)
    columns = {"variance": q}
    names = dict(zip(MOMENT_COLUMNS, ("mean", "second_moment", "derivative_second_moment", "variance")))
    for column, name in names.items():
        est = getattr(m, name)
        columns[column] = np.broadcast_to(np.asarray(est.value, dtype=float), q.shape).copy()
        columns[f"{column}_error"] = np.broadcast_to(np.asarray(est.error, dtype=float), q.shape).copy()
    for column, name in zip(GAIN_COLUMNS, ("fan_in", "fan_out", "variance")):
        columns[column] = np.broadcast_to(np.asarray(getattr(g, name).value, dtype=float), q.shape).copy()
    methods = {column: getattr(m, name).method for column, name in names.items()}
    return Table(m.activation, columns, methods)


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never a half-written file."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise GainDeriveError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise GainDeriveError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
