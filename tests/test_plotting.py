"""Plots (issue #12, point 4): the extension names the format, refusals come before work, and the plot is readable.

Format checks use the formats' published magic numbers: PNG's 8-byte signature (PNG spec, section 5.2),
"%PDF-" (ISO 32000-1, section 7.5.2) and an XML declaration or <svg> root (SVG 1.1, section 5.1).
"""

import math
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import gainderive as gd
from gainderive import plotting
from gainderive.errors import GainDeriveError
from gainderive.limits import LimitError
from gainderive.output import TEMP_SUFFIX, OutputError

pytest.importorskip("matplotlib")  # the optional extra; installed with [test]

from matplotlib.figure import Figure

GRID = "1e-2:1e2:9"  # small: every test here draws in well under a second
MAGIC = {"png": (b"\x89PNG\r\n\x1a\n",), "pdf": (b"%PDF-",), "svg": (b"<?xml", b"<svg")}


def _no_table(*args, **kwargs):
    raise AssertionError("a moment was computed before the refusal")


@pytest.mark.parametrize("name", ["gains.png", "gains.pdf", "gains.svg", "GAINS.PNG", "gains.Svg"])
def test_the_extension_names_the_format(tmp_path, name):
    target = tmp_path / name
    plotting.plot_gains(["tanh"], target, variance=GRID, size=(300, 200))
    fmt = os.path.splitext(name)[1][1:].lower()
    assert target.read_bytes().startswith(MAGIC[fmt])
    assert [p for p in os.listdir(tmp_path) if p.endswith(TEMP_SUFFIX)] == []


@pytest.mark.parametrize("name", ["gains.jpg", "gains", "gains.png.bak", "gains.pdfx"])
def test_other_extensions_are_refused_before_any_work(tmp_path, monkeypatch, name):
    monkeypatch.setattr("gainderive.tables.table", _no_table)
    with pytest.raises(OutputError, match=r"accepted: \.png, \.pdf, \.svg") as info:
        plotting.plot_gains(["tanh"], tmp_path / name, variance=GRID)
    assert "\n" not in str(info.value)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("output", "match"), [("", "empty"), ("/", "is a directory"),
                                               ("/no/such/dir/gains.png", "does not exist")])
def test_bad_destinations_are_refused_before_any_work(monkeypatch, output, match):
    monkeypatch.setattr("gainderive.tables.table", _no_table)
    with pytest.raises(OutputError, match=match):
        plotting.plot_gains(["tanh"], output, variance=GRID)


def test_plot_points_are_capped_before_the_grid_is_built(tmp_path, monkeypatch):
    monkeypatch.setattr("gainderive.tables.table", _no_table)
    for spec in ("1e-3:1e3:10000000", "1:10:99999999999999999999"):
        with pytest.raises(LimitError, match="GAINDERIVE_MAX_PLOT_POINTS") as info:
            plotting.plot_gains(["tanh"], tmp_path / "g.png", variance=spec)
        assert "\n" not in str(info.value)
    monkeypatch.setenv("GAINDERIVE_MAX_PLOT_POINTS", "5")  # the limit in force is read at each call
    with pytest.raises(LimitError, match="limit of 5"):
        plotting.plot(["tanh"], GRID)
    assert os.listdir(tmp_path) == []


def test_missing_matplotlib_names_the_install_command(monkeypatch, tmp_path):
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.ticker"):
        monkeypatch.setitem(sys.modules, module, None)  # import then raises ImportError
    with pytest.raises(GainDeriveError, match=r"pip install matplotlib \(from a clone: pip install '\.\[plot\]'\)"):
        plotting.plot_gains(["tanh"], tmp_path / "g.png", variance=GRID)


def test_plot_draws_on_the_given_axes_and_returns_its_figure():
    fig = Figure()
    ax = fig.subplots()
    assert plotting.plot("elu", GRID, ax=ax) is fig
    assert len(ax.lines) == 2  # gain_fan_in and gain_fan_out; elu is not in PyTorch's table
    own = plotting.plot(["elu"], GRID)
    assert isinstance(own, Figure) and own is not fig and len(own.axes) == 1


def test_gd_plot_is_the_plotting_function():
    assert gd.plot is plotting.plot  # exported lazily by gainderive/__init__


def test_params_reach_every_activation():
    q = np.geomspace(1e-2, 1e2, 9)
    ax = plotting.plot(["elu"], q, params={"alpha": 2}).axes[0]
    fan_in, fan_out = (np.asarray(line.get_ydata()) for line in ax.lines)
    # gd.gain is a sibling entry point over the same moments: a wiring check, agreeing to rounding
    np.testing.assert_allclose(fan_in, gd.gain("elu", q, alpha=2), rtol=1e-12)
    np.testing.assert_allclose(fan_out, gd.gain("elu", q, mode="fan_out", alpha=2), rtol=1e-12)
    assert np.max(np.abs(fan_in / gd.gain("elu", q) - 1)) > 1e-2  # alpha = 1 is a visibly different curve


def _legend_labels(fig):
    return [text.get_text() for text in fig.axes[0].get_legend().get_texts()]


def test_four_activations_make_one_legend_entry_each_plus_the_line_styles():
    fig = plotting.plot(["relu", "tanh", "selu", "sigmoid"], GRID)
    assert _legend_labels(fig) == ["relu", "tanh", "selu", "sigmoid", "solid: gain_fan_in", "dashed: gain_fan_out",
                                   "dotted: torch calculate_gain"]  # 7 entries, where there were 12
    assert "dotted" in fig.axes[0].get_title()


def test_a_custom_formula_is_labelled_by_its_formula_and_the_title_promises_no_dotted_line():
    long_formula = "x*sigmoid(1.702*x) + 0.001*x*x*x + 0.25*tanh(x)*erf(x)"
    fig = plotting.plot(["x*sigmoid(x)", long_formula], GRID)
    labels = _legend_labels(fig)
    assert labels[0] == "x*sigmoid(x)"
    assert labels[1].startswith(long_formula[:30]) and len(labels[1]) <= plotting.LABEL_LENGTH
    assert not any("torch" in label for label in labels)
    assert "dotted" not in fig.axes[0].get_title()
    assert not any(line.get_linestyle() == ":" for line in fig.axes[0].lines)


def test_pytorch_constants_follow_the_parameters():
    ax = plotting.plot(["leaky_relu"], GRID, params={"negative_slope": 0.2}).axes[0]
    dotted = [line for line in ax.lines if line.get_linestyle() == ":"]
    # PyTorch's calculate_gain('leaky_relu', 0.2) = sqrt(2 / (1 + 0.2^2)) (torch.nn.init docs)
    assert len(dotted) == 1 and abs(dotted[0].get_ydata()[0] - math.sqrt(2 / 1.04)) < 1e-15
    ax = plotting.plot(["selu"], GRID, params={"alpha": 1.5}).axes[0]
    assert not any(line.get_linestyle() == ":" for line in ax.lines)  # 3/4 holds for the default selu only


def test_a_jumping_activation_has_no_fan_out_curve_and_says_so():
    fig = plotting.plot(["sign(x)"], GRID)
    assert len(fig.axes[0].lines) == 1
    assert "no fan_out" in _legend_labels(fig)[0] and "dashed: gain_fan_out" not in _legend_labels(fig)


def _labelled_ticks(ax):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(ax.figure).draw()  # lay out the ticks as a saved file would show them
    low, high = ax.get_ylim()
    return [t for t in ax.yaxis.get_major_ticks() if low <= t.get_loc() <= high and t.label1.get_text()]


def test_gains_within_a_factor_ten_get_a_linear_axis_with_several_labels():
    ax = plotting.plot(["gelu", "silu", "mish", "softplus"], "0.1:10:9").axes[0]  # gains 0.4..2
    assert ax.get_yscale() == "linear" and len(_labelled_ticks(ax)) >= 4


def test_gains_over_decades_get_a_log_axis_with_several_labels():
    ax = plotting.plot(["sigmoid"], "1e-3:1e3:9").axes[0]  # sqrt(q / E[sigmoid^2]): 0.06 .. 45
    assert ax.get_yscale() == "log" and len(_labelled_ticks(ax)) >= 4


def test_propagation_and_critical_line_plots_follow_the_extension_rule(tmp_path):
    depth = np.arange(6, dtype=float)
    runs = {"derived": SimpleNamespace(forward=1 + 0 * depth, backward=1 + 0.01 * depth, gain=1.5),
            "torch table": SimpleNamespace(forward=0.5**depth, backward=2.0**depth, gain=5 / 3)}
    plotting.plot_propagation("tanh", runs, tmp_path / "prop.svg")
    assert (tmp_path / "prop.svg").read_bytes().startswith(MAGIC["svg"])
    points = [SimpleNamespace(bias_variance=b, weight_variance=1 + b) for b in (0.0, 0.1, 0.2)]
    plotting.plot_critical_line("tanh", points, tmp_path / "line.pdf")
    assert (tmp_path / "line.pdf").read_bytes().startswith(MAGIC["pdf"])
    with pytest.raises(OutputError, match="accepted"):
        plotting.plot_propagation("tanh", runs, tmp_path / "prop.jpg")
    with pytest.raises(OutputError, match="accepted"):
        plotting.plot_critical_line("tanh", points, tmp_path / "line.gif")
    assert sorted(os.listdir(tmp_path)) == ["line.pdf", "prop.svg"]


def test_the_png_has_the_requested_size(tmp_path):
    import matplotlib.image

    target = tmp_path / "g.png"
    plotting.plot_gains(["elu", "tanh"], target, variance=GRID, size=(640, 480))
    assert matplotlib.image.imread(target).shape[:2] == (480, 640)
    with pytest.raises(GainDeriveError, match=r"accepted: 100\.\.8000"):
        plotting.plot_gains(["elu"], target, variance=GRID, size=(10, 480))


def test_every_spelling_of_a_count_meets_the_plot_points_limit(tmp_path):
    # "1e5" is a count of 100,000 (tables accept it); it must meet the plot's limit, not slip past it as 0
    for spec in ("1e-3:1e3:1e5", "1e-3:1e3:100000", range(100_000)):
        with pytest.raises(LimitError, match="input variances q on one plot"):
            gd.plot("relu", spec)


@pytest.mark.parametrize("size", [(100,), ("a", "b"), None, (50, 600)])
def test_a_bad_size_is_a_one_line_error(tmp_path, size):
    with pytest.raises(GainDeriveError, match="plot size") as info:
        plotting.plot_gains("relu", tmp_path / "gains.png", size=size)
    assert "\n" not in str(info.value)
