"""gainderive.jax against the real JAX and Flax: jax.nn.initializers bit for bit, Flax layers, jit, a deep MLP.

Expected values come from JAX itself (``jax.nn.initializers.variance_scaling`` / ``orthogonal`` / ``he_normal`` ...,
drawn with the same key), from mpmath integrals written here, or from hand derivations (ReLU: E f^2 = q/2 and
E f'^2 = 1/2, so gainderive's variance is JAX's with scale 2; the identity's with scale 1).
"""

import math

import mpmath as mp
import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy

from gainderive import jax as gj  # noqa: E402  (after the skip: the module imports jax at its top)
from gainderive.errors import GainDeriveError, ParameterError, UnknownActivationError  # noqa: E402
from gainderive.init import spec  # noqa: E402

KEY = jax.random.key(20260)

# (nonlinearity, params, JAX's scale): ReLU's Var w = q / (fan_in q/2) = 2 / fan_in (He et al. 2015), and
# 1 / (fan_out * 1/2) = 2 / fan_out; the identity's 1 / fan (LeCun 1998, Glorot & Bengio 2010); leaky ReLU with
# slope 1 is the identity (E f^2 = (1 + a^2) q / 2 = q); a ReLU written as a formula is ReLU.  fan_avg:
# 2 / (fan_in/2 + fan_out/2) = 2 / mean fan; fan_geo_avg: sqrt((2 / fan_in) (2 / fan_out)) = 2 / sqrt(fan_in fan_out).
SCALES = [("relu", {}, 2.0), ("identity", {}, 1.0), ("linear", {}, 1.0), ("leaky_relu", {"negative_slope": 1}, 1.0),
          ("max(x, 0)", {}, 2.0)]
# JAX's axis arguments on two shapes (each new shape costs a compilation of several seconds for 4 axes on these
# 2 cores; the axes cost nothing): a Flax Dense kernel (in, out); and the Flax Conv kernel (k, k, in, out) also
# read as a batch of 3 kernels, in/out as tuples of axes, a receptive field between in and out, tuple batch axes
CONV = (3, 3, 32, 64)
SHAPES = [((64, 48), {}), (CONV, {}), (CONV, {"batch_axis": 0}), (CONV, {"in_axis": (0, 1), "out_axis": -1}),
          (CONV, {"in_axis": 0, "out_axis": -1}), (CONV, {"in_axis": -2, "out_axis": (-1,), "batch_axis": (0,)})]


@pytest.mark.parametrize("distribution", ["normal", "uniform", "truncated_normal"])
@pytest.mark.parametrize("mode", ["fan_in", "fan_out", "fan_avg", "fan_geo_avg"])
@pytest.mark.parametrize(("nonlinearity", "params", "scale"), SCALES)
def test_equals_jax_variance_scaling_bit_for_bit(nonlinearity, params, scale, mode, distribution):
    # the same key, the same fans, the same arithmetic in float32: the same bits (tolerance 0)
    for shape, axes in SHAPES:
        ours = gj.initializer(nonlinearity, mode=mode, distribution=distribution, **axes, **params)
        theirs = jax.nn.initializers.variance_scaling(scale, mode, distribution, **axes)
        a, b = ours(KEY, shape), theirs(KEY, shape)
        assert a.dtype == b.dtype == jnp.float32 and a.shape == shape
        assert np.array_equal(np.asarray(a), np.asarray(b)), (shape, axes)


@pytest.mark.parametrize(("ours", "theirs"), [
    (gj.kaiming_normal, jax.nn.initializers.he_normal), (gj.kaiming_uniform, jax.nn.initializers.he_uniform),
    (gj.xavier_normal, jax.nn.initializers.glorot_normal), (gj.xavier_uniform, jax.nn.initializers.glorot_uniform),
])
def test_the_named_initialisers_are_jax_s_for_relu_and_the_identity(ours, theirs):
    # kaiming_* default to relu (JAX's he_*: scale 2, fan_in), xavier_* to the identity (glorot_*: scale 1, fan_avg)
    for shape, axes in SHAPES:
        assert np.array_equal(np.asarray(ours(**axes)(KEY, shape)), np.asarray(theirs(**axes)(KEY, shape)))


@pytest.mark.parametrize(("shape", "column_axis"), [((64, 48), -1), ((48, 64), -1), ((64, 48), 0),
                                                    (CONV, -1)])
def test_orthogonal_is_jax_s_orthogonal_with_the_gain_as_scale(shape, column_axis):
    init = gj.orthogonal("relu", column_axis=column_axis)
    assert init.gain == pytest.approx(math.sqrt(2), rel=2.3e-16)  # He et al. 2015, to 1 ulp
    ours = np.asarray(init(KEY, shape))
    theirs = np.asarray(jax.nn.initializers.orthogonal(scale=math.sqrt(2), column_axis=column_axis)(KEY, shape))
    assert np.array_equal(ours, theirs)
    # Saxe et al. 2014: every singular value of the flattened kernel is the gain, and the entries have
    # rms gain / sqrt(max(rows, cols)); float32 with ~100-term sums: 1e-5 relative
    matrix = np.moveaxis(ours.astype(np.float64), column_axis, -1).reshape(-1, shape[column_axis])
    assert np.allclose(np.linalg.svd(matrix, compute_uv=False), math.sqrt(2), rtol=1e-5, atol=0)
    assert math.sqrt(np.mean(matrix**2)) == pytest.approx(init.std(shape), rel=1e-5)
    assert init.std(shape) == pytest.approx(math.sqrt(2) / math.sqrt(max(matrix.shape)), rel=1e-15)
    if column_axis == -1:  # Flax's layout is gainderive's "tf" one: the shared spec reports the same std
        assert init.std(shape) == pytest.approx(spec("relu", shape, distribution="orthogonal", layout="tf").std,
                                                rel=1e-15)
    # the generic factory: columns are out_axis
    generic = gj.initializer("relu", distribution="orthogonal", out_axis=column_axis)
    assert np.array_equal(np.asarray(generic(KEY, shape)), ours)


def test_orthogonal_of_a_zero_size_shape_is_jax_s_empty_array():
    assert gj.orthogonal("tanh")(KEY, (0, 4)).shape == jax.nn.initializers.orthogonal()(KEY, (0, 4)).shape == (0, 4)


def _gelu_moments() -> tuple[float, float]:
    """E[gelu(z)^2] and E[gelu'(z)^2] for z ~ N(0, 1): gelu = x Phi(x), gelu' = Phi(x) + x phi(x); mpmath, 30 digits."""
    with mp.workdps(30):
        def expect(h):
            return mp.quad(lambda z: h(z) * mp.npdf(z), [-mp.inf, 0, mp.inf])
        return (float(expect(lambda z: (z * mp.ncdf(z)) ** 2)),
                float(expect(lambda z: (mp.ncdf(z) + z * mp.npdf(z)) ** 2)))


def test_the_std_is_the_gelu_moments_for_each_mode():
    ef2, edf2 = _gelu_moments()
    fan_in, fan_out = 3 * 3 * 32, 3 * 3 * 64  # Flax Conv kernel (3, 3, 32, 64)
    expected = {"fan_in": math.sqrt(1 / (fan_in * ef2)), "fan_out": math.sqrt(1 / (fan_out * edf2)),
                "fan_avg": math.sqrt(2 / (fan_in * ef2 + fan_out * edf2)),
                "fan_geo_avg": math.sqrt(math.sqrt(1 / (fan_in * ef2) / (fan_out * edf2)))}
    for mode, std in expected.items():
        # gelu's moments are closed forms checked against quadrature to 1e-12 relative: 1e-12 on the std
        assert gj.initializer("gelu", mode=mode).std((3, 3, 32, 64)) == pytest.approx(std, rel=1e-12), mode


@pytest.mark.parametrize("slope", [0.01, 0.2, -0.5])
def test_leaky_relu_std_is_he_et_al_s(slope):
    # He et al. 2015: gain sqrt(2 / (1 + a^2)) in both modes; fans of the Conv kernel: 3*3*32 in, 3*3*64 out
    init = gj.kaiming_uniform("leaky_relu", negative_slope=slope)
    assert init.std(CONV) == pytest.approx(math.sqrt(2 / (1 + slope**2) / 288), rel=4e-16)
    out = gj.kaiming_normal("leaky_relu", mode="fan_out", negative_slope=slope)
    assert out.std(CONV) == pytest.approx(math.sqrt(2 / (1 + slope**2) / 576), rel=4e-16)


def _flax_dense_kernel(kernel_init, features: int, inputs: int, dtype=jnp.float32):
    nn = pytest.importorskip("flax.linen")
    model = nn.Dense(features, kernel_init=kernel_init, param_dtype=dtype)
    return model.init(KEY, jnp.ones((1, inputs), dtype))["params"]["kernel"]


def test_a_flax_dense_kernel_has_the_derived_std():
    # 1024 x 512 normal draws: the sample variance is within 5 SE (5 sqrt(2/n) relative) of std^2 from mpmath
    kernel = np.asarray(_flax_dense_kernel(gj.initializer("gelu", distribution="normal"), 512, 1024), np.float64)
    assert kernel.shape == (1024, 512)
    target = 1 / (1024 * _gelu_moments()[0])  # Var w = q / (fan_in E[gelu^2]) at q = 1
    n = kernel.size
    assert abs(np.mean(kernel**2) / target - 1) < 5 * math.sqrt(2 / n)
    # a gain 1 % off (1.02 in variance) is 14 SE away: the check can fail
    assert 5 * math.sqrt(2 / n) < 0.02 / 2


def test_a_flax_conv_kernel_is_he_normal_bit_for_bit_and_has_the_derived_std():
    nn = pytest.importorskip("flax.linen")
    x = jnp.ones((1, 8, 8, CONV[2]))

    def kernel(init):
        return np.asarray(nn.Conv(CONV[3], CONV[:2], kernel_init=init).init(KEY, x)["params"]["kernel"])

    ours, theirs = kernel(gj.kaiming_normal("relu")), kernel(jax.nn.initializers.he_normal())
    assert ours.shape == CONV and np.array_equal(ours, theirs)
    # truncated normal with std sqrt(2 / 288); its kurtosis is below the normal's 3, so 5 sqrt(2/n) is a
    # conservative 5 SE for the sample variance
    target = 2 / (3 * 3 * 32)
    assert abs(np.mean(ours.astype(np.float64) ** 2) / target - 1) < 5 * math.sqrt(2 / ours.size)


def test_jit_gives_the_eager_draws():
    init = gj.initializer("gelu", mode="fan_avg", distribution="uniform")
    eager = init(KEY, (128, 64))
    jitted = jax.jit(lambda key: init(key, (128, 64)))(KEY)
    assert np.array_equal(np.asarray(eager), np.asarray(jitted))
    # hashable (its axes are tuples), so it can also be a static argument of jax.jit
    assert hash(init) == hash(gj.initializer("gelu", mode="fan_avg", distribution="uniform"))
    nn = pytest.importorskip("flax.linen")
    model = nn.Dense(64, kernel_init=init)
    params = jax.jit(model.init)(KEY, jnp.ones((1, 128)))
    assert params["params"]["kernel"].shape == (128, 64)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
@pytest.mark.parametrize("distribution", ["normal", "uniform", "truncated_normal"])
def test_dtypes_match_jax(dtype, distribution):
    ours = gj.initializer("relu", distribution=distribution, dtype=dtype)(KEY, (64, 48))
    theirs = jax.nn.initializers.variance_scaling(2.0, "fan_in", distribution, dtype=dtype)(KEY, (64, 48))
    assert ours.dtype == theirs.dtype == dtype
    assert np.array_equal(np.asarray(ours, np.float32), np.asarray(theirs, np.float32))
    # the call's dtype wins over the factory's, as in JAX (Flax passes param_dtype)
    assert gj.initializer("relu", distribution=distribution)(KEY, (64, 48), dtype).dtype == dtype
    kernel = _flax_dense_kernel(gj.initializer("relu", distribution=distribution), 48, 64, dtype)
    assert kernel.dtype == dtype


def _mlp_pre_activation_variance(kernel_init, factors: list[float], networks: int, depth: int, width: int,
                                 batch: int) -> list[float]:
    """For each factor: the mean over networks of mean(h_L^2), over a network's units and batch, where h_0 ~ N(0, 1)
    and h_l = tanh(h_{l-1}) (factor W_l), W_l drawn by ``kernel_init`` (one compilation for all factors)."""

    @jax.jit
    def forward(key, factor):
        keys = jax.random.split(key, depth + 1)

        def layer(h, k):
            weights = jax.vmap(lambda kk: kernel_init(kk, (width, width)))(jax.random.split(k, networks))
            return jnp.einsum("nbi,nio->nbo", jnp.tanh(h), factor * weights), None

        h, _ = jax.lax.scan(layer, jax.random.normal(keys[0], (networks, batch, width)), keys[1:])
        return jnp.mean(h**2)

    return [float(forward(jax.random.key(7), factor)) for factor in factors]


def test_a_20_layer_tanh_mlp_keeps_the_pre_activation_variance_in_the_theoretical_band():
    # Mean field (Poole et al. 2016): with w ~ N(0, g^2 / n) and h|a Gaussian, q_{l+1} = g^2 mean_j tanh(h_j)^2 is
    # a Markov chain with mean map M(q) = g^2 E[tanh(sqrt(q) z)^2].  The derived gain puts its fixed point at q = 1;
    # linearised there, delta_{l+1} = lambda delta_l + eps with lambda = M'(1) and sd(eps) = g^2 sd(tanh(z)^2) /
    # sqrt(n), so after L layers from q_0 = 1, Var q_L = sd(eps)^2 sum_{k<L} lambda^{2k}; measuring q_L as
    # mean(h_L^2) over n units adds 2 q^2 / n.  Each network's average over its batch has at most that variance,
    # and the networks are independent: the mean over N of them is within 5 sqrt(var / N) of 1 (the curvature of
    # M shifts it by O(var), ~0.005, a tenth of the band).
    depth, width, networks, batch = 20, 256, 32, 4
    with mp.workdps(20):
        def expect(h, q=1):
            return mp.quad(lambda z: h(mp.sqrt(q) * z) * mp.npdf(z), [-mp.inf, 0, mp.inf])
        ef2, ef4 = expect(lambda x: mp.tanh(x) ** 2), expect(lambda x: mp.tanh(x) ** 4)
        g2 = 1 / ef2
        lam = g2 * mp.diff(lambda q: expect(lambda x: mp.tanh(x) ** 2, q), 1)
        sd_eps = g2 * mp.sqrt(ef4 - ef2**2) / mp.sqrt(width)
        var = float(sd_eps**2 * sum(lam ** (2 * k) for k in range(depth)) + mp.mpf(2) / width)
    band = 5 * math.sqrt(var / networks)
    derived = gj.initializer("tanh", distribution="normal")
    assert derived.std((width, width)) == pytest.approx(math.sqrt(g2 / width), rel=1e-12)
    # the same draws scaled to torch's table gain 5/3 settle at M's other fixed point, q = 1.178 (solved with
    # mpmath: (25/9) E[tanh(sqrt(q) z)^2] = q), 0.18 from 1: outside the band, so the check can fail
    q_derived, q_table = _mlp_pre_activation_variance(derived, [1.0, 5 / 3 / math.sqrt(float(g2))], networks, depth,
                                                      width, batch)
    assert abs(q_derived - 1) < band, (q_derived, band)
    assert abs(q_table - 1) > band, (q_table, band)


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda: gj.initializer("nosuch"), UnknownActivationError, "nosuch"),
    (lambda: gj.initializer("relu", mode="fan_mean"), ParameterError, "fan_geo_avg"),
    (lambda: gj.initializer("relu", distribution="cauchy"), ParameterError, "truncated_normal"),
    (lambda: gj.initializer("relu", dtype=jnp.int32), ParameterError, "real floating dtype"),
    (lambda: gj.initializer("relu", dtype=jnp.complex64), ParameterError, "real floating dtype"),
    (lambda: gj.initializer("relu")(KEY, (8, 4), jnp.int8), ParameterError, "real floating dtype"),
    (lambda: gj.initializer("leaky_relu", negative_slope="steep"), GainDeriveError, "negative_slope"),
    (lambda: gj.initializer("sign(x)", mode="fan_out"), GainDeriveError, "fan_in"),
    (lambda: gj.initializer("relu", in_axis=True), ParameterError, "in_axis"),
    (lambda: gj.initializer("relu", in_axis="rows"), ParameterError, "in_axis"),
    (lambda: gj.initializer("tanh", variance=-1.0), GainDeriveError, "variance"),
    (lambda: gj.initializer("relu")(KEY, (8, 0)), GainDeriveError, "positive"),
    (lambda: gj.initializer("relu")(KEY, (8,)), GainDeriveError, "2"),
    (lambda: gj.initializer("relu", in_axis=0, out_axis=0)(KEY, (8, 4)), GainDeriveError, "overlap"),
    (lambda: gj.initializer("relu", out_axis=5)(KEY, (8, 4)), GainDeriveError, "out of range"),
    (lambda: gj.initializer("relu", distribution="orthogonal", mode="fan_avg"), ParameterError, "fan_in"),
    (lambda: gj.initializer("relu", distribution="orthogonal", batch_axis=0), ParameterError, "batch_axis"),
    (lambda: gj.orthogonal("relu", column_axis=3)(KEY, (8, 4)), ParameterError, "column_axis"),
    (lambda: gj.orthogonal("relu").std((8, 0)), ParameterError, "zero-size"),
])
def test_bad_input_raises_one_line_errors(call, error, match):
    with pytest.raises(error, match=match) as info:
        call()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_orthogonal_in_half_precision_is_float32s_rounded(dtype):
    # JAX has no QR in half precision: the float32 result, rounded once (as the torch and Keras modules do); its
    # singular values are the gain (sqrt 2 for relu, He et al. 2015) to the half type's precision (2^-7 for
    # bfloat16, 2^-10 for float16, a few roundings of each entry in the products)
    init = gj.orthogonal("relu")
    half = init(jax.random.key(0), (8, 4), getattr(jnp, dtype))
    assert half.dtype == getattr(jnp, dtype)
    single = init(jax.random.key(0), (8, 4), jnp.float32)
    assert jnp.array_equal(half, single.astype(getattr(jnp, dtype)))
    singular = np.linalg.svd(np.asarray(half, dtype=np.float64), compute_uv=False)
    assert np.allclose(singular, math.sqrt(2), rtol=8 * float(jnp.finfo(getattr(jnp, dtype)).eps))
