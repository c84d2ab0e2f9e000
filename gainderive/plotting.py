"""Plots of the gains against the input variance q, of per-layer propagation, and of the critical line.

matplotlib is an optional dependency (``pip install matplotlib``; from a clone, ``pip install '.[plot]'``). It is
imported only when a plot is drawn, and only through ``matplotlib.figure.Figure``: pyplot and its global
backend are never touched, so a notebook or a GUI session keeps its own.

The gains are those of :mod:`gainderive.gains` (He et al. 2015, Glorot & Bengio 2010, generalised to any q):
gain_fan_in = sqrt(q / E[f(z)^2]) and gain_fan_out = 1 / sqrt(E[f'(z)^2]), z ~ N(0, q).

Files are written by :func:`gainderive.output.write_atomic` (atomic, permission-preserving, refusing devices and
foreign symlinks), in the format the extension names: ``.png``, ``.pdf`` or ``.svg`` (any case). Any other
extension is refused before anything is computed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import GainDeriveError
from .output import OutputError, check_destination, write_atomic

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .activation import Activation

__all__ = ["DEFAULT_VARIANCE", "FORMATS", "PYTORCH_GAINS", "plot", "plot_critical_line", "plot_format",
           "plot_gains", "plot_propagation"]

#: torch.nn.init.calculate_gain's table (PyTorch 2.x docs), for the activations it names at their defaults.
PYTORCH_GAINS = {
    "identity": 1.0,
    "sigmoid": 1.0,
    "tanh": 5.0 / 3.0,
    "relu": math.sqrt(2.0),
    "leaky_relu": math.sqrt(2.0 / (1 + 0.01**2)),
    "selu": 3.0 / 4.0,
}
#: File formats by extension. The metadata drops creation dates, so the same plot gives the same bytes.
FORMATS = {".png": ("png", None), ".pdf": ("pdf", {"CreationDate": None}), ".svg": ("svg", {"Date": None})}
DEFAULT_VARIANCE = "1e-3:1e3:241"
LABEL_LENGTH = 40  # a formula is a legend label; longer ones are cut, keeping the legend narrow
MISSING_MATPLOTLIB = "plotting needs matplotlib: pip install matplotlib (from a clone: pip install '.[plot]')"


def _matplotlib():
    """matplotlib's Figure class and ticker module, or a one-line error saying how to install it."""
    try:
        from matplotlib import ticker
        from matplotlib.figure import Figure
    except ImportError:
        raise GainDeriveError(MISSING_MATPLOTLIB) from None
    return Figure, ticker


def plot_format(output: str | os.PathLike) -> str:
    """The format ``output``'s extension names (png, pdf or svg), or an :class:`OutputError` listing them."""
    extension = os.path.splitext(os.fsdecode(os.fspath(output)))[1]
    if extension.lower() not in FORMATS:
        named = f"extension {extension!r}" if extension else "no extension"
        raise OutputError(f"plot file {os.fsdecode(os.fspath(output))!r} has {named}; the format follows the "
                          f"extension; accepted: {', '.join(FORMATS)}")
    return FORMATS[extension.lower()][0]


def check_output(output: str | os.PathLike) -> str:
    """Refuse a bad destination or extension before any work (the CLI calls it before a long run); the format."""
    check_destination(output, what="plot")
    return plot_format(output)


def _save(fig: Figure, output: str | os.PathLike, fmt: str, dpi: int = 100) -> None:
    metadata = FORMATS["." + fmt][1]
    write_atomic(output, lambda handle: fig.savefig(handle, format=fmt, dpi=dpi, metadata=metadata), what="plot")


def _grid(variance: Any) -> np.ndarray:
    from .tables import parse_variance_spec

    return parse_variance_spec(variance, limit="plot_points")


def _shorten(name: str) -> str:
    return name if len(name) <= LABEL_LENGTH else name[:LABEL_LENGTH - 3] + "..."


def _pytorch_gain(activation: Activation) -> float | None:
    """calculate_gain's constant for this activation, or None where PyTorch's table does not name it.

    leaky_relu's constant depends on its slope, sqrt(2 / (1 + slope^2)); the others hold at the registry's
    default parameters only.
    """
    from .registry import activation as registry_activation

    name = activation.name
    if name not in PYTORCH_GAINS:
        return None
    if name == "leaky_relu":
        slope = float(activation.params["negative_slope"])
        return math.sqrt(2.0 / (1.0 + slope**2))
    if dict(activation.params) != dict(registry_activation(name).params):
        return None
    return PYTORCH_GAINS[name]


@dataclass(frozen=True)
class _Curves:
    label: str
    q: np.ndarray
    fan_in: np.ndarray
    fan_out: np.ndarray | None  # None where E[f'(z)^2] is infinite
    pytorch: float | None


def _gain_curves(names: Sequence[str | Activation], q: np.ndarray, params: dict[str, Any]) -> list[_Curves]:
    from .tables import table

    curves = []
    for name in names:
        t = table(name, q, **params)
        if np.all(np.isinf(t.columns["derivative_second_moment"])):
            fan_out = None
        else:
            fan_out = np.where(t.columns["gain_fan_out"] > 0, t.columns["gain_fan_out"], np.nan)  # 0 where infinite
        curves.append(_Curves(_shorten(t.activation.name), t.q, t.columns["gain_fan_in"], fan_out,
                              _pytorch_gain(t.activation)))
    return curves


def _tick_label(value: float, _position: Any) -> str:
    return f"{value:g}"


def _choose_scale(ax: Axes, which: str, values: np.ndarray, ticker: Any) -> str:
    """A linear axis unless the positive values span more than a factor 10; a log axis then, labelled densely.

    Over less than a factor 10 a log axis shows one or two labels (0.81..1.0 showed two); over several decades
    it labels every decade, and over fewer than four decades 1, 2 and 5 of each, as plain numbers.
    """
    values = np.asarray(values, dtype=float)
    positive = values[np.isfinite(values) & (values > 0)]
    axis = ax.xaxis if which == "x" else ax.yaxis
    set_scale = ax.set_xscale if which == "x" else ax.set_yscale
    if positive.size == 0 or positive.max() <= 10 * positive.min() or positive.size < values[np.isfinite(values)].size:
        set_scale("linear")
        return "linear"
    set_scale("log")
    decades = math.log10(positive.max() / positive.min())
    axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades < 4 else (1.0,)))
    axis.set_major_formatter(ticker.FuncFormatter(_tick_label))
    axis.set_minor_formatter(ticker.NullFormatter())
    return "log"


def _draw_gains(ax: Axes, curves: list[_Curves], ticker: Any) -> None:
    """Colour = activation, line style = which gain (solid fan_in, dashed fan_out, dotted PyTorch's constant)."""
    from matplotlib.lines import Line2D

    handles = []
    plotted = []
    any_fan_out = any_pytorch = False
    for k, c in enumerate(curves):
        color = f"C{k % 10}"
        ax.plot(c.q, c.fan_in, color=color, linestyle="-")
        plotted.append(c.fan_in)
        label = c.label
        if c.fan_out is None:
            label += " (no fan_out: E[f'^2] infinite)"  # the reason is in the table's metadata; too long here
        else:
            ax.plot(c.q, c.fan_out, color=color, linestyle="--")
            plotted.append(c.fan_out)
            any_fan_out = True
        if c.pytorch is not None:
            ax.axhline(c.pytorch, color=color, linestyle=":", linewidth=1)
            plotted.append(np.array([c.pytorch]))
            any_pytorch = True
        handles.append(Line2D([], [], color=color, linewidth=2, label=label))
    grey = "0.35"
    handles.append(Line2D([], [], color=grey, linestyle="-", label="solid: gain_fan_in"))
    if any_fan_out:
        handles.append(Line2D([], [], color=grey, linestyle="--", label="dashed: gain_fan_out"))
    if any_pytorch:
        handles.append(Line2D([], [], color=grey, linestyle=":", label="dotted: torch calculate_gain"))
    _choose_scale(ax, "x", np.concatenate([c.q for c in curves]), ticker)
    _choose_scale(ax, "y", np.concatenate(plotted), ticker)
    ax.set_xlabel("input variance q")
    ax.set_ylabel("gain (std = gain / sqrt(fan))")
    title = "Variance-preserving gains against input variance"
    ax.set_title(title + (" (dotted: torch calculate_gain)" if any_pytorch else ""))
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(handles=handles, fontsize="small", ncol=1 if len(handles) <= 9 else 2)


def _names(activations: str | Activation | Sequence[str | Activation]) -> list:
    names = [activations] if isinstance(activations, str) or not isinstance(activations, Sequence) else \
        list(activations)
    if not names:
        raise GainDeriveError("plot needs at least one activation: a registry name or a formula in x")
    return names


def plot(activations: str | Activation | Sequence[str | Activation], variance: Any = DEFAULT_VARIANCE, *,
         ax: Axes | None = None, params: dict[str, Any] | None = None) -> Figure:
    """Draw gain_fan_in (solid) and gain_fan_out (dashed) against q, with PyTorch's constants (dotted).

    gain_fan_in = sqrt(q / E[f(z)^2]) and gain_fan_out = 1 / sqrt(E[f'(z)^2]), z ~ N(0, q) (He et al. 2015).
    A dotted line marks ``torch.nn.init.calculate_gain``'s constant, for the activations its table names, at
    their default parameters (leaky_relu at any slope). Where E[f'(z)^2] is infinite (f jumps), gain_fan_out is
    0 at every q: the curve is left out and the legend says why.

    Args:
        activations: one or more registry names, formulas in ``x``, or :class:`Activation` objects.
        variance: the q grid, as for :func:`gainderive.table`. At most ``limit("plot_points")`` points.
        ax: matplotlib Axes to draw on; by default a new 900x600-pixel figure.
        params: activation parameters applied to every activation, e.g. ``{"alpha": 2}``.

    Returns:
        The matplotlib Figure (``ax.figure`` when ``ax`` is given). It is not registered with pyplot; show it
        with ``display(fig)`` in a notebook or save it with ``fig.savefig``.
    """
    names = _names(activations)
    new_figure, ticker = _matplotlib()
    q = _grid(variance)
    curves = _gain_curves(names, q, dict(params or {}))
    if ax is None:
        fig = new_figure(figsize=(9, 6), dpi=100, layout="tight")
        ax = fig.subplots()
    _draw_gains(ax, curves, ticker)
    return ax.figure


def _pixels(size: Any) -> tuple[int, int]:
    """(width, height) as ints in 100..8000, or a one-line error."""
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError):
        raise GainDeriveError(f"plot size must be (width, height) in pixels, e.g. (900, 600); got {size!r}") \
            from None
    if not (100 <= width <= 8000 and 100 <= height <= 8000):
        raise GainDeriveError(f"plot size {width}x{height} out of range; accepted: 100..8000 pixels per side")
    return width, height


def plot_gains(activations: str | Sequence[str | Activation], output: str | os.PathLike, *,
               variance: Any = DEFAULT_VARIANCE, size: tuple[int, int] = (900, 600),
               params: dict[str, Any] | None = None) -> None:
    """Draw :func:`plot` into the file ``output`` (.png, .pdf or .svg), ``size`` = (width, height) in pixels.

    Everything that can be refused is refused before any moment is computed: the destination, the extension,
    the size, the number of q, a missing matplotlib.
    """
    names = _names(activations)
    new_figure, ticker = _matplotlib()
    fmt = check_output(output)
    width, height = _pixels(size)
    q = _grid(variance)
    curves = _gain_curves(names, q, dict(params or {}))
    dpi = 100
    fig = new_figure(figsize=(width / dpi, height / dpi), dpi=dpi, layout="tight")
    _draw_gains(fig.subplots(), curves, ticker)
    _save(fig, output, fmt, dpi)


def plot_propagation(activation: str, runs: dict, output: str | os.PathLike) -> None:
    """Per-layer E[x_l^2] (forward) and E[grad_l^2] (backward) for each gain; log axes where they drift > 10x."""
    new_figure, ticker = _matplotlib()
    fmt = check_output(output)
    fig = new_figure(figsize=(11, 4.5), dpi=100, layout="tight")
    ax1, ax2 = fig.subplots(1, 2)
    for label, run in runs.items():
        ax1.plot(run.forward, label=f"{label} (gain {run.gain:.4g})")
        ax2.plot(run.backward, label=f"{label} (gain {run.gain:.4g})")
    name = _shorten(activation)
    for ax, title, side in ((ax1, "forward: E[x_l^2]", "forward"), (ax2, "backward: E[grad_l^2]", "backward")):
        _choose_scale(ax, "y", np.concatenate([np.asarray(getattr(r, side), dtype=float) for r in runs.values()]),
                      ticker)
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))  # layers are whole numbers
        ax.set_xlabel("layer")
        ax.set_title(f"{name}: {title}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    _save(fig, output, fmt)


def plot_critical_line(activation: str, points: Sequence, output: str | os.PathLike) -> None:
    """The edge of chaos chi_1 = 1 in the (sigma_b^2, sigma_w^2) plane (Schoenholz et al. 2017)."""
    new_figure, _ = _matplotlib()
    fmt = check_output(output)
    if not points:
        raise GainDeriveError(f"{activation} has no critical point over the requested sigma_b^2: nothing to plot")
    fig = new_figure(figsize=(7, 5), dpi=100, layout="tight")
    ax = fig.subplots()
    sb = [p.bias_variance for p in points]
    sw = [p.weight_variance for p in points]
    ax.plot(sb, sw, "o-" if len(points) < 30 else "-", color="C0", label="chi_1 = 1 (edge of chaos)")
    top = max(sw) * 1.25
    ax.fill_between(sb, sw, top, color="C3", alpha=0.12, label="chaotic: chi_1 > 1")
    ax.fill_between(sb, 0, sw, color="C2", alpha=0.12, label="ordered: chi_1 < 1")
    ax.set_ylim(0, top)
    ax.set_xlabel("bias variance sigma_b^2")
    ax.set_ylabel("weight variance sigma_w^2")
    name = _shorten(activation)
    ax.set_title(f"{name}: critical line (Schoenholz et al. 2017)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    _save(fig, output, fmt)
