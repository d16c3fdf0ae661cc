"""On a CPU, every GPU decision a trial makes, with the GPU facts faked.

A trial given a GPU it cannot use refuses; the cluster default asks for GPUs; configs that
cannot fit are refused before they start; out-of-memory is fatal; a finished trial leaves
nothing alive; resumes keep AdamW's step counters on the CPU; precision follows capability;
the GPU input path (int16 batches normalised on the device) matches the host's.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from ecgtune.components import get_preset
from ecgtune.data_prep import BatchLoader
from ecgtune.data_prep.loader import AugmentConfig, DeviceBatchTransform
from ecgtune.ensembles.cli.gpu_check import synthetic_dataset
from ecgtune.search import devices
from ecgtune.search.config import TrainConfig, TrialConfig
from ecgtune.search.devices import (
    DeviceError,
    TrialDoesNotFitError,
    TrialOutOfMemoryError,
    activation_bytes,
    autoscaler_gpus,
    default_gpus_per_trial,
    estimate_training_memory,
    gpu_memory_from_resources,
    gpu_share_bytes,
    oom_as_fatal,
    release_memory,
    select_precision,
    trial_device,
)
from ecgtune.search.errors import NonRetryableTrialError, SearchError
from ecgtune.search.searcher import PointValidator
from ecgtune.search.space import load_space
from ecgtune.search.training import NonFiniteLossError, Trainer

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "ray_cluster.yaml"
CUDA = torch.device("cuda", 0)


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(96, seed=0), synthetic_dataset(32, seed=1)


def _trainer(data, **kwargs) -> Trainer:
    train, val = data
    train_kw = {"epochs": 2, "crop_len": 1024, "batch_size": 16, "steps_per_epoch": 3,
                "augment": False, **kwargs.pop("train", {})}
    return Trainer(TrialConfig(get_preset("tiny"), TrainConfig(**train_kw)),
                   train, val, label_groups=train.label_map.group_indices(),
                   label_names=list(train.label_map.names), device="cpu", **kwargs)


# -- 1. a GPU trial never trains on the CPU without a word -------------------------------------
def test_assigned_gpu_without_cuda_is_refused_in_one_line():
    assert trial_device([]) == torch.device("cpu")
    with pytest.raises(DeviceError) as info:
        trial_device([0], cuda_available=False)
    message = str(info.value)
    assert "\n" not in message
    assert "assigned GPU 0" in message and "CUDA_VISIBLE_DEVICES" in message
    assert f"torch {torch.__version__}" in message and "refusing to train on the CPU" in message
    # Deterministic for this node: Tune must not spend retries on it.
    assert isinstance(info.value, NonRetryableTrialError)


def test_the_trainable_refuses_a_faked_gpu_before_building_anything(monkeypatch):
    from ecgtune.search import trainable

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    trial = TrialConfig(get_preset("tiny"))
    with pytest.raises(DeviceError, match="assigned GPU 3"):
        trainable.prepare_device(trial, 20, None, gpu_ids=[3], share=0.5)
    assert trainable.prepare_device(trial, 20, None, gpu_ids=[], share=0) == torch.device("cpu")


# -- the default GPUs per trial on a cluster ---------------------------------------------------
def test_cluster_without_gpus_yet_still_asks_for_them(tmp_path):
    # The shipped cluster config scales GPU workers from zero: none at start, one per node.
    assert autoscaler_gpus(CLUSTER_YAML) == 1.0
    assert default_gpus_per_trial("auto", cluster_gpus=0, autoscaler_gpus=1.0) == 1.0
    assert default_gpus_per_trial("auto", cluster_gpus=2, autoscaler_gpus=0.0) == 1.0
    # Locally, no GPU means a CPU search; a GPU means one per trial.
    assert default_gpus_per_trial(None, cluster_gpus=0, autoscaler_gpus=0.0) == 0.0
    assert default_gpus_per_trial(None, cluster_gpus=1, autoscaler_gpus=0.0) == 1.0
    # A cluster that can never have a GPU is refused: CPU-only is asked for explicitly.
    with pytest.raises(SearchError, match="--gpus-per-trial 0"):
        default_gpus_per_trial("10.0.0.1:6379", cluster_gpus=0, autoscaler_gpus=0.0)
    cpu_only = tmp_path / "bootstrap.yaml"
    cpu_only.write_text("head_node_type: head\navailable_node_types:\n"
                        "  head: {resources: {CPU: 0}, max_workers: 0}\n"
                        "  cpu: {resources: {CPU: 8}, max_workers: 4}\n")
    assert autoscaler_gpus(cpu_only) == 0.0
    assert autoscaler_gpus(tmp_path / "missing.yaml") == 0.0


def test_gpu_share_from_ray_accelerator_resources():
    resources = {"GPU": 4.0, "accelerator_type:A10G": 4.0}
    assert gpu_memory_from_resources(resources) == 22 * devices.GIB
    assert gpu_share_bytes(0.5, resources, local=False) == 11 * devices.GIB
    assert gpu_share_bytes(2.0, resources, local=False) == 22 * devices.GIB  # one device
    assert gpu_share_bytes(0.0, resources, local=False) is None
    assert gpu_share_bytes(1.0, {"GPU": 1.0}, local=False) is None  # unknown: trials check


# -- 2. memory: estimated, checked before a trial, OOM fatal -----------------------------------
def test_meta_device_estimate_matches_the_saved_tensors_of_a_real_pass():
    from ecgtune.components import build_model

    cfg, crop, batch = get_preset("tiny"), 1024, 4
    per_sample, constant, params = activation_bytes(cfg, 20, None, crop)
    model = build_model(cfg, 20).train()
    assert params == sum(p.numel() for p in model.parameters())
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(batch, 12, crop))
    measured = sum(seen.values())
    estimated = per_sample * batch + constant
    assert measured > 0
    assert 0.9 * measured <= estimated <= 1.2 * measured, (estimated, measured)


def test_validator_rejects_configs_that_cannot_fit_a_trials_share():
    space = load_space("tiny")
    groups = ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9), (10, 11, 12, 13, 14, 15), (16, 17, 18, 19))
    point = {**space.trial_flat({}), **get_preset("seed").to_flat(), "train.batch_size": 128,
             "train.crop_len": 4096}
    estimate = estimate_training_memory(get_preset("seed"), 20, groups, 128, 4096, "bf16")
    # An H200 measured 2.8 GiB allocated for this config (BENCHMARKS.md): the estimate
    # must cover it without refusing what a 24 GB GPU's half can hold.
    assert 2.8 * devices.GIB < estimate.total_bytes < 6 * devices.GIB
    PointValidator(space, 20, groups, gpu_memory_bytes=12 * devices.GIB)(point)
    with pytest.raises(ValueError, match=r"more than a trial's GPU share \(2\.0 GiB\)"):
        PointValidator(space, 20, groups, gpu_memory_bytes=2 * devices.GIB)(point)
    # fp32 doubles the activations, so it needs more than the same config in bf16.
    fp32 = estimate_training_memory(get_preset("seed"), 20, groups, 128, 4096, "fp32")
    assert fp32.activation_bytes == pytest.approx(2 * estimate.activation_bytes, rel=1e-6)


def test_a_trial_that_cannot_fit_is_refused_before_it_starts(monkeypatch):
    from ecgtune.search import trainable

    class Props:
        total_memory = 8 * devices.GIB

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d: None)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: Props())
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d: (8, 6))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: "Fake A10G")
    seed_multi = TrialConfig(get_preset("seed-multi"), TrainConfig(batch_size=128))
    groups = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14, 15], [16, 17, 18, 19]]
    with pytest.raises(TrialDoesNotFitError, match=r"0\.5 x Fake A10G = 4\.0 GiB"):
        trainable.prepare_device(seed_multi, 20, groups, gpu_ids=[0], share=0.5)
    small = TrialConfig(get_preset("tiny"), TrainConfig(batch_size=32))
    assert trainable.prepare_device(small, 20, None, gpu_ids=[0], share=0.5) == CUDA


def test_out_of_memory_becomes_one_fatal_error_naming_the_config():
    with pytest.raises(TrialOutOfMemoryError) as info, oom_as_fatal(128, 4096):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore")
    message = str(info.value)
    assert "batch 128 x crop 4096" in message and "Tried to allocate 2.00 GiB" in message
    assert "\n" not in message and isinstance(info.value, NonRetryableTrialError)
    with pytest.raises(ValueError), oom_as_fatal(1, 1):  # other errors pass through
        raise ValueError("not memory")


# -- 3. a reused actor's next trial starts clean -----------------------------------------------
def test_a_closed_trainer_leaves_its_model_and_optimizer_collectable(data):
    first = _trainer(data)
    first.run_epoch()
    refs = [weakref.ref(first.model), weakref.ref(first.optimizer)]
    gc.disable()  # only release_memory may collect: the trainable's `finally` calls it
    try:
        # `first` stays referenced, as a traceback frame of a failed trial keeps it: close()
        # must drop the model and optimizer by itself.
        first.close()
        release_memory()
        assert all(ref() is None for ref in refs)
    finally:
        gc.enable()
    second = _trainer(data)
    assert np.isfinite(second.run_epoch().metrics["train/loss"])


# -- 4. resume keeps AdamW's step counters on the CPU ------------------------------------------
def test_resume_loads_optimizer_state_on_the_cpu(data, tmp_path, monkeypatch):
    from ecgtune.search import checkpoint

    first = _trainer(data)
    first.run_epoch()
    first.save(tmp_path)
    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append((Path(args[0]).name, str(kwargs.get("map_location"))))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    resumed = _trainer(data)
    resumed.restore(tmp_path)
    assert (checkpoint.STATE_FILE, "cpu") in seen
    steps = [s["step"] for s in resumed.optimizer.state.values()]
    assert steps and all(step.device.type == "cpu" for step in steps)


# -- 5. precision by capability ----------------------------------------------------------------
@pytest.mark.parametrize(("requested", "capability", "expected"), [
    ("auto", (9, 0), "bf16"), ("auto", (8, 0), "bf16"), ("auto", (7, 5), "fp16"),
    ("auto", (7, 0), "fp16"), ("fp32", (7, 5), "fp32"), ("fp16", (9, 0), "fp16"),
    ("bf16", (8, 6), "bf16"),
])
def test_precision_follows_the_gpus_capability(requested, capability, expected):
    assert select_precision(requested, CUDA, capability) == expected


def test_impossible_precisions_are_refused():
    with pytest.raises(DeviceError, match=r"compute capability >= 8\.0"):
        select_precision("bf16", CUDA, (7, 5))
    with pytest.raises(DeviceError, match="needs a CUDA GPU"):
        select_precision("fp16", torch.device("cpu"))
    assert select_precision("auto", torch.device("cpu")) == "fp32"
    assert select_precision("bf16", torch.device("cpu")) == "bf16"


# -- 6. the loader gets the trial's CPUs; GPU input path matches the host's --------------------
def test_trial_threads_reach_the_loader(data, monkeypatch):
    from ecgtune.search import trainable

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    threads = trainable._trial_threads()
    assert threads == 3
    on_device = _trainer(data, threads=threads, transform_on_device=True)
    assert on_device.train_loader.threads == 3 and on_device.train_loader.raw
    # Training on the CPU itself: the cores belong to torch, batches are built in line.
    assert _trainer(data, threads=threads).train_loader.threads == 1


@pytest.mark.parametrize("normalization", ["dataset", "record"])
def test_device_transform_equals_host_normalisation(data, normalization):
    train, _ = data
    kw = {"batch_size": 8, "crop_len": 1024, "train": True, "seed": 3,
          "normalization": normalization}
    host = next(iter(BatchLoader(train, **kw)))[0]
    raw_loader = BatchLoader(train, raw=True, **kw)
    raw = next(iter(raw_loader))[0]
    assert raw.dtype == torch.int16
    torch.testing.assert_close(DeviceBatchTransform(raw_loader, "cpu")(raw), host,
                               rtol=1e-5, atol=1e-5)


def test_device_augmentation_is_seeded_per_epoch_and_has_the_configured_strength(data):
    train, _ = data
    augment = AugmentConfig(scale=None, noise_std=0.05)
    loader = BatchLoader(train, 8, 1024, train=True, seed=1, raw=True, augment=augment)
    raw = next(iter(loader))[0]
    transform = DeviceBatchTransform(loader, "cpu")
    clean = DeviceBatchTransform(BatchLoader(train, 8, 1024, raw=True), "cpu")(raw)
    transform.set_epoch(4)
    a = transform(raw)
    transform.set_epoch(4)
    torch.testing.assert_close(transform(raw), a)  # a resumed epoch sees the same noise
    noise_mv = (a - clean) * torch.tensor(train.norm_stats.std)[:, None]
    assert float(noise_mv.std()) == pytest.approx(0.05, rel=0.05)


def test_training_on_the_device_path_reports_nan_at_the_right_step(data):
    trainer = _trainer(data, transform_on_device=True, train={"augment": True})
    assert np.isfinite(trainer.run_epoch().metrics["train/loss"])
    trainer.check_every = 50  # as on a GPU: no host sync per step
    calls = []

    # NaN logits from the epoch's third batch on: the first bad step reported must be 2.
    def nan_from_the_third_batch(module, inputs, output):
        calls.append(1)
        return output * float("nan") if len(calls) >= 3 else output

    trainer.model.register_forward_hook(nan_from_the_third_batch)
    with pytest.raises(NonFiniteLossError, match="loss became nan at epoch 1 step 2"):
        trainer.train_epoch()
