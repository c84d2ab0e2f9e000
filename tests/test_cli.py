"""The gainderive command: output shapes, exit statuses, one-line errors."""

import json
import math
import subprocess
import sys

import mpmath as mp
import pytest

import gainderive as gd
from gainderive.cli import main


def run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_derive_json_has_exactly_the_documented_shape(capsys):
    status, out, _ = run(capsys, "derive", "elu", "--variance", "2", "--param", "alpha=1.5", "--json")
    assert status == 0
    report = json.loads(out)
    assert set(report) == {"activation", "formula", "params", "variance", "moments", "gains"}
    assert report["activation"] == "elu" and report["params"] == {"alpha": 1.5} and report["variance"] == 2.0
    assert set(report["moments"]) == {"mean", "second_moment", "derivative_second_moment", "variance"}
    for entry in report["moments"].values():
        assert {"value", "error", "method"} <= set(entry) and entry["method"] in ("closed_form", "quadrature")
    assert set(report["gains"]) == {"fan_in", "fan_out", "variance"}
    api = gd.moments("elu", 2.0, alpha=1.5)
    assert report["moments"]["second_moment"]["value"] == api.second_moment.value
    assert report["gains"]["fan_in"] == pytest.approx(math.sqrt(2.0 / api.second_moment.value), rel=1e-15)


def test_derive_digits_gives_decimal_strings(capsys):
    status, out, _ = run(capsys, "derive", "relu", "--digits", "30", "--json", "-q", "2")
    assert status == 0
    report = json.loads(out)
    value = report["moments"]["second_moment"]["value"]
    assert isinstance(value, str) and report["moments"]["second_moment"]["method"] == "high_precision"
    assert value.replace(".", "").lstrip("0").startswith("1000000000000000000000000000")  # q/2 = 1, 30 digits
    assert len(value.replace(".", "").lstrip("0")) == 30
    assert report["gains"]["fan_in"].startswith("1.41421356237309504880168872")  # sqrt(2) to 28 digits


def test_digits_are_all_correct(capsys):
    # f = x (x > 0), (e^x - 1)/2 (x < 0) at q = 1/10:
    # E f^2 = q/2 + (e^{2q} Phi(-2 sqrt q) - 2 e^{q/2} Phi(-sqrt q) + 1/2)/4, derived by hand
    formula = "where(x > 0, x, 0.5*(exp(x) - 1))"
    status, out, _ = run(capsys, "derive", formula, "--digits", "35", "-q", "0.1", "--json")
    assert status == 0
    with mp.workdps(50):
        q = mp.mpf(1) / 10
        s = mp.sqrt(q)
        exact = q / 2 + (mp.exp(2 * q) * mp.ncdf(-2 * s) - 2 * mp.exp(q / 2) * mp.ncdf(-s) + mp.mpf(1) / 2) / 4
        got = mp.mpf(json.loads(out)["moments"]["second_moment"]["value"])
        assert abs(got - exact) < mp.mpf(10) ** -35 * exact


def test_check_adds_monte_carlo_and_passes(capsys):
    status, out, _ = run(capsys, "derive", "tanh", "--check", "--samples", "100000", "--json", "--quiet")
    assert status == 0
    mc = json.loads(out)["monte_carlo"]
    assert mc["passed"] is True and mc["samples"] == 100000 and mc["seed"] == 0
    assert set(mc["moments"]) == {"mean", "second_moment", "derivative_second_moment", "variance"}
    assert all(abs(v["z_score"]) <= 5 for v in mc["moments"].values())


def test_check_failure_is_an_error_not_a_footnote(capsys, monkeypatch):
    # corrupt the quadrature result by 1 %: Monte Carlo with 2^21 samples must catch it
    from gainderive.backends import quadrature

    real = quadrature.integrate

    def wrong(*args, **kwargs):
        return tuple(gd.Estimate(e.value * 1.01, e.error, e.method) for e in real(*args, **kwargs))

    monkeypatch.setattr(quadrature, "integrate", wrong)
    status, out, err = run(capsys, "derive", "elu", "--check", "--quiet")
    assert status == 1
    assert "DISAGREES" in out
    assert err.startswith("gainderive: check failed:") and err.count("\n") == 1


def test_table_output_names_everything(capsys):
    status, out, _ = run(capsys, "derive", "x*sigmoid(1.702*x)", "-q", "0.5")
    assert status == 0
    for text in ("E[f(z)^2]", "E[f'(z)^2]", "Var f(z)", "fan_in", "fan_out", "quadrature", "q = 0.5"):
        assert text in out


def test_list(capsys):
    status, out, _ = run(capsys, "list")
    assert status == 0 and "leaky_relu" in out and "negative_slope=0.01" in out
    status, out, _ = run(capsys, "list", "--json")
    entries = json.loads(out)
    assert {e["name"] for e in entries} == set(gd.REGISTRY)
    assert all(e["reference"] for e in entries)


BAD = [
    ["derive", "nosuch"],
    ["derive", "elu", "--param", "alpha"],
    ["derive", "elu", "--param", "beta=1"],
    ["derive", "elu", "-q", "0"],
    ["derive", "elu", "-q", "-3"],
    ["derive", "elu", "-q", "inf"],
    ["derive", "elu", "-q", "many"],
    ["derive", "elu", "--digits", "2"],
    ["derive", "elu", "--samples", "100"],
    ["derive", "__import__('os').system('echo pwned')"],
    ["derive", "exp(x**2)"],
    ["derive", "1/x"],
    ["derive", "x*a"],
    ["derive"],
    ["frobnicate"],
    ["derive", "elu", "--bogus"],
]


@pytest.mark.parametrize("argv", BAD, ids=[" ".join(a) for a in BAD])
def test_bad_input_exits_2_with_one_line(capsys, argv):
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's own usage errors leave through SystemExit
        status = exc.code
    assert status == 2
    out, err = capsys.readouterr()
    assert err.startswith("gainderive: error:") and err.count("\n") == 1 and "Traceback" not in err
    assert "pwned" not in out + err or "plain function names" in err


def test_real_process_exit_codes_and_no_traceback():
    ok = subprocess.run([sys.executable, "-m", "gainderive", "derive", "relu", "--json"], capture_output=True,
                        text=True, check=False)
    assert ok.returncode == 0 and json.loads(ok.stdout)["gains"]["fan_in"] == pytest.approx(math.sqrt(2))
    bad = subprocess.run([sys.executable, "-m", "gainderive", "derive", "log(x)"], capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    assert "not a real number" in bad.stderr
