"""Verifying hand derivations: the classic initialisation results, refuted claims, bad input, the plugin."""

import math
import subprocess
import sys

import pytest

from gainderive.cli import main
from gainderive.errors import GainDeriveError
from gainderive.testing import DerivationError, assert_gain, assert_moment


def test_lecun_identity_and_tanh_near_zero():
    # LeCun et al. 1998: Var w = 1/fan_in keeps the variance for a linear unit: E f^2 = q, gain 1
    assert assert_moment("identity", "second_moment", "q").how == "symbolic"
    assert assert_gain("identity", 1).how in ("symbolic", "numeric")
    # tanh(z) ~ z near 0: gain 1 up to O(q); at q = 1e-6 the gain is 1 + q + ... (expansion of E tanh^2)
    assert_gain("tanh", 1, variance="1e-6", rtol=2e-6)
    with pytest.raises(DerivationError):
        assert_gain("tanh", 1, variance="1")  # far from 0 it is 1.5925..., the "LeCun" gain fails


def test_he_relu_and_prelu():
    # He et al. 2015: Var w = 2/fan_in for ReLU, 2/((1 + a^2) fan_in) for PReLU, at every q and every a
    assert assert_gain("relu", "sqrt(2)").how == "symbolic"
    assert assert_gain("relu", "sqrt(2)", mode="fan_out").how == "symbolic"
    assert assert_gain("prelu", "sqrt(2/(1 + a**2))").how == "symbolic"
    assert assert_moment("leaky_relu", "second_moment", "(1 + negative_slope**2)*q/2").how == "symbolic"


def test_glorot_fan_avg_for_the_identity():
    # Glorot & Bengio 2010: Var w = 2/(fan_in + fan_out) balances the forward condition fan_in Var w E f^2/q = 1
    # and the backward one fan_out Var w E f'^2 = 1; for the identity both moments are 1, so the compromise
    # 2/(fan_in E f^2/q + fan_out E f'^2) is exactly Glorot's.  Uniform(-r, r) has variance r^2/3, so
    # r = sqrt(3 * 2/(fan_in + fan_out)) = sqrt(6/(fan_in + fan_out)).
    assert_moment("identity", "second_moment", "q")
    assert_moment("identity", "derivative_second_moment", 1)
    fan_in, fan_out = 300, 100
    var_w = 2 / (fan_in * 1 + fan_out * 1)
    assert var_w == pytest.approx(2 / (fan_in + fan_out))
    assert math.sqrt(3 * var_w) == pytest.approx(math.sqrt(6 / (fan_in + fan_out)))


def test_elu_rule_of_thumb_is_an_approximation_not_an_identity():
    # "ELU needs about 1.55/n" (Clevert et al. 2016 discussion): q / E f^2 at q = 1 is 1.5505...
    assert_gain("elu", "sqrt(1.55)", variance="1", rtol=2e-4)
    with pytest.raises(DerivationError, match="gain_fan_in of elu is refuted"):
        assert_gain("elu", "sqrt(1.55)")  # as an identity in q it is wrong: 1.04 at q = 0.01, 1.40 at q = 30


def test_a_plausible_wrong_derivation_is_refuted_readably():
    # a classic slip: using Var f instead of E f^2 for the ReLU gain
    with pytest.raises(DerivationError) as info:
        assert_gain("relu", "sqrt(q/(q/2 - q/(2*pi)))")
    message = str(info.value)
    for text in ("gain_fan_in of relu is refuted", "claim", "derived    sqrt(2)", "<-- differs", "rel. error"):
        assert text in message
    with pytest.raises(DerivationError, match="E\\[f\\(z\\)\\^2\\] of relu"):
        assert_moment("relu", "second_moment", "q/4")  # off by 2, at every q


def test_numbers_callables_and_general_expectations():
    assert_moment("elu", "second_moment", 0.644945417492923863, variance="1")  # closed form at q = 1, 18 digits
    assert_moment("relu", "mean", lambda q: math.sqrt(q / (2 * math.pi)))
    assert assert_moment("relu", "df**4", "1/2").how == "numeric"  # E[relu'(z)^4] = P(z > 0)
    with pytest.raises(DerivationError):
        assert_moment("elu", "second_moment", 0.6449, variance="1")  # 4 digits is not 12


@pytest.mark.parametrize(("call", "match"), [
    (lambda: assert_moment("relu", "second_momnet", "q/2"), "f, df"),
    (lambda: assert_moment("relu", "second_moment", "q/2 +"), "cannot parse"),
    (lambda: assert_moment("relu", "second_moment", "q*alpha"), "alpha"),
    (lambda: assert_moment("elu", "second_moment", "q", params={"beta": 1}), "no parameter"),
    (lambda: assert_gain("relu", "sqrt(2)", mode="fan_sideways"), "unknown mode"),
    (lambda: assert_moment("relu", "second_moment", None), "expected must be"),
    (lambda: assert_moment("x*k", "second_moment", "q"), "unbound"),
])
def test_bad_input_is_an_error_never_a_pass(call, match):
    with pytest.raises(GainDeriveError, match=match):
        call()


def test_fixture(derivation):
    assert derivation.gain("relu", "sqrt(2)").how == "symbolic"
    with pytest.raises(DerivationError):
        derivation.moment("relu", "second_moment", "q/4")


def test_plugin_is_registered_for_installed_gainderive(tmp_path):
    test_file = tmp_path / "test_user.py"
    test_file.write_text("def test_he(derivation):\n    derivation.gain('relu', 'sqrt(2)')\n\n"
                         "def test_wrong(derivation):\n    derivation.moment('relu', 'second_moment', 'q/4')\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
                          capture_output=True, text=True, cwd=tmp_path, check=False)
    assert "1 failed, 1 passed" in done.stdout and "is refuted" in done.stdout


@pytest.mark.parametrize(("argv", "status"), [
    (["verify", "relu", "--expected", "q/2"], 0),
    (["verify", "relu", "--expected", "q/4"], 1),
    (["verify", "prelu", "--gain", "fan_in", "--expected", "sqrt(2/(1 + a**2))"], 0),
    (["verify", "elu", "--expected", "0.644945417492923863", "-q", "1"], 0),
    (["verify", "elu", "--expected", "q/2 + foo"], 2),
    (["verify", "elu", "--expected", "q", "-q", "-1"], 2),
    (["verify", "elu", "--moment", "nonsense", "--expected", "1"], 2),
])
def test_verify_command_exit_statuses(argv, status, capsys):
    assert main(argv) == status
    out, err = capsys.readouterr()
    if status == 0:
        assert out.startswith("verified:") and ("proved" in out or "agrees" in out)
    elif status == 1:
        assert out.startswith("refuted:") and "<-- differs" in out
    else:
        assert err.startswith("gainderive: error:") and err.count("\n") == 1
