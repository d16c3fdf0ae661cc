"""search.checkpoint: the file layout round trip, best-checkpoint selection, reading back."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ecgtune.components import build_model, get_preset
from ecgtune.search import checkpoint
from ecgtune.search import metric_keys as K
from ecgtune.search.config import TrainConfig, TrialConfig
from ecgtune.search.errors import CheckpointError

LABELS = [f"L{i}" for i in range(6)]
GROUPS = [[0, 1, 2], [3, 4, 5]]


def _trial() -> TrialConfig:
    return TrialConfig(get_preset("tiny"), TrainConfig(crop_len=1024, normalization="record"))


def _validation(rng: np.random.Generator) -> checkpoint.Validation:
    return checkpoint.Validation(
        label_names=LABELS, thresholds=rng.uniform(0.1, 0.9, len(LABELS)),
        threshold_objective="f1", metrics={K.OBJECTIVE: 0.5}, per_label={"L0": {K.F1: 0.25}},
        probs=rng.uniform(size=(4, len(LABELS))).astype(np.float32),
        labels=rng.integers(0, 2, (4, len(LABELS))), records=np.array(["a", "b", "c", "d"]),
    )


def _write(directory: Path, seed: int = 0, validation: bool = True
           ) -> tuple[torch.nn.Module, checkpoint.Validation]:
    torch.manual_seed(seed)
    model = build_model(get_preset("tiny"), len(LABELS), GROUPS)
    v = _validation(np.random.default_rng(seed))
    checkpoint.write_checkpoint(
        directory, model, _trial(), num_labels=len(LABELS), label_groups=GROUPS, epoch=3,
        training_state={"epoch": 3, "step": torch.arange(4)},
        validation=v if validation else None,
    )
    return model, v


def test_layout_is_the_named_files(tmp_path):
    _write(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {checkpoint.MODEL_FILE, checkpoint.STATE_FILE, checkpoint.TRIAL_CONFIG_FILE,
                     *checkpoint.ARTIFACT_FILES}
    assert set(checkpoint.ARTIFACT_FILES) <= names and checkpoint.MODEL_FILE not in \
        checkpoint.ARTIFACT_FILES
    _write(tmp_path / "bare", validation=False)
    assert {p.name for p in (tmp_path / "bare").iterdir()} == {
        checkpoint.MODEL_FILE, checkpoint.STATE_FILE, checkpoint.TRIAL_CONFIG_FILE}


def test_read_back_equals_what_was_written(tmp_path):
    model, v = _write(tmp_path)
    saved = checkpoint.read_checkpoint(tmp_path, LABELS)
    assert saved.flat_config == json.loads(_trial().to_json())
    assert TrialConfig.from_flat(saved.flat_config) == _trial()
    np.testing.assert_array_equal(saved.thresholds, v.thresholds)
    assert saved.meta.num_labels == len(LABELS) and saved.meta.label_groups == GROUPS
    assert saved.meta.config == get_preset("tiny")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(saved.model.state_dict()[key], value, rtol=0, atol=0)
    state = checkpoint.read_training_state(tmp_path)
    assert state["epoch"] == 3 and torch.equal(state["step"], torch.arange(4))
    with np.load(tmp_path / checkpoint.VAL_PREDICTIONS_FILE) as npz:
        np.testing.assert_array_equal(npz["probs"], v.probs)
        assert list(npz["label_names"]) == LABELS and npz["labels"].dtype == np.uint8
    metrics = json.loads((tmp_path / checkpoint.VAL_METRICS_FILE).read_text())
    assert metrics == {"epoch": 3, "macro": {K.OBJECTIVE: 0.5}, "per_label": {"L0": {K.F1: 0.25}}}


def test_read_without_thresholds_gives_none(tmp_path):
    _write(tmp_path, validation=False)
    assert checkpoint.read_checkpoint(tmp_path).thresholds is None


def test_read_refuses_other_labels_and_missing_files(tmp_path):
    _write(tmp_path)
    with pytest.raises(CheckpointError, match="thresholds are for labels"):
        checkpoint.read_checkpoint(tmp_path, [*LABELS[:-1], "other"])
    (tmp_path / checkpoint.THRESHOLDS_FILE).unlink()
    with pytest.raises(CheckpointError, match="predicts 6 labels, the data has 5"):
        checkpoint.read_checkpoint(tmp_path, LABELS[:-1])
    (tmp_path / checkpoint.TRIAL_CONFIG_FILE).unlink()
    with pytest.raises(CheckpointError, match=checkpoint.TRIAL_CONFIG_FILE):
        checkpoint.read_checkpoint(tmp_path)
    (tmp_path / checkpoint.MODEL_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=f"cannot load .*{checkpoint.MODEL_FILE}"):
        checkpoint.read_checkpoint(tmp_path)
    (tmp_path / checkpoint.MODEL_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"{checkpoint.MODEL_FILE} missing"):
        checkpoint.read_checkpoint(tmp_path)


def test_best_checkpoint_is_the_best_by_the_objective_not_the_latest(tmp_path):
    # Ray's own bookkeeping under our CheckpointConfig: what a finished trial carries.
    from ray.tune import Checkpoint

    from ecgtune.search import _ray_compat

    manager = _ray_compat.checkpoint_manager_class()(checkpoint.checkpoint_config())
    saved = {}
    for epoch, score in enumerate([0.3, 0.7, 0.5, 0.4], start=1):
        directory = tmp_path / f"checkpoint_{epoch:06d}"
        directory.mkdir()
        saved[epoch] = Checkpoint.from_directory(str(directory))
        manager.register_checkpoint(_ray_compat.training_result(
            saved[epoch], {K.OBJECTIVE: score, K.EPOCH: epoch}))
    trial = SimpleNamespace(run_metadata=SimpleNamespace(checkpoint_manager=manager),
                            checkpoint=saved[4])
    best = checkpoint.best_checkpoint(trial)
    assert best is not None and best.path == saved[2].path
    # The two best stay on disk, and the latest (what a retry continues from); the rest go.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint_000002", "checkpoint_000003", "checkpoint_000004"]
    no_manager = SimpleNamespace(run_metadata=None, checkpoint=saved[4])
    assert checkpoint.best_checkpoint(no_manager) is saved[4]


def test_checkpoint_uri_names_remote_filesystems():
    local = SimpleNamespace(filesystem=SimpleNamespace(type_name="local"), path="/r/t/c")
    s3 = SimpleNamespace(filesystem=SimpleNamespace(type_name="s3"), path="bucket/r/t/c")
    assert checkpoint.checkpoint_uri(local) == "/r/t/c"
    assert checkpoint.checkpoint_uri(s3) == "s3://bucket/r/t/c"


def test_local_checkpoint_finds_moved_results_under_storage(tmp_path):
    original = tmp_path / "results" / "search" / "trial_1" / "checkpoint_000002"
    _write(original)
    with checkpoint.local_checkpoint(f"file://{original}", "search") as directory:
        assert directory == original
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "results", moved)
    with pytest.raises(CheckpointError, match=r"not found.*pass --storage"):
        with checkpoint.local_checkpoint(str(original), "search"):
            pass
    with checkpoint.local_checkpoint(str(original), "search", str(moved)) as directory:
        assert checkpoint.read_checkpoint(directory).flat_config["train.crop_len"] == 1024
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path / "nowhere"))):
        with checkpoint.local_checkpoint(str(original), "search", str(tmp_path / "nowhere")):
            pass
