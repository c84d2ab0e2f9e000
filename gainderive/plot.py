"""Plots of the gains against q (matplotlib is an optional extra: pip install 'gainderive[plot]')."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from .errors import GainDeriveError

__all__ = ["PYTORCH_GAINS", "plot_critical_line", "plot_gains", "plot_propagation"]

#: torch.nn.init.calculate_gain's table (PyTorch 2.x docs), for the activations it names.
PYTORCH_GAINS = {
    "identity": 1.0,
    "sigmoid": 1.0,
    "tanh": 5.0 / 3.0,
    "relu": math.sqrt(2.0),
    "leaky_relu": math.sqrt(2.0 / (1 + 0.01**2)),
    "selu": 3.0 / 4.0,
}


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or a one-line error naming the extra to install."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GainDeriveError("plotting needs matplotlib: pip install 'gainderive[plot]'") from None
    return plt


def _save(plt, fig, output: str | os.PathLike, dpi: int = 100) -> None:
    """Write the figure through a temporary file and a rename: never a half-written PNG."""
    target = Path(output)
    tmp = target.with_name(f".{target.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise GainDeriveError(f"cannot write {str(output)!r}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def plot_gains(activations: Sequence[str], output: str | os.PathLike, *, variance: str = "1e-3:1e3:241",
               size: tuple[int, int] = (900, 600)) -> None:
    """gain_fan_in (solid) and gain_fan_out (dashed) against q, with PyTorch's constant marked (dotted).

    Where E[f'(z)^2] is infinite (f jumps, or f' is not square-integrable) gain_fan_out is 0 at every q: its
    curve is left out and the legend says why.
    """
    plt = _pyplot()
    import numpy as np

    from .tables import table

    width, height = size
    if not (100 <= width <= 8000 and 100 <= height <= 8000):
        raise GainDeriveError(f"plot size {width}x{height} out of range; accepted: 100..8000 pixels per side")
    dpi = 100
    fig, ax = plt.subplots(figsize=(width / dpi, height / dpi), dpi=dpi)
    for k, name in enumerate(activations):
        t = table(name, variance)
        color = f"C{k % 10}"
        ax.plot(t.q, t.columns["gain_fan_in"], color=color, label=f"{t.activation.name}: fan_in")
        if np.all(np.isinf(t.columns["derivative_second_moment"])):
            reason = t.methods["derivative_second_moment"].removeprefix("infinite: ")
            ax.plot([], [], color=color, linestyle="none",
                    label=f"{t.activation.name}: no fan_out (E[f'^2] infinite: {reason})")
        else:
            fan_out = np.where(t.columns["gain_fan_out"] > 0, t.columns["gain_fan_out"], np.nan)  # 0 where infinite
            ax.plot(t.q, fan_out, color=color, linestyle="--", label=f"{t.activation.name}: fan_out")
        if t.activation.name in PYTORCH_GAINS:
            ax.axhline(PYTORCH_GAINS[t.activation.name], color=color, linestyle=":", linewidth=1,
                       label=f"{t.activation.name}: torch calculate_gain")
    ax.set_xscale("log")
    ax.set_yscale("log")  # saturating activations' gains grow like sqrt(q): a log axis keeps the rest readable
    ax.set_xlabel("input variance q")
    ax.set_ylabel("gain (std = gain / sqrt(fan))")
    ax.set_title("Variance-preserving gains against input variance (dotted: torch calculate_gain)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    _save(plt, fig, output, dpi)


def plot_propagation(activation: str, runs: dict, output: str | os.PathLike) -> None:
    """Per-layer E[x^2] (forward) and gradient second moment (backward) for each gain, on log axes."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=100)
    for label, run in runs.items():
        ax1.plot(run.forward, label=f"{label} (gain {run.gain:.4g})")
        ax2.plot(run.backward, label=f"{label} (gain {run.gain:.4g})")
    for ax, title in ((ax1, "forward: E[x_l^2]"), (ax2, "backward: E[grad_l^2]")):
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_title(f"{activation}: {title}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    _save(plt, fig, output)


def plot_critical_line(activation: str, points: Sequence, output: str | os.PathLike) -> None:
    """The edge of chaos in the (sigma_b^2, sigma_w^2) plane: ordered phase below, chaotic above."""
    plt = _pyplot()
    if not points:
        raise GainDeriveError(f"{activation} has no critical point over the requested sigma_b^2: nothing to plot")
    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    sb = [p.bias_variance for p in points]
    sw = [p.weight_variance for p in points]
    ax.plot(sb, sw, "o-" if len(points) < 30 else "-", color="C0", label="chi_1 = 1 (edge of chaos)")
    top = max(sw) * 1.25
    ax.fill_between(sb, sw, top, color="C3", alpha=0.12, label="chaotic: chi_1 > 1")
    ax.fill_between(sb, 0, sw, color="C2", alpha=0.12, label="ordered: chi_1 < 1")
    ax.set_ylim(0, top)
    ax.set_xlabel("bias variance sigma_b^2")
    ax.set_ylabel("weight variance sigma_w^2")
    ax.set_title(f"{activation}: critical line (Schoenholz et al. 2017)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    fig.tight_layout()
    _save(plt, fig, output)
