"""Notebook display: the helpers of the ``_repr_html_``/``_repr_latex_`` methods of Moments, Gains and Table.

IPython calls those methods; nothing here imports IPython.  Every string that reaches HTML goes through
html.escape (activation names and formulas are user input); every user string that reaches LaTeX goes through
:func:`_latex_text`.
"""

from __future__ import annotations

import math
from typing import Any

#: Rows shown at each end of a grid of q in a notebook display: a grid of a million q renders as 2 * DISPLAY_ROWS
#: rows and one ellipsis row, so the text is bounded whatever the grid.
DISPLAY_ROWS = 10


def _shown_rows(n: int) -> list[int | None]:
    """Row indices to display out of ``n``: all of them, or the first and last DISPLAY_ROWS with None between."""
    if n <= 2 * DISPLAY_ROWS:
        return list(range(n))
    return [*range(DISPLAY_ROWS), None, *range(n - DISPLAY_ROWS, n)]


def _at(values: Any, shape: tuple, index: int) -> Any:
    """Entry ``index`` (flat, C order) of ``values`` broadcast to ``shape``, without materialising the broadcast."""
    import numpy as np

    if not shape:
        return values[()] if isinstance(values, np.ndarray) else values
    return np.broadcast_to(values, shape)[np.unravel_index(index, shape)]


def _number(value: Any, digits: int | None = None) -> str:
    """A value as text: the shortest repr that round-trips for a float; for an mpmath number ``digits`` digits,
    by default as many as its mantissa holds (a high-precision gain knows its precision, not its digits)."""
    if hasattr(value, "_mpf_"):
        import mpmath as mp

        if digits is None:
            digits = max(15, math.ceil(int(value._mpf_[1]).bit_length() * math.log10(2)) + 1)
        return mp.nstr(value, digits)
    return repr(float(value))


def _error(value: Any) -> str:
    """An error bar as text: two significant digits are all a bound says."""
    return f"{float(value):.2g}"


def _latex_number(text: str) -> str:
    """:func:`_number` or :func:`_error` text as LaTeX: 1e-05 -> 1 \\times 10^{-5}, inf -> \\infty."""
    special = {"inf": r"\infty", "-inf": r"-\infty", "+inf": r"\infty", "nan": r"\mathrm{nan}"}
    if text.lower() in special:
        return special[text.lower()]
    mantissa, e, exponent = text.lower().partition("e")
    if not e:
        return text
    return rf"{mantissa} \times 10^{{{int(exponent)}}}"


#: Characters with a meaning in LaTeX (or, for < > &, in the HTML a notebook may embed LaTeX in): written as macros
#: outside \text{...}, where they are symbols, never markup.
_LATEX_SPECIAL = {"\\": r"\backslash ", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "#": r"\#", "%": r"\%",
                  "_": r"\_", "^": r"\hat{}", "~": r"\sim ", "<": r"\lt ", ">": r"\gt "}


def _latex_text(text: str, font: str = "text") -> str:
    r"""User text (a name, a formula, a method) as LaTeX math-mode material that shows it literally.

    Plain runs go into ``\text{...}`` (or ``\texttt``); each character with a meaning in LaTeX, or the HTML a
    notebook may put LaTeX in, becomes a symbol macro outside it, so no input can close a group, leave math mode
    or open a tag.
    """
    out, run = [], []
    for char in " ".join(str(text).split()):
        if char in _LATEX_SPECIAL:
            if run:
                out.append(rf"\{font}{{{''.join(run)}}}")
                run = []
            out.append(_LATEX_SPECIAL[char])
        else:
            run.append(char)
    if run:
        out.append(rf"\{font}{{{''.join(run)}}}")
    return "".join(out) or rf"\{font}{{}}"


def _html_table(header: list[str], rows: list[list[str] | None], hidden: int, *, head: list[list[str]] = ()) -> str:
    """An HTML table from cells already escaped; a None row is the ellipsis standing for ``hidden`` rows.

    ``head`` holds extra header rows (methods, closed forms) shown under the column names.
    """
    width = len(header)
    lines = ["<table>", "<thead>", "<tr>" + "".join(f"<th>{cell}</th>" for cell in header) + "</tr>"]
    lines += ["<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in head]
    lines += ["</thead>", "<tbody>"]
    for row in rows:
        if row is None:
            rows_word = "row" if hidden == 1 else "rows"
            lines.append(f'<tr><td colspan="{width}" style="text-align:center">&#8942; {hidden:,} {rows_word} not '
                         "shown</td></tr>")
        else:
            lines.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>")
    lines += ["</tbody>", "</table>"]
    return "\n".join(lines)


def _latex_array(header: list[str], rows: list[list[str] | None]) -> str:
    """A LaTeX array (cells already LaTeX); a None row is a row of \\vdots (rows not shown)."""
    width = len(header)
    lines = [r"\begin{array}{" + "r" * width + "}", " & ".join(header) + r" \\ \hline"]
    for row in rows:
        if row is None:
            lines.append(" & ".join([r"\vdots"] * width) + r" \\")
        else:
            lines.append(" & ".join(row) + r" \\")
    lines.append(r"\end{array}")
    return "\n".join(lines)


def _latex_display(lines: list[str]) -> str:
    """Display math for a notebook: the lines one under another, centred (amsmath's gathered, which MathJax has)."""
    return "$$\\begin{gathered}\n" + " \\\\\n".join(lines) + "\n\\end{gathered}$$"


def _html(text: Any) -> str:
    """Text escaped for HTML, quotes included (it may land in an attribute)."""
    import html

    return html.escape(str(text), quote=True)


def _rows_note(total: int) -> str:
    """How many rows a capped display leaves out, as plain text ("" when it shows them all)."""
    hidden = total - 2 * DISPLAY_ROWS
    return f"{hidden:,} of {total:,} rows not shown" if hidden > 0 else ""


#: How each moment and gain is shown: (HTML, LaTeX).
_LABELS = {
    "mean": ("E[f(z)]", "E[f(z)]"),
    "second_moment": ("E[f(z)&sup2;]", "E[f(z)^2]"),
    "derivative_second_moment": ("E[f&prime;(z)&sup2;]", "E[f'(z)^2]"),
    "variance": ("Var f(z)", r"\operatorname{Var} f(z)"),
}
_GAIN_LABELS = {
    "fan_in": ("gain_fan_in = &radic;(q / E[f(z)&sup2;])", r"g_{\mathrm{fan\_in}} = \sqrt{q / E[f(z)^2]}"),
    "fan_out": ("gain_fan_out = 1 / &radic;E[f&prime;(z)&sup2;]", r"g_{\mathrm{fan\_out}} = 1 / \sqrt{E[f'(z)^2]}"),
    "variance": ("gain_variance = &radic;(q / Var f(z))",
                 r"g_{\mathrm{variance}} = \sqrt{q / \operatorname{Var} f(z)}"),
}
#: What an error bar is (gainderive.estimate.Estimate), said under every display that shows one.
_ERROR_NOTE = "error: an absolute bound (one standard error for monte_carlo)"


def _finite(value: Any) -> bool:
    """Whether a value has an error bar worth showing: an infinite moment (f' jumps) or an undefined gain has not."""
    return math.isfinite(float(value))


def _html_cell(value: Any, error: Any, digits: int | None = None) -> str:
    """'value ± error' for an HTML cell (the value alone where it is not finite)."""
    shown = _html(_number(value, digits))
    return f"{shown} &plusmn; {_html(_error(error))}" if _finite(value) else shown


def _latex_cell(value: Any, error: Any, digits: int | None = None) -> str:
    r"""'value \pm error' in LaTeX (the value alone where it is not finite)."""
    shown = _latex_number(_number(value, digits))
    return rf"{shown} \pm {_latex_number(_error(error))}" if _finite(value) else shown


def _activation_title(activation: Any, html: bool) -> str:
    """'name: f(x) = formula (params)', escaped for HTML or LaTeX; the name once when it is the formula itself."""
    params = ", ".join(f"{k}={_number(v)}" for k, v in activation.parameter_values.items())
    if html:
        head = "" if activation.name == activation.formula else f"<b>{_html(activation.name)}</b>: "
        return f"{head}f(x) = <code>{_html(activation.formula)}</code>" + (f" ({_html(params)})" if params else "")
    head = "" if activation.name == activation.formula else _latex_text(activation.name) + r":\quad "
    text = f"{head}f(x) = {_latex_text(activation.formula, 'texttt')}"
    return text + (rf"\quad ({_latex_text(params)})" if params else "")
