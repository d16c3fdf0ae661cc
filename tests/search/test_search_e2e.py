"""End-to-end searches on synthetic shards with the `tiny` space: local Ray, SQLite MLflow."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trial_faults

from ecgtune.search import metric_keys as K
from ecgtune.search import tracking
from ecgtune.search.errors import SearchError, TrackingError
from ecgtune.search.run import SearchOptions, run_search

pytestmark = pytest.mark.slow


def _runs(uri: str, name: str):
    client = tracking.client(uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(tracking.TAG_ROLE) == "search"]
    children = [r for r in runs if r.data.tags.get(tracking.TAG_ROLE) == "trial"]
    return client, parents, children


def test_tiny_search_tracks_one_parent_and_a_nested_run_per_trial(tiny_search):
    result = tiny_search.result
    assert result.complete
    assert len(result.trials) == 4
    client, parents, children = _runs(result.tracking_uri, result.name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["ecgtune.data_manifest_sha256"]
    assert len(children) == 4
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags[tracking.TAG_PARENT] == parents[0].info.run_id
        assert {"fusion", "branch.depths", "train.lr", "train.loss"} <= set(run.data.params)
        history = client.get_metric_history(run.info.run_id, K.OBJECTIVE)
        assert history and all(0.0 <= m.value <= 1.0 for m in history)
        assert run.data.tags[tracking.TAG_EARLY_STOPPED] in ("true", "false")
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"thresholds.json", "val_predictions.npz", "validation.png"} <= artifacts
        checkpoint = Path(run.data.tags[tracking.TAG_BEST_CHECKPOINT])
        assert (checkpoint / "model.pt").is_file()
    _assert_asha_decisions_match_the_records(client, children, result.trial_epochs)
    names = {r.info.run_name for r in children}
    assert len(names) == 4 and all(n.startswith("t0") for n in names)
    # Artifacts live beside the SQLite store, not in ./mlruns of the working directory.
    experiment = client.get_experiment_by_name(result.name)
    store = Path(result.tracking_uri.removeprefix("sqlite:///")).parent
    assert experiment.artifact_location == (store / "mlartifacts").resolve().as_uri()
    assert any((store / "mlartifacts").rglob("thresholds.json"))


# The tiny space: 3 epochs, grace 1, reduction factor 2, so ASHA's rungs are epochs 1 and 2.
TINY_EPOCHS, TINY_RUNGS = 3, (1, 2)


def _assert_asha_decisions_match_the_records(client, children, trial_epochs: int) -> None:
    """Check what ASHA decided against what the trials recorded. Whether it cuts any trial
    depends on the order results arrive in, so no count of cut trials is asserted; what holds
    in every order is where and whom it may cut."""
    histories = {
        r.info.run_id: {m.step: m.value for m in client.get_metric_history(r.info.run_id,
                                                                            K.OBJECTIVE)}
        for r in children
    }
    for run in children:
        history = histories[run.info.run_id]
        done = max(history)
        assert sorted(history) == list(range(1, done + 1)), history
        assert run.data.tags[tracking.TAG_EPOCHS_DONE] == str(done)
        if run.data.tags[tracking.TAG_EARLY_STOPPED] == "false":
            assert done == TINY_EPOCHS
            continue
        assert done in TINY_RUNGS, f"cut at epoch {done}, not at a rung"
        # ASHA cuts below a quantile of the scores seen at a rung: never the rung's best.
        best = max(h[done] for h in histories.values() if done in h)
        assert history[done] < best, (done, history[done], best)
    assert trial_epochs == sum(len(h) for h in histories.values())


def test_best_tiny_trial_learns(tiny_search):
    _, _, children = _runs(tiny_search.result.tracking_uri, tiny_search.result.name)
    best_auroc = max(r.data.metrics[K.VAL_AUROC] for r in children)
    assert best_auroc > 0.75, f"best val macro AUROC {best_auroc:.3f} is not clearly above chance"


# One trial per fault, told apart by its seed (tests/support/trial_faults.FaultsBySeed).
FAULT_SPACE = """
base: tiny
fixed: {train.epochs: 3, train.crop_len: 1024, train.batch_size: 32, train.augment: false}
params:
  train.seed: {choice: [1, 2, 3]}
points_to_evaluate:
  - {train.seed: 1}
  - {train.seed: 2}
  - {train.seed: 3}
"""
FAULT_BY_SEED = {1: "crash", 2: "nan", 3: "oom"}


def test_crashed_trial_resumes_from_checkpoint_and_nan_trial_fails_clearly(prepared_data, tmp_path,
                                                                        capsys):
    from ray.tune import ExperimentAnalysis

    space = tmp_path / "faults.yaml"
    space.write_text(FAULT_SPACE)
    uri = tracking.default_tracking_uri(tmp_path)
    with trial_faults.ship_by_value():
        result = run_search(SearchOptions(
            data=prepared_data, space=str(space), name="faults", num_samples=3,
            scheduler="fifo", tracking_uri=uri, storage=str(tmp_path / "ray"), num_cpus=2,
            seed=0, verbose=1,
        ), trial_hook=trial_faults.FaultsBySeed(FAULT_BY_SEED, epoch=1))
    assert result.complete
    # The crash is retried once from its checkpoint; the NaN, deterministic, is not retried
    # at all (a retry would only repeat it). Nor is an out-of-memory error: same config, same
    # memory, same failure.
    def fault(config: dict) -> str:
        return FAULT_BY_SEED.get(int(config["train.seed"]), "none")

    failures = {fault(t.config): (t.status, t.run_metadata.num_failures)
                for t in ExperimentAnalysis(result.experiment_path).trials}
    assert failures == {"crash": ("TERMINATED", 1), "nan": ("ERROR", 1), "oom": ("ERROR", 1)}
    progress = capsys.readouterr().out
    assert progress.count("retrying from its last checkpoint") == 1, progress
    assert ("FAILED: ecgtune.search.training.NonFiniteLossError: training loss became nan"
            in progress)
    assert "TrialOutOfMemoryError: GPU out of memory at batch 32 x crop 1024" in progress
    client, parents, children = _runs(uri, "faults")
    by_fault = {fault(r.data.params): r for r in children}
    # The hook is no part of a trial's config: nothing test-only among the params users see.
    assert [k for r in children for k in r.data.params if k.startswith("debug.")] == []
    crashed, diverged, oom = by_fault["crash"], by_fault["nan"], by_fault["oom"]
    assert oom.info.status == "FAILED"
    assert "out of memory" in oom.data.tags[tracking.TAG_ERROR]
    # Where each trial ran is on its run (a retry may move it to another node).
    assert crashed.data.tags["ecgtune.device"] == "cpu (cpu)"
    assert crashed.data.tags["ecgtune.precision"] == "fp32"
    assert crashed.data.tags["ecgtune.precision_reason"] == "fp32: auto on a CPU"
    assert crashed.data.tags["ecgtune.layout"] == "ncl"
    assert crashed.data.tags["ecgtune.node_id"]
    # What each epoch used of the machine: on a CPU trial, its process's CPU utilisation.
    for key in (K.SYSTEM_CPU_UTIL, K.SYSTEM_SAMPLES_PER_S, K.SYSTEM_EPOCH_S):
        history = client.get_metric_history(crashed.info.run_id, key)
        assert history and all(m.value > 0 for m in history), key
    # Retried from the epoch-1 checkpoint, not restarted: it reports where it resumed.
    assert crashed.info.status == "FINISHED"
    restored = client.get_metric_history(crashed.info.run_id, K.RESTORED_FROM_EPOCH)
    assert max(m.value for m in restored) == 1
    epochs = sorted(m.step for m in client.get_metric_history(crashed.info.run_id, K.OBJECTIVE))
    assert epochs == [1, 2, 3], "each epoch ran exactly once across the crash"
    # The NaN trial fails with a message naming the problem; the search carried on.
    assert diverged.info.status == "FAILED"
    assert "loss became nan" in diverged.data.tags[tracking.TAG_ERROR]
    assert parents[0].info.status == "FINISHED"


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ecgtune.ensembles.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs,
    )


def _trial_results(storage: Path) -> int:
    return sum(1 for p in storage.rglob("result.json") if p.stat().st_size > 0)


def test_interrupted_search_resumes_without_duplicating_runs(prepared_data, tmp_path):
    storage = tmp_path / "ray"
    uri = tracking.default_tracking_uri(tmp_path)
    common = ["--data", str(prepared_data), "--space", "tiny", "--name", "resumable",
              "--storage", str(storage), "--tracking-uri", uri, "--num-cpus", "2",
              "--max-concurrent", "1", "--scheduler", "fifo"]
    proc = _cli("search", "--num-samples", "3", *common, start_new_session=True)
    # Interrupt on an event (the first epoch result of 9 epochs in all), never on a clock;
    # the limit only keeps a hung search from hanging the suite.
    hang_limit = time.monotonic() + 900
    while _trial_results(storage) == 0 and proc.poll() is None:
        if time.monotonic() > hang_limit:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("no trial result after 15 min: the search hangs")
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[0]
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out
    _, parents, children = _runs(uri, "resumable")
    assert len(children) < 3 or any(r.info.status == "KILLED" for r in children), out
    assert not [r for r in parents + children if r.info.status == "RUNNING"]

    resumed = _cli("search", "--resume", *common)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    _, parents, children = _runs(uri, "resumable")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trial_ids = [r.data.tags[tracking.TAG_TRIAL_ID] for r in children]
    assert len(trial_ids) == 3 and len(set(trial_ids)) == 3, "no duplicated trial runs"
    assert all(r.info.status == "FINISHED" for r in children)


def test_search_fails_fast_on_bad_input(prepared_data, tmp_path):
    import ray

    base = dict(space="tiny", num_samples=1, storage=str(tmp_path / "ray"), num_cpus=2,
                tracking_uri=tracking.default_tracking_uri(tmp_path), verbose=0)
    with pytest.raises(SearchError, match=r"no manifest\.json"):
        run_search(SearchOptions(data=tmp_path / "missing", name="a", **base))
    with pytest.raises(TrackingError, match="unreachable"):
        run_search(SearchOptions(data=prepared_data, name="b",
                                 **{**base, "tracking_uri": "http://127.0.0.1:9"}))
    corrupt = tmp_path / "corrupt"
    shutil.copytree(prepared_data, corrupt)
    shard = sorted((corrupt / "shards").glob("*.parquet"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(Exception, match=re.escape(shard.name)):
        run_search(SearchOptions(data=corrupt, name="c", **base))
    # Fast because nothing started: no Ray, no experiment folder.
    assert not ray.is_initialized(), "nothing may start before the inputs are checked"
    assert not any((tmp_path / "ray").glob("*/*")), "no experiment may be created"


def test_cli_names_the_problem_and_exits_1(tmp_path):
    proc = _cli("search", "--data", str(tmp_path / "nope"), "--space", "tiny",
                "--storage", str(tmp_path / "ray"),
                "--tracking-uri", tracking.default_tracking_uri(tmp_path))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "ecgtune search: error:" in out and "nope" in out
    assert "Traceback" not in out


def test_pinned_search_reuses_the_name_of_a_rejected_invocation(prepared_data, tmp_path, capsys):
    from ecgtune.ensembles.cli import main

    uri = tracking.default_tracking_uri(tmp_path)
    common = ["search", "--data", str(prepared_data), "--space", "tiny", "--name", "pinned",
              "--storage", str(tmp_path / "ray"), "--tracking-uri", uri, "--num-cpus", "2"]
    start = time.monotonic()
    assert main([*common, "--set", "train.bogus=1"]) == 2
    assert time.monotonic() - start < 10
    assert "unknown config key 'train.bogus'" in capsys.readouterr().err
    code = main([*common, "--num-samples", "2", "--epochs", "1", "--scheduler", "fifo",
                 "--set", "train.lr=0.004", "--set", "fusion=concat",
                 "--set", "train.steps_per_epoch=2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "pinned: train.lr=0.004 (not searched" in out
    assert "fusion=concat (not searched" in out
    _, parents, children = _runs(uri, "pinned")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    params = parents[0].data.params
    assert params["pinned.train.lr"] == "0.004" and params["pinned.fusion"] == "concat"
    assert params["pinned.train.steps_per_epoch"] == "2"
    assert set(parents[0].data.tags["ecgtune.unsearched"].split(",")) == {"train.lr", "fusion"}
    assert len(children) == 2
    for run in children:
        assert run.data.params["train.lr"] == "0.004"
        assert run.data.params["fusion"] == "concat"
        # Conditional on fusion in [concat, attention]: still searched under the pin.
        assert run.data.params["fusion.hidden"] in ("16", "32")


def _is_loopback(ip: str) -> bool:
    import ipaddress

    address = ipaddress.ip_address(ip.split("%", 1)[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def test_local_ray_listens_on_loopback_only(tmp_path):
    import psutil
    import ray

    from ecgtune.search import _ray_compat
    from ecgtune.search.ray_session import init_ray

    module, attribute = _ray_compat.LOOPBACK_SWITCH
    ray_constants = importlib.import_module(module)
    assert not ray.is_initialized()
    switch = getattr(ray_constants, attribute)
    assert init_ray(SearchOptions(data=tmp_path, num_cpus=1))
    try:
        # Only the start of this instance is loopback-only; a later `ray start` is not.
        assert getattr(ray_constants, attribute) == switch

        @ray.remote
        class Probe:
            def pid(self) -> int:
                return os.getpid()

        worker_pid = ray.get(Probe.remote().pid.remote())
        me = psutil.Process()
        listening = []
        for proc in [me, *me.children(recursive=True)]:
            try:
                for conn in proc.net_connections(kind="inet"):
                    if conn.status == psutil.CONN_LISTEN:
                        listening.append((proc.pid, proc.name(), conn.laddr.ip))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        names = " ".join(name for _, name, _ in listening)
        assert "gcs_server" in names and "raylet" in names, listening
        # Workers are checked too (they are the raylet's children), but whether one has
        # opened its server socket yet depends on timing, so only the fixed ones must show.
        assert worker_pid in {p.pid for p in me.children(recursive=True)}
        assert me.pid in {pid for pid, _, _ in listening}, listening
        exposed = [entry for entry in listening if not _is_loopback(entry[2])]
        assert not exposed, f"listening beyond 127.0.0.1: {exposed}"
    finally:
        ray.shutdown()
