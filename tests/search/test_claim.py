"""One search per name: the claim is atomic, a second search (or `--resume`) of a running one
is refused in one line naming it, a claim left by a killed search is taken over (and said),
two searches that open a new SQLite store together both get it, and `ecgtune ensemble` of a
search that is still running is refused unless `--allow-running`.

Fast tier: no Ray (the claim is taken before Ray starts).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ecgtune.search import tracking
from ecgtune.search.claim import LOCK_DIR, claim_search, holder_of, lock_path, open_tracking_store
from ecgtune.search.errors import SearchError

HOLD = """
import sys, time
from ecgtune.search.claim import claim_search
with claim_search(sys.argv[1], sys.argv[2], sys.argv[3]):
    print("claimed", flush=True)
    time.sleep(120)
"""


def _hold(storage: Path, name: str, uri: str) -> subprocess.Popen:
    """A process that holds the claim on `name` until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(storage), name, uri],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "claimed"
    return proc


def _uri(tmp_path: Path) -> str:
    return tracking.default_tracking_uri(tmp_path)


def test_a_held_claim_is_refused_in_one_line_naming_its_holder(tmp_path):
    storage, uri = tmp_path / "ray", _uri(tmp_path)
    holder = _hold(storage, "x", uri)
    try:
        with pytest.raises(SearchError) as info, claim_search(str(storage), "x", uri):
            pass
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(f"search 'x' is already running (pid {holder.pid} on "
                                  f"{socket.gethostname()}, started 20")
        assert "stop it and continue it with --resume" in message
        assert holder_of(str(storage), "x", uri)[1] is True
        # Another name is another claim.
        with claim_search(str(storage), "y", uri) as claim:
            assert claim.note is None
    finally:
        holder.kill()
        holder.wait()


def test_a_claim_left_by_a_killed_search_is_taken_over_and_said(tmp_path):
    storage, uri = tmp_path / "ray", _uri(tmp_path)
    holder = _hold(storage, "x", uri)
    holder.send_signal(signal.SIGKILL)  # no cleanup: the file still names it
    holder.wait()
    left, held = holder_of(str(storage), "x", uri)
    assert left is not None and left.pid == holder.pid and held is False
    with claim_search(str(storage), "x", uri) as claim:
        assert claim.note == (f"taking over the claim on search 'x' left by {left.describe()}: "
                              "that process is gone")
        assert holder_of(str(storage), "x", uri)[0].pid == os.getpid()
    # Released on purpose: nobody named, nothing to take over.
    assert holder_of(str(storage), "x", uri) == (None, False)
    with claim_search(str(storage), "x", uri) as claim:
        assert claim.note is None


def test_one_process_cannot_claim_a_name_twice(tmp_path):
    storage, uri = str(tmp_path / "ray"), _uri(tmp_path)
    with claim_search(storage, "x", uri), pytest.raises(SearchError, match="already running"), \
            claim_search(storage, "x", uri):
        pass


def test_where_the_claim_is_locked(tmp_path):
    uri = _uri(tmp_path)
    assert lock_path(str(tmp_path / "ray"), "x", uri) == tmp_path / "ray" / LOCK_DIR / "x.lock"
    assert lock_path(f"file://{tmp_path}/ray", "x", uri) == tmp_path / "ray" / LOCK_DIR / "x.lock"
    # A URI storage: beside the SQLite store, one lock per storage and name.
    s3 = lock_path("s3://bucket/a", "x", uri)
    assert s3 is not None and s3.parent == tmp_path / LOCK_DIR
    assert s3 != lock_path("s3://bucket/b", "x", uri)
    # A URI storage with a tracking server: nothing to lock, and the search says so.
    assert lock_path("s3://bucket/a", "x", "http://127.0.0.1:5000") is None
    with claim_search("s3://bucket/a", "x", "http://127.0.0.1:5000") as claim:
        assert claim.path is None and "are not locked" in (claim.note or "")


@pytest.mark.parametrize("resume", [False, True], ids=["search", "resume"])
def test_search_of_a_running_name_is_refused_before_ray(small_data, tmp_path, capsys, resume):
    import ray

    from ecgtune.ensembles.cli import main

    storage, uri = tmp_path / "ray", _uri(tmp_path)
    with claim_search(str(storage), "busy", uri):
        code = main(["search", "--data", str(small_data), "--space", "tiny", "--name", "busy",
                     "--storage", str(storage), "--tracking-uri", uri, "--num-cpus", "1",
                     *(["--resume"] if resume else [])])
    err = capsys.readouterr().err
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"ecgtune search: error: search 'busy' is already running (pid "
                               f"{os.getpid()} on {socket.gethostname()}, started ")
    assert not ray.is_initialized()
    assert not (storage / "busy").exists()


# --- ecgtune ensemble of a search that is still running ----------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store for the module: creating one takes seconds (its migrations)."""
    uri = _uri(tmp_path_factory.mktemp("claim-store"))
    open_tracking_store(uri)
    return uri


def _search_runs(uri: str, name: str, storage: Path, finished: int,
                 unfinished: int) -> str:
    """A RUNNING search run of `name` (8 trials planned) and its trial runs; its run id."""
    from mlflow.entities import Param

    client = tracking.client(uri)
    experiment = tracking.get_or_create_experiment(client, name, uri)
    parent = client.create_run(experiment, tags={
        tracking.TAG_ROLE: "search", tracking.TAG_SEARCH_PATH: f"{storage}/{name}"})
    client.log_batch(parent.info.run_id, params=[Param("num_samples", "8")])
    for i in range(finished + unfinished):
        child = client.create_run(experiment, tags={tracking.TAG_PARENT: parent.info.run_id,
                                                    tracking.TAG_ROLE: "trial"})
        if i < finished:
            client.set_terminated(child.info.run_id)
    return parent.info.run_id


def test_ensemble_of_a_running_search_is_refused_unless_allowed(store, tmp_path):
    from ecgtune.ensembles.build.members import check_search_finished, find_search
    from ecgtune.ensembles.errors import EnsembleError

    uri, storage = store, tmp_path / "ray"
    run_id = _search_runs(uri, "live", storage, finished=3, unfinished=2)
    client = tracking.client(uri)
    search = find_search(client, "live")
    assert search.status == "RUNNING" and search.num_samples == 8
    holder = _hold(storage, "live", uri)
    try:
        with pytest.raises(EnsembleError) as info:
            check_search_finished(client, search, uri, allow_running=False)
    finally:
        holder.kill()
        holder.wait()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"search 'live' is still running (run {run_id}, pid "
                              f"{holder.pid} on ")
    assert "; 3 of 8 trials finished so far); wait for it to end, or pass --allow-running" \
        in message
    assert check_search_finished(client, search, uri, allow_running=True) == (
        f"note: search 'live' is still running (run {run_id}): built from the 3 of 8 trials "
        "finished so far")
    # Its process is gone now (killed: the run was never closed).
    with pytest.raises(EnsembleError, match=r"is marked RUNNING but no search process holds it "
                       rf"\(its last process, pid {holder.pid} on .*, is gone\); 3 of 8 "
                       r"trials finished\. `ecgtune search --resume --name live` completes"):
        check_search_finished(client, search, uri, allow_running=False)
    client.set_terminated(run_id)
    assert check_search_finished(client, find_search(client, "live"), uri, False) is None


def test_ensemble_cli_refuses_a_running_search_in_one_line(small_data, store, tmp_path,
                                                           capsys):
    from ecgtune.ensembles.cli import main

    # Started elsewhere (no lock file here): running as far as anyone here can tell.
    run_id = _search_runs(store, "elsewhere", tmp_path / "ray", finished=1, unfinished=1)
    code = main(["ensemble", "--data", str(small_data), "--name", "elsewhere", "--top-k", "4",
                 "--output", str(tmp_path / "bundle"), "--tracking-uri", store])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"ecgtune ensemble: error: search 'elsewhere' is still running "
                               f"(run {run_id}, started 20")
    assert lines[0].endswith("; 1 of 8 trials finished so far); wait for it to end, or pass "
                             "--allow-running to build from the finished trials")
    assert not (tmp_path / "bundle").exists()


def test_fewer_finished_trials_than_top_k_is_said():
    from ecgtune.ensembles.build.members import TrialRef, fewer_than_asked

    trials = [TrialRef(i + 1, f"r{i}", f"t00{i}", f"id{i}", 0.5, "/c") for i in range(2)]
    assert fewer_than_asked("s", trials, 2) is None
    assert fewer_than_asked("s", trials, 4) == (
        "note: only 2 finished trials with a checkpoint in search 's'; --top-k 4 asked for 4")
    assert fewer_than_asked("s", trials[:1], 4).startswith("note: only 1 finished trial with")
