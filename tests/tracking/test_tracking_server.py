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
        sorted((v.version, v.run_id, tuple(sorted(v.aliases))) for v in versions),
    )
