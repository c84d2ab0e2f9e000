"""Depth check: push Gaussian inputs through a random numpy MLP and watch the signal (work in progress, #6).

Layer l: x_{l+1} = W_l f(x_l), W_l ~ N(0, gain^2 / width).  With the derived gain, E[x_l^2] stays at the
input variance q (forward) and the gradient's second moment stays put (backward, with fan_out's gain); with a
gain that is exact only at another q (PyTorch's tanh 5/3, selu 3/4) the signal drifts to that other q.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Propagation", "propagate"]


@dataclass(frozen=True)
class Propagation:
    """Per-layer pre-activation second moment (forward) and gradient second moment (backward)."""

    gain: float
    forward: np.ndarray
    backward: np.ndarray

    @property
    def forward_drift(self) -> float:
        """E[x^2] at the last layer over E[x^2] at the first: 1 means the forward signal is preserved."""
        return float(self.forward[-1] / self.forward[0])

    @property
    def backward_drift(self) -> float:
        """Gradient second moment at the input over that at the output."""
        return float(self.backward[0] / self.backward[-1])


def _activation_and_derivative(activation: Any):
    from .integrand import DF, F, integrand
    from .registry import activation as make_activation

    act = make_activation(activation)
    ig = integrand(act, {"f": F, "df": DF})
    cuts = np.asarray(ig.breakpoints)

    def evaluate(x: np.ndarray):
        f, df = np.empty_like(x), np.empty_like(x)
        which = np.searchsorted(cuts, x)
        for k, program in enumerate(ig.numpy_pieces):
            mask = which == k
            if mask.any():
                f[mask], df[mask] = program(x[mask])
        return f, df

    return evaluate


def propagate(activation: Any, *, gain: float | None = None, depth: int = 50, width: int = 512, batch: int = 64,
              networks: int = 8, variance: float = 1.0, seed: int = 0) -> Propagation:
    """Forward second moments E[x_l^2] and backward gradient second moments through ``depth`` layers.

    ``gain`` defaults to the derived gain_fan_in at ``variance`` (square layers: fan_in = fan_out = width).
    The moments are averaged over ``networks`` independent weight draws: a single draw of a finite-width
    network is a random product of matrices whose log second moment spreads like a random walk (variance
    about 5 depth / width for ReLU, Hanin & Nica 2019), which would hide the expectation being checked.
    """
    runs = [_one_network(activation, gain, depth, width, batch, variance, seed + k) for k in range(networks)]
    return Propagation(runs[0].gain, np.mean([r.forward for r in runs], axis=0),
                       np.mean([r.backward for r in runs], axis=0))


def _one_network(activation, gain, depth, width, batch, variance, seed) -> Propagation:
    from .errors import GainDeriveError
    from .gains import gain as derived_gain

    if depth < 1 or width < 1 or batch < 1:
        raise GainDeriveError("depth, width and batch must be positive integers")
    g = float(derived_gain(activation, variance)) if gain is None else float(gain)
    evaluate = _activation_and_derivative(activation)
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, np.sqrt(variance), (batch, width))
    weights, derivatives, forward = [], [], [float(np.mean(x * x))]
    for _ in range(depth):
        w = rng.normal(0.0, g / np.sqrt(width), (width, width))
        f, df = evaluate(x)
        x = f @ w.T
        weights.append(w)
        derivatives.append(df)
        forward.append(float(np.mean(x * x)))
    grad = rng.standard_normal((batch, width))
    backward = [float(np.mean(grad * grad))]
    for w, df in zip(reversed(weights), reversed(derivatives)):
        grad = (grad @ w) * df
        backward.append(float(np.mean(grad * grad)))
    return Propagation(g, np.array(forward), np.array(backward[::-1]))
