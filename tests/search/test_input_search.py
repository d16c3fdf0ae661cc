"""The search reaches the input and the trunk family: `input.*`, `branch.kind` and the
pretrained-trunk keys in trial configs, spaces, `--set`, the trainer and the cost metrics."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from ecgtune.components import build_model, get_preset, save_trunk_weights
from ecgtune.data_prep import load_shards
from ecgtune.search.config import InitConfig, TrainConfig, TrialConfig
from ecgtune.search.cost import model_cost
from ecgtune.search.errors import SearchOptionError
from ecgtune.search.options import SearchOptions
from ecgtune.search.space import load_space
from ecgtune.search.training import Trainer
from ecgtune.search.validation import check_input_rate, validate_options

NEW_KEYS = ("input.fs", "input.leads", "branch.kind")


@pytest.mark.parametrize("name", ["default", "demo", "tiny"])
def test_shipped_spaces_search_the_input_and_the_trunk_family(name):
    space = load_space(name)
    params = {p.name: p for p in space.params}
    assert all(key in params and len(params[key].args) > 1 for key in NEW_KEYS)
    assert {100, 500} <= set(params["input.fs"].args)
    assert set(params["branch.kind"].args) == {"resu", "ssm"}
    kinds = {space.trial_config(space.sample(seed)).model.branch.kind for seed in range(12)}
    assert kinds == {"resu", "ssm"}


def test_default_space_searches_the_family_per_label_group():
    params = {p.name: p for p in load_space("default").params}
    for group in ("rhythm", "duration", "amplitude", "morphology"):
        assert params[f"branches.{group}.kind"].when == (("n_branches", (4,)),)


def test_trial_config_round_trips_the_pretrained_keys():
    flat = {"branch.init": "/weights/trunk.safetensors", "branch.freeze_epochs": "2",
            "input.fs": "100", "input.leads": "I-II", "branch.kind": "ssm"}
    trial = TrialConfig.from_flat(flat)
    assert trial.init == InitConfig("/weights/trunk.safetensors", 2)
    assert (trial.model.input.fs, trial.model.input.leads) == (100, "I-II")
    assert TrialConfig.from_flat({k: str(v) for k, v in trial.to_flat().items()}) == trial
    # how the trunks start is no part of the model a checkpoint or bundle rebuilds
    assert "init" not in trial.model.to_json()
    with pytest.raises(ValueError, match=r"branch.freeze_epochs .* needs branch.init"):
        TrialConfig.from_flat({"branch.freeze_epochs": 1})


def _opts(tmp_path: Path, **overrides: str) -> SearchOptions:
    return SearchOptions(data=tmp_path / "data", space="tiny", name="input",
                         storage=str(tmp_path / "ray"), num_cpus=1, overrides=overrides)


def test_set_pins_the_input_and_checks_the_weights_file(tmp_path, monkeypatch):
    validated = validate_options(_opts(tmp_path, **{"input.fs": "100",
                                                    "input.leads": "limb6"}))
    assert validated.pins == {"input.fs": 100, "input.leads": "limb6"}
    assert "input.fs" not in validated.space.param_names
    with pytest.raises(SearchOptionError, match=r"--set input.leads=V7: input.leads: unknown "
                                                r"lead set 'V7'"):
        validate_options(_opts(tmp_path, **{"input.leads": "V7"}))
    with pytest.raises(SearchOptionError, match=r"--set branch.init: .*gone.safetensors does "
                                                r"not exist"):
        validate_options(_opts(tmp_path, **{"branch.init": "gone.safetensors"}))
    save_trunk_weights(build_model(get_preset("tiny"), 20), tmp_path / "trunk.safetensors")
    monkeypatch.chdir(tmp_path)  # a relative path is the driver's: trials get it absolute
    validated = validate_options(_opts(tmp_path, **{"branch.init": "trunk.safetensors"}))
    assert validated.space.fixed["branch.init"] == str(tmp_path / "trunk.safetensors")


def test_data_at_another_rate_refuses_resampling_models(tmp_path):
    validated = validate_options(_opts(tmp_path, **{"input.fs": "500"}))
    check_input_rate(validated, 250.0)  # read as it is: as before
    searched = validate_options(_opts(tmp_path))
    check_input_rate(searched, 500.0)
    with pytest.raises(SearchOptionError, match=r"tiny: input.fs=100 resamples the 500 Hz "
                                                r"record, and this data is at 250 Hz"):
        check_input_rate(searched, 250.0)


def test_cost_follows_the_input():
    small = get_preset("small")
    full = model_cost(small, 20, None, time_it=False)
    low = model_cost(dataclasses.replace(small, input=dataclasses.replace(
        small.input, fs=100, leads="limb6")), 20, None, time_it=False)
    assert low.gflops <= full.gflops / 4
    assert low.params < full.params  # a stem for 6 leads, not 12
    ssm = model_cost(get_preset("ssm-tiny"), 20, None, time_it=False)
    assert ssm.gflops > 0


@pytest.fixture(scope="module")
def folds(prepared_data):
    data = load_shards(prepared_data, folds=list(range(8)))
    return data.select(folds=list(range(7))), data.select(folds=[7]), data.label_map


def _trial(**flat) -> TrialConfig:
    train = {"train.epochs": 2, "train.batch_size": 16, "train.steps_per_epoch": 2,
             "train.augment": False, "train.crop_len": 1024}
    return TrialConfig.from_flat({**get_preset("tiny").to_flat(), **train, **flat})


def test_pretrained_trunk_is_frozen_for_its_epochs_then_trained(folds, tmp_path):
    train_data, val_data, label_map = folds
    torch.manual_seed(3)
    source = build_model(get_preset("tiny"), 20, label_map.group_indices())
    path = tmp_path / "trunk.safetensors"
    save_trunk_weights(source, path)
    trial = _trial(**{"branch.init": str(path), "branch.freeze_epochs": 1})
    trainer = Trainer(trial, train_data, val_data, label_groups=label_map.group_indices(),
                      label_names=list(label_map.names), device="cpu")
    key = "ublocks.0.conv_in.0.weight"
    pretrained = source.branches[0].trunk.state_dict()[key]
    assert torch.equal(trainer.model.branches[0].trunk.state_dict()[key], pretrained)
    head = trainer.model.fusion.heads[0].weight.detach().clone()
    trainer.run_epoch()  # frozen
    trunk = trainer.model.branches[0].trunk
    assert torch.equal(trunk.state_dict()[key], pretrained)
    assert not torch.equal(trainer.model.fusion.heads[0].weight, head)
    trainer.run_epoch()  # thawed
    assert not torch.equal(trunk.state_dict()[key], pretrained)


def test_a_resampling_model_needs_the_500_hz_record(folds):
    train_data, val_data, _ = folds
    manifest = {**train_data.manifest, "preprocessing": {
        **train_data.manifest["preprocessing"], "fs": 250}}
    at_250 = dataclasses.replace(train_data, manifest=manifest)
    with pytest.raises(ValueError, match=r"input.fs=100 resamples the 500 Hz record; this "
                                         r"data is at 250 Hz"):
        Trainer(_trial(**{"input.fs": 100}), at_250, val_data, device="cpu")


def test_a_100_hz_limb_lead_trial_trains(folds):
    train_data, val_data, label_map = folds
    trainer = Trainer(_trial(**{"input.fs": 100, "input.leads": "limb6",
                                "branch.kind": "ssm", "branch.ssm_state": 4}),
                      train_data, val_data, label_groups=label_map.group_indices(),
                      label_names=list(label_map.names), device="cpu")
    result = trainer.run_epoch()
    assert np.isfinite(result.metrics["val/macro_auprc"])
    assert trainer.model.stem[0].in_channels == 6
    assert TrainConfig().crop_len == 4096  # crops stay in stored (500 Hz) samples
