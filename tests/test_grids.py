"""Grids, correlation batches and q validation: bounded before any work, chunked, one budget per item.

Issue #12's reproducers, with small limits (GAINDERIVE_MAX_* set for one test) so that each runs in well under
a second or two: ``table -q 1e-3:1e3:400000`` crashed (a panel cap shared by the whole batch of q), a grid of
10^8 or 10^20 q exhausted memory or overflowed an int, ``kernel`` with 301 correlations raised a false
ConvergenceError and with 10,001 took 12-18 GB, ``--digits 0 / -5 / 100000`` were accepted or hung, and a
q of "1e-400" silently became 0.
"""

import io
import json
import math
import tracemalloc

import mpmath as mp
import numpy as np
import pytest

import gainderive as gd
from gainderive import tables
from gainderive.backends import quadrature
from gainderive.correlation import kernel
from gainderive.errors import ConvergenceError, GainDeriveError, VarianceError
from gainderive.limits import LimitError
from gainderive.moments import check_variance

EPS = np.finfo(float).eps


def _sin_references(q: float) -> dict[str, float]:
    """E[sin z] = 0 (odd), E[sin^2 z] = (1 - e^{-2q})/2, E[cos^2 z] = (1 + e^{-2q})/2, for z ~ N(0, q).

    By hand: E[cos(2z)] = e^{-2q} (the characteristic function of N(0, q) at 2), and sin^2 = (1 - cos 2z)/2,
    cos^2 = (1 + cos 2z)/2.  Evaluated at 30 digits, then rounded to a double (half an ulp).
    """
    with mp.workdps(30):
        e = mp.exp(-2 * mp.mpf(q))
        second = (1 - e) / 2
        return {"mean": 0.0, "second_moment": float(second), "derivative_second_moment": float((1 + e) / 2),
                "variance": float(second)}


def _assert_within_bars(m: gd.Moments, qs) -> None:
    """|value - reference| <= error + 4 ulps of the moment's scale (absolute for the mean, which is 0)."""
    for i, q in enumerate(qs):
        reference = _sin_references(q)
        for name, want in reference.items():
            est = getattr(m, name)
            value, error = float(np.atleast_1d(est.value)[i]), float(np.atleast_1d(est.error)[i])
            scale = math.sqrt(reference["second_moment"]) if name == "mean" else abs(want)
            assert abs(value - want) <= error + 4 * EPS * scale, (q, name, value, want, error)


# ---------------------------------------------------------------- per-q budgets, chunked grids

# sin at q = 1e4 oscillates ~600 times inside the Gaussian's range (778 panels); at q = 0.5 and 2, ~24 panels
HARD, EASY = 1e4, (0.5, 2.0)


def test_a_batch_over_the_panel_cap_is_split_not_crashed(monkeypatch):
    # the reproducer of `table tanh -q 1e-3:1e3:400000`: a batch needing more panels in one round than the cap
    # (then global, and UnboundLocalError when hit in the first round).  Now the batch is split and each q
    # integrated with its own budget: every value within its bar of the 30-digit reference.
    qs = np.array([EASY[0], HARD, EASY[1]])
    whole = gd.moments("sin", qs, "quadrature")
    monkeypatch.setattr(quadrature, "_IN_FLIGHT", 30)  # below the first round of the three q together
    split = gd.moments("sin", qs, "quadrature")
    _assert_within_bars(whole, qs)
    _assert_within_bars(split, qs)
    for name in ("mean", "second_moment", "derivative_second_moment"):  # the same q, within both bars
        a, b = getattr(whole, name), getattr(split, name)
        assert np.all(np.abs(a.value - b.value) <= a.error + b.error + 4 * EPS)


def test_each_q_has_its_own_panel_budget(monkeypatch):
    # 400 panels: enough for each easy q (~24), not for the hard one (778).  The hard q fails, naming itself;
    # the easy q get the same answers alone as next to it, since no budget is shared
    monkeypatch.setattr(quadrature, "_PANELS_PER_Q", 400)
    with pytest.raises(ConvergenceError, match=r"did not converge at q = 10000 "):
        gd.moments("sin", np.array([EASY[0], HARD, EASY[1]]), "quadrature")
    alone = gd.moments("sin", np.array(EASY), "quadrature")
    _assert_within_bars(alone, EASY)
    monkeypatch.setattr(quadrature, "_PANELS_PER_Q", 50_000)
    together = gd.moments("sin", np.array([EASY[0], HARD, EASY[1]]), "quadrature")
    for name in ("second_moment", "derivative_second_moment"):
        a, b = getattr(alone, name), getattr(together, name)
        assert np.all(np.abs(a.value - b.value[[0, 2]]) <= a.error + b.error[[0, 2]] + 4 * EPS)


def test_table_is_chunked_reports_progress_and_matches_one_pass(monkeypatch):
    q = np.geomspace(1e-2, 1e2, 23)
    one_pass = gd.table("tanh", q)
    monkeypatch.setattr(tables, "ROWS_PER_CHUNK", 5)
    monkeypatch.setattr(quadrature, "Q_CHUNK", 3)
    calls = []
    chunked = gd.table("tanh", q, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(5, 23), (10, 23), (15, 23), (20, 23), (23, 23)]
    assert chunked.methods == one_pass.methods
    for column in tables.MOMENT_COLUMNS:  # each row is computed on its own: the same within both bars
        bar = chunked.columns[f"{column}_error"] + one_pass.columns[f"{column}_error"] + 4 * EPS
        assert np.all(np.abs(chunked.columns[column] - one_pass.columns[column]) <= bar), column


def test_table_memory_is_its_columns_plus_one_chunk(monkeypatch):
    # numpy reports its buffers to tracemalloc.  One pass over these 6,000 q peaks at ~25 MB beyond the table's
    # 15 columns (measured); chunks of 512 q at ~4 MB, whatever the grid
    monkeypatch.setattr(tables, "ROWS_PER_CHUNK", 512)
    monkeypatch.setattr(quadrature, "Q_CHUNK", 512)
    q = np.geomspace(1e-3, 1e3, 6000)
    gd.table("tanh", q[:3])  # imports and caches outside the measurement
    tracemalloc.start()
    try:
        t = gd.table("tanh", q)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    columns = 15 * q.nbytes
    assert t.q.size == q.size and peak - columns < 10e6, (peak - columns) / 1e6


# ---------------------------------------------------------------- sizes checked before any work

def test_grid_beyond_the_limit_is_refused_before_allocating(monkeypatch):
    # 10^20 q (an int no numpy array can hold; exit 70 before) and 10^8 (a MemoryError): one line, naming the limit
    for spec in ("1:10:99999999999999999999", "1e-3:1e3:100000000"):
        with pytest.raises(LimitError, match=r"exceeds the limit of 1,000,000.*GAINDERIVE_MAX_GRID") as info:
            tables.parse_variance_spec(spec)
        assert "\n" not in str(info.value)
    monkeypatch.setenv("GAINDERIVE_MAX_GRID", "10")
    assert tables.parse_variance_spec("1:10:10").size == 10
    assert tables.parse_variance_spec("1:10:1e1").size == 10  # a count written as 1e1 is a whole number
    for spec in ("1:10:11", ",".join(["1"] * 11), np.ones(11), [1.0] * 11):
        with pytest.raises(LimitError, match="exceeds the limit of 10"):
            tables.parse_variance_spec(spec)
    with pytest.raises(LimitError, match="exceeds the limit of 10"):
        gd.table("tanh", "1:10:11")


@pytest.mark.parametrize(("spec", "message"), [
    ("1:10:2.5", "count must be a whole number"), ("1:10:-3", "count must be a whole number"),
    ("1:10:inf", "count must be a whole number"), ("1e-400:1:3", "start q = 1e-400 underflows double precision"),
    ("1:1e400:3", "stop q = 1e400 overflows double precision"), ("1,1e-400", "'1,1e-400': q = 1e-400 underflows"),
    ("1,2+1j", "complex"), ("1:2:3:cubic", "accepted forms"), ("1e-310:1:3", "subnormal"),
])
def test_bad_specs_are_one_line_errors(spec, message):
    with pytest.raises(GainDeriveError, match=message.replace("+", r"\+")) as info:
        tables.parse_variance_spec(spec)
    assert "\n" not in str(info.value) and repr(spec) in str(info.value)


def test_table_refuses_high_precision_with_the_alternative():
    with pytest.raises(GainDeriveError, match="one q at a time"):
        gd.table("tanh", "1,2", method="high_precision")


# ---------------------------------------------------------------- the correlation kernel

def _williams(q: float, c: float) -> float:
    """E[erf(u) erf(v)] = (2/pi) asin(2 q c / (1 + 2 q)) for q1 = q2 = q (Williams 1997, NeurIPS), 30 digits."""
    with mp.workdps(30):
        return float(2 / mp.pi * mp.asin(2 * mp.mpf(q) * mp.mpf(c) / (1 + 2 * mp.mpf(q))))


def test_301_correlations_each_within_its_bar(monkeypatch):
    # the reproducer: 301+ correlations raised a false ConvergenceError ("probably singular").  Quadrature,
    # in chunks of 64 (5 chunks), against Williams' closed form: error bar + 4 ulps of the value's scale (1)
    monkeypatch.setattr("gainderive.correlation._C_CHUNK", 64)
    c = np.linspace(-1, 1, 301)
    calls = []
    result = kernel("erf", c, 1.0, method="quadrature", progress=lambda done, total: calls.append((done, total)))
    assert calls == [(64, 301), (128, 301), (192, 301), (256, 301), (301, 301)]
    want = np.array([_williams(1.0, v) for v in c])
    assert np.all(np.abs(result.value - want) <= result.error + 4 * EPS)


def test_correlation_count_is_limited_before_any_work(monkeypatch):
    monkeypatch.setenv("GAINDERIVE_MAX_CORRELATIONS", "10")
    with pytest.raises(LimitError, match=r"correlation: 11 correlations c in one kernel call exceeds the limit of 10"):
        kernel("tanh", np.linspace(-1, 1, 11))
    assert kernel("relu", np.linspace(-1, 1, 10)).value.shape == (10,)


@pytest.mark.parametrize("correlation", [0.5 + 1j, np.array([0.5, 0.2j]), True, "0.5", None, [0.5, "x"]])
def test_kernel_refuses_correlations_that_are_not_real_numbers(correlation):
    with pytest.raises(GainDeriveError, match=r"correlation c must be a real number in \[-1, 1\]") as info:
        kernel("relu", correlation)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- digits

@pytest.mark.parametrize("digits", [0, -5, 4, 30.0, "40", True])
def test_bad_digits_name_the_accepted_range(digits):
    for call in (lambda: kernel("tanh", 0.5, method="high_precision", digits=digits),
                 lambda: gd.moments("tanh", 1.0, "high_precision", digits=digits)):
        with pytest.raises(GainDeriveError, match=r"digits must be an integer from 5 to 200; got ") as info:
            call()
        assert "\n" not in str(info.value)


def test_digits_beyond_the_limit_are_refused_before_any_work(monkeypatch):
    # 100,000 digits hung; now a LimitError that names the variable raising it
    for call in (lambda d: kernel("tanh", 0.5, method="high_precision", digits=d),
                 lambda d: gd.moments("tanh", 1.0, "high_precision", digits=d)):
        with pytest.raises(LimitError, match=r"digits: 100,000 significant digits exceeds the limit of 200.*"
                                             r"GAINDERIVE_MAX_DIGITS"):
            call(100_000)
    monkeypatch.setenv("GAINDERIVE_MAX_DIGITS", "20")
    with pytest.raises(LimitError, match="exceeds the limit of 20"):
        gd.moments("tanh", 1.0, "high_precision", digits=25)


def test_high_precision_kernel_work_is_bounded_before_it_starts():
    # 60 digits of tanh's kernel ran 10 minutes and then failed; 200 would take hours.  Refused at once, saying
    # what fits (the work model: four nested Gauss-Legendre passes of up to 96 x 96 nodes per pair of panels)
    for digits in (60, 200):
        with pytest.raises(LimitError, match=rf"kernel at {digits} digits could take up to .* minutes.*at most 46 "
                                             r"digits fit for this activation") as info:
            kernel("tanh", 0.5, method="high_precision", digits=digits)
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------- q validation

def test_q_that_underflows_double_precision_is_refused_not_zeroed():
    for q in ("1e-400", mp.mpf("1e-400"), np.longdouble("1e-400")):
        with pytest.raises(VarianceError, match=r"q = 1\.?0?e-400 underflows double precision: the smallest normal q "
                                                r"is 2\.225e-308 \(method=\"high_precision\" takes it\)"):
            gd.moments("tanh", q)
    for q in ("1e400", 10**400, np.array([np.longdouble("1e400")])):
        with pytest.raises(VarianceError, match=r"overflows double precision: the largest q is 1\.798e\+308"):
            gd.moments("tanh", q)
    with pytest.raises(VarianceError, match="underflows"):
        kernel("tanh", 0.5, "1e-400")
    # at high precision the same string is exact: E[tanh(z)^2] = q - 2 q^2 + O(q^3) (tanh^2 z = z^2 - 2 z^4/3 + ...,
    # E z^4 = 3 q^2), so q itself to far below the 20-digit bar
    m = gd.moments("tanh", "1e-400", "high_precision", digits=20)
    with mp.workdps(40):
        assert abs(m.second_moment.value - mp.mpf("1e-400")) <= m.second_moment.error + mp.mpf("1e-790")


COMPLEX = [1 + 2j, "1+2j", np.complex128(2), np.array([1.0, 2 + 0.5j])]


@pytest.mark.parametrize("q", [*COMPLEX, True, None, np.array([1, "2"], dtype=object), ["1", "2"],
                               [[1.0, 2.0], [3.0]], "nan", "-1", [], np.array([np.inf])])
def test_bad_q_is_a_one_line_variance_error(q):
    with pytest.raises(VarianceError) as info:
        gd.moments("relu", q)
    text = str(info.value)
    assert "\n" not in text and len(text) < 240
    if any(q is c for c in COMPLEX):  # never a silently dropped imaginary part
        assert "complex" in text


def test_valid_q_in_every_accepted_form():
    from decimal import Decimal
    from fractions import Fraction

    assert check_variance("0.5") == 0.5 and check_variance(Fraction(1, 4)) == 0.25
    assert check_variance(Decimal("2.5")) == 2.5 and check_variance(mp.mpf(3)) == 3.0
    assert np.array_equal(check_variance([1, 2.5]), [1.0, 2.5])
    assert check_variance("1e-400", exact=True) == mp.mpf("1e-400")  # exact: any q > 0, for high precision


# ---------------------------------------------------------------- streamed text

def test_streamed_text_is_the_joined_text():
    t1, t2 = gd.table("elu", "0.5,2"), gd.table("tanh", "1:3:3:lin")
    for indent in (None, 1):
        assert "".join(t1.iter_json(indent)) == json.dumps(t1.to_json(), indent=indent)
    for fmt, joined in (("csv", t1.to_csv() + "\n" + t2.to_csv()), ("markdown", t1.to_markdown() + "\n"
                                                                     + t2.to_markdown())):
        text, binary = io.StringIO(), io.BytesIO()
        tables.write_tables(text, iter([t1, t2]), fmt)
        tables.write_tables(binary, [t1, t2], fmt)
        assert text.getvalue() == joined and binary.getvalue() == joined.encode()
    for group in ([t1], [t1, t2]):
        out = io.StringIO()
        tables.write_tables(out, iter(group), "json", as_list=len(group) > 1)
        payload = group[0].to_json() if len(group) == 1 else [t.to_json() for t in group]
        assert out.getvalue() == json.dumps(payload, indent=1) + "\n"


class _Sink(io.RawIOBase):
    """A binary stream that counts and discards what is written."""

    def __init__(self):
        self.size = 0

    def writable(self):
        return True

    def write(self, data):
        self.size += len(data)
        return len(data)


def test_writing_holds_one_chunk_of_text(monkeypatch):
    monkeypatch.setattr(tables, "ROWS_PER_CHUNK", 128)
    t = gd.table("relu", "1e-3:1e3:8000")
    sink = _Sink()
    tracemalloc.start()
    try:
        t.write(sink, "csv")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sink.size > 1.5e6 and peak < sink.size / 8, (sink.size, peak)  # the text is ~2 MB; a chunk ~30 kB


@pytest.mark.parametrize(("fmt", "as_list"), [("csv", False), ("json", True), ("markdown", False)])
def test_write_tables_holds_one_table_at_a_time(fmt, as_list):
    # `table relu elu -q ...:1000000`: each table is 120 MB of columns, so the next must not be computed while
    # the last is still referenced (an enumerate() result tuple once kept it alive: 268 MB instead of 175 MB)
    import weakref

    written = []

    def one_at_a_time():
        for name in ("relu", "elu", "tanh"):
            assert all(ref() is None for ref in written), name
            t = gd.table(name, "1:2:5")
            written.append(weakref.ref(t))
            yield t
            del t

    tables.write_tables(io.StringIO(), one_at_a_time(), fmt, as_list=as_list)
    assert len(written) == 3


def test_write_tables_refuses_several_tables_as_one_json_object():
    # as_list=False writes one JSON object: a second table would make the output invalid JSON ("Extra data")
    tables_ = (gd.table(name, "1:2:3") for name in ("relu", "elu"))
    with pytest.raises(GainDeriveError, match="several tables"):
        tables.write_tables(io.StringIO(), tables_, "json", as_list=False)
    out = io.StringIO()
    tables.write_tables(out, [gd.table("relu", "1:2:3")], "json", as_list=False)
    assert json.loads(out.getvalue())["meta"]["activation"] == "relu"
