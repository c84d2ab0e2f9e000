"""Notebook conventions (issue 14, item 5): ``_repr_html_``/``_repr_latex_`` of Moments, Gains and Table, and
``Table.to_pandas()``.

IPython is not needed: Jupyter calls these methods and shows what they return, so the tests call them directly.
The HTML is read back with the standard library's parser (html.parser), as a browser would, so the tests check
structure -- which cells, in which rows, what text a reader sees -- rather than string fragments, and that no
user string (activation names and formulas are user input) becomes markup.  Numbers shown are compared with
independent values: hand-derived moments and gains (ReLU, leaky ReLU, GELU's mean) or mpmath quadrature.
"""

import math
import re
import sys
from html.parser import HTMLParser

import mpmath as mp
import numpy as np
import pytest

from gainderive import gains, moments, table
from gainderive._display import DISPLAY_ROWS
from gainderive.activation import Activation
from gainderive.errors import GainDeriveError
from gainderive.tables import COLUMNS

# A name that would be markup if it reached HTML unescaped, and a formula with a comparison (user input both).
HOSTILE = Activation(name="<script>alert(1)</script>", formula="where(x < 1, x, 0)")
ULP = 2.0 ** -52  # one unit in the last place relative to 1: a value computed exactly in float64 is within it


class Page(HTMLParser):
    """What a browser makes of an HTML fragment: its tags, table rows of cell texts, and the text outside cells."""

    def __init__(self, markup: str):
        super().__init__(convert_charrefs=True)
        self.tags, self.rows, self.text, self.titles, self._cell = [], [], [], [], None
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.titles += [value for name, value in attrs if name == "title"]
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        (self._cell if self._cell is not None else self.text).append(data)


def body(page: Page) -> list[list[str]]:
    """The data rows of a displayed table: after the column names and the method / closed-form / error rows."""
    return [row for row in page.rows[1:] if row[0] not in ("method", "closed form", "max error")]


def value_of(cell: str) -> float:
    """The value of a 'value ± error' cell."""
    return float(cell.split("\u00b1")[0])


def balanced(latex: str) -> bool:
    """Braces balance and '$' appears only as the $$ ... $$ display delimiters (escaped \\{ \\} \\$ excepted)."""
    bare = latex.replace(r"\{", "").replace(r"\}", "").replace(r"\$", "")
    depth = 0
    for char in bare:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0 and bare.startswith("$$") and bare.endswith("$$") and bare.count("$") == 4


def gelu_second_moment(q: float) -> mp.mpf:
    """E[(z Phi(z))^2], z ~ N(0, q), by mpmath quadrature at 30 digits (split at 0, where Phi's tail turns)."""
    with mp.workdps(30):
        s = mp.sqrt(q)
        return mp.quad(lambda x: (s * x * mp.ncdf(s * x)) ** 2 * mp.npdf(x), [-mp.inf, 0, mp.inf])


# -- Moments ---------------------------------------------------------------------------------------------------
def test_moments_html_shows_each_moment_with_its_error_method_and_closed_form():
    m = moments("gelu", 1.0)
    page = Page(m._repr_html_())
    assert page.rows[0] == ["moment", "value", "\u00b1 error", "method", "closed form"]
    data = page.rows[1:]
    assert [row[0] for row in data] == ["E[f(z)]", "E[f(z)\u00b2]", "E[f\u2032(z)\u00b2]", "Var f(z)"]
    for row, (name, est) in zip(data, m):
        assert float(row[1]) == float(est.value)  # the shortest repr round-trips: the value itself is shown
        assert math.isclose(float(row[2]), float(est.error), rel_tol=0.05)  # two significant digits
        assert row[3] == est.method == "closed_form"
        assert row[4] == rf"\({m.closed_forms[name].latex}\)"  # what MathJax typesets, unescaped by the browser
    # the numbers are right, not only present: E[z Phi(z)] = E[Phi'(z)] q = q / sqrt(2 pi (1 + q)) by Stein's
    # lemma, 1/(2 sqrt(pi)) at q = 1; E[f^2] against 30-digit quadrature.  Within the error bar the display shows
    # (a bound, 6e-16 and 4e-16 here) plus half an ulp for rounding the reference to a double.
    mean, second = float(data[0][1]), float(data[1][1])
    assert abs(mean - 1 / (2 * math.sqrt(math.pi))) <= float(m.mean.error) + mean * ULP / 2
    assert abs(second - float(gelu_second_moment(1.0))) <= float(m.second_moment.error) + second * ULP / 2
    assert "z ~ N(0, q), q = 1.0" in "".join(page.text)


def test_moments_latex_of_gelu_second_moment_is_the_forms_latex():
    m = moments("gelu", 1.0)
    form = m.closed_forms["second_moment"]
    latex = m._repr_latex_()
    assert balanced(latex)
    # the row: label, the verified form's own LaTeX, then the value shown to the digit with its bar
    assert rf"E[f(z)^2] & = {form.latex} = {float(m.second_moment.value)!r} \pm " in latex
    # where quadrature answered, no form is claimed: the method says so
    quadrature = moments("gelu", 1.0, "quadrature")._repr_latex_()
    assert form.latex not in quadrature
    assert r"E[f(z)^2] & = " + repr(float(moments("gelu", 1.0, "quadrature").second_moment.value)) in quadrature


def test_moments_html_of_an_infinite_derivative_moment_shows_inf_and_why():
    m = moments(HOSTILE, 2.0)  # f jumps at z = 1: E[f'^2] is infinite (a Dirac mass)
    row = Page(m._repr_html_()).rows[3]
    assert row[1] == "inf" and row[2] == ""  # no error bar on an infinite value
    assert row[3] == m.derivative_second_moment.method and row[3].startswith("infinite: ") and "f'" in row[3]
    assert r"E[f'(z)^2] & = \infty && " in m._repr_latex_()


def test_moments_high_precision_shows_the_working_digits():
    m = moments("relu", "0.5", "high_precision", digits=25)
    page = Page(m._repr_html_())
    # E[relu(z)^2] = q / 2 = 0.25 exactly; E[relu(z)] = sqrt(q / (2 pi)) = 1 / (2 sqrt(pi)) at q = 1/2 (by hand)
    with mp.workdps(40):
        mean = mp.mpf(1) / (2 * mp.sqrt(mp.pi))
    assert page.rows[1][1] == mp.nstr(mean, 25) and mp.mpf(page.rows[2][1]) == mp.mpf("0.25")
    assert "25 digits" in "".join(page.text)


# -- escaping ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variance", [1.0, [0.5, 1.0, 2.0]], ids=["scalar", "grid"])
def test_user_strings_are_escaped_in_every_html(variance):
    m = moments(HOSTILE, variance)
    for markup in (m._repr_html_(), gains(m)._repr_html_(), table(HOSTILE, variance)._repr_html_()):
        page = Page(markup)
        assert "script" not in page.tags and "<script>" not in markup
        text = "".join(page.text)
        assert m.activation.formula not in markup  # its "<" is escaped ...
        if markup.startswith('<div class="gainderive-gains"'):  # gains carry no name; their methods quote f'
            assert "f&#x27;" in markup
            continue
        assert HOSTILE.name in text and HOSTILE.formula in text  # ... and a reader sees both exactly


def test_a_formula_used_as_the_name_is_escaped():
    m = moments("x*where(x<1, 1, 0)", 1.0)
    markup = m._repr_html_()
    assert "x<1" not in markup and "x&lt;1" in markup
    assert "x*where(x<1, 1, 0)" in "".join(Page(markup).text)


def test_user_strings_cannot_break_the_latex():
    odd = Activation(name="a_b{c}$%&#^~\\<script>", formula="where(x < 1, x, 0)")
    m = moments(odd, 1.0)
    for latex in (m._repr_latex_(), table(odd, "0.5,1")._repr_latex_()):
        assert balanced(latex), latex
        assert "<script>" not in latex and r"\lt \text{script}\gt" in latex
        assert r"\texttt{where(x }\lt \texttt{ 1, x, 0)}" in latex


# -- grids: the display is bounded ------------------------------------------------------------------------------
def test_a_grid_of_1e5_q_shows_the_first_and_last_rows_only():
    q = np.geomspace(1e-3, 1e3, 100_000)
    m = moments("relu", q)
    markup = m._repr_html_()
    # 20 rows of 5 cells of ~40 characters and the closed forms: ~6 kB; all 1e5 rows would be ~10 MB
    assert len(markup) < 20_000
    page = Page(markup)
    assert page.rows[1][0] == "method" and page.rows[2][0] == "closed form"
    data = body(page)
    assert len(data) == 2 * DISPLAY_ROWS + 1
    assert data[DISPLAY_ROWS] == [f"\u22ee {100_000 - 2 * DISPLAY_ROWS:,} rows not shown"]
    shown = [*range(DISPLAY_ROWS), *range(q.size - DISPLAY_ROWS, q.size)]
    rows = data[:DISPLAY_ROWS] + data[DISPLAY_ROWS + 1:]
    assert [float(row[0]) for row in rows] == [float(q[i]) for i in shown]
    for row, i in zip(rows, shown):  # relu: E f^2 = q / 2 and E f'^2 = 1/2 (by hand); both exact in float64
        assert value_of(row[2]) == q[i] / 2 and value_of(row[3]) == 0.5
    latex = m._repr_latex_()
    assert len(latex) < 20_000 and balanced(latex) and latex.count(r"\vdots") == 5
    assert r"\text{99,980 of 100,000 rows not shown}" in latex
    g = gains(m)
    for text in (g._repr_html_(), g._repr_latex_()):
        assert len(text) < 20_000
    assert len(body(Page(g._repr_html_()))) == 2 * DISPLAY_ROWS + 1


def test_a_table_of_1e5_q_shows_the_first_and_last_rows_only():
    t = table("relu", "1e-3:1e3:100000")
    markup, latex = t._repr_html_(), t._repr_latex_()
    assert len(markup) < 20_000 and len(latex) < 20_000 and balanced(latex)
    data = body(Page(markup))
    assert len(data) == 2 * DISPLAY_ROWS + 1 and data[DISPLAY_ROWS] == ["\u22ee 99,980 rows not shown"]
    assert float(data[-1][0]) == t.q[-1] == 1e3
    assert float(data[-1][5]) == math.sqrt(2)  # gain_fan_in of relu is sqrt(2) at every q (by hand)


@pytest.mark.parametrize("size, hidden", [(2 * DISPLAY_ROWS, 0), (2 * DISPLAY_ROWS + 1, 1)])
def test_the_row_cap_starts_past_twice_display_rows(size, hidden):
    m = moments("relu", np.linspace(0.5, 2.0, size))
    data = body(Page(m._repr_html_()))
    if hidden:
        assert len(data) == 2 * DISPLAY_ROWS + 1 and data[DISPLAY_ROWS] == ["\u22ee 1 row not shown"]
    else:
        assert len(data) == size and all(len(row) == 5 for row in data)


def test_a_two_dimensional_grid_is_shown_in_c_order():
    q = np.geomspace(0.1, 10.0, 30).reshape(5, 6)
    data = body(Page(moments("relu", q)._repr_html_()))
    rows = data[:DISPLAY_ROWS] + data[DISPLAY_ROWS + 1:]
    shown = [*range(DISPLAY_ROWS), *range(30 - DISPLAY_ROWS, 30)]
    assert [float(row[0]) for row in rows] == [float(q.ravel()[i]) for i in shown]


# -- Gains -------------------------------------------------------------------------------------------------------
def test_gains_html_and_latex_show_the_gains():
    q = 2.0
    g = gains(moments("relu", q))
    page = Page(g._repr_html_())
    assert page.rows[0] == ["gain", "value", "\u00b1 error", "method"]
    values = {row[0].split(" = ")[0]: float(row[1]) for row in page.rows[1:]}
    # relu by hand: E f^2 = q/2, E f'^2 = 1/2, Var f = q/2 - q/(2 pi); so sqrt(2), sqrt(2), 1/sqrt(1/2 - 1/(2 pi)).
    # Each within 2 ulp: the gain is a sqrt of a quotient of closed forms, a few roundings.
    expected = {"gain_fan_in": math.sqrt(2), "gain_fan_out": math.sqrt(2),
                "gain_variance": 1 / math.sqrt(0.5 - 1 / (2 * math.pi))}
    assert values.keys() == expected.keys()
    for name, value in values.items():
        assert math.isclose(value, expected[name], rel_tol=2 * ULP), name
    latex = g._repr_latex_()
    assert balanced(latex)
    assert rf"g_{{\mathrm{{fan\_in}}}} &= \sqrt{{q / E[f(z)^2]}} = {values['gain_fan_in']!r} \pm " in latex


def test_gains_of_an_infinite_derivative_moment_show_zero_and_the_reason():
    g = gains(moments(HOSTILE, 2.0))
    row = Page(g._repr_html_()).rows[2]
    assert row[0].startswith("gain_fan_out") and float(row[1]) == 0.0
    assert row[3] == g.fan_out.method and "Dirac" in row[3]


# -- Table ---------------------------------------------------------------------------------------------------------
def test_table_html_has_the_columns_methods_and_values():
    a = 0.1
    t = table("leaky_relu", "0.5,1,2", negative_slope=a)
    page = Page(t._repr_html_())
    shown = ["variance", "mean", "second_moment", "derivative_second_moment", "variance_f", "gain_fan_in",
             "gain_fan_out", "gain_variance"]
    assert page.rows[0] == ["q", *shown[1:]]
    assert page.rows[1][:5] == ["method", *(t.methods[c] for c in shown[1:5])]
    data = body(page)
    assert len(data) == 3
    for i, row in enumerate(data):
        assert [float(cell) for cell in row] == [float(t.columns[c][i]) for c in shown]
        # leaky relu by hand: gain sqrt(2 / (1 + a^2)) for fan_in and fan_out at every q; 2 ulp for the roundings
        assert math.isclose(float(row[5]), math.sqrt(2 / (1 + a * a)), rel_tol=2 * ULP)
    assert "(negative_slope=0.1)" in "".join(page.text)
    assert "sqrt(q / E[f(z)^2]), std = gain / sqrt(fan_in): forward signal" in page.titles  # the conventions


def test_table_to_pandas_has_the_tables_columns_values_and_metadata():
    pandas = pytest.importorskip("pandas")
    a = 0.2
    t = table("leaky_relu", "0.5,1,2", negative_slope=a)
    frame = t.to_pandas()
    assert isinstance(frame, pandas.DataFrame)
    assert list(frame.columns) == list(COLUMNS)
    for c in COLUMNS:
        assert frame[c].dtype == np.float64 and np.array_equal(frame[c].to_numpy(), t.columns[c])
    # leaky relu by hand: sqrt(2 / (1 + a^2)); 2 ulp for the roundings of sqrt(q / E f^2)
    assert np.allclose(frame["gain_fan_in"], math.sqrt(2 / (1 + a * a)), rtol=2 * ULP, atol=0)
    assert frame.attrs["activation"] == "leaky_relu"
    assert frame.attrs["params"] == {"negative_slope": a}
    assert frame.attrs["method"] == t.methods and frame.attrs["formula"] == t.activation.formula
    assert frame.attrs == t.meta
    # the frame is the user's to edit: neither its values nor its attrs are the table's
    frame.loc[0, "mean"] = 99.0
    frame.attrs["method"]["mean"] = "edited"
    assert t.columns["mean"][0] != 99.0 and t.methods["mean"] != "edited"


def test_table_to_pandas_with_an_infinite_column():
    pytest.importorskip("pandas")
    t = table(HOSTILE, "0.5,1")
    frame = t.to_pandas()
    assert np.all(np.isinf(frame["derivative_second_moment"])) and np.all(frame["gain_fan_out"] == 0)
    assert frame.attrs["method"]["derivative_second_moment"].startswith("infinite: ")


def test_table_to_pandas_without_pandas_says_how_to_install_it(monkeypatch):
    t = table("relu", "1,2")
    monkeypatch.setitem(sys.modules, "pandas", None)  # what `import pandas` sees when it is not installed
    with pytest.raises(GainDeriveError, match=re.escape("to_pandas needs pandas: pip install pandas")) as info:
        t.to_pandas()
    assert "\n" not in str(info.value) and info.value.__cause__ is None and info.value.__suppress_context__
