"""The gainderive command: output shapes, exit statuses, one-line errors."""

import json
import math
import re
import subprocess
import sys

import mpmath as mp
import pytest

import gainderive as gd
from gainderive.cli import main
from gainderive.errors import GainDeriveError


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
    # ELU at q = 2, alpha = 1.5, derived by hand: E f^2 = q/2 + alpha^2 (e^{2q} Phi(-2 sqrt q) - 2 e^{q/2} Phi(-sqrt q)
    # + 1/2); the value must lie within its reported bar (+ 4 ulps) of that, and fan_in = sqrt(q / E f^2)
    with mp.workdps(40):
        q, a = mp.mpf(2), mp.mpf("1.5")
        s = mp.sqrt(q)
        exact = q / 2 + a**2 * (mp.exp(2 * q) * mp.ncdf(-2 * s) - 2 * mp.exp(q / 2) * mp.ncdf(-s) + mp.mpf(1) / 2)
        entry = report["moments"]["second_moment"]
        assert abs(entry["value"] - exact) <= entry["error"] + 4 * 2.0**-52 * exact
        gain = mp.sqrt(q / exact)  # its relative error is half E f^2's, plus a few ulps of the square root
        assert abs(report["gains"]["fan_in"] - gain) <= gain * (entry["error"] / (2 * exact) + 4 * 2.0**-52)


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
    status, out, err = run(capsys, "derive", "tanh", "--check", "--quiet")
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
    ["derive", "__import__('os').system('touch pwned')"],
    ["derive", "exp(x**2)"],
    ["derive", "1/x"],
    ["derive", "x*a"],
    ["derive"],
    ["frobnicate"],
    ["derive", "elu", "--bogus"],
]


@pytest.mark.parametrize("argv", BAD, ids=[" ".join(a) for a in BAD])
def test_bad_input_exits_2_with_one_line(capsys, argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a formula that ran would leave the file "pwned" here
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's own usage errors leave through SystemExit
        status = exc.code
    assert status == 2
    _, err = capsys.readouterr()
    assert err.startswith("gainderive: error:") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "pwned").exists()


def test_real_process_exit_codes_and_no_traceback():
    ok = subprocess.run([sys.executable, "-m", "gainderive", "derive", "relu", "--json"], capture_output=True,
                        text=True, check=False)
    assert ok.returncode == 0 and json.loads(ok.stdout)["gains"]["fan_in"] == pytest.approx(math.sqrt(2))
    bad = subprocess.run([sys.executable, "-m", "gainderive", "derive", "log(x)"], capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    assert "not a real number" in bad.stderr


# ---------------------------------------------------------------- issue 12: a CLI without rough edges

import errno  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402

from gainderive import cli  # noqa: E402

BAD_SIZES_AND_VALUES = [
    ["propagate", "relu", "--networks", "0"],
    ["propagate", "relu", "--depth", "1000000000"],
    ["propagate", "relu", "--width", "1000000"],
    ["propagate", "relu", "--batch", "10000000"],
    ["propagate", "relu", "--networks", "1000000"],
    ["propagate", "relu", "--seed", "-1"],
    ["derive", "relu", "--check", "--seed", "-1"],
    ["derive", "relu", "--check", "--samples", "10000000000000"],
    ["derive", "relu", "--digits", "30", "--method", "quadrature"],
    ["derive", "relu", "--method", "monte_carlo", "--check"],
    ["derive", "relu", "--method", "quadratur"],
    ["plot", "relu", "-o", ""],
    ["plot", "relu", "-o", "/"],
    ["plot", "relu", "-o", "gains.jpg"],
    ["plot", "relu", "-o", "gains.png", "-q", "1e-3:1e3:10000000"],
    ["table", "relu", "-q", "1:10:99999999999999999999"],
    ["table", "relu", "-q", "1e-3:1e3:100000000"],
    ["table", "relu", "--format", "jsn"],
    ["table", "relu", "-o", "/dev/null"],
    ["kernel", "tanh", "-c", "0.5", "--method", "high_precision", "--digits", "-5"],
    ["kernel", "tanh", "-c", "0.5", "--method", "high_precision", "--digits", "0"],
    ["kernel", "tanh", "-c", "0.5", "--method", "high_precision", "--digits", "100000"],
    ["meanfield", "tanh", "-w", "2", "--depth", "1000000000"],
    ["meanfield", "tanh", "-w", "nan"],
    ["critical", "tanh", "--line", "0:1:99999999999"],
    ["init", "relu", "--shape", "4,4", "--groups", "0"],
    ["init", "relu", "--shape", "4,4", "--mode", "fan-in"],
    ["derive", "elu", "--param", "alpha=1", "--param", "alpha=2"],
    ["derive", "elu", "--param", "variance=2"],
    ["solve", "a*x", "--unknown", "a", "--constraint", "mean=0", "--constraint", "mean=1"],
    ["solve", "a*x", "--unknown", "a", "--unknown", "a", "--constraint", "mean=0"],
    ["verify", "relu", "--expected", "q/2", "--rtol", "-1"],
    ["drive", "relu"],
]


@pytest.mark.parametrize("argv", BAD_SIZES_AND_VALUES, ids=[" ".join(a) or "empty" for a in BAD_SIZES_AND_VALUES])
def test_issue_12_bad_input_exits_2_with_one_line_before_any_work(capsys, argv, tmp_path, monkeypatch):
    # each of these either hung, ran out of memory or exited 70 before; all are decided before any computing
    monkeypatch.chdir(tmp_path)  # a regression must not write gains.png into the checkout
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    assert status == 2, err
    assert out == "" and err.startswith("gainderive: error:") and err.count("\n") == 1 and "Traceback" not in err


def test_repeated_names_are_errors_naming_the_duplicate(capsys):
    status, _, err = run(capsys, "derive", "elu", "--param", "alpha=1", "--param", "alpha=2")
    assert status == 2 and "--param alpha is given twice (alpha=1, alpha=2)" in err
    status, _, err = run(capsys, "solve", "a*x", "--unknown", "a", "--constraint", "mean=0", "--constraint", "mean=1")
    assert status == 2 and "--constraint mean is given twice" in err


def test_a_size_beyond_its_limit_names_the_flag_and_the_variable(capsys, monkeypatch):
    monkeypatch.setenv("GAINDERIVE_MAX_GRID", "2")
    monkeypatch.setenv("GAINDERIVE_MAX_DERIVE_POINTS", "2")
    status, _, err = run(capsys, "derive", "relu", "-q", "1,2,3")
    assert status == 2 and "GAINDERIVE_MAX_DERIVE_POINTS" in err and "gainderive table" in err
    assert err.count("\n") == 1
    status, _, err = run(capsys, "table", "relu", "-q", "1:2:3")
    assert status == 2 and err.startswith("gainderive: error: --variance: 3 ") and "GAINDERIVE_MAX_GRID" in err
    monkeypatch.setenv("GAINDERIVE_MAX_CORRELATIONS", "2")
    status, _, err = run(capsys, "kernel", "relu", "-c", "0.1,0.2,0.3")
    assert status == 2 and "GAINDERIVE_MAX_CORRELATIONS" in err
    monkeypatch.setenv("GAINDERIVE_MAX_DEPTH", "10")
    with pytest.raises(SystemExit) as exit_:
        main(["propagate", "relu", "--depth", "11"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "argument --depth: 11 layers exceeds the limit of 10" in err
    assert "GAINDERIVE_MAX_DEPTH" in err and "(see gainderive propagate --help)" in err


@pytest.mark.parametrize(("argv", "help_of"), [
    (["derive", "relu", "--bogus"], "gainderive derive --help"),
    (["kernel", "tanh"], "gainderive kernel --help"),
    (["propagate", "relu", "--depth", "many"], "gainderive propagate --help"),
    (["frobnicate"], "gainderive --help"),
])
def test_argparse_errors_point_at_the_subcommands_help(capsys, argv, help_of):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.endswith(f"(see {help_of})\n") and err.count("\n") == 1


@pytest.mark.parametrize(("argv", "suggestion"), [
    (["drive", "relu"], "did you mean 'derive'?"),
    (["table", "relu", "--format", "jsn"], "did you mean 'json'?"),
    (["init", "relu", "--shape", "4,4", "--mode", "fan-in"], "did you mean 'fan_in'?"),
    (["init", "relu", "--shape", "4,4", "--distribution", "unifrom"], "did you mean 'uniform'?"),
    (["derive", "relu", "--method", "quadratur"], "did you mean 'quadrature'?"),
    (["propagate", "relu", "--distribution", "orthogonl"], "did you mean 'orthogonal'?"),
    (["kernel", "relu", "-c", "0", "--method", "high-precision"], "did you mean 'high_precision'?"),
])
def test_did_you_mean_for_subcommands_and_option_values(capsys, argv, suggestion):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and suggestion in err and err.count("\n") == 1


def test_no_suggestion_when_nothing_is_close(capsys):
    with pytest.raises(SystemExit):
        main(["frobnicate"])
    assert "did you mean" not in capsys.readouterr().err


def test_every_option_has_help_stating_its_default():
    _, commands = cli._build_parser()
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
            if action.default not in (None, False, [], "==SUPPRESS=="):
                assert "%(default)s" in action.help, f"{name} {action.option_strings}: help omits the default"


def test_param_is_taken_everywhere_an_activation_is():
    _, commands = cli._build_parser()
    takes_activation = {name for name, sub in commands.items()
                        if any(a.dest in ("activation", "activations", "formula") for a in sub._actions)}
    assert takes_activation == set(commands) - {"list"}
    for name in takes_activation:
        assert any("--param" in a.option_strings for a in commands[name]._actions), name


def test_choices_are_the_librarys():
    import importlib

    correlation, init, moments, propagate = (importlib.import_module(f"gainderive.{name}")
                                             for name in ("correlation", "init", "moments", "propagate"))
    assert cli.DERIVE_METHODS == moments.METHODS
    assert cli.KERNEL_METHODS == correlation.KERNEL_METHODS
    assert (cli.MODES, cli.LAYOUTS, cli.INIT_DISTRIBUTIONS) == (init.MODES, init.LAYOUTS, init.DISTRIBUTIONS)
    assert cli.PROPAGATE_DISTRIBUTIONS == propagate.DISTRIBUTIONS and cli.MODES == propagate.MODES


def test_derive_several_q_json_is_a_list_of_reports(capsys):
    status, out, _ = run(capsys, "derive", "relu", "-q", "1,4,100", "--json")
    assert status == 0
    reports = json.loads(out)
    assert [r["variance"] for r in reports] == [1.0, 4.0, 100.0]
    ulp = 2.0**-52
    for r in reports:
        q = r["variance"]
        # by hand: E[max(z,0)^2] = q/2, E[max(z,0)] = sqrt(q/(2 pi)), gain_fan_in = sqrt(q / (q/2)) = sqrt(2)
        second, mean = r["moments"]["second_moment"], r["moments"]["mean"]
        assert abs(second["value"] - q / 2) <= second["error"] + 4 * ulp * q
        assert abs(mean["value"] - math.sqrt(q / (2 * math.pi))) <= mean["error"] + 4 * ulp * math.sqrt(q)
        assert set(r) == {"activation", "formula", "params", "variance", "moments", "gains"}


def test_derive_several_q_text_is_one_table(capsys):
    status, out, _ = run(capsys, "derive", "elu", "-q", "1,100,1e3")
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "elu   3 input variances q"
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["q"])
    rows = [line.split()[0] for line in lines[header + 1:header + 4]]
    assert rows == ["1", "100", "1000"]
    for text in ("E[f(z)^2]", "gain fan_in", "gain fan_out", "methods:"):
        assert text in lines[header] or text in out


def test_derive_several_q_at_high_precision(capsys):
    status, out, _ = run(capsys, "derive", "elu", "-q", "0.1,2", "--digits", "35", "--json")
    assert status == 0
    with mp.workdps(50):
        for report, q in zip(json.loads(out), (mp.mpf(1) / 10, mp.mpf(2))):
            # ELU(1), by hand: E f^2 = q/2 + e^{2q} Phi(-2 sqrt q) - 2 e^{q/2} Phi(-sqrt q) + 1/2
            s = mp.sqrt(q)
            exact = q / 2 + mp.exp(2 * q) * mp.ncdf(-2 * s) - 2 * mp.exp(q / 2) * mp.ncdf(-s) + mp.mpf(1) / 2
            got = mp.mpf(report["moments"]["second_moment"]["value"])
            assert abs(got - exact) < mp.mpf(10) ** -35 * exact  # 35 digits asked: all correct


def test_derive_method_high_precision_is_digits_30(capsys):
    status, out, _ = run(capsys, "derive", "relu", "-q", "2", "--method", "high_precision", "--json")
    assert status == 0
    report = json.loads(out)
    value = report["moments"]["second_moment"]["value"]  # q/2 = 1 exactly, printed to 30 digits
    assert report["moments"]["second_moment"]["method"] == "high_precision"
    assert len(value.replace(".", "").lstrip("0")) == 30 and mp.mpf(value) == 1


def test_derive_method_monte_carlo_prints_the_sampled_estimate(capsys):
    status, out, _ = run(capsys, "derive", "relu", "--method", "monte_carlo", "--samples", "200000", "--seed", "1",
                         "--json", "--quiet")
    assert status == 0
    moments = json.loads(out)["moments"]
    assert {m["method"] for m in moments.values()} == {"monte_carlo"}
    # by hand at q = 1: E[max(z,0)] = 1/sqrt(2 pi), E[max(z,0)^2] = 1/2; within 5 standard errors (fixed seed)
    for name, exact in (("mean", 1 / math.sqrt(2 * math.pi)), ("second_moment", 0.5)):
        assert 0 < moments[name]["error"] and abs(moments[name]["value"] - exact) <= 5 * moments[name]["error"]


@pytest.mark.parametrize(("formula", "line"), [
    ("relu", "  kinks at x = 0"),
    ("tanh", "  kinks: none (smooth)"),
    ("sign(x)", "  jumps at x = 0"),
    ("abs(x - 1) + abs(x + 2)", "  kinks at x = -2, 1"),
])
def test_where_f_is_not_smooth_is_said_in_words(capsys, formula, line):
    status, out, _ = run(capsys, "derive", formula)
    assert status == 0 and line in out.splitlines() and "breakpoints" not in out


def test_refuted_is_said_once(capsys):
    status, out, err = run(capsys, "verify", "relu", "--expected", "q/4")
    assert status == 1
    assert out.startswith("refuted:") and out.splitlines()[0].count("refuted") == 1 and "<-- differs" in out
    assert err.startswith("gainderive: check failed:") and err.count("\n") == 1


def test_plot_help_names_the_formats(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["plot", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and all(ext in out for ext in (".png", ".pdf", ".svg"))


def test_plot_takes_params_and_writes_the_extensions_format(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    target = tmp_path / "gains.svg"
    status, _, err = run(capsys, "plot", "leaky_relu", "--param", "negative_slope=0.2", "-q", "1:2:3",
                         "-o", str(target))
    assert status == 0, err
    assert b"<svg" in target.read_bytes()[:1000]


def test_propagate_takes_mode_variance_distribution_seed_and_params(capsys):
    status, out, err = run(capsys, "propagate", "leaky_relu", "--param", "negative_slope=0.2", "--depth", "3",
                           "--width", "16", "--batch", "8", "--networks", "2", "--mode", "fan_out",
                           "--distribution", "uniform", "-q", "2", "--seed", "3", "--quiet")
    assert status == 0, err
    # by hand: E[f'^2] = (1 + a^2)/2, so gain_fan_out = sqrt(2 / (1 + a^2)) = 1.38675049... for a = 0.2, any q
    assert f"gain {math.sqrt(2 / 1.04):.6g}" in out
    assert "torch table" not in out  # PyTorch's table value is for the default slope only
    assert "q = 2" in out and "fan_out" in out and "uniform" in out and "seed 3" in out


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_ctrl_c_under_a_progress_bar_is_one_line_and_status_130(capsys, monkeypatch):
    module = sys.modules["gainderive.moments"]  # gainderive.moments is the function: patch the module's
    real = module.moments

    def interrupted(activation, variance=1.0, method="auto", *, progress=None, **kwargs):
        if method != "monte_carlo":
            return real(activation, variance, method, **kwargs)
        progress(1, 10)  # the bar is drawn, then Ctrl-C arrives mid-sampling
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "moments", interrupted)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["derive", "relu", "--check"]) == 130
    shown = terminal.getvalue()
    assert "Monte Carlo [" in shown and shown.endswith("\rgainderive: interrupted\n") and "Traceback" not in shown


def test_table_shows_progress_on_a_terminal(capsys, monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["table", "relu", "tanh", "-q", "1:2:5"]) == 0
    assert "tables [" in terminal.getvalue() and "100.0%" in terminal.getvalue()


class _FullDisk(io.StringIO):
    def write(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_on_standard_output_is_one_line_status_2(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdout", _FullDisk())
    status = main(["list"])
    err = capsys.readouterr().err
    assert status == 2 and err == f"gainderive: error: cannot write standard output: {os.strerror(errno.ENOSPC)}\n"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_full_disk_in_a_real_process_leaves_no_exit_time_traceback():
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "gainderive", "derive", "relu"], stdout=full,
                              stderr=subprocess.PIPE, text=True, check=False, timeout=60)
    assert done.returncode == 2
    assert done.stderr == "gainderive: error: cannot write standard output: No space left on device\n"


def test_kernel_digits_imply_high_precision(capsys):
    status, out, _ = run(capsys, "kernel", "relu", "-c", "0.5", "--digits", "20", "--json")
    assert status == 0
    entry = json.loads(out)["kernel"][0]
    assert entry["method"] == "high_precision"
    with mp.workdps(40):
        # arc-cosine kernel of degree 1 (Cho & Saul 2009): (sqrt(1 - c^2) + (pi - arccos c) c) / (2 pi) at q = 1
        c = mp.mpf(1) / 2
        exact = (mp.sqrt(1 - c**2) + (mp.pi - mp.acos(c)) * c) / (2 * mp.pi)
        assert abs(mp.mpf(entry["value"]) - exact) <= entry["error"] + mp.mpf(10) ** -19


def test_values_may_start_with_a_minus_sign(capsys):
    status, out, err = run(capsys, "kernel", "relu", "-c", "-0.5,0.5", "--json")
    assert status == 0, err
    entries = json.loads(out)["kernel"]
    assert [e["correlation"] for e in entries] == [-0.5, 0.5]
    for e in entries:  # arc-cosine kernel of degree 1 (Cho & Saul 2009) at q = 1
        c = e["correlation"]
        exact = (math.sqrt(1 - c * c) + (math.pi - math.acos(c)) * c) / (2 * math.pi)
        assert abs(e["value"] - exact) <= e["error"] + 4 * 2.0**-52
    status, out, _ = run(capsys, "kernel", "relu", "-c", "-1:1:5", "--json")
    assert status == 0 and [e["correlation"] for e in json.loads(out)["kernel"]] == [-1, -0.5, 0, 0.5, 1]


def test_a_warning_is_one_line(capsys, monkeypatch):
    import warnings

    def warns(args):
        warnings.warn("overflow encountered\n  in add", RuntimeWarning, stacklevel=1)
        return 0

    monkeypatch.setitem(cli._COMMANDS, "list", warns)
    assert main(["list"]) == 0
    assert capsys.readouterr().err == "gainderive: warning: overflow encountered in add\n"


def test_a_q_that_float64_cannot_hold_is_refused_or_kept_exact(capsys):
    status, _, err = run(capsys, "derive", "relu", "-q", "1e-400")
    assert status == 2 and "1e-400" in err and err.count("\n") == 1  # never silently q = 0
    status, out, _ = run(capsys, "derive", "relu", "-q", "1e-400", "--digits", "20", "--json")
    assert status == 0
    report = json.loads(out)
    assert report["variance"] == "1e-400"
    with mp.workdps(40):  # by hand: E[max(z,0)^2] = q/2 = 5e-401
        assert abs(mp.mpf(report["moments"]["second_moment"]["value"]) / mp.mpf("5e-401") - 1) < mp.mpf(10) ** -19


@pytest.mark.parametrize("argv", [
    ["propagate", "relu", "--depth", "3", "--width", "8", "--batch", "4", "--networks", "2"],
    ["kernel", "tanh", "-c", "0.1,0.5"],
    ["derive", "relu", "-q", "1,2", "--digits", "10"],
], ids=["propagate", "kernel", "derive-digits"])
def test_long_commands_show_progress_on_a_terminal(capsys, monkeypatch, argv):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(argv) == 0
    assert "[" in terminal.getvalue() and "100.0%" in terminal.getvalue()


def test_table_to_dash_or_dev_stdout_is_standard_output(capsys):
    # "-o -" and "-o /dev/stdout" clearly mean standard output (output.write_atomic refuses both as files)
    for target in ("-", "/dev/stdout"):
        status, out, err = run(capsys, "table", "relu", "-q", "1,2", "-o", target)
        assert status == 0 and err == "" and out.startswith("# gainderive:")


def test_a_gain_that_does_not_exist_is_reported_as_undefined_beside_the_others(capsys):
    # f = 3: E[f^2] = 9 so gain_fan_in = sqrt(1/9) = 1/3 (by hand); E[f'^2] = Var f = 0, so the other two gains do
    # not exist: derive reports them as undefined with the reason instead of failing the whole derivation
    status, out, _ = run(capsys, "derive", "3 + 0*x", "--json")
    report = json.loads(out)
    assert status == 0 and abs(report["gains"]["fan_in"] - 1 / 3) < 1e-15
    assert report["gains"]["fan_out"] is None and report["gains"]["variance"] is None
    assert "f is constant" in report["gain_notes"]["fan_out"]
    status, out, _ = run(capsys, "derive", "3 + 0*x")
    assert status == 0 and re.search(r"variance\s+undefined\s+Var f\(z\) = 0", out)
    with pytest.raises(GainDeriveError, match="gain_fan_out does not exist"):  # the API's gain() still refuses
        gd.gain("3 + 0*x", mode="fan_out")


def test_closed_standard_streams_end_in_one_line_or_silence():
    # 1>&- : sys.stdout is None; the command says so on stderr and exits 2 (it was exit 70 and a traceback)
    closed_out = subprocess.run([sys.executable, "-c", "import os, sys; os.close(1); sys.stdout = None; "
                                 "from gainderive.cli import main; sys.exit(main(['derive', 'relu', '--json']))"],
                                capture_output=False, stderr=subprocess.PIPE, text=True, check=False)
    assert closed_out.returncode == 2 and closed_out.stderr == "gainderive: error: cannot write standard output: " \
        "it is closed\n"
    # 2>&- : the error has nowhere to go, and must not land on standard output instead
    closed_err = subprocess.run([sys.executable, "-c", "import os, sys; os.close(2); sys.stderr = None; "
                                 "from gainderive.cli import main; sys.exit(main(['derive', 'nosuch']))"],
                                stdout=subprocess.PIPE, text=True, check=False)
    assert closed_err.returncode == 2 and closed_err.stdout == ""


def test_list_options_given_twice_are_refused_not_overwritten(capsys):
    for argv in (["derive", "relu", "-q", "1", "-q", "2"], ["kernel", "relu", "-c", "0.1", "-c", "0.2"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "is given twice; give several values as one comma list" in err


def test_a_check_needs_enough_samples_for_its_standard_error(capsys):
    # with 4 or 8 samples the estimated standard error is meaningless and a 5 SE test fails spuriously
    with pytest.raises(SystemExit) as exc:
        main(["derive", "relu", "--check", "--samples", "999"])
    assert exc.value.code == 2 and "takes an integer >= 1000" in capsys.readouterr().err
