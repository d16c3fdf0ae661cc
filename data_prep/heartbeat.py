"""No silent minutes: while a command runs, a console that has printed nothing for a while
gets one line saying what is still going on.

Long steps (Ray starting, the first trial's start-up, member predictions, an ONNX export)
can take a minute without output of their own, and a user who sees nothing for that long
(in a terminal or in a CI log) cannot tell a slow step from a hung one. `beating` (the console
script wraps every command in it) watches stdout and stderr; after `every` seconds in which
neither was written to, it prints ``... STAGE (N s)``, indented like the line before it,
where STAGE is what the running step last declared with `stage` and N the seconds it has
taken so far. One stage that stays quiet for more than a minute gets the line less often
(every 10 s for a minute, then 20, 40, 60 s), so a long GPU epoch does not fill a log; a new
stage starts again at 10 s. ECGTUNE_HEARTBEAT_S sets the interval (0 turns the lines off).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

__all__ = ["DEFAULT_EVERY", "HEARTBEAT_ENV", "Heartbeat", "beating", "stage"]

HEARTBEAT_ENV = "ECGTUNE_HEARTBEAT_S"
DEFAULT_EVERY = 10.0
_MAX_EVERY = 60.0
_FULL_RATE_BEATS = 6  # lines of one stage at the plain interval before it starts to double
_MAX_INDENT = 8

_active: list[Heartbeat] = []


class _Watched:
    """A text stream that tells its heartbeat when a line is written to it. On a terminal any
    write counts (a progress bar redrawn in place is visibly alive); in a file or a pipe only
    a finished line does: a bar's redraws there are one endless line nobody sees move."""

    def __init__(self, stream: TextIO, heartbeat: Heartbeat) -> None:
        self._stream = stream
        self._heartbeat = heartbeat
        try:
            self._terminal = bool(stream.isatty())
        except (AttributeError, ValueError, OSError):
            self._terminal = False

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        if text:
            self._heartbeat.saw(text, counts=self._terminal or "\n" in text)
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class Heartbeat:
    """The watcher of one command (see the module docstring); `beating` runs it."""

    def __init__(self, every: float, out: TextIO) -> None:
        self.every = every
        self._out = out
        self._lock = threading.Lock()
        now = time.monotonic()
        self._last_output = now
        self._stage = "working"
        self._stage_since = now
        self._quiet_beats = 0
        self._indent = ""
        self._partial = ""  # text of the line being written, up to its newline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ecgtune-heartbeat",
                                        daemon=True)
        self.lines = 0  # heartbeat lines printed (for the tests)

    def saw(self, text: str, counts: bool = True) -> None:
        """``text`` was printed (``counts``: visibly, see `_Watched`): the console is not
        silent; the next heartbeat line takes the indentation of the last line completed."""
        with self._lock:
            if counts:
                self._last_output = time.monotonic()
                self._quiet_beats = 0
            pending = self._partial + text
            done, _, self._partial = pending.rpartition("\n")
            self._partial = self._partial[-200:]  # a bar redrawn forever stays short here
            lines = [line.rsplit("\r", 1)[-1] for line in done.split("\n")]
            last = next((line for line in reversed(lines) if line.strip()), None)
            if last is not None:
                self._indent = last[: len(last) - len(last.lstrip(" "))][:_MAX_INDENT]

    def stage(self, text: str) -> None:
        with self._lock:
            if text != self._stage:
                self._stage, self._stage_since = text, time.monotonic()
                self._quiet_beats = 0  # news: back to the plain interval

    def _interval(self) -> float:
        doublings = max(0, self._quiet_beats - _FULL_RATE_BEATS + 1)
        return min(self.every * 2 ** doublings, max(self.every, _MAX_EVERY))

    def _run(self) -> None:
        tick = min(1.0, self.every / 4)
        while not self._stop.wait(tick):
            with self._lock:
                now = time.monotonic()
                if now - self._last_output < self._interval():
                    continue
                line = f"{self._indent}... {self._stage} ({now - self._stage_since:.0f} s)"
                self._last_output = now
                self._quiet_beats += 1
                self.lines += 1
            self._write(line)

    def _write(self, line: str) -> None:
        try:
            from tqdm import tqdm

            # Clears any progress bar on the terminal first, and redraws it below the line.
            tqdm.write(line, file=self._out)
            self._out.flush()
        except (OSError, ValueError):  # a closed or broken console: nothing to tell
            pass

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _every_from_env() -> float:
    text = os.environ.get(HEARTBEAT_ENV, "").strip()
    if not text:
        return DEFAULT_EVERY
    try:
        value = float(text)
    except ValueError:
        return DEFAULT_EVERY
    return value if value > 0 else 0.0


@contextmanager
def beating(every: float | None = None) -> Iterator[Heartbeat | None]:
    """Watch stdout and stderr for the block (see the module docstring); yields the
    heartbeat, or None when the lines are off or an enclosing block already watches."""
    every = _every_from_env() if every is None else every
    if every <= 0 or _active:
        yield None
        return
    out, err = sys.stdout, sys.stderr
    heartbeat = Heartbeat(every, out)
    sys.stdout, sys.stderr = _Watched(out, heartbeat), _Watched(err, heartbeat)
    _active.append(heartbeat)
    heartbeat.start()
    try:
        yield heartbeat
    finally:
        heartbeat.stop()
        _active.remove(heartbeat)
        # Put back what was there, unless something else replaced the streams meanwhile.
        if isinstance(sys.stdout, _Watched) and sys.stdout._heartbeat is heartbeat:
            sys.stdout = out
        if isinstance(sys.stderr, _Watched) and sys.stderr._heartbeat is heartbeat:
            sys.stderr = err


def stage(text: str) -> None:
    """Declare what the command is doing now, in words that follow "... " (e.g. "starting
    Ray"): the next heartbeat line says it. A no-op when no command is watched."""
    for heartbeat in _active:
        heartbeat.stage(text)
