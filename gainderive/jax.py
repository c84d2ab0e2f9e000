r"""JAX / Flax initialisers backed by exact gains: ``init(key, shape, dtype) -> Array`` (issue #14).

``jax.nn.initializers.variance_scaling(scale, mode, distribution, in_axis, out_axis, batch_axis)`` draws weights
with Var w = scale / n, where n is fan_in, fan_out or their mean, and ``scale`` is a constant the user has to know
(2 for ReLU, He et al. 2015; 1 for a linear layer, Glorot & Bengio 2010; LeCun et al. 1998).  The initialisers here
take the activation instead and derive the variance from its Gaussian moments at pre-activation variance q
(docs/conventions.md):

* ``fan_in``:  Var w = q / (fan_in E[f(z)^2])             -- the forward signal keeps variance q;
* ``fan_out``: Var w = 1 / (fan_out E[f'(z)^2])           -- the backward signal keeps its variance;
* ``fan_avg``: Var w = 2 / (fan_in E[f^2]/q + fan_out E[f'^2])  -- Glorot's compromise with both moments, the
  harmonic mean of the two variances (2 / (fan_in + fan_out) for the identity);
* ``fan_geo_avg``: Var w = sqrt(Var_fan_in Var_fan_out), the geometric mean (JAX's scale / sqrt(fan_in fan_out)).

For ReLU (E[f^2] = q/2, E[f'^2] = 1/2) these are JAX's ``variance_scaling(2.0, mode, ...)``, for the identity its
``variance_scaling(1.0, mode, ...)``, and the draws are bit for bit JAX's for the same key: the fans are JAX's
(:func:`gainderive.init.fans_by_axes`: the receptive field is the product of the axes that are none of
``in_axis``, ``out_axis``, ``batch_axis``) and the sampling repeats JAX's arithmetic, in the requested dtype:

* ``normal``: N(0, 1) * sqrt(Var w);
* ``uniform``: U(-1, 1) * sqrt(3 Var w), since U(-b, b) has variance b^2 / 3;
* ``truncated_normal``: N(0, 1) truncated to [-2, 2], times sqrt(Var w) / 0.87962566103423978 -- the std of the
  truncated standard normal (:func:`gainderive.init.truncation_std`), so that the *truncated* draws have std
  sqrt(Var w), as in JAX and TensorFlow;
* ``orthogonal`` (Saxe et al. 2014): JAX's ``orthogonal(scale=gain, column_axis)``, a Haar-random matrix with
  orthonormal columns (or rows, whichever are fewer) times the gain, so its singular values all equal the gain and
  its entries have std gain / sqrt(max(rows, cols)).

The std is a Python float computed from the static shape when the initialiser is called (cached by
:func:`gainderive.init.std_for`: microseconds), never traced, so the initialisers work under ``jax.jit`` and as
Flax's ``nn.Dense(kernel_init=...)`` (kernel (in, out)) and ``nn.Conv(kernel_init=...)`` (kernel (*k, in, out)),
whose layouts JAX's defaults ``in_axis=-2, out_axis=-1`` describe.

>>> import jax
>>> from gainderive.jax import kaiming_normal
>>> w = kaiming_normal("gelu")(jax.random.key(0), (256, 128))   # std = gain_fan_in(gelu) / sqrt(256)

References: K. He et al., Delving deep into rectifiers, ICCV 2015 (arXiv:1502.01852); X. Glorot, Y. Bengio,
Understanding the difficulty of training deep feedforward neural networks, AISTATS 2010; A. Saxe, J. McClelland,
S. Ganguli, Exact solutions to the nonlinear dynamics of learning in deep linear networks, ICLR 2014
(arXiv:1312.6120).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from .errors import ParameterError
from .init import fans_by_axes, std_for, truncation_std

__all__ = [
    "DISTRIBUTIONS",
    "MODES",
    "Orthogonal",
    "VarianceScaling",
    "initializer",
    "kaiming_normal",
    "kaiming_uniform",
    "orthogonal",
    "xavier_normal",
    "xavier_uniform",
]

MODES = ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")
DISTRIBUTIONS = ("normal", "uniform", "truncated_normal", "orthogonal")
Axes = int | Sequence[int]


def _axes(value: Any, what: str) -> int | tuple[int, ...]:
    """An axis or a tuple of axes (hashable, so that an initialiser can be a static jit argument)."""
    def is_axis(a: Any) -> bool:
        return isinstance(a, numbers.Integral) and not isinstance(a, bool)  # numpy ints too, not True/False

    if is_axis(value):
        return int(value)
    try:
        axes = tuple(value)
    except TypeError:
        axes = None
    if axes is None or not all(map(is_axis, axes)):
        raise ParameterError(f"{what} is an axis (int) or a sequence of axes; got {value!r}")
    return tuple(int(a) for a in axes)


def _real_float_dtype(dtype: Any) -> Any:
    """The dtype to draw in: JAX's default float (float32 unless jax_enable_x64) for None; real floats only."""
    if dtype is None:
        return jax.dtypes.canonicalize_dtype(jnp.float_)
    try:
        floating = jnp.issubdtype(dtype, jnp.floating)
    except TypeError:
        floating = False
    if not floating:
        # complex weights need other constants (JAX divides by 0.9531... for them); integers cannot hold a std
        raise ParameterError(f"dtype must be a real floating dtype (bfloat16, float16, float32, float64); "
                             f"got {dtype!r}")
    return dtype


def _sharding(out_sharding: Any) -> dict[str, Any]:
    # passed on only when given: jax.random's out_sharding keyword is recent, and Flax does not pass it
    return {} if out_sharding is None else {"out_sharding": out_sharding}


@dataclass(frozen=True)
class VarianceScaling:
    """``init(key, shape, dtype=None) -> Array`` with Var w from the activation's moments (module docstring).

    Build it with :func:`initializer` (or :func:`kaiming_normal` and friends), which check the arguments.
    """

    nonlinearity: Any
    mode: str
    distribution: str
    variance: float
    in_axis: int | tuple[int, ...]
    out_axis: int | tuple[int, ...]
    batch_axis: int | tuple[int, ...]
    dtype: Any
    params: tuple[tuple[str, Any], ...]

    def fans(self, shape: Sequence[int]) -> tuple[int, int]:
        """(fan_in, fan_out) of a kernel of this shape, by JAX's axes convention."""
        return fans_by_axes(tuple(shape), self.in_axis, self.out_axis, self.batch_axis)

    def std(self, shape: Sequence[int]) -> float:
        """The standard deviation of the draws for a kernel of this shape: sqrt(Var w) for the mode."""
        return _std(self.nonlinearity, *self.fans(shape), self.mode, self.variance, self.params)

    def __call__(self, key: Any, shape: Sequence[int], dtype: Any = None, out_sharding: Any = None) -> jax.Array:
        shape = tuple(shape)
        dtype = _real_float_dtype(self.dtype if dtype is None else dtype)
        std = self.std(shape)  # a Python float from the static shape: nothing here is traced
        # JAX's own arithmetic (jax/_src/nn/initializers.py, variance_scaling): the variance is rounded to dtype
        # and its square root taken there, so that the draws equal JAX's bit for bit when the variance does
        variance = jnp.array(std * std, dtype=dtype)
        kwargs = _sharding(out_sharding)
        if self.distribution == "normal":
            return jax.random.normal(key, shape, dtype, **kwargs) * jnp.sqrt(variance)
        if self.distribution == "uniform":
            return jax.random.uniform(key, shape, dtype, -1, **kwargs) * jnp.sqrt(3 * variance)
        scale = jnp.sqrt(variance) / jnp.array(truncation_std(2.0), dtype)  # the normal before truncation
        return jax.random.truncated_normal(key, -2, 2, shape, dtype, **kwargs) * scale


@dataclass(frozen=True)
class Orthogonal:
    """``init(key, shape, dtype=None) -> Array``: JAX's orthogonal initialiser with the activation's gain as scale.

    The kernel, flattened to (prod of the other axes, shape[column_axis]), has orthonormal columns or rows
    (whichever are fewer) times ``gain`` (Saxe et al. 2014): all its singular values are the gain, and its entries
    have std gain / sqrt(max(rows, cols)).
    """

    nonlinearity: Any
    gain: float
    column_axis: int
    dtype: Any

    def _matrix(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """(rows, cols) of the flattened kernel: cols = shape[column_axis], rows the product of the other axes."""
        if len(shape) < 2 or not -len(shape) <= self.column_axis < len(shape):
            raise ParameterError(f"orthogonal needs a shape of at least 2 axes containing column_axis="
                                 f"{self.column_axis}; got {shape}")
        cols = shape[self.column_axis]
        return math.prod(shape[:self.column_axis % len(shape)] + shape[self.column_axis % len(shape) + 1:]), cols

    def std(self, shape: Sequence[int]) -> float:
        """The root mean square of the entries: gain / sqrt(max(rows, cols)) of the flattened matrix."""
        rows, cols = self._matrix(tuple(shape))
        if rows * cols == 0:
            raise ParameterError(f"a shape with a zero-size axis has no entries, so no std; got {tuple(shape)}")
        return self.gain / math.sqrt(max(rows, cols))

    def __call__(self, key: Any, shape: Sequence[int], dtype: Any = None, out_sharding: Any = None) -> jax.Array:
        shape = tuple(shape)
        dtype = _real_float_dtype(self.dtype if dtype is None else dtype)
        self._matrix(shape)  # a one-line message for a bad column_axis; a zero-size shape gives JAX's empty zeros
        if jnp.finfo(dtype).bits < 32:  # JAX has no QR in half precision: float32's result, rounded (as torch, Keras)
            base = jax.nn.initializers.orthogonal(scale=self.gain, column_axis=self.column_axis, dtype=jnp.float32)
            return base(key, shape, jnp.float32, **_sharding(out_sharding)).astype(dtype)
        base = jax.nn.initializers.orthogonal(scale=self.gain, column_axis=self.column_axis, dtype=dtype)
        return base(key, shape, dtype, **_sharding(out_sharding))


def _std(nonlinearity: Any, fan_in: int, fan_out: int, mode: str, variance: float,
         params: tuple[tuple[str, Any], ...]) -> float:
    if mode == "fan_geo_avg":  # sqrt of the geometric mean of the two variances
        return math.sqrt(std_for(nonlinearity, fan_in, fan_out, mode="fan_in", variance=variance, **dict(params))
                         * std_for(nonlinearity, fan_in, fan_out, mode="fan_out", variance=variance, **dict(params)))
    return std_for(nonlinearity, fan_in, fan_out, mode=mode, variance=variance, **dict(params))


def initializer(nonlinearity: Any, *, mode: str = "fan_in", distribution: str = "truncated_normal",
                variance: float = 1.0, in_axis: Axes = -2, out_axis: Axes = -1, batch_axis: Axes = (),
                dtype: Any = None, **params: Any) -> VarianceScaling | Orthogonal:
    """A ``variance_scaling``-style initialiser whose variance comes from the activation's Gaussian moments.

    ``nonlinearity``: a registry name (``gainderive list``), a formula in ``x`` or an
    :class:`gainderive.Activation`; PyTorch's ``"linear"``/``"conv2d"``... mean the identity.  ``params`` are the
    activation's parameters (``negative_slope=0.2``), ``variance`` the pre-activation variance q the gain preserves.
    ``mode`` is one of :data:`MODES`, ``distribution`` one of :data:`DISTRIBUTIONS`; axes as in
    ``jax.nn.initializers.variance_scaling``.  For ``"orthogonal"`` the columns are ``out_axis`` (an int), the
    scale is the gain of ``mode`` (fan_in or fan_out) and ``batch_axis`` must be empty.

    Everything but the shape is checked here, so a bad name or parameter fails where the layer is defined, with
    a :class:`gainderive.errors.GainDeriveError`, not inside ``model.init``.
    """
    if mode not in MODES:
        raise ParameterError(f"unknown mode {mode!r}; accepted: {', '.join(MODES)}")
    if distribution not in DISTRIBUTIONS:
        raise ParameterError(f"unknown distribution {distribution!r}; accepted: {', '.join(DISTRIBUTIONS)}")
    if dtype is not None:
        _real_float_dtype(dtype)
    act = nonlinearity  # (std_for takes PyTorch's "linear", "conv2d"... as the identity)
    in_axis, out_axis, batch_axis = (_axes(in_axis, "in_axis"), _axes(out_axis, "out_axis"),
                                     _axes(batch_axis, "batch_axis"))
    if distribution == "orthogonal":
        if mode not in ("fan_in", "fan_out"):
            raise ParameterError(f"orthogonal takes mode 'fan_in' or 'fan_out' (its scale is a gain, independent "
                                 f"of the fans); got {mode!r}")
        if not isinstance(out_axis, int) or batch_axis != ():
            raise ParameterError(f"orthogonal needs one column axis (out_axis an int) and no batch_axis; got "
                                 f"out_axis={out_axis!r}, batch_axis={batch_axis!r}")
        return _orthogonal(act, mode, variance, out_axis, dtype, params)
    frozen = tuple(sorted(params.items()))
    # one evaluation now: an unknown activation, a bad parameter or an infinite E[f'^2] under fan_out fails here
    _std(act, 1, 1, mode, variance, frozen)
    return VarianceScaling(act, mode, distribution, variance, in_axis, out_axis, batch_axis, dtype, frozen)


def _orthogonal(act: Any, mode: str, variance: float, column_axis: Any, dtype: Any,
                params: dict[str, Any]) -> Orthogonal:
    if isinstance(column_axis, bool) or not isinstance(column_axis, numbers.Integral):
        raise ParameterError(f"column_axis is an int; got {column_axis!r}")
    column_axis = int(column_axis)
    # the gain itself (gain_fan_in or gain_fan_out, cached), not a std: the fans do not enter
    gain = std_for(act, 1, 1, mode=mode, variance=variance, **params)  # the std at fans of 1 is the gain
    return Orthogonal(act, float(gain), column_axis, dtype)


def kaiming_normal(nonlinearity: Any = "relu", *, mode: str = "fan_in", variance: float = 1.0, in_axis: Axes = -2,
                   out_axis: Axes = -1, batch_axis: Axes = (), dtype: Any = None, **params: Any) -> VarianceScaling:
    """He et al. (2015) for any activation: std = gain / sqrt(fan), truncated normal as ``jax.nn.initializers.
    kaiming_normal`` (= he_normal, variance_scaling(2.0, "fan_in", "truncated_normal")), which it equals for relu."""
    return initializer(nonlinearity, mode=mode, distribution="truncated_normal", variance=variance, in_axis=in_axis,
                       out_axis=out_axis, batch_axis=batch_axis, dtype=dtype, **params)


def kaiming_uniform(nonlinearity: Any = "relu", *, mode: str = "fan_in", variance: float = 1.0, in_axis: Axes = -2,
                    out_axis: Axes = -1, batch_axis: Axes = (), dtype: Any = None, **params: Any) -> VarianceScaling:
    """He et al. (2015) for any activation, uniform on [-sqrt(3) std, sqrt(3) std]: ``jax.nn.initializers.
    kaiming_uniform`` (= he_uniform, variance_scaling(2.0, "fan_in", "uniform")) for relu."""
    return initializer(nonlinearity, mode=mode, distribution="uniform", variance=variance, in_axis=in_axis,
                       out_axis=out_axis, batch_axis=batch_axis, dtype=dtype, **params)


def xavier_normal(nonlinearity: Any = "identity", *, variance: float = 1.0, in_axis: Axes = -2, out_axis: Axes = -1,
                  batch_axis: Axes = (), dtype: Any = None, **params: Any) -> VarianceScaling:
    """Glorot & Bengio (2010), mode fan_avg with both moments, truncated normal: ``jax.nn.initializers.
    xavier_normal`` (= glorot_normal, variance_scaling(1.0, "fan_avg", "truncated_normal")) for the identity."""
    return initializer(nonlinearity, mode="fan_avg", distribution="truncated_normal", variance=variance,
                       in_axis=in_axis, out_axis=out_axis, batch_axis=batch_axis, dtype=dtype, **params)


def xavier_uniform(nonlinearity: Any = "identity", *, variance: float = 1.0, in_axis: Axes = -2, out_axis: Axes = -1,
                   batch_axis: Axes = (), dtype: Any = None, **params: Any) -> VarianceScaling:
    """Glorot & Bengio (2010), mode fan_avg with both moments, uniform: ``jax.nn.initializers.xavier_uniform``
    (= glorot_uniform, variance_scaling(1.0, "fan_avg", "uniform")) for the identity."""
    return initializer(nonlinearity, mode="fan_avg", distribution="uniform", variance=variance, in_axis=in_axis,
                       out_axis=out_axis, batch_axis=batch_axis, dtype=dtype, **params)


def orthogonal(nonlinearity: Any = "identity", *, mode: str = "fan_in", variance: float = 1.0, column_axis: int = -1,
               dtype: Any = None, **params: Any) -> Orthogonal:
    """Saxe et al. (2014): ``jax.nn.initializers.orthogonal(scale=gain, column_axis)`` with the activation's gain
    (gain_fan_in = sqrt(q / E[f^2]) by default, gain_fan_out = 1 / sqrt(E[f'^2]) with ``mode="fan_out"``)."""
    if mode not in ("fan_in", "fan_out"):
        raise ParameterError(f"orthogonal takes mode 'fan_in' or 'fan_out' (its scale is a gain, independent of the "
                             f"fans); got {mode!r}")
    if dtype is not None:
        _real_float_dtype(dtype)
    return _orthogonal(nonlinearity, mode, variance, column_axis, dtype, params)

