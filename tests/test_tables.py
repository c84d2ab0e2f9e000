"""Tables against q: the committed deliverable, the API, lookups, the table and plot commands, atomic writes."""

import json
import os
import pathlib
import struct

import numpy as np
import pytest

import gainderive as gd
from gainderive.cli import main
from gainderive.errors import GainDeriveError
from gainderive.progress import progress_bar
from gainderive.tables import COLUMNS, MOMENT_COLUMNS, parse_variance_spec, write_atomic

ROOT = pathlib.Path(__file__).resolve().parents[1]


EPS = np.finfo(float).eps
ULPS = 4 * EPS  # a few roundings of the last operation: the floor of every bar, so values that are 0 up to noise pass
GAIN_OF = {"gain_fan_in": "second_moment", "gain_fan_out": "derivative_second_moment", "gain_variance": "variance_f"}


def _scales(columns):
    """The size each moment's error is measured against.

    The mean can vanish (odd f) or cancel between the two sides of a kink, so it is measured against
    sqrt(E f^2) >= E|f|, the size of the integrand; Var f = E f^2 - (E f)^2 carries the error of E f^2.
    """
    second = columns["second_moment"]
    return {"mean": np.sqrt(second), "second_moment": second,
            "derivative_second_moment": columns["derivative_second_moment"], "variance_f": second}


def _disagreements(stored, fresh):
    """Columns where the committed table and a fresh computation differ by more than their error bars.

    Both tables claim |value - truth| <= error, so they must agree within stored error + fresh error, plus a few
    ulps of the moment's scale (absolute: the means of odd activations are ~1e-18 of rounding noise, whose
    digits differ between CPUs).  A gain g = sqrt(scale / moment) carries half the moment's relative error.  The
    error columns themselves are rounding noise of rounding noise: they are never compared between the tables,
    only required to be finite, >= 0 and within the 1e-12 accuracy target.
    """
    bad = []
    for columns in (stored, fresh):
        scales = _scales(columns)
        for moment in MOMENT_COLUMNS:
            error = columns[f"{moment}_error"]
            if not np.all(np.isfinite(error) & (error >= 0) & (error <= 1e-12 * scales[moment])):
                bad.append(f"{moment}_error")
    scales = {m: np.maximum(a, b) for (m, a), b in zip(_scales(stored).items(), _scales(fresh).values())}
    for moment in MOMENT_COLUMNS:
        bar = stored[f"{moment}_error"] + fresh[f"{moment}_error"] + ULPS * scales[moment]
        if not np.all(np.abs(stored[moment] - fresh[moment]) <= bar):
            bad.append(moment)
    for gain, moment in GAIN_OF.items():
        bar = sum(np.abs(t[gain]) * t[f"{moment}_error"] / (2 * np.abs(t[moment])) for t in (stored, fresh))
        bar = bar + ULPS * np.maximum(np.abs(stored[gain]), np.abs(fresh[gain]))
        if not np.all(np.abs(stored[gain] - fresh[gain]) <= bar):
            bad.append(gain)
    return bad


def _committed(name):
    stored = json.loads((ROOT / "tables" / f"{name}.json").read_text())
    assert stored["columns"] == list(COLUMNS) and len(stored["rows"]) >= 121
    rows = np.array(stored["rows"])
    return {column: rows[:, k] for k, column in enumerate(COLUMNS)}


@pytest.mark.parametrize("name", sorted(gd.REGISTRY))
def test_committed_tables_regenerate_within_their_error_bars(name):
    # tables/ is produced by `python tools/make_tables.py`; recomputing, on any CPU, must give the same numbers
    # up to the error bars both computations report (see _disagreements)
    stored = _committed(name)
    fresh = gd.table(name, stored["variance"]).columns
    assert np.array_equal(fresh["variance"], stored["variance"])  # repr() of a float reads back exactly
    assert _disagreements(stored, fresh) == []
    csv_lines = (ROOT / "tables" / f"{name}.csv").read_text().splitlines()
    assert csv_lines[0].startswith("# gainderive:") and ",".join(COLUMNS) in csv_lines


@pytest.mark.parametrize(("name", "column", "row"), [("tanh", "mean", 60), ("elu", "second_moment", 0),
                                                     ("gelu", "gain_fan_out", 120), ("sin", "gain_variance", 30)])
def test_the_table_comparison_catches_a_value_outside_its_bar(name, column, row):
    # the comparison above is not vacuous: moving one committed value by 3 times its bar fails it (tanh's mean
    # is 0 up to rounding, so there the bar is its error plus the ulps floor)
    stored = _committed(name)
    fresh = gd.table(name, stored["variance"]).columns
    moment = GAIN_OF.get(column, column)
    relative = (stored[f"{moment}_error"][row] + fresh[f"{moment}_error"][row]) / stored[moment][row]
    if column in GAIN_OF:
        bar = abs(stored[column][row]) * (relative / 2 + ULPS)
    else:
        bar = stored[f"{moment}_error"][row] + fresh[f"{moment}_error"][row] + ULPS * _scales(stored)[moment][row]
    wrong = {c: v.copy() for c, v in stored.items()}
    wrong[column][row] += 3 * bar
    assert _disagreements(wrong, fresh) == [column]
    wrong = {c: v.copy() for c, v in stored.items()}
    wrong[f"{moment}_error"][row] = -1.0  # an error bar must be >= 0
    assert f"{moment}_error" in _disagreements(wrong, fresh)


def test_table_agrees_with_moments_and_gains():
    t = gd.table("gelu", "0.01,1,50")
    m = gd.moments("gelu", t.q)
    g = gd.gains(m)
    assert np.array_equal(t.columns["second_moment"], m.second_moment.value)
    assert np.array_equal(t.columns["gain_fan_out"], g.fan_out.value)
    records = t.records()
    assert [r["variance"] for r in records] == [0.01, 1.0, 50.0] and list(records[0]) == list(COLUMNS)
    array = t.to_numpy()
    assert array.dtype.names == COLUMNS and array["gain_fan_in"][1] == t.columns["gain_fan_in"][1]
    meta = t.meta
    for key in ("gainderive", "activation", "formula", "params", "conventions", "method", "max_reported_error"):
        assert key in meta


@pytest.mark.parametrize(("name", "column"), [("tanh", "gain_fan_in"), ("silu", "gain_fan_in"),
                                              ("elu", "gain_fan_in"), ("gelu", "gain_fan_out")])
def test_lookup_error_is_stated_and_holds_between_the_nodes(name, column):
    t = gd.table(name, "1e-3:1e3:121")
    lookup = t.lookup(column)
    assert 0 < lookup.max_relative_error < 1e-5
    # a dense grid, 20 points per interval: the stated error is measured at 4 per interval, so allow 1.5x
    q = np.geomspace(1e-3, 1e3, 2401)
    exact = gd.table(name, q).columns[column]
    assert np.all(np.abs(lookup(q) - exact) <= 1.5 * lookup.max_relative_error * np.abs(exact))
    with pytest.raises(GainDeriveError, match="outside"):
        lookup(1e4)


def test_lookup_rejects_unknown_columns():
    t = gd.table("tanh", "1e-3:1e3:11")
    with pytest.raises(GainDeriveError, match="unknown column"):
        t.lookup("gain_sideways")


def test_variance_specs():
    assert np.allclose(parse_variance_spec("1e-2:1e2:5"), [1e-2, 1e-1, 1, 10, 100])
    assert np.allclose(parse_variance_spec("1:3:3:lin"), [1, 2, 3])
    assert np.allclose(parse_variance_spec("0.5,2"), [0.5, 2])
    for bad in ("a:b:3", "1:2", "1:10:0", "-1:10:3", "inf:1:3", "1,-2", "1,x", "", "1:10:3:cubic", "0:1:2"):
        with pytest.raises(GainDeriveError):
            parse_variance_spec(bad)


def test_table_command_formats_and_output_file(capsys, tmp_path):
    assert main(["table", "relu", "elu", "-q", "0.5,2", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert out.count("# activation:") == 2 and out.count(",".join(COLUMNS)) == 2
    assert main(["table", "elu", "-q", "0.5,2", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["meta"]["activation"] == "elu"
    assert main(["table", "elu", "-q", "1", "--format", "markdown"]) == 0
    assert "| variance |" in capsys.readouterr().out
    target = tmp_path / "elu.csv"
    assert main(["table", "elu", "-q", "1:2:3", "-o", str(target)]) == 0
    assert target.read_text().count("\n") > 3 and capsys.readouterr().out == ""


@pytest.mark.parametrize("argv", [["table", "elu", "--format", "xml"], ["table", "elu", "-q", "1:0:3"],
                                  ["table", "elu", "-q", "1:10:0"], ["table", "elu", "-o", "/nonexistent/dir/x.csv"],
                                  ["table", "nosuch"], ["plot", "elu", "-o", "/tmp/x.png", "--size", "big"]])
def test_table_bad_input_exits_2(argv, capsys):
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's own usage errors (an unknown --format choice) leave through SystemExit
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("gainderive: error:") and err.count("\n") == 1


def test_interrupted_write_leaves_no_half_file(tmp_path, monkeypatch):
    target = tmp_path / "table.csv"
    target.write_text("previous\n")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, "new contents\n" * 1000)
    assert target.read_text() == "previous\n"  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]  # and no temporary file left behind


def test_plot_renders_a_png_of_the_requested_size(tmp_path):
    pytest.importorskip("matplotlib")  # the optional extra; installed with [test]
    import matplotlib.image

    target = tmp_path / "gains.png"
    assert main(["plot", "elu", "tanh", "-o", str(target), "--size", "640x480", "-q", "1e-2:1e2:41"]) == 0
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert (width, height) == (640, 480)
    pixels = matplotlib.image.imread(target)
    assert pixels.std() > 0.01  # not blank


class _Terminal:
    def __init__(self, tty):
        self.tty, self.text = tty, ""

    def isatty(self):
        return self.tty

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def test_progress_bar_only_on_a_terminal():
    stream = _Terminal(tty=False)
    with progress_bar("tables", stream=stream) as bar:
        assert bar is None
    assert stream.text == ""
    stream = _Terminal(tty=True)
    with progress_bar("tables", stream=stream) as bar:
        bar(1, 2)
        bar(2, 2)
    assert "100.0%" in stream.text and stream.text.endswith("\r")
    stream = _Terminal(tty=True)
    with progress_bar("tables", stream=stream, enabled=False) as bar:  # --quiet
        assert bar is None
    assert stream.text == ""
