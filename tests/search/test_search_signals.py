"""A real search and its process: SIGTERM is handled like Ctrl-C (state saved, summary, exit
143, no Ray stack dump, the parent run KILLED, `--resume` continues it); two searches of one
name started together leave one search, not two in one folder; two processes opening a new
SQLite store together both get it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ecgtune.search import tracking
from ecgtune.search.claim import open_tracking_store

pytestmark = pytest.mark.slow


def _cli(*args: str, stderr: Path) -> subprocess.Popen:
    with stderr.open("w") as err:
        return subprocess.Popen([sys.executable, "-m", "ecgtune.ensembles.cli", *args],
                                stdout=subprocess.PIPE, stderr=err, text=True)


def _runs(uri: str, name: str) -> tuple[list, list]:
    client = tracking.client(uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return ([r for r in runs if r.data.tags.get(tracking.TAG_ROLE) == "search"],
            [r for r in runs if r.data.tags.get(tracking.TAG_ROLE) == "trial"])


def _wait_for_line(proc: subprocess.Popen, fragment: str, limit_s: float = 900) -> list[str]:
    """stdout lines up to the first containing `fragment` (an event, never a clock; the
    limit only keeps a hung search from hanging the suite)."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"the search ended before {fragment!r}:\n{''.join(lines)}")
        lines.append(line)
        if fragment in line:
            return lines
    proc.kill()
    pytest.fail(f"no {fragment!r} after {limit_s:.0f} s")


def test_sigterm_stops_a_search_like_ctrl_c_and_resume_continues(prepared_data, tmp_path):
    uri = tracking.default_tracking_uri(tmp_path)
    common = ["--data", str(prepared_data), "--space", "tiny", "--name", "termed",
              "--storage", str(tmp_path / "ray"), "--tracking-uri", uri, "--num-cpus", "2",
              "--max-concurrent", "1", "--scheduler", "fifo"]
    proc = _cli("search", "--num-samples", "2", *common, stderr=tmp_path / "err.txt")
    try:
        _wait_for_line(proc, " epoch 1/")
        proc.send_signal(signal.SIGTERM)  # to the driver alone, as `kill PID` or `timeout` do
        out, _ = proc.communicate(timeout=180)
    finally:
        proc.kill()
    err = (tmp_path / "err.txt").read_text()
    assert proc.returncode == 143, out + err
    assert "*** SIGTERM" not in err and "Traceback" not in err, err
    assert "(interrupted: --resume continues it)" in out  # the summary
    parents, children = _runs(uri, "termed")
    assert len(parents) == 1 and parents[0].info.status == "KILLED"
    assert not [r for r in children if r.info.status == "RUNNING"]

    resumed = _cli("search", "--resume", *common, stderr=tmp_path / "err2.txt")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out + (tmp_path / "err2.txt").read_text()
    assert "Search 'termed' (resumed)" in out
    parents, children = _runs(uri, "termed")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)


def test_two_searches_of_one_name_started_together_leave_one(prepared_data, tmp_path):
    uri = tracking.default_tracking_uri(tmp_path)
    storage = tmp_path / "ray"
    args = ["search", "--data", str(prepared_data), "--space", "tiny", "--name", "twice",
            "--storage", str(storage), "--tracking-uri", uri, "--num-cpus", "2",
            "--num-samples", "1", "--epochs", "1", "--scheduler", "fifo",
            "--set", "train.steps_per_epoch=2"]
    procs = [_cli(*args, stderr=tmp_path / f"err{i}.txt") for i in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    errs = [(tmp_path / f"err{i}.txt").read_text() for i in range(2)]
    assert sorted(p.returncode for p in procs) == [0, 1], outs + errs
    loser = [p.returncode for p in procs].index(1)
    lines = [line for line in errs[loser].splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in errs[loser], errs[loser]
    assert lines[0].startswith("ecgtune search: error: search 'twice' is already running (pid ")
    assert str(procs[1 - loser].pid) in lines[0]
    parents, children = _runs(uri, "twice")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 1
    assert len(list((storage / "twice").glob("tuner.pkl"))) == 1


STORE = """
import sys
from ecgtune.search import tracking
from ecgtune.search.claim import open_tracking_store
client = open_tracking_store(sys.argv[1])
print(tracking.get_or_create_experiment(client, sys.argv[2], sys.argv[1]))
"""


def test_two_processes_opening_a_new_sqlite_store_together_both_get_it(tmp_path):
    # Seconds of schema migrations each; without the lock the second process's migration
    # fails in an alembic traceback ("expected to match one row ... 0 found").
    uri = tracking.default_tracking_uri(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-c", STORE, uri, name], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name in ("a", "b")]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert sorted(out.strip() for out, _ in outs) == ["1", "2"]
    names = {e.name for e in open_tracking_store(uri).search_experiments()}
    assert {"a", "b"} <= names
