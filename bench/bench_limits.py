"""The largest input each CLI command accepts: wall time and peak memory, beside `gainderive list` in the same run.

Every size a user can type is bounded by :mod:`gainderive.limits` (``GAINDERIVE_MAX_<NAME>`` raises a limit).
This measures each command at those limits, each run in a fresh child process: wall time, and the child's own
peak resident memory from ``os.wait4`` (``ru_maxrss`` of that child alone; it starts from this script's
size at fork, ~15 MB with only ``gainderive.limits`` imported, below every command's own figure).
The baseline is ``gainderive list``
(interpreter, numpy and the registry: what every command pays before any work), measured first, in the same run;
the ratios are against it.

Some runs at the limit take minutes on 2 shared cores.  ``--quick`` runs those at a stated fraction of the limit
and prints, beside the measurement, a linear extrapolation of the time to the limit (time above the baseline
scaled by 1/fraction) -- an estimate, labelled as such, not a measurement.  Memory is not extrapolated: the work
is chunked, so it should not grow with the size; compare the quick and full runs to see that it does not.
Commands without a size knob (verify, init, solve) are measured on a typical input.

Usage:  python bench/bench_limits.py [--quick]     (run the full size at most once: it takes several minutes)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from gainderive.limits import limit


@dataclass(frozen=True)
class Run:
    status: int
    seconds: float
    peak_rss: int  # bytes
    stderr: str


def measure(argv: list[str], *, cwd: str, timeout: float) -> Run:
    """``python -m gainderive argv`` in a fresh process; its own peak RSS from wait4; killed after ``timeout``."""
    with tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "gainderive", *argv], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err, cwd=cwd)
        while True:
            pid, wait_status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - start > timeout:
                proc.kill()
                pid, wait_status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.01)
        seconds = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(wait_status)  # reaped here: Popen must not wait again
        err.seek(0)
        return Run(proc.returncode, seconds, usage.ru_maxrss * 1024, err.read().decode(errors="replace").strip())


def cases(quick: bool) -> list[tuple[str, list[str], float]]:
    """(what is at its limit, argv, fraction of the limit actually run): fraction 1 is the limit itself."""
    samples, digits, grid, derive_points = limit("samples"), limit("digits"), limit("grid"), limit("derive_points")
    plot_points, correlations, depth = limit("plot_points"), limit("correlations"), limit("depth")
    work = limit("propagate_work")

    def scaled(full: int, reduced: int) -> tuple[int, float]:
        n = min(full, reduced) if quick else full
        return n, n / full

    mc, mc_f = scaled(samples, 2**26)
    table_n, table_f = scaled(grid, 100_000)
    derive_n, derive_f = scaled(derive_points, 10_000)
    kernel_n, kernel_f = scaled(correlations, 10_000)
    depth_n, depth_f = scaled(depth, 10_000)
    line_n, line_f = scaled(10_000, 100)  # --line's own cap
    # propagate at the work limit: width 2048, batch 128, one network; depth fills depth x width^2 x (batch + 250)
    # up to the limit (f'(x_l) of every layer stays within the memory limit)
    per_layer = 2048**2 * (128 + 250)
    work_depth = max(1, work // per_layer)
    work_n, work_f = scaled(work_depth, 10)
    return [
        ("baseline", ["list"], 1.0),
        (f"samples = {mc:,}", ["derive", "tanh", "--check", "--samples", str(mc), "--quiet"], mc_f),
        (f"digits = {digits}", ["derive", "tanh", "--digits", str(digits)], 1.0),
        (f"derive_points = {derive_n:,} q", ["derive", "relu", "-q", f"1e-3:1e3:{derive_n}"], derive_f),
        (f"grid = {table_n:,} q", ["table", "tanh", "-q", f"1e-3:1e3:{table_n}", "--quiet"], table_f),
        (f"plot_points = {plot_points:,}", ["plot", "tanh", "elu", "-q", f"1e-3:1e3:{plot_points}", "-o", "gains.png"],
         1.0),
        ("typical (no size knob)", ["verify", "elu", "--expected", "0.6449454174929239"], 1.0),
        ("typical (no size knob)", ["init", "elu", "--shape", "16384,16384,3,3"], 1.0),
        (f"depth = {depth_n:,} layers", ["propagate", "relu", "--depth", str(depth_n), "--width", "16", "--batch", "8",
                                         "--networks", "1", "--quiet"], depth_f),
        (f"work = {work_n * per_layer:.3g} multiply-adds",
         ["propagate", "tanh", "--depth", str(work_n), "--width", "2048", "--batch", "128", "--networks", "1",
          "--quiet"], work_f),
        ("typical (no size knob)", ["solve", "scale*where(x > 0, x, alpha*(exp(x) - 1))", "--unknown", "alpha=1.5",
                                    "--unknown", "scale", "--constraint", "mean=0", "--constraint", "second_moment=1"],
         1.0),
        (f"line = {line_n:,} points", ["critical", "tanh", "--line", f"0:0.5:{line_n}"], line_f),
        (f"depth = {depth:,} (isometry)", ["meanfield", "tanh", "-w", "2.5", "-b", "0.05", "--depth", str(depth)], 1.0),
        (f"correlations = {kernel_n:,}", ["kernel", "tanh", "-c", f"-1:1:{kernel_n}", "--quiet"], kernel_f),
        # the high-precision kernel's own work budget (correlation.py) refuses tanh beyond ~46 digits
        ("digits = 30 (default)", ["kernel", "tanh", "-c", "0.5", "--digits", "30"], 1.0),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="run the slowest commands at a fraction of the limit")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per command (default 1800)")
    parser.add_argument("--only", nargs="+", metavar="COMMAND", help="measure only these commands (and the baseline)")
    args = parser.parse_args()
    print(f"gainderive at its limits ({'quick: reduced sizes, extrapolated times marked ~' if args.quick else 'full'}"
          f"; {os.cpu_count()} CPUs)\n")
    header = (f"{'command':<10} {'at':<38} {'exit':>4} {'wall s':>8} {'peak MiB':>9} {'t/list':>7} {'RSS/list':>8}"
              "  note")
    print(header)
    print("-" * len(header))
    base = None
    with tempfile.TemporaryDirectory() as cwd:
        for what, argv, fraction in cases(args.quick):
            if args.only and argv[0] not in args.only and what != "baseline":
                continue
            run = measure(argv, cwd=cwd, timeout=args.timeout)
            base = base or run
            note = (run.stderr.splitlines() or [""])[-1][:100] if run.status else ""
            if fraction < 1 and run.status == 0:
                full = base.seconds + (run.seconds - base.seconds) / fraction
                note = f"~{full:.3g} s at the limit (linear extrapolation from 1/{1 / fraction:.3g} of it)"
            if run.status < 0 and run.seconds >= args.timeout:
                note = f"killed after {args.timeout:g} s"
            print(f"{argv[0]:<10} {what[:38]:<38} {run.status:>4} {run.seconds:>8.2f} {run.peak_rss / 2**20:>9.0f} "
                  f"{run.seconds / base.seconds:>7.1f} {run.peak_rss / base.peak_rss:>8.1f}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
