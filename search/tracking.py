"""MLflow tracking of a search: one parent run per search, one nested child run per trial.

All logging happens on the driver, in a Ray Tune callback, with an explicit `MlflowClient`
(no global active run): trials stay free of tracking code, a remote tracking server is only
reached from one place, and the driver alone decides every run's final status, so none is
left RUNNING. Child runs are found again by their Ray trial id, so `--resume` continues the
same runs instead of duplicating them.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import ssl
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ray.tune import Callback

from ecgtune.search import checkpoint
from ecgtune.search import metric_keys as K
from ecgtune.search.errors import TrackingError

log = logging.getLogger(__name__)

TAG_ROLE = "ecgtune.role"  # "search" (parent) | "trial" (child) | "ensemble"
TAG_SEARCH_PATH = "ecgtune.search_path"  # Ray experiment path; the key to resume a search
TAG_TRIAL_ID = "ecgtune.trial_id"
TAG_BEST_CHECKPOINT = "ecgtune.best_checkpoint"
TAG_EARLY_STOPPED = "ecgtune.early_stopped"
TAG_STOP_REASON = "ecgtune.stop_reason"
TAG_EPOCHS_DONE = "ecgtune.epochs_completed"
TAG_ERROR = "ecgtune.error"
TAG_PARENT = "mlflow.parentRunId"


def default_tracking_uri(workdir: str | Path | None = None) -> str:
    return f"sqlite:///{(Path(workdir or Path.cwd()) / 'mlflow.db').resolve()}"


# MLflow's own variables, read the way MLflow's client reads them, so that `ecgtune` and
# `mlflow ui`/`mlflow models serve` in the same shell see the same store.
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
REGISTRY_URI_ENV = "MLFLOW_REGISTRY_URI"
# What a command's --tracking-uri help says about its default.
DEFAULT_URI_HELP = "default: $MLFLOW_TRACKING_URI, else sqlite:///$PWD/mlflow.db"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The store a command uses: its --tracking-uri, else MLflow's MLFLOW_TRACKING_URI, else
    `mlflow.db` in the working folder. A relative SQLite path is made absolute, so that the
    store keeps its identity in hints, locks and bundle provenance."""
    chosen = (uri or "").strip() or os.environ.get(TRACKING_URI_ENV, "").strip()
    if not chosen:
        return default_tracking_uri()
    if chosen.startswith("sqlite:///"):
        path = chosen.removeprefix("sqlite:///")
        if path and not Path(path).is_absolute():
            return f"sqlite:///{Path(path).resolve()}"
    return chosen


def resolve_registry_uri(tracking_uri: str) -> str:
    """The model registry MLflow's client uses next to ``tracking_uri``: MLFLOW_REGISTRY_URI
    when set, else the tracking store itself."""
    return os.environ.get(REGISTRY_URI_ENV, "").strip() or tracking_uri


@contextmanager
def mlflow_uris(tracking_uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking and registry URIs (and their variables) point at
    ``tracking_uri`` and its registry for the block, and are put back afterwards.

    The fluent API (`log_model`) and MLflow's `models:/` resolution use the process-wide
    URIs, not the client a caller built: without this they would reach whatever
    MLFLOW_TRACKING_URI names, or create `mlflow.db` in the working folder, and
    `mlflow.set_tracking_uri` would leave its value in the environment of everything that
    runs later in this process."""
    import mlflow

    saved = {key: os.environ.get(key) for key in (TRACKING_URI_ENV, REGISTRY_URI_ENV)}
    registry = resolve_registry_uri(tracking_uri)
    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(registry)
    try:
        yield
    finally:
        # MLflow keeps the URIs in module state and mirrors them into the environment.
        mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]  # None: unset
        mlflow.set_registry_uri(saved[REGISTRY_URI_ENV])  # type: ignore[arg-type]
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def quiet_mlflow_logs() -> None:
    # First use of a SQLite store runs its schema migrations, which log at INFO per step.
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        logging.getLogger(name).setLevel(logging.WARNING)


def check_tracking_uri(uri: str, timeout: float = 5.0, must_exist: bool = False) -> None:
    """Fail fast, before any trial starts, when the tracking store cannot be reached or
    refuses the credentials. ``must_exist``: the command reads what an earlier one wrote
    (a search, a registered model), so a SQLite store that is not there is refused rather
    than created empty."""
    if uri.startswith(("http://", "https://")):
        probe_tracking_server(uri, timeout)
    elif uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if must_exist and not db.is_file():
            raise TrackingError(
                f"no MLflow store at {uri} ({db} does not exist); pass the store the search "
                f"wrote to with --tracking-uri or MLFLOW_TRACKING_URI")
        if not db.parent.is_dir():
            raise TrackingError(f"MLflow SQLite store {uri}: folder {db.parent} does not exist")
        # Every caller writes runs, and SQLite writes its journal beside the store: a
        # read-only folder would fail later, in a SQLAlchemy traceback, after Ray started.
        try:
            fd, probe = tempfile.mkstemp(prefix=".ecgtune-write-probe-", dir=db.parent)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise TrackingError(f"MLflow SQLite store {uri}: cannot write in {db.parent} "
                                f"({exc.strerror or exc})") from None


# An authenticated call every MLflow server answers (any user may list the experiments it can
# read); `/health` would not do: the basic-auth app leaves it open to everyone.
_PROBE_PATH = "/api/2.0/mlflow/experiments/search?max_results=1"


def _auth_header() -> tuple[dict[str, str], str | None]:
    """The Authorization header MLflow's client will send, from the same environment variables,
    and the user it names (None when no credentials are set)."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if user and password:
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {basic}"}, user
    if token:
        return {"Authorization": f"Bearer {token}"}, "MLFLOW_TRACKING_TOKEN"
    return {}, None


def _tls_context() -> ssl.SSLContext | None:
    """The TLS checks MLflow's client applies (its CA bundle, or none when told insecure)."""
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        return context
    bundle = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
    return ssl.create_default_context(cafile=bundle) if bundle else None


def probe_tracking_server(uri: str, timeout: float = 5.0, api_timeout: float = 60.0) -> None:
    """Tell a server that cannot be reached from one that refuses the credentials (401/403):
    both fail before any trial. `/health` answers fast and without a login; the authenticated
    API call that follows is what MLflow's client will make (slower: it hashes the password)."""
    base = uri.rstrip("/")
    try:
        urllib.request.urlopen(base + "/health", timeout=timeout, context=_tls_context()).close()
    except urllib.error.HTTPError:
        pass  # It answered; whether it lets us in is the next call's question.
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({reason}); start it or pass "
            "another --tracking-uri"
        ) from None
    headers, user = _auth_header()
    try:
        urllib.request.urlopen(urllib.request.Request(base + _PROBE_PATH, headers=headers),
                               timeout=api_timeout, context=_tls_context()).close()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise TrackingError(_refused(uri, exc.code, user)) from None
        # Other statuses are MLflow's business when a real call is made.
    except (urllib.error.URLError, OSError) as exc:
        raise TrackingError(
            f"MLflow tracking server {uri} answers /health but not its API "
            f"({getattr(exc, 'reason', exc)}); check the server's log"
        ) from None


def _refused(uri: str, status: int, user: str | None) -> str:
    if user is None:
        return (f"tracking server refused the credentials: {uri} requires a login (HTTP "
                f"{status}) and none was given; set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD")
    what = "rejected the login" if status == 401 else "gave no permission"
    return (f"tracking server refused the credentials of {user!r}: {uri} {what} (HTTP "
            f"{status}); check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")


def client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    quiet_mlflow_logs()
    return MlflowClient(tracking_uri=uri)


# Marks our experiments as model training. MLflow 3.17's UI does not pick its view from it,
# though: see `runs_view_url`.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
UI_PORT = 5000  # README's `mlflow ui --port 5000`

# The runs table MLflow's UI opens shows no metric column (only Source, Models, Dataset) until
# a user picks them from hundreds: every experiment carries a saved view of the runs table
# with the key metrics as columns, and the printed address opens it. It is the UI's own
# "saved view" (an experiment tag `mlflow.sharedViewState.<key>` holding the view's state,
# opened by the page's `viewStateShareKey` parameter; it also appears in the UI's list of
# views), so a user can change it or go back to their own.
KEY_METRICS_VIEW = "ecgtune-key-metrics"
KEY_METRICS_VIEW_NAME = "ecgtune: key metrics"
SHARED_VIEW_TAG = "mlflow.sharedViewState."
# Trial runs: best and last validation scores and cost; search runs: the best trial's score;
# ensemble runs: test-fold scores and the ensemble's summed cost. Five columns of ~100 px
# beside Run Name, Created and Duration: all on screen at once (the UI draws only the columns
# in view, in alphabetical order: cost, test, val).
KEY_METRICS = (K.BEST_OBJECTIVE, K.VAL_AUROC, "test/macro_auprc", "test/macro_auroc",
               K.COST_GFLOPS)


def key_metrics_view_state() -> dict[str, Any]:
    """The saved view's state: the runs table with `KEY_METRICS` as its columns (the run name
    says which registered version an ensemble run made, so no Models column)."""
    return {"selectedColumns": [f"metrics.`{key}`" for key in KEY_METRICS]}


def ensure_key_metrics_view(mlflow_client: Any, experiment_id: str) -> None:
    """Give the experiment the key-metrics view (`runs_view_url` opens it); an identical view
    is left as it is. Best effort: a store that refuses experiment tags keeps MLflow's
    default table."""
    import time

    tag = SHARED_VIEW_TAG + KEY_METRICS_VIEW
    state = json.dumps(key_metrics_view_state())
    try:
        current = mlflow_client.get_experiment(experiment_id).tags.get(tag)
        if current and json.loads(current).get("state") == state:
            return
        now = int(time.time() * 1000)
        mlflow_client.set_experiment_tag(experiment_id, tag, json.dumps(
            {"name": KEY_METRICS_VIEW_NAME, "createdAt": now, "updatedAt": now,
             "state": state}))
    except Exception as exc:  # never fail a search or an ensemble over a table layout
        log.warning("could not save the key-metrics view of experiment %s: %s",
                    experiment_id, exc)


def runs_view_url(uri: str, experiment_id: str, port: int = UI_PORT) -> str:
    """The MLflow UI page with the experiment's runs table, key metrics as columns.

    MLflow 3's UI opens in its GenAI mode (a traces overview) unless the page's `workflowType`
    query parameter (or the browser's stored choice) says model training, so the address says
    it; `viewStateShareKey` opens the key-metrics view (`ensure_key_metrics_view`). A tracking
    server serves the UI itself; a SQLite store is served by `mlflow ui`.
    """
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else (
        f"http://127.0.0.1:{port}")
    return (f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={KEY_METRICS_VIEW}")


def venv_command(name: str) -> str:
    """``name`` (a console script of this environment, e.g. ``mlflow``) as a user can type it
    in this folder: the bare name when the shell finds this environment's script under it,
    else the script's path (relative when it lies below this folder, as `.venv/bin/mlflow`
    after `make demo`)."""
    script = Path(sys.executable).with_name(name)
    if not script.is_file():
        return name
    found = shutil.which(name)
    if found and Path(found).resolve() == script.resolve():
        return name
    try:
        return str(script.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(script.absolute())


def browse_hint(uri: str, experiment_id: str, port: int = UI_PORT,
                mlflow: str | None = None) -> str:
    """One line telling a user how to land on the runs: the command to run, if any (this
    environment's `mlflow`, as `venv_command` spells it), and the address to open."""
    url = runs_view_url(uri, experiment_id, port)
    if uri.startswith(("http://", "https://")):
        return f"open {url}"
    command = mlflow or venv_command("mlflow")
    return f"{command} ui --backend-store-uri {uri} --port {port}, then open {url}"


def artifact_location(uri: str) -> str | None:
    """Where a new experiment's artifacts go: beside a SQLite store (`mlartifacts/` in its
    folder), not in `./mlruns` of whatever folder the command ran in; servers decide their own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


def get_or_create_experiment(mlflow_client: Any, name: str, uri: str | None = None) -> str:
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None:
        experiment_id = mlflow_client.create_experiment(
            name, artifact_location=artifact_location(uri) if uri else None, tags=EXPERIMENT_KIND)
    else:
        experiment_id = experiment.experiment_id
        if experiment.lifecycle_stage == "deleted":
            mlflow_client.restore_experiment(experiment_id)
    ensure_key_metrics_view(mlflow_client, experiment_id)
    return experiment_id


def unique_run_name(mlflow_client: Any, experiment_id: str, name: str, role: str) -> str:
    """``name``, or ``name #2``, ``#3``... when a run of that role (`TAG_ROLE`) in the
    experiment already has it: the runs table tells a re-run from the run it repeats."""
    taken = {run.info.run_name for run in mlflow_client.search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_ROLE}` = '{role}'", max_results=50_000)}
    if name not in taken:
        return name
    n = 2
    while f"{name} #{n}" in taken:
        n += 1
    return f"{name} #{n}"


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def reopen_run(mlflow_client: Any, run: Any) -> int:
    """Mark a closed run RUNNING again (a `--resume` continues it); returns how long it lay
    closed (ms), which `close_run` keeps out of its Duration."""
    paused = max(0, _now_ms() - int(run.info.end_time)) if run.info.end_time else 0
    if run.info.status != "RUNNING":
        mlflow_client.update_run(run.info.run_id, status="RUNNING")
    return paused


def close_run(mlflow_client: Any, run_id: str, status: str, paused_ms: int = 0) -> None:
    """End a run; its end time leaves out the ``paused_ms`` it lay closed, so that MLflow's
    Duration column is the time the run actually ran, across resumes."""
    mlflow_client.set_terminated(run_id, status=status, end_time=_now_ms() - paused_ms)


def find_search_run(mlflow_client: Any, experiment_id: str, search_path: str) -> Any | None:
    runs = mlflow_client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{TAG_ROLE}` = 'search' and tags.`{TAG_SEARCH_PATH}` = '{search_path}'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def trial_runs(mlflow_client: Any, experiment_id: str, parent_run_id: str) -> list[Any]:
    """All child runs of one search, in creation order."""
    return list(
        mlflow_client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}'",
            order_by=["attributes.start_time ASC"],
            max_results=50_000,
        )
    )


def trial_index(trial: Any) -> int:
    """The trial's 1-based position in the search (Ray's experiment tag starts with it)."""
    head = str(getattr(trial, "experiment_tag", "") or "").split("_", 1)[0]
    return int(head) if head.isdigit() else 0


def trial_run_name(index: int, config: dict[str, Any]) -> str:
    """Readable child-run names, e.g. `t007 concat d6-5-4-3 w128`, `t008 late ssm w64 100Hz
    limb6` (a state-space trunk, the input when it is not the stored 500 Hz, 12 leads)."""
    depths = config.get("branch.depths")
    depths = "-".join(map(str, depths)) if isinstance(depths, (list, tuple)) else depths
    parts = [f"t{index:03d}", str(config.get("fusion", "?"))]
    if config.get("branch.kind") == "ssm":
        parts.append("ssm")
    elif depths is not None:
        parts.append(f"d{depths}")
    if "branch.width" in config:
        parts.append(f"w{config['branch.width']}")
    if str(config.get("input.fs", 500)) != "500":
        parts.append(f"{config['input.fs']}Hz")
    if config.get("input.leads", "all12") != "all12":
        parts.append(str(config["input.leads"]))
    return " ".join(parts)


def _flat_params(config: dict[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in sorted(config.items()):
        if isinstance(value, (list, tuple)):
            value = "-".join(map(str, value))
        out[key] = str(value)[:500]
    return out


class MlflowTrialTracker(Callback):
    """Ray Tune callback: a nested MLflow run per trial, ended FINISHED or FAILED."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str,
                 label_names: list[str]) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.label_names = list(label_names)
        self._client: Any = None
        self._runs: dict[str, str] = {}
        self._paused: dict[str, int] = {}  # trial id -> ms its reopened run lay closed
        self._env: dict[str, dict[str, str]] = {}
        self._checked: set[str] = set()  # trials whose checkpoint this driver has checked

    # Ray pickles callbacks into the experiment state; clients and caches are rebuilt.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_runs": {}, "_env": {}, "_checked": set(),
                "_paused": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"_paused": {}, **state})  # state saved by an older tracker

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        # A `--resume` after a killed driver: each unfinished trial's latest checkpoint must
        # still exist before Ray restores from it (checkpoint.repair_latest_checkpoint).
        checked = self.__dict__.setdefault("_checked", set())
        for trial in trials:
            if trial.trial_id in checked or trial.status in ("TERMINATED", "RUNNING"):
                continue
            checked.add(trial.trial_id)
            try:
                path = checkpoint.repair_latest_checkpoint(trial)
            except Exception as exc:  # best effort: Ray's own error follows if it matters
                log.warning("could not check trial %s's checkpoint: %s", trial.trial_id, exc)
                continue
            if path is not None:
                log.warning("trial %s: its last recorded checkpoint was deleted after the "
                            "search state was saved; resuming from %s", trial.trial_id, path)

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = client(self.tracking_uri)
        return self._client

    def run_id(self, trial: Any) -> str:
        run_id = self._runs.get(trial.trial_id)
        if run_id:
            return run_id
        from mlflow.entities import Param

        existing = self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.`{TAG_TRIAL_ID}` = '{trial.trial_id}' and "
                f"tags.`{TAG_PARENT}` = '{self.parent_run_id}'"
            ),
            max_results=1,
        )
        if existing:
            run_id = existing[0].info.run_id
            self._paused[trial.trial_id] = reopen_run(self.client, existing[0])
        else:
            run = self.client.create_run(
                self.experiment_id,
                run_name=trial_run_name(trial_index(trial), trial.config),
                tags={TAG_PARENT: self.parent_run_id, TAG_ROLE: "trial",
                      TAG_TRIAL_ID: trial.trial_id},
            )
            run_id = run.info.run_id
            params = [Param(k, v) for k, v in _flat_params(trial.config).items()]
            for start in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[start : start + 100])
        self._runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.run_id(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        from mlflow.entities import Metric

        step = int(result.get(K.EPOCH, result.get("training_iteration", 0)))
        ts = int(result.get("timestamp", 0) * 1000)
        values = [
            Metric(key, float(value), ts, step)
            for key, value in result.items()
            if ("/" in key or key == K.EPOCH) and isinstance(value, (int, float))
            and not isinstance(value, bool)
        ]
        run_id = self.run_id(trial)
        self.client.log_batch(run_id, metrics=values)
        # Where it ran: device, precision, node (a retry may move the trial to another node).
        env = {f"ecgtune.{key.split('/', 1)[1]}": value for key, value in result.items()
               if key.startswith("env/") and isinstance(value, str)}
        if env and self._env.get(trial.trial_id) != env:
            for key, value in env.items():
                self.client.set_tag(run_id, key, value)
            self._env[trial.trial_id] = env

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self.run_id(trial)
        last = trial.last_result or {}
        done = int(last.get(K.EPOCH, 0))
        budget = int(trial.config.get("train.epochs", done))
        early = done < budget
        tags = {
            TAG_EARLY_STOPPED: str(early).lower(),
            TAG_STOP_REASON: "early-stopped by ASHA" if early else "completed epoch budget",
            TAG_EPOCHS_DONE: str(done),
        }
        best = checkpoint.best_checkpoint(trial)
        if best is not None:
            tags[TAG_BEST_CHECKPOINT] = checkpoint.checkpoint_uri(best)
            self._log_trial_artifacts(run_id, best)
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)
        close_run(self.client, run_id, "FINISHED", self._paused.pop(trial.trial_id, 0))
        self._runs.pop(trial.trial_id, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self.run_id(trial)
        message = error_summary(trial)
        self.client.set_tag(run_id, TAG_ERROR, message[:5000])
        self.client.set_tag(run_id, TAG_STOP_REASON, "error")
        error_file = getattr(trial, "error_file", None)
        if error_file and Path(error_file).is_file():
            self.client.log_artifact(run_id, error_file)
        close_run(self.client, run_id, "FAILED", self._paused.pop(trial.trial_id, 0))
        self._runs.pop(trial.trial_id, None)

    def _log_trial_artifacts(self, run_id: str, best: Any) -> None:
        from ecgtune.search.plots import plot_trial_validation

        try:
            with best.as_directory() as directory:
                directory = Path(directory)
                for name in checkpoint.ARTIFACT_FILES:
                    if (directory / name).is_file():
                        self.client.log_artifact(run_id, str(directory / name))
                predictions = directory / checkpoint.VAL_PREDICTIONS_FILE
                thresholds = directory / checkpoint.THRESHOLDS_FILE
                if predictions.is_file() and thresholds.is_file():
                    with tempfile.TemporaryDirectory() as tmp:
                        plot = plot_trial_validation(
                            predictions, json.loads(thresholds.read_text())["thresholds"],
                            Path(tmp) / "validation.png",
                        )
                        self.client.log_artifact(run_id, str(plot))
        except Exception as exc:  # Artifacts are a convenience: never fail the search on them.
            log.warning("could not log artifacts of run %s: %s", run_id, exc)


def error_summary(trial: Any) -> str:
    error_file = getattr(trial, "error_file", None)
    if error_file and Path(error_file).is_file():
        lines = [line for line in Path(error_file).read_text().splitlines() if line.strip()]
        # The exception line ("NonFiniteLossError: ...") is the most useful single line.
        for line in reversed(lines):
            if "Error" in line or "Exception" in line:
                return line.strip()
        return lines[-1] if lines else "unknown error"
    return str(getattr(trial, "error_msg", None) or "unknown error")
