"""The training loop without Ray: losses, resume equivalence, NaN handling, bf16 path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from trial_faults import poison_weights

from ecgtune.components import get_preset
from ecgtune.data_prep import load_shards
from ecgtune.search import metric_keys as K
from ecgtune.search.config import TrainConfig, TrialConfig
from ecgtune.search.losses import LOSSES, get_loss
from ecgtune.search.training import NonFiniteLossError, Trainer


@pytest.fixture(scope="module")
def folds(prepared_data):
    data = load_shards(prepared_data, folds=list(range(8)))
    return data.select(folds=list(range(7))), data.select(folds=[7]), data.label_map


def _trainer(folds, **train) -> Trainer:
    train_data, val_data, label_map = folds
    cfg = TrainConfig(**{"epochs": 2, "crop_len": 1024, "batch_size": 32, "steps_per_epoch": 6,
                         "augment": False, "lr": 3e-3, **train})
    return Trainer(TrialConfig(get_preset("tiny"), cfg), train_data, val_data,
                   label_groups=label_map.group_indices(), label_names=list(label_map.names),
                   device="cpu")


def test_losses_reduce_to_bce_at_zero_focusing():
    logits = torch.randn(16, 20)
    targets = (torch.rand(16, 20) < 0.2).float()
    bce = get_loss("bce")(logits, targets, TrainConfig())
    focal = get_loss("focal")(logits, targets, TrainConfig(focal_gamma=0.0))
    asl = get_loss("asymmetric")(
        logits, targets, TrainConfig(asl_gamma_neg=0.0, asl_gamma_pos=0.0, asl_clip=0.0)
    )
    torch.testing.assert_close(focal, bce)
    torch.testing.assert_close(asl, bce)
    assert set(LOSSES) == {"bce", "focal", "asymmetric"}
    with pytest.raises(ValueError, match="valid"):
        get_loss("hinge")


def test_focal_loss_downweights_easy_examples():
    targets = torch.ones(1, 1)
    easy, hard = torch.full((1, 1), 4.0), torch.full((1, 1), -1.0)
    cfg = TrainConfig(focal_gamma=2.0)
    ratio_focal = get_loss("focal")(hard, targets, cfg) / get_loss("focal")(easy, targets, cfg)
    ratio_bce = get_loss("bce")(hard, targets, cfg) / get_loss("bce")(easy, targets, cfg)
    assert ratio_focal > 10 * ratio_bce


def test_epoch_reports_the_objective_and_artifacts(folds, tmp_path):
    trainer = _trainer(folds)
    result = trainer.run_epoch()
    for key in (K.OBJECTIVE, K.VAL_AUROC, K.VAL_LOSS, K.VAL_F1, K.TRAIN_LOSS, K.THROUGHPUT):
        assert np.isfinite(result.metrics[key]), key
    assert result.val_probs.shape == folds[1].labels.shape
    assert result.thresholds.shape == (folds[1].labels.shape[1],)
    trainer.save(tmp_path, result)
    for name in ("model.pt", "training_state.pt", "thresholds.json", "val_predictions.npz",
                 "val_metrics.json", "trial_config.json"):
        assert (tmp_path / name).is_file(), name


def test_resume_from_checkpoint_continues_exactly(folds, tmp_path):
    straight = _trainer(folds)
    straight.run_epoch()
    straight.run_epoch()

    first = _trainer(folds)
    first.run_epoch()
    first.save(tmp_path)
    resumed = _trainer(folds)
    resumed.restore(tmp_path)
    assert resumed.epoch == 1
    resumed.run_epoch()
    for (name, a), b in zip(straight.model.state_dict().items(),
                            resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    assert straight.history[-1][K.OBJECTIVE] == pytest.approx(resumed.history[-1][K.OBJECTIVE])


def test_nan_loss_raises_a_clear_error(folds):
    trainer = _trainer(folds)
    poison_weights(trainer.model)
    with pytest.raises(NonFiniteLossError, match="loss became nan at epoch 0 step 0"):
        trainer.run_epoch()


def test_bf16_autocast_path_runs_on_cpu(folds):
    trainer = _trainer(folds, precision="bf16", steps_per_epoch=2)
    assert trainer.autocast_dtype is torch.bfloat16
    result = trainer.run_epoch()
    assert np.isfinite(result.metrics[K.TRAIN_LOSS])
    assert np.isfinite(result.val_probs).all()
