"""The progress bar: only on a terminal, elapsed time and ETA, cleared on Ctrl-C, silent on a broken stream."""

import pytest

from gainderive import progress as progress_module
from gainderive.progress import progress_bar


class Terminal:
    """A stream that claims to be a terminal and records what is written to it."""

    def __init__(self, tty=True):
        self.tty, self.text, self.writes = tty, "", 0

    def isatty(self):
        return self.tty

    def write(self, s):
        self.writes += 1
        self.text += s

    def flush(self):
        pass


class BrokenTerminal(Terminal):
    """A terminal that went away: every write fails as a closed pipe or a closed file would."""

    def __init__(self, error):
        super().__init__()
        self.error = error

    def write(self, s):
        self.writes += 1
        raise self.error


class ClosedStream:
    """A closed file: even isatty raises ValueError."""

    def isatty(self):
        raise ValueError("I/O operation on closed file")


def test_not_on_a_terminal_or_disabled_draws_nothing():
    stream = Terminal(tty=False)
    with progress_bar("work", stream=stream) as bar:
        assert bar is None
    stream = Terminal()
    with progress_bar("work", stream=stream, enabled=False) as bar:
        assert bar is None
    assert stream.text == ""
    with progress_bar("work", stream=ClosedStream()) as bar:
        assert bar is None


def test_shows_percentage_elapsed_and_eta_then_clears(monkeypatch):
    clock = iter([100.0, 101.0, 102.0, 103.0])  # start, then one second per update
    monkeypatch.setattr(progress_module, "_clock", lambda: next(clock))
    stream = Terminal()
    with progress_bar("work", stream=stream) as bar:
        bar(0, 4)  # nothing done yet: no ETA can be estimated
        assert "0.0%" in stream.text and "--:-- left" in stream.text
        bar(1, 4)  # 1 of 4 done after 2 s: 6 s left
        assert "25.0%" in stream.text and "0:02 elapsed, 0:06 left" in stream.text
        bar(4, 4)
        assert "100.0%" in stream.text and "0:00 left" in stream.text
    longest = max(len(part) for part in stream.text.split("\r"))
    assert stream.text.endswith("\r" + " " * longest + "\r")  # the whole line is blanked, cursor at its start


def test_redraws_at_most_ten_times_a_second_but_always_the_last(monkeypatch):
    monkeypatch.setattr(progress_module, "_clock", lambda: 5.0)  # time stands still
    stream = Terminal()
    with progress_bar("work", stream=stream) as bar:
        for done in range(1, 1001):
            bar(done, 1000)
    # the first update and the final one (done == total is always drawn), then the clearing write
    assert stream.writes == 3 and "100.0%" in stream.text


def test_keyboard_interrupt_clears_the_line_and_propagates():
    stream = Terminal()
    with pytest.raises(KeyboardInterrupt):
        with progress_bar("work", stream=stream) as bar:
            bar(1, 10)
            raise KeyboardInterrupt
    assert "10.0%" in stream.text and stream.text.endswith("\r") and stream.text.split("\r")[-2].strip() == ""


@pytest.mark.parametrize("error", [BrokenPipeError(32, "Broken pipe"), OSError(5, "Input/output error"),
                                   ValueError("I/O operation on closed file")])
def test_a_broken_stream_never_raises_and_is_not_retried(error):
    stream = BrokenTerminal(error)
    with progress_bar("work", stream=stream) as bar:
        bar(1, 2)
        bar(2, 2)
    assert stream.writes == 1  # the first failure silences the bar: no write per update, none at the end


def test_durations_are_readable():
    assert progress_module._duration(65) == "1:05"
    assert progress_module._duration(7384) == "2:03:04"
    assert progress_module._duration(float("inf")) == "--:--"
