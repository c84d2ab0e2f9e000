"""A minimal progress bar on stderr, shown only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["progress_bar"]


@contextmanager
def progress_bar(label: str, *, enabled: bool = True, stream=None) -> Iterator[Callable[[int, int], None] | None]:
    """Yield a ``callback(done, total)`` drawing a bar, or None when not on a terminal.

    Redraws at most ten times a second and clears its line when done, so the
    output that follows is not interleaved with it.
    """
    stream = stream or sys.stderr
    if not enabled or not getattr(stream, "isatty", lambda: False)():
        yield None
        return
    last = [0.0]

    def update(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < 0.1:
            return
        last[0] = now
        frac = done / total if total else 1.0
        filled = int(30 * frac)
        stream.write(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {100 * frac:5.1f}%")
        stream.flush()

    try:
        yield update
    finally:
        stream.write("\r" + " " * (len(label) + 42) + "\r")
        stream.flush()
