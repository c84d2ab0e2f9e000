"""Every CLI command on adversarial sizes and strings (issue #12): under a memory cap and a time limit, it ends in
exit status 0, 1 or 2 with at most one line on stderr, never a hang, a MemoryError or an internal error (70).

Each case runs in a fresh interpreter that caps its own address space at 1 GiB (``RLIMIT_AS``; plain startup
needs under 300 MB) and then runs ``gainderive`` as ``python -m`` would, with single-threaded BLAS, so a thread
pool's arenas do not count against the cap. Its peak resident memory is its own ``VmHWM`` from
/proc/self/status, written at exit: ``ru_maxrss`` from wait4 would start from the pytest process's size, which
the child inherits at fork, and must stay under 1 GB too. The time limit only guards against a hang (the
figures are measured by ``bench/bench_limits.py``, not asserted here). A handful of cases run in the default
suite; the whole list is marked ``slow``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

resource = pytest.importorskip("resource")  # POSIX only

MEMORY_CAP = 1 << 30  # bytes of address space: the "under 1 GB"
# hang guards, not timings: every answer takes seconds (bench/bench_limits.py), the reproducers ran for hours
TIME_LIMIT = 300.0
HEAVY_LIMIT = 900.0  # the two cases that do real work at scale (400,000 q; 10,001 correlations)
#: the child: cap the address space, report VmHWM at exit, then run gainderive as `python -m gainderive`
_CHILD = """
import atexit, os, resource, runpy, sys
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
def report():
    with open("/proc/self/status") as status, open(os.environ["GAINDERIVE_TEST_PEAK"], "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM:")).split()[1])
atexit.register(report)
sys.argv[0] = "gainderive"
runpy.run_module("gainderive", run_name="__main__", alter_sys=True)
"""


@dataclass(frozen=True)
class Outcome:
    status: int
    stdout: str
    stderr: str
    peak_rss: int | None  # bytes, or None where the child could not report it (no /proc, killed)


def run_capped(argv: list[str], *, timeout: float = TIME_LIMIT, cwd: str | None = None) -> Outcome:
    """Run ``gainderive argv`` in a fresh process under the memory cap; fail the test if it outlives ``timeout``."""
    import tempfile

    env = {k: v for k, v in os.environ.items() if k != "GAINDERIVE_DEBUG" and not k.startswith("GAINDERIVE_MAX_")}
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MALLOC_ARENA_MAX="2")
    with tempfile.TemporaryDirectory() as scratch:
        peak_file = os.path.join(scratch, "peak")
        env["GAINDERIVE_TEST_PEAK"] = peak_file
        try:
            proc = subprocess.run([sys.executable, "-c", _CHILD.format(cap=MEMORY_CAP), *argv],
                                  stdin=subprocess.DEVNULL, capture_output=True, env=env, cwd=cwd, timeout=timeout,
                                  check=False)
        except subprocess.TimeoutExpired:
            pytest.fail(f"gainderive {' '.join(argv)[:120]} did not finish within {timeout:g} s")
        try:
            with open(peak_file) as f:
                peak = int(f.read()) * 1024
        except (OSError, ValueError):
            peak = None
    return Outcome(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"), peak)


def check(outcome: Outcome, argv: list[str], statuses: set[int]) -> None:
    shown = f"gainderive {' '.join(argv)[:120]}: status {outcome.status}, stderr {outcome.stderr[-300:]!r}"
    assert outcome.status in statuses, shown
    assert "Traceback" not in outcome.stderr and "internal error" not in outcome.stderr, shown
    if outcome.status == 2:
        assert outcome.stderr.startswith("gainderive: error:") and outcome.stderr.count("\n") == 1, shown
    if outcome.peak_rss is not None:
        assert outcome.peak_rss < MEMORY_CAP, f"{shown}; peak RSS {outcome.peak_rss / 2**20:.0f} MiB"


def _nested(function: str, depth: int) -> str:
    return f"{function}(" * depth + "x" + ")" * depth


def _correlations(n: int) -> str:
    return ",".join(f"{-1 + 2 * k / (n - 1):.6g}" for k in range(n))


OK_OR_REFUSED = {0, 1, 2}
REFUSED = {2}

# (argv, accepted exit statuses): the reproducers of issue #12, command by command
FAST = [
    (["list"], {0}),
    (["derive", "relu", "--check", "--seed", "-1"], REFUSED),
    (["table", "relu", "-q", "1:10:99999999999999999999"], REFUSED),
    (["propagate", "relu", "--networks", "0"], REFUSED),
    (["propagate", "relu", "--depth", "1000000000"], REFUSED),
    (["kernel", "tanh", "-c", "0.5", "--method", "high_precision", "--digits", "-5"], REFUSED),
    (["meanfield", "tanh", "-w", "2", "--depth", "1000000000"], REFUSED),
    (["plot", "relu", "-o", "/"], REFUSED),
]

SLOW = [
    *FAST,
    (["derive", "abs(abs(abs(abs(abs(x-16)-8)-4)-2)-1)"], OK_OR_REFUSED),
    (["derive", _nested("tanh", 12)], OK_OR_REFUSED),
    (["derive", _nested("sigmoid", 39)], OK_OR_REFUSED),
    (["derive", "((x+1)**64)**64"], OK_OR_REFUSED),
    (["derive", "relu", "--check", "--samples", "10000000000000"], REFUSED),
    (["derive", "relu", "--param", "alpha=1", "--param", "alpha=2"], REFUSED),
    (["derive", "relu", "-q", "1e-400"], OK_OR_REFUSED),
    (["table", "tanh", "-q", "1e-3:1e3:400000", "--quiet"], OK_OR_REFUSED),
    (["table", "relu", "-q", "1e-3:1e3:100000000"], REFUSED),
    (["table", "relu", "-o", "/dev/null"], REFUSED),
    (["plot", "relu", "-q", "1e-3:1e3:10000000", "-o", "gains.png"], REFUSED),
    (["plot", "relu", "-o", ""], REFUSED),
    (["plot", "relu", "-o", "gains.jpg"], REFUSED),
    (["verify", "relu", "--expected", "((q+1)**64)**64"], OK_OR_REFUSED),
    (["verify", "abs(abs(abs(abs(abs(x-16)-8)-4)-2)-1)", "--expected", "1"], OK_OR_REFUSED),
    (["init", "relu", "--shape", "1000000000000,1000000000000"], OK_OR_REFUSED),
    (["init", _nested("tanh", 12), "--shape", "4,4"], OK_OR_REFUSED),
    (["propagate", "relu", "--width", "1000000"], REFUSED),
    (["propagate", "relu", "--batch", "10000000"], REFUSED),
    (["propagate", "relu", "--networks", "1000000"], REFUSED),
    (["propagate", "relu", "--depth", "100000", "--width", "16384", "--batch", "1000000", "--networks", "100000"],
     REFUSED),
    (["solve", "a*((x+1)**64)**64", "--unknown", "a", "--constraint", "mean=0"], OK_OR_REFUSED),
    (["solve", "a*x", "--unknown", "a", "--constraint", "mean=0", "--constraint", "mean=1"], REFUSED),
    (["critical", "tanh", "--line", "0:1:99999999999"], REFUSED),
    (["critical", _nested("tanh", 12)], OK_OR_REFUSED),
    (["meanfield", "tanh", "-w", "1e308", "-b", "1e308"], OK_OR_REFUSED),
    (["kernel", "tanh", "-c", _correlations(301)], OK_OR_REFUSED),
    (["kernel", "tanh", "-c", _correlations(10_001)], OK_OR_REFUSED),
    (["kernel", "tanh", "-c", "0.5", "--method", "high_precision", "--digits", "0"], REFUSED),
    (["kernel", "tanh", "-c", "0.5", "--method", "high_precision", "--digits", "100000"], REFUSED),
]


def _ids(cases):
    return [" ".join(argv)[:60] for argv, _ in cases]


@pytest.mark.parametrize(("argv", "statuses"), FAST, ids=_ids(FAST))
def test_adversarial_sizes_end_cleanly(argv, statuses, tmp_path):
    check(run_capped(argv, cwd=str(tmp_path)), argv, statuses)


@pytest.mark.slow
@pytest.mark.parametrize(("argv", "statuses"), SLOW, ids=_ids(SLOW))
def test_every_reproducer_ends_cleanly_under_the_caps(argv, statuses, tmp_path):
    heavy = argv[:2] == ["table", "tanh"] or (argv[0] == "kernel" and len(argv[3]) > 10_000)
    check(run_capped(argv, cwd=str(tmp_path), timeout=HEAVY_LIMIT if heavy else TIME_LIMIT), argv, statuses)


def test_the_caps_leave_room_for_real_work(tmp_path):
    # the harness itself must not be what fails: an ordinary derivation succeeds under it, well inside the caps
    outcome = run_capped(["derive", "elu", "--json"], cwd=str(tmp_path))
    assert outcome.status == 0 and '"fan_in"' in outcome.stdout
    assert outcome.peak_rss is not None and outcome.peak_rss < MEMORY_CAP // 2  # the child's own, from VmHWM
