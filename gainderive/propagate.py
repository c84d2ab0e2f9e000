r"""Depth check: push Gaussian inputs through random numpy MLPs and watch the signal, forward and backward.

Layer l of a square MLP of width n computes x_{l+1} = W_l f(x_l), with W_l drawn as :mod:`gainderive.init`
draws it (``normal``, ``uniform``, ``truncated_normal`` or ``orthogonal``) with std = gain / sqrt(n).  The
input is x_0 ~ N(0, q); the gradient fed in at the output is g_L ~ N(0, 1) and flows back as
g_l = (g_{l+1} W_l) * f'(x_l).  With the derived gain, E[x_l^2] stays at q (forward, mode ``fan_in``) and the
gradient's second moment stays put (backward, mode ``fan_out``); with a gain that is exact only at another q
(PyTorch's tanh 5/3, selu 3/4) the signal drifts to that other q (see docs/variance_propagation.md).

**Bounded by construction.**  Every size is an integer >= 1 within its limit in :mod:`gainderive.limits`
(``depth``, ``width``, ``batch``, ``networks`` and the total ``propagate_work`` = depth x networks x batch x
width^2 multiply-adds), and the memory a run needs is estimated and refused above ~1 GB, all before the
first draw.  Networks run one after another and only their per-layer sums are kept, so memory does not grow
with ``networks``; within a network it is O(width^2 + depth x batch x width): the backward sweep needs every
f'(x_l) (depth x batch x width numbers) but not every weight matrix.  Layer l's weights come from their own
generator, seeded by ``SeedSequence(seed, spawn_key=(network, 0, l))``, so the backward sweep regenerates
them bit for bit; the last layers' matrices, those the backward sweep needs first, are kept while they fit
in a fixed 128 MiB cache (all 50 layers of the default width 512), and only the others are drawn twice.

Where the time goes (measured on the 2-core reference machine): drawing a normal costs ~9 ns, as much as
~250 multiply-adds of the matrix products (~0.04 ns each on one core), so at the default batch of 64 the
draws dominate; the derived gain and the activation's numpy program are computed once per call, not per
network; and BLAS runs on one thread (:func:`_one_blas_thread`).  The default run (depth 50, width 512,
batch 64, 8 networks) takes 2-4 s (idle to busy machine); it took 20-45 s before, mostly OpenBLAS threads
spin-waiting for a core on the busy machine.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import GainDeriveError, VarianceError
from .limits import check_size

__all__ = ["DISTRIBUTIONS", "MODES", "Propagation", "estimated_memory", "propagate"]

MODES = ("fan_in", "fan_out", "fan_avg")
#: The weight distributions of :mod:`gainderive.init` that make sense for a square dense layer fed by f(x)
#: (looks_linear needs CReLU inputs, delta_orthogonal a convolution kernel).
DISTRIBUTIONS = ("normal", "uniform", "truncated_normal", "orthogonal")

# Weight matrices kept for the backward sweep (the last layers'); the others are regenerated from their seeds.
_WEIGHT_CACHE = 128 * 2**20
# Matrices alive at once while drawing one layer (the result and the sampler's temporaries): QR for
# orthogonal (the draw, Q, R and the scaled copy), a redraw mask and a rescaled copy for truncated_normal.
_MATRICES_IN_FLIGHT = {"normal": 2, "uniform": 2, "truncated_normal": 3, "orthogonal": 5}
# Measured cost of one normal draw and of one multiply-add (seconds), for the time estimate in a refusal.
_DRAW_SECONDS = 9e-9
_MULTIPLY_ADD_SECONDS = 4e-11


@dataclass(frozen=True)
class Propagation:
    """Per-layer pre-activation second moment (forward) and gradient second moment (backward), network-averaged.

    ``forward[l]`` is the mean of x_l^2 over units, batch and networks (l = 0 is the input, so it is ~q);
    ``backward[l]`` the mean of g_l^2 (l = depth is the N(0, 1) gradient fed in at the output).
    """

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


def _activation_and_derivative(act) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """f and f' as one numpy program per piece of f, dispatched on the breakpoints."""
    from .integrand import DF, F, integrand

    ig = integrand(act, {"f": F, "df": DF})
    cuts = np.asarray(ig.breakpoints)
    programs = ig.numpy_pieces

    def evaluate(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(programs) == 1:
            f, df = programs[0](x)
            return np.broadcast_to(f, x.shape).copy(), np.broadcast_to(df, x.shape).copy()
        f, df = np.empty_like(x), np.empty_like(x)
        which = np.searchsorted(cuts, x)
        for k, program in enumerate(programs):
            mask = which == k
            if mask.any():
                f[mask], df[mask] = program(x[mask])
        return f, df

    return evaluate


# (prefix, suffix) of OpenBLAS's thread-count functions: numpy's and scipy's wheels, then plain builds
_OPENBLAS_NAMES = (("scipy_openblas", "64_"), ("scipy_openblas", ""), ("openblas", "64_"), ("openblas", ""))


@contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Run OpenBLAS on one thread inside the block, restoring its setting after (a no-op where it is not found).

    The products here are small (batch x width by width x width: 64 x 512 x 512 by default), so a second BLAS
    thread gains little on an idle machine, and on a busy one its spin-waiting threads make the run 5-8 times
    slower (measured: the default CLI run 44 s instead of 9 s at load 7 on 2 cores; orthogonal 418 s).  The
    library is found the way threadpoolctl does it, without the dependency: a loaded shared object whose name
    contains "openblas" that exports ``*openblas_set_num_threads*``.
    """
    controls = []
    try:
        with open("/proc/self/maps") as maps:  # Linux; elsewhere nothing is changed
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line})
    except OSError:
        paths = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)  # already loaded: this only returns its handle
        except OSError:
            continue
        for prefix, suffix in _OPENBLAS_NAMES:
            setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            if setter is not None and getter is not None:
                controls.append((setter, int(getter())))
                setter(1)
                break
    try:
        yield
    finally:
        for setter, threads in controls:
            setter(threads)


def _positive_size(name: str, value: Any) -> int:
    """``value`` as an int if it is an integer >= 1 within limit ``name``; a one-line error otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise GainDeriveError(f"{name} must be an integer >= 1, got {value!r}")
    return check_size(name, int(value))


def estimated_memory(depth: int, width: int, batch: int, distribution: str = "normal") -> int:
    """Bytes of the arrays one run holds at its peak: cached and in-flight weights, every f'(x_l), a few batches."""
    matrix = 8 * width * width
    cached = min(depth, _WEIGHT_CACHE // matrix)
    return (matrix * (cached + _MATRICES_IN_FLIGHT.get(distribution, 5))
            + 8 * batch * width * (depth + 8))  # f'(x_l) for every layer; x, f, g and their temporaries


def _check_sizes(depth, width, batch, networks, distribution) -> tuple[int, int, int, int]:
    from .backends.monte_carlo import _duration

    depth, width = _positive_size("depth", depth), _positive_size("width", width)
    batch, networks = _positive_size("batch", batch), _positive_size("networks", networks)
    matrix = width * width
    cached = min(depth, _WEIGHT_CACHE // (8 * matrix))
    draws = networks * matrix * (2 * depth - cached)  # every layer drawn once, the uncached ones twice
    seconds = draws * _DRAW_SECONDS + 2 * networks * depth * batch * matrix * _MULTIPLY_ADD_SECONDS
    # a normal draw costs about as much as 250 multiply-adds: at batch 1 the draws are the work
    check_size("propagate_work", networks * depth * matrix * (batch + 250), cost=f"about {_duration(seconds)} here")
    # with the ~200 MB the interpreter, numpy, scipy and sympy take, the default keeps the process under 1 GB
    need = estimated_memory(depth, width, batch, distribution)
    check_size("memory", need, cost=f"depth {depth:,}, width {width:,}, batch {batch:,}: every f'(x_l) is depth x "
               "batch x width numbers, a weight matrix width^2; reduce depth, batch or width, networks cost time only")
    return depth, width, batch, networks


def _weight_spec(act, gain, width: int, mode: str, distribution: str, q: float):
    """The :class:`gainderive.init.InitSpec` of one square layer: derived for ``mode``, or at the given gain."""
    from . import init

    if gain is None:
        return init.spec(act, (width, width), mode=mode, distribution=distribution, variance=q)
    if isinstance(gain, bool):
        raise GainDeriveError(f"gain must be a finite number > 0, got {gain!r}")
    try:
        g = float(gain)
    except (TypeError, ValueError):
        raise GainDeriveError(f"gain must be a finite number > 0, got {gain!r}") from None
    if not (math.isfinite(g) and g > 0):
        raise GainDeriveError(f"gain must be a finite number > 0, got {gain!r}")
    std = g / math.sqrt(width)
    bound = {"uniform": math.sqrt(3.0) * std,
             "truncated_normal": 2 * std / init.truncation_std(2.0)}.get(distribution)
    return init.InitSpec(act.name, (width, width), "torch", mode, distribution, q, width, width, g, std, bound,
                         "gain given; std = gain / sqrt(width)")


def propagate(activation: Any, *, gain: float | None = None, depth: int = 50, width: int = 512, batch: int = 64,
              networks: int = 8, variance: float = 1.0, seed: int = 0, mode: str = "fan_in",
              distribution: str = "normal", progress: Callable[[int, int], None] | None = None,
              **params: Any) -> Propagation:
    """Forward second moments E[x_l^2] and backward gradient second moments through ``depth`` square layers.

    ``gain`` defaults to the derived gain of ``mode`` at input variance q = ``variance`` (square layers, so
    fan_in = fan_out = width): fan_in sqrt(q / E[f^2]), fan_out 1 / sqrt(E[f'^2]), fan_avg Glorot's harmonic
    compromise as in :func:`gainderive.init.spec`.  ``distribution`` draws W as :func:`gainderive.init.sample`
    does, with std = gain / sqrt(width).  ``params`` are the activation's parameters.  The moments are averaged
    over ``networks`` independent weight draws: a single draw of a finite-width network is a random product of
    matrices whose log second moment spreads like a random walk (variance about 5 depth / width for ReLU, Hanin
    & Nica 2019), which would hide the expectation being checked.  ``progress(done, total)`` is called after
    every layer of every network, forward and backward (total = 2 x networks x depth); an exception raised
    there (KeyboardInterrupt) stops the run within one layer.

    Every size is checked before any work (see the module docstring); ``seed`` is an integer >= 0, and the
    same seed gives the same result bit for bit.
    """
    from .backends.monte_carlo import check_seed
    from .moments import check_variance, double_precision_message
    from .registry import activation as make_activation

    if mode not in MODES:
        raise GainDeriveError(f"unknown mode {mode!r}; accepted: {', '.join(MODES)}")
    if distribution not in DISTRIBUTIONS:
        raise GainDeriveError(f"distribution {distribution!r} does not apply to the depth check's square dense "
                              f"layers; accepted: {', '.join(DISTRIBUTIONS)}")
    depth, width, batch, networks = _check_sizes(depth, width, batch, networks, distribution)
    seed = check_seed(seed)
    try:
        q = check_variance(variance)
    except VarianceError as exc:  # the depth check runs in double precision: no high-precision hint
        raise VarianceError(double_precision_message(exc)) from None
    if np.ndim(q):
        raise GainDeriveError(f"propagate takes one input variance q, got {np.size(q)}")
    q = float(q)
    act = make_activation(activation, **params)
    spec = _weight_spec(act, gain, width, mode, distribution, q)
    evaluate = _activation_and_derivative(act)
    forward, backward = np.zeros(depth + 1), np.zeros(depth + 1)
    total = 2 * networks * depth
    with _one_blas_thread():
        for k in range(networks):
            def tick(layers_done: int, k=k) -> None:
                if progress is not None:
                    progress(2 * depth * k + layers_done, total)

            f_run, b_run = _one_network(evaluate, spec, depth, width, batch, q, seed, k, tick)
            forward += f_run
            backward += b_run
    return Propagation(float(spec.gain), forward / networks, backward / networks)


def _layer_rng(seed: int, network: int, *key: int) -> np.random.Generator:
    """The generator of one stream of one network: independent of every other, reproducible on its own."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(network, *key)))


def _one_network(evaluate, spec, depth: int, width: int, batch: int, q: float, seed: int, network: int,
                 tick: Callable[[int], None], *, cache_bytes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer mean of x_l^2 and of g_l^2 for one weight draw; weights beyond the cache are regenerated."""
    from .init import sample

    matrix = 8 * width * width
    cached = min(depth, (_WEIGHT_CACHE if cache_bytes is None else cache_bytes) // matrix)
    x = _layer_rng(seed, network, 1).normal(0.0, math.sqrt(q), (batch, width))
    derivatives = np.empty((depth, batch, width))
    kept: dict[int, np.ndarray] = {}
    forward = np.empty(depth + 1)
    forward[0] = np.mean(x * x)
    with np.errstate(over="ignore", invalid="ignore"):  # an exploding signal is reported as inf, not a warning
        for layer in range(depth):
            w = sample(spec, _layer_rng(seed, network, 0, layer))
            f, derivatives[layer] = evaluate(x)
            x = f @ w.T
            if layer >= depth - cached:
                kept[layer] = w
            forward[layer + 1] = np.mean(x * x)
            tick(layer + 1)
        del x, f, w
        grad = _layer_rng(seed, network, 2).standard_normal((batch, width))
        backward = np.empty(depth + 1)
        backward[depth] = np.mean(grad * grad)
        for layer in reversed(range(depth)):
            w = kept.pop(layer) if layer in kept else sample(spec, _layer_rng(seed, network, 0, layer))
            grad = (grad @ w) * derivatives[layer]
            backward[layer] = np.mean(grad * grad)
            tick(2 * depth - layer)
    return forward, backward
