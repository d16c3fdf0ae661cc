"""`train.precision/layout/compile=auto`: the choice made from measurements, faked here (the
GPU facts are arguments of `choose_execution`), and the Trainer's side of it on the CPU."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from ecgtune.components import get_preset
from ecgtune.ensembles.cli.gpu_check import synthetic_dataset
from ecgtune.search import autotune
from ecgtune.search import metric_keys as K
from ecgtune.search import training as training_module
from ecgtune.search.autotune import Execution, choose_execution, read_choices, write_choices
from ecgtune.search.config import TrainConfig, TrialConfig
from ecgtune.search.training import Trainer

# The first H200 measurement (bf16 / TF32 in the ncl layout) and two channels-last rates.
RATES = {"bf16/ncl": 2036.0, "fp32/ncl": 2739.0, "bf16/channels_last": 7000.0,
         "fp32/channels_last": 8300.0}


@pytest.fixture(autouse=True)
def _fresh(monkeypatch, tmp_path):
    # No table from this machine's home, no rates from another test.
    monkeypatch.setenv(autotune.CHOICES_ENV, str(tmp_path / "choices.json"))
    autotune.forget_measurements()
    yield
    autotune.forget_measurements()


class FakeMeasure:
    def __init__(self, rates: dict[str, float | None]) -> None:
        self.rates = rates
        self.calls: list[str] = []

    def __call__(self, precision: str, layout: str) -> float | None:
        key = f"{precision}/{layout}"
        self.calls.append(key)
        return self.rates[key]


def _gpu(train: TrainConfig, measure: FakeMeasure, **kwargs) -> Execution:
    return choose_execution(train, cuda=True, device_name=kwargs.pop("name", "NVIDIA H200"),
                            has_bf16=kwargs.pop("has_bf16", True), measure=measure, **kwargs)


def test_auto_on_a_gpu_picks_the_fastest_measured_precision_and_layout():
    measure = FakeMeasure(RATES)
    chosen = _gpu(TrainConfig(), measure)
    assert (chosen.precision, chosen.layout, chosen.compile) == ("fp32", "channels_last", "off")
    assert sorted(measure.calls) == sorted(RATES)
    assert chosen.reason == ("tf32/channels_last: 8,300 vs bf16/channels_last 7,000, tf32/ncl "
                             "2,739, bf16/ncl 2,036 samples/s, measured in this process")
    # Once per process and GPU name: the next trial reuses the rates.
    again = _gpu(TrainConfig(), measure)
    assert again.precision == "fp32" and len(measure.calls) == 4
    assert again.reason.endswith("measured earlier in this process")
    _gpu(TrainConfig(), measure, name="NVIDIA A10G")
    assert len(measure.calls) == 8


def test_the_first_h200_measurement_bf16_slower_than_tf32_in_the_old_layout():
    measure = FakeMeasure(RATES)
    chosen = _gpu(TrainConfig(layout="ncl"), measure)
    assert (chosen.precision, chosen.layout) == ("fp32", "ncl")
    assert chosen.reason == "tf32/ncl: 2,739 vs bf16/ncl 2,036 samples/s, measured in this process"
    assert sorted(measure.calls) == ["bf16/ncl", "fp32/ncl"]
    # bf16 wins where it measures faster
    faster_bf16 = FakeMeasure({**RATES, "bf16/channels_last": 9000.0})
    assert _gpu(TrainConfig(), faster_bf16, name="other").precision == "bf16"


def test_a_precision_that_does_not_fit_the_share_is_never_measured():
    measure = FakeMeasure(RATES)
    chosen = _gpu(TrainConfig(), measure, fits=lambda precision: precision != "fp32")
    assert (chosen.precision, chosen.layout) == ("bf16", "channels_last")
    assert all(call.startswith("bf16/") for call in measure.calls)
    assert chosen.reason.endswith("; tf32 would not fit this trial's GPU share")


def test_a_candidate_out_of_memory_is_passed_over_and_named():
    measure = FakeMeasure({**RATES, "fp32/channels_last": None})
    chosen = _gpu(TrainConfig(), measure)
    assert (chosen.precision, chosen.layout) == ("bf16", "channels_last")
    assert "tf32/channels_last did not run" in chosen.reason


def test_requested_settings_are_not_measured():
    measure = FakeMeasure(RATES)
    chosen = _gpu(TrainConfig(precision="bf16", layout="ncl", compile="trunk"), measure)
    assert (chosen.precision, chosen.layout, chosen.compile) == ("bf16", "ncl", "trunk")
    assert chosen.reason == "bf16/ncl: requested" and not measure.calls
    old_gpu = _gpu(TrainConfig(layout="ncl"), measure, has_bf16=False, name="Tesla T4")
    assert old_gpu.precision == "fp16" and "without bf16" in old_gpu.reason
    assert not measure.calls


def test_on_a_cpu_auto_is_fp32_ncl_without_compiling():
    chosen = choose_execution(TrainConfig(), cuda=False)
    assert chosen == Execution("fp32", "ncl", "off", "fp32: auto on a CPU")
    asked = choose_execution(TrainConfig(precision="bf16", layout="channels_last",
                                         compile="trunk"), cuda=False)
    assert asked == Execution("bf16", "channels_last", "trunk", "bf16: requested")


def test_the_gpu_check_table_answers_without_measuring(tmp_path):
    path = write_choices("NVIDIA H200", RATES, "trunk", "seed b128 crop4096")
    assert path == tmp_path / "choices.json"
    table = read_choices()
    assert table["NVIDIA H200"]["measured_on"] == "seed b128 crop4096"
    measure = FakeMeasure(RATES)
    chosen = _gpu(TrainConfig(), measure, table=table, table_source=str(path))
    assert (chosen.precision, chosen.layout, chosen.compile) == ("fp32", "channels_last",
                                                                 "trunk")
    assert not measure.calls and f"from make gpu-check's table ({path})" in chosen.reason
    assert _gpu(TrainConfig(compile="off"), measure, table=table).compile == "off"
    # A table without this GPU, or without a candidate's rate, leaves it to a measurement.
    write_choices("NVIDIA H200", {"bf16/ncl": 1.0}, "off", "seed")
    assert _gpu(TrainConfig(), measure, table=read_choices()).precision == "fp32"
    assert len(measure.calls) == 4


def test_an_unreadable_table_costs_a_warning_not_the_trial(tmp_path, caplog):
    (tmp_path / "choices.json").write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert read_choices() == {}
    assert "ignoring the GPU choices table" in caplog.text
    assert read_choices(tmp_path / "absent.json") == {}


# -- the Trainer's side, on the CPU --------------------------------------------------------------
@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(96, seed=0), synthetic_dataset(32, seed=1)


def _trainer(data, **train_kw) -> Trainer:
    train, val = data
    cfg = TrainConfig(**{"epochs": 2, "crop_len": 1024, "batch_size": 16, "steps_per_epoch": 3,
                         "augment": False, **train_kw})
    return Trainer(TrialConfig(get_preset("tiny"), cfg), train, val,
                   label_groups=train.label_map.group_indices(),
                   label_names=list(train.label_map.names), device="cpu")


def test_the_trainer_runs_what_the_choice_says(data, monkeypatch):
    chosen = Execution("bf16", "channels_last", "off", "bf16/channels_last: faked")
    monkeypatch.setattr(autotune, "choose_execution", lambda *a, **k: chosen)
    trainer = _trainer(data)
    assert trainer.execution is chosen
    assert (trainer.precision, trainer.layout) == ("bf16", "channels_last")
    assert trainer.autocast_dtype is torch.bfloat16
    trunk = trainer.model.branches[0].trunk
    assert trunk.channels_last and trainer.model.stem.channels_last
    assert trainer._autocast().fast_dtype is torch.bfloat16


def test_both_layouts_train_the_same_on_the_cpu(data):
    losses = {}
    for layout in ("ncl", "channels_last"):
        trainer = _trainer(data, layout=layout)
        assert trainer.layout == layout
        losses[layout] = [trainer.run_epoch().metrics[K.TRAIN_LOSS] for _ in range(2)]
    assert np.allclose(losses["ncl"], losses["channels_last"], rtol=1e-4, atol=1e-5), losses


def test_measure_rate_leaves_the_trial_as_it_was(data):
    trainer = _trainer(data)
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    rng = torch.get_rng_state()
    for layout in ("ncl", "channels_last"):
        assert trainer.measure_rate("fp32", layout, steps=1, warmup=1) > 0
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, weights[k]) for k, v in trainer.model.state_dict().items())
    assert not trainer.model.branches[0].trunk.channels_last
    assert not trainer.optimizer.state  # the trial's optimizer took no step


@pytest.mark.slow  # dynamo traces the tiny trunk in each mode: ~4 s
def test_compiled_trunks_train_the_same_and_keep_their_parameter_names(data, monkeypatch):
    # The switch, not inductor: the eager backend runs what dynamo captured without codegen.
    monkeypatch.setattr(training_module, "COMPILE_BACKEND", "eager")
    losses, names = {}, {}
    for mode in ("off", "trunk"):  # one after the other: dropout draws from the global RNG
        trainer = _trainer(data, compile=mode)
        assert trainer.compile_mode == mode
        names[mode] = list(trainer.model.state_dict())
        losses[mode] = [trainer.run_epoch().metrics[K.TRAIN_LOSS] for _ in range(2)]
    assert names["trunk"] == names["off"]
    assert losses["trunk"] == pytest.approx(losses["off"], rel=1e-5, abs=1e-6)


def test_config_refuses_unknown_layout_and_compile_modes():
    with pytest.raises(ValueError, match=r"train\.layout must be one of"):
        TrainConfig(layout="nhwc")
    with pytest.raises(ValueError, match=r"train\.compile must be one of"):
        TrainConfig(compile="max-autotune")
    flat = TrialConfig(get_preset("tiny"), TrainConfig(layout="channels_last")).to_flat()
    assert flat["train.layout"] == "channels_last" and flat["train.compile"] == "auto"
    assert TrialConfig.from_flat(json.loads(json.dumps(flat))).train.layout == "channels_last"
