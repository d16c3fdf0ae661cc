"""No silent minutes: a console quiet for the heartbeat's interval gets a line naming the step
still running; a console that prints gets none; the line can be turned off."""

from __future__ import annotations

import sys
import time

import pytest

from ecgtune.data_prep import heartbeat
from ecgtune.data_prep.heartbeat import beating, stage


def test_a_quiet_step_gets_a_line_naming_it(capsys):
    with beating(every=0.05) as beat:
        assert beat is not None
        print("  [3/6] searching")
        stage("starting Ray")
        time.sleep(0.45)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "  [3/6] searching"
    beats = lines[1:]
    assert beats and all(line.startswith("  ... starting Ray (") and line.endswith(" s)")
                         for line in beats), lines
    assert beat.lines == len(beats)
    # One stage quiet for longer gets the line less often (6 at the plain interval, then
    # every 2, 4, 8 intervals): never one per tick.
    assert len(beats) <= 9
    assert sys.stdout is not beat  # the streams are put back


def test_the_interval_doubles_within_one_stage_and_restarts_with_the_next(capsys):
    from ecgtune.data_prep.heartbeat import Heartbeat

    beat = Heartbeat(10.0, sys.stdout)
    intervals = []
    for _ in range(9):
        intervals.append(beat._interval())
        beat._quiet_beats += 1
    assert intervals == [10, 10, 10, 10, 10, 10, 20, 40, 60]
    beat.stage("member 4 of 5")
    assert beat._interval() == 10


def test_a_console_that_prints_gets_no_heartbeat(capsys):
    with beating(every=0.2) as beat:
        for i in range(12):
            print(f"epoch {i}")
            time.sleep(0.05)
    assert beat is not None and beat.lines == 0
    assert "..." not in capsys.readouterr().out


def test_progress_bar_redraws_in_a_log_are_not_lines(capsys):
    # A bar redrawn with "\\r" in a file or pipe leaves no line a reader can see.
    with beating(every=0.05) as beat:
        for _ in range(8):
            sys.stderr.write("\rpredict  40%")
            time.sleep(0.05)
    assert beat is not None and beat.lines >= 1


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(heartbeat.HEARTBEAT_ENV, "0")
    with beating() as beat:
        assert beat is None
    monkeypatch.setenv(heartbeat.HEARTBEAT_ENV, "2.5")
    with beating() as beat:
        assert beat is not None and beat.every == 2.5
        with beating() as inner:  # one watcher per process
            assert inner is None
    monkeypatch.delenv(heartbeat.HEARTBEAT_ENV)
    with beating() as beat:
        assert beat is not None and beat.every == heartbeat.DEFAULT_EVERY
    stage("nothing watches: a no-op")


@pytest.mark.parametrize("text", ["", "\n", "\r\r"])
def test_empty_writes_do_not_change_the_indentation(text, capsys):
    with beating(every=0.05) as beat:
        print("      done in 3 s")
        sys.stdout.write(text)
        time.sleep(0.2)
    assert beat is not None
    beats = [line for line in capsys.readouterr().out.splitlines() if "..." in line]
    assert beats and all(line.startswith("      ... working") for line in beats)
