r"""From a gain to a weight tensor: fans, modes, distributions and framework snippets (issues #6 and #14).

std = gain / sqrt(fan) for the chosen mode, and the distribution with that standard deviation:

* ``fan_in`` / ``fan_out``: gain_fan_in = sqrt(q / E[f^2]) over fan_in, gain_fan_out = 1 / sqrt(E[f'^2]) over
  fan_out (docs/conventions.md);
* ``fan_avg``: Glorot's compromise with both moments, Var w = 2 / (fan_in E[f^2]/q + fan_out E[f'^2]): the
  harmonic mean of the two variances, which is 2 / (fan_in + fan_out) for the identity (Glorot & Bengio 2010).

Fans come from the weight's layout (:data:`LAYOUTS`: torch, torch_transposed, tf, tf_transposed, tf_depthwise;
:func:`fans`) or from JAX's in/out/batch axes (:func:`fans_by_axes`).

Distributions: ``normal``; ``uniform`` on [-bound, bound] with bound = sqrt(3) std; ``truncated_normal`` at
±2 standard deviations of the underlying normal, rescaled so that the *truncated* variable has the target std
(the factor is derived, :func:`truncation_std`, and is TensorFlow's 0.87962566103423978); ``orthogonal``
(Saxe et al. 2014): rows or columns orthonormal, whichever are fewer, scaled by the gain; ``looks_linear``
(Balduzzi et al. 2017) for layers fed by CReLU = [relu(x), relu(-x)]: W = [W', -W'], so that at
initialisation the layer computes W'x exactly; ``delta_orthogonal`` (Xiao et al. 2018) for convolutions:
zero except the centre tap, which is an orthogonal matrix scaled by the gain.  The layouts each structured
distribution accepts are :data:`DISTRIBUTION_LAYOUTS`.

:func:`calculate_gain`, :func:`std_for` and :func:`spec` cache the moments of each (activation, q, parameters),
so a repeated call costs microseconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from .errors import GainDeriveError

__all__ = ["DISTRIBUTIONS", "DISTRIBUTION_LAYOUTS", "LAYOUTS", "MODES", "InitSpec", "calculate_gain", "fans",
           "fans_by_axes", "orthogonal_matrix_shape", "sample", "snippets", "spec", "std_for", "truncation_std"]

#: Weight layouts (``k`` the kernel's spatial sizes, ``in``/``out`` the layer's input/output channels):
#: torch (out, in/groups, *k) for nn.Linear and nn.ConvNd; torch_transposed (in, out/groups, *k) for
#: nn.ConvTransposeNd; tf (*k, in/groups, out) for Keras Dense/ConvND; tf_transposed (*k, out, in) for Keras
#: ConvNDTranspose; tf_depthwise (*k, in, multiplier) for Keras DepthwiseConvND.
LAYOUTS = ("torch", "torch_transposed", "tf", "tf_transposed", "tf_depthwise")
MODES = ("fan_in", "fan_out", "fan_avg")
DISTRIBUTIONS = ("normal", "uniform", "truncated_normal", "orthogonal", "looks_linear", "delta_orthogonal")
#: Layouts each structured distribution accepts (the others take every layout).
DISTRIBUTION_LAYOUTS = {"orthogonal": ("torch", "torch_transposed", "tf", "tf_transposed"),
                        "looks_linear": ("torch", "tf"), "delta_orthogonal": ("torch", "tf")}
#: PyTorch's names for a layer without activation (torch.nn.init.calculate_gain: gain 1): the identity.
TORCH_IDENTITY_NAMES = frozenset({"linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                           "conv_transpose3d"})
#: Cache sizes of the fast path: distinct (activation, q, parameters) triples remembered.
_CACHE_SIZE = 1024


def _check_shape(shape: Any) -> tuple[int, ...]:
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
    return tuple(int(s) for s in shape)


def _check_groups(groups: Any) -> int:
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise GainDeriveError(f"groups must be a positive integer; got {groups!r}")
    return int(groups)


def fans(shape: Sequence[int], layout: str = "torch", groups: int = 1) -> tuple[int, int]:
    """(fan_in, fan_out) of a dense or convolution kernel of any rank: the inputs each output unit sees and the
    outputs each input unit feeds (He et al. 2015, Glorot & Bengio 2010), at stride 1.

    With ``k`` the kernel's spatial sizes and ``groups`` convolution groups, fan_in = in/groups * prod(k) and
    fan_out = out/groups * prod(k) for every layout -- for a depthwise convolution (groups = channels) fan_out is
    prod(k), not channels * prod(k) as torch computes it (pytorch issue #23854).  Layouts:

    * ``torch`` (out, in/groups, *k): nn.Linear, nn.ConvNd;
    * ``torch_transposed`` (in, out/groups, *k): nn.ConvTransposeNd.  torch's own
      ``_calculate_fan_in_and_fan_out`` reads this weight as if it were ``torch`` layout, so its fan_in and
      fan_out are swapped (at groups = 1); here they are the layer's.  With stride s an output of a transposed
      convolution sees on average prod(k)/prod(s) taps per input channel; the stride-1 count is used;
    * ``tf`` (*k, in/groups, out): Keras Dense and ConvND;
    * ``tf_transposed`` (*k, out/groups, in): Keras ConvNDTranspose (Keras's ``compute_fans`` swaps these too);
    * ``tf_depthwise`` (*k, in, multiplier): Keras DepthwiseConvND, fan_in = prod(k), fan_out = prod(k) *
      multiplier (Keras's ``compute_fans`` counts in * prod(k) inputs, which no output sees); groups must be 1.
    """
    shape = _check_shape(shape)
    if layout not in LAYOUTS:
        raise GainDeriveError(f"unknown layout {layout!r}; accepted: {', '.join(LAYOUTS)}")
    groups = _check_groups(groups)
    if layout == "torch":
        out, per_group_in, kernel = shape[0], shape[1], shape[2:]
    elif layout == "tf":
        out, per_group_in, kernel = shape[-1], shape[-2], shape[:-2]
    elif layout == "tf_depthwise":
        if groups != 1:
            raise GainDeriveError(f"the tf_depthwise layout (*k, in, multiplier) has one group per input channel "
                                  f"already; groups must be 1, got {groups}")
        receptive = math.prod(shape[:-2])
        return receptive, receptive * shape[-1]
    else:  # transposed: the weight's leading channel axis is the layer's input
        channels_in, per_group_out, kernel = (shape[0], shape[1], shape[2:]) if layout == "torch_transposed" \
            else (shape[-1], shape[-2], shape[:-2])
        if channels_in % groups:
            raise GainDeriveError(f"groups = {groups} does not divide the {channels_in} input channels")
        receptive = math.prod(kernel)
        return (channels_in // groups) * receptive, per_group_out * receptive
    if out % groups:
        raise GainDeriveError(f"groups = {groups} does not divide the {out} output channels")
    receptive = math.prod(kernel)  # Python ints: exact for any size, nothing is allocated
    return per_group_in * receptive, (out // groups) * receptive


def _axes(axis: Any, rank: int, what: str) -> tuple[int, ...]:
    """``axis`` (an int or a sequence of ints, negative counting from the end) as sorted non-negative axes."""
    items = (axis,) if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool) else axis
    try:
        items = tuple(items)
    except TypeError:
        items = None
    if items is None or any(isinstance(a, bool) or not isinstance(a, (int, np.integer)) for a in items):
        raise GainDeriveError(f"{what} is an int or a tuple of ints (negative counts from the end); got {axis!r}")
    out = []
    for a in items:
        if not -rank <= a < rank:
            raise GainDeriveError(f"{what} = {axis!r}: axis {a} is out of range for a {rank}-dimensional shape "
                                  f"(accepted: {-rank} .. {rank - 1})")
        out.append(int(a) % rank)
    if len(set(out)) != len(out):
        raise GainDeriveError(f"{what} = {axis!r} names the same axis twice")
    return tuple(out)


def fans_by_axes(shape: Sequence[int], in_axis: int | Sequence[int] = -2, out_axis: int | Sequence[int] = -1,
                 batch_axis: int | Sequence[int] = ()) -> tuple[int, int]:
    """(fan_in, fan_out) by JAX's convention (``jax.nn.initializers.variance_scaling``).

    fan_in = prod(shape[in_axis]) * receptive and fan_out = prod(shape[out_axis]) * receptive, where the receptive
    field is the product of every axis that is none of ``in_axis``, ``out_axis`` and ``batch_axis`` (each an int
    or a tuple of ints, negative counting from the end; ``batch_axis`` axes are independent weight matrices and
    count in neither fan).  Axes out of range, or named twice, raise :class:`GainDeriveError` (JAX would index
    or double-count them silently).  Python ints: exact for any size.
    """
    shape = _check_shape(shape)
    rank = len(shape)
    ins, outs = _axes(in_axis, rank, "in_axis"), _axes(out_axis, rank, "out_axis")
    batch = _axes(batch_axis, rank, "batch_axis")
    for (name_a, a), (name_b, b) in ((("in_axis", ins), ("out_axis", outs)), (("in_axis", ins), ("batch_axis", batch)),
                                     (("out_axis", outs), ("batch_axis", batch))):
        if set(a) & set(b):
            raise GainDeriveError(f"{name_a} and {name_b} overlap at axis {min(set(a) & set(b))} of shape {shape}; "
                                  "each axis is an input, an output, a batch or a receptive-field axis")
    if not ins or not outs:
        raise GainDeriveError(f"in_axis and out_axis each name at least one axis; got in_axis={in_axis!r}, "
                              f"out_axis={out_axis!r}")
    named = set(ins) | set(outs) | set(batch)
    receptive = math.prod(shape[i] for i in range(rank) if i not in named)
    return math.prod(shape[i] for i in ins) * receptive, math.prod(shape[i] for i in outs) * receptive


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


@dataclass(frozen=True)
class _Derived:
    """What spec() needs from the moments of one (activation, q, parameters): computed once, then cached."""

    name: str
    q: float
    second: float  # E[f(z)^2]
    derivative: float  # E[f'(z)^2], inf when f jumps
    gain_fan_in: float
    gain_fan_out: float
    method_fan_in: str
    method_fan_out: str
    moments: Any  # the Moments, for refuse_infinite_derivative's message


def _derive(activation: Any, variance: Any, params: dict[str, Any]) -> _Derived:
    from .gains import gains
    from .moments import check_variance, moments

    q = check_variance(variance)
    if np.ndim(q):
        raise GainDeriveError("an initialiser takes one variance q (a number > 0), not an array of them")
    m = moments(activation, q, **params)  # q validated to a double: what the double-precision backend uses
    g = gains(m)
    return _Derived(m.activation.name, float(m.q), float(m.second_moment.value),
                    float(m.derivative_second_moment.value), float(g.fan_in.value), float(g.fan_out.value),
                    m.second_moment.method, m.derivative_second_moment.method, m)


@lru_cache(maxsize=_CACHE_SIZE, typed=True)
def _derive_cached(activation: Any, variance: Any, items: tuple, types: tuple) -> _Derived:
    return _derive(activation, variance, dict(items))


def _derived(activation: Any, variance: Any, params: dict[str, Any]) -> _Derived:
    """The cached fast path: keyed by the activation (a name, a formula or an Activation, which is hashable by
    identity and immutable), q and the parameters as a sorted tuple, each with its type -- True == 1 and
    Decimal("0.1") == 0.1 are equal keys but not the same parameter.  Unhashable values (arrays) are not cached;
    errors are never cached (lru_cache stores only returned values)."""
    items = tuple(sorted(params.items()))
    try:
        hash((activation, variance, items))
    except TypeError:
        return _derive(activation, variance, params)
    return _derive_cached(activation, variance, items, (type(activation), type(variance), *(type(v) for _, v in items)))


def _check_mode(mode: Any) -> None:
    if mode not in MODES:
        raise GainDeriveError(f"unknown mode {mode!r}; accepted: {', '.join(MODES)}")


def _var_w(d: _Derived, fan_in: int, fan_out: int, mode: str) -> float:
    """Var w for ``mode``: q / (fan_in E[f^2]), 1 / (fan_out E[f'^2]) or 2 / (fan_in E[f^2]/q + fan_out E[f'^2]).

    From the moments rather than gain^2 / fan: one rounding fewer, and the same operations as Keras's and JAX's
    VarianceScaling (scale / fan), so relu gives exactly 2 / fan as they do.
    """
    if mode != "fan_in":  # fan_out and fan_avg scale by E[f'^2]: not when it is infinite (f jumps, f' singular)
        from .gains import refuse_infinite_derivative

        if math.isinf(d.derivative):
            refuse_infinite_derivative(d.moments, f'mode="{mode}"', 'mode="fan_in"')
    if mode == "fan_in":
        return d.q / (fan_in * d.second)
    if mode == "fan_out":
        return 1.0 / (fan_out * d.derivative)
    return 2.0 / (fan_in * (d.second / d.q) + fan_out * d.derivative)


def std_for(activation: Any, fan_in: int, fan_out: int, *, mode: str = "fan_in", variance: Any = 1.0,
            **params: Any) -> float:
    """The weight standard deviation that preserves the signal through a layer with these fans.

    ``fan_in``: gain_fan_in / sqrt(fan_in) = sqrt(q / (fan_in E[f^2])) (He et al. 2015); ``fan_out``:
    gain_fan_out / sqrt(fan_out) = 1 / sqrt(fan_out E[f'^2]); ``fan_avg``: sqrt(2 / (fan_in E[f^2]/q + fan_out
    E[f'^2])), Glorot & Bengio's (2010) harmonic mean of the two variances.  ``activation`` is a registry name, a
    formula or an :class:`gainderive.activation.Activation` (PyTorch's ``"linear"``, ``"conv2d"``... are the
    identity); the moments are cached, so a repeated call costs
    microseconds.  Errors as :func:`spec`.
    """
    _check_mode(mode)
    if isinstance(activation, str) and activation in TORCH_IDENTITY_NAMES:
        activation = "identity"
    for name, fan in (("fan_in", fan_in), ("fan_out", fan_out)):
        if isinstance(fan, bool) or not isinstance(fan, (int, np.integer)) or fan <= 0:
            raise GainDeriveError(f"{name} must be a positive integer; got {fan!r}")
    return math.sqrt(_var_w(_derived(activation, variance, params), int(fan_in), int(fan_out), mode))


def calculate_gain(nonlinearity: Any, param: Any = None, *, variance: Any = 1.0, **params: Any) -> float:
    """A drop-in for ``torch.nn.init.calculate_gain`` that returns the exact gain at input variance q.

    Takes torch's calls exactly: torch's names (linear, conv1d/2d/3d, conv_transpose1d/2d/3d: 1; sigmoid, tanh,
    relu, leaky_relu, selu) and ``param`` the negative_slope of leaky_relu (None means torch's 0.01), IGNORED for
    every other name as torch ignores it (torch's own ``kaiming_*_`` call ``calculate_gain(nonlinearity, a)``
    with a = 0).  Also any registry name or formula, with its parameters as keywords (``calculate_gain("elu",
    alpha=0.5)``).  The value is gain_fan_in = sqrt(q / E[f(z)^2]) at q = ``variance`` (He et al. 2015): equal
    to torch's for linear, conv*, relu and leaky_relu; the exact gain, where torch's table has 1 (sigmoid),
    5/3 (tanh) and 3/4 (selu) found by trial (docs/pytorch_comparison.md).

    ``param`` may be any real number type and keeps its value: ``np.float32(0.2)``, ``Fraction(1, 5)``,
    ``Decimal("0.2")`` and ``"1/5"`` are all the slope 1/5 (a binary float means the shortest decimal that
    round-trips in its own type, as for every activation parameter); where torch raises ``ValueError`` (a bool,
    a non-number) this raises :class:`gainderive.errors.ParameterError`, a ``ValueError`` subclass, as it does for
    complex or non-finite values.  Repeated calls are cached (microseconds).
    """
    from .errors import ParameterError

    if isinstance(nonlinearity, str) and nonlinearity in TORCH_IDENTITY_NAMES:
        return 1.0
    if nonlinearity == "leaky_relu":
        if "negative_slope" in params and param is not None:
            raise ParameterError("leaky_relu's negative_slope given twice (param and negative_slope=); give one")
        params.setdefault("negative_slope", 0.01 if param is None else param)
    return _derived(nonlinearity, variance, params).gain_fan_in


@dataclass(frozen=True)
class InitSpec:
    """How to initialise one weight tensor, and where each number came from.

    ``std`` is the standard deviation of the entries :func:`sample` draws -- for ``orthogonal`` that is
    gain / sqrt(max(rows, cols)) of the flattened matrix, not gain / sqrt(fan).
    """

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


def orthogonal_matrix_shape(shape: Sequence[int], layout: str = "torch") -> tuple[int, int]:
    """(rows, cols) of the matrix an orthogonal initialiser makes orthonormal, as each framework flattens it.

    torch layouts: (shape[0], prod(shape[1:])), as ``torch.nn.init.orthogonal_`` and
    ``jax.nn.initializers.orthogonal(column_axis=0)`` (whose matrix is the transpose); tf layouts:
    (shape[-1], prod(shape[:-1])), the transpose of Keras's ``Orthogonal`` and JAX's default (prod(shape[:-1]),
    shape[-1]).  Either way the rows are the weight's leading (torch) or trailing (tf) channel axis.
    """
    shape = _check_shape(shape)
    rows = shape[0] if layout.startswith("torch") else shape[-1]
    return rows, math.prod(shape) // rows


def _check_structured(distribution: str, shape: tuple[int, ...], layout: str, groups: int) -> None:
    """Refuse early, in spec(), a shape the structured distribution cannot draw."""
    allowed = DISTRIBUTION_LAYOUTS.get(distribution)
    if allowed is None:
        return
    if layout not in allowed:
        raise GainDeriveError(f"distribution {distribution!r} takes the layouts {', '.join(allowed)}; got "
                              f"{layout!r}" + (" (a depthwise kernel's channels are separate: no matrix to make "
                                                "orthogonal)" if layout == "tf_depthwise" else ""))
    if distribution == "orthogonal":
        return
    if groups != 1:
        raise GainDeriveError(f"distribution {distribution!r} needs groups = 1; got {groups}")
    channels_in, channels_out, kernel = (shape[1], shape[0], shape[2:]) if layout == "torch" \
        else (shape[-2], shape[-1], shape[:-2])
    if distribution == "looks_linear" and channels_in % 2:
        raise GainDeriveError(f"looks_linear needs an even number of input channels (the layer is fed by CReLU = "
                              f"[relu(x), relu(-x)], so W = [W', -W']); got shape {shape} ({layout} layout)")
    if distribution == "delta_orthogonal" and (not kernel or any(k % 2 == 0 for k in kernel)
                                               or channels_out < channels_in):
        form = "(out, in, *k)" if layout == "torch" else "(*k, in, out)"
        raise GainDeriveError(f"delta_orthogonal needs a convolution kernel {form} with odd kernel sizes and out >= "
                              f"in (Xiao et al. 2018); got shape {shape} ({layout} layout)")


def spec(activation: Any, shape: Sequence[int], *, mode: str = "fan_in", distribution: str = "normal",
         variance: Any = 1.0, layout: str = "torch", groups: int = 1, **params: Any) -> InitSpec:
    """The std (and bound) that preserves the signal through a layer of this shape, with provenance.

    std = gain / sqrt(fan) for ``fan_in`` and ``fan_out``, sqrt(2 / (fan_in E[f^2]/q + fan_out E[f'^2])) for
    ``fan_avg`` (see :func:`std_for`), with the fans of :func:`fans` for ``layout`` and ``groups``.  Modes
    ``fan_out`` and ``fan_avg`` need E[f'(z)^2] and raise :class:`GainDeriveError` naming the reason when it is
    infinite (sign(x), log|x|); ``fan_in`` works for those activations.

    Structured distributions take the gain and report the std of what :func:`sample` draws: ``orthogonal``
    (Saxe et al. 2014; layouts torch, torch_transposed, tf, tf_transposed) W = gain Q with Q orthonormal along
    the shorter side of the flattened (rows, cols) matrix (:func:`orthogonal_matrix_shape`), so its entries have
    std gain / sqrt(max(rows, cols)); ``delta_orthogonal`` (Xiao et al. 2018; torch (out, in, *k) or tf (*k, in,
    out), odd k, out >= in) std gain / sqrt(out prod(k)); ``looks_linear`` (Balduzzi et al. 2017; torch or tf,
    an even number of input channels) the std of ``normal``.  Repeated calls are cached (microseconds).
    """
    _check_mode(mode)
    if distribution not in DISTRIBUTIONS:
        raise GainDeriveError(f"unknown distribution {distribution!r}; accepted: {', '.join(DISTRIBUTIONS)}")
    fan_in, fan_out = fans(shape, layout, groups)
    shape = _check_shape(shape)
    _check_structured(distribution, shape, layout, int(groups))
    d = _derived(activation, variance, params)
    var_w = _var_w(d, fan_in, fan_out, mode)
    if mode == "fan_in":
        gain, how = d.gain_fan_in, f"gain = sqrt(q / E[f^2]) ({d.method_fan_in})"
        std_how = "std = gain / sqrt(fan_in)"
    elif mode == "fan_out":
        gain, how = d.gain_fan_out, f"gain = 1 / sqrt(E[f'^2]) ({d.method_fan_out})"
        std_how = "std = gain / sqrt(fan_out)"
    else:
        gain = math.sqrt(var_w * (fan_in + fan_out) / 2)
        how = "Var w = 2 / (fan_in E[f^2]/q + fan_out E[f'^2]); gain relative to sqrt(2 / (fan_in + fan_out))"
        std_how = "std = sqrt(Var w)"
    std, bound = math.sqrt(var_w), None
    if distribution == "uniform":
        bound = math.sqrt(3.0) * std
    elif distribution == "truncated_normal":
        bound = 2 * std / truncation_std(2.0)
    elif distribution == "orthogonal":
        rows, cols = orthogonal_matrix_shape(shape, layout)
        std = gain / math.sqrt(max(rows, cols))
        std_how = (f"W = gain Q, Q orthonormal along the shorter side of the ({rows}, {cols}) matrix: entries' std "
                   "= gain / sqrt(max(rows, cols))")
    elif distribution == "delta_orthogonal":
        out, kernel = (shape[0], shape[2:]) if layout == "torch" else (shape[-1], shape[:-2])
        std = gain / math.sqrt(out * math.prod(kernel))
        std_how = "W = gain Q (out x in, orthonormal columns) at the centre tap only: entries' std = gain / sqrt(out k)"
    how = f"{how}; {std_how}"
    name = activation if isinstance(activation, str) else activation.name
    return InitSpec(name, shape, layout, mode, distribution, d.q, fan_in, fan_out, gain, std, bound, how)


#: Bytes of one sampled tensor above which :func:`sample` refuses before allocating (1 GiB: 2^27 float64s).
SAMPLE_BYTES = 2**30


def sample(init: InitSpec, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """A weight tensor of ``init.shape`` drawn from ``init.distribution`` with standard deviation ``init.std``.

    ``orthogonal`` flattens the weight as the frameworks do for ``init.layout`` (:func:`orthogonal_matrix_shape`);
    ``looks_linear`` splits the input-channel axis (axis 1 for torch, -2 for tf); ``delta_orthogonal`` puts the
    orthogonal matrix at the centre tap of the kernel axes (``init.gain`` scales both).  A tensor beyond
    :data:`SAMPLE_BYTES` is refused with a :class:`gainderive.limits.LimitError` before anything is allocated
    (:func:`spec` alone allocates nothing, whatever the shape).
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
    _check_structured(init.distribution, shape, init.layout, 1)
    torch_like = init.layout.startswith("torch")
    if init.distribution == "looks_linear":
        # W = [W', -W'] along the input channels: W' for relu(x), -W' for relu(-x)
        axis = 1 if torch_like else len(shape) - 2
        half = rng.normal(0.0, init.std, tuple(s // 2 if i == axis else s for i, s in enumerate(shape)))
        return np.concatenate([half, -half], axis=axis)
    if init.distribution == "delta_orthogonal":
        # the centre tap: (out, in) with orthonormal columns (torch), its transpose (in, out) for tf
        centre = rng.standard_normal((shape[0], shape[1]) if torch_like else (shape[-1], shape[-2]))
        qmat, r = np.linalg.qr(centre)
        qmat = init.gain * qmat * np.sign(np.diag(r))
        out = np.zeros(shape)
        if torch_like:
            out[(slice(None), slice(None), *(k // 2 for k in shape[2:]))] = qmat
        else:
            out[tuple(k // 2 for k in shape[:-2])] = qmat.T
        return out
    # orthogonal: a Haar-random orthonormal set of rows or columns, whichever are fewer, of the (rows, cols)
    # matrix each framework flattens the weight to (orthogonal_matrix_shape)
    rows, cols = orthogonal_matrix_shape(shape, init.layout)
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    qmat, r = np.linalg.qr(a)
    qmat *= np.sign(np.diag(r))  # the sign fix that makes the distribution Haar (Mezzadri 2007)
    matrix = qmat if rows >= cols else qmat.T
    weights = init.gain * matrix  # Saxe et al. 2014: W = gain Q, so |W x| = gain |x| along the shorter side
    return weights.reshape(shape) if torch_like else weights.T.reshape(shape)


def snippets(init: InitSpec) -> dict[str, str]:
    """One-line initialisations that reproduce ``init`` in torch, JAX and Keras (none of them is imported).

    ``torch`` lines act on a tensor ``w``; ``jax`` lines are ``init(key, shape, dtype)`` functions; ``keras`` lines
    are initialisers (or ``(shape, dtype)`` callables a Keras layer accepts).  For ``orthogonal`` each framework
    makes the same flattened matrix orthonormal as :func:`sample` (:func:`orthogonal_matrix_shape`): JAX with
    ``column_axis=0`` on torch layouts, Keras (which flattens to (-1, shape[-1])) and torch on the other
    framework's layout through a transposed draw -- so the entries' std is ``init.std`` and the singular values
    are all ``init.gain`` whatever the layout.  ``delta_orthogonal`` and ``looks_linear``, which torch and Keras
    lack, are written out from their orthogonal and normal initialisers.
    """
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
    gain, shape = f"{init.gain:.10g}", init.shape
    torch_like = init.layout.startswith("torch")
    if init.distribution == "orthogonal":
        # torch flattens to (shape[0], -1), Keras to (-1, shape[-1]), JAX to (-1, shape[column_axis]): each framework
        # is told (or given a transposed draw) so that its matrix is orthogonal_matrix_shape's, as sample() draws
        if torch_like:
            return {"torch": f"torch.nn.init.orthogonal_(w, gain={gain})",
                    "jax": f"jax.nn.initializers.orthogonal(scale={gain}, column_axis=0)",
                    "keras": f"lambda shape, dtype=None: keras.ops.moveaxis(keras.initializers.Orthogonal(gain={gain})"
                             "((*shape[1:], shape[0]), dtype), -1, 0)"}
        return {"torch": "with torch.no_grad(): w.copy_(torch.nn.init.orthogonal_(w.new_empty(w.shape[-1], "
                         f"w.numel() // w.shape[-1]), gain={gain}).T.reshape(w.shape))",
                "jax": f"jax.nn.initializers.orthogonal(scale={gain})",
                "keras": f"keras.initializers.Orthogonal(gain={gain})"}
    n = len(shape) - 2
    if init.distribution == "delta_orthogonal":
        centre = ", ".join(str(k // 2) for k in (shape[2:] if torch_like else shape[:-2]))
        pad = ", ".join(f"({k // 2}, {k // 2})" for k in (shape[2:] if torch_like else shape[:-2]))
        ones = ", ".join("1" for _ in range(n))
        if torch_like:
            jax = (f"lambda key, shape, dtype=jnp.float32: jnp.transpose(jax.nn.initializers.delta_orthogonal("
                   f"scale={gain})(key, (*shape[2:], shape[1], shape[0]), dtype), ({n + 1}, {n}, "
                   f"{', '.join(map(str, range(n)))}))")
            return {"torch": f"with torch.no_grad(): torch.nn.init.orthogonal_(w.zero_()[:, :, {centre}], gain={gain})",
                    "jax": jax if n <= 3 else "jax.nn.initializers.delta_orthogonal takes 1-3 kernel dimensions: use "
                                              "gainderive.init.sample(spec)",
                    "keras": f"lambda shape, dtype=None: keras.ops.pad(keras.ops.reshape(keras.initializers.Orthogonal("
                             f"gain={gain})(shape[:2], dtype), (*shape[:2], {ones})), ((0, 0), (0, 0), {pad}))"}
        return {"torch": f"with torch.no_grad(): torch.nn.init.orthogonal_(w.zero_()[{centre}], gain={gain})",
                "jax": f"jax.nn.initializers.delta_orthogonal(scale={gain})" if n <= 3
                       else "jax.nn.initializers.delta_orthogonal takes 1-3 kernel dimensions: use "
                            "gainderive.init.sample(spec)",
                "keras": f"lambda shape, dtype=None: keras.ops.pad(keras.ops.reshape(keras.initializers.Orthogonal("
                         f"gain={gain})(shape[-2:], dtype), ({ones}, *shape[-2:])), ({pad}, (0, 0), (0, 0)))"}
    # looks_linear: no framework has it; W = [W', -W'] along the input channels from one normal draw
    axis = 1 if torch_like else -2
    half = "(shape[0], shape[1] // 2, *shape[2:])" if torch_like else "(*shape[:-2], shape[-2] // 2, shape[-1])"
    return {"torch": f"with torch.no_grad(): w.copy_(torch.cat([h := torch.nn.init.normal_(w.new_empty("
                     f"{half.replace('shape', 'w.shape')}), std={std}), -h], dim={axis}))",
            "jax": f"lambda key, shape, dtype=jnp.float32: (lambda h: jnp.concatenate([h, -h], axis={axis}))("
                   f"{std} * jax.random.normal(key, {half}, dtype))",
            "keras": f"lambda shape, dtype=None: (lambda h: keras.ops.concatenate([h, -h], axis={axis}))("
                     f"keras.random.normal({half}, stddev={std}, dtype=dtype))"}
