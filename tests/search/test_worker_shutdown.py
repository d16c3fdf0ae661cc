"""A trial worker whose node dies is told to exit (SIGTERM -> SystemExit); when that lands in a
finalizer Python prints "Exception ignored in ..." and a traceback, which reached the driver's
console on a lost node. Only that report is dropped; other unraisable errors still print."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import gc, sys
if sys.argv[1] == "quiet":
    from ecgtune.search.faults import quiet_shutdown_in_finalizers
    quiet_shutdown_in_finalizers()
    quiet_shutdown_in_finalizers()  # idempotent

class Dies:
    def __init__(self, exc):
        self.exc = exc
    def __del__(self):
        raise self.exc

Dies(SystemExit(1))
Dies(ValueError("a real bug in a finalizer"))
gc.collect()
print("still running")
"""


def _run(mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True,
                          text=True, timeout=60, check=True)


def test_system_exit_in_a_finalizer_is_silent_and_other_errors_still_print():
    plain = _run("plain")
    assert "SystemExit" in plain.stderr and "ValueError" in plain.stderr  # the noise exists

    quiet = _run("quiet")
    assert "SystemExit" not in quiet.stderr, quiet.stderr
    assert "ValueError: a real bug in a finalizer" in quiet.stderr
    assert quiet.stdout.strip() == "still running"
