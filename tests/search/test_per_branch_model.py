"""A heterogeneous seed-multi-like model (each label group's branch with its own depths and
width) through the whole life of a member: trained a step by the search's Trainer, written
and read back as a trial checkpoint, exported in a bundle, loaded and used to predict. And
`--set branches.<group>.<field>` checked before anything starts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecgtune.components import ModelConfig, get_preset
from ecgtune.data_prep import load_shards
from ecgtune.search import checkpoint
from ecgtune.search import metric_keys as K
from ecgtune.search.config import TrainConfig, TrialConfig
from ecgtune.search.training import Trainer

# seed-multi's layout (own stems, one branch per group, independent heads) at a CPU size
HETERO = {
    "stem.channels": 16, "stem.shared": False, "n_branches": 4, "fusion": "independent",
    "branch.depths": "3-2", "branch.width": 16, "branch.mid": 8, "branch.dense_layers": "2",
    "branch.growth": 4, "branch.out_channels": 16, "branch.attention": False,
    "branches.rhythm.depths": "4-3-2", "branches.morphology.width": 8,
    "branches.morphology.depths": "2",
}


@pytest.fixture(scope="module")
def folds(prepared_data):
    data = load_shards(prepared_data, folds=list(range(10)))
    return data


def test_heterogeneous_member_trains_checkpoints_bundles_and_predicts(folds, tmp_path):
    from ecgtune.ensembles.build.calibration import PerLabelCalibrator
    from ecgtune.ensembles.ship.bundle import load_bundle, save_bundle
    from ecgtune.ensembles.ship.inference import EnsemblePredictor, InputSpec, MemberSpec

    label_map = folds.label_map
    config = ModelConfig.from_flat(HETERO, base=get_preset("seed-multi"))
    assert [config.branch_for(g).depths for g in ("rhythm", "duration", "morphology")] == [
        (4, 3, 2), (3, 2), (2,)]
    train = TrainConfig(epochs=1, crop_len=1024, batch_size=16, steps_per_epoch=2,
                        augment=False, lr=3e-3)
    trainer = Trainer(TrialConfig(config, train), folds.select(folds=range(7)),
                      folds.select(folds=[7]), label_groups=label_map.group_indices(),
                      label_names=list(label_map.names), device="cpu")
    assert [len(b.trunk.ublocks) for b in trainer.model.branches] == [3, 2, 2, 1]
    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = trainer.run_epoch()
    assert np.isfinite(result.metrics[K.TRAIN_LOSS])
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(),
                                                     strict=True))
    trainer.save(tmp_path / "ckpt", result)
    saved = checkpoint.read_checkpoint(tmp_path / "ckpt", list(label_map.names))
    assert saved.meta.config == config
    assert saved.meta.group_names == [g.lower() for g in label_map.group_names]
    assert saved.flat_config["branches.rhythm.depths"] == [4, 3, 2]

    x = torch.randn(2, 12, 1024, generator=torch.Generator().manual_seed(0))
    trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(saved.model(x), trainer.model(x))

    spec = MemberSpec("hetero", config, len(label_map.names),
                      tuple(tuple(g) for g in saved.meta.label_groups), 1024, "dataset",
                      group_names=tuple(saved.meta.group_names))
    n = len(label_map.names)
    rng = np.random.default_rng(0)
    calibrator = PerLabelCalibrator(methods=("temperature",)).fit(
        rng.uniform(0.01, 0.99, (200, n)), rng.random((200, n)) < 0.3)
    inputs = InputSpec(fs=500, seconds=10.0, n_samples=5000, gain=1000.0,
                       norm_mean=(0.0,) * 12, norm_std=(0.25,) * 12)
    predictor = EnsemblePredictor([(spec, saved.model)], [1.0], calibrator, np.full(n, 0.5),
                                  label_map.names, inputs, 1, label_map=label_map.name,
                                  label_groups=label_map.group_indices(),
                                  group_names=label_map.group_names)
    bundle_dir = save_bundle(tmp_path / "bundle", predictor)
    bundle = load_bundle(bundle_dir)
    signals = folds.select(folds=[9]).signals[:4]
    probs = bundle.predict_signals(signals)
    assert probs.shape == (4, n) and np.all((probs >= 0) & (probs <= 1))
    assert np.abs(probs - predictor.predict_signals(signals)).max() <= 1e-6


def test_set_per_branch_key_is_checked_before_anything_starts(prepared_data, tmp_path):
    from ecgtune.search.errors import SearchOptionError
    from ecgtune.search.run import SearchOptions, _point_validator, load_search_data
    from ecgtune.search.validation import validate_options

    def opts(**overrides):
        return SearchOptions(data=prepared_data, space="tiny", storage=str(tmp_path / "ray"),
                             num_cpus=1, overrides=overrides)

    validated = validate_options(opts(**{"branches.rhythm.depths": "6-5-4-3"}))
    assert validated.pins == {"branches.rhythm.depths": [6, 5, 4, 3]}
    data, _ = load_search_data(prepared_data)
    check = _point_validator(validated, data)  # some sampled point takes it (n_branches=0)
    space = validated.space
    points = [space.trial_flat(space.sample(s)) for s in range(12)]
    valid = []
    for point in points:
        try:
            check(point)
        except ValueError:  # n_branches=1: no rhythm branch to pin
            continue
        valid.append(space.trial_config(point).model)
    assert valid and all(m.branch_for("rhythm").depths == (6, 5, 4, 3) for m in valid)

    with pytest.raises(SearchOptionError, match="unknown branch field 'deep'"):
        validate_options(opts(**{"branches.rhythm.deep": "3"}))
    nope = validate_options(opts(**{"branches.nope.depths": "3"}))
    with pytest.raises(SearchOptionError, match=r"unknown label group 'nope'.*rhythm"):
        _point_validator(nope, data)
    with pytest.raises(SearchOptionError, match="--objective"):
        validate_options(SearchOptions(data=prepared_data, space="tiny", num_cpus=1,
                                       storage=str(tmp_path / "ray"), objective="auprc,flops"))
