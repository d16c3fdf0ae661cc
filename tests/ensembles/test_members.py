"""ensembles.build.members without Ray or MLflow: a checkpoint written by the search becomes
a member."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ecgtune.components import build_model, get_preset
from ecgtune.ensembles.build.members import TrialRef, load_member, resolve_checkpoint
from ecgtune.ensembles.errors import MemberError
from ecgtune.search import checkpoint
from ecgtune.search.config import TrainConfig, TrialConfig

LABELS = ["A", "B", "C", "D"]


def _checkpoint(directory, crop_len: int = 1536) -> TrialRef:
    trial = TrialConfig(get_preset("tiny"), TrainConfig(crop_len=crop_len,
                                                        normalization="record"))
    model = build_model(trial.model, len(LABELS), [[0, 1], [2, 3]])
    validation = checkpoint.Validation(
        label_names=LABELS, thresholds=np.array([0.2, 0.4, 0.6, 0.8]), threshold_objective="f1",
        metrics={}, per_label={}, probs=np.zeros((1, 4), np.float32),
        labels=np.zeros((1, 4)), records=np.array(["r"]))
    checkpoint.write_checkpoint(directory, model, trial, num_labels=len(LABELS),
                                label_groups=[[0, 1], [2, 3]], epoch=1,
                                training_state={"epoch": 1}, validation=validation)
    return TrialRef(1, "run123", "t007 independent", "abc_00007", 0.5, str(directory))


def test_a_written_checkpoint_loads_as_a_member(tmp_path):
    ref = _checkpoint(tmp_path / "ckpt")
    member = load_member(ref, "search", label_names=LABELS)
    assert member.name == "t007-abc_00007"
    assert member.spec.crop_len == 1536 and member.spec.normalization == "record"
    assert member.spec.label_groups == ((0, 1), (2, 3)) and member.spec.num_labels == 4
    np.testing.assert_array_equal(member.val_thresholds, [0.2, 0.4, 0.6, 0.8])
    assert member.trial_config["train.crop_len"] == 1536
    assert member.checkpoint_dir == str(tmp_path / "ckpt")
    assert not member.model.training
    with torch.no_grad():
        assert member.model(torch.zeros(1, 12, 1536)).shape == (1, 4)


def test_member_errors_name_the_run(tmp_path):
    ref = _checkpoint(tmp_path / "ckpt")
    with pytest.raises(MemberError, match=r"run run123 .*data has"):
        load_member(ref, "search", label_names=["A", "B"])
    config = tmp_path / "ckpt" / checkpoint.TRIAL_CONFIG_FILE
    flat = json.loads(config.read_text())
    del flat["train.crop_len"]
    config.write_text(json.dumps(flat))
    with pytest.raises(MemberError, match=r"run run123 .*has no train.crop_len"):
        load_member(ref, "search")
    gone = TrialRef(1, "run123", "", "abc", 0.5, str(tmp_path / "gone" / "t" / "c"))
    with pytest.raises(MemberError, match=r"run run123 .*pass --storage"):
        with resolve_checkpoint(gone, "search"):
            pass
