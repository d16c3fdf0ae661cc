"""ecgtune against a real MLflow tracking server on PostgreSQL, as on a cluster head: a search,
an ensemble and its registration through the CLI; everything survives a restart of the server
and of the database; artifacts go through the server's proxy; refused credentials stop a
command before Ray starts, with one line."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ecgtune.search import tracking

pytestmark = pytest.mark.slow

SEARCH = "pg-tiny"
REGISTERED = "ecg-pg-ensemble"


def _login(user: str | None, password: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    if user is not None:
        env["MLFLOW_TRACKING_USERNAME"] = user
    if password is not None:
        env["MLFLOW_TRACKING_PASSWORD"] = password
    return env


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """A short RAY_TMPDIR (Ray's socket paths must stay under 108 bytes) that shows whether a
    command started Ray."""
    path = Path(tempfile.mkdtemp(prefix="rt"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_plain_server_proxies_artifacts_and_keeps_runs_in_postgres(tracking_server, postgres,
                                                                   tmp_path, monkeypatch):
    from ecgtune.search.tracking import check_tracking_uri

    monkeypatch.chdir(tmp_path)  # the client's own folder: nothing may land here
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    check_tracking_uri(tracking_server.url)
    client = tracking.client(tracking_server.url)
    experiment_id = tracking.get_or_create_experiment(client, "plain", tracking_server.url)
    run = client.create_run(experiment_id, run_name="probe")
    client.log_metric(run.info.run_id, "val/macro_auprc", 0.5, step=1)
    (tmp_path / "note.txt").write_text("proxied")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
    client.set_terminated(run.info.run_id)
    (tmp_path / "note.txt").unlink()

    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert [p.read_text() for p in tracking_server.artifacts.rglob("note.txt")] == ["proxied"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []

    _restart(tracking_server, postgres)
    again = tracking.client(tracking_server.url).get_run(run.info.run_id)
    assert again.info.status == "FINISHED"
    assert again.data.metrics == {"val/macro_auprc": 0.5}


def _restart(server, postgres) -> None:
    """Stop the tracking server and the database, then start both again."""
    server.stop()
    postgres.stop()
    postgres.start()
    server.start()


@dataclass(frozen=True)
class Snapshot:
    """Everything a finished search and ensemble left in the tracking store."""

    runs: dict[str, tuple[str, dict[str, float], dict[str, str]]]  # id -> status, metrics, params
    histories: dict[str, list[tuple[int, float]]]  # trial run id -> val/macro_auprc per step
    versions: list[tuple[str, str, tuple[str, ...]]]  # version, run id, aliases


def _snapshot(uri: str) -> Snapshot:
    client = tracking.client(uri)
    experiment = client.get_experiment_by_name(SEARCH)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    trials = [r for r in runs if r.data.tags.get(tracking.TAG_ROLE) == "trial"]
    histories = {r.info.run_id: sorted((m.step, m.value) for m in client.get_metric_history(
        r.info.run_id, "val/macro_auprc")) for r in trials}
    versions = client.search_model_versions(f"name = '{REGISTERED}'")
    return Snapshot(
        {r.info.run_id: (r.info.status, dict(r.data.metrics), dict(r.data.params)) for r in runs},
        histories,
        # search_model_versions leaves aliases out: ask for each version.
        sorted((v.version, v.run_id, tuple(sorted(client.get_model_version(
            REGISTERED, v.version).aliases))) for v in versions),
    )


def _search_args(data: Path, storage: Path, uri: str) -> list[str]:
    return ["search", "--data", str(data), "--space", "tiny", "--name", SEARCH,
            "--num-samples", "2", "--epochs", "1", "--num-cpus", "2", "--max-concurrent", "2",
            "--scheduler", "fifo", "--set", "train.steps_per_epoch=2", "--storage", str(storage),
            "--tracking-uri", uri, "--verbose", "0"]


def _ensemble_args(data: Path, out: Path, uri: str) -> list[str]:
    # --no-onnx: tracing and checking the logged graph is the tiny search's ensemble's test
    # (test_onnx_export.py); here it would repeat that at ~10 s of CPU.
    return ["ensemble", "--data", str(data), "--name", SEARCH, "--top-k", "2",
            "--output", str(out), "--register", REGISTERED, "--tracking-uri", uri,
            "--n-boot", "50", "--seed", "0", "--no-progress", "--no-onnx"]


def test_search_ensemble_and_registry_survive_a_restart(auth_tracking_server, postgres,
                                                        prepared_data, ecgtune_cli, tmp_path,
                                                        ray_tmp, tracking_admin,
                                                        monkeypatch):
    """The right credentials work end to end; after the server and its database restart,
    every run, metric and model version is still there, and the artifacts are the server's."""
    server = auth_tracking_server
    env = {**_login(*tracking_admin), "RAY_TMPDIR": str(ray_tmp)}
    client_dir = tmp_path / "client"  # the commands' working directory
    client_dir.mkdir()
    code, out = ecgtune_cli(_search_args(prepared_data, tmp_path / "ray", server.url), env,
                            client_dir)
    assert code == 0, out + server.log()
    assert any(ray_tmp.rglob("session_*")), "the positive control: this search started Ray"
    code, out = ecgtune_cli(_ensemble_args(prepared_data, tmp_path / "bundle", server.url), env,
                            client_dir)
    assert code == 0, out + server.log()
    assert f"Registered: {REGISTERED} version 1" in out
    assert sorted(client_dir.iterdir()) == [], "no local store or artifacts beside the client"

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", tracking_admin[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", tracking_admin[1])
    before = _snapshot(server.url)
    statuses = [status for status, _, _ in before.runs.values()]
    assert len(statuses) == 4 and set(statuses) == {"FINISHED"}  # search, 2 trials, ensemble
    assert len(before.histories) == 2 and all(before.histories.values())
    assert len(before.versions) == 1 and before.versions[0][2] == ("champion",)
    _assert_artifacts_on_server(server)

    _restart(server, postgres)
    assert _snapshot(server.url) == before
    trial_id = next(iter(before.histories))
    fetched = tracking.client(server.url).download_artifacts(trial_id, "thresholds.json",
                                                             str(tmp_path))
    on_server = {p.read_bytes() for p in server.artifacts.rglob("thresholds.json")}
    assert Path(fetched).read_bytes() in on_server


def _assert_artifacts_on_server(server) -> None:
    """Artifacts went through the proxy into the server's artifact root: every run's artifact
    URI is the proxy's, and the files (trial artifacts, the registered model) are there."""
    client = tracking.client(server.url)
    experiment = client.get_experiment_by_name(SEARCH)
    runs = client.search_runs([experiment.experiment_id])
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:/") for r in runs)
    assert len(list(server.artifacts.rglob("thresholds.json"))) >= 2
    assert list(server.artifacts.rglob("MLmodel")), "the registered pyfunc model's files"


@pytest.mark.parametrize("command", ["search", "ensemble"])
@pytest.mark.parametrize("login", ["missing", "wrong"])
def test_refused_credentials_fail_before_ray_with_one_line(auth_tracking_server, prepared_data,
                                                           ecgtune_cli, tmp_path, ray_tmp,
                                                           tracking_admin, command, login):
    server = auth_tracking_server
    credentials = (None, None) if login == "missing" else (tracking_admin[0],
                                                             "not-" + tracking_admin[1])
    env = {**_login(*credentials), "RAY_TMPDIR": str(ray_tmp)}
    args = (_search_args(prepared_data, tmp_path / "ray", server.url) if command == "search"
            else _ensemble_args(prepared_data, tmp_path / "bundle", server.url))
    code, out = ecgtune_cli(args, env, tmp_path, timeout=300)
    lines = [line for line in out.splitlines() if line.strip()]
    assert code == 1, out
    assert len(lines) == 1, out
    assert lines[0].startswith(f"ecgtune {command}: error: tracking server refused the "
                               "credentials"), out
    assert "Traceback" not in out and tracking_admin[1] not in out
    assert list(ray_tmp.iterdir()) == [], "Ray must not have started"
    assert not (tmp_path / "bundle").exists()
