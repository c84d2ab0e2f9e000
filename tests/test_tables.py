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
from gainderive.tables import COLUMNS, parse_variance_spec, write_atomic

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(gd.REGISTRY))
def test_committed_tables_regenerate_to_1e_12(name):
    # tables/ is produced by `python tools/make_tables.py`; recomputing must give the same numbers
    stored = json.loads((ROOT / "tables" / f"{name}.json").read_text())
    assert stored["columns"] == list(COLUMNS) and len(stored["rows"]) >= 121
    rows = np.array(stored["rows"])
    fresh = gd.table(name, rows[:, 0])
    for k, column in enumerate(COLUMNS):
        a, b = rows[:, k], fresh.columns[column]
        assert np.all(np.abs(a - b) <= 1e-12 * np.maximum(np.abs(a), np.abs(b)) + 1e-300), column
    csv_lines = (ROOT / "tables" / f"{name}.csv").read_text().splitlines()
    assert csv_lines[0].startswith("# gainderive:") and ",".join(COLUMNS) in csv_lines


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
    assert main(argv) == 2
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
