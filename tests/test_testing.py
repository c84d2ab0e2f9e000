"""Verifying hand derivations: the classic initialisation results, refuted claims, bad input, the plugin."""

import math
import re
import subprocess
import sys

import pytest

from gainderive.cli import main
from gainderive.errors import DuplicateParameterError, GainDeriveError, ParameterError
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
    with pytest.raises(DerivationError, match="the claimed gain_fan_in of elu differs from the derivation"):
        assert_gain("elu", "sqrt(1.55)")  # as an identity in q it is wrong: 1.04 at q = 0.01, 1.40 at q = 30


def test_a_plausible_wrong_derivation_is_refuted_readably():
    # a classic slip: using Var f instead of E f^2 for the ReLU gain
    with pytest.raises(DerivationError) as info:
        assert_gain("relu", "sqrt(q/(q/2 - q/(2*pi)))")
    message = str(info.value)
    for text in ("the claimed gain_fan_in of relu differs", "claim", "derived    sqrt(2)", "<-- differs", "rel. error"):
        assert text in message
    assert "refuted" not in message  # the CLI prints "refuted: <message>": the word once, from the CLI
    with pytest.raises(DerivationError, match="E\\[f\\(z\\)\\^2\\] of relu"):
        assert_moment("relu", "second_moment", "q/4")  # off by 2, at every q


def test_numbers_callables_and_general_expectations():
    assert_moment("elu", "second_moment", 0.644945417492923863, variance="1")  # closed form at q = 1, 18 digits
    assert_moment("relu", "mean", lambda q: math.sqrt(q / (2 * math.pi)))
    assert assert_moment("relu", "df**4", "1/2").how == "numeric"  # E[relu'(z)^4] = P(z > 0)
    with pytest.raises(DerivationError):
        assert_moment("elu", "second_moment", 0.6449, variance="1")  # 4 digits is not 12


@pytest.mark.parametrize(("call", "match"), [
    (lambda: assert_moment("relu", "second_momnet", "q/2"), "unknown moment 'second_momnet'; did you mean "
                                                            "'second_moment'?"),
    (lambda: assert_moment("relu", "Mean", "q/2"), "did you mean 'mean'?"),
    (lambda: assert_moment("relu", "dff**2", "1/2"), "uses dff; did you mean 'df'?"),
    (lambda: assert_moment("relu", "z**2", "q"), "uses z; did you mean 'x'?"),
    (lambda: assert_moment("relu", "nonsense", "q"), "accepted: mean, second_moment"),
    (lambda: assert_moment("relu", "second_moment", "x/2"), "the claim uses x; did you mean 'q'?"),
    (lambda: assert_moment("prelu", "second_moment", "(1 + A**2)*q/2"), "the claim uses A; did you mean 'a'?"),
    (lambda: assert_gain("relu", "sqrt(2)", mode="fanout"), "did you mean 'fan_out'?"),
    (lambda: assert_moment("relu", "second_moment", "q/2 +"), "cannot parse"),
    (lambda: assert_moment("relu", "second_moment", "q*alpha"), "alpha"),
    (lambda: assert_moment("elu", "second_moment", "q", params={"beta": 1}), "no parameter"),
    (lambda: assert_gain("relu", "sqrt(2)", mode="fan_sideways"), "unknown mode"),
    (lambda: assert_moment("relu", "second_moment", None), "expected must be"),
    (lambda: assert_moment("x*k", "second_moment", "q"), "unbound"),
])
def test_bad_input_is_an_error_never_a_pass(call, match):
    with pytest.raises(GainDeriveError, match=re.escape(match)):
        call()


def test_parameters_as_keywords_and_given_twice():
    # He et al. 2015 for PReLU at a = 1/2: gain sqrt(2/(1 + a^2)) = sqrt(8/5); a keyword pins a as params= does
    assert assert_gain("prelu", "sqrt(2/(1 + a**2))", a=0.5).how == "symbolic"
    assert_gain("prelu", math.sqrt(8 / 5), a="1/2")
    with pytest.raises(DuplicateParameterError, match="alpha is given twice"):
        assert_moment("elu", "second_moment", "q", params={"alpha": 1}, alpha=2)
    with pytest.raises(ParameterError, match=re.escape("the input variance q is variance=2 (assert_gain(")):
        assert_gain("relu", "sqrt(2)", q=2)  # a keyword of the function, misnamed, is named as such


def test_fixture(derivation):
    assert derivation.gain("relu", "sqrt(2)").how == "symbolic"
    with pytest.raises(DerivationError):
        derivation.moment("relu", "second_moment", "q/4")


def test_plugin_is_registered_for_installed_gainderive(tmp_path):
    test_file = tmp_path / "test_user.py"
    test_file.write_text("from gainderive.testing import assert_moment\n\n"
                         "def test_he(derivation):\n    derivation.gain('relu', 'sqrt(2)')\n\n"
                         "def test_wrong(derivation):\n    derivation.moment('relu', 'second_moment', 'q/4')\n\n"
                         "def test_wrong_directly():\n    assert_moment('relu', 'second_moment', 'q/4')\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
                          capture_output=True, text=True, cwd=tmp_path, check=False)
    assert "2 failed, 1 passed" in done.stdout and "differs from the derivation" in done.stdout
    # __tracebackhide__: each failure shows the user's line and the report (5 q rows), none of gainderive's frames
    assert ">       derivation.moment('relu', 'second_moment', 'q/4')" in done.stdout
    assert ">       assert_moment('relu', 'second_moment', 'q/4')" in done.stdout
    assert "gainderive/testing.py" not in done.stdout and "gainderive/pytest_plugin.py" not in done.stdout
    assert "def _check" not in done.stdout and "__tracebackhide__" not in done.stdout
    failures = done.stdout.split("= FAILURES =")[1].split("short test summary")[0]
    assert failures.count("\n") < 2 * 22, failures  # 2 reports of ~14 lines, not ~50 lines of source each


def test_plugin_and_package_import_no_engine_until_used():
    # every pytest run in an environment with gainderive imports the plugin: it must not load sympy & co.
    script = (
        "import sys\n"
        "import gainderive.pytest_plugin\n"
        "import gainderive\n"
        "heavy = sorted(m for m in ('sympy', 'scipy', 'mpmath', 'numpy', 'gainderive.testing') if m in sys.modules)\n"
        "assert heavy == [], heavy\n"
        # a submodule named like an exported function (moments, gains, activation) does not replace the function
        "import gainderive.moments, gainderive.gains, gainderive.activation\n"
        "assert callable(gainderive.moments) and callable(gainderive.gains) and callable(gainderive.activation)\n"
        "assert gainderive.activation('relu').name == 'relu'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.stdout.strip() == "ok", done.stderr


def test_lazy_package_exports_what_it_did():
    import gainderive

    namespace: dict = {}
    exec("from gainderive import *", namespace)  # our own constant string, not user input
    assert set(gainderive.__all__) <= set(namespace) | {"__version__"}
    assert set(gainderive.__all__) <= set(dir(gainderive))
    assert set(gainderive.__all__) == {*gainderive._EXPORTS, "__version__"}  # every export has its module
    assert callable(namespace["moments"]) and callable(namespace["plot"]) and callable(namespace["gain"])
    assert namespace["init"].__name__ == "gainderive.init" and gainderive.tables.__name__ == "gainderive.tables"
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        _ = gainderive.no_such_name


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
