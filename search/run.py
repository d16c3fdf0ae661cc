"""`ecgtune search`: a Ray Tune search (Optuna TPE + ASHA) tracked in MLflow.

Everything that can fail before training (space file, data directory, tracking store,
an existing or missing search of that name) is checked before Ray starts, so a bad
invocation fails in seconds with one clear message.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecgtune.data_prep.console import keep_sigterm_handler
from ecgtune.data_prep.heartbeat import stage
from ecgtune.data_prep.shards import manifest_sha256
from ecgtune.search import checkpoint, tracking
from ecgtune.search import metric_keys as K
from ecgtune.search.claim import claim_search, open_tracking_store
from ecgtune.search.data import DataHandle, make_data_handle
from ecgtune.search.devices import (
    autoscaler_gpus,
    default_gpus_per_trial,
    gpu_share_bytes,
)
from ecgtune.search.errors import SearchError, SearchOptionError
from ecgtune.search.faults import install_no_retry_policy
from ecgtune.search.options import SearchOptions, objective_metric, parse_objective
from ecgtune.search.provenance import code_version, library_versions
from ecgtune.search.ray_session import init_ray
from ecgtune.search.searcher import PointValidator, build_searcher
from ecgtune.search.space import SearchSpace
from ecgtune.search.validation import (
    ValidatedSearch,
    check_branch_groups,
    check_input_rate,
    validate_options,
)

if TYPE_CHECKING:
    from ecgtune.data_prep import ECGDataset
    from ecgtune.search.trainable import TrialHook

log = logging.getLogger(__name__)

@dataclass
class TrialSummary:
    index: int
    trial_id: str
    status: str
    epochs: int
    best_score: float | None
    early_stopped: bool
    config: dict[str, Any]
    error: str | None = None
    cost: dict[str, float] = field(default_factory=dict)  # metric_keys.COST_* of its model


@dataclass
class SearchResult:
    name: str
    experiment_path: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    trials: list[TrialSummary]
    complete: bool
    objective: tuple[str, ...] = ("auprc",)

    @property
    def best(self) -> TrialSummary | None:
        scored = [t for t in self.trials if t.best_score is not None]
        return max(scored, key=lambda t: t.best_score or 0.0) if scored else None

    @property
    def trial_epochs(self) -> int:
        return sum(t.epochs for t in self.trials)


def trial_name(trial: Any) -> str:
    return tracking.trial_run_name(tracking.trial_index(trial), trial.config)


def trial_dirname(trial: Any) -> str:
    # Ray's default names embed the config, which for a flat model config is unreadably long.
    return f"trial_{tracking.trial_index(trial):03d}_{trial.trial_id}"


@dataclass(frozen=True)
class SearchData:
    """What the search trains on, by role: the manifest says which folds train a trial and
    which one validates it (early stopping, the objective, the trial's thresholds)."""

    directory: Path
    manifest_sha256: str
    train_folds: tuple[int, ...]
    val_folds: tuple[int, ...]
    label_names: tuple[str, ...]
    label_groups: tuple[tuple[int, ...], ...]
    group_names: tuple[str, ...] = ()
    fs: float = 500.0  # the stored rate, which models below it resample (`input.fs`)

    @property
    def manifest_path(self) -> Path:
        return self.directory / "manifest.json"

    @property
    def folds(self) -> tuple[int, ...]:
        return self.train_folds + self.val_folds


@dataclass(frozen=True)
class _Recorded:
    """Where a running search is recorded: its Ray experiment and its MLflow parent run."""

    tracking_uri: str
    experiment_id: str
    parent_id: str
    storage: str
    experiment_path: str
    num_samples: int
    objective: str = "auprc"  # a resumed search keeps the one it was started with
    paused_ms: int = 0  # how long a resumed search lay stopped: not part of its Duration


def run_search(opts: SearchOptions, trial_hook: TrialHook | None = None) -> SearchResult:
    """Run (or, with `opts.resume`, resume) a search. `trial_hook` (for tests: fault
    injection) is called in every trial at the start of each epoch (search.trainable); it is
    no option of the search, so nothing records it."""
    # Options, --set values and --storage first: a bad invocation creates nothing.
    stage("checking the options, the space and the data")
    validated = validate_options(opts)
    data = check_search_data(Path(opts.data))
    check = _point_validator(validated, data)
    tracking_uri = tracking.resolve_tracking_uri(opts.tracking_uri)
    tracking.check_tracking_uri(tracking_uri)
    # One search per name (search.claim): held from the "already exists" checks (Ray's
    # experiment folder, the MLflow parent run) until the runs are closed.
    with claim_search(validated.storage, opts.name, tracking_uri) as claim:
        if claim.note:
            print(f"ecgtune search: {claim.note}", file=sys.stderr, flush=True)
        return _run_claimed(opts, validated, data, check, tracking_uri, trial_hook)


def _run_claimed(opts: SearchOptions, validated: ValidatedSearch, data: SearchData,
                 check: PointValidator, tracking_uri: str,
                 trial_hook: TrialHook | None) -> SearchResult:
    import ray

    experiment_path = _experiment_path(opts, validated.storage)
    if opts.resume:
        finished = _finished_search(opts, tracking_uri, experiment_path)
        if finished is not None:
            return finished

    # SIGTERM keeps taking Ctrl-C's path (data_prep.console), not Ray's exit and stack dump.
    stage("starting Ray" if opts.address is None else f"joining the Ray cluster {opts.address}")
    with keep_sigterm_handler():
        started_ray = init_ray(opts)
    try:
        # GPUs first: a cluster that can never give a trial its GPU creates no run either.
        gpus, check = _gpu_plan(opts, check, ray.cluster_resources())
        stage("opening the MLflow store")
        client = open_tracking_store(tracking_uri)
        recorded = _open_parent_run(client, opts, validated, data, gpus, tracking_uri,
                                    experiment_path)
        opts = replace(opts, objective=recorded.objective)
        if opts.verbose >= 1:
            print(startup_line(opts, validated, recorded.num_samples), flush=True)
        try:
            # The driver loads no signals: the trials get them from the object store (loaded
            # there by a task on this node) or from a node-local memory map.
            stage("loading the data for the trials")
            handle = make_data_handle(opts.data_sharing, None, data.directory, data.folds,
                                      data.manifest_sha256)
            stage("starting the first trials")
            _fit(opts, validated.space, check, handle, data, gpus, recorded, trial_hook)
            stage("summarising the search")
            result = _summarise(recorded.num_samples, opts, tracking_uri,
                                recorded.experiment_id, recorded.parent_id, experiment_path)
        except BaseException:
            _close_runs(client, recorded.experiment_id, recorded.parent_id, complete=False,
                        paused_ms=recorded.paused_ms)
            raise
    finally:
        if started_ray:
            ray.shutdown()
    _close_runs(client, recorded.experiment_id, recorded.parent_id, complete=result.complete,
                result=result, paused_ms=recorded.paused_ms)
    return result


def _finished_search(opts: SearchOptions, tracking_uri: str,
                     experiment_path: str) -> SearchResult | None:
    """`--resume` of a search that already finished: its summary, read from Ray's saved state
    and the runs as they are. No Ray starts and no run is reopened, so the search run keeps
    its own Duration and end time (reopening it would stretch them to now). None when there
    is something to resume."""
    client = open_tracking_store(tracking_uri)
    experiment = client.get_experiment_by_name(opts.name)
    if experiment is None:
        return None
    parent = tracking.find_search_run(client, experiment.experiment_id, experiment_path)
    if parent is None or parent.info.status != "FINISHED":
        return None
    num_samples = int(parent.data.params.get("num_samples", opts.num_samples))
    objective = parent.data.params.get("objective", opts.objective)
    result = _summarise(num_samples, replace(opts, objective=objective), tracking_uri,
                        experiment.experiment_id, parent.info.run_id, experiment_path)
    if not result.complete:
        return None
    tracking.ensure_key_metrics_view(client, experiment.experiment_id)
    if opts.verbose >= 1:
        print(f"Search {opts.name!r} finished earlier ({num_samples} trials): nothing to resume, "
              "its results are reused", flush=True)
    return result


def check_search_data(data_dir: Path) -> SearchData:
    """The train and val folds, by the roles the dataset's manifest records, checked without
    loading a signal (checksums verified, a fold without records refused): the driver of a
    search never holds the data, the trials get it through their data handle."""
    from ecgtune.data_prep import fold_roles, read_manifest
    from ecgtune.data_prep.dataset import fold_counts, manifest_label_map

    manifest_path = data_dir / "manifest.json"
    if not manifest_path.is_file():
        raise SearchError(
            f"{data_dir} is not a prepared data directory (no manifest.json); run "
            "`ecgtune prep --input RECORDS --output DIR` first"
        )
    manifest = read_manifest(data_dir)
    roles = fold_roles(manifest)
    counts = fold_counts(data_dir, [*roles["train"], *roles["val"]], verify=True)
    for role in ("train", "val"):
        for fold in roles[role]:
            if counts[fold] == 0:
                raise SearchError(f"{data_dir}: fold {fold} ({role}) has no records; prepare "
                                  "more records")
    label_map = manifest_label_map(manifest)
    return SearchData(
        directory=data_dir, manifest_sha256=manifest_sha256(data_dir),
        train_folds=roles["train"], val_folds=roles["val"],
        label_names=tuple(label_map.names),
        label_groups=tuple(tuple(g) for g in label_map.group_indices()),
        group_names=tuple(n.lower() for n in label_map.group_names),
        fs=float(manifest["preprocessing"]["fs"]),
    )


def load_search_data(data_dir: Path) -> tuple[SearchData, ECGDataset]:
    """`check_search_data`, then the train and val folds themselves, loaded in this process."""
    from ecgtune.data_prep import load_shards

    data = check_search_data(data_dir)
    return data, load_shards(data_dir, folds=list(data.folds), verify=True)


def _point_validator(validated: ValidatedSearch, data: SearchData) -> PointValidator:
    """The model-layout check of a sampled point; refuses an invalid warm-start point or a
    space none of whose points is valid, before Ray starts."""
    space = validated.space
    check_branch_groups(validated, data.group_names)
    check_input_rate(validated, data.fs)
    check = PointValidator(space, len(data.label_names), data.label_groups,
                           group_names=data.group_names)
    for point in space.points_to_evaluate:
        try:
            check(space.trial_flat(point))
        except ValueError as exc:
            raise SearchError(
                f"{space.name}: warm-start point {dict(point)} is invalid: {exc}"
            ) from None
    _check_some_point_valid(space, check, validated)
    return check


def _experiment_path(opts: SearchOptions, storage: str) -> str:
    """The Ray experiment folder: it must exist for `--resume` and must not otherwise."""
    from ray import tune

    experiment_path = f"{storage}/{opts.name}"
    exists = tune.Tuner.can_restore(experiment_path)
    if opts.resume and not exists:
        raise SearchError(f"nothing to resume: no search named {opts.name!r} under {storage}")
    if not opts.resume and exists:
        raise SearchError(
            f"a search named {opts.name!r} already exists under {storage}; pass --resume to "
            "continue it, or choose another --name"
        )
    return experiment_path


def _open_parent_run(client: Any, opts: SearchOptions, validated: ValidatedSearch,
                     data: SearchData, gpus: float, tracking_uri: str,
                     experiment_path: str) -> _Recorded:
    """The search's MLflow parent run: a resumed search reopens its own (and keeps the size
    it was started with), a new one creates it with the pins it runs under."""
    experiment_id = tracking.get_or_create_experiment(client, opts.name, tracking_uri)
    parent = (tracking.find_search_run(client, experiment_id, experiment_path)
              if opts.resume else None)
    num_samples, objective = opts.num_samples, opts.objective
    paused_ms = 0
    if parent is not None:
        parent_id = parent.info.run_id
        num_samples = int(parent.data.params.get("num_samples", num_samples))
        objective = parent.data.params.get("objective", objective)
        paused_ms = tracking.reopen_run(client, parent)
    else:
        parent_id = _start_parent_run(client, experiment_id, experiment_path,
                                      replace(opts, gpus_per_trial=gpus), validated.space,
                                      data.manifest_path)
        _record_pins(client, parent_id, validated)
    return _Recorded(tracking_uri, experiment_id, parent_id, validated.storage, experiment_path,
                     num_samples, objective, paused_ms)


def _fit(opts: SearchOptions, space: SearchSpace, check: PointValidator, handle: DataHandle,
         data: SearchData, gpus: float, recorded: _Recorded,
         trial_hook: TrialHook | None = None) -> None:
    """Run (or resume) the trials: every trial trains on the train folds and is scored on
    the val folds, with its resources, the MLflow tracker and the progress printer."""
    from ray import tune

    from ecgtune.search.trainable import TrialData, train_trial

    trainable = tune.with_resources(
        tune.with_parameters(train_trial, trial_data=TrialData(
            handle, data.train_folds, data.val_folds, data.label_names, data.label_groups,
            data.group_names, objective_metric(opts.objective)), trial_hook=trial_hook),
        {"cpu": opts.cpus_per_trial, "gpu": gpus},
    )
    callbacks: list[Any] = [tracking.MlflowTrialTracker(
        recorded.tracking_uri, recorded.experiment_id, recorded.parent_id,
        list(data.label_names))]
    if opts.verbose >= 1:
        from ecgtune.search.progress import ProgressPrinter

        callbacks.append(ProgressPrinter(recorded.num_samples))
    tuner = _tuner(opts, trainable, space, check, callbacks, recorded.storage,
                   recorded.experiment_path, recorded.num_samples)
    # A NaN trial fails once instead of spending --max-failures retries (search.faults).
    install_no_retry_policy()
    if opts.verbose < 2:
        logging.getLogger("ray.tune.execution.experiment_state").addFilter(_exception_in_line)
    try:
        tuner.fit()
    except Exception as exc:
        full = _storage_full(recorded.storage)
        if full is None:
            raise
        raise full from exc


def _exception_in_line(record: logging.LogRecord) -> bool:
    """A failed save of the experiment state (a full or unreachable --storage) logs its
    traceback, once per save; its last line says the same in one line."""
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        record.msg = f"{record.getMessage().rstrip(': ')}: {type(exc).__name__}: {exc}"
        record.args, record.exc_info, record.exc_text = (), None, None
    return True


# Below this, a failure inside Tune is taken for the full disk it most likely is: a trial's
# checkpoint, or Ray's own error file (then empty, and unreadable to Tune), was not written.
_FULL_DISK_BYTES = 64 * 2**20


def _storage_full(storage: str) -> OSError | None:
    """ENOSPC naming a local --storage that has (almost) no space left, else None: the
    console script prints it as one line, with the space left there."""
    import errno
    import shutil

    if "://" in storage and not storage.startswith("file://"):
        return None
    path = Path(storage.removeprefix("file://"))
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return None
    if free >= _FULL_DISK_BYTES:
        return None
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _tuner(opts: SearchOptions, trainable: Any, space: SearchSpace, check: PointValidator,
           callbacks: list[Any], storage: str, experiment_path: str, num_samples: int) -> Any:
    from ray import tune

    if opts.resume:
        return tune.Tuner.restore(experiment_path, trainable=trainable,
                                  resume_unfinished=True, resume_errored=True)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            num_samples=num_samples,
            search_alg=build_searcher(space, opts.searcher, opts.seed, check,
                                      parse_objective(opts.objective)),
            scheduler=_scheduler(opts, space),
            max_concurrent_trials=opts.max_concurrent,
            # A new trial takes over a finished trial's worker process: no second torch
            # import and data mapping per trial (see the overhead benchmark).
            reuse_actors=True,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=opts.name,
            storage_path=storage,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            checkpoint_config=checkpoint.checkpoint_config(objective_metric(opts.objective)),
            verbose=2 if opts.verbose >= 2 else 0,
        ),
    )


def _gpu_plan(opts: SearchOptions, check: PointValidator,
              resources: dict[str, float]) -> tuple[float, PointValidator]:
    """GPUs per trial, and the validator that knows each trial's GPU memory."""
    gpus = opts.gpus_per_trial
    if gpus is None:
        gpus = default_gpus_per_trial(opts.address, resources.get("GPU", 0.0), autoscaler_gpus())
    if opts.address is None and gpus > resources.get("GPU", 0.0):
        raise SearchError(
            f"--gpus-per-trial {gpus:g}: this machine has {resources.get('GPU', 0.0):g} GPU "
            "that Ray can use, so no trial would ever start; pass --gpus-per-trial 0"
        )
    check = replace(check, gpu_memory_bytes=gpu_share_bytes(gpus, resources,
                                                            local=opts.address is None))
    if gpus > 0:
        log.info("%g GPU per trial; memory per trial: %s", gpus,
                 f"{check.gpu_memory_bytes / 2**30:.1f} GiB" if check.gpu_memory_bytes
                 else "checked by each trial")
    return gpus, check


def _check_some_point_valid(space: SearchSpace, check: PointValidator,
                            validated: ValidatedSearch, tries: int = 50) -> None:
    """Fail before Ray starts when no sampled point passes the model's layout checks (say,
    `--set n_branches=1` next to a fusion that needs one branch per group); the searcher
    would otherwise give up only after Ray, the parent run and the experiment folder exist."""
    reason = ""
    for seed in range(tries):
        try:
            check(space.trial_flat(space.sample(seed)))
            return
        except ValueError as exc:
            reason = str(exc)
    message = f"{space.name}: none of {tries} random points is a valid trial; last reason: {reason}"
    if validated.pins:
        pins = ", ".join(f"{k}={_pin_text(v)}" for k, v in validated.pins.items())
        raise SearchOptionError(f"{message} (with {pins})")
    raise SearchError(f"{message}. Constrain the space (e.g. with 'when')")


def _pin_text(value: Any) -> str:
    return "-".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _record_pins(client: Any, parent_id: str, validated: ValidatedSearch) -> None:
    """The parent run shows what every trial was pinned to, and which searched keys that
    took out of the space (a sweep's params alone would not tell a pin from a default)."""
    from mlflow.entities import Param

    if not validated.pins:
        return
    implied = {i.key: i.pinned for i in validated.implied if i.is_pin}
    params = [Param(f"pinned.{k}", _pin_text(v)[:500])
              for k, v in {**validated.pins, **implied}.items()]
    client.log_batch(parent_id, params=params)
    if validated.unsearched:
        client.set_tag(parent_id, "ecgtune.unsearched", ",".join(validated.unsearched))
    if validated.implied:
        client.set_tag(parent_id, "ecgtune.implied", "; ".join(
            f"{i.key}={'|'.join(map(str, i.values))} for {','.join(i.needed_by)}"
            for i in validated.implied)[:5000])


def startup_line(opts: SearchOptions, validated: ValidatedSearch, num_samples: int) -> str:
    """What is about to run, pins included, in one line."""
    where = f"cluster {opts.address}" if opts.address else "local Ray (127.0.0.1)"
    text = (f"Search {opts.name!r}{' (resumed)' if opts.resume else ''}: {num_samples} trials "
            f"of the {validated.space.name!r} space on {where}")
    pins = []
    for key, value in validated.pins.items():
        param = validated.unsearched.get(key)
        note = f" (not searched; the space samples {param.kind} {list(param.args)})" if param \
            else ""
        if key in validated.unused:
            note += f" (unused: the space samples {key} only when {validated.unused[key]})"
        pins.append(f"{key}={_pin_text(value)}{note}")
    for implied in validated.implied:
        needed = ", ".join(implied.needed_by)
        if implied.is_pin:
            pins.append(f"{implied.key}={_pin_text(implied.pinned)} (implied: the space samples "
                        f"{needed} only then)")
        else:
            values = ", ".join(map(str, implied.values))
            pins.append(f"{implied.key} limited to {values} (implied: the space samples {needed} "
                        "only then)")
    if pins:
        text += "; pinned: " + ", ".join(pins)
    return text


def _scheduler(opts: SearchOptions, space: SearchSpace) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    epochs = int(space.base_flat().get("train.epochs", 1))
    if opts.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        metric=objective_metric(opts.objective),
        mode="max",
        time_attr=K.EPOCH,
        max_t=epochs,
        grace_period=min(epochs, int(space.scheduler.get("grace_period", 1))),
        reduction_factor=float(space.scheduler.get("reduction_factor", 3)),
    )


def _start_parent_run(client: Any, experiment_id: str, experiment_path: str,
                      opts: SearchOptions, space: SearchSpace, manifest_path: Path) -> str:
    import tempfile

    from mlflow.entities import Param

    run = client.create_run(
        experiment_id,
        run_name=tracking.unique_run_name(
            client, experiment_id, f"{opts.name} ({Path(space.name).stem} space)", "search"),
        tags={
            tracking.TAG_ROLE: "search",
            tracking.TAG_SEARCH_PATH: experiment_path,
            "ecgtune.data_manifest_sha256": manifest_sha256(manifest_path.parent),
            "ecgtune.data_dir": str(manifest_path.parent.resolve()),
            "ecgtune.space_sha256": space.sha256,
            "ecgtune.code_version": code_version(),
            **library_versions(),
        },
    )
    params = {
        "space": space.name, "num_samples": opts.num_samples, "searcher": opts.searcher,
        "scheduler": opts.scheduler, "seed": opts.seed, "cpus_per_trial": opts.cpus_per_trial,
        "gpus_per_trial": opts.gpus_per_trial if opts.gpus_per_trial is not None else "auto",
        "max_failures": opts.max_failures, "data_sharing": opts.data_sharing,
        "epochs": space.base_flat().get("train.epochs"),
        "objective": opts.objective,
    }
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    with tempfile.TemporaryDirectory() as tmp:
        space_file = Path(tmp) / f"{Path(space.name).stem}.yaml"
        space_file.write_text(space.source)
        client.log_artifact(run.info.run_id, str(space_file), "search")
        client.log_artifact(run.info.run_id, str(manifest_path), "data")
    return run.info.run_id


def _summarise(num_samples: int, opts: SearchOptions, tracking_uri: str, experiment_id: str,
               parent_id: str, experiment_path: str) -> SearchResult:
    """Summarise the search from its saved experiment state. The state on disk, not the
    in-memory result grid, says whether an interrupted search left trials unfinished."""
    from ray.tune import ExperimentAnalysis

    trials = []
    finished = 0
    for trial in ExperimentAnalysis(experiment_path).trials:
        last = trial.last_result or {}
        config = dict(trial.config or {})
        epochs = int(last.get(K.EPOCH, 0))
        budget = int(config.get("train.epochs", epochs))
        error = tracking.error_summary(trial) if trial.status == "ERROR" else None
        finished += trial.status in ("TERMINATED", "ERROR")
        best = last.get(K.BEST_OBJECTIVE)
        trials.append(TrialSummary(
            index=tracking.trial_index(trial), trial_id=trial.trial_id, status=trial.status,
            epochs=epochs, best_score=float(best) if best is not None else None,
            early_stopped=trial.status == "TERMINATED" and epochs < budget, config=config,
            error=error,
            cost={k: float(v) for k, v in last.items() if k.startswith("cost/")},
        ))
    complete = finished == len(trials) == num_samples
    return SearchResult(opts.name, experiment_path, tracking_uri, experiment_id, parent_id,
                        sorted(trials, key=lambda t: t.index), complete,
                        parse_objective(opts.objective))


def _close_runs(client: Any, experiment_id: str, parent_id: str, complete: bool,
                result: SearchResult | None = None, paused_ms: int = 0) -> None:
    """No run is left RUNNING: open child runs of an interrupted search become KILLED (a
    `--resume` reopens them), and the parent run records the outcome; its Duration counts
    the time the search ran, not the time it lay stopped before a `--resume`."""
    status = "FINISHED" if complete else "KILLED"
    for run in tracking.trial_runs(client, experiment_id, parent_id):
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, tracking.TAG_STOP_REASON,
                           "search interrupted; `ecgtune search --resume` continues it")
            client.set_terminated(run.info.run_id, status="KILLED")
    if result is not None:
        best = result.best
        if best is not None:
            quality = objective_metric(",".join(result.objective))
            client.log_metric(parent_id, f"best/{quality.split('/', 1)[1]}", best.best_score)
            # The trials' column name too: the key-metrics view shows the search's best there.
            client.log_metric(parent_id, K.BEST_OBJECTIVE, best.best_score)
            client.set_tag(parent_id, "ecgtune.best_trial_id", best.trial_id)
        client.log_metric(parent_id, "search/trial_epochs", result.trial_epochs)
        client.log_metric(parent_id, "search/trials", len(result.trials))
        if len(result.objective) > 1:
            from ecgtune.search.pareto import log_pareto_front

            log_pareto_front(client, parent_id, result.trials, result.objective[1:])
    tracking.close_run(client, parent_id, status, paused_ms)
