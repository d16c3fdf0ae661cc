"""The console script as a process: SIGTERM ends a command the way Ctrl-C does (exit 143), and a
read-only, forbidden or full file system ends it with one line naming the path (exit 1), never
a traceback. We run as root, so permissions cannot be taken away for real: the errors are
injected where the system call would raise them.

Fast tier: the search itself (Ray) is in tests/search/test_search_signals.py.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ecgtune.data_prep import shards
from ecgtune.data_prep.console import (
    EXIT_TERMINATED,
    Terminated,
    expect_disk_use,
    os_error_line,
    sigterm_as_interrupt,
    terminated,
)
from ecgtune.ensembles.cli import main


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    from ecgtune.data_prep import synthesize

    out = tmp_path_factory.mktemp("console-records")
    synthesize(out, 40, seed=0, workers=1)
    return out


def _prep(records: Path, output: Path, capsys) -> tuple[int, str]:
    code = main(["prep", "--input", str(records), "--output", str(output), "--workers", "1",
                 "--shard-size", "10", "--no-progress"])
    return code, capsys.readouterr().err


def _one_line(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(f"ecgtune {command}: error: "), err
    return lines[0]


def _full_disk_at(monkeypatch, nth: int) -> list[str]:
    """From the nth shard on, writing a shard's bytes fails as a full disk fails `write`:
    ENOSPC with no file name. Returns the shard paths that failed."""
    real_open = open
    failed: list[str] = []
    seen = [0]

    class _FullFile:
        def __init__(self, file: Any) -> None:
            self.file = file

        def __enter__(self) -> _FullFile:
            return self

        def __exit__(self, *exc: object) -> None:
            self.file.close()

        def write(self, data: object) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full_disk_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode and str(file).endswith(".tmp") and ".parquet." in str(file):
            seen[0] += 1
            if seen[0] >= nth:
                failed.append(str(file))
                return _FullFile(handle)
        return handle

    monkeypatch.setattr(shards, "open", full_disk_open, raising=False)
    return failed


def test_prep_on_a_full_disk_ends_in_one_line_and_resumes(records, tmp_path, capsys,
                                                         monkeypatch):
    out = tmp_path / "out"
    failed = _full_disk_at(monkeypatch, nth=3)
    code, err = _prep(records, out, capsys)
    assert code == 1 and failed
    line = _one_line(err, "prep")
    assert f"cannot write {out / 'shards'}/fold" in line
    assert ".parquet: no space left on device (this step needs about " in line
    assert f" MB under {out}; " in line and " free there now)" in line
    # What is left is safe: two whole shards, no temporary file, no manifest.
    assert not (out / "manifest.json").exists()
    assert len(list((out / "shards").glob("*.parquet"))) == 2
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]

    monkeypatch.undo()
    code, err = _prep(records, out, capsys)
    assert code == 0, err
    clean = tmp_path / "clean"
    assert _prep(records, clean, capsys)[0] == 0
    resumed, fresh = (json.loads((d / "manifest.json").read_text()) for d in (out, clean))
    assert [s["sha256"] for s in resumed["shards"]] == [s["sha256"] for s in fresh["shards"]]
    assert resumed["records_written"] == fresh["records_written"] == 40


def test_prep_on_a_read_only_file_system_ends_in_one_line(records, tmp_path, capsys,
                                                         monkeypatch):
    out = tmp_path / "mounted-ro" / "out"
    real_mkdir = Path.mkdir

    def read_only_mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
        if str(self).startswith(str(tmp_path / "mounted-ro")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only_mkdir)
    code, err = _prep(records, out, capsys)
    assert code == 1
    assert _one_line(err, "prep") == (
        f"ecgtune prep: error: cannot write {out / 'shards'}: read-only file system")


def test_prep_without_permission_ends_in_one_line(records, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    real_open = open

    def forbidden_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "w" in mode and "quarantine.csv" in str(file):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(shards, "open", forbidden_open, raising=False)
    code, err = _prep(records, out, capsys)
    assert code == 1
    assert _one_line(err, "prep") == (
        f"ecgtune prep: error: cannot access {out / 'quarantine.csv'}: permission denied")


# The other commands meet the same errors in their own steps; what the console script does
# with them is one place (ensembles.cli `main`), checked here with each command's output flag.
COMMANDS = [
    ("search", "ecgtune.search.run.run_search",
     ["--data", "DATA", "--storage", "OUT"]),
    ("ensemble", "ecgtune.ensembles.build.ensemble.build_ensemble",
     ["--data", "DATA", "--name", "s", "--output", "OUT"]),
    ("evaluate", "ecgtune.ensembles.evaluate.run.evaluate_bundle",
     ["--bundle", "B", "--data", "DATA", "--output", "OUT"]),
    ("export", "ecgtune.ensembles.ship.onnx_export.export_onnx",
     ["--bundle", "B", "--output", "OUT"]),
]


@pytest.mark.parametrize(("command", "target", "args"), COMMANDS,
                         ids=[c for c, _, _ in COMMANDS])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EPERM],
                         ids=["ENOSPC", "EROFS", "EDQUOT", "EPERM"])
def test_each_command_ends_a_file_system_error_in_one_line(command, target, args, code,
                                                           tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    argv = [a.replace("OUT", str(out)).replace("DATA", str(tmp_path)) for a in args]

    def fail(*a: Any, **k: Any) -> None:
        # A write() of a full disk names no file; an open() of a read-only one does.
        named = () if code in (errno.ENOSPC, errno.EDQUOT) else (str(out / "f.bin"),)
        raise RuntimeError("wrapped") from OSError(code, os.strerror(code), *named)

    monkeypatch.setattr(target, fail)
    if command == "export":  # resolving the bundle is its own step, before the export
        monkeypatch.setattr("ecgtune.ensembles.ship.onnx_export.resolve_bundle", lambda *a: "B")
    status = main([command, *argv])
    line = _one_line(capsys.readouterr().err, command)
    assert status == 1
    expected = {
        errno.ENOSPC: f"cannot write {out}: no space left on device (",
        errno.EDQUOT: f"cannot write {out}: disk quota exceeded (",
        errno.EROFS: f"cannot write {out / 'f.bin'}: read-only file system",
        errno.EPERM: f"cannot access {out / 'f.bin'}: operation not permitted",
    }[code]
    assert line.startswith(f"ecgtune {command}: error: {expected}"), line


def test_other_os_errors_are_not_dressed_up():
    assert os_error_line(FileNotFoundError(errno.ENOENT, "No such file", "/x")) is None
    assert os_error_line(ValueError("no")) is None
    # pyarrow names the errno and the path in its message only.
    arrow = OSError("Failed to open local file '/data/out/x.parquet'. Detail: [errno 28] "
                    "No space left on device")
    assert os_error_line(arrow).startswith(
        "cannot write /data/out/x.parquet: no space left on device")


def test_space_hint_says_what_the_step_needs(tmp_path):
    with sigterm_as_interrupt():
        expect_disk_use(3.4e9, tmp_path)
        line = os_error_line(OSError(errno.ENOSPC, "full", str(tmp_path / "a")))
    assert line.startswith(f"cannot write {tmp_path / 'a'}: no space left on device (this step "
                           f"needs about 3.4 GB under {tmp_path}; ")


def test_sigterm_raises_where_ctrl_c_would_and_the_handler_is_put_back():
    # Python's own Ctrl-C handler, whatever an earlier test of the session left installed.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        before = signal.getsignal(signal.SIGTERM)
        with pytest.raises(Terminated), sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs between bytecodes: at once
        assert terminated()
        assert signal.getsignal(signal.SIGTERM) == before
        with sigterm_as_interrupt():
            assert not terminated()
    finally:
        signal.signal(signal.SIGINT, previous)


def test_sigterm_goes_to_whoever_handles_ctrl_c(monkeypatch):
    # Ray Tune installs such a handler for the length of a search: it stops the trials and
    # saves the experiment state instead of raising.
    calls: list[int] = []
    monkeypatch.setattr(signal, "getsignal", lambda sig: (lambda s, f: calls.append(s))
                        if sig == signal.SIGINT else signal.SIG_DFL)
    with sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert terminated()
    assert calls == [signal.SIGINT]


SLOW_PREP = """
import sys, time
from ecgtune.data_prep import prep
from ecgtune.ensembles.cli import main

original = prep._run_shard

def slow_shard(task):
    side = original(task)
    print("shard written", flush=True)
    time.sleep(60)
    return side

prep._run_shard = slow_shard
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_ends_prep_like_ctrl_c_with_status_143(records, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_PREP, "prep", "--input", str(records), "--output", str(out),
         "--workers", "1", "--shard-size", "10", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "shard written"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_TERMINATED, err
    assert err.strip() == "ecgtune prep: terminated (SIGTERM)"
    assert not (out / "manifest.json").exists()
    assert len(list((out / "shards").glob("*.parquet"))) == 1


def test_a_search_that_fails_on_a_full_storage_says_so_in_one_line(tmp_path, monkeypatch):
    # A full --storage fails a trial's checkpoint, then Tune on Ray's empty error file (an
    # EOFError): with almost no space left there, that is reported as the full disk it is.
    import logging
    import shutil

    from ecgtune.data_prep import console
    from ecgtune.search import run

    # A `prep` run earlier in this process left what it expected to write: not this step's.
    monkeypatch.setattr(console, "_disk_use", {})
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=3 * 2**20))
    full = run._storage_full(str(tmp_path))
    assert full is not None and full.errno == errno.ENOSPC
    assert os_error_line(EOFError("Ran out of input").with_traceback(None)) is None
    try:
        raise full from EOFError("Ran out of input")
    except OSError as exc:
        assert os_error_line(exc) == (f"cannot write {tmp_path}: no space left on device "
                                      "(3 MB free there now)")
    assert run._storage_full("s3://bucket/prefix") is None
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=2**30))
    assert run._storage_full(str(tmp_path)) is None

    # Ray's own log line for a failed save of the experiment state keeps one line.
    try:
        raise OSError("[Errno 28] Error writing bytes to file")
    except OSError:
        record = logging.LogRecord("ray.tune.execution.experiment_state", logging.ERROR, "f", 1,
                                   "Saving experiment state to storage at '%s' failed with "
                                   "exception: ", ("/s",), sys.exc_info())
    assert run._exception_in_line(record) and record.exc_info is None
    assert record.getMessage() == ("Saving experiment state to storage at '/s' failed with "
                                   "exception: OSError: [Errno 28] Error writing bytes to file")


def test_a_read_only_sqlite_store_is_refused_before_anything_starts(tmp_path, monkeypatch):
    import tempfile

    from ecgtune.search import tracking
    from ecgtune.search.errors import TrackingError

    def read_only(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    uri = tracking.default_tracking_uri(tmp_path)
    with pytest.raises(TrackingError) as info:
        tracking.check_tracking_uri(uri)
    assert str(info.value) == (f"MLflow SQLite store {uri}: cannot write in {tmp_path} "
                               "(Read-only file system)")
