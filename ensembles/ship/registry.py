"""MLflow side of an ensemble build: the ensemble run, the pyfunc model and its registration.

The ensemble run lives in the search's experiment (tag ``ecgtune.role=ensemble``, linked to
the search by ``ecgtune.search_run_id``) and always ends FINISHED or FAILED. The bundle is
logged as a "models from code" pyfunc model (`ensembles/ship/pyfunc_model.py` plus the bundle
directory as an artifact), so nothing is pickled; it is registered under the requested name
and the new version gets the alias ``champion``.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecgtune.ensembles.ship.bundle import BUNDLE_FORMAT
from ecgtune.search import tracking

__all__ = [
    "CHAMPION_ALIAS",
    "TAG_SEARCH_RUN_ID",
    "RegisteredModel",
    "ensemble_run_name",
    "finish_run",
    "input_metadata",
    "log_batch",
    "log_pyfunc_model",
    "model_signature",
    "quiet_mlflow",
    "start_ensemble_run",
]

CHAMPION_ALIAS = "champion"
TAG_SEARCH_RUN_ID = "ecgtune.search_run_id"
MODEL_ARTIFACT = "model"
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
_BATCH = 1000  # MLflow's limit of metrics per log_batch call


@dataclass(frozen=True)
class RegisteredModel:
    model_uri: str  # runs:/ or models:/ URI of the logged pyfunc model
    name: str | None = None
    version: str | None = None
    alias: str | None = None

    @property
    def alias_uri(self) -> str | None:
        return f"models:/{self.name}@{self.alias}" if self.name and self.alias else None


def ensemble_run_name(client: Any, experiment_id: str, search: str, top_k: int, policy: str,
                      budget: str = "", used: int | None = None, model: str | None = None,
                      version: str | None = None, run_id: str | None = None) -> str:
    """``demo ensemble #3: 4 of top-5, f1 thresholds, ecgtune-demo v3``: the search, which of
    its ensembles (a number the run keeps: ``run_id``'s own when it has one, else one above
    every other), how many of the top K it kept, how its thresholds were chosen, the budget
    and the registered version. Re-runs of one command read apart in the runs table."""
    pattern = re.compile(rf"{re.escape(search)} ensemble #(\d+)")
    runs = client.search_runs([experiment_id],
                              filter_string=f"tags.`{tracking.TAG_ROLE}` = 'ensemble'",
                              max_results=50_000)
    numbers = {r.info.run_id: int(m.group(1)) for r in runs
               if (m := pattern.match(r.info.run_name or ""))}
    number = numbers.get(run_id or "") or max(numbers.values(), default=0) + 1
    parts = [f"{used} of top-{top_k}" if used is not None else f"top-{top_k}",
             f"{policy} thresholds"]
    if budget:
        parts.append(budget)
    if model and version:
        parts.append(f"{model} v{version}")
    return f"{search} ensemble #{number}: {', '.join(parts)}"


def start_ensemble_run(client: Any, experiment_id: str, search_run_id: str, name: str) -> str:
    run = client.create_run(
        experiment_id,
        run_name=name,
        tags={tracking.TAG_ROLE: "ensemble", TAG_SEARCH_RUN_ID: search_run_id},
    )
    return run.info.run_id


def finish_run(client: Any, run_id: str, error: BaseException | None = None) -> None:
    """End the run FINISHED, or FAILED (KILLED for an interrupt) with the error as a tag."""
    if error is None:
        client.set_terminated(run_id, status="FINISHED")
        return
    message = f"{type(error).__name__}: {error}".splitlines()[0][:5000]
    try:
        client.set_tag(run_id, tracking.TAG_ERROR, message)
    finally:
        interrupted = isinstance(error, KeyboardInterrupt)
        client.set_terminated(run_id, status="KILLED" if interrupted else "FAILED")


def log_batch(
    client: Any, run_id: str, params: Mapping[str, Any], metrics: Mapping[str, float]
) -> None:
    from mlflow.entities import Metric, Param

    plist = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(plist), 100):
        client.log_batch(run_id, params=plist[start : start + 100])
    mlist = [Metric(k, float(v), 0, 0) for k, v in metrics.items()]
    for start in range(0, len(mlist), _BATCH):
        client.log_batch(run_id, metrics=mlist[start : start + _BATCH])


def model_signature(label_names: Sequence[str], n_samples: int,
                    synthetic: bool = False, refer: bool = False) -> Any:
    """Input: int16 records (-1, 12, n_samples) (as `prep` stores them), and the
    optional parameter `lengths` (real samples per record, as `prep` stores them in its
    `length` column; empty: every record full length); output: one float64 probability column
    per label, label-map order, the bool column `refer` for a bundle that refers uncertain
    records, and for a model trained on ``synthetic`` records the string column
    `model_trained_on` (`pyfunc_model.synthetic_note`).

    The input is not declared as a schema: MLflow would cast a JSON request's floats to int16
    without a word (mV values become a record of zeros) and refuse other shapes with a message
    that dumps the data. The pyfunc model checks the input itself (`InputSpec.signals_from`);
    the model's metadata (`input_metadata`) states the contract."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    columns: list[ColSpec | TensorSpec] = [ColSpec("double", name) for name in label_names]
    if refer:
        columns.append(ColSpec("boolean", "refer"))
    if synthetic:
        columns.append(ColSpec("string", "model_trained_on"))
    return ModelSignature(
        inputs=None,
        outputs=Schema(columns),
        params=ParamSchema([ParamSpec("lengths", "long", [], (-1,))]),
    )


def input_metadata(n_samples: int) -> dict[str, Any]:
    """The pyfunc model's input contract, stored in its MLmodel metadata (the signature
    declares no input schema, see `model_signature`)."""
    return {"dtype": "int16", "shape": [-1, 12, int(n_samples)],
            "one_record": [12, int(n_samples)],
            "values": "integers at the bundle's gain, as `ecgtune prep` stores records; floats "
                      "are refused"}


def _requirement(dist: str, name: str | None = None) -> str:
    try:
        version = importlib.metadata.version(dist).split("+", 1)[0]  # drop local tags (+cpu)
    except importlib.metadata.PackageNotFoundError:
        return name or dist
    return f"{name or dist}=={version}"


def pip_requirements() -> list[str]:
    """Pinned like this environment; the model code imports the `ecgtune` package, so serving
    runs in an environment where it is installed (``--env-manager local``)."""
    return [_requirement(d) for d in ("ecgtune", "mlflow", "torch", "safetensors", "numpy",
                                      "scipy", "scikit-learn", "pandas")]


@contextmanager
def _active_run(tracking_uri: str, run_id: str) -> Iterator[None]:
    """Make ``run_id`` the fluent API's active run (log_model needs one), with MLflow's
    process-wide URIs on ``tracking_uri`` meanwhile and as they were afterwards
    (`tracking.mlflow_uris`). Leaving the block ends it FINISHED (FAILED on an exception);
    `finish_run` sets the final status after."""
    import mlflow

    with tracking.mlflow_uris(tracking_uri), mlflow.start_run(
            run_id=run_id, nested=mlflow.active_run() is not None):
        yield


@contextmanager
def quiet_mlflow() -> Iterator[None]:
    """No artifact-download progress bar (a model's 17 files redraw it 17 times in a log) and
    no advice to add an input example (a record is 60k integers; the model's metadata states
    the input)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    previous = os.environ.get(key)
    os.environ[key] = "false"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*input_example.*")
            yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous


def log_pyfunc_model(
    client: Any,
    tracking_uri: str,
    run_id: str,
    bundle_dir: str | Path,
    label_names: Sequence[str],
    n_samples: int,
    register: str | None = None,
    tags: Mapping[str, str] | None = None,
    refer: bool = False,
) -> RegisteredModel:
    """Log the bundle as a pyfunc model of the run; with ``register``, register it and point
    the ``champion`` alias at the new version."""
    import mlflow

    with _active_run(tracking_uri, run_id), quiet_mlflow():
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=str(PYFUNC_CODE),
            artifacts={"bundle": str(Path(bundle_dir).resolve())},
            signature=model_signature(label_names, n_samples, synthetic=(
                tags or {}).get("ecgtune.trained_on") == "synthetic", refer=refer),
            pip_requirements=pip_requirements(),
            registered_model_name=register,
            await_registration_for=60,
            metadata={"ecgtune_bundle_format": BUNDLE_FORMAT,
                      "ecgtune_input": input_metadata(n_samples)},
        )
    if register is None:
        return RegisteredModel(info.model_uri)
    version = str(info.registered_model_version)
    client.set_registered_model_alias(register, CHAMPION_ALIAS, version)
    for key, value in (tags or {}).items():
        client.set_model_version_tag(register, version, key, str(value))
    return RegisteredModel(info.model_uri, register, version, CHAMPION_ALIAS)
