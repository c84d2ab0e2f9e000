"""A minimal progress bar on stderr, shown only when stderr is a terminal.

The bar never gets in the way of the work it reports on: a stream that is closed
or broken (the terminal went away, stderr piped into a closed reader) silences
it instead of raising, and Ctrl-C clears its line before the interrupt reaches
the caller, so the shell prompt does not land in the middle of a half-drawn bar.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_clock = time.monotonic  # the bar's own clock, so a test can drive it without touching time.monotonic

__all__ = ["progress_bar"]

_WIDTH = 30  # characters of the bar itself
_REDRAW = 0.1  # seconds between redraws: ten a second is smooth and costs nothing


def _duration(seconds: float) -> str:
    """1:05 for 65 s, 2:03:04 for 7384 s, '--:--' for a time that cannot be estimated."""
    if not math.isfinite(seconds) or seconds < 0:
        return "--:--"
    whole = int(seconds + 0.5)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@contextmanager
def progress_bar(label: str, *, enabled: bool = True, stream=None) -> Iterator[Callable[[int, int], None] | None]:
    """Yield a ``callback(done, total)`` drawing a bar with elapsed time and ETA, or None when not on a terminal.

    Redraws at most ten times a second and clears its line when done (also when the work raises, including
    KeyboardInterrupt, which is re-raised), so the output that follows is not interleaved with it.  The ETA is
    the elapsed time scaled by the fraction left, (total - done) / done, shown once done > 0.  A write to a
    closed or broken stream disables the bar for the rest of the run; it never raises.
    """
    stream = stream or sys.stderr
    try:
        on_terminal = bool(enabled) and bool(getattr(stream, "isatty", lambda: False)())
    except (OSError, ValueError):  # isatty on a closed file raises ValueError
        on_terminal = False
    if not on_terminal:
        yield None
        return
    start = _clock()
    state = {"last": -math.inf, "drawn": 0, "broken": False}

    def write(text: str) -> None:
        if state["broken"]:
            return
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):  # EPIPE, EIO, a closed file: the bar is decoration, the work goes on
            state["broken"] = True

    def update(done: int, total: int) -> None:
        now = _clock()
        if done < total and now - state["last"] < _REDRAW:
            return
        state["last"] = now
        frac = min(max(done / total, 0.0), 1.0) if total > 0 else 1.0
        filled = int(_WIDTH * frac)
        elapsed = now - start
        eta = elapsed * (total - done) / done if done > 0 else math.nan
        text = (f"\r{label} [{'#' * filled}{'.' * (_WIDTH - filled)}] {100 * frac:5.1f}%  "
                f"{_duration(elapsed)} elapsed, {_duration(eta)} left")
        state["drawn"] = max(state["drawn"], len(text) - 1)
        write(text)

    try:
        yield update
    finally:  # also on KeyboardInterrupt: clear the line, then let the interrupt go on
        if state["drawn"]:
            write("\r" + " " * state["drawn"] + "\r")
