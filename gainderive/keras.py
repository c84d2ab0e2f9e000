r"""Keras 3 initialisers whose scale is derived from exact Gaussian moments (issue #14).

:class:`GainInitializer` is a ``keras.initializers.Initializer``: put it in any layer
(``keras.layers.Dense(256, activation="tanh", kernel_initializer=GainInitializer("tanh"))``), on any backend
(JAX, PyTorch, TensorFlow), and save and load the model -- it is registered for serialisation as
``"gainderive>GainInitializer"``.

For pre-activations z ~ N(0, q) (q = ``variance``) and the activation f that follows the layer, the weights
get std = gain / sqrt(fan) with

* ``fan_in``:  gain = sqrt(q / E[f(z)^2])  (forward signal; He et al. 2015 for ReLU),
* ``fan_out``: gain = 1 / sqrt(E[f'(z)^2])  (backward gradient),
* ``fan_avg``: Var w = 2 / (fan_in E[f^2]/q + fan_out E[f'^2])  (Glorot & Bengio 2010's compromise: it is
  2 / (fan_in + fan_out) for the identity),

computed by :func:`gainderive.init.std_for`.  For the identity and ReLU these are exactly Keras's
``VarianceScaling`` with scale 1 and 2 (``gain**2 = scale``), computed in the same float64 operations, and the
draws are Keras's own (the same ``keras.random`` calls with the same seed), so a seeded
``GainInitializer("relu", mode, distribution, seed=s)`` reproduces ``VarianceScaling(2.0, mode, distribution,
seed=s)`` bit for bit on every mode (tests/test_keras.py, JAX and PyTorch backends).

Keras does not tell an initialiser which layer it initialises (``__call__`` receives only ``shape`` and
``dtype``), so the fans follow from ``layout``:

================  ===========================  ==========================================================
layout            kernel shape                 layers
================  ===========================  ==========================================================
``tf``            (*k, in/groups, out)         Dense (in, out), Conv1D/2D/3D, EinsumDense of rank 2
``tf_depthwise``  (*k, in, multiplier)         DepthwiseConv1D/2D: fan_in = prod(k), fan_out = prod(k) m
``tf_transposed`` (*k, out, in)                Conv1DTranspose/2D/3D
================  ===========================  ==========================================================

A (3, 3, 32, 1) kernel is ambiguous -- a Conv2D from 32 channels to 1 or a depthwise 3x3 over 32 channels --
and the fans differ 32-fold, so a DepthwiseConv2D needs ``layout="tf_depthwise"`` (Keras's own
``VarianceScaling`` uses the Conv layout for it and gives std sqrt(1/288) where sqrt(1/9) preserves the signal).

Distributions (``distribution=``):

* ``truncated_normal`` (default, as Keras): N(0, s^2) cut at +-2 s, s = std / 0.87962566103423978 so that the
  truncated variable has the target std (:func:`gainderive.init.truncation_std`, Keras's constant);
* ``normal`` (also ``untruncated_normal``, Keras's name for it): N(0, std^2) -- note that Keras's
  ``VarianceScaling`` reads ``"normal"`` as *truncated*; here it is not;
* ``uniform``: U(-sqrt(3) std, sqrt(3) std);
* ``orthogonal`` (Saxe et al. 2014): the kernel flattened to (prod(shape[:-1]), shape[-1]), as Keras's
  ``Orthogonal`` does, has orthonormal rows or columns (whichever are fewer) times the gain, so every singular
  value is the gain; the gain is std * sqrt(n) with n the mode's fan (fan_in, fan_out or (fan_in + fan_out) / 2),
  as in :func:`gainderive.init.spec`.  For ``tf_depthwise`` each channel's (prod(k), multiplier) matrix is
  orthogonal on its own: the layer applies them separately, and one matrix over all channels (what
  ``keras.initializers.Orthogonal`` draws) would shrink each channel's map by sqrt(channels).

Seeds behave as in Keras 3's ``RandomNormal``/``VarianceScaling`` (``keras/src/initializers/
random_initializers.py``): an ``int`` gives the same values on every call; ``None`` draws an int seed once, at
construction, from Python's ``random`` (Keras's ``make_default_seed``, so ``keras.utils.set_random_seed`` makes
it reproducible) and then behaves like that int; a ``keras.random.SeedGenerator`` gives new values on every
call.  ``get_config`` stores the seed as given, so a clone of an unseeded initialiser draws a new seed.

Keras names that differ from gainderive's: Keras's ``gelu`` defaults to ``approximate=True`` -- that is
gainderive's ``"gelu_tanh"``; ``hard_sigmoid`` is ``"hardsigmoid"``, ``hard_silu``/``hard_swish`` are
``"hardswish"``; ``keras.activations.leaky_relu`` has negative_slope 0.2 and ``keras.layers.LeakyReLU`` 0.3,
where gainderive's default is torch's 0.01 -- pass ``negative_slope=`` explicitly.
"""

from __future__ import annotations

import math
import numbers
import operator
import random as python_random
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import keras

from .errors import GainDeriveError, ParameterError
from .init import fans, std_for, truncation_std

__all__ = ["DISTRIBUTIONS", "LAYOUTS", "GainInitializer"]

#: Kernel layouts of Keras layers (see the module docstring).
LAYOUTS = ("tf", "tf_depthwise", "tf_transposed")
#: Accepted distributions; ``untruncated_normal`` is Keras's name for ``normal``.
DISTRIBUTIONS = ("truncated_normal", "normal", "untruncated_normal", "uniform", "orthogonal")
_MODES = ("fan_in", "fan_out", "fan_avg")


def _json_safe(value: Any) -> Any:
    """An activation parameter as a JSON value that gainderive reads back as the same number.

    ``Fraction(1, 5)`` becomes ``"1/5"``, ``Decimal("0.2")`` ``"0.2"`` and ``np.float32(0.2)`` ``"0.2"``: gainderive
    parses such strings exactly, and reads a binary float as the shortest decimal that round-trips in its own
    type, so the saved model derives the same std.
    """
    if type(value) in (bool, int, float, str):
        return value
    if isinstance(value, (numbers.Real, Decimal)):  # Fraction, Decimal, numpy scalars
        return str(value)
    return value


def _keras_seed(seed: Any) -> tuple[Any, int | keras.random.SeedGenerator]:
    """(the seed as given, the seed the draws use), as Keras 3's ``RandomInitializer.__init__`` does."""
    if seed is None:
        # Keras's make_default_seed: one int per initialiser, from Python's global RNG
        return None, python_random.randint(1, int(1e9))
    if isinstance(seed, dict):
        seed = keras.saving.deserialize_keras_object(seed)  # a saved SeedGenerator
    if isinstance(seed, keras.random.SeedGenerator) or (isinstance(seed, int) and not isinstance(seed, bool)):
        return seed, seed
    raise ParameterError(f"seed must be None, an int or a keras.random.SeedGenerator; got {seed!r}")


@keras.saving.register_keras_serializable(package="gainderive")
class GainInitializer(keras.initializers.Initializer):
    """Variance-preserving weights for the activation that follows the layer, at input variance q.

    Args:
        nonlinearity: a gainderive registry name (``"relu"``, ``"gelu_tanh"``, ``"linear"`` ...) or a formula
            in x (``"x*sigmoid(1.702*x)"``).
        mode: ``"fan_in"``, ``"fan_out"`` or ``"fan_avg"``.
        distribution: ``"truncated_normal"``, ``"normal"`` (= ``"untruncated_normal"``), ``"uniform"`` or
            ``"orthogonal"``.
        variance: q, the variance of the layer's pre-activations the gain is derived at.
        seed: ``None``, an int or a ``keras.random.SeedGenerator``, with Keras's meaning (module docstring).
        layout: the kernel layout, ``"tf"``, ``"tf_depthwise"`` or ``"tf_transposed"`` -- the layer's kernel
            axes, unrelated to ``keras.distribution``'s tensor layouts.
        groups: a grouped convolution's ``groups`` (fan_out = out/groups * prod(k)).
        **params: the activation's parameters (``negative_slope=0.2``, ``alpha=1.5`` ...).

    Raises:
        gainderive.errors.GainDeriveError: at construction for an unknown activation, parameter, mode,
        distribution, layout or variance; when called, for a kernel of rank < 2 or a non-float dtype.
    """

    def __init__(self, nonlinearity: str = "linear", mode: str = "fan_in", distribution: str = "truncated_normal",
                 variance: float = 1.0, seed: int | keras.random.SeedGenerator | dict | None = None, *,
                 layout: str = "tf", groups: int = 1, **params: Any) -> None:
        if not isinstance(nonlinearity, str):
            raise ParameterError("nonlinearity must be a registry name or a formula string (it is saved with the "
                                 f"model); got {type(nonlinearity).__name__}")
        if mode not in _MODES:
            raise GainDeriveError(f"unknown mode {mode!r}; accepted: {', '.join(_MODES)}")
        if distribution not in DISTRIBUTIONS:
            raise GainDeriveError(f"unknown distribution {distribution!r}; accepted: {', '.join(DISTRIBUTIONS)}")
        if layout not in LAYOUTS:
            raise GainDeriveError(f"unknown layout {layout!r}; accepted: {', '.join(LAYOUTS)} (Keras kernels)")
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ParameterError(f"groups must be a positive integer; got {groups!r}")
        if groups > 1 and (distribution == "orthogonal" or layout != "tf"):
            raise ParameterError(f"groups = {groups} applies to the normal, truncated_normal and uniform "
                                 'distributions in layout "tf" (grouped Conv kernels) only')
        if isinstance(variance, bool) or not isinstance(variance, numbers.Real):
            raise ParameterError(f"variance must be a real number (q > 0); got {variance!r}")
        self.nonlinearity = nonlinearity
        self.mode = mode
        self.distribution = distribution
        self.variance = float(variance)
        self.layout = layout
        self.groups = groups
        self.params = dict(params)
        # fails now, not when a layer is built, for an unknown activation or parameter, a bad q, or fan_out /
        # fan_avg with an infinite E[f'^2]; std_for is cached, so the call is free later
        std_for(nonlinearity, 1, 1, mode=mode, variance=self.variance, **self.params)
        self._init_seed, self.seed = _keras_seed(seed)

    def std(self, shape: Sequence[int]) -> float:
        """The std of the entries ``__call__`` draws for ``shape`` (after truncation, for truncated_normal)."""
        shape = self._check_shape(shape)
        if self.distribution == "orthogonal":
            rows, cols = self._orthogonal_matrix(shape)
            return self._gain(shape) / math.sqrt(max(rows, cols))
        fan_in, fan_out = fans(shape, self.layout, self.groups)
        return std_for(self.nonlinearity, fan_in, fan_out, mode=self.mode, variance=self.variance, **self.params)

    def __call__(self, shape: Sequence[int], dtype: Any = None) -> Any:
        """A backend tensor of ``shape`` and ``dtype`` (default ``keras.config.floatx()``)."""
        dtype = keras.backend.standardize_dtype(dtype)
        if not keras.backend.is_float_dtype(dtype):
            raise ParameterError(f"GainInitializer draws floating-point weights; got dtype {dtype}")
        shape = self._check_shape(shape)
        if 0 in shape:  # nothing to draw: an empty tensor, as Keras's initialisers return (no fan to divide by)
            return keras.ops.zeros(shape, dtype=dtype)
        if self.distribution == "orthogonal":
            return self._orthogonal(shape, dtype)
        std = self.std(shape)
        if self.distribution == "truncated_normal":
            # Keras cuts at +-2 stddev of the underlying normal; the truncated variable's std is 0.8796... of it
            return keras.random.truncated_normal(shape, mean=0.0, stddev=std / truncation_std(2.0), dtype=dtype,
                                                 seed=self.seed)
        if self.distribution == "uniform":
            bound = math.sqrt(3.0) * std
            return keras.random.uniform(shape, minval=-bound, maxval=bound, dtype=dtype, seed=self.seed)
        return keras.random.normal(shape, mean=0.0, stddev=std, dtype=dtype, seed=self.seed)

    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments as JSON values; ``from_config`` (Keras's default) rebuilds the initialiser."""
        return {"nonlinearity": self.nonlinearity, "mode": self.mode, "distribution": self.distribution,
                "variance": self.variance, "seed": keras.saving.serialize_keras_object(self._init_seed),
                "layout": self.layout, "groups": self.groups,
                **{name: _json_safe(value) for name, value in self.params.items()}}

    def __repr__(self) -> str:
        params = "".join(f", {name}={value!r}" for name, value in self.params.items())
        return (f"GainInitializer({self.nonlinearity!r}, mode={self.mode!r}, distribution={self.distribution!r}, "
                f"variance={self.variance!r}, layout={self.layout!r}{params})")

    # -- internals ---------------------------------------------------------------------------------------------

    def _check_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        try:
            shape = tuple(operator.index(s) for s in shape)  # 3.0 or 3.5 is not a size: no silent int()
        except TypeError:
            raise ParameterError(f"shape must be a sequence of non-negative integers; got {shape!r}") from None
        if len(shape) < 2 or any(s < 0 for s in shape):
            raise ParameterError(f"GainInitializer initialises kernels of rank >= 2 ((in, out), (*k, in, out) ...); "
                                 f"got shape {shape} (a bias wants 'zeros')")
        return shape

    def _gain(self, shape: tuple[int, ...]) -> float:
        """The gain g with std = g / sqrt(n), n the mode's fan: the singular value of an orthogonal kernel."""
        if self.mode != "fan_avg":  # independent of the fans: read it off at fan 1, where std = gain exactly
            return std_for(self.nonlinearity, 1, 1, mode=self.mode, variance=self.variance, **self.params)
        fan_in, fan_out = fans(shape, self.layout, self.groups)
        std = std_for(self.nonlinearity, fan_in, fan_out, mode=self.mode, variance=self.variance, **self.params)
        return std * math.sqrt((fan_in + fan_out) / 2)

    def _orthogonal_matrix(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """(rows, cols) of the matrix that is made orthogonal (per channel for a depthwise kernel)."""
        if self.layout == "tf_depthwise":
            return math.prod(shape[:-2]), shape[-1]
        return math.prod(shape[:-1]), shape[-1]

    def _orthogonal(self, shape: tuple[int, ...], dtype: str) -> Any:
        """Saxe et al. 2014: Q from the QR of a Gaussian matrix, signs fixed by diag(R) so Q is Haar-distributed
        (Mezzadri 2007) -- keras.initializers.Orthogonal's algorithm and draws, times the derived gain."""
        ops = keras.ops
        # QR in half precision is unsupported or inaccurate on some backends: work in float32, return dtype
        work = "float32" if dtype in ("float16", "bfloat16") else dtype
        rows, cols = self._orthogonal_matrix(shape)
        batch = (shape[-2],) if self.layout == "tf_depthwise" else ()
        a = keras.random.normal((*batch, max(rows, cols), min(rows, cols)), seed=self.seed, dtype=work)
        q, r = ops.qr(a)
        q = q * ops.expand_dims(ops.sign(ops.diagonal(r, axis1=-2, axis2=-1)), -2)
        if rows < cols:
            q = ops.swapaxes(q, -1, -2)
        if batch:  # (channels, prod(k), multiplier) -> (*k, channels, multiplier)
            q = ops.transpose(q, (1, 0, 2))
        return ops.cast(self._gain(shape) * ops.reshape(q, shape), dtype)
