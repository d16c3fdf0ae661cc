"""What a trial's epoch used of its machine: the `system/...` metrics of every trial run.

Per epoch (training and validation together): wall seconds, training samples per wall second,
the CPU utilisation of the trial's process (CPU seconds of all its threads per wall second, as
a percentage of the threads it was given), and on a GPU the peak memory allocated and reserved
by torch's caching allocator and, where NVML answers (`pynvml`, from the `nvidia-ml-py`
package, imported only here and only on a GPU), the mean GPU utilisation sampled every half
second. NVML reports the whole GPU: two trials sharing one (`--gpus-per-trial 0.5`) each see
their sum. The MLflow runs table can then sort trials by how much of what they held they used.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from ecgtune.search import metric_keys as K

__all__ = ["EpochMonitor", "UtilisationSampler", "nvml_reader"]

log = logging.getLogger(__name__)
GIB = 1024**3


def nvml_reader(device: torch.device) -> Callable[[], float] | None:
    """A function returning the GPU utilisation (%) of `device` now, from NVML; None when
    pynvml is absent or NVML does not answer. NVML numbers GPUs physically, CUDA within
    CUDA_VISIBLE_DEVICES: the device is found by its UUID, else by the visible index."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        handle = None
        uuid = str(getattr(torch.cuda.get_device_properties(device), "uuid", "") or "")
        if uuid:
            try:
                handle = pynvml.nvmlDeviceGetHandleByUUID(
                    uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}")
            except Exception:  # some drivers spell UUIDs differently: try the index
                handle = None
        if handle is None:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
            index = device.index or 0
            physical = visible[index].strip() if index < len(visible) else ""
            handle = pynvml.nvmlDeviceGetHandleByIndex(int(physical) if physical.isdigit()
                                                       else index)
    except Exception as exc:  # no driver, no permission: the other metrics still come
        log.debug("NVML unavailable: %s", exc)
        return None

    def read() -> float:
        return float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)

    return read


class UtilisationSampler:
    """Calls `read` every `interval` seconds on a daemon thread between `start` and `stop`;
    `stop` returns the mean of what it read (None when it read nothing)."""

    def __init__(self, read: Callable[[], float], interval: float = 0.5) -> None:
        self.read = read
        self.interval = interval
        self.values: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while True:
            try:
                self.values.append(float(self.read()))
            except Exception:  # a failing read ends the sampling, not the trial
                return
            if self._stop.wait(self.interval):
                return

    def start(self) -> None:
        self.values = []
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ecgtune-gpu-util", daemon=True)
        self._thread.start()

    def stop(self) -> float | None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return sum(self.values) / len(self.values) if self.values else None


class EpochMonitor:
    """`start()` before an epoch, `stop(train_samples)` after it: the `system/...` metrics."""

    def __init__(self, device: torch.device, threads: int,
                 gpu_reader: Callable[[], float] | None = None, interval: float = 0.5) -> None:
        self.device = device
        self.threads = max(1, threads)
        cuda = device.type == "cuda"
        reader = gpu_reader if gpu_reader is not None else (nvml_reader(device) if cuda
                                                            else None)
        self.sampler = UtilisationSampler(reader, interval) if reader is not None else None
        self._wall = 0.0
        self._cpu = 0.0

    @staticmethod
    def _cpu_seconds() -> float:
        t = os.times()
        return t.user + t.system

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.sampler is not None:
            self.sampler.start()
        self._cpu = self._cpu_seconds()
        self._wall = time.perf_counter()

    def stop(self, train_samples: int) -> dict[str, float]:
        wall = max(time.perf_counter() - self._wall, 1e-9)
        cpu = self._cpu_seconds() - self._cpu
        metrics: dict[str, Any] = {
            K.SYSTEM_EPOCH_S: wall,
            K.SYSTEM_SAMPLES_PER_S: train_samples / wall,
            K.SYSTEM_CPU_UTIL: 100.0 * cpu / wall / self.threads,
        }
        if self.device.type == "cuda":
            metrics[K.SYSTEM_GPU_MEM_ALLOCATED] = torch.cuda.max_memory_allocated(self.device) / GIB
            metrics[K.SYSTEM_GPU_MEM_RESERVED] = torch.cuda.max_memory_reserved(self.device) / GIB
        if self.sampler is not None:
            util = self.sampler.stop()
            if util is not None:
                metrics[K.SYSTEM_GPU_UTIL] = util
        return metrics
