"""The SQLite tracking store that `ecgtune search` and `ecgtune ensemble` default to opens and
takes an experiment, a run and a logged, registered model with this install's MLflow and
SQLAlchemy (an incompatible pair breaks every SQLite store at its first query, while nothing
else in the fast tier opens one)."""

from __future__ import annotations

import mlflow
import pandas as pd

from ecgtune.ensembles.ship import registry
from ecgtune.search import tracking

# A "models from code" pyfunc, like the ensemble's (ensembles/ship/pyfunc_model.py), that needs
# nothing but MLflow: it doubles its input.
MODEL_CODE = """
import mlflow


class Double(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input * 2


mlflow.models.set_model(Double())
"""


def test_sqlite_store_takes_an_experiment_a_run_and_a_registered_model(tmp_path, monkeypatch):
    # Set and then removed, so that monkeypatch puts back whatever was there before the fluent
    # API (which `_active_run` sets, as `ecgtune ensemble` does) left its own URI.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)  # anything MLflow writes beside the working folder stays here
    was_set = mlflow.is_tracking_uri_set()
    registry_before = mlflow.get_registry_uri()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = tmp_path / "double.py"
    code.write_text(MODEL_CODE)
    client = tracking.client(uri)
    experiment_id = tracking.get_or_create_experiment(client, "store-check", uri)
    run_id = registry.start_ensemble_run(client, experiment_id, "search-run", "ensemble")
    try:
        with registry._active_run(uri, run_id):
            info = mlflow.pyfunc.log_model(name="model", python_model=str(code),
                                           pip_requirements=[],
                                           registered_model_name="store-check")
        registry.finish_run(client, run_id)
        reopened = tracking.client(uri)
        (run,) = reopened.search_runs([experiment_id])
        assert run.info.run_id == run_id and run.info.status == "FINISHED"
        (version,) = reopened.search_model_versions("name='store-check'")
        assert version.run_id == run_id
        # `models:/` resolves through the process-wide registry URI, which another test of
        # the session may have pointed elsewhere: point it here for the load.
        mlflow.set_registry_uri(uri)
        model = mlflow.pyfunc.load_model(f"models:/store-check/{version.version}")
        assert model.predict(pd.DataFrame({"x": [1.5]}))["x"].tolist() == [3.0]
        assert info.model_uri
    finally:
        mlflow.set_registry_uri(registry_before)
        if not was_set:
            mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
