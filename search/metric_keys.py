"""Metric keys: the names under which trials report to Ray Tune and MLflow, and the base metric
names that per-label and ensemble reports use (`metric_key` builds the logged form).

Plain strings, no imports: the trainable, the tracker, the progress printer and the ensemble
all read them from here, so a renamed metric is renamed everywhere at once.
"""

from __future__ import annotations

__all__ = [
    "AUPRC",
    "AUROC",
    "BEST_OBJECTIVE",
    "BRIER",
    "COST_CPU_MS",
    "COST_GFLOPS",
    "COST_PARAMS",
    "ECE",
    "ENV_COMPILE",
    "ENV_DEVICE",
    "ENV_LAYOUT",
    "ENV_NODE",
    "ENV_PRECISION",
    "ENV_PRECISION_REASON",
    "EPOCH",
    "F1",
    "HAMMING",
    "KAPPA",
    "MEAN_SOURCE_AUPRC",
    "NPV",
    "OBJECTIVE",
    "PRECISION",
    "RECALL",
    "RESTORED_FROM_EPOCH",
    "SOURCE_AUPRC",
    "SPECIFICITY",
    "SUPPORT",
    "SYSTEM_CPU_UTIL",
    "SYSTEM_EPOCH_S",
    "SYSTEM_GPU_MEM_ALLOCATED",
    "SYSTEM_GPU_MEM_RESERVED",
    "SYSTEM_GPU_UTIL",
    "SYSTEM_SAMPLES_PER_S",
    "THRESHOLD",
    "THROUGHPUT",
    "TRAIN_LOSS",
    "VAL_AUPRC",
    "VAL_AUROC",
    "VAL_F1",
    "VAL_LOSS",
    "WORST_SOURCE_AUPRC",
    "metric_key",
    "source_key",
]

# The trial's reports (Ray Tune results, then MLflow metrics of the trial's run).
OBJECTIVE = "val/macro_auprc"
VAL_AUPRC = OBJECTIVE
VAL_AUROC = "val/macro_auroc"
VAL_LOSS = "val/loss"
VAL_F1 = "val/macro_f1"
TRAIN_LOSS = "train/loss"
THROUGHPUT = "train/samples_per_s"
EPOCH = "epoch"
# Best value so far in the trial of the search's quality objective: macro AUPRC, or with
# `--objective worst-source` / `mean-source` that per-source value (the name is the default's).
BEST_OBJECTIVE = "val/best_macro_auprc"
# Per-source macro AUPRC on the validation fold (`source_key`), and its worst and mean over the
# sources present there: the objectives of a search aimed at the hospital it has not seen.
SOURCE_AUPRC = "val/source_auprc"
WORST_SOURCE_AUPRC = "val/worst_source_auprc"
MEAN_SOURCE_AUPRC = "val/mean_source_auprc"
RESTORED_FROM_EPOCH = "train/restored_from_epoch"  # epoch of the checkpoint a retry resumed
# What the trial's model costs (search.cost): measured once, reported with every epoch.
COST_PARAMS = "cost/params"
COST_GFLOPS = "cost/gflops"  # forward GFLOP per 10 s record
COST_CPU_MS = "cost/cpu_ms"  # measured CPU inference ms per record
# Where a trial ran (strings in its results; the tracker makes them tags of the trial's run).
ENV_DEVICE = "env/device"
ENV_PRECISION = "env/precision"
# Why that precision and layout (search.autotune): "tf32/channels_last: 8,412 vs ... samples/s,
# measured in this process", "fp32: auto on a CPU", "bf16/ncl: requested".
ENV_PRECISION_REASON = "env/precision_reason"
ENV_LAYOUT = "env/layout"
ENV_COMPILE = "env/compile"
ENV_NODE = "env/node_id"
# What each epoch used of the machine (search.system_metrics), training and validation together.
SYSTEM_EPOCH_S = "system/epoch_s"  # wall seconds; the first includes any compiling
SYSTEM_SAMPLES_PER_S = "system/samples_per_s"  # training samples per wall second of the epoch
SYSTEM_CPU_UTIL = "system/cpu_util"  # % of the trial's CPU threads its process kept busy
SYSTEM_GPU_UTIL = "system/gpu_util"  # mean NVML utilisation % of the trial's GPU (whole GPU)
SYSTEM_GPU_MEM_ALLOCATED = "system/gpu_mem_allocated_gib"  # peak allocated by torch
SYSTEM_GPU_MEM_RESERVED = "system/gpu_mem_reserved_gib"  # peak held by torch's allocator

# Base metric names; per-label and report dicts use these, `metric_key` builds logged keys.
AUROC = "auroc"
AUPRC = "auprc"
F1 = "f1"
PRECISION = "precision"
RECALL = "recall"
SPECIFICITY = "specificity"
NPV = "npv"  # negative predictive value: what a clinician asks of a negative call
KAPPA = "kappa"
HAMMING = "hamming_loss"
ECE = "ece"
BRIER = "brier"
SUPPORT = "support"
THRESHOLD = "threshold"


def source_key(source: str) -> str:
    """``val/source_auprc/site-a``: one source's validation macro AUPRC."""
    return f"{SOURCE_AUPRC}/{source}"


def metric_key(split: str, name: str, label: str | None = None) -> str:
    """Logged metric key: ``metric_key("test", AUPRC) == "test/macro_auprc"``; with a label,
    ``"test/auprc/AFIB"``. Metrics that are not averages over labels (Hamming loss) keep their
    own name: ``"test/hamming_loss"``."""
    if label is not None:
        return f"{split}/{name}/{label}"
    if name == HAMMING:
        return f"{split}/{name}"
    return f"{split}/macro_{name}"


