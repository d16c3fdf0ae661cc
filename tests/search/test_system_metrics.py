"""The `system/...` metrics of every trial epoch: on a CPU trial (in-process Trainer), and the
GPU utilisation path with NVML faked (pynvml may be absent)."""

from __future__ import annotations

import sys
import time
import types

import pytest
import torch

from ecgtune.components import get_preset
from ecgtune.ensembles.cli.gpu_check import synthetic_dataset
from ecgtune.search import metric_keys as K
from ecgtune.search.config import TrainConfig, TrialConfig
from ecgtune.search.system_metrics import EpochMonitor, UtilisationSampler, nvml_reader
from ecgtune.search.training import Trainer


def test_every_epoch_of_a_cpu_trial_reports_what_it_used():
    train, val = synthetic_dataset(64, seed=0), synthetic_dataset(16, seed=1)
    cfg = TrainConfig(epochs=1, crop_len=1024, batch_size=16, steps_per_epoch=2, augment=False)
    trainer = Trainer(TrialConfig(get_preset("tiny"), cfg), train, val,
                      label_groups=train.label_map.group_indices(), device="cpu")
    metrics = trainer.run_epoch().metrics
    assert metrics[K.SYSTEM_EPOCH_S] > 0
    # training samples per wall second of the whole epoch: below the training-only rate
    assert 0 < metrics[K.SYSTEM_SAMPLES_PER_S] <= metrics[K.THROUGHPUT]
    assert metrics[K.SYSTEM_SAMPLES_PER_S] == pytest.approx(32 / metrics[K.SYSTEM_EPOCH_S])
    assert 0 < metrics[K.SYSTEM_CPU_UTIL] <= 100 * 2  # one thread; a little of Python's own
    assert not {K.SYSTEM_GPU_UTIL, K.SYSTEM_GPU_MEM_ALLOCATED} & set(metrics)
    # all numeric with a "/" in the key: the tracker logs them as the run's metrics
    assert all(isinstance(metrics[k], float) for k in metrics if k.startswith("system/"))


def test_the_sampler_averages_what_it_reads_until_stopped():
    values = iter([10.0, 30.0, 50.0, 70.0])
    sampler = UtilisationSampler(lambda: next(values), interval=0.01)
    sampler.start()
    time.sleep(0.2)
    assert sampler.stop() == pytest.approx(40.0)  # the four reads; the fifth ended it
    assert UtilisationSampler(lambda: 1 / 0).stop() is None  # never started, never read


def test_a_gpu_reader_adds_utilisation_to_the_epoch():
    monitor = EpochMonitor(torch.device("cpu"), threads=1, gpu_reader=lambda: 42.0,
                           interval=0.01)
    monitor.start()
    time.sleep(0.05)
    assert monitor.stop(10)[K.SYSTEM_GPU_UTIL] == pytest.approx(42.0)


class _Props:
    uuid = "5b0b4bd9-0000-1111-2222-333344445555"


def _fake_pynvml(by_uuid_fails: bool = False) -> types.ModuleType:
    module = types.ModuleType("pynvml")
    module.asked = []  # type: ignore[attr-defined]

    def by_uuid(uuid: str) -> str:
        module.asked.append(("uuid", uuid))  # type: ignore[attr-defined]
        if by_uuid_fails:
            raise RuntimeError("NVML_ERROR_NOT_FOUND")
        return "handle-by-uuid"

    def by_index(index: int) -> str:
        module.asked.append(("index", index))  # type: ignore[attr-defined]
        return f"handle-{index}"

    module.nvmlInit = lambda: None  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByUUID = by_uuid  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByIndex = by_index  # type: ignore[attr-defined]
    module.nvmlDeviceGetUtilizationRates = (  # type: ignore[attr-defined]
        lambda handle: types.SimpleNamespace(gpu=87 if handle == "handle-by-uuid" else 12))
    return module


def test_nvml_finds_the_trials_gpu_by_uuid_then_by_visible_index(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: _Props())
    fake = _fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    read = nvml_reader(torch.device("cuda", 0))
    assert read is not None and read() == 87.0
    assert fake.asked == [("uuid", f"GPU-{_Props.uuid}")]
    # Ray narrowed CUDA_VISIBLE_DEVICES to physical GPU 3: NVML's index is 3, not 0.
    fake = _fake_pynvml(by_uuid_fails=True)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    read = nvml_reader(torch.device("cuda", 0))
    assert read is not None and read() == 12.0 and fake.asked[-1] == ("index", 3)


def test_without_pynvml_the_other_metrics_still_come(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    assert nvml_reader(torch.device("cuda", 0)) is None
    broken = _fake_pynvml()
    broken.nvmlInit = lambda: (_ for _ in ()).throw(RuntimeError("no driver"))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    assert nvml_reader(torch.device("cuda", 0)) is None
