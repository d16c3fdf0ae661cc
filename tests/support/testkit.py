"""Helpers shared by test folders whose conftests cannot import each other (pytest's
importlib mode); on sys.path through pyproject's `pythonpath`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys


def stop_group(process: subprocess.Popen, first: int = signal.SIGTERM,
               wait: float = 30) -> None:
    """Signal a process's whole session (started with start_new_session), wait for it to
    stop, then kill what is left: children (a raylet, a server's workers) may outlive their
    leader."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, first)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def run_fresh(script: str, timeout: float) -> str:
    """Runs a benchmark file as a script in a fresh interpreter (the test session pins torch
    to one thread, tests/conftest.py) and returns what it printed, echoed; fails on error."""
    proc = subprocess.run([sys.executable, script], capture_output=True, text=True,
                          timeout=timeout)
    print()
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout
