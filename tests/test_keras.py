"""gainderive.keras against the real Keras 3 (issue #14 item 2): VarianceScaling, Orthogonal, layers, saving.

Expected values come from Keras itself (``keras.initializers.VarianceScaling`` / ``Orthogonal`` with the same
seed, the kernel shapes its layers build), from closed forms (ReLU: gain^2 = 2, He et al. 2015; identity: 1;
an orthogonal matrix's singular values) or from mpmath quadrature written here (tanh).  Runs on the JAX backend;
``test_torch_backend`` repeats a subset on PyTorch in a subprocess (a process has one Keras backend).
"""

import importlib.util
import json
import math
import os
import random
import subprocess
import sys
import textwrap
from fractions import Fraction

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
keras = pytest.importorskip("keras")

import mpmath as mp  # noqa: E402

from gainderive import errors  # noqa: E402
from gainderive import init as gd_init  # noqa: E402
from gainderive.keras import GainInitializer  # noqa: E402

# Keras's VarianceScaling scale for the two activations whose gain is a closed form: identity 1, ReLU gain^2 = 2
SCALES = {"identity": 1.0, "relu": 2.0}
# gainderive's distribution name -> Keras VarianceScaling's (Keras reads "normal" as truncated)
KERAS_DISTRIBUTION = {"truncated_normal": "truncated_normal", "normal": "untruncated_normal", "uniform": "uniform"}


def gaussian_mean(g, q=1):
    """E[g(z)], z ~ N(0, q), by mpmath quadrature (split at 0, where the integrands here are smooth anyway)."""
    with mp.workdps(25):
        s = mp.sqrt(q)
        return mp.quad(lambda z: g(s * z) * mp.npdf(z), [-mp.inf, 0, mp.inf])


def tanh_moments():
    """(E[tanh^2], E[tanh'^2] = E[sech^4]) at q = 1, from mpmath."""
    return (float(gaussian_mean(lambda z: mp.tanh(z) ** 2)), float(gaussian_mean(lambda z: mp.sech(z) ** 4)))


def second_moment_within(w, std, what):
    """mean(w^2) within 5 standard errors of std^2 (the mean 0 is known).

    The relative SE of mean(w^2) is sqrt((kurtosis - 1) / n): sqrt(2/n) for a normal, less for the truncated
    normal (kurtosis 2.37) and the uniform (1.8), so 5 sqrt(2/n) is a 5-SE bound for all three.
    """
    w = np.asarray(w, dtype=np.float64).ravel()
    ratio = np.mean(w**2) / std**2
    assert abs(ratio - 1) <= 5 * math.sqrt(2 / w.size), f"{what}: mean(w^2)/std^2 = {ratio} over {w.size} draws"


# --- equivalence with Keras's own VarianceScaling ------------------------------------------------------------


@pytest.mark.parametrize("distribution", ["truncated_normal", "normal", "uniform"])
@pytest.mark.parametrize("mode", ["fan_in", "fan_out", "fan_avg"])
@pytest.mark.parametrize("activation", ["identity", "relu"])
def test_variance_scaling_equivalence_bit_for_bit(activation, mode, distribution):
    # identity and ReLU: E[f^2]/q = 1, 1/2 and E[f'^2] = 1, 1/2 exactly, so every mode's Var w is scale / n in
    # the same float64 operations Keras uses (scale / fan, 2 / (fan_in + fan_out)); the draws are the same backend
    # calls with the same seed, hence equal to the last bit -- no tolerance
    scale = SCALES[activation]
    for shape in [(30, 20), (3, 3, 4, 8)]:  # a Dense and a Conv2D kernel
        ours = GainInitializer(activation, mode, distribution, seed=1234)(shape)
        theirs = keras.initializers.VarianceScaling(scale, mode, KERAS_DISTRIBUTION[distribution], seed=1234)(shape)
        assert keras.backend.standardize_dtype(ours.dtype) == "float32"
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs), err_msg=f"shape {shape}")


def test_relu_std_is_he_and_linear_std_is_lecun():
    # He et al. 2015: std = sqrt(2 / fan_in); LeCun 1998: sqrt(1 / fan_in); Keras Dense kernel (in, out)
    assert GainInitializer("relu").std((256, 64)) == math.sqrt(2 / 256)
    assert GainInitializer("linear", mode="fan_avg").std((256, 64)) == math.sqrt(2 / 320)  # Glorot & Bengio 2010
    assert abs(GainInitializer("leaky_relu", negative_slope=0.2).std((100, 3)) - math.sqrt(2 / 1.04 / 100)) < 1e-16


@pytest.mark.parametrize("kind", ["int", "none", "generator"])
def test_seeds_behave_as_in_keras(kind):
    # Keras 3 (keras/src/initializers/random_initializers.py): an int or None (a random int drawn once from Python's
    # RNG at construction) repeats its values on every call; a SeedGenerator advances on every call
    def two_calls(factory):
        keras.utils.set_random_seed(2024)  # seeds Python's random, so seed=None draws the same int for both
        seed = {"int": 77, "none": None, "generator": keras.random.SeedGenerator(77)}[kind]
        initializer = factory(seed)
        return [np.asarray(initializer((40, 30))) for _ in range(2)]

    saved = random.getstate(), np.random.get_state()  # set_random_seed reseeds these globals: leave them as found
    try:
        ours = two_calls(lambda seed: GainInitializer("relu", "fan_in", "normal", seed=seed))
        theirs = two_calls(lambda seed: keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal",
                                                                           seed=seed))
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
    np.testing.assert_array_equal(ours[0], theirs[0])
    np.testing.assert_array_equal(ours[1], theirs[1])
    repeats = np.array_equal(ours[0], ours[1])
    assert repeats == np.array_equal(theirs[0], theirs[1]) == (kind != "generator")


def test_unseeded_initialisers_differ_and_a_clone_draws_a_new_seed():
    a, b = GainInitializer("relu"), GainInitializer("relu")
    assert not np.array_equal(np.asarray(a((30, 20))), np.asarray(b((30, 20))))
    assert a.get_config()["seed"] is None  # the seed as given, as Keras stores it
    assert not np.array_equal(np.asarray(a((30, 20))), np.asarray(a.clone()((30, 20))))


# --- orthogonal ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(30, 20), (20, 50), (3, 3, 4, 8)])
def test_orthogonal_is_keras_orthogonal_times_the_gain(shape):
    ours = np.asarray(GainInitializer("relu", distribution="orthogonal", seed=5)(shape))
    # the same draws and QR as Keras's Orthogonal, with ReLU's gain sqrt(2): equal to the last bit
    np.testing.assert_array_equal(ours, np.asarray(keras.initializers.Orthogonal(gain=math.sqrt(2), seed=5)(shape)))
    matrix = ours.reshape(-1, shape[-1]).astype(np.float64)
    # every singular value is the gain: float32 QR, so 1e-5 relative (a few float32 eps times sqrt(size))
    np.testing.assert_allclose(np.linalg.svd(matrix, compute_uv=False), math.sqrt(2), rtol=1e-5)


def test_orthogonal_std_is_the_std_of_the_draws_for_every_layout():
    # an orthogonal (r, c) matrix times g has sum of squares g^2 min(r, c): mean square g^2 / max(r, c), exactly
    cases = [("tf", (3, 3, 16, 32), (144, 32)), ("tf_transposed", (3, 3, 8, 40), (72, 40)),
             ("tf_depthwise", (3, 3, 64, 2), (9, 2))]
    for layout, shape, (rows, cols) in cases:
        initializer = GainInitializer("relu", distribution="orthogonal", layout=layout, seed=3)
        w = np.asarray(initializer(shape), dtype=np.float64)
        assert abs(initializer.std(shape) - math.sqrt(2 / max(rows, cols))) < 1e-15
        np.testing.assert_allclose(np.mean(w**2), 2 / max(rows, cols), rtol=1e-5, err_msg=layout)
        if layout != "tf_depthwise":  # gainderive.init.spec agrees (it refuses a depthwise orthogonal kernel)
            assert abs(gd_init.spec("relu", shape, distribution="orthogonal", layout=layout).std
                       - initializer.std(shape)) < 1e-15


def test_depthwise_orthogonal_is_orthogonal_per_channel():
    # a DepthwiseConv applies each channel's (prod(k), multiplier) matrix on its own: each is orthogonal times sqrt(2)
    w = np.asarray(GainInitializer("relu", distribution="orthogonal", layout="tf_depthwise", seed=9)((2, 2, 5, 6)))
    per_channel = w.reshape(4, 5, 6).transpose(1, 0, 2).astype(np.float64)  # (channel, prod(k), multiplier)
    np.testing.assert_allclose(np.linalg.svd(per_channel, compute_uv=False), math.sqrt(2), rtol=1e-5)


# --- layers --------------------------------------------------------------------------------------------------


def test_dense_kernel_has_he_std():
    layer = keras.layers.Dense(512, kernel_initializer=GainInitializer("relu", seed=1))
    layer.build((None, 256))
    assert tuple(layer.kernel.shape) == (256, 512)  # Keras's Dense kernel is (in, out): layout "tf"
    second_moment_within(layer.kernel, math.sqrt(2 / 256), "Dense relu")  # He et al. 2015


def test_conv2d_kernel_has_the_tanh_fan_avg_std():
    layer = keras.layers.Conv2D(32, 3, kernel_initializer=GainInitializer("tanh", "fan_avg", "uniform", seed=2))
    layer.build((None, 8, 8, 16))
    assert tuple(layer.kernel.shape) == (3, 3, 16, 32)
    second, derivative = tanh_moments()
    fan_in, fan_out = 9 * 16, 9 * 32
    std = math.sqrt(2 / (fan_in * second + fan_out * derivative))  # Var w = 2 / (fan_in E f^2/q + fan_out E f'^2)
    assert abs(GainInitializer("tanh", "fan_avg", "uniform").std((3, 3, 16, 32)) - std) < 1e-12 * std
    w = np.asarray(layer.kernel)
    assert np.max(np.abs(w)) <= math.sqrt(3) * std * (1 + 1e-6)  # U(-sqrt(3) std, sqrt(3) std)
    second_moment_within(w, std, "Conv2D tanh fan_avg uniform")


def test_depthwise_conv2d_needs_the_depthwise_layout():
    initializer = GainInitializer("relu", seed=3, layout="tf_depthwise")
    layer = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, depthwise_initializer=initializer)
    layer.build((None, 8, 8, 64))
    kernel = np.asarray(layer.kernel)
    assert kernel.shape == (3, 3, 64, 2)  # (*k, in, multiplier): each output sees 9 inputs, so fan_in = 9
    second_moment_within(kernel, math.sqrt(2 / 9), "DepthwiseConv2D relu")
    # Keras passes only (shape, dtype): the default Conv layout reads the same shape as 9 * 64 inputs
    assert GainInitializer("relu").std((3, 3, 64, 2)) == math.sqrt(2 / 576)


def test_conv2d_transpose_kernel_is_out_in():
    initializer = GainInitializer("relu", "fan_in", "normal", seed=4, layout="tf_transposed")
    layer = keras.layers.Conv2DTranspose(8, 3, kernel_initializer=initializer)
    layer.build((None, 8, 8, 48))
    assert tuple(layer.kernel.shape) == (3, 3, 8, 48)  # (*k, out, in): an output sees 9 * 48 inputs at stride 1
    second_moment_within(layer.kernel, math.sqrt(2 / (9 * 48)), "Conv2DTranspose relu")


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("distribution", ["truncated_normal", "uniform", "orthogonal"])
def test_returns_a_backend_tensor_of_the_dtype(dtype, distribution):
    out = GainInitializer("relu", distribution=distribution, seed=0)((16, 8), dtype=dtype)
    assert keras.ops.is_tensor(out) and keras.backend.standardize_dtype(out.dtype) == dtype
    assert tuple(out.shape) == (16, 8)


def test_floatx_is_the_default_dtype():
    before = keras.config.floatx()
    try:
        keras.config.set_floatx("float16")
        assert keras.backend.standardize_dtype(GainInitializer("relu", seed=0)((4, 4)).dtype) == "float16"
    finally:
        keras.config.set_floatx(before)


def test_zero_size_kernels_are_empty_as_in_keras():
    for shape in [(0, 5), (3, 3, 0, 4)]:
        ours = GainInitializer("relu", seed=0)(shape)
        assert tuple(ours.shape) == tuple(keras.initializers.VarianceScaling(2.0, seed=0)(shape).shape) == shape


# --- bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, error, words", [
    ({"nonlinearity": "no_such_activation"}, errors.UnknownActivationError, "unknown activation"),
    ({"nonlinearity": "relu", "mode": "fan_sum"}, errors.GainDeriveError, "fan_in, fan_out, fan_avg"),
    ({"nonlinearity": "relu", "distribution": "cauchy"}, errors.GainDeriveError, "truncated_normal"),
    ({"nonlinearity": "relu", "layout": "torch"}, errors.GainDeriveError, "tf_depthwise"),
    ({"nonlinearity": "relu", "variance": -1.0}, errors.VarianceError, "variance"),
    ({"nonlinearity": "relu", "seed": 1.5}, errors.ParameterError, "SeedGenerator"),
    ({"nonlinearity": "elu", "beta": 2}, errors.ParameterError, "beta"),
    ({"nonlinearity": "where(x > 0, 1, -1)", "mode": "fan_out"}, errors.GainDeriveError, "infinite"),
    ({"nonlinearity": "relu", "groups": 2, "distribution": "orthogonal"}, errors.ParameterError, "groups"),
])
def test_bad_arguments_fail_at_construction_with_one_line(kwargs, error, words):
    with pytest.raises(error) as info:
        GainInitializer(**kwargs)
    message = str(info.value)
    assert words in message and "\n" not in message


def test_bad_calls_raise_gainderive_errors():
    initializer = GainInitializer("relu", seed=0)
    with pytest.raises(errors.ParameterError, match="rank >= 2"):
        initializer((5,))  # a bias
    with pytest.raises(errors.ParameterError, match="floating-point"):
        initializer((4, 4), dtype="int32")


# --- serialisation -------------------------------------------------------------------------------------------


def test_config_round_trips_through_keras_saving():
    initializer = GainInitializer("leaky_relu", "fan_avg", "uniform", variance=2.0, seed=keras.random.SeedGenerator(3),
                                  negative_slope=Fraction(1, 5))
    assert keras.saving.get_registered_name(GainInitializer) == "gainderive>GainInitializer"
    serialized = keras.saving.serialize_keras_object(initializer)
    serialized = json.loads(json.dumps(serialized))  # what a .keras file holds: JSON
    restored = keras.saving.deserialize_keras_object(serialized)
    assert isinstance(restored, GainInitializer)
    assert restored.get_config() == initializer.get_config()
    assert restored.get_config()["negative_slope"] == "1/5"  # a Fraction as the exact string gainderive parses
    # leaky ReLU at any q: gain^2 = 2 / (1 + a^2) for both E[f^2]/q and E[f'^2], so fan_avg Var w = that * 2 / (in+out)
    expected = math.sqrt(2 / 1.04 * 2 / (30 + 20))
    assert abs(restored.std((30, 20)) - expected) < 1e-15 and abs(initializer.std((30, 20)) - expected) < 1e-15
    # the restored SeedGenerator starts from the same state, so the first draw is the same
    np.testing.assert_array_equal(np.asarray(restored((30, 20))), np.asarray(initializer((30, 20))))


def test_an_int_seeded_config_reproduces_the_draws():
    initializer = GainInitializer("tanh", mode="fan_out", distribution="truncated_normal", seed=42)
    restored = GainInitializer.from_config(initializer.get_config())
    np.testing.assert_array_equal(np.asarray(restored((64, 32))), np.asarray(initializer((64, 32))))


def test_a_saved_model_loads_with_its_initializer(tmp_path):
    initializer = GainInitializer("relu", mode="fan_out", distribution="normal", seed=8)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8, kernel_initializer=initializer)])
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: the class is registered
    restored = loaded.layers[0].kernel_initializer
    assert isinstance(restored, GainInitializer) and restored.get_config() == initializer.get_config()
    np.testing.assert_array_equal(np.asarray(loaded.layers[0].kernel), np.asarray(model.layers[0].kernel))
    # seed 8 is an int, so a re-initialisation from the loaded config draws the model's kernel again
    np.testing.assert_array_equal(np.asarray(restored((16, 8))), np.asarray(model.layers[0].kernel))


# --- depth: a 20-layer tanh MLP keeps its activation variance --------------------------------------------------


def mlp_log_second_moment(initializer, networks, batch=32, width=256, depth=20):
    """Per network: the batch mean of log(mean_i h_i^2) at the last of ``depth`` layers h <- tanh(h) W."""
    ops, out = keras.ops, []
    inputs = np.random.default_rng(0).standard_normal((networks, batch, width)).astype(np.float32)
    for x in inputs:
        h = ops.convert_to_tensor(x)  # q = 1 exactly at the first layer
        for _ in range(depth):  # in the backend, float32: a layer's relative rounding is ~1e-7, far below the band
            h = ops.matmul(ops.tanh(h), initializer((width, width)))
        out.append(float(ops.mean(ops.log(ops.mean(h**2, axis=1)))))
    return np.array(out)


def test_a_20_layer_tanh_mlp_keeps_q_within_the_theoretical_band():
    width, depth, networks = 256, 20, 8
    # Single input, Gaussian weights: given layer l, layer l+1's pre-activations are iid N(0, s_{l+1}) with
    # s_{l+1} = mean_i tanh(x_i)^2 / E[tanh^2] (the derived gain), so log s moves per layer by noise of variance
    # v = Var(tanh^2) / (width E[tanh^2]^2) and contracts deviations by chi = d log F / d log q at q = 1, F(q) =
    # E tanh(sqrt(q) z)^2, F'(q) = E[f'^2 + f f''] (Gaussian integration by parts); measuring mean h^2 adds 2/width.
    # A batch mean of correlated inputs has no larger variance, and networks are independent.
    second = gaussian_mean(lambda z: mp.tanh(z) ** 2)
    fourth = gaussian_mean(lambda z: mp.tanh(z) ** 4)
    slope = gaussian_mean(lambda z: mp.sech(z) ** 4 - 2 * mp.tanh(z) ** 2 * mp.sech(z) ** 2)
    chi, v = float(slope / second), float((fourth - second**2) / second**2) / width
    variance = v * sum(chi ** (2 * k) for k in range(depth)) + 2 / width
    # 5 SE of the mean over networks, plus `variance` for the second-order (log, curvature) bias of O(variance)
    band = 5 * math.sqrt(variance / networks) + variance
    derived = mlp_log_second_moment(GainInitializer("tanh", distribution="normal",
                                                    seed=keras.random.SeedGenerator(1)), networks)
    assert abs(derived.mean()) <= band, (derived, band)
    # the band discriminates: LeCun's gain 1 (Keras's default scale) lets q decay far below it in 20 layers
    lecun = mlp_log_second_moment(keras.initializers.VarianceScaling(1.0, "fan_in", "untruncated_normal",
                                                                     seed=keras.random.SeedGenerator(1)), 2)
    assert lecun.mean() < -10 * band


# --- the PyTorch backend ---------------------------------------------------------------------------------------

TORCH_SCRIPT = textwrap.dedent("""
    import math, os, sys, tempfile
    import numpy as np
    import keras
    assert keras.backend.backend() == "torch"
    from gainderive.keras import GainInitializer
    for activation, scale, mode, distribution, keras_distribution in [
            ("relu", 2.0, "fan_in", "truncated_normal", "truncated_normal"),
            ("identity", 1.0, "fan_avg", "uniform", "uniform"),
            ("relu", 2.0, "fan_out", "normal", "untruncated_normal")]:
        ours = GainInitializer(activation, mode, distribution, seed=11)((3, 3, 8, 16))
        theirs = keras.initializers.VarianceScaling(scale, mode, keras_distribution, seed=11)((3, 3, 8, 16))
        assert np.array_equal(keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs)), activation
    ortho = GainInitializer("relu", distribution="orthogonal", seed=2)((40, 30))
    assert np.array_equal(keras.ops.convert_to_numpy(ortho),
                          keras.ops.convert_to_numpy(keras.initializers.Orthogonal(math.sqrt(2), seed=2)((40, 30))))
    w = GainInitializer("relu", seed=1)((64, 32), dtype="float64")
    assert keras.backend.standardize_dtype(w.dtype) == "float64" and type(w).__module__.startswith("torch")
    model = keras.Sequential([keras.Input((256,)), keras.layers.Dense(128, kernel_initializer=GainInitializer(
        "relu", seed=3))])
    kernel = keras.ops.convert_to_numpy(model.layers[0].kernel).astype(np.float64)
    assert abs(np.mean(kernel ** 2) / (2 / 256) - 1) <= 5 * math.sqrt(2 / kernel.size)
    path = os.path.join(tempfile.mkdtemp(), "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.layers[0].kernel_initializer.get_config() == model.layers[0].kernel_initializer.get_config()
    print("ok")
""")


@pytest.mark.skipif(importlib.util.find_spec("torch") is None and os.environ.get("GAINDERIVE_REQUIRE_EXTRAS") != "1",
                    reason="torch is not installed")  # the extras stage of CI installs it: there it must run
def test_torch_backend():
    # a subset on KERAS_BACKEND=torch: same draws as VarianceScaling/Orthogonal, float64, a layer, save/load.
    # ~5-9 s, nearly all of it importing torch and Keras; not marked slow, because CI's extras stage (the one that
    # has torch) deselects slow tests
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    result = subprocess.run([sys.executable, "-c", TORCH_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
