"""Which MLflow store a command uses, and what it leaves behind: --tracking-uri, else MLflow's
own MLFLOW_TRACKING_URI, else `mlflow.db` in the working folder; a command that reads a store
never creates one; MLflow's process-wide URIs are put back after use; run names read apart;
durations leave out the time a resumed run lay closed; the printed address opens the
key-metrics view."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ecgtune.ensembles.ship.registry import ensemble_run_name
from ecgtune.search import tracking
from ecgtune.search.errors import TrackingError


@pytest.fixture
def no_mlflow_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    import mlflow

    for key in (tracking.TRACKING_URI_ENV, tracking.REGISTRY_URI_ENV):
        monkeypatch.delenv(key, raising=False)
    tracking_before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    yield monkeypatch
    # `mlflow_uris` hands a user's MLFLOW_TRACKING_URI and MLFLOW_REGISTRY_URI back to
    # MLflow's module state as well. The variables leave with this test, so must that state:
    # later clients in this process would send their calls to it (minutes of retries
    # against http://registry:5000 in the tracking-server tests).
    mlflow.set_tracking_uri(tracking_before)  # type: ignore[arg-type]  # None: unset
    mlflow.set_registry_uri(None)  # type: ignore[arg-type]


def test_flag_beats_environment_beats_the_working_folder(no_mlflow_env, tmp_path):
    no_mlflow_env.chdir(tmp_path)
    assert tracking.resolve_tracking_uri(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    no_mlflow_env.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking.resolve_tracking_uri(None) == "http://tracking.example:5000"
    assert tracking.resolve_tracking_uri("sqlite:////x/y.db") == "sqlite:////x/y.db"
    # MLflow reads a relative SQLite path from the working folder; we keep it absolute.
    no_mlflow_env.setenv("MLFLOW_TRACKING_URI", "sqlite:///runs/mlflow.db")
    assert tracking.resolve_tracking_uri(None) == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert tracking.resolve_registry_uri("sqlite:////a.db") == "sqlite:////a.db"
    no_mlflow_env.setenv("MLFLOW_REGISTRY_URI", "sqlite:////registry.db")
    assert tracking.resolve_registry_uri("sqlite:////a.db") == "sqlite:////registry.db"
    assert list(tmp_path.iterdir()) == []


def test_a_store_that_must_exist_is_refused_not_created(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(TrackingError, match=r"no MLflow store at .*mlflow\.db does not exist"
                       r".*--tracking-uri or MLFLOW_TRACKING_URI"):
        tracking.check_tracking_uri(uri, must_exist=True)
    tracking.check_tracking_uri(uri)  # a search creates its store: the folder is enough
    assert list(tmp_path.iterdir()) == []


def test_mlflow_process_uris_are_put_back(no_mlflow_env, tmp_path):
    import mlflow

    was_set = mlflow.is_tracking_uri_set()
    before = mlflow.get_tracking_uri()
    uri = f"sqlite:///{tmp_path / 'a.db'}"
    with tracking.mlflow_uris(uri):
        assert mlflow.get_tracking_uri() == uri and mlflow.get_registry_uri() == uri
        assert os.environ["MLFLOW_TRACKING_URI"] == uri
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert "MLFLOW_REGISTRY_URI" not in os.environ
    assert mlflow.is_tracking_uri_set() == was_set and mlflow.get_tracking_uri() == before
    # A user's variables are theirs again afterwards; their registry is kept meanwhile.
    no_mlflow_env.setenv("MLFLOW_TRACKING_URI", "http://theirs:5000")
    no_mlflow_env.setenv("MLFLOW_REGISTRY_URI", "http://registry:5000")
    with tracking.mlflow_uris(uri):
        assert mlflow.get_registry_uri() == "http://registry:5000"
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://theirs:5000"
    assert os.environ["MLFLOW_REGISTRY_URI"] == "http://registry:5000"


class _Runs:
    """The part of MlflowClient these helpers use, over a list of runs in memory."""

    def __init__(self, names_by_role: dict[str, list[str]]) -> None:
        self.runs = [SimpleNamespace(info=SimpleNamespace(run_id=f"{role}{i}", run_name=name),
                                     role=role)
                     for role, names in names_by_role.items() for i, name in enumerate(names)]
        self.tags: dict[str, str] = {}
        self.updates: list[tuple[str, str]] = []
        self.terminated: list[tuple[str, str, int]] = []

    def search_runs(self, experiment_ids: list[str], filter_string: str = "",
                    **kwargs: Any) -> list[Any]:
        role = filter_string.rsplit("=", 1)[1].strip(" '")
        return [r for r in self.runs if r.role == role]

    def get_experiment(self, experiment_id: str) -> Any:
        return SimpleNamespace(tags=dict(self.tags))

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        self.tags[key] = value

    def update_run(self, run_id: str, status: str) -> None:
        self.updates.append((run_id, status))

    def set_terminated(self, run_id: str, status: str, end_time: int) -> None:
        self.terminated.append((run_id, status, end_time))


def test_run_names_read_apart():
    client = _Runs({"evaluation": ["evaluate m v1 on georgia (fold 9)",
                                   "evaluate m v1 on georgia (fold 9) #2"],
                    "ensemble": ["demo ensemble #1: 4 of top-5, f1 thresholds, m v1",
                                 "demo ensemble #2: 3 of top-5, f1 thresholds, m v2",
                                 "ensemble top-5 of demo"]})
    assert tracking.unique_run_name(client, "1", "evaluate m v1 on georgia (fold 9)",
                                    "evaluation") == "evaluate m v1 on georgia (fold 9) #3"
    assert tracking.unique_run_name(client, "1", "evaluate m v2 on georgia (fold 9)",
                                    "evaluation") == "evaluate m v2 on georgia (fold 9)"
    fresh = ensemble_run_name(client, "1", "demo", 5, "sensitivity:0.95 (+1 per label)")
    assert fresh == "demo ensemble #3: top-5, sensitivity:0.95 (+1 per label) thresholds"
    # Renamed when it finishes, the run keeps its number and says what it became.
    client.runs[-1].info.run_name = fresh
    done = ensemble_run_name(client, "1", "demo", 5, "f1", "budget 0.2 GFLOP per record",
                             used=2, model="m", version="3", run_id=client.runs[-1].info.run_id)
    assert done == "demo ensemble #3: 2 of top-5, f1 thresholds, budget 0.2 GFLOP per record, m v3"


def test_a_resumed_run_keeps_the_time_it_lay_closed_out_of_its_duration(monkeypatch):
    client = _Runs({})
    now = [1_000_000]
    monkeypatch.setattr(tracking, "_now_ms", lambda: now[0])
    closed = SimpleNamespace(info=SimpleNamespace(run_id="r", status="KILLED",
                                                  end_time=400_000))
    paused = tracking.reopen_run(client, closed)
    assert paused == 600_000 and client.updates == [("r", "RUNNING")]
    now[0] += 50_000  # it runs 50 s more
    tracking.close_run(client, "r", "FINISHED", paused)
    # end - start = what it ran before (end 400 s) plus the 50 s of this session.
    assert client.terminated == [("r", "FINISHED", 450_000)]


def test_the_printed_address_opens_the_key_metrics_view(tmp_path):
    client = _Runs({})
    tracking.ensure_key_metrics_view(client, "7")
    (key,) = client.tags
    assert key == f"mlflow.sharedViewState.{tracking.KEY_METRICS_VIEW}"
    envelope = json.loads(client.tags[key])  # the UI's saved-view envelope
    assert envelope["name"] == tracking.KEY_METRICS_VIEW_NAME
    assert isinstance(envelope["createdAt"], int) and isinstance(envelope["state"], str)
    columns = json.loads(envelope["state"])["selectedColumns"]
    assert {"metrics.`val/best_macro_auprc`", "metrics.`test/macro_auprc`",
            "metrics.`cost/gflops`"} <= set(columns)
    tracking.ensure_key_metrics_view(client, "7")  # unchanged: not rewritten
    assert json.loads(client.tags[key])["createdAt"] == envelope["createdAt"]
    url = tracking.runs_view_url("sqlite:////x/mlflow.db", "7")
    assert url == ("http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
                   f"&viewStateShareKey={tracking.KEY_METRICS_VIEW}")
    assert tracking.runs_view_url("http://server:5000/", "7").startswith(
        "http://server:5000/#/experiments/7/runs?")


def test_one_mlflow_ui_hint_runnable_as_printed(tmp_path, monkeypatch):
    # This environment's `mlflow`, spelt as the shell finds it from here.
    script = Path(sys.executable).with_name("mlflow")
    assert script.is_file()
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.chdir(tmp_path)
    hint = tracking.browse_hint("sqlite:////x/mlflow.db", "1")
    command = hint.split(" ui ", 1)[0]
    assert Path(command).is_absolute() and Path(command).resolve() == script.resolve()
    monkeypatch.chdir(script.parents[2])  # the venv's parent, e.g. the repository after make
    assert tracking.venv_command("mlflow") == str(script.absolute().relative_to(Path.cwd()))
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin:/bin")  # an activated venv
    assert tracking.venv_command("mlflow") == "mlflow"
    assert tracking.browse_hint("http://server:5000", "1").startswith("open http://server")
