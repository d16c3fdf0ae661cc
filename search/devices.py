"""Where and how a trial trains: its device, its precision and whether it fits in memory.

Decided once, before a trial builds its model, and refused with one line when wrong: a trial
that Ray gave a GPU never falls back to the CPU, a config whose training memory exceeds its
GPU share never starts, and a GPU without bf16 trains in fp16 with loss scaling. Ray-free
(the trainable and the search driver pass in what Ray knows) so every branch is testable on
a CPU with faked facts.
"""

from __future__ import annotations

import functools
import gc
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ecgtune.components import ModelConfig, build_model
from ecgtune.search.errors import NonRetryableTrialError, SearchError

__all__ = [
    "AUTOCAST_DTYPES",
    "AUTOSCALER_CONFIG",
    "DeviceError",
    "MemoryEstimate",
    "TrialDoesNotFitError",
    "TrialOutOfMemoryError",
    "activation_bytes",
    "autoscaler_gpus",
    "cuda_diagnosis",
    "default_gpus_per_trial",
    "driver_version",
    "estimate_training_memory",
    "gpu_memory_from_resources",
    "gpu_share_bytes",
    "oom_as_fatal",
    "release_memory",
    "require_fit",
    "resolve_device",
    "select_precision",
    "trial_device",
]

GIB = 1024**3
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16,
}
# bf16 tensor cores arrived with Ampere (compute capability 8.0); older GPUs emulate it slowly.
BF16_MIN_CAPABILITY = (8, 0)
# What a CUDA process holds outside the caching allocator (context, cuDNN/cuBLAS handles and
# workspaces); the memory-fraction cap does not cover it, so it comes off each trial's share.
CUDA_CONTEXT_BYTES = 768 * 1024**2
# Reserved / (weights + grads + optimizer + saved activations): allocator rounding and the
# transient buffers of backward. `make gpu-check` on an H200 measured 1.02-1.08 over `seed`
# and `seed-multi` at batch 64/128, crop 2048/4096 (max reserved; BENCHMARKS.md).
PEAK_FACTOR = 1.15

# Memory of the GPUs Ray's cloud providers tag as `accelerator_type:<NAME>`, for the
# driver's pre-start check when it has no GPU of its own (several sizes: the smallest).
GPU_MEMORY_GIB = {
    "T4": 15, "V100": 16, "A10G": 22, "L4": 22, "A100": 40, "L40S": 45, "H100": 80, "H200": 141,
}


class DeviceError(NonRetryableTrialError):
    """A trial cannot use the device it was given (no CUDA, no bf16 on this GPU, ...)."""


class TrialDoesNotFitError(NonRetryableTrialError, ValueError):
    """A config's estimated training memory exceeds the trial's GPU share (a ValueError too:
    the searcher's point validator rejects such a config before any trial starts)."""


class TrialOutOfMemoryError(NonRetryableTrialError):
    """The trial ran out of GPU memory: deterministic for a config, so never retried."""


def cuda_diagnosis() -> str:
    """One line saying why torch cannot use CUDA here: build, driver, visible devices."""
    parts = [f"torch {torch.__version__}"]
    if torch.version.cuda is None:
        parts.append("is a CPU-only build (install a CUDA build of torch)")
    else:
        parts.append(f"built for CUDA {torch.version.cuda}")
        try:
            torch.cuda.init()
        except Exception as exc:  # the driver's own words are the most useful part
            parts.append(f"CUDA init failed: {str(exc).strip().splitlines()[0]}")
    parts.append(f"driver {driver_version()}")
    parts.append(f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r}")
    return "; ".join(parts)


def driver_version() -> str:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "unknown (nvidia-smi not found: no NVIDIA driver in this container?)"
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return out.strip().splitlines()[0] if out.strip() else "unknown"
    except (OSError, subprocess.SubprocessError, IndexError) as exc:
        return f"unknown (nvidia-smi failed: {exc})"


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """`auto` (or None): the GPU when torch can use one, else the CPU. A CUDA device torch
    cannot use is refused (ValueError) rather than quietly replaced by the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch cannot use CUDA here (torch "
                         f"{torch.__version__}, CUDA build {torch.version.cuda})")
    return resolved


def trial_device(gpu_ids: Sequence[object], cuda_available: bool | None = None) -> torch.device:
    """The device a trial trains on. `gpu_ids`: what Ray assigned (`ray.get_gpu_ids()`).

    A trial given a GPU that torch cannot see fails here, naming why, instead of training on
    the CPU for hours without a word.
    """
    if not gpu_ids:
        return torch.device("cpu")
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if not available:
        raise DeviceError(
            f"the trial was assigned GPU {', '.join(map(str, gpu_ids))} but torch cannot use "
            f"CUDA ({cuda_diagnosis()}); refusing to train on the CPU"
        )
    # Ray narrows CUDA_VISIBLE_DEVICES to the assigned GPU(s): cuda:0 is this trial's.
    return torch.device("cuda", 0)


def select_precision(requested: str, device: torch.device,
                     capability: tuple[int, int] | None = None) -> str:
    """`train.precision` -> the precision a trial runs before any measurement: fp32, bf16 or
    fp16 (with a GradScaler); refuses what the device cannot run.

    auto: fp32 on a CPU (bf16 autocast there is slower), bf16 on Ampere and newer GPUs,
    fp16 + loss scaling on older ones (T4, V100), whose bf16 is emulated. On a GPU with bf16
    the Trainer then measures bf16 against fp32 (`search.autotune`); memory checks use this
    answer, and `auto` never picks fp32 where fp32's estimate does not fit.
    """
    if requested not in ("auto", *AUTOCAST_DTYPES):
        raise ValueError(f"unknown precision {requested!r}; valid: auto, fp32, bf16, fp16")
    if device.type != "cuda":
        if requested == "fp16":
            raise DeviceError("train.precision=fp16 needs a CUDA GPU; use fp32 or bf16 on a CPU")
        return "fp32" if requested == "auto" else requested
    if capability is None:
        capability = torch.cuda.get_device_capability(device)
    has_bf16 = tuple(capability) >= BF16_MIN_CAPABILITY
    if requested == "auto":
        return "bf16" if has_bf16 else "fp16"
    if requested == "bf16" and not has_bf16:
        raise DeviceError(
            f"train.precision=bf16 needs compute capability >= 8.0 (Ampere); this GPU has "
            f"{capability[0]}.{capability[1]}: use train.precision=auto (fp16) or fp32"
        )
    return requested


# -- memory ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one training step needs on the device, by part."""

    parameters: int  # number of parameters
    state_bytes: int  # weights + gradients + AdamW moments (fp32)
    activation_bytes: int  # saved for backward, whole batch, at the run precision
    total_bytes: int  # with PEAK_FACTOR and the CUDA context

    def describe(self) -> str:
        return (f"~{self.total_bytes / GIB:.1f} GiB (activations "
                f"{self.activation_bytes / GIB:.1f} GiB, weights+optimizer "
                f"{self.state_bytes / GIB:.2f} GiB)")


@functools.lru_cache(maxsize=256)
def activation_bytes(model: ModelConfig, num_labels: int,
                     label_groups: tuple[tuple[int, ...], ...] | None,
                     crop_len: int, group_names: tuple[str, ...] = ()) -> tuple[int, int, int]:
    """(per-sample, per-batch constant, parameters) fp32 bytes saved for backward.

    Measured by running the model on the meta device (shapes only: no memory, no FLOPs) at
    batch 1 and 2 with a hook that sums every tensor autograd saves. Half precision halves
    it: under autocast nearly every saved tensor is a conv/matmul output.
    """
    groups = [list(g) for g in label_groups] if label_groups else None
    with torch.device("meta"):
        net = build_model(model, num_labels, groups, group_names)
    net.train()
    totals = []
    for batch in (1, 2):
        saved: dict[int, torch.Tensor] = {}

        def pack(t: torch.Tensor, saved: dict[int, torch.Tensor] = saved) -> torch.Tensor:
            saved[id(t)] = t  # holding it keeps id() unique for the pass
            return t

        x = torch.empty(batch, 12, crop_len, device="meta")
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net(x)
        totals.append(sum(t.numel() * t.element_size() for t in saved.values()))
        saved.clear()
    params = sum(p.numel() for p in net.parameters())
    del net
    gc.collect()
    per_sample = totals[1] - totals[0]
    return per_sample, totals[0] - per_sample, params


def estimate_training_memory(model: ModelConfig, num_labels: int,
                             label_groups: Sequence[Sequence[int]] | None, batch_size: int,
                             crop_len: int, precision: str,
                             group_names: Sequence[str] = ()) -> MemoryEstimate:
    groups = tuple(tuple(g) for g in label_groups) if label_groups else None
    per_sample, constant, params = activation_bytes(model, num_labels, groups, crop_len,
                                                    tuple(group_names))
    scale = 1.0 if precision == "fp32" else 0.5
    activations = int(scale * (per_sample * batch_size + constant))
    state = 16 * params  # fp32 weights, gradients, AdamW exp_avg and exp_avg_sq
    total = int(PEAK_FACTOR * (activations + state)) + CUDA_CONTEXT_BYTES
    return MemoryEstimate(params, state, activations, total)


def require_fit(model: ModelConfig, num_labels: int,
                label_groups: Sequence[Sequence[int]] | None, batch_size: int, crop_len: int,
                precision: str, budget_bytes: int, whose: str, share: str = "",
                group_names: Sequence[str] = ()) -> MemoryEstimate:
    """The config's estimate, or TrialDoesNotFitError when it exceeds `budget_bytes`; `whose`
    and `share` (e.g. "0.5 x NVIDIA A10G") word the budget in the message."""
    estimate = estimate_training_memory(model, num_labels, label_groups, batch_size, crop_len,
                                        precision, group_names)
    if estimate.total_bytes > budget_bytes:
        raise TrialDoesNotFitError(
            f"batch {batch_size} x crop {crop_len} needs {estimate.describe()}, more than "
            f"{whose} ({share + ' = ' if share else ''}{budget_bytes / GIB:.1f} GiB)"
        )
    return estimate


def gpu_memory_from_resources(resources: dict[str, float]) -> int | None:
    """Per-GPU bytes from Ray's `accelerator_type:<NAME>` resources, when it names one we
    know (the smallest when several types are present); None when it names none."""
    sizes = [GPU_MEMORY_GIB[key.split(":", 1)[1]] for key in resources
             if key.startswith("accelerator_type:") and key.split(":", 1)[1] in GPU_MEMORY_GIB]
    return min(sizes) * GIB if sizes else None


@contextmanager
def oom_as_fatal(batch_size: int, crop_len: int) -> Iterator[None]:
    """A CUDA out-of-memory error becomes `TrialOutOfMemoryError`, naming the config."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise TrialOutOfMemoryError(
            f"GPU out of memory at batch {batch_size} x crop {crop_len} (lower train.batch_size "
            f"or raise --gpus-per-trial): {str(exc).strip().splitlines()[0]}"
        ) from None


def release_memory() -> None:
    """Free what a finished trial left: Python cycles first (a Trainer can hold its model
    through one), then the CUDA caching allocator's now-unused blocks."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


# Written by `ray up` on the head node: the cluster's node types, GPU workers included even
# while none is running (min_workers: 0).
AUTOSCALER_CONFIG = Path.home() / "ray_bootstrap_config.yaml"


def autoscaler_gpus(config_path: Path = AUTOSCALER_CONFIG) -> float:
    """The most GPUs any worker node type of the cluster's autoscaler config can bring."""
    import yaml

    try:
        config = yaml.safe_load(config_path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return 0.0
    head = config.get("head_node_type")
    gpus = [float((node.get("resources") or {}).get("GPU", 0))
            for name, node in (config.get("available_node_types") or {}).items()
            if name != head and int(node.get("max_workers", 1)) > 0]
    return max(gpus, default=0.0)


def default_gpus_per_trial(address: str | None, cluster_gpus: float,
                           autoscaler_gpus: float) -> float:
    """GPUs per trial when `--gpus-per-trial` is not given.

    Local: 1 when this machine has a GPU, else 0. On a cluster (`--address`): 1 when it has
    GPUs now or its autoscaler can add them (GPU workers often scale from zero, so "none
    yet" must not mean "train on CPUs"); a cluster that can never have a GPU is refused:
    a CPU-only cluster search is asked for with `--gpus-per-trial 0`.
    """
    if address is None:
        return 1.0 if cluster_gpus >= 1 else 0.0
    if cluster_gpus >= 1 or autoscaler_gpus >= 1:
        return 1.0
    raise SearchError(
        f"the Ray cluster at {address} has no GPU and its autoscaler config offers none; "
        "pass --gpus-per-trial 0 to search on CPUs, or add GPU workers"
    )


def gpu_share_bytes(gpus_per_trial: float, resources: dict[str, float],
                    local: bool) -> int | None:
    """Device memory one trial may use, when known on the driver (else trials check it)."""
    if gpus_per_trial <= 0:
        return None
    per_gpu = gpu_memory_from_resources(resources)
    if per_gpu is None and local:
        import torch

        if torch.cuda.is_available():
            per_gpu = torch.cuda.get_device_properties(0).total_memory
    # A trial trains on one device: more than one GPU per trial adds no memory to it.
    return None if per_gpu is None else int(per_gpu * min(1.0, gpus_per_trial))
