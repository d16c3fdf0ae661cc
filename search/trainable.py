"""The Ray Tune function trainable: one trial = one `Trainer`, reporting and checkpointing
every epoch through `ray.tune.report`, resuming from `ray.tune.get_checkpoint()`.

`TrialHook` is the one place where code outside the search runs inside a trial: a callable
that `run_search(..., trial_hook=...)` hands to every trial and that the trial calls at the
start of each epoch. Tests install one to inject faults (a crash, a NaN, an out-of-memory
error) that then take the search's real failure paths; searches started from the CLI have
none, so the trial config and its MLflow params hold nothing test-only.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ray import tune

from ecgtune.data_prep import ECGDataset
from ecgtune.search import _ray_compat
from ecgtune.search import metric_keys as K
from ecgtune.search.config import TrialConfig
from ecgtune.search.data import DataHandle
from ecgtune.search.devices import (
    oom_as_fatal,
    release_memory,
    require_fit,
    select_precision,
    trial_device,
)
from ecgtune.search.errors import NonRetryableTrialError
from ecgtune.search.faults import quiet_shutdown_in_finalizers
from ecgtune.search.training import Trainer

# Written into the trial directory when a trial fails for good (NaN loss). FailureConfig does
# not retry it (search.faults), but `--resume` restarts errored trials: it then fails at once
# instead of diverging again from the same checkpoint.
FATAL_MARKER = "ecgtune_fatal.json"


class FatalTrialError(NonRetryableTrialError):
    """A retry of a trial that already failed for a reason a retry cannot change."""


@dataclass(frozen=True)
class EpochStart:
    """What a `TrialHook` gets at the start of each epoch of a trial (also the first epoch
    after a retry or `--resume` restored it from a checkpoint)."""

    trial_id: str
    config: Mapping[str, Any]  # the trial's flat config, as Ray Tune gave it
    epoch: int  # the epoch about to run: the number of epochs done so far
    trainer: Trainer
    trial_dir: Path  # kept across the trial's retries (a hook's markers survive them)


# Runs in the trial's process, inside the trial's error handling: what it raises fails the
# trial as the same exception from training would. Pickled to the Ray workers, so it must be
# importable there or registered with `ray.cloudpickle.register_pickle_by_value`.
TrialHook = Callable[[EpochStart], None]


@dataclass(frozen=True)
class TrialData:
    """What every trial needs besides its config; passed once through `tune.with_parameters`."""

    data: DataHandle
    train_folds: tuple[int, ...]
    val_folds: tuple[int, ...]
    label_names: tuple[str, ...]
    label_groups: tuple[tuple[int, ...], ...]
    group_names: tuple[str, ...] = ()  # the label map's, for per-branch settings
    objective: str = K.OBJECTIVE  # the result key of the search's quality objective


def _gpu_share() -> float:
    """The GPU fraction Ray reserved for this trial (0.5 = half a GPU); 0 on the CPU."""
    import ray

    return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))


def _trial_threads() -> int:
    # Ray sets OMP_NUM_THREADS from the trial's CPUs; torch must follow it, or concurrent
    # trials on one node oversubscribe the cores. The loader uses them too (on a GPU).
    return max(1, int(float(os.environ.get("OMP_NUM_THREADS", "1"))))


def share_budget(device: torch.device, share: float) -> int | None:
    """Bytes of the GPU this trial may use (its share of the device); None on the CPU."""
    if device.type != "cuda":
        return None
    share = min(1.0, share) if share > 0 else 1.0
    return int(torch.cuda.get_device_properties(device).total_memory * share)


def prepare_device(trial: TrialConfig, num_labels: int, label_groups: list[list[int]] | None,
                   gpu_ids: list[Any], share: float,
                   group_names: tuple[str, ...] = ()) -> torch.device:
    """The trial's device, refused loudly when unusable; on a GPU, the trial's memory capped
    at its share (so an overrun fails this trial, not its neighbour) and checked up front
    (at the static precision; `train.precision=auto` then measures only what fits)."""
    device = trial_device(gpu_ids)
    if device.type != "cuda":
        return device
    share = min(1.0, share) if share > 0 else 1.0
    torch.cuda.set_per_process_memory_fraction(share, device.index or 0)
    budget = share_budget(device, share)
    assert budget is not None
    require_fit(trial.model, num_labels, label_groups, trial.train.batch_size,
                trial.train.crop_len, select_precision(trial.train.precision, device), budget,
                "this trial's GPU share", f"{share:g} x {torch.cuda.get_device_name(device)}",
                group_names)
    return device


def train_trial(config: dict[str, Any], trial_data: TrialData,
                trial_hook: TrialHook | None = None) -> None:
    # Ray logs every persisted checkpoint at INFO, which buries the progress table.
    logging.getLogger(_ray_compat.STORAGE_LOGGER).setLevel(logging.WARNING)
    quiet_shutdown_in_finalizers()
    import ray

    trial = TrialConfig.from_flat(config)
    trial_dir = Path(tune.get_context().get_trial_dir())
    fatal = trial_dir / FATAL_MARKER
    if fatal.exists():
        raise FatalTrialError(json.loads(fatal.read_text())["error"])
    threads = _trial_threads()
    torch.set_num_threads(threads)
    groups = [list(g) for g in trial_data.label_groups]
    trainer: Trainer | None = None
    try:
        with oom_as_fatal(trial.train.batch_size, trial.train.crop_len):
            device = prepare_device(trial, len(trial_data.label_names), groups,
                                    ray.get_gpu_ids(), _gpu_share(), trial_data.group_names)
            dataset: ECGDataset = trial_data.data.get()
            trainer = Trainer(
                trial,
                dataset.select(folds=trial_data.train_folds),
                dataset.select(folds=trial_data.val_folds),
                label_groups=groups,
                label_names=list(trial_data.label_names),
                device=device,
                threads=threads,
                objective=trial_data.objective,
                memory_budget=share_budget(device, _gpu_share()),
            )
            del dataset
            _run_trial(trainer, trial, config, trial_dir, trial_hook)
    except NonRetryableTrialError as exc:
        # Deterministic for this config (NaN loss, no usable GPU, out of memory): the
        # marker fails a `--resume`d restart of this trial at once (search.faults stops
        # Tune's own retries).
        fatal.write_text(json.dumps({"error": str(exc)}))
        raise
    finally:
        # A reused actor runs the next trial in this process: free this one's memory first.
        if trainer is not None:
            trainer.close()
        trainer = None
        release_memory()


def _environment(trainer: Trainer) -> dict[str, str]:
    """String results that the tracker turns into tags of the trial's run."""
    import ray

    device = trainer.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        K.ENV_DEVICE: f"{device.type} ({name})",
        K.ENV_PRECISION: trainer.precision,
        K.ENV_PRECISION_REASON: trainer.execution.reason,
        K.ENV_LAYOUT: trainer.layout,
        K.ENV_COMPILE: trainer.compile_mode,
        K.ENV_NODE: ray.get_runtime_context().get_node_id(),
    }


def _trial_cost(trainer: Trainer) -> dict[str, float]:
    """The model's cost (search.cost), once per trial: reported with every epoch so that a
    multi-objective searcher and the tracker find it in any result."""
    from ecgtune.search.cost import model_cost

    model = trainer.model
    return model_cost(trainer.trial.model, trainer.num_labels, trainer.label_groups,
                      getattr(model, "group_names", ()), threads=trainer.threads).metrics()


def _run_trial(trainer: Trainer, trial: TrialConfig, config: Mapping[str, Any], trial_dir: Path,
               hook: TrialHook | None) -> None:
    restored_from = -1
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trainer.restore(directory)
        restored_from = trainer.epoch
    environment = _environment(trainer)
    cost = _trial_cost(trainer)
    trial_id = tune.get_context().get_trial_id()
    while trainer.epoch < trial.train.epochs:
        if hook is not None:
            hook(EpochStart(trial_id, config, trainer.epoch, trainer, trial_dir))
        result = trainer.run_epoch()
        metrics = {**result.metrics, K.RESTORED_FROM_EPOCH: restored_from, **environment,
                   **cost}
        with tempfile.TemporaryDirectory(prefix="ecgtune-ckpt-") as directory:
            trainer.save(directory, result)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
