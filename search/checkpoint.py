"""A trial's checkpoint, end to end: its files, writing it, finding the best one, reading it back.

The journey: each epoch a trial's `Trainer` calls `write_checkpoint` into a temporary folder
and the trainable hands that folder to `ray.tune.report`; Ray copies it into the trial's
folder under `--storage` and keeps the best by the objective plus the latest
(`checkpoint_config`). When the trial ends, the MLflow tracker tags the trial's run with
`checkpoint_uri(best_checkpoint(trial))` and logs its `ARTIFACT_FILES`. An ensemble ranks the
finished runs, turns that tag back into a folder (`local_checkpoint`, which also finds
results moved under another `--storage`) and `read_checkpoint` loads it as (model, flat
config, thresholds). Weights and state load with `weights_only=True`.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ecgtune.search import metric_keys as K
from ecgtune.search.errors import CheckpointError

if TYPE_CHECKING:
    from torch import nn

    from ecgtune.components.checkpoint import CheckpointMeta
    from ecgtune.search.config import TrialConfig

__all__ = [
    "ARTIFACT_FILES",
    "MODEL_FILE",
    "STATE_FILE",
    "THRESHOLDS_FILE",
    "TRIAL_CONFIG_FILE",
    "VAL_METRICS_FILE",
    "VAL_PREDICTIONS_FILE",
    "TrialCheckpoint",
    "Validation",
    "best_checkpoint",
    "checkpoint_config",
    "checkpoint_uri",
    "local_checkpoint",
    "read_checkpoint",
    "read_training_state",
    "write_checkpoint",
]

MODEL_FILE = "model.pt"  # weights + model config + label layout (components checkpoint)
STATE_FILE = "training_state.pt"  # optimizer, schedule, RNG and history: what resume needs
TRIAL_CONFIG_FILE = "trial_config.json"  # the trial's flat config (TrialConfig.to_json)
THRESHOLDS_FILE = "thresholds.json"  # per-label thresholds tuned on the validation fold
VAL_METRICS_FILE = "val_metrics.json"
VAL_PREDICTIONS_FILE = "val_predictions.npz"
# What the tracker copies into the trial's MLflow run (the weights stay in the checkpoint).
ARTIFACT_FILES = (THRESHOLDS_FILE, VAL_METRICS_FILE, VAL_PREDICTIONS_FILE, TRIAL_CONFIG_FILE)


@dataclass(frozen=True)
class Validation:
    """One epoch's validation outputs, written beside the weights."""

    label_names: list[str]
    thresholds: np.ndarray
    threshold_objective: str
    metrics: Mapping[str, float]
    per_label: Mapping[str, Mapping[str, float | int | None]]
    probs: np.ndarray
    labels: np.ndarray
    records: np.ndarray


@dataclass
class TrialCheckpoint:
    """A checkpoint read back: the model (eval mode), its metadata, the trial's flat config
    and, when the trial wrote them, its validation thresholds."""

    model: nn.Module
    meta: CheckpointMeta
    flat_config: dict[str, Any]
    thresholds: np.ndarray | None


# -- writing (the Trainer) ----------------------------------------------------------------------
def write_checkpoint(
    directory: str | Path,
    model: nn.Module,
    trial: TrialConfig,
    *,
    num_labels: int,
    label_groups: list[list[int]] | None,
    epoch: int,
    training_state: Mapping[str, Any],
    validation: Validation | None = None,
) -> Path:
    """Write a resumable checkpoint into `directory` (and, with `validation`, the epoch's
    validation outputs); `training_state` must hold only what weights-only loading accepts."""
    import torch

    from ecgtune.components import save_checkpoint

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # model.pt keeps a copy of the trial config so that the weights file alone still says how
    # they were trained; readers use TRIAL_CONFIG_FILE.
    save_checkpoint(directory / MODEL_FILE, model, trial.model, num_labels=num_labels,
                    label_groups=label_groups,
                    extra={"epoch": epoch, "trial_config": trial.to_json()})
    torch.save(dict(training_state), directory / STATE_FILE)
    (directory / TRIAL_CONFIG_FILE).write_text(trial.to_json())
    if validation is not None:
        _write_validation(directory, validation, epoch)
    return directory


def _write_validation(directory: Path, v: Validation, epoch: int) -> None:
    (directory / THRESHOLDS_FILE).write_text(json.dumps({
        "labels": list(v.label_names),
        "thresholds": [float(t) for t in v.thresholds],
        "objective": v.threshold_objective,
        "epoch": epoch,
    }, indent=2))
    (directory / VAL_METRICS_FILE).write_text(json.dumps(
        {"epoch": epoch, "macro": dict(v.metrics), "per_label": dict(v.per_label)}, indent=2))
    np.savez_compressed(
        directory / VAL_PREDICTIONS_FILE,
        probs=v.probs,
        labels=np.asarray(v.labels, dtype=np.uint8),
        records=np.asarray(v.records).astype(str),
        label_names=np.asarray(v.label_names, dtype=str),
    )


def read_training_state(directory: str | Path) -> dict[str, Any]:
    """The resume state, on the CPU: `load_state_dict` then moves the optimizer's moments to
    the parameters' device but leaves AdamW's `step` counters on the CPU, where torch wants
    them (on the GPU, steps after a restore ran 1.06-1.33x slower on an H200: BENCHMARKS.md)."""
    import torch

    state: dict[str, Any] = torch.load(Path(directory) / STATE_FILE, map_location="cpu",
                                       weights_only=True)
    return state


# -- finding the best (Ray, then the tracker) ---------------------------------------------------
def checkpoint_config(objective: str = K.OBJECTIVE) -> Any:
    """Ray keeps a trial's two best checkpoints by the objective (the best is what
    `best_checkpoint` returns, for the ensemble) and, until a newer one arrives, the latest
    (what a retry or `--resume` continues from)."""
    from ray import tune

    return tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=objective,
                                 checkpoint_score_order="max")


def repair_latest_checkpoint(trial: Any) -> str | None:
    """Point a resumed trial at its newest usable checkpoint on storage; returns its path.

    Ray deletes a checkpoint that falls out of the kept ones as soon as a newer one arrives,
    but saves the experiment state only every few seconds. A driver killed in between leaves a
    state whose "latest checkpoint" is gone, and Ray then fails that trial on every retry of
    `--resume` ("does not exist on storage anymore"). Usable instead: the newest checkpoint
    still on storage that the driver recorded (its line in result.json: a trial that outlived
    its driver may have written more) and that leaves an epoch to train (a trial restored at
    its budget would end without a result). None: nothing to repair, or nothing usable.
    """
    import pyarrow.fs

    from ecgtune.search import _ray_compat

    manager: Any = getattr(getattr(trial, "run_metadata", None), "checkpoint_manager", None)
    latest = getattr(manager, "latest_checkpoint_result", None)
    if manager is None or latest is None or latest.checkpoint is None:
        return None
    fs, missing = latest.checkpoint.filesystem, latest.checkpoint.path
    if fs.get_file_info(missing).type != pyarrow.fs.FileType.NotFound:
        return None
    trial_dir = missing.rstrip("/").rsplit("/", 1)[0]
    recorded = _results_by_checkpoint(fs, trial_dir)
    budget = int((getattr(trial, "config", None) or {}).get("train.epochs", 10**9))
    usable = sorted(info.base_name for info in fs.get_file_info(pyarrow.fs.FileSelector(trial_dir))
                    if info.type == pyarrow.fs.FileType.Directory
                    and info.base_name in recorded
                    and int(recorded[info.base_name].get(K.EPOCH, 0)) < budget)
    if not usable:
        return None
    path = f"{trial_dir}/{usable[-1]}"
    kept = [r for r in _ray_compat.kept_checkpoint_results(manager)
            if fs.get_file_info(r.checkpoint.path).type != pyarrow.fs.FileType.NotFound]
    newest = next((r for r in kept if r.checkpoint.path == path), None)
    if newest is None:
        from ray import tune

        newest = _ray_compat.training_result(tune.Checkpoint(path, filesystem=fs),
                                             recorded[usable[-1]])
        kept.append(newest)
    _ray_compat.set_checkpoint_results(manager, kept, latest=newest)
    return path


def _results_by_checkpoint(fs: Any, trial_dir: str) -> dict[str, dict[str, Any]]:
    """The results the driver recorded with each checkpoint (result.json), by folder name."""
    out: dict[str, dict[str, Any]] = {}
    with contextlib.suppress(OSError, ValueError), \
            fs.open_input_stream(f"{trial_dir}/result.json") as stream:
        for line in stream.read().decode().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                result = json.loads(line)
                if result.get("checkpoint_dir_name"):
                    out[result["checkpoint_dir_name"]] = result
    return out


def best_checkpoint(trial: Any) -> Any | None:
    """A Ray trial's best checkpoint by the objective (kept by `checkpoint_config`), else its
    latest."""
    manager = getattr(getattr(trial, "run_metadata", None), "checkpoint_manager", None)
    best = getattr(manager, "best_checkpoint_result", None) if manager else None
    return best.checkpoint if best is not None else trial.checkpoint


def checkpoint_uri(checkpoint: Any) -> str:
    """A checkpoint's location as a URI that `ray.tune.Checkpoint(path)` accepts elsewhere."""
    fs_type = getattr(checkpoint.filesystem, "type_name", "local")
    if fs_type == "local":
        return str(checkpoint.path)
    prefix = {"s3": "s3://", "gcs": "gs://"}.get(fs_type, f"{fs_type}://")
    return prefix + str(checkpoint.path).lstrip("/")


# -- reading back (the ensemble) ----------------------------------------------------------------
@contextlib.contextmanager
def local_checkpoint(location: str, search_name: str, storage: str | None = None
                     ) -> Iterator[Path]:
    """A local folder holding the checkpoint at `location` (a path or URI; URIs are downloaded
    and removed after). A local path that no longer exists is looked up under `storage` as
    `STORAGE/SEARCH_NAME/<trial dir>/<checkpoint dir>`, Ray's layout, for moved results."""
    if "://" in location and not location.startswith("file://"):
        with _downloaded(location) as directory:
            yield directory
        return
    path = Path(location.removeprefix("file://"))
    if path.is_dir():
        yield path
        return
    tried = [str(path)]
    if storage is not None:
        moved = f"{storage.rstrip('/')}/{search_name}/{path.parent.name}/{path.name}"
        if "://" in storage:
            with _downloaded(moved) as directory:
                yield directory
            return
        if Path(moved).is_dir():
            yield Path(moved)
            return
        tried.append(moved)
    hint = "" if storage else "; pass --storage if the search results were moved"
    raise CheckpointError(f"checkpoint not found (looked in {', '.join(tried)}){hint}")


@contextlib.contextmanager
def _downloaded(uri: str) -> Iterator[Path]:
    from ray.tune import Checkpoint

    with tempfile.TemporaryDirectory(prefix="ecgtune-member-") as tmp:
        try:
            Checkpoint(uri).to_directory(tmp)
        except Exception as exc:  # pyarrow.fs raises many types (auth, missing, network)
            raise CheckpointError(
                f"cannot download checkpoint {uri}: {type(exc).__name__}: {exc}") from None
        yield Path(tmp)


def read_checkpoint(directory: str | Path, label_names: list[str] | None = None,
                    map_location: str = "cpu") -> TrialCheckpoint:
    """Load a checkpoint folder's model (weights_only), flat config and thresholds; with
    `label_names`, refuse a checkpoint made for other labels."""
    from ecgtune.components import load_checkpoint

    directory = Path(directory)
    model_file = directory / MODEL_FILE
    if not model_file.is_file():
        raise CheckpointError(f"{MODEL_FILE} missing in {directory}")
    try:
        model, meta = load_checkpoint(model_file, map_location=map_location)
    except Exception as exc:  # corrupt file, foreign format, incompatible weights
        raise CheckpointError(
            f"cannot load {model_file}: {type(exc).__name__}: {exc}") from None
    if not (directory / TRIAL_CONFIG_FILE).is_file():
        raise CheckpointError(f"{TRIAL_CONFIG_FILE} missing in {directory}")
    flat = _read_json(directory / TRIAL_CONFIG_FILE)
    thresholds = None
    if (directory / THRESHOLDS_FILE).is_file():
        data = _read_json(directory / THRESHOLDS_FILE)
        if label_names is not None and list(data.get("labels", label_names)) != label_names:
            raise CheckpointError(
                f"its thresholds are for labels {data.get('labels')}, the data has {label_names}")
        thresholds = np.asarray(data["thresholds"], dtype=np.float64)
    if label_names is not None and meta.num_labels != len(label_names):
        raise CheckpointError(
            f"the model predicts {meta.num_labels} labels, the data has {len(label_names)}")
    return TrialCheckpoint(model, meta, flat, thresholds)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path.name}: {exc}") from None
