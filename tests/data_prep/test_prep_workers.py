"""`prep`'s worker processes end with their parent, whatever ends it (`kill -9` included): a
worker left behind would hold memory and CPU for minutes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ecgtune.data_prep import make_record, write_record

N_RECORDS = 4000  # ~4 s of work for two workers: long enough to be killed mid-run


def _many_records(root: Path, n: int) -> None:
    """One synthetic record under n names (headers rewritten, signal files hard-linked): cheap
    to create, full work to prep."""
    spec, digital = make_record(1, 1)
    hea = write_record(root / "src", "SRC", digital, dx_codes=spec.dx_codes)
    text, mat = hea.read_text(), hea.with_suffix(".mat")
    for i in range(n):
        folder = root / "in" / f"{i // 500:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"R{i:05d}"
        (folder / f"{name}.hea").write_text(text.replace("SRC", name))
        try:
            os.link(mat, folder / f"{name}.mat")
        except OSError:  # a file system without hard links
            (folder / f"{name}.mat").write_bytes(mat.read_bytes())


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_workers_exit_when_prep_is_killed(tmp_path: Path) -> None:
    _many_records(tmp_path, N_RECORDS)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ecgtune.ensembles.cli", "prep", "--input", str(tmp_path / "in"),
           "--output", str(out), "--workers", "2", "--shard-size", "50", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parent = psutil.Process(proc.pid)
    workers: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 60
        # Pass 2 has started (a shard is written) and the pool is up: forkserver + 2 workers.
        while not (list((out / "shards").glob("*.parquet"))
                   and len(workers := parent.children(recursive=True)) >= 3):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "prep did not start its workers"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # the parent only, as `kill -9 PID` does
        proc.wait()
        assert not (out / "manifest.json").exists(), "prep finished before it was killed"
        _, alive = psutil.wait_procs(workers, timeout=5)
        assert not alive, f"still running 5 s after the parent died: {alive}"
    finally:
        for p in workers:  # only the processes this test started
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


_WATCHER = """
import os, sys, time
from ecgtune.data_prep import prep
if sys.argv[2] == "poll":
    del os.pidfd_open  # as on an OS or kernel without pidfds
prep._watch_parent(int(sys.argv[1]))
print("watching", flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("how", ["pidfd", "poll"])
def test_watch_ends_the_worker_when_the_watched_process_dies(how: str) -> None:
    """Both ways of watching (Linux pidfd, portable polling) notice a SIGKILLed process."""
    if how == "pidfd" and not hasattr(os, "pidfd_open"):
        pytest.skip("no os.pidfd_open here")
    target = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    watcher = subprocess.Popen([sys.executable, "-c", _WATCHER, str(target.pid), how],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout.readline() == "watching\n"
        time.sleep(0.2)
        assert watcher.poll() is None  # alive while the watched process lives
        target.kill()
        target.wait()
        assert watcher.wait(timeout=5) == 1
    finally:
        for p in (target, watcher):
            if p.poll() is None:
                p.kill()
            p.wait()
        watcher.stdout.close()
