"""`--resume` after a killed driver: the saved experiment state may name a latest checkpoint
that the driver deleted afterwards (a newer one pushed it out of the kept ones). The trial
resumes from its newest checkpoint on storage instead of failing on every retry."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow.fs
from ray import tune

from ecgtune.search import _ray_compat
from ecgtune.search import metric_keys as K
from ecgtune.search.checkpoint import checkpoint_config, repair_latest_checkpoint


def _report(manager: Any | None, trial_dir: Path, epoch: int,
            score: float) -> None:
    """What Ray does with one reported epoch: the trial writes the folder, the driver records
    its result in result.json and its checkpoint manager (None: a driver that is gone)."""
    folder = trial_dir / f"checkpoint_{epoch:06d}"
    folder.mkdir()
    (folder / "epoch").write_text(str(epoch))
    if manager is None:
        return
    result = {K.OBJECTIVE: score, K.EPOCH: epoch + 1, "checkpoint_dir_name": folder.name}
    with open(trial_dir / "result.json", "a") as out:
        out.write(json.dumps(result) + "\n")
    checkpoint = tune.Checkpoint(str(folder), filesystem=pyarrow.fs.LocalFileSystem())
    manager.register_checkpoint(_ray_compat.training_result(checkpoint, result))


def test_resumed_trial_moves_to_its_newest_checkpoint_on_storage(tmp_path):
    # Keeps the 2 best plus the latest.
    live = _ray_compat.checkpoint_manager_class()(checkpoint_config())
    for epoch, score in enumerate([0.5, 0.4, 0.3]):
        _report(live, tmp_path, epoch, score)
    saved = pickle.loads(pickle.dumps(live))  # the experiment state, saved now
    _report(live, tmp_path, 3, 0.2)  # ... then the driver deletes checkpoint 2, and dies
    assert not (tmp_path / "checkpoint_000002").exists()
    _report(None, tmp_path, 4, 0.1)  # the trial, alive a little longer: never recorded
    trial = SimpleNamespace(run_metadata=SimpleNamespace(checkpoint_manager=saved),
                            config={"train.epochs": 8})
    assert saved.latest_checkpoint_result.checkpoint.path.endswith("checkpoint_000002")

    assert repair_latest_checkpoint(trial) == str(tmp_path / "checkpoint_000003")
    latest = saved.latest_checkpoint_result
    assert latest.checkpoint.path == str(tmp_path / "checkpoint_000003")
    assert latest.metrics[K.EPOCH] == 4  # its own result, read back from result.json
    best = [Path(r.checkpoint.path).name for r in saved.best_checkpoint_results]
    assert sorted(best) == ["checkpoint_000000", "checkpoint_000001"]  # still there
    assert saved.best_checkpoint_result.checkpoint.path.endswith("checkpoint_000000")
    # Nothing to repair when the latest checkpoint is there.
    assert repair_latest_checkpoint(trial) is None
    assert repair_latest_checkpoint(SimpleNamespace(run_metadata=None)) is None


def test_a_checkpoint_at_the_epoch_budget_is_not_resumed_from(tmp_path):
    """Restored at its budget a trial would train nothing and end without a result."""
    live = _ray_compat.checkpoint_manager_class()(checkpoint_config())
    for epoch, score in enumerate([0.5, 0.1]):
        _report(live, tmp_path, epoch, score)
    saved = pickle.loads(pickle.dumps(live))
    _report(live, tmp_path, 2, 0.3)  # the last epoch of a 3-epoch budget; 1 is deleted
    assert not (tmp_path / "checkpoint_000001").exists()
    trial = SimpleNamespace(run_metadata=SimpleNamespace(checkpoint_manager=saved),
                            config={"train.epochs": 3})
    assert repair_latest_checkpoint(trial) == str(tmp_path / "checkpoint_000000")
    assert saved.latest_checkpoint_result.metrics[K.EPOCH] == 1
