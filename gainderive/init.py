r"""From a gain to a weight tensor: fans, modes and distributions (work in progress for issue #6).

std = gain / sqrt(fan) for the chosen mode, and the distribution with that standard deviation:

* ``fan_in`` / ``fan_out``: gain_fan_in = sqrt(q / E[f^2]) over fan_in, gain_fan_out = 1 / sqrt(E[f'^2]) over
  fan_out (docs/conventions.md);
* ``fan_avg``: Glorot's compromise with both moments, Var w = 2 / (fan_in E[f^2]/q + fan_out E[f'^2]): the
  harmonic mean of the two variances, which is 2 / (fan_in + fan_out) for the identity (Glorot & Bengio 2010).

Distributions: ``normal``; ``uniform`` on [-bound, bound] with bound = sqrt(3) std; ``truncated_normal`` at
±2 standard deviations of the underlying normal, rescaled so that the *truncated* variable has the target std
(the factor is derived, :func:`truncation_std`, and is TensorFlow's 0.87962566103423978); ``orthogonal``
(Saxe et al. 2014): rows or columns orthonormal, whichever are fewer, scaled by the gain; ``looks_linear``
(Balduzzi et al. 2017) for layers fed by CReLU = [relu(x), relu(-x)]: W = [W', -W'], so that at
initialisation the layer computes W'x exactly; ``delta_orthogonal`` (Xiao et al. 2018) for convolutions:
zero except the centre tap, which is an orthogonal matrix scaled by the gain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from .errors import GainDeriveError

__all__ = ["DISTRIBUTIONS", "InitSpec", "calculate_gain", "fans", "sample", "snippets", "spec", "truncation_std"]

LAYOUTS = ("torch", "tf")
MODES = ("fan_in", "fan_out", "fan_avg")
DISTRIBUTIONS = ("normal", "uniform", "truncated_normal", "orthogonal", "looks_linear", "delta_orthogonal")
_TORCH_LINEAR = {"linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}


def fans(shape: Sequence[int], layout: str = "torch", groups: int = 1) -> tuple[int, int]:
    """(fan_in, fan_out) of a dense or convolution kernel of any rank.

    ``torch`` layout is (out, in/groups, *kernel); ``tf`` is (*kernel, in/groups, out).  Each output unit
    sees in/groups * prod(kernel) inputs; each input unit feeds out/groups * prod(kernel) outputs -- for a
    depthwise convolution (groups = channels) that is prod(kernel), not channels * prod(kernel).
    """
    try:
        shape = tuple(shape)
    except TypeError:
        shape = None
    if shape is None:
        raise GainDeriveError("a weight shape is a sequence of positive integers, e.g. (64, 32, 3, 3)")
    if len(shape) < 2:
        raise GainDeriveError(f"a weight shape needs at least 2 dimensions (out, in, ...); got {shape}")
    if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s <= 0 for s in shape):
        raise GainDeriveError(f"shape sizes must be positive integers; got {shape}")
    if layout not in LAYOUTS:
        raise GainDeriveError(f"unknown layout {layout!r}; accepted: {', '.join(LAYOUTS)}")
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise GainDeriveError(f"groups must be a positive integer; got {groups!r}")
    if layout == "torch":
        out, per_group_in, kernel = shape[0], shape[1], shape[2:]
    else:
        out, per_group_in, kernel = shape[-1], shape[-2], shape[:-2]
    if out % groups:
        raise GainDeriveError(f"groups = {groups} does not divide the {out} output channels")
    receptive = math.prod(int(k) for k in kernel)  # Python ints: exact for any size, nothing is allocated
    return int(per_group_in) * receptive, (int(out) // groups) * receptive


@lru_cache(maxsize=16)
def truncation_std(bound: float = 2.0) -> float:
    """Standard deviation of N(0, 1) truncated to [-bound, bound]: sqrt(1 - 2 b phi(b) / (2 Phi(b) - 1)).

    Derived from the truncated normal's variance (Johnson, Kotz & Balakrishnan 1994, ch. 13); at b = 2
    it is 0.87962566103423978, the constant TensorFlow divides by.
    """
    import mpmath as mp

    with mp.workdps(30):
        b = mp.mpf(bound)
        return float(mp.sqrt(1 - 2 * b * mp.npdf(b) / (2 * mp.ncdf(b) - 1)))


def calculate_gain(nonlinearity: str, param: Any = None, *, variance: float = 1.0) -> float:
    """A drop-in for ``torch.nn.init.calculate_gain`` that returns the exact gain at input variance q.

    PyTorch's names (linear, conv*, sigmoid, tanh, relu, leaky_relu with ``param`` = negative_slope, selu)
    and any registry name or formula; the value is gain_fan_in = sqrt(q / E[f(z)^2]) at q = ``variance``.
    ``param`` may be any real number type and keeps its value: ``np.float32(0.2)``, ``Fraction(1, 5)``,
    ``Decimal("0.2")`` and ``"1/5"`` are all the slope 1/5 (a binary float means the shortest decimal that
    round-trips in its own type, as for every activation parameter); complex or non-finite values raise
    :class:`gainderive.errors.ParameterError`.
    """
    from .errors import ParameterError
    from .gains import gain

    if nonlinearity in _TORCH_LINEAR:
        return 1.0
    params: dict[str, Any] = {}
    if nonlinearity == "leaky_relu":
        params["negative_slope"] = 0.01 if param is None else param
    elif param is not None:
        raise ParameterError(f"param applies to leaky_relu only (its negative_slope); got param={param!r}")
    return float(gain(nonlinearity, variance, "fan_in", **params))


@dataclass(frozen=True)
class InitSpec:
    """How to initialise one weight tensor, and where each number came from."""

    activation: str
    shape: tuple[int, ...]
    layout: str
    mode: str
    distribution: str
    variance: float
    fan_in: int
    fan_out: int
    gain: float
    std: float
    bound: float | None
    how: str


def spec(activation: Any, shape: Sequence[int], *, mode: str = "fan_in", distribution: str = "normal",
         variance: float = 1.0, layout: str = "torch", groups: int = 1, **params: Any) -> InitSpec:
    """The std (and bound) that preserves the signal through a layer of this shape, with provenance.

    Modes ``fan_out`` and ``fan_avg`` need E[f'(z)^2] and raise :class:`GainDeriveError` naming the reason
    when it is infinite (sign(x), log|x|); ``fan_in`` works for those activations.
    """
    from .gains import gains, refuse_infinite_derivative
    from .moments import moments

    if mode not in MODES:
        raise GainDeriveError(f"unknown mode {mode!r}; accepted: {', '.join(MODES)}")
    if distribution not in DISTRIBUTIONS:
        raise GainDeriveError(f"unknown distribution {distribution!r}; accepted: {', '.join(DISTRIBUTIONS)}")
    fan_in, fan_out = fans(shape, layout, groups)
    m = moments(activation, variance, **params)
    if mode != "fan_in":  # fan_out and fan_avg scale by E[f'^2]: not when it is infinite (f jumps, f' singular)
        refuse_infinite_derivative(m, f'mode="{mode}"', 'mode="fan_in"')
    g = gains(m)
    if mode == "fan_in":
        gain, var_w = float(g.fan_in.value), float(g.fan_in.value) ** 2 / fan_in
        how = f"gain = sqrt(q / E[f^2]) ({m.second_moment.method}); std = gain / sqrt(fan_in)"
    elif mode == "fan_out":
        gain, var_w = float(g.fan_out.value), float(g.fan_out.value) ** 2 / fan_out
        how = f"gain = 1 / sqrt(E[f'^2]) ({m.derivative_second_moment.method}); std = gain / sqrt(fan_out)"
    else:
        second = float(m.second_moment.value) / float(m.q)
        derivative = float(m.derivative_second_moment.value)
        var_w = 2.0 / (fan_in * second + fan_out * derivative)
        gain = math.sqrt(var_w * (fan_in + fan_out) / 2)
        how = "Var w = 2 / (fan_in E[f^2]/q + fan_out E[f'^2]); gain relative to sqrt(2 / (fan_in + fan_out))"
    std = math.sqrt(var_w)
    bound = math.sqrt(3.0) * std if distribution == "uniform" else (2 * std / truncation_std(2.0)
                                                                   if distribution == "truncated_normal" else None)
    name = activation if isinstance(activation, str) else activation.name
    return InitSpec(name, tuple(int(s) for s in shape), layout, mode, distribution, float(variance), fan_in, fan_out,
                    gain, std, bound, how)


#: Bytes of one sampled tensor above which :func:`sample` refuses before allocating (1 GiB: 2^27 float64s).
SAMPLE_BYTES = 2**30


def sample(init: InitSpec, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """A weight tensor of ``init.shape`` drawn from ``init.distribution`` with standard deviation ``init.std``.

    A tensor beyond :data:`SAMPLE_BYTES` is refused with a :class:`gainderive.limits.LimitError` before
    anything is allocated (:func:`spec` alone allocates nothing, whatever the shape).
    """
    from .limits import LimitError

    shape = init.shape
    size = math.prod(shape)
    if 8 * size > SAMPLE_BYTES:
        raise LimitError(f"shape {shape}: {size:,} float64 weights ({8 * size / 2**30:.3g} GiB) exceed the "
                         f"{SAMPLE_BYTES / 2**30:g} GiB one sampled tensor may use; spec() and snippets() give the "
                         "std without sampling")
    rng = np.random.default_rng(rng)
    if init.distribution == "normal":
        out = rng.standard_normal(shape)  # the same draws as rng.normal(0, std), without its slower loop
        out *= init.std
        return out
    if init.distribution == "uniform":
        return rng.uniform(-init.bound, init.bound, shape)
    if init.distribution == "truncated_normal":
        scale = init.std / truncation_std(2.0)  # the underlying normal, before truncation at +-2 of it
        out = rng.standard_normal(shape)
        bad = np.abs(out) > 2
        while bad.any():  # redraw outside +-2: exact truncation, no clipping mass at the bounds
            out[bad] = rng.standard_normal(int(bad.sum()))
            bad = np.abs(out) > 2
        return out * scale
    if init.distribution == "looks_linear":
        if init.layout != "torch" or len(shape) != 2 or shape[1] % 2:
            raise GainDeriveError("looks_linear needs a torch-layout dense weight (out, 2*in) fed by CReLU")
        half = rng.normal(0.0, init.std, (shape[0], shape[1] // 2))
        return np.concatenate([half, -half], axis=1)
    if init.distribution == "delta_orthogonal":
        if init.layout != "torch" or len(shape) < 3 or any(k % 2 == 0 for k in shape[2:]) or shape[0] < shape[1]:
            raise GainDeriveError("delta_orthogonal needs a torch-layout convolution kernel (out >= in, in, *odd k)")
        centre = rng.standard_normal((shape[0], shape[1]))
        qmat, r = np.linalg.qr(centre)
        out = np.zeros(shape)
        out[(slice(None), slice(None), *(k // 2 for k in shape[2:]))] = init.gain * qmat * np.sign(np.diag(r))
        return out
    # orthogonal: a Haar-random orthonormal set of rows or columns, whichever are fewer
    rows = shape[0] if init.layout == "torch" else shape[-1]
    cols = int(np.prod(shape)) // rows
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    qmat, r = np.linalg.qr(a)
    qmat *= np.sign(np.diag(r))  # the sign fix that makes the distribution Haar (Mezzadri 2007)
    matrix = qmat if rows >= cols else qmat.T
    weights = init.gain * matrix  # Saxe et al. 2014: W = gain Q, so |W x| = gain |x| along the shorter side
    return weights.reshape(shape) if init.layout == "torch" else weights.T.reshape(shape)


def snippets(init: InitSpec) -> dict[str, str]:
    """One-line initialisations that reproduce ``init`` in torch, JAX and Keras (none of them is imported)."""
    std, bound = f"{init.std:.10g}", f"{(init.bound or 0):.10g}"
    underlying = f"{init.std / truncation_std(2.0):.10g}"
    if init.distribution == "normal":
        return {"torch": f"torch.nn.init.normal_(w, mean=0.0, std={std})",
                "jax": f"jax.nn.initializers.normal(stddev={std})",
                "keras": f"keras.initializers.RandomNormal(mean=0.0, stddev={std})"}
    if init.distribution == "uniform":
        return {"torch": f"torch.nn.init.uniform_(w, -{bound}, {bound})",
                "jax": "lambda key, shape, dtype=jnp.float32: "
                       f"jax.random.uniform(key, shape, dtype, -{bound}, {bound})",
                "keras": f"keras.initializers.RandomUniform(minval=-{bound}, maxval={bound})"}
    if init.distribution == "truncated_normal":
        # torch's a, b are absolute bounds; jax's truncated_normal(stddev) and Keras' TruncatedNormal take the
        # std of the normal before truncation at +-2 of it: that is std / 0.8796...
        return {"torch": f"torch.nn.init.trunc_normal_(w, mean=0.0, std={underlying}, a=-{bound}, b={bound})",
                "jax": f"jax.nn.initializers.truncated_normal(stddev={underlying})",
                "keras": f"keras.initializers.TruncatedNormal(mean=0.0, stddev={underlying})"}
    if init.distribution == "orthogonal":
        gain = f"{init.gain:.10g}"
        return {"torch": f"torch.nn.init.orthogonal_(w, gain={gain})",
                "jax": f"jax.nn.initializers.orthogonal(scale={gain})",
                "keras": f"keras.initializers.Orthogonal(gain={gain})"}
    if init.distribution == "delta_orthogonal":
        return {"jax": f"jax.nn.initializers.delta_orthogonal(scale={init.gain:.10g})",
                "note": "torch and Keras have no delta-orthogonal initialiser: use gainderive.init.sample(spec)"}
    return {"note": "looks-linear has no framework initialiser: use gainderive.init.sample(spec), W = [W', -W']"}
