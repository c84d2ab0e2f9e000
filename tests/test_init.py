"""Initialisers (first part of #6): fans, modes, distributions and the classic schemes as special cases."""

import math

import numpy as np
import pytest

from gainderive import init
from gainderive.errors import GainDeriveError


def test_fans_dense_conv_grouped_depthwise_and_tf_layout():
    assert init.fans((10, 20)) == (20, 10)  # torch Linear weight is (out, in)
    assert init.fans((20, 10), "tf") == (20, 10)  # Keras Dense kernel is (in, out)
    assert init.fans((64, 32, 3, 3)) == (288, 576)
    assert init.fans((3, 3, 32, 64), "tf") == (288, 576)
    assert init.fans((64, 8, 3, 3), groups=4) == (72, 144)  # each output sees 8*9 inputs, each input feeds 16*9
    # depthwise (groups = channels): fan_out is 9, not 64*9 as torch computes it (pytorch issue #23854)
    assert init.fans((64, 1, 3, 3), groups=64) == (9, 9)
    assert init.fans((16, 4, 3, 3, 3)) == (108, 432)  # 3-d convolution


@pytest.mark.parametrize(("args", "kwargs", "match"), [
    (((5,),), {}, "at least 2"), (((5, 0),), {}, "positive"), (((5, 3),), {"layout": "jax"}, "layout"),
    (((6, 3, 3, 3),), {"groups": 4}, "does not divide"), (((6, 3),), {"groups": 0}, "groups"),
    (((6, 3),), {"groups": -2}, "groups"), (((6, 3),), {"groups": True}, "groups"),
    (((6, 3),), {"groups": 1.0}, "groups"),
    (((5, -1),), {}, "positive"), (((5, True),), {}, "positive"), (((5, 2.0),), {}, "positive"),
    ((5,), {}, "sequence of positive integers"),
])
def test_bad_shapes_layouts_and_groups(args, kwargs, match):
    with pytest.raises(GainDeriveError, match=match):
        init.fans(*args, **kwargs)


def test_huge_shapes_give_fans_and_a_spec_without_allocating():
    # the spec only multiplies Python ints: 10^12 x 10^12 (8e24 bytes as a tensor) costs nothing
    import tracemalloc

    init.spec("relu", (3, 3))  # warm the moment caches first
    tracemalloc.start()
    try:
        fan_in, fan_out = init.fans((10**12, 10**12, 3, 3))
        s = init.spec("relu", (10**12, 10**12), distribution="orthogonal")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (fan_in, fan_out) == (9 * 10**12, 9 * 10**12) and peak < 2**20
    assert s.std == math.sqrt(2) / 10**6  # relu: gain sqrt(2), exact in double; std = gain / sqrt(fan_in)
    assert "orthogonal_(w, gain=1.414213562)" in init.snippets(s)["torch"]


@pytest.mark.parametrize("distribution", ["normal", "orthogonal", "truncated_normal"])
def test_sampling_a_huge_tensor_is_refused_before_allocating(monkeypatch, distribution):
    from gainderive.limits import LimitError

    s = init.spec("relu", (10**6, 10**6), distribution=distribution)
    with pytest.raises(LimitError, match=r"1,000,000,000,000 float64 weights .* spec\(\) and snippets\(\)") as info:
        init.sample(s, 0)
    assert "\n" not in str(info.value)
    monkeypatch.setattr(init, "SAMPLE_BYTES", 8 * 100)  # the boundary, at a size that runs instantly
    assert init.sample(init.spec("relu", (10, 10), distribution=distribution), 0).shape == (10, 10)
    with pytest.raises(LimitError, match="110 float64 weights"):
        init.sample(init.spec("relu", (10, 11), distribution=distribution), 0)


def test_truncation_correction_is_derived_and_matches_tensorflow():
    # TensorFlow's VarianceScaling divides by .87962566103423978, the std of N(0,1) truncated to +-2
    assert init.truncation_std(2.0) == pytest.approx(0.87962566103423978, rel=1e-15)


def test_calculate_gain_reproduces_pytorchs_derived_entries():
    # torch.nn.init.calculate_gain: 'relu' = sqrt(2), 'leaky_relu' = sqrt(2 / (1 + slope^2)), linear/conv = 1
    assert init.calculate_gain("relu") == pytest.approx(math.sqrt(2.0), rel=1e-15)
    assert init.calculate_gain("leaky_relu") == pytest.approx(math.sqrt(2 / (1 + 0.01**2)), rel=1e-15)
    assert init.calculate_gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / (1 + 0.2**2)), rel=1e-15)
    assert init.calculate_gain("conv2d") == 1.0
    # and the exact values where PyTorch's table was found empirically (docs/pytorch_comparison.md)
    assert init.calculate_gain("tanh", variance=1.178) == pytest.approx(5 / 3, rel=1e-3)
    with pytest.raises(GainDeriveError, match="leaky_relu only"):
        init.calculate_gain("relu", 0.5)


def test_classic_schemes_as_special_cases():
    fan_out, fan_in = 300, 200
    shape = (fan_out, fan_in)
    assert init.spec("identity", shape).std == pytest.approx(math.sqrt(1 / fan_in), rel=1e-14)  # LeCun
    assert init.spec("relu", shape).std == pytest.approx(math.sqrt(2 / fan_in), rel=1e-14)  # He, fan_in
    assert init.spec("relu", shape, mode="fan_out").std == pytest.approx(math.sqrt(2 / fan_out), rel=1e-14)
    prelu = init.spec("prelu", shape, a=0.25).std
    assert prelu == pytest.approx(math.sqrt(2 / ((1 + 0.25**2) * fan_in)), rel=1e-14)  # He, PReLU
    glorot = init.spec("identity", shape, mode="fan_avg")
    assert glorot.std == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=1e-14)  # Glorot normal
    uniform = init.spec("identity", shape, mode="fan_avg", distribution="uniform")
    assert uniform.bound == pytest.approx(math.sqrt(6 / (fan_in + fan_out)), rel=1e-14)  # Glorot uniform
    # Caffe's MSRAFiller with variance_norm AVERAGE: std = sqrt(2 / n), n = (fan_in + fan_out)/2
    assert init.spec("relu", shape, mode="fan_avg").std == pytest.approx(math.sqrt(4 / (fan_in + fan_out)), rel=1e-14)
    relu_uniform = init.spec("relu", shape, mode="fan_avg", distribution="uniform")
    assert relu_uniform.bound == pytest.approx(math.sqrt(12 / (fan_in + fan_out)), rel=1e-14)  # ReLU rule


@pytest.mark.parametrize("distribution", ["normal", "uniform", "truncated_normal"])
def test_sampled_variance_within_a_statistical_bound(distribution):
    spec = init.spec("elu", (512, 256), distribution=distribution)
    w = init.sample(spec, 0)
    n = w.size
    # the sample variance of n draws has relative standard error sqrt((kurtosis - 1)/n) <= sqrt(2/n): 5 of them
    assert abs(w.var() / spec.std**2 - 1) < 5 * math.sqrt(2 / n)
    if spec.bound is not None:
        assert np.abs(w).max() <= spec.bound


@pytest.mark.parametrize(("shape", "layout"), [((64, 128), "torch"), ((128, 64), "torch"), ((32, 16, 3, 3), "torch"),
                                               ((3, 3, 16, 32), "tf")])
def test_orthogonal_is_orthonormal_times_the_gain(shape, layout):
    spec = init.spec("relu", shape, distribution="orthogonal", layout=layout)
    w = init.sample(spec, 1)
    matrix = w.reshape(shape[0], -1) if layout == "torch" else w.reshape(-1, shape[-1]).T
    short = min(matrix.shape)
    gram = matrix @ matrix.T if matrix.shape[0] == short else matrix.T @ matrix
    assert np.allclose(gram / spec.gain**2, np.eye(short), atol=1e-12)


def test_unknown_mode_and_distribution():
    with pytest.raises(GainDeriveError, match="unknown mode"):
        init.spec("relu", (4, 4), mode="fan_sum")
    with pytest.raises(GainDeriveError, match="unknown distribution"):
        init.spec("relu", (4, 4), distribution="cauchy")


def test_looks_linear_network_is_exactly_linear_at_initialisation():
    # Balduzzi et al. 2017: with CReLU(x) = [relu(x), relu(-x)] and W = [W', -W'], W CReLU(x) = W' x
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 8))
    h, product = x, np.eye(8)
    for width in (8, 8, 8):
        w = init.sample(init.spec("relu", (width, 2 * width), distribution="looks_linear"), rng)
        h = np.concatenate([np.maximum(h, 0), np.maximum(-h, 0)], axis=1) @ w.T
        product = product @ w[:, :width].T
    assert np.allclose(h, x @ product, atol=1e-12)


def test_delta_orthogonal_kernel():
    spec = init.spec("tanh", (32, 16, 3, 3), distribution="delta_orthogonal")
    w = init.sample(spec, 4)
    centre = w[:, :, 1, 1]
    assert np.allclose(centre.T @ centre / spec.gain**2, np.eye(16), atol=1e-12)  # orthonormal columns
    w[:, :, 1, 1] = 0
    assert not w.any()  # zero everywhere else
    with pytest.raises(GainDeriveError, match="delta_orthogonal"):
        init.sample(init.spec("tanh", (16, 32, 2, 2), distribution="delta_orthogonal"), 0)


@pytest.mark.slow  # 4 runs of 8 networks x 50 layers of width 512: ~12 s on the 2-core machine (one BLAS thread)
def test_depth_check_derived_gain_holds_where_pytorchs_table_drifts():
    # 50 layers of width 512 (finite-width fluctuations are a few percent for smooth activations): the derived
    # gain keeps E[x_l^2] near q = 1; PyTorch's selu 3/4 collapses it, tanh's 5/3 moves it to its fixed point 1.18
    from gainderive.propagate import propagate

    selu, selu_torch = propagate("selu"), propagate("selu", gain=0.75)
    tanh, tanh_torch = propagate("tanh"), propagate("tanh", gain=5 / 3)
    assert abs(selu.forward_drift - 1) < 0.1 and selu_torch.forward_drift < 0.1
    assert abs(tanh.forward_drift - 1) < 0.1 and abs(tanh_torch.forward_drift - 1.18) < 0.1
    assert len(selu.forward) == 51 and len(selu.backward) == 51


def _band(name, width=512, batch=64, networks=8, q=1):
    """5 standard deviations of a layer's relative E[x_l^2] around q at the derived gain (see the test below)."""
    import mpmath as mp

    alpha, scale = mp.mpf("1.6732632423543772848170429916717"), mp.mpf("1.0507009873554804934193349852946")
    f, df = {"elu": (lambda z: z if z > 0 else mp.expm1(z), lambda z: 1 if z > 0 else mp.exp(z)),
             "selu": (lambda z: scale * (z if z > 0 else alpha * mp.expm1(z)),
                      lambda z: scale * (1 if z > 0 else alpha * mp.exp(z))),
             "tanh": (mp.tanh, lambda z: 1 - mp.tanh(z) ** 2)}[name]
    with mp.workdps(30):
        def expect(h):
            return mp.quad(lambda z: h(z) * mp.exp(-z * z / (2 * q)) / mp.sqrt(2 * mp.pi * q), [-mp.inf, 0, mp.inf])

        f2, f4, ffz = expect(lambda z: f(z) ** 2), expect(lambda z: f(z) ** 4), expect(lambda z: f(z) * df(z) * z)
        kappa, slope = float((f4 - f2**2) / f2**2), float(ffz / f2)
    independent = batch if name == "tanh" else 1
    step = math.sqrt((2 + kappa) / (width * independent)) + math.sqrt(2) / width
    return 5 * step / math.sqrt(1 - slope**2) / math.sqrt(networks)


@pytest.mark.slow  # 4 runs of 8 networks x 50 layers of width 512: ~3 s each on the 2-core machine (one BLAS thread)
@pytest.mark.parametrize("name", ["relu", "elu", "selu", "tanh"])
def test_depth_check_band_over_50_layers(name):
    """Every layer's E[x_l^2] within a band derived from the finite-width spread (8 networks of width 512).

    relu is homogeneous (slope 1): its log second moment is a random walk of variance about 5 L / n per network
    (Hanin & Nica 2019), 5 x 50 / 512 / 8 = 0.06 averaged, so every layer within [1/2, 2] (beyond 2.5 SD).
    The smooth ones relax to q with slope s = E[f f' z] / E[f^2] < 1 (tanh 0.46, selu 0.78, elu 0.89): a
    layer's relative spread sqrt((2 + kappa) / (n B_eff)) + sqrt(2) / n (kappa = Var f^2 / (E f^2)^2, the W
    scale adding sqrt(2) / n) settles at that / sqrt(1 - s^2), over sqrt(8) networks.  B_eff = B = 64 for tanh
    (odd, no bias: the batch stays decorrelated, c = 0 being a stable fixed point), 1 for elu and selu (their
    batch can correlate, so no credit is taken for it).  Bands: tanh 0.023, selu 0.24, elu 0.39.
    """
    from gainderive.propagate import propagate

    run = propagate(name)
    if name == "relu":
        assert 0.5 <= run.forward.min() and run.forward.max() <= 2.0
    else:
        assert np.all(np.abs(run.forward - 1) <= _band(name))


@pytest.mark.slow
def test_pytorch_table_gains_drift():
    # measured: selu 3/4 ends at E[x^2] = 0.024 (x 1/41), tanh 5/3 at 1.185, its fixed point q = 1.178
    from gainderive.propagate import propagate

    assert propagate("selu", gain=0.75).forward_drift < 0.05
    assert abs(propagate("tanh", gain=5 / 3).forward_drift - 1.178) < 0.03


def test_snippets_use_the_numbers(capsys):
    from gainderive.cli import main

    assert main(["init", "relu", "--shape", "64,32,3,3"]) == 0
    out = capsys.readouterr().out
    assert "fan_in 288" in out and "torch.nn.init.normal_(w, mean=0.0, std=0.08333333333)" in out
    spec = init.spec("elu", (128, 64), distribution="truncated_normal")
    snippet = init.snippets(spec)["torch"]
    assert f"std={spec.std / init.truncation_std(2.0):.10g}" in snippet and f"b={spec.bound:.10g}" in snippet
    for argv in (["init", "relu", "--shape", "64"], ["init", "relu", "--shape", "6,3,3,3", "--groups", "4"],
                 ["init", "relu", "--shape", "4,4", "--mode", "fan_sum"], ["init", "relu", "--shape", "a,b"],
                 ["init", "relu", "--shape", "4,4", "--layout", "jax"],
                 ["init", "relu", "--shape", "4,4", "--distribution", "cauchy"],
                 ["init", "relu", "--shape", "4,0"], ["init", "relu", "--shape", "4,-4"],
                 ["init", "relu", "--shape", "4,4", "--groups", "0"],
                 ["init", "relu", "--shape", "4,4", "--groups", "-1"]):
        try:
            status = main(argv)
        except SystemExit as exc:  # argparse's own usage errors (choices, types) leave through SystemExit
            status = exc.code
        assert status == 2
        assert capsys.readouterr().err.count("\n") == 1


def test_propagate_command_reports_both_gains(capsys, tmp_path):
    from gainderive.cli import main

    target = tmp_path / "depth.png"
    assert main(["propagate", "tanh", "--depth", "5", "--width", "64", "--networks", "2", "--plot", str(target)]) == 0
    out = capsys.readouterr().out
    assert "derived" in out and "torch table" in out and target.read_bytes()[:4] == b"\x89PNG"
    assert len([line for line in out.splitlines() if line.strip()[:1].isdigit()]) == 6  # layers 0..5, per layer
