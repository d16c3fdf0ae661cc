"""`ecgtune search` on a real multi-node Ray cluster (tests/cluster/conftest.py): trials spread
over the worker nodes, a lost worker node costs only the current epoch, a killed driver is
resumed against the same cluster, and README's `ray job submit` path works.

Every wait ends on an event (a result written, a process exited); the limits only keep a hung
cluster from hanging the suite.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ecgtune.search import metric_keys as K
from ecgtune.search import tracking

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
HANG_LIMIT = 600  # seconds; a tiny search here takes well under a minute


@dataclass
class Search:
    """One `ecgtune search` driver against the cluster, in its own session."""

    process: subprocess.Popen
    log: Path
    storage: Path
    uri: str
    name: str

    def output(self) -> str:
        return self.log.read_text()

    def wait(self, timeout: float = HANG_LIMIT) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the search hangs after {timeout:.0f} s:\n{self.output()}")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.fixture
def start_search(cluster, cluster_data, tmp_path) -> Iterator[Callable[..., Search]]:
    """Starts drivers (`ecgtune search --address ...`); kills any still running at the end."""
    started: list[Search] = []

    def start(name: str, *extra: str, resume: bool = False) -> Search:
        storage = tmp_path / "ray_results"  # both nodes see it: the same host
        uri = tracking.default_tracking_uri(tmp_path)
        log = tmp_path / f"{name}-{len(started)}.log"
        args = ["search", "--address", cluster.address, "--data", str(cluster_data),
                "--space", "tiny", "--name", name, "--storage", str(storage),
                "--tracking-uri", uri, "--gpus-per-trial", "0", "--cpus-per-trial", "1",
                "--max-concurrent", "2", "--scheduler", "fifo", *extra]
        with open(log, "w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "ecgtune.ensembles.cli", *args,
                 *(["--resume"] if resume else [])],
                stdout=out, stderr=subprocess.STDOUT, env=cluster.env(), cwd=tmp_path,
                start_new_session=True,
            )
        search = Search(process, log, storage, uri, name)
        started.append(search)
        return search

    yield start
    for search in started:
        if search.process.poll() is None:
            search.kill()


def _trial_results(storage: Path) -> dict[str, list[dict]]:
    """Each trial's results so far (trial id -> results), from the result.json Ray writes."""
    out: dict[str, list[dict]] = {}
    for path in storage.rglob("result.json"):
        results = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line being written
                results.append(json.loads(line))
        if results:
            out[results[0]["trial_id"]] = results
    return out


def _wait_for(search: Search, what: str, condition: Callable[[], Any],
              timeout: float = HANG_LIMIT) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if search.process.poll() is not None:
            pytest.fail(f"the search exited before {what}:\n{search.output()}")
        if time.monotonic() > deadline:
            search.kill()
            pytest.fail(f"no {what} after {timeout:.0f} s:\n{search.output()}")
        time.sleep(0.5)
    return value


def _runs(uri: str, name: str) -> tuple[list, list]:
    client = tracking.client(uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(tracking.TAG_ROLE) == "search"]
    children = [r for r in runs if r.data.tags.get(tracking.TAG_ROLE) == "trial"]
    return parents, children


def _assert_one_finished_run_per_trial(uri: str, name: str, num_samples: int,
                                       out: str) -> dict[str, Any]:
    """Exactly one parent and one child run per trial, all FINISHED: none left RUNNING."""
    parents, children = _runs(uri, name)
    assert [p.info.status for p in parents] == ["FINISHED"], out
    trial_ids = [r.data.tags[tracking.TAG_TRIAL_ID] for r in children]
    assert len(trial_ids) == num_samples == len(set(trial_ids)), (trial_ids, out)
    assert {r.info.status for r in children} == {"FINISHED"}, out
    return {r.data.tags[tracking.TAG_TRIAL_ID]: r for r in children}


def _metric_history(uri: str, run_id: str, key: str) -> list[float]:
    return [m.value for m in tracking.client(uri).get_metric_history(run_id, key)]


def test_trials_spread_over_both_worker_nodes(cluster, start_search):
    search = start_search("spread", "--num-samples", "2", "--epochs", "2")
    assert search.wait() == 0, search.output()
    runs = _assert_one_finished_run_per_trial(search.uri, search.name, 2,
                                              search.output())
    nodes = {run.data.tags["ecgtune.node_id"] for run in runs.values()}
    assert nodes == {w.node_id for w in cluster.live_workers()}, nodes
    assert cluster.head is not None and cluster.head.node_id not in nodes


def test_lost_worker_node_costs_only_the_current_epoch(cluster, start_search):
    epochs = 8
    search = start_search("node-loss", "--num-samples", "2", "--epochs", str(epochs))

    def victim() -> tuple[str, int] | None:
        # Both trials running (one per node) and one with a checkpoint and epochs to go.
        results = _trial_results(search.storage)
        if len(results) < 2:
            return None
        trial_id, done = min(results.items(), key=lambda kv: len(kv[1]))
        return (trial_id, len(done)) if len(done) <= epochs - 3 else None

    trial_id, done = _wait_for(search, "two running trials", victim)
    node_id = _trial_results(search.storage)[trial_id][-1][K.ENV_NODE]
    lost = cluster.worker_of(node_id)
    survivor = next(w for w in cluster.live_workers() if w is not lost)
    raylet = lost.raylet()
    assert raylet is not None
    raylet.send_signal(signal.SIGKILL)  # the node disappears, as a reclaimed spot instance

    assert search.wait() == 0, search.output()
    out = search.output()
    runs = _assert_one_finished_run_per_trial(search.uri, search.name, 2,
                                              search.output())
    moved = runs[trial_id]
    assert moved.data.tags["ecgtune.node_id"] == survivor.node_id, out
    # Resumed from the checkpoint it had when the node died (or a later one), not epoch 0,
    # and it still completed its budget.
    restored = _metric_history(search.uri, moved.info.run_id, K.RESTORED_FROM_EPOCH)
    assert max(restored) >= done >= 1, (restored, done, out)
    assert max(_metric_history(search.uri, moved.info.run_id, K.EPOCH)) == epochs
    assert "retrying from its last checkpoint" in out, out
    _assert_quiet_console(out)


def _assert_quiet_console(out: str) -> None:
    """A lost node is one line of ours at the default verbosity, not Ray's state dumps."""
    for noise in ("Traceback", "(raylet)", "has been marked dead", "NodeDiedError",
                  "RayActorError", "Restored on"):
        assert noise not in out, f"{noise!r} on the console:\n{out}"


def _experiment_state_saved_after(storage: Path, name: str, moment: float) -> bool:
    states = list(storage.glob(f"{name}/experiment_state-*.json"))
    return any(s.stat().st_mtime > moment for s in states)


def _mid_trials_in_saved_state(search: Search, budget: int) -> set[str]:
    """Waits for trials with epochs to go whose checkpoint a saved experiment state knows: the
    driver writes a result (and has its checkpoint) before result.json shows it, so any state
    saved later has it. Returns those trials."""
    while True:
        results = _wait_for(search, "a trial result", lambda: _trial_results(search.storage))
        saved = functools.partial(_experiment_state_saved_after, search.storage, search.name,
                                  time.time() + 0.01)
        _wait_for(search, "an experiment state saved after it", saved)
        mid = {t for t, r in _trial_results(search.storage).items()
               if t in results and r[-1][K.EPOCH] < budget}
        if mid:
            return mid


def test_killed_driver_resumes_against_the_same_cluster(cluster, start_search):
    # Enough epochs that trials are still running when a state save follows their results.
    epochs = 20
    search = start_search("driver-loss", "--num-samples", "3", "--epochs", str(epochs))
    mid = _mid_trials_in_saved_state(search, epochs)
    search.kill()  # SIGKILL: no cleanup at all, runs left RUNNING

    resumed = start_search("driver-loss", resume=True)  # the size it was started with
    assert resumed.wait() == 0, resumed.output()
    runs = _assert_one_finished_run_per_trial(resumed.uri, resumed.name, 3,
                                              resumed.output())
    restored = [max(_metric_history(resumed.uri, runs[t].info.run_id, K.RESTORED_FROM_EPOCH))
                for t in mid]
    assert max(restored) >= 1, (restored, resumed.output())
    assert {r.data.tags["ecgtune.node_id"] for r in runs.values()} <= {
        w.node_id for w in cluster.live_workers()}


def test_job_submission_as_readme_documents(cluster, cluster_data, tmp_path):
    """README's `ray job submit --working-dir . -- ecgtune search --address auto ...`, from the
    repository root, against the head's dashboard."""
    if not cluster.dashboard:
        pytest.skip("the `cluster` extra (ray[default]: Ray's dashboard and job server) is "
                    "not installed: pip install -e '.[cluster]'")
    uri = tracking.default_tracking_uri(tmp_path)
    job_id = f"ecgtune-{secrets.token_hex(4)}"
    submit = subprocess.run(
        [RAY, "job", "submit", "--address", cluster.dashboard_url, "--submission-id", job_id,
         "--working-dir", ".", "--",
         "ecgtune", "search", "--address", "auto", "--data", str(cluster_data), "--name", "job",
         "--space", "tiny", "--num-samples", "2", "--epochs", "1", "--gpus-per-trial", "0",
         "--cpus-per-trial", "1", "--storage", str(tmp_path / "ray_results"),
         "--tracking-uri", uri],
        cwd=REPO, env=cluster.env(), capture_output=True, text=True, timeout=HANG_LIMIT,
    )
    out = submit.stdout + submit.stderr
    assert submit.returncode == 0, out
    status = subprocess.run([RAY, "job", "status", "--address", cluster.dashboard_url, job_id],
                            env=cluster.env(), capture_output=True, text=True, timeout=120)
    # The CLI's words for JobStatus.SUCCEEDED ("failed" / "was stopped" otherwise).
    assert f"Job '{job_id}' succeeded" in status.stdout + status.stderr, (status.stdout, out)
    runs = _assert_one_finished_run_per_trial(uri, "job", 2, out)
    assert {r.data.tags["ecgtune.node_id"] for r in runs.values()} <= {
        w.node_id for w in cluster.live_workers()}
