r"""PyTorch initialisers backed by exact gains (``pip install 'gainderive[torch]'``; torch is imported only here).

In-place initialisers with ``torch.nn.init``'s signatures and behaviour -- :func:`kaiming_normal_`,
:func:`kaiming_uniform_`, :func:`xavier_normal_`, :func:`xavier_uniform_`, :func:`trunc_normal_`,
:func:`orthogonal_` -- whose ``nonlinearity`` is any registry name or formula in ``x``, with ``variance=`` (the
input variance q) and the activation's parameters as keywords::

    kaiming_normal_(w, nonlinearity="elu", alpha=0.5)            # std = sqrt(q / (fan_in E[f(z)^2]))
    xavier_uniform_(w, nonlinearity="gelu")                       # Glorot's compromise with both moments

and :func:`init_`, which walks a model and initialises every Linear / ConvNd / ConvTransposeNd from the
activation that follows it.

The math (docs/conventions.md): for z ~ N(0, q) and the activation f,

* ``fan_in``:  std = gain_fan_in / sqrt(fan_in),  gain_fan_in = sqrt(q / E[f(z)^2]) (He et al. 2015);
* ``fan_out``: std = gain_fan_out / sqrt(fan_out), gain_fan_out = 1 / sqrt(E[f'(z)^2]) (He et al. 2015);
* ``fan_avg`` (the Xavier functions): Var w = 2 / (fan_in E[f^2]/q + fan_out E[f'^2]), Glorot & Bengio's
  (2010) harmonic mean of the two variances, 2 / (fan_in + fan_out) for the identity;
* orthogonal: W = gain Q with Q (semi-)orthogonal (Saxe et al. 2014).

What is torch's, exactly: the fans (``_calculate_fan_in_and_fan_out``: (out, in, *k)), ``a`` as leaky_relu's
negative slope and ignored for every other name (torch's ``kaiming_*_`` pass ``calculate_gain(nonlinearity,
a)``), the default ``leaky_relu`` with a = 0 (gain sqrt(2)), the samplers themselves (``Tensor.normal_``,
``Tensor.uniform_``, ``torch.nn.init.trunc_normal_`` and ``orthogonal_`` are called with the std computed as
torch computes it, gain / sqrt(fan)), so with the same generator state the draws are torch's bit for bit
wherever the gain is the same (linear/conv*, relu, leaky_relu; for a leaky slope that is not a short decimal
gainderive's correctly rounded gain can differ from torch's by one ulp), the zero-element warning of
``kaiming_*_``, the errors for tensors of fewer than 2 dimensions (:class:`gainderive.errors.GainDeriveError`
is a ``ValueError``), dtype and device (filled in place under ``torch.no_grad()``; the tensor is returned).
What differs on purpose: sigmoid, tanh and selu get their exact gains at q, not torch's 1, 5/3 and 3/4.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 -- torch's own spelling
from torch import Tensor, nn

from .errors import GainDeriveError, ParameterError
from .init import MODES, fans, std_for, truncation_std
from .init import calculate_gain as _calculate_gain

__all__ = ["InitReport", "activation_of", "calculate_gain", "init_", "kaiming_normal_", "kaiming_uniform_",
           "orthogonal_", "trunc_normal_", "truncated_sigma", "xavier_normal_", "xavier_uniform_"]

#: torch.nn.init.calculate_gain's drop-in (torch's calls exactly, exact gains; gainderive.init.calculate_gain).
calculate_gain = _calculate_gain

_ZERO_ELEMENT = "Initializing zero-element tensors is a no-op"  # torch's own message, word for word


# -- the std of one tensor ------------------------------------------------------------------------------------------

def _mode(mode: Any, accepted: tuple[str, ...]) -> str:
    lowered = mode.lower() if isinstance(mode, str) else mode  # torch lower-cases the mode too
    if lowered not in accepted:
        raise GainDeriveError(f"unknown mode {mode!r}; accepted: {', '.join(accepted)}")
    return lowered


def _floating(tensor: Tensor, what: str) -> None:
    """Refuse what torch's samplers fail on deep inside (an integer or bool tensor has no normal or uniform)."""
    if not isinstance(tensor, Tensor):
        raise GainDeriveError(f"{what} fills a torch.Tensor in place; got {type(tensor).__name__}")
    if not (tensor.dtype.is_floating_point or tensor.dtype.is_complex):
        raise GainDeriveError(f"{what} fills floating-point tensors; got dtype {tensor.dtype}")


def _finite(value: Any, what: str, *, nonnegative: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or (nonnegative and number < 0):
        raise ParameterError(f"{what} must be a finite{' non-negative' if nonnegative else ''} number; got {value!r}")
    return number


def _zero_element(tensor: Tensor) -> bool:
    """torch's kaiming_*_ check, done before anything else (a 1-d empty tensor warns rather than raising)."""
    if 0 in tensor.shape:
        warnings.warn(_ZERO_ELEMENT, stacklevel=3)
        return True
    return False


def _gain(nonlinearity: Any, mode: str, variance: Any, params: dict[str, Any]) -> float:
    """gain_fan_in = sqrt(q / E[f^2]) or gain_fan_out = 1 / sqrt(E[f'^2]): the std for a fan of 1 (cached)."""
    return std_for(nonlinearity, 1, 1, mode=mode, variance=variance, **params)


def _kaiming_std(tensor: Tensor, a: Any, mode: Any, nonlinearity: Any, variance: Any, layout: str, groups: int,
                 params: dict[str, Any]) -> float:
    mode = _mode(mode, MODES)
    fan_in, fan_out = fans(tuple(tensor.shape), layout, groups)
    if nonlinearity == "leaky_relu" and a is not None:  # torch: calculate_gain(nonlinearity, a), a ignored elsewhere
        if "negative_slope" in params and a != 0:
            raise ParameterError(f"leaky_relu's slope given twice (a={a!r} and negative_slope="
                                 f"{params['negative_slope']!r}); give one")
        if isinstance(a, bool):
            raise ParameterError(f"a is leaky_relu's negative slope, a real number; got {a!r}")
        params = {"negative_slope": a, **params}
    if mode == "fan_avg":
        return std_for(nonlinearity, fan_in, fan_out, mode=mode, variance=variance, **params)
    # torch's order of operations, gain / sqrt(fan): the same std to the bit wherever the gain is torch's
    return _gain(nonlinearity, mode, variance, params) / math.sqrt(fan_in if mode == "fan_in" else fan_out)


def kaiming_normal_(tensor: Tensor, a: float = 0, mode: str = "fan_in", nonlinearity: Any = "leaky_relu",
                    generator: torch.Generator | None = None, *, variance: float = 1.0, layout: str = "torch",
                    groups: int = 1, **params: Any) -> Tensor:
    r"""Fill ``tensor`` in place from N(0, std^2), std = gain / sqrt(fan) (He et al. 2015), and return it.

    ``mode`` ``fan_in`` uses gain_fan_in = sqrt(q / E[f(z)^2]), ``fan_out`` gain_fan_out = 1 / sqrt(E[f'(z)^2])
    (both sqrt(2 / (1 + a^2)) for leaky_relu, as torch), ``fan_avg`` Var w = 2 / (fan_in E[f^2]/q + fan_out
    E[f'^2]); z ~ N(0, q), q = ``variance``.  ``nonlinearity`` is torch's name or any registry name or formula,
    with its parameters as keywords (``nonlinearity="elu", alpha=0.5``); ``a`` is leaky_relu's negative slope,
    ignored for every other name as torch ignores it.  ``layout``/``groups`` as :func:`gainderive.init.fans`
    (default torch's (out, in, *k) with groups = 1, torch's fans).  A zero-element tensor warns
    "Initializing zero-element tensors is a no-op" and is returned, as torch does.
    """
    _floating(tensor, "kaiming_normal_")
    if _zero_element(tensor):
        return tensor
    std = _kaiming_std(tensor, a, mode, nonlinearity, variance, layout, groups, params)
    with torch.no_grad():
        return tensor.normal_(0, std, generator=generator)


def kaiming_uniform_(tensor: Tensor, a: float = 0, mode: str = "fan_in", nonlinearity: Any = "leaky_relu",
                     generator: torch.Generator | None = None, *, variance: float = 1.0, layout: str = "torch",
                     groups: int = 1, **params: Any) -> Tensor:
    r"""Fill ``tensor`` in place from U(-bound, bound), bound = sqrt(3) std (U(-b, b) has variance b^2 / 3), with
    std as :func:`kaiming_normal_` (He et al. 2015), and return it.  Arguments and zero-element behaviour as there.
    """
    _floating(tensor, "kaiming_uniform_")
    if _zero_element(tensor):
        return tensor
    std = _kaiming_std(tensor, a, mode, nonlinearity, variance, layout, groups, params)
    bound = math.sqrt(3.0) * std
    with torch.no_grad():
        return tensor.uniform_(-bound, bound, generator=generator)


def _xavier_std(tensor: Tensor, gain: Any, nonlinearity: Any, variance: Any, layout: str, groups: int,
                params: dict[str, Any]) -> float:
    fan_in, fan_out = fans(tuple(tensor.shape), layout, groups)
    if nonlinearity is None:
        if params:
            raise ParameterError(f"activation parameters {sorted(params)} need a nonlinearity= to apply to")
        gain = 1.0 if gain is None else _finite(gain, "gain", nonnegative=True)
        return gain * math.sqrt(2.0 / float(fan_in + fan_out))  # torch's expression: its draws to the bit
    if gain is not None:
        raise ParameterError(f"give gain= or nonlinearity=, not both (gain={gain!r}, nonlinearity={nonlinearity!r}): "
                             "the gain is derived from the nonlinearity")
    return std_for(nonlinearity, fan_in, fan_out, mode="fan_avg", variance=variance, **params)


def xavier_normal_(tensor: Tensor, gain: float | None = None, generator: torch.Generator | None = None, *,
                   nonlinearity: Any = None, variance: float = 1.0, layout: str = "torch", groups: int = 1,
                   **params: Any) -> Tensor:
    r"""Fill ``tensor`` in place from N(0, std^2) by Glorot & Bengio (2010), and return it.

    With ``gain`` (default 1, linear) std = gain sqrt(2 / (fan_in + fan_out)), torch's; with ``nonlinearity``
    (a registry name or formula, parameters as keywords) std = sqrt(2 / (fan_in E[f^2]/q + fan_out E[f'^2])),
    the harmonic mean of the fan_in and fan_out variances, which is torch's formula for the identity.  A
    zero-element tensor warns and is returned (torch's kaiming behaviour; its xavier divides by zero for (0, 0)).
    """
    _floating(tensor, "xavier_normal_")
    if _zero_element(tensor):
        return tensor
    std = _xavier_std(tensor, gain, nonlinearity, variance, layout, groups, params)
    with torch.no_grad():
        return tensor.normal_(0.0, std, generator=generator)


def xavier_uniform_(tensor: Tensor, gain: float | None = None, generator: torch.Generator | None = None, *,
                    nonlinearity: Any = None, variance: float = 1.0, layout: str = "torch", groups: int = 1,
                    **params: Any) -> Tensor:
    r"""Fill ``tensor`` in place from U(-sqrt(3) std, sqrt(3) std), std as :func:`xavier_normal_`, and return it."""
    _floating(tensor, "xavier_uniform_")
    if _zero_element(tensor):
        return tensor
    std = _xavier_std(tensor, gain, nonlinearity, variance, layout, groups, params)
    bound = math.sqrt(3.0) * std
    with torch.no_grad():
        return tensor.uniform_(-bound, bound, generator=generator)


# -- truncated normal -----------------------------------------------------------------------------------------------

def _truncated_std(sigma: float, lo: float, hi: float) -> float:
    """Std of N(0, sigma^2) truncated to [lo, hi] (scipy's truncnorm, stable in both tails)."""
    from scipy.stats import truncnorm

    return sigma * float(truncnorm.std(lo / sigma, hi / sigma))


@lru_cache(maxsize=256)
def truncated_sigma(target: float, lo: float, hi: float) -> float:
    r"""The sigma of N(0, sigma^2) whose truncation to [lo, hi] (relative to the mean) has standard deviation
    ``target``.

    With alpha = lo / sigma, beta = hi / sigma and Z = Phi(beta) - Phi(alpha) the truncated variance is
    sigma^2 [1 + (alpha phi(alpha) - beta phi(beta)) / Z - ((phi(alpha) - phi(beta)) / Z)^2] (Johnson, Kotz &
    Balakrishnan 1994, ch. 13): below sigma^2 for every interval (truncating a log-concave density shrinks its
    variance), increasing in sigma and tending to (hi - lo)^2 / 12, the uniform's, as sigma -> infinity.  So a
    solution exists iff target < (hi - lo) / sqrt(12), and it is found by Brent's method on log sigma, bracketed
    by [target, 2^k target] (relative tolerance 1e-14).
    """
    from scipy.optimize import brentq

    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ParameterError(f"truncation bounds need a < b, both finite; got a={lo!r}, b={hi!r} (relative to mean)")
    limit = (hi - lo) / math.sqrt(12.0)
    if not 0 < target < limit:
        raise ParameterError(f"no normal truncated to [{lo:g}, {hi:g}] (relative to the mean) has std {target:g}: "
                             f"the truncated std is below (b - a)/sqrt(12) = {limit:g}, the uniform's; widen the "
                             "bounds or omit a, b (then +-2 sigma, the std corrected by 0.8796)")
    upper = target
    while _truncated_std(upper, lo, hi) < target:  # terminates: the std tends to limit > target
        upper *= 2.0
    if upper == target:
        return target  # bounds far outside: truncation changes nothing at double precision
    root = brentq(lambda t: _truncated_std(math.exp(t), lo, hi) - target, math.log(target), math.log(upper),
                  xtol=1e-15, rtol=1e-14)
    return math.exp(root)


def trunc_normal_(tensor: Tensor, mean: float = 0.0, std: float | None = None, a: float | None = None,
                  b: float | None = None, generator: torch.Generator | None = None, *, nonlinearity: Any = None,
                  mode: str = "fan_in", variance: float = 1.0, layout: str = "torch", groups: int = 1,
                  **params: Any) -> Tensor:
    r"""A truncated normal, torch's or with its std derived from ``nonlinearity``; fills ``tensor`` and returns it.

    Without ``nonlinearity`` this is ``torch.nn.init.trunc_normal_`` (std 1, absolute bounds a = -2, b = 2 by
    default; the same draws).  With ``nonlinearity`` the *truncated* variable gets the std of
    :func:`kaiming_normal_` for ``mode`` (``fan_avg``: Glorot's), target s, and

    * without ``a``, ``b``: the bounds are +-2 sigma about the mean and sigma = s / 0.87962566103423978, the std of
      N(0, 1) truncated to [-2, 2] (TensorFlow, Keras and JAX's convention; :func:`gainderive.init.truncation_std`);
    * with absolute ``a``, ``b`` (torch's meaning): sigma is solved (:func:`truncated_sigma`) so that N(mean,
      sigma^2) truncated to [a, b] has std s exactly; bounds too narrow for s are refused.

    ``std`` with ``nonlinearity`` is refused (the std is derived).  A zero-element tensor with ``nonlinearity``
    warns and is returned; without it, torch's behaviour.
    """
    _floating(tensor, "trunc_normal_")
    mean = _finite(mean, "mean")
    if nonlinearity is None:
        if params:
            raise ParameterError(f"activation parameters {sorted(params)} need a nonlinearity= to apply to")
        return torch.nn.init.trunc_normal_(tensor, mean, 1.0 if std is None else std, -2.0 if a is None else a,
                                           2.0 if b is None else b, generator=generator)
    if std is not None:
        raise ParameterError(f"give std= or nonlinearity=, not both (std={std!r}, nonlinearity={nonlinearity!r}): "
                             "the std is derived from the nonlinearity")
    if (a is None) != (b is None):
        raise ParameterError(f"give both bounds a and b (absolute) or neither (+-2 sigma); got a={a!r}, b={b!r}")
    if _zero_element(tensor):
        return tensor
    # no ``a`` here (a is a bound): leaky_relu's slope is negative_slope=, default 0.01 as calculate_gain's
    target = _kaiming_std(tensor, None, mode, nonlinearity, variance, layout, groups, params)
    if a is None:
        sigma = target / truncation_std(2.0)
        a, b = mean - 2 * sigma, mean + 2 * sigma
    else:
        sigma = truncated_sigma(target, _finite(a, "a") - mean, _finite(b, "b") - mean)
    return torch.nn.init.trunc_normal_(tensor, mean, sigma, a, b, generator=generator)


# -- orthogonal -----------------------------------------------------------------------------------------------------

def orthogonal_(tensor: Tensor, gain: float | None = None, generator: torch.Generator | None = None, *,
                nonlinearity: Any = None, mode: str = "fan_in", variance: float = 1.0, **params: Any) -> Tensor:
    r"""Fill ``tensor`` in place with gain Q, Q (semi-)orthogonal on the flattened (rows, prod(rest)) matrix
    (Saxe et al. 2014), and return it.

    ``gain`` (default 1) as torch, or derived from ``nonlinearity``: gain_fan_in = sqrt(q / E[f^2]) (``mode``
    ``fan_in``, the forward signal), gain_fan_out = 1 / sqrt(E[f'^2]) (``fan_out``) or sqrt(2 / (E[f^2]/q +
    E[f'^2])) (``fan_avg``).  The draws are ``torch.nn.init.orthogonal_``'s; float16/bfloat16 tensors (whose QR
    torch does not implement on CPU) get torch's float32 result, rounded.  Entry std: gain / sqrt(max(rows, cols)).
    Zero-element and meta tensors are returned unchanged, silently, as torch does.
    """
    _floating(tensor, "orthogonal_")
    if tensor.ndimension() < 2:
        raise GainDeriveError(f"orthogonal_ needs a tensor of 2 or more dimensions; got shape {tuple(tensor.shape)}")
    if nonlinearity is None:
        if params:
            raise ParameterError(f"activation parameters {sorted(params)} need a nonlinearity= to apply to")
        gain = 1.0 if gain is None else _finite(gain, "gain")
    elif gain is not None:
        raise ParameterError(f"give gain= or nonlinearity=, not both (gain={gain!r}, nonlinearity={nonlinearity!r})")
    else:
        gain = _gain(nonlinearity, _mode(mode, MODES), variance, params)
    if tensor.numel() == 0 or tensor.is_meta:
        return tensor
    if tensor.dtype in (torch.float32, torch.float64, torch.complex64, torch.complex128):
        return torch.nn.init.orthogonal_(tensor, gain, generator)
    work = torch.empty(tensor.shape, dtype=torch.float32, device=tensor.device)
    torch.nn.init.orthogonal_(work, gain, generator)
    with torch.no_grad():
        tensor.copy_(work)
    return tensor


# -- activation modules and functions -> gainderive activations -----------------------------------------------------

@dataclass(frozen=True)
class _Mapped:
    name: str  # registry name
    params: tuple[tuple[str, Any], ...] = ()
    note: str = ""
    identity_above: float | None = None  # Softplus: torch returns x itself for x > threshold / beta


#: Modules between a layer and its activation that do not change which activation the layer feeds: reshapes,
#: dropout (its 1/(1-p) rescaling in training mode is not part of the gain) and normalisations (the layer's own
#: scale is normalised away; the activation after the norm is still the one it feeds).
_TRANSPARENT: tuple[type, ...] = (nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                                  nn.AlphaDropout, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
                                  nn.modules.instancenorm._InstanceNorm)
_LAYERS: tuple[type, ...] = (nn.Linear, nn.modules.conv._ConvNd)
#: Modules with weights that are not such layers: reported as left alone (embeddings, bilinear, attention, RNNs).
_OTHER_WEIGHTED: tuple[type, ...] = (nn.Embedding, nn.EmbeddingBag, nn.Bilinear, nn.MultiheadAttention,
                                     nn.RNNBase)
_SUPPORTED = ("ReLU, LeakyReLU, PReLU (one slope), ELU, CELU, SELU, GELU, SiLU, Mish, Softplus, Tanh, Sigmoid, "
              "Hardtanh, ReLU6, Hardswish, Hardsigmoid, Softsign, Identity, and their torch.nn.functional forms")


def _prelu(module: nn.PReLU) -> _Mapped | str:
    slopes = module.weight.detach()
    if slopes.numel() != 1 and not bool((slopes == slopes.reshape(-1)[0]).all()):
        return (f"PReLU with {slopes.numel()} different per-channel slopes (each channel has its own gain "
                "sqrt(2/(1+a_c^2))); use one slope, or initialise this layer yourself")
    slope = slopes.reshape(-1)[0].cpu()
    if slope.dtype not in (torch.float32, torch.float64):
        slope = slope.float()  # (half precisions: exactly representable in float32)
    # as numpy's float32 or float64: gainderive reads a binary float as the shortest decimal that round-trips in
    # its own type, so a float32 slope of 0.1 is the slope 1/10, as the user wrote it
    return _Mapped("prelu", (("a", slope.numpy()[()]),), "PReLU's current slope")


def _softplus(beta: Any, threshold: Any) -> _Mapped | str:
    # torch's Softplus is x itself where beta x > threshold: init_ checks that z ~ N(0, q) never gets there
    beta, threshold = float(beta), float(threshold)
    if not (beta > 0 and math.isfinite(beta) and math.isfinite(threshold)):
        return f"Softplus(beta={beta:g}, threshold={threshold:g}): beta must be finite and > 0"
    return _Mapped("softplus", (("beta", beta),), "", threshold / beta)


#: The relative change of a moment below which torch's switch to x in Softplus is ignored (none in double precision).
_SOFTPLUS_NEGLIGIBLE = 1e-17


def _softplus_switch(mapped: _Mapped, variance: float) -> tuple[str | None, str]:
    """(why a torch Softplus cannot be taken as softplus at z ~ N(0, q), or None; the report's note).

    torch returns x where beta x > t: there it differs from softplus(beta x)/beta by log1p(e^-(beta x))/beta <=
    log1p(e^-t)/beta, and its slope 1 from sigmoid(beta x) by sigmoid(-t) at most.  Weighted by the probability p
    of that region, those bound the change of E[f^2] (relative to its scale q) and of E[f'^2]: negligible below
    _SOFTPLUS_NEGLIGIBLE, else the module is not the function gainderive integrates.
    """
    above = mapped.identity_above
    beta = dict(mapped.params)["beta"]
    threshold = above * beta
    probability = 0.5 * math.erfc(above / math.sqrt(2.0 * variance))  # P(z > threshold / beta)
    change_f = math.log1p(math.exp(-threshold)) / beta if threshold > -700 else math.inf
    change_slope = 1.0 / (1.0 + math.exp(threshold)) if threshold < 700 else 0.0
    effect = probability * max(change_f / math.sqrt(variance), change_slope)
    if effect > _SOFTPLUS_NEGLIGIBLE:
        return (f"Softplus(beta={beta:g}, threshold={threshold:g}), which is x itself for x > {above:g}: z ~ N(0, "
                f"q = {variance:g}) gets there with probability {probability:.2g}, enough to change the moments "
                "(not the softplus gainderive integrates)"), ""
    return None, (f"threshold={threshold:g}: torch's switch to x for x > {above:g} moves the moments by < "
                  f"{_SOFTPLUS_NEGLIGIBLE:g} at q = {variance:g}")


def activation_of(module: nn.Module) -> _Mapped | str | None:
    """The gainderive activation of an activation module: a mapping, a reason it cannot be mapped (str), or None
    when ``module`` is not an activation.  ReLU6 is checked before Hardtanh, its base class in torch."""
    table: list[tuple[type, Callable[[Any], _Mapped | str]]] = [
        (nn.ReLU, lambda m: _Mapped("relu")),
        (nn.LeakyReLU, lambda m: _Mapped("leaky_relu", (("negative_slope", float(m.negative_slope)),))),
        (nn.PReLU, _prelu),
        (nn.ELU, lambda m: _Mapped("elu", (("alpha", float(m.alpha)),))),
        (nn.CELU, lambda m: _Mapped("celu", (("alpha", float(m.alpha)),))),
        (nn.SELU, lambda m: _Mapped("selu")),
        (nn.GELU, lambda m: _Mapped("gelu" if m.approximate == "none" else "gelu_tanh")),
        (nn.SiLU, lambda m: _Mapped("silu")),
        (nn.Mish, lambda m: _Mapped("mish")),
        (nn.Softplus, lambda m: _softplus(m.beta, m.threshold)),
        (nn.Tanh, lambda m: _Mapped("tanh")),
        (nn.Sigmoid, lambda m: _Mapped("sigmoid")),
        (nn.ReLU6, lambda m: _Mapped("relu6")),
        (nn.Hardtanh, lambda m: _Mapped("hardtanh", (("min_val", float(m.min_val)), ("max_val", float(m.max_val))))),
        (nn.Hardswish, lambda m: _Mapped("hardswish")),
        (nn.Hardsigmoid, lambda m: _Mapped("hardsigmoid")),
        (nn.Softsign, lambda m: _Mapped("softsign")),
        (nn.Identity, lambda m: _Mapped("identity")),
    ]
    for kind, make in table:
        if isinstance(module, kind):
            return make(module)
    return None


def _functional_table() -> dict[Any, tuple[str, tuple[tuple[str, Any], ...]]]:
    """torch functions (and their in-place forms) -> (registry name, (parameter, default) in call order)."""
    spec: dict[str, tuple[str, tuple[tuple[str, Any], ...]]] = {
        "relu": ("relu", ()), "leaky_relu": ("leaky_relu", (("negative_slope", 0.01),)),
        "elu": ("elu", (("alpha", 1.0),)), "celu": ("celu", (("alpha", 1.0),)), "selu": ("selu", ()),
        "gelu": ("gelu", (("approximate", "none"),)), "silu": ("silu", ()), "mish": ("mish", ()),
        "softplus": ("softplus", (("beta", 1.0), ("threshold", 20.0))), "tanh": ("tanh", ()),
        "sigmoid": ("sigmoid", ()), "hardtanh": ("hardtanh", (("min_val", -1.0), ("max_val", 1.0))),
        "relu6": ("relu6", ()), "hardswish": ("hardswish", ()), "hardsigmoid": ("hardsigmoid", ()),
        "softsign": ("softsign", ()),
    }
    table: dict[Any, tuple[str, tuple[tuple[str, Any], ...]]] = {}
    for fname, entry in spec.items():
        for space in (F, torch, torch.special, torch._C._nn):
            for name in (fname, fname + "_"):
                target = getattr(space, name, None)
                if callable(target):
                    try:
                        table[target] = entry
                    except TypeError:  # unhashable callables are none of ours
                        pass
    return table


_FUNCTIONAL = _functional_table()
#: Functions passed over as their module forms are (nn.Flatten, nn.Dropout): reshapes and dropout.
_TRANSPARENT_FUNCTIONS = frozenset({torch.flatten, torch.reshape, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
                                    F.alpha_dropout})
_METHODS = {"relu": "relu", "relu_": "relu", "tanh": "tanh", "tanh_": "tanh", "sigmoid": "sigmoid",
            "sigmoid_": "sigmoid"}


def _map_function(node: Any) -> _Mapped | str | None:
    """An fx call_function / call_method node as an activation (None: not one of ours)."""
    if node.op == "call_method":
        return _Mapped(_METHODS[node.target]) if node.target in _METHODS and len(node.args) == 1 else None
    try:
        entry = _FUNCTIONAL.get(node.target)
    except TypeError:
        entry = None
    if entry is None:
        return None
    name, defaults = entry
    values = dict(defaults)
    for (param, _), value in zip(defaults, node.args[1:]):
        values[param] = value
    values.update({k: v for k, v in node.kwargs.items() if k in values})
    if any(isinstance(v, torch.fx.Node) for v in values.values()):
        return f"{getattr(node.target, '__name__', node.target)} with a parameter computed in forward"
    if name == "gelu":
        return _Mapped("gelu" if values["approximate"] == "none" else "gelu_tanh")
    if name == "softplus":
        return _softplus(values["beta"], values["threshold"])
    return _Mapped(name, tuple((k, float(v)) for k, v in values.items()))


# -- walking a model ------------------------------------------------------------------------------------------------

class InitReport(list):
    """What :func:`init_` did: one dict per layer (name, type, shape, activation, mode, distribution, fan_in,
    fan_out, gain, std, status, note); ``str(report)`` / :meth:`summary` is a table."""

    def summary(self) -> str:
        rows = [("layer", "type", "shape", "activation", "mode", "gain", "std", "status / note")]
        for r in self:
            gain = "" if r["gain"] is None else f"{r['gain']:.6g}"
            std = "" if r["std"] is None else f"{r['std']:.6g}"
            note = r["status"] + (f": {r['note']}" if r["note"] else "")
            rows.append((r["name"], r["type"], "x".join(map(str, r["shape"] or ())), r["activation"] or "", r["mode"],
                         gain, std, note))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths)) + "  " + row[-1]
                         for row in rows)

    def __str__(self) -> str:
        return self.summary()


def _leaves(module: nn.Module) -> list[nn.Module] | None:
    """A Sequential's modules in call order, nested Sequentials flattened; None if one has its own forward."""
    out: list[nn.Module] = []
    for child in module:  # iterating a Sequential keeps repeats (children() would drop a reused ReLU instance)
        if isinstance(child, nn.Sequential):
            inner = _leaves(child)
            if inner is None:
                return None
            out.extend(inner)
        elif any(True for _ in child.children()):
            return None
        else:
            out.append(child)
    return out


def _follower(module: nn.Module) -> _Mapped | str | None:
    """What a module following a layer means: a mapping, a refusal (str), or None (transparent: look further)."""
    if isinstance(module, _TRANSPARENT):
        return None
    if isinstance(module, _LAYERS):
        return _Mapped("identity", (), f"followed directly by {type(module).__name__}")
    mapped = activation_of(module)
    return mapped if mapped is not None else f"{type(module).__name__}, which is not an activation gainderive maps"


def _sequential_plan(leaves: list[nn.Module]) -> Iterator[tuple[nn.Module, _Mapped | str]]:
    for i, module in enumerate(leaves):
        if not isinstance(module, _LAYERS):
            continue
        found: _Mapped | str = _Mapped("identity", (), "last layer: nothing follows")
        for successor in leaves[i + 1:]:
            meaning = _follower(successor)
            if meaning is not None:
                found = meaning
                break
        yield module, found


def _data_users(node: Any) -> list[Any]:
    """The nodes that consume ``node``'s values: shape queries (x.size(0), x.shape, x.dim()) are not data flow."""
    return [u for u in node.users
            if not (u.op == "call_method" and u.target in ("size", "dim", "numel"))
            and not (u.op == "call_function" and u.target is getattr)]


def _fx_plan(graph_module: torch.fx.GraphModule) -> list[tuple[nn.Module, _Mapped | str]]:
    modules = dict(graph_module.named_modules())
    plan: list[tuple[nn.Module, _Mapped | str]] = []

    def meaning_of(node: Any) -> _Mapped | str:
        users = _data_users(node)
        if not users:
            return "nothing (its output is unused)"
        if len(users) > 1:
            names = ", ".join(str(u.target) for u in users)
            return f"{len(users)} consumers ({names}): the activation it feeds is ambiguous"
        user = users[0]
        if user.op == "output":
            return _Mapped("identity", (), "last layer: its output is the model's")
        if user.op == "call_module":
            meaning = _follower(modules[user.target])
            return meaning_of(user) if meaning is None else meaning
        if user.op in ("call_function", "call_method"):
            mapped = _map_function(user)
            if mapped is not None:
                return mapped
            if user.args and user.args[0] is node and (
                    (user.op == "call_method" and user.target in ("view", "reshape", "flatten", "contiguous"))
                    or (user.op == "call_function" and user.target in _TRANSPARENT_FUNCTIONS)):
                return meaning_of(user)
            return f"{getattr(user.target, '__name__', user.target)}(), which is not an activation gainderive maps"
        return f"a {user.op} node"

    for node in graph_module.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], _LAYERS):
            plan.append((modules[node.target], meaning_of(node)))
    return plan


def _hook_plan(model: nn.Module, example_input: Any) -> list[tuple[nn.Module, _Mapped | str]]:
    """Forward hooks on every leaf module: who consumed each layer's output *tensor object* (data flow, not just
    call order: a functional activation between two modules makes a new tensor, so it is seen as unmapped)."""
    calls: list[tuple[nn.Module, tuple, Any]] = []
    handles = [m.register_forward_hook(lambda mod, args, out: calls.append((mod, args, out)))
               for m in model.modules() if not any(True for _ in m.children())]
    buffers = [(b, b.clone()) for b in model.buffers()]  # BatchNorm's running statistics, batch counters
    try:  # the sample pass leaves no trace: no graph, the global RNG (dropout) and the buffers restored
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            output = model(*example_input) if isinstance(example_input, tuple) else model(example_input)
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
    plan: list[tuple[nn.Module, _Mapped | str]] = []
    for i, (module, _, out) in enumerate(calls):
        if not isinstance(module, _LAYERS):
            continue
        meaning: _Mapped | str | None = None
        current = out
        rest = calls[i + 1:]
        while True:
            consumers = [(j, successor) for j, (successor, args, _) in enumerate(rest)
                         if any(arg is current for arg in args)]
            if len(consumers) > 1:
                names = ", ".join(type(successor).__name__ for _, successor in consumers)
                meaning = f"{len(consumers)} consumers ({names}): the activation it feeds is ambiguous"
                break
            if not consumers:
                break
            j, successor = consumers[0]
            meaning = _follower(successor)
            if meaning is not None:
                break
            current, rest = rest[j][2], rest[j + 1:]
        if meaning is None:
            meaning = (_Mapped("identity", (), "last layer: its output is the model's") if current is output else
                       "an operation forward hooks cannot see (a function, not a module)")
        plan.append((module, meaning))
    return plan


def _plan(model: nn.Module, example_input: Any) -> tuple[list[tuple[nn.Module, _Mapped | str]], str]:
    if isinstance(model, _LAYERS):
        return [(model, _Mapped("identity", (), "a single layer: nothing follows"))], "single layer"
    if isinstance(model, nn.Sequential):
        leaves = _leaves(model)
        if leaves is not None:
            return list(_sequential_plan(leaves)), "nn.Sequential order"
    try:
        graph_module = torch.fx.symbolic_trace(model)
    except Exception as traced:  # any tracing failure (data-dependent control flow, ...) means: fall back to hooks
        if example_input is None:
            reason = str(traced).splitlines()[0] if str(traced) else ""
            raise GainDeriveError(f"init_: torch.fx cannot trace {type(model).__name__} ({type(traced).__name__}: "
                                  f"{reason}); pass example_input= (a sample batch) to find the order with forward "
                                  "hooks") from None
        return _hook_plan(model, example_input), "forward hooks"
    return _fx_plan(graph_module), "torch.fx trace"


def init_(model: nn.Module, *, variance: float = 1.0, mode: str = "fan_in", distribution: str = "normal",
          generator: torch.Generator | None = None, example_input: Any = None, strict: bool = True,
          verbose: bool = False) -> InitReport:
    r"""Initialise every nn.Linear, nn.ConvNd and nn.ConvTransposeNd of ``model`` from the activation that follows
    it, in place; biases to 0.  Returns an :class:`InitReport` (a list of one dict per layer).

    Order: an ``nn.Sequential`` (nested ones flattened) by position; any other model by a ``torch.fx`` trace of
    its forward (functional activations, ``F.relu(x)`` or ``x.tanh()``, count too), falling back to forward hooks
    on ``example_input``.  Between a layer and its activation, reshapes, dropout and normalisation layers are
    passed over; a layer followed directly by another layer, or by nothing (the last), is linear (gain 1).
    Activations mapped: ReLU, LeakyReLU(negative_slope), PReLU (its current single slope), ELU(alpha),
    CELU(alpha), SELU, GELU(approximate), SiLU, Mish, Softplus(beta) (threshold: see the note), Tanh, Sigmoid,
    Hardtanh(min_val, max_val), ReLU6, Hardswish, Hardsigmoid, Softsign, Identity.  A layer whose successor
    cannot be mapped (another module, a residual sum, per-channel PReLU) raises
    :class:`gainderive.errors.GainDeriveError` naming it, or with ``strict=False`` is left as it is and reported.
    Forward hooks see modules only: a function between modules (a residual sum, ``F.relu``) is invisible to them,
    so a layer whose output meets one is refused, but one whose output also goes on to a module is mapped by that
    module; a model torch.fx can trace (any without data-dependent control flow) is read exactly instead.
    Embeddings, bilinear, attention and recurrent layers are reported as left alone.

    Each weight gets std = sqrt(q / (fan_in E[f^2])) (``mode="fan_in"``), 1 / sqrt(fan_out E[f'^2])
    (``fan_out``) or sqrt(2 / (fan_in E[f^2]/q + fan_out E[f'^2])) (``fan_avg``), q = ``variance``, with the
    layer's own fans (groups counted; ConvTranspose weights are (in, out/groups, *k)).  ``distribution``:
    ``normal``, ``uniform`` (bound sqrt(3) std), ``truncated_normal`` (+-2 sigma, sigma = std / 0.8796) or
    ``orthogonal`` (gain Q, Saxe et al. 2014, gain = the std for fans of 1; entry std gain / sqrt(max(rows,
    cols))).  The convention is torch's: the activation *after* a layer sets its gain; the first layer's input
    is taken to be distributed like that activation's output (docs/conventions.md).
    """
    mode = _mode(mode, MODES)
    distributions = ("normal", "uniform", "truncated_normal", "orthogonal")
    if distribution not in distributions:
        raise GainDeriveError(f"unknown distribution {distribution!r}; accepted: {', '.join(distributions)}")
    if not isinstance(model, nn.Module):
        raise GainDeriveError(f"init_ takes a torch.nn.Module; got {type(model).__name__}")
    from .moments import check_variance

    q = float(check_variance(variance, scalar=True))  # validated before any layer: a model with none says so too
    names = {id(m): name or type(m).__name__ for name, m in model.named_modules()}
    plan, how = _plan(model, example_input)
    report = InitReport()
    done: dict[int, tuple[_Mapped, dict[str, Any]]] = {}
    for module, meaning in plan:
        name = names.get(id(module), type(module).__name__)
        weight = module.weight
        if isinstance(weight, nn.parameter.UninitializedParameter):
            raise GainDeriveError(f"init_: {name} ({type(module).__name__}) has uninitialised (lazy) parameters; "
                                  "run one forward pass first")
        if isinstance(meaning, _Mapped) and meaning.identity_above is not None:
            refusal, note = _softplus_switch(meaning, q)
            meaning = refusal if refusal is not None else _Mapped(meaning.name, meaning.params, note)
        entry: dict[str, Any] = {"name": name, "type": type(module).__name__, "shape": tuple(weight.shape),
                                 "activation": None, "mode": mode, "distribution": distribution, "fan_in": None,
                                 "fan_out": None, "gain": None, "std": None, "status": "initialised", "note": "",
                                 "order": how}
        if isinstance(meaning, str):
            if strict:
                raise GainDeriveError(f"init_: {name} ({type(module).__name__}) is followed by {meaning}; mapped "
                                      f"activations: {_SUPPORTED}; pass strict=False to leave such layers as they "
                                      "are")
            entry.update(status="skipped", note=f"followed by {meaning}")
            report.append(entry)
            continue
        if id(module) in done:  # a layer called twice (shared weights): once, if the activations agree
            first, first_entry = done[id(module)]
            if (first.name, first.params) != (meaning.name, meaning.params):
                message = f"shared {name} is followed by both {first.name} and {meaning.name}"
                if strict:
                    raise GainDeriveError(f"init_: {message}; pass strict=False to keep the first")
                first_entry["note"] += f"; {message} (first kept)"
            continue
        done[id(module)] = (meaning, entry)
        entry["activation"] = meaning.name + ("" if not meaning.params else
                                              "(" + ", ".join(f"{k}={v:g}" for k, v in meaning.params) + ")")
        entry["note"] = meaning.note
        if weight.numel() == 0:
            warnings.warn(_ZERO_ELEMENT, stacklevel=2)
            entry.update(status="skipped", note="zero-element weight")
            report.append(entry)
            continue
        transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
        groups = getattr(module, "groups", 1)
        fan_in, fan_out = fans(tuple(weight.shape), "torch_transposed" if transposed else "torch", groups)
        params = dict(meaning.params)
        std = std_for(meaning.name, fan_in, fan_out, mode=mode, variance=variance, **params)
        gain = std * math.sqrt({"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode])
        with torch.no_grad():
            if distribution == "normal":
                weight.normal_(0.0, std, generator=generator)
            elif distribution == "uniform":
                bound = math.sqrt(3.0) * std
                weight.uniform_(-bound, bound, generator=generator)
            elif distribution == "truncated_normal":
                sigma = std / truncation_std(2.0)
                torch.nn.init.trunc_normal_(weight, 0.0, sigma, -2 * sigma, 2 * sigma, generator=generator)
            else:
                gain = std_for(meaning.name, 1, 1, mode=mode, variance=variance, **params)
                orthogonal_(weight, gain, generator)
                rows = weight.shape[0]
                std = gain / math.sqrt(max(rows, weight.numel() // rows))
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        entry.update(fan_in=fan_in, fan_out=fan_out, gain=gain, std=std)
        report.append(entry)
    reached = {id(m) for m, _ in plan}
    for name, module in model.named_modules():
        if isinstance(module, _OTHER_WEIGHTED):
            report.append({"name": name, "type": type(module).__name__, "shape": None, "activation": None,
                           "mode": mode, "distribution": distribution, "fan_in": None, "fan_out": None, "gain": None,
                           "std": None, "status": "skipped", "order": how,
                           "note": "not a Linear, Conv or ConvTranspose layer: init_ leaves its weights alone"})
        elif isinstance(module, _LAYERS) and id(module) not in reached:
            report.append({"name": name, "type": type(module).__name__, "shape": tuple(module.weight.shape),
                           "activation": None, "mode": mode, "distribution": distribution, "fan_in": None,
                           "fan_out": None, "gain": None, "std": None, "status": "skipped",
                           "note": "not reached by forward", "order": how})
    if verbose:
        print(report.summary())
    return report
