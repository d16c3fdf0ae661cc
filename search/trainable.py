"""The Ray Tune function trainable: one trial = one `Trainer`, reporting and checkpointing
every epoch through `ray.tune.report`, resuming from `ray.tune.get_checkpoint()`."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ray import tune

from data_prep import ECGDataset
from search import metrics as M
from search.config import TrialConfig
from search.data import DataHandle
from search.training import NonFiniteLossError, Trainer

# Written into the trial directory when a trial fails for good (NaN loss). FailureConfig does
# not retry it (search.faults), but `--resume` restarts errored trials: it then fails at once
# instead of diverging again from the same checkpoint.
FATAL_MARKER = "ecgtune_fatal.json"
CRASH_MARKER = "ecgtune_injected_crash"


class InjectedCrash(RuntimeError):
    """Raised by `debug.crash_at_epoch` to test retry-from-checkpoint."""


@dataclass(frozen=True)
class TrialData:
    """What every trial needs besides its config; passed once through `tune.with_parameters`."""

    data: DataHandle
    train_folds: tuple[int, ...]
    val_folds: tuple[int, ...]
    label_names: tuple[str, ...]
    label_groups: tuple[tuple[int, ...], ...]


def _trial_device() -> torch.device:
    import ray

    if torch.cuda.is_available() and ray.get_gpu_ids():
        return torch.device("cuda")
    return torch.device("cpu")


def _set_threads() -> None:
    # Ray sets OMP_NUM_THREADS from the trial's CPUs; torch must follow it, or concurrent
    # trials on one node oversubscribe the cores.
    cpus = int(float(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.set_num_threads(max(1, cpus))


def train_trial(config: dict[str, Any], trial_data: TrialData) -> None:
    # Ray logs every persisted checkpoint at INFO, which buries the progress table.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    trial = TrialConfig.from_flat(config)
    trial_dir = Path(tune.get_context().get_trial_dir())
    fatal = trial_dir / FATAL_MARKER
    if fatal.exists():
        raise NonFiniteLossError(json.loads(fatal.read_text())["error"])
    _set_threads()
    dataset: ECGDataset = trial_data.data.get()
    trainer = Trainer(
        trial,
        dataset.select(folds=trial_data.train_folds),
        dataset.select(folds=trial_data.val_folds),
        label_groups=[list(g) for g in trial_data.label_groups],
        label_names=list(trial_data.label_names),
        device=_trial_device(),
    )
    restored_from = -1
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trainer.restore(directory)
        restored_from = trainer.epoch
    while trainer.epoch < trial.train.epochs:
        _maybe_crash(trial, trainer.epoch, trial_dir)
        nan_step = 0 if trial.debug.nan_at_epoch == trainer.epoch else None
        try:
            result = trainer.run_epoch(nan_at_step=nan_step)
        except NonFiniteLossError as exc:
            fatal.write_text(json.dumps({"error": str(exc)}))
            raise
        metrics = {**result.metrics, M.RESTORED_FROM_EPOCH: restored_from}
        with tempfile.TemporaryDirectory(prefix="ecgtune-ckpt-") as directory:
            trainer.save(directory, result)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


def _maybe_crash(trial: TrialConfig, epoch: int, trial_dir: Path) -> None:
    marker = trial_dir / CRASH_MARKER
    if trial.debug.crash_at_epoch == epoch and not marker.exists():
        marker.write_text(str(epoch))
        raise InjectedCrash(f"injected crash at the start of epoch {epoch} (debug.crash_at_epoch)")
