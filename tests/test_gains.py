"""Gain conventions, checked against hand derivations and PyTorch's table where it is derived."""

import math

import numpy as np
import pytest

import gainderive as gd


def test_relu_gain_is_sqrt2_at_every_variance():
    # He et al. 2015 / torch.nn.init.calculate_gain('relu') = math.sqrt(2.0)
    q = np.logspace(-3, 3, 13)
    for mode in ("fan_in", "fan_out"):
        assert np.allclose(gd.gain("relu", q, mode=mode), math.sqrt(2.0), rtol=2e-15, atol=0)


@pytest.mark.parametrize("slope", [0.01, 0.2, 1.0, -0.5])
def test_leaky_relu_matches_pytorch_formula(slope):
    # torch.nn.init.calculate_gain('leaky_relu', a) = math.sqrt(2.0 / (1 + a ** 2))
    expected = math.sqrt(2.0 / (1 + slope**2))
    assert gd.gain("leaky_relu", 1.0, negative_slope=slope) == pytest.approx(expected, rel=2e-15)
    assert gd.gain("leaky_relu", 1.0, mode="fan_out", negative_slope=slope) == pytest.approx(expected, rel=2e-15)


def test_identity_is_lecun():
    assert gd.gain("identity", 0.37) == pytest.approx(1.0, rel=1e-15)


def test_three_conventions_for_elu():
    # ELU at q = 1: E f^2 = 0.644945417492923863... (closed form q/2 + 1/2 + e^{2q}Phi(-2) - 2e^{q/2}Phi(-1))
    g = gd.gains(gd.moments("elu", 1.0))
    assert g.fan_in.value == pytest.approx(1 / math.sqrt(0.644945417492923863), rel=1e-14)
    m = gd.moments("elu", 1.0)
    assert g.fan_out.value == pytest.approx(1 / math.sqrt(m.derivative_second_moment.value), rel=1e-15)
    assert g.variance.value == pytest.approx(1 / math.sqrt(m.variance.value), rel=1e-15)
    # relative error halves through the square root
    assert g.fan_in.error == pytest.approx(g.fan_in.value * m.second_moment.error / (2 * m.second_moment.value))


def test_gain_scales_with_q_only_for_non_homogeneous_activations():
    # tanh saturates: its fan_in gain grows with q; ReLU is positively homogeneous: it does not
    assert gd.gain("tanh", 0.01) < gd.gain("tanh", 1.0) < gd.gain("tanh", 100.0)
