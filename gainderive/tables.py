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

Bounded: a grid holds at most ``limit("grid")`` q (:mod:`gainderive.limits`), checked before anything is
allocated; the moments are computed ``ROWS_PER_CHUNK`` q at a time, so the table's own 15 columns are the
only memory that grows with the grid, and the text formats are written chunk by chunk
(:meth:`Table.write`, :func:`write_tables`), never built as one string.
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from .errors import GainDeriveError, VarianceError
from .limits import check_size
from .output import write_atomic

if TYPE_CHECKING:
    from .activation import Activation

__all__ = ["COLUMNS", "FORMATS", "Lookup", "Table", "parse_variance_spec", "table", "write_atomic", "write_tables"]

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


#: q per pass of :func:`table`: the moments' working memory is that of one chunk, whatever the grid.
ROWS_PER_CHUNK = 4096
_SPEC_FORMS = "accepted forms are start:stop:count[:log|lin] or a comma list a,b,c"


def parse_variance_spec(spec: str | Any, *, limit: str = "grid") -> np.ndarray:
    """q values from ``start:stop:count[:log|lin]`` (log spacing by default) or a comma list, e.g. ``0.5,1,2``.

    An array-like is accepted as is.  Every q must be a finite number > 0 in double precision (a start of
    ``1e-400`` is refused as underflowing, not rounded to 0); count is a whole number >= 1 (``1e6`` is
    accepted) and, like the length of a list, at most the size limit ``limit`` ("grid" for a table,
    "plot_points", "derive_points"), checked before any q is allocated: a larger grid raises
    :class:`~gainderive.limits.LimitError` naming the limit and how to raise it.
    """
    from .moments import check_variance

    if not isinstance(spec, str):
        if hasattr(spec, "__len__") and not hasattr(spec, "shape"):  # range(10**10): refused before it is copied
            check_size(limit, len(spec))
        try:
            q = np.ravel(check_variance(spec))
        except VarianceError as exc:
            raise VarianceError(f"variance {_for_tables(exc)}") from None
        check_size(limit, q.size)
        return q
    if ":" in spec:
        parts = spec.split(":")
        if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3].strip() not in ("log", "lin")):
            raise GainDeriveError(f"variance spec {spec!r}: {_SPEC_FORMS}")
        count = _count(spec, parts[2])
        check_size(limit, count)
        start, stop = (_spec_q(spec, part, name) for part, name in ((parts[0], "start"), (parts[1], "stop")))
        spacing = parts[3].strip() if len(parts) == 4 else "log"
        q = np.geomspace(start, stop, count) if spacing == "log" else np.linspace(start, stop, count)
    else:
        items = spec.split(",")
        check_size(limit, len(items))
        q = np.array([_spec_q(spec, item, "") for item in items])
    try:
        return np.ravel(check_variance(q))  # linear spacing between normal ends can pass through subnormals
    except VarianceError as exc:
        raise VarianceError(f"variance spec {spec!r}: {_for_tables(exc)}") from None


def _count(spec: str, text: str) -> int:
    """The count of a start:stop:count spec: a whole number >= 1, written as an integer or as 1e6."""
    text = text.strip()
    try:
        count = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value.is_integer()):
            raise GainDeriveError(f"variance spec {spec!r}: count must be a whole number >= 1, got {text!r}") \
                from None
        count = int(value)
    if count < 1:
        raise GainDeriveError(f"variance spec {spec!r}: count must be a whole number >= 1, got {text!r}")
    return count


def _spec_q(spec: str, text: str, name: str) -> float:
    """One q of a spec: a finite number > 0 in double precision, or a one-line error naming the spec."""
    from .moments import check_variance

    try:
        return float(check_variance(text))
    except VarianceError as exc:
        raise VarianceError(f"variance spec {spec!r}: {_for_tables(exc, name)}") from None


def _for_tables(exc: VarianceError, name: str = "") -> str:
    """check_variance's message for a table's q: tables are double precision, so no high-precision hint."""
    from .moments import double_precision_message

    text = double_precision_message(exc).removeprefix("variance ")
    return f"{name} {text}" if name else text


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
        from ._version import __version__

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
        exact = _columns(_prepared(self.activation, "auto", {}), np.exp(inside), "auto", None)[0][column]
        scale = np.maximum(np.abs(exact), np.max(np.abs(values)) * 1e-12)
        error = float(np.max(np.abs(interpolant(inside) - exact) / np.where(scale > 0, scale, 1.0)))
        return Lookup(column, float(self.q.min()), float(self.q.max()), error, interpolant)

    # -- text formats ---------------------------------------------------------------------------------------
    # Each format is produced as an iterator of text chunks (one per ROWS_PER_CHUNK rows), so a table of a
    # million rows is written without ever holding its text: to_csv() and friends join the same chunks.
    def iter_csv(self) -> Iterator[str]:
        """The CSV text in chunks: ``# key: json`` metadata lines, the header, one row per q (floats as repr)."""
        yield "".join(f"# {key}: {json.dumps(value)}\n" for key, value in self.meta.items())
        yield ",".join(COLUMNS) + "\n"
        for rows in self._row_chunks():
            yield "".join(",".join(map(repr, row)) + "\n" for row in rows)

    def iter_json(self, indent: int | None = None) -> Iterator[str]:
        """The text of ``json.dumps(self.to_json(), indent=indent)``, in chunks."""
        head = json.dumps({"meta": self.meta, "columns": list(COLUMNS), "rows": []}, indent=indent)
        head = head[: head.rindex("[]")]  # "rows" is the last key: everything up to its (empty) list
        if not self.q.size:
            yield head + "[]" + ("\n}" if indent is not None else "}")
            return
        if indent is None:
            opening, separator, closing = "[", ", ", "]}"
        else:
            step = " " * indent
            opening, separator, closing = "[\n" + 2 * step, ",\n" + 2 * step, "\n" + step + "]\n}"
        yield head + opening
        first = True
        for rows in self._row_chunks():
            dumped = [json.dumps([_json_number(v) for v in row], indent=indent) for row in rows]
            if indent is not None:
                dumped = [d.replace("\n", "\n" + 2 * step) for d in dumped]
            yield ("" if first else separator) + separator.join(dumped)
            first = False
        yield closing

    def iter_markdown(self) -> Iterator[str]:
        """The Markdown table in chunks (moments and gains; the error columns are in CSV and JSON)."""
        shown = ("variance", *MOMENT_COLUMNS, *GAIN_COLUMNS)
        yield "\n".join([f"### {self.activation.name}", "", f"f(x) = `{self.activation.formula}`; method: "
                         + ", ".join(f"{k}: {v}" for k, v in self.methods.items()), "",
                         "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]) + "\n"
        index = [COLUMNS.index(c) for c in shown]
        for rows in self._row_chunks():
            yield "".join("| " + " | ".join(f"{row[i]:.10g}" for i in index) + " |\n" for row in rows)

    def write(self, stream: IO[str] | IO[bytes], format: str = "csv", *, indent: int | None = None) -> None:
        """Write the table as ``format`` (csv, json or markdown) to a text or binary stream, chunk by chunk."""
        _write_chunks(stream, self._chunks(format, indent))

    def _chunks(self, format: str, indent: int | None) -> Iterator[str]:
        if format == "csv":
            return self.iter_csv()
        if format == "json":
            return self.iter_json(indent)
        if format == "markdown":
            return self.iter_markdown()
        raise GainDeriveError(f"unknown format {format!r}; accepted: {', '.join(FORMATS)}")

    def _row_chunks(self) -> Iterator[list[list[float]]]:
        """Rows as lists of Python floats (whose repr is the shortest exact one), ROWS_PER_CHUNK at a time."""
        for lo in range(0, self.q.size, ROWS_PER_CHUNK):
            yield np.column_stack([self.columns[c][lo:lo + ROWS_PER_CHUNK] for c in COLUMNS]).tolist()

    def to_csv(self) -> str:
        return "".join(self.iter_csv())

    def to_json(self) -> dict[str, Any]:
        """Metadata, column names and rows; an infinite entry is the string "inf" (JSON has no infinity)."""
        return {"meta": self.meta, "columns": list(COLUMNS), "rows": [[_json_number(self.columns[c][i])
                                                                       for c in COLUMNS] for i in range(self.q.size)]}

    def to_markdown(self) -> str:
        return "".join(self.iter_markdown())

    def to_pandas(self) -> Any:
        """A pandas DataFrame: one float64 column per :data:`COLUMNS` entry (copies of the table's arrays), and
        :attr:`meta` (activation, formula, params, method per column, conventions, ...) in ``DataFrame.attrs``.

        pandas is optional (``pip install pandas``; from a clone ``pip install '.[pandas]'``) and imported here
        only: without it a one-line :class:`GainDeriveError` says how to install it.
        """
        try:
            import pandas as pd
        except ImportError:
            raise GainDeriveError("to_pandas needs pandas: pip install pandas") from None
        frame = pd.DataFrame({c: np.array(self.columns[c], dtype=float) for c in COLUMNS}, columns=list(COLUMNS))
        # a deep copy: meta holds the table's own methods dict and the module's CONVENTIONS, which attrs must not share
        frame.attrs.update(copy.deepcopy(self.meta))
        return frame

    # -- notebook display: IPython calls these two (nothing here imports it) ----------------------------------
    def _display_rows(self, number: Callable[[str], str]) -> tuple[list[list[str] | None], int]:
        """The shown rows (first and last DISPLAY_ROWS; None for the ellipsis) of q, moments and gains, and how
        many rows are hidden; ``number`` formats a value's text (escapes it for HTML, or writes it as LaTeX)."""
        from ._display import _number, _shown_rows

        shown = ("variance", *MOMENT_COLUMNS, *GAIN_COLUMNS)
        rows = [None if i is None else [number(_number(self.columns[c][i])) for c in shown]
                for i in _shown_rows(self.q.size)]
        return rows, self.q.size - sum(row is not None for row in rows)

    def _repr_html_(self) -> str:
        """HTML for Jupyter: the activation, each moment's method and largest error bar, and the q, moment and gain
        columns for the first and last :data:`~gainderive._display.DISPLAY_ROWS` q with an ellipsis row between
        (so the text is bounded whatever the grid).  Every string is HTML-escaped: names and formulas are user
        input.  :meth:`to_pandas` or :meth:`records` give every row.
        """
        from ._display import _activation_title, _error, _html, _html_table, _rows_note

        meta = self.meta
        header = ["q", *(f'<span title="{_html(CONVENTIONS.get(c, c))}">{_html(c)}</span>'
                         for c in (*MOMENT_COLUMNS, *GAIN_COLUMNS))]
        blank = [""] * len(GAIN_COLUMNS)
        head = [["method", *(_html(self.methods[c]) for c in MOMENT_COLUMNS), *blank],
                ["max error", *(_html(_error(meta["max_reported_error"][c])) for c in MOMENT_COLUMNS), *blank]]
        rows, hidden = self._display_rows(_html)
        note = _rows_note(self.q.size)
        title = (f"{_activation_title(self.activation, html=True)}; z ~ N(0, q); {self.q.size:,} rows"
                 + (f" ({note})" if note else ""))
        reference = f"<p><small>{_html(self.activation.reference)}</small></p>\n" if self.activation.reference else ""
        return (f'<div class="gainderive-table">\n<p>{title}</p>\n{_html_table(header, rows, hidden, head=head)}\n'
                f"{reference}</div>")

    def _repr_latex_(self) -> str:
        """LaTeX for Jupyter: the activation and an array of q, the moments and the gains for the first and last
        :data:`~gainderive._display.DISPLAY_ROWS` q (names and formulas escaped)."""
        from ._display import (
            _GAIN_LABELS,
            _LABELS,
            _activation_title,
            _latex_array,
            _latex_display,
            _latex_number,
            _rows_note,
        )

        names = ("mean", "second_moment", "derivative_second_moment", "variance")
        header = ["q", *(_LABELS[name][1] for name in names),
                  *(_GAIN_LABELS[name][1].split(" = ")[0] for name in ("fan_in", "fan_out", "variance"))]
        rows, _ = self._display_rows(_latex_number)
        note = _rows_note(self.q.size)
        title = _activation_title(self.activation, html=False) + r",\quad z \sim \mathcal{N}(0, q)"
        return _latex_display([title, _latex_array(header, rows), *([rf"\text{{{note}}}"] if note else [])])


#: Text formats of :meth:`Table.write` and :func:`write_tables`.
FORMATS = ("csv", "json", "markdown")


def write_tables(stream: IO[str] | IO[bytes], tables: Iterable[Table], format: str = "csv", *,
                 as_list: bool | None = None, indent: int | None = 1) -> None:
    """Write several tables to one stream as the ``table`` command prints them, one table at a time.

    ``tables`` may be a generator: each table is written and dropped before the next is computed, so memory
    holds one table.  csv and markdown: the tables' texts separated by a blank line.  json: one object, or
    (``as_list``, by default when ``tables`` has more than one element) a JSON list of them, as
    ``json.dumps(..., indent=indent)`` followed by a newline; ``as_list=False`` with several tables is an
    error (one JSON object cannot hold them).
    """
    if format not in FORMATS:
        raise GainDeriveError(f"unknown format {format!r}; accepted: {', '.join(FORMATS)}")
    if as_list is None:  # decided by the count: two tables are enough to know, the rest stay lazy
        items = iter(tables)
        first = list(itertools.islice(items, 2))
        as_list, tables = len(first) != 1, itertools.chain(first, items)
        del first
    _write_chunks(stream, _tables_chunks(tables, format, as_list, indent))


def _tables_chunks(tables: Iterable[Table], format: str, as_list: bool, indent: int | None) -> Iterator[str]:
    # each table is dropped (del) once written, before the next is computed: one table in memory at a time
    if format != "json":
        first = True  # not enumerate(), whose reused result tuple would keep the last table alive
        for t in tables:
            if not first:
                yield "\n"
            first = False
            yield from t._chunks(format, None)
            del t
        return
    if not as_list:
        written = False
        for t in tables:
            if written:
                raise GainDeriveError("as_list=False writes one JSON object, but several tables were given")
            yield from t.iter_json(indent)
            written = True
            del t
        yield "\n"
        return
    step = "" if indent is None else " " * indent
    inner = "\n" + step
    opening, separator, closing = ("[", ", ", "]") if indent is None else ("[" + inner, "," + inner, "\n]")
    empty = True
    for t in tables:
        yield opening if empty else separator
        empty = False
        yield from (chunk.replace("\n", inner) for chunk in t.iter_json(indent))
        del t
    yield ("[]" if empty else closing) + "\n"


def _write_chunks(stream: IO[str] | IO[bytes], chunks: Iterable[str]) -> None:
    binary = isinstance(stream, (io.RawIOBase, io.BufferedIOBase)) or "b" in getattr(stream, "mode", "")
    for chunk in chunks:
        stream.write(chunk.encode("utf-8") if binary else chunk)


def _json_number(value: Any) -> float | str:
    value = float(value)
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf" if value < 0 else "nan")


def table(activation: str | Activation, variance: Any = DEFAULT_SPEC, *, method: str = "auto",
          progress: Callable[[int, int], None] | None = None, **params: Any) -> Table:
    """Moments and gains of ``activation`` at every q of ``variance`` (a spec string or an array).

    ``variance`` holds at most ``limit("grid")`` q, checked before any work (:func:`parse_variance_spec`).
    The q are computed ``ROWS_PER_CHUNK`` at a time, each with its own error budget (a q's row does not
    depend on the other q of the grid); ``progress(done, total)``, if given, is called after each chunk
    with the number of q done.  ``method``: auto, closed_form, quadrature or monte_carlo (a table is in
    double precision; high precision takes one q at a time, see :func:`gainderive.moments`).
    """
    if method == "high_precision":
        raise GainDeriveError("a table is computed in double precision: method takes auto, closed_form, quadrature "
                              "or monte_carlo (moments(..., method=\"high_precision\") takes one q at a time)")
    q = parse_variance_spec(variance)
    prepared = _prepared(activation, method, params)
    columns, methods = _columns(prepared, q, method, progress)
    return Table(prepared[0], columns, methods)


def _prepared(activation: str | Activation, method: str, params: dict) -> tuple:
    from .moments import _prepare

    return _prepare(activation, method, params)


def _columns(prepared: tuple, q: np.ndarray, method: str,
             progress: Callable[[int, int], None] | None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The table's columns at q, computed chunk by chunk into arrays allocated once, and each column's method.

    Where chunks used different methods (a closed form accurate enough in some chunks only) the column's
    method names each, in order of q.
    """
    from .gains import gains
    from .moments import _moments

    columns = {"variance": q, **{c: np.empty(q.size) for c in COLUMNS[1:]}}
    names = dict(zip(MOMENT_COLUMNS, ("mean", "second_moment", "derivative_second_moment", "variance")))
    used: dict[str, list[str]] = {column: [] for column in names}
    for lo in range(0, q.size, ROWS_PER_CHUNK):
        hi = min(lo + ROWS_PER_CHUNK, q.size)
        part = q[lo:hi]
        m = _moments(prepared, part, method, {})
        g = gains(m)
        for column, name in names.items():
            est = getattr(m, name)
            columns[column][lo:hi] = np.broadcast_to(np.asarray(est.value, dtype=float), part.shape)
            columns[f"{column}_error"][lo:hi] = np.broadcast_to(np.asarray(est.error, dtype=float), part.shape)
            if est.method not in used[column]:
                used[column].append(est.method)
        for column, name in zip(GAIN_COLUMNS, ("fan_in", "fan_out", "variance")):
            columns[column][lo:hi] = np.broadcast_to(np.asarray(getattr(g, name).value, dtype=float), part.shape)
        if progress is not None:
            progress(hi, q.size)
    return columns, {column: "; ".join(found) for column, found in used.items()}
