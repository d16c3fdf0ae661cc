"""`make gpu-check`: what a trial (and ensemble inference) meets on this GPU, in one table.

    python -m ecgtune.ensembles.cli.gpu_check [--json FILE] [--no-ray] [--quick] [--profile]
        [--compile] [--search] [--budget-s S] [--choices FILE]

Rows (the targets' sections first): the environment; training samples/s of `seed` and
`seed-multi` (batch 128, crop 4,096) in each precision (bf16, fp32 = TF32 convolutions) and
each layout (`ncl`, the old one, and `channels_last`) side by side in one run, against
loader-only samples/s and as a fraction of the GPU's measured bf16 peak at 21.9 GFLOP per
training sample; DESIGN's targets as PASS/FAIL cells (the new layout >= 3x the old one's
best in this run, >= 8,200 samples/s on an H200, `train.precision=auto` picking the fastest
measured, two trials at 0.5 GPU >= 1.7x one); one trial alone and two processes sharing the
GPU; training memory (max allocated / reserved against our estimate); step time right after
a restore; memory still held when a reused actor starts its second trial; the OOM path (one
clear error, no retry, the sibling process unharmed); ensemble-member inference on the
device in fp32 and bf16 against the CPU's probabilities; the environment inside a
`num_gpus=0.5` Ray task; with `--profile` the kernels of a training step; with `--search` a
real `demo`-space search at `--gpus-per-trial 0.5` on synthetic records, then `ensemble
--device cuda` and `export`, timed; with `--compile` regional `torch.compile`
(`train.compile=trunk`, and with CUDA graphs `trunk-graphs`) against eager, its compile time
counted.

On a GPU the measured samples/s of each precision and layout (and the compile mode that was
faster, when `--compile` ran) are written to the table that `train.precision=auto` reads
(`search.autotune`; `--choices FILE`, default ~/.cache/ecgtune/gpu-choices.json).

Without a GPU it runs the same checks on the CPU with the `tiny` preset (the tests run it
that way so it cannot rot); GPU-only rows then say so. `--budget-s S` skips the sections that
would start after S seconds (each says so): a device lease is counted in minutes.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecgtune.components import LAYOUTS, build_model, get_preset
from ecgtune.data_prep.dataset import ECGDataset
from ecgtune.data_prep.labels import get_label_map
from ecgtune.data_prep.loader import AugmentConfig, BatchLoader, DeviceBatchTransform
from ecgtune.ensembles.ship.inference import InputSpec
from ecgtune.search import autotune
from ecgtune.search.config import TrainConfig, TrialConfig
from ecgtune.search.devices import (
    GIB,
    TrialOutOfMemoryError,
    driver_version,
    estimate_training_memory,
    release_memory,
    select_precision,
    trial_device,
)
from ecgtune.search.training import Trainer

# Forward + backward of the reference network on one 12 x 4,096 crop (DESIGN.md).
SEED_TRAIN_GFLOP = 21.9
LABEL_MAP = "seed20"
# DESIGN.md's GPU targets: the new layout >= 3x the old one's best samples/s in the same run
# (any GPU), `seed` b128 crop 4,096 >= 8,200 samples/s on an H200 (3x its first measurement,
# 2,739), two trials at 0.5 GPU >= 1.7x one trial.
LAYOUT_SPEEDUP_TARGET = 3.0
H200_SEED_TARGET = 8200.0
SHARING_TARGET = 1.7
# The default picks "the fastest" when its rate in the side-by-side run is within this of the
# best one: a few-step measurement cannot split rates closer than run-to-run noise.
NEAR_TIE = 0.05
# Seconds of budget a compile mode needs before it starts (compile, warm-up, timed steps).
COMPILE_RESERVE_S = 150.0


@dataclass
class Row:
    section: str
    setting: str
    value: str


def synthetic_dataset(n: int, seed: int = 0, n_samples: int = 5000) -> ECGDataset:
    """Random int16 signals and labels with the real layout: speed and memory do not
    depend on what the signals show."""
    rng = np.random.default_rng(seed)
    label_map = get_label_map(LABEL_MAP)
    labels = (rng.random((n, len(label_map.names))) < 0.15).astype(np.uint8)
    return ECGDataset(
        signals=rng.integers(-600, 600, (n, 12, n_samples), dtype=np.int16),
        labels=labels,
        records=np.array([f"S{i:06d}" for i in range(n)]),
        folds=np.zeros(n, np.int8),
        age=np.full(n, np.nan, np.float32),
        sex=np.array([""] * n),
        manifest={"preprocessing": {"gain": 1000.0, "fs": 500},
                  "normalization": {"mean": [0.0] * 12, "std": [0.3] * 12}},
        label_map=label_map,
    )


def _trainer(preset: str, data: ECGDataset, val: ECGDataset, device: torch.device, *,
             batch: int, crop: int, precision: str = "auto", steps: int = 4,
             cudnn_benchmark: bool = True, threads: int = 4, layout: str = "auto",
             compile_mode: str = "off") -> Trainer:
    cfg = TrainConfig(epochs=4, batch_size=batch, crop_len=crop, steps_per_epoch=steps,
                      precision=precision, layout=layout, compile=compile_mode, augment=True)
    trial = TrialConfig(get_preset(preset), cfg)
    label_map = data.label_map
    return Trainer(trial, data, val, label_groups=label_map.group_indices(),
                   label_names=list(label_map.names), device=device, threads=threads,
                   cudnn_benchmark=cudnn_benchmark)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_steps(trainer: Trainer, steps: int) -> float:
    """Seconds per training step, over up to `steps` steps (fewer when the training data
    holds fewer batches)."""
    trainer.steps_per_epoch = steps
    done = min(steps, len(trainer.train_loader))
    _sync(trainer.device)
    start = time.perf_counter()
    trainer.train_epoch()
    _sync(trainer.device)
    return (time.perf_counter() - start) / done


# -- sections ----------------------------------------------------------------------------------
def environment() -> list[Row]:
    rows = [Row("environment", "python / torch", f"{platform.python_version()} / "
                f"{torch.__version__} (CUDA build {torch.version.cuda})")]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        cap = torch.cuda.get_device_capability(0)
        rows += [
            Row("environment", "GPU", f"{props.name}, {props.total_memory / GIB:.1f} GiB, "
                f"capability {cap[0]}.{cap[1]}, bf16 {torch.cuda.is_bf16_supported()}"),
            Row("environment", "driver", driver_version()),
        ]
    else:
        rows.append(Row("environment", "GPU", "none (CPU fallback: tiny preset)"))
    return rows


def ray_section(timeout: float = 120) -> list[Row]:
    """The Ray probe in a child process: a Ray that cannot start (or hangs) costs one row,
    not the table."""
    import subprocess

    try:
        out = subprocess.run(
            [sys.executable, "-m", "ecgtune.ensembles.cli.gpu_check", "--ray-probe"],
            capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [Row("ray task", "num_gpus=0.5", f"no answer in {timeout:.0f} s")]
    lines = [line for line in out.stdout.splitlines() if line.startswith("[")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return [Row("ray task", "num_gpus=0.5", f"failed (exit {out.returncode}): {tail}")]
    return [Row(**row) for row in json.loads(lines[-1])]


def _ray_rows() -> list[Row]:
    try:
        import ray
    except ImportError:
        return [Row("ray task", "num_gpus=0.5", "ray not installed here: skipped")]
    rows = []
    gpus = 1 if torch.cuda.is_available() else 0
    # Without a GPU, Ray is also told of one that torch cannot use: the trial must refuse it.
    for told in sorted({gpus, 1}):
        ray.init(num_cpus=2, num_gpus=told, include_dashboard=False, logging_level=logging.ERROR,
                 log_to_driver=False, _node_ip_address="127.0.0.1")
        try:
            probe = ray.remote(num_gpus=0.5 if told else 0, num_cpus=1)(_ray_probe)
            setting = f"num_gpus={0.5 if told else 0}" + (", faked GPU" if told > gpus else "")
            rows.append(Row("ray task", setting, ray.get(probe.remote(), timeout=120)))
        finally:
            ray.shutdown()
    return rows


def _ray_probe() -> str:
    import ray

    ids = ray.get_gpu_ids()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
    try:
        device = trial_device(ids)
    except RuntimeError as exc:
        return f"gpu_ids={ids} CUDA_VISIBLE_DEVICES={visible!r}: refused: {exc}"
    precision = select_precision("auto", device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return (f"gpu_ids={ids} CUDA_VISIBLE_DEVICES={visible!r} -> {device} ({name}), "
            f"precision {precision}")


def memory(device: torch.device, presets: list[str], batches: list[int], crops: list[int],
           data: ECGDataset, val: ECGDataset) -> list[Row]:
    rows = []
    label_map = data.label_map
    for preset in presets:
        for batch in batches:
            for crop in crops:
                setting = f"{preset} b{batch} crop{crop}"
                release_memory()
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                try:
                    trainer = _trainer(preset, data, val, device, batch=batch, crop=crop,
                                       steps=1)
                    # The precision `auto` picked (the table, when written): the estimate's.
                    precision = trainer.precision
                    setting += f" {precision} {trainer.layout}"
                    trainer.run_epoch()  # one step + validation
                    trainer.close()
                    del trainer
                except torch.OutOfMemoryError as exc:
                    rows.append(Row("memory", setting, f"OOM: {str(exc).splitlines()[0]}"))
                    continue
                estimate = estimate_training_memory(
                    get_preset(preset), len(label_map.names), label_map.group_indices(), batch,
                    crop, precision)
                if device.type == "cuda":
                    alloc = torch.cuda.max_memory_allocated(device) / GIB
                    reserved = torch.cuda.max_memory_reserved(device) / GIB
                    measured = f"max allocated {alloc:.2f} GiB, reserved {reserved:.2f} GiB"
                else:
                    measured = "max allocated n/a (CPU)"
                rows.append(Row("memory", setting, f"{measured}; estimate "
                                f"{estimate.total_bytes / GIB:.2f} GiB "
                                f"(activations {estimate.activation_bytes / GIB:.2f})"))
    release_memory()
    return rows


def _precision_label(precision: str, device: torch.device) -> str:
    # fp32 convolutions on an Ampere-or-newer GPU run in TF32 (cuDNN's default).
    tf32 = (device.type == "cuda" and precision == "fp32"
            and torch.cuda.get_device_capability(device) >= (8, 0))
    return "fp32 (tf32)" if tf32 else precision


def loader_rate(device: torch.device, batch: int, crop: int, data: ECGDataset) -> list[Row]:
    """Loader alone: int16 crops to the device and normalised/augmented there, no model."""
    loader = BatchLoader(data, batch, crop, train=True, raw=True, threads=4, prefetch=8,
                         pin_memory=device.type == "cuda", augment=AugmentConfig())
    transform = DeviceBatchTransform(loader, device)
    n, start = 0, time.perf_counter()
    for x, _ in loader:
        transform(x.to(device, non_blocking=True))
        n += x.shape[0]
    _sync(device)
    rate = n / (time.perf_counter() - start)
    return [Row("throughput", f"loader only b{batch} crop{crop}, 4 threads",
                f"{rate:,.0f} samples/s")]


def layout_rates(device: torch.device, preset: str, batch: int, crop: int, steps: int,
                 data: ECGDataset, val: ECGDataset, peak_tflops: float | None
                 ) -> tuple[list[Row], dict[str, float | None]]:
    """Training samples/s of `preset` in every precision x layout, side by side in one run
    (cudnn.benchmark on, as trials run); keys as `autotune.rate_key`, None where it ran out
    of memory."""
    rows: list[Row] = []
    rates: dict[str, float | None] = {}
    precisions = ["bf16", "fp32"] if device.type == "cuda" else ["fp32"]
    for precision in precisions:
        for layout in LAYOUTS:
            key = autotune.rate_key(precision, layout)
            setting = (f"train {preset} b{batch} crop{crop} {_precision_label(precision, device)}"
                       f" {layout}")
            try:
                trainer = _trainer(preset, data, val, device, batch=batch, crop=crop,
                                   precision=precision, layout=layout, compile_mode="off",
                                   steps=3)
                trainer.train_epoch()  # warm-up: cudnn autotuning, allocator growth
                per_step = _timed_steps(trainer, steps)
                trainer.close()
                del trainer
            except torch.OutOfMemoryError as exc:
                rates[key] = None
                rows.append(Row("throughput", setting, f"OOM: {str(exc).splitlines()[0]}"))
                continue
            finally:
                release_memory()
            rate = rates[key] = batch / per_step
            value = f"{rate:,.0f} samples/s ({per_step * 1e3:.1f} ms/step)"
            if peak_tflops and crop == 4096 and preset == "seed":
                value += (f", {rate * SEED_TRAIN_GFLOP / 1e3 / peak_tflops:.1%} of the "
                          f"{peak_tflops:.0f} TFLOP/s bf16 peak")
            old = rates.get(autotune.rate_key(precision, "ncl"))
            if layout != "ncl" and old:
                value += f"; {rate / old:.2f}x {precision} ncl"
            rows.append(Row("throughput", setting, value))
    return rows, rates


def _best(rates: dict[str, float | None], layout: str | None = None) -> tuple[str, float]:
    """The fastest key (of `layout` when given) and its rate; ("", 0.0) when none ran."""
    ran = {k: v for k, v in rates.items() if v and (layout is None or k.endswith("/" + layout))}
    if not ran:
        return "", 0.0
    key = max(ran, key=lambda k: ran[k] or 0.0)
    return key, float(ran[key] or 0.0)


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def layout_targets(device: torch.device, preset: str, rates: dict[str, float | None]
                   ) -> list[Row]:
    """The new layout against the old one's best, in the same run (>= 3x on any GPU), and on
    an H200 the absolute `seed` target."""
    new_key, new = _best(rates, "channels_last")
    old_key, old = _best(rates, "ncl")
    rows = []
    if not (new and old):
        return [Row("targets", f"{preset}: channels_last vs ncl", "not measured")]
    ratio = new / old
    cuda = device.type == "cuda"
    verdict = _verdict(ratio >= LAYOUT_SPEEDUP_TARGET) if cuda else "n/a on the CPU"
    rows.append(Row("targets", f"{preset}: best new layout / best old layout "
                    f"(>= {LAYOUT_SPEEDUP_TARGET:g}x, same run)",
                    f"{ratio:.2f}x ({new_key} {new:,.0f} vs {old_key} {old:,.0f} samples/s): "
                    f"{verdict}"))
    if preset == "seed" and cuda:
        name = torch.cuda.get_device_name(device)
        best_key, best = _best(rates)
        if "H200" in name:
            value = f"{best:,.0f} samples/s ({best_key}): {_verdict(best >= H200_SEED_TARGET)}"
        else:
            value = (f"{best:,.0f} samples/s ({best_key}) on {name}: the H200 figure does not "
                     "apply here; the same-run ratio above does")
        rows.append(Row("targets", f"seed b128 crop4096 >= {H200_SEED_TARGET:,.0f} samples/s "
                        "(H200)", value))
    return rows


def default_choice(device: torch.device, preset: str, batch: int, crop: int,
                   data: ECGDataset, val: ECGDataset, rates: dict[str, float | None]
                   ) -> list[Row]:
    """What `train.precision=auto, train.layout=auto` picks by its own few-step measurement
    (no table), against the fastest of the side-by-side run."""
    saved = os.environ.get(autotune.CHOICES_ENV)
    with tempfile.TemporaryDirectory(prefix="ecgtune-gpucheck-") as tmp:
        os.environ[autotune.CHOICES_ENV] = os.path.join(tmp, "none.json")
        autotune.forget_measurements()
        try:
            trainer = _trainer(preset, data, val, device, batch=batch, crop=crop, steps=1,
                               compile_mode="off")
            execution = trainer.execution
            trainer.close()
            del trainer
        finally:
            autotune.forget_measurements()
            release_memory()
            if saved is None:
                os.environ.pop(autotune.CHOICES_ENV, None)
            else:
                os.environ[autotune.CHOICES_ENV] = saved
    picked = autotune.rate_key(execution.precision, execution.layout)
    best_key, best = _best(rates)
    if device.type != "cuda":
        verdict = "n/a on the CPU (nothing to choose)"
    else:
        ok = picked == best_key or (rates.get(picked) or 0.0) >= (1 - NEAR_TIE) * best
        verdict = f"{_verdict(ok)} (fastest in the side-by-side run: {best_key})"
    return [Row("targets", f"{preset}: train.precision=auto, train.layout=auto picks",
                f"{picked}, {execution.reason}: {verdict}")]


def matmul_peak_tflops(device: torch.device) -> float | None:
    """Measured bf16 matrix-product rate: the ceiling the training rate is compared with."""
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    _sync(device)
    return 10 * 2 * 8192**3 / (time.perf_counter() - start) / 1e12


def restore_and_reuse(device: torch.device, preset: str, batch: int, crop: int, steps: int,
                      data: ECGDataset, val: ECGDataset) -> list[Row]:
    rows = []
    first = _trainer(preset, data, val, device, batch=batch, crop=crop, steps=steps)
    first.run_epoch()
    before = _timed_steps(first, steps)
    with tempfile.TemporaryDirectory(prefix="ecgtune-gpucheck-") as directory:
        first.save(directory)
        model_ref = weakref.ref(first.model)
        first.close()
        del first
        release_memory()
        held = torch.cuda.memory_allocated(device) / GIB if device.type == "cuda" else 0.0
        rows.append(Row("reused actor", "after trial 1 (close + release_memory)",
                        f"model collected: {model_ref() is None}; "
                        + (f"{held:.3f} GiB still allocated" if device.type == "cuda"
                           else "allocated n/a (CPU)")))
        second = _trainer(preset, data, val, device, batch=batch, crop=crop, steps=steps)
        second.restore(directory)
        # The old way, for comparison: optimizer state mapped straight to the device.
        old = _trainer(preset, data, val, device, batch=batch, crop=crop, steps=steps)
        old.restore(directory)
        state = torch.load(os.path.join(directory, "training_state.pt"), map_location=device,
                           weights_only=True)
        old.optimizer.load_state_dict(state["optimizer"])
    results = []
    for trainer in (second, old):
        steps_on = sorted({str(v["step"].device) for v in trainer.optimizer.state.values()
                           if "step" in v})
        trainer.train_epoch()  # the restored trainer's own warm-up (cudnn, allocator)
        results.append((_timed_steps(trainer, steps), steps_on))
        trainer.close()
        release_memory()
    (after, on), (old_after, old_on) = results
    rows.append(Row("restore", f"{preset} b{batch} crop{crop}",
                    f"{before * 1e3:.1f} ms/step before, {after * 1e3:.1f} ms/step after "
                    f"restore ({after / before:.2f}x), AdamW step tensors on {on}; old "
                    f"map_location=device: {old_after * 1e3:.1f} ms/step, steps on {old_on}"))
    return rows


def inference(device: torch.device, preset: str, n: int) -> list[Row]:
    """One member's probabilities on the device (fp32 without TF32, and bf16) against the
    CPU's, and records/s of each."""
    from ecgtune.ensembles.ship.inference import MemberSpec, member_probabilities

    if device.type != "cuda":
        return [Row("inference", preset, "GPU only: skipped on the CPU")]
    data = synthetic_dataset(n, seed=5)
    inputs = InputSpec.from_manifest({**data.manifest, "preprocessing": {
        "gain": 1000.0, "fs": 500, "seconds": 10.0, "n_samples": 5000}})
    label_map = data.label_map
    groups = tuple(tuple(g) for g in label_map.group_indices())
    spec = MemberSpec(preset, get_preset(preset), len(label_map.names), groups, 4096, "dataset")
    torch.manual_seed(0)
    model = build_model(spec.config, spec.num_labels, [list(g) for g in groups]).eval()
    cpu_n = min(n, 64)
    reference = member_probabilities(model, spec, data.signals[:cpu_n], inputs)
    model = model.to(device)
    rows = []
    flag = torch.backends.cudnn.benchmark
    for precision in ("fp32", "bf16"):
        for bench in (False, True):
            torch.backends.cudnn.benchmark = bench
            member_probabilities(model, spec, data.signals[:256], inputs, batch_size=256,
                                 device=device, precision=precision)  # warm-up, autotuning
            _sync(device)
            start = time.perf_counter()
            probs = member_probabilities(model, spec, data.signals, inputs, batch_size=256,
                                         device=device, precision=precision)
            _sync(device)
            rate = n / (time.perf_counter() - start)
            diff = float(np.abs(probs[:cpu_n] - reference).max())
            rows.append(Row("inference", f"{preset} 3 windows, {precision} on {device.type}, "
                            f"cudnn.benchmark={'on' if bench else 'off'}",
                            f"{rate:,.0f} records/s; max |p - p_cpu| = {diff:.1e}"))
    torch.backends.cudnn.benchmark = flag
    return rows


def profile(device: torch.device, preset: str, batch: int, crop: int, data: ECGDataset,
            val: ECGDataset, top: int = 10) -> list[Row]:
    """The GPU kernels that take a training step's time, bf16 and fp32 (torch.profiler)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    if device.type != "cuda":
        return [Row("profile", preset, "GPU only: skipped on the CPU")]
    rows = []
    for precision in ("bf16", "fp32"):
        trainer = _trainer(preset, data, val, device, batch=batch, crop=crop,
                           precision=precision, layout="channels_last", compile_mode="off",
                           steps=3)
        trainer.train_epoch()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            _timed_steps(trainer, 3)
        trainer.close()
        release_memory()
        events = [e for e in prof.key_averages() if e.device_time_total > 0]
        total = sum(e.self_device_time_total for e in events) or 1.0
        events.sort(key=lambda e: -e.self_device_time_total)
        for e in events[:top]:
            rows.append(Row("profile", f"{precision} channels_last {e.key[:60]}",
                            f"{e.self_device_time_total / total:.1%} of GPU time, "
                            f"{e.count // 3} calls/step"))
    return rows


def compiled(device: torch.device, preset: str, batch: int, crop: int, steps: int,
             data: ECGDataset, val: ECGDataset, rates: dict[str, float | None],
             time_left: Callable[[], float] = lambda: float("inf")
             ) -> tuple[list[Row], str]:
    """Regional torch.compile (`train.compile=trunk`, and `trunk-graphs` with CUDA graphs)
    at the fastest eager precision and layout: the first epoch's time (compiling included)
    and samples/s after it, against eager. Returns the rows and the mode to record as the
    GPU's `compile` choice (off unless one is >= 5% faster). A mode is skipped when less
    than COMPILE_RESERVE_S of `time_left()` remains: compiling `seed` took 97 s once."""
    if device.type != "cuda":
        return [Row("compile", preset, "GPU only: skipped on the CPU")], "off"
    best_key, eager = _best(rates)
    if not best_key:
        return [Row("compile", preset, "no eager rate to compare with")], "off"
    precision, layout = best_key.split("/")
    rows, choice, best = [], "off", eager * (1 + NEAR_TIE)
    for mode in ("trunk", "trunk-graphs"):
        setting = f"train {preset} b{batch} crop{crop} {best_key} compile={mode}"
        if time_left() < COMPILE_RESERVE_S:
            rows.append(Row("compile", setting, f"skipped: {time_left():.0f} s left of the "
                            "budget"))
            continue
        try:
            trainer = _trainer(preset, data, val, device, batch=batch, crop=crop,
                               precision=precision, layout=layout, compile_mode=mode, steps=2)
            start = time.perf_counter()
            trainer.train_epoch()  # compiles
            _sync(device)
            compile_s = time.perf_counter() - start
            per_step = _timed_steps(trainer, steps)
            trainer.close()
            del trainer
        except Exception as exc:
            rows.append(Row("compile", setting, f"failed: {str(exc).splitlines()[0][:150]}"))
            continue
        finally:
            release_memory()
        rate = batch / per_step
        if rate > best:
            choice, best = mode, rate
        rows.append(Row("compile", setting, f"{rate:,.0f} samples/s ({per_step * 1e3:.1f} "
                        f"ms/step), {rate / eager:.2f}x eager; first epoch {compile_s:.0f} s"))
    rows.append(Row("compile", f"{preset}: train.compile=auto becomes", choice))
    return rows, choice


def _oom_worker(preset: str, batch: int, crop: int, fraction: float, barrier: Any,
                queue: Any) -> None:
    """A trial process capped at `fraction` of the GPU, asked for more than that."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = synthetic_dataset(max(2 * batch, 64), seed=1)
    try:
        if device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(fraction, 0)
        trainer = _trainer(preset, data, data, device, batch=batch, crop=crop, steps=2)
        if device.type != "cuda":
            _inject_oom(trainer)
        from ecgtune.search.devices import oom_as_fatal

        with oom_as_fatal(batch, crop):
            trainer.run_epoch()
        queue.put(("finished", "no OOM"))
    except TrialOutOfMemoryError as exc:
        queue.put(("TrialOutOfMemoryError", str(exc)[:160]))
    except Exception as exc:  # reported, not raised: the table shows what happened
        queue.put((type(exc).__name__, str(exc)[:160]))


def _sibling_worker(preset: str, batch: int, crop: int, fraction: float, steps: int,
                    barrier: Any, queue: Any) -> None:
    """A trial process at `fraction` of the GPU, in the precision and layout `auto` picks
    there (the table the throughput section wrote): `steps` timed steps, started together
    with its siblings' (`barrier`) so that they overlap."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = synthetic_dataset(max((steps + 2) * batch, 64), seed=2)
    try:
        if device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(fraction, 0)
            torch.cuda.reset_peak_memory_stats(device)
        trainer = _trainer(preset, data, data, device, batch=batch, crop=crop, steps=2,
                           compile_mode="off")
        trainer.train_epoch()
        if barrier is not None:
            barrier.wait(timeout=300)
        per_step = _timed_steps(trainer, steps)
        peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else 0
        queue.put(("finished", f"{batch / per_step:,.0f} samples/s, peak {peak:.2f} GiB, "
                   f"{trainer.precision} {trainer.layout}"))
    except Exception as exc:
        queue.put((type(exc).__name__, str(exc)[:160]))


def _inject_oom(trainer: Trainer) -> None:
    def forward(*args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("injected: CUDA out of memory (CPU fallback)")

    trainer.model.forward = forward  # type: ignore[method-assign]


def _processes(targets: list[tuple[Callable[..., None], tuple[Any, ...]]],
               timeout: float = 240, barrier: bool = False) -> list[tuple[str, str]]:
    """Runs each target in its own spawned process; `barrier`: each target's last argument
    before its queue is one barrier for all of them."""
    ctx = mp.get_context("spawn")
    queues = [ctx.Queue() for _ in targets]
    shared = [ctx.Barrier(len(targets))] if barrier else []
    procs = [ctx.Process(target=fn, args=(*args, *shared, q))
             for (fn, args), q in zip(targets, queues, strict=True)]
    for p in procs:
        p.start()
    results = []
    for p, q in zip(procs, queues, strict=True):
        try:
            results.append(q.get(timeout=timeout))
        except Exception:
            results.append(("timeout", f"no answer in {timeout:.0f} s"))
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    return results


def _rate_of(result: tuple[str, str]) -> float | None:
    status, text = result
    if status != "finished":
        return None
    try:
        return float(text.split(" samples/s", 1)[0].replace(",", ""))
    except ValueError:
        return None


def _sharing_target(device: torch.device, alone: list[tuple[str, str]],
                    pair: list[tuple[str, str]]) -> Row:
    one = _rate_of(alone[0])
    two = [_rate_of(r) for r in pair]
    setting = f"two trials at 0.5 GPU / one trial (>= {SHARING_TARGET:g}x)"
    if one is None or None in two:
        return Row("targets", setting, "not measured (a process did not finish)")
    total = sum(r for r in two if r is not None)
    ratio = total / one
    verdict = _verdict(ratio >= SHARING_TARGET) if device.type == "cuda" else "n/a on the CPU"
    return Row("targets", setting, f"{ratio:.2f}x ({total:,.0f} vs {one:,.0f} samples/s): "
               f"{verdict}")


def sharing_and_oom(device: torch.device, preset: str, big: str, batch: int, crop: int,
                    steps: int) -> list[Row]:
    rows = []
    alone = _processes([(_sibling_worker, (preset, batch, crop, 1.0, steps))], barrier=True)
    rows.append(Row("two trials, one GPU", f"one process alone (fraction 1.0) {preset} "
                    f"b{batch}", f"{alone[0][0]}: {alone[0][1]}"))
    pair = _processes([(_sibling_worker, (preset, batch, crop, 0.5, steps))] * 2, barrier=True)
    for i, (status, text) in enumerate(pair):
        rows.append(Row("two trials, one GPU", f"process {i + 1} (fraction 0.5) {preset} "
                        f"b{batch}", f"{status}: {text}"))
    rows.append(_sharing_target(device, alone, pair))
    # The OOM process is capped at 10% of the GPU and asked for a big model and batch.
    oom, sibling = _processes([(_oom_worker, (big, 4 * batch, 4096, 0.1, None)),
                               (_sibling_worker, (preset, batch, crop, 0.5, steps, None))])
    rows.append(Row("OOM path", f"{big} b{4 * batch} crop4096 at fraction 0.1",
                    f"{oom[0]}: {oom[1]}"))
    rows.append(Row("OOM path", "sibling process", f"{sibling[0]}: {sibling[1]}"))
    return rows


# -- a real search ------------------------------------------------------------------------------
SEARCH_DEPS = ("ray", "mlflow", "optuna", "wfdb")
SEARCH_NAME = "gpu-check"


def _cli(args: list[str], timeout: float, summary: tuple[str, ...] = ()
         ) -> tuple[int, float, str]:
    """`ecgtune ARGS` in a child process: (exit status, seconds, one line of its output: the
    first line starting with each of `summary`'s prefixes, joined, else its last line)."""
    import subprocess

    start = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, "-m", "ecgtune.ensembles.cli", *args],
                             capture_output=True, text=True, timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        return 124, time.perf_counter() - start, f"no end in {timeout:.0f} s"
    lines = [line.strip() for line in (out.stdout + "\n" + out.stderr).splitlines()
             if line.strip()]
    if out.returncode == 0:
        # the command's own summary, not a warning printed on stderr
        ok = [line.strip() for line in out.stdout.splitlines() if line.strip()] or lines
        picked = [next((line for line in ok if line.startswith(prefix)), "")
                  for prefix in summary]
        text = "; ".join(" ".join(line.split()) for line in picked if line) or (
            ok[-1] if ok else "")
        return 0, time.perf_counter() - start, text[:200]
    return out.returncode, time.perf_counter() - start, (lines[-1] if lines else "")[:160]


def search_section(device: torch.device, records: int | None = None,
                   trials: int | None = None, timeout: float = 540) -> list[Row]:
    """synthetic records -> prep -> `ecgtune search` (the `demo` space at --gpus-per-trial
    0.5 on a GPU; the `tiny` space on CPUs) -> `ensemble --device <this device>` -> `export`,
    each step timed, as a user runs them (child processes, the commands' own options)."""
    import importlib.util

    missing = [m for m in SEARCH_DEPS if importlib.util.find_spec(m) is None]
    if missing:
        return [Row("search", "search -> ensemble -> export",
                    f"skipped: {', '.join(missing)} not installed for {sys.executable}")]
    from ecgtune.data_prep import prepare, synthesize

    cuda = device.type == "cuda"
    space, gpus = ("demo", "0.5") if cuda else ("tiny", "0")
    n = records or (1500 if cuda else 200)
    trials = trials or (4 if cuda else 2)
    cpus = max(1, min(16, os.cpu_count() or 1))
    deadline = time.perf_counter() + timeout
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="ecgtune-gpucheck-search-") as tmp:
        work = os.path.abspath(tmp)
        start = time.perf_counter()
        workers = max(1, min(8, cpus))
        synthesize(os.path.join(work, "records"), n, seed=0, workers=workers)
        prepare(os.path.join(work, "records"), os.path.join(work, "data"), workers=workers,
                shard_size=1000, progress=False)
        rows.append(Row("search", f"synth + prep {n} records",
                        f"{time.perf_counter() - start:.0f} s"))
        data, bundle = os.path.join(work, "data"), os.path.join(work, "bundle")
        uri = f"sqlite:///{os.path.join(work, 'mlflow.db')}"
        storage = os.path.join(work, "ray_results")
        per_trial = ["--cpus-per-trial", str(max(1, cpus // 4))] if cuda else ["--num-cpus", "2"]
        steps: list[tuple[str, list[str], tuple[str, ...]]] = [
            (f"search --space {space} --num-samples {trials} --gpus-per-trial {gpus}",
             ["search", "--data", data, "--space", space, "--name", SEARCH_NAME,
              "--num-samples", str(trials), "--gpus-per-trial", gpus, "--tracking-uri", uri,
              "--storage", storage, "--seed", "0", "--verbose", "0", *per_trial],
             ("Search '", "t0")),
            (f"ensemble --device {device.type} --top-k 3",
             ["ensemble", "--data", data, "--name", SEARCH_NAME, "--output", bundle,
              "--top-k", "3", "--tracking-uri", uri, "--storage", storage,
              "--device", device.type, "--no-onnx", "--no-progress"],
             ("Test fold", "ensemble ")),
            ("export --format onnx",
             ["export", "--bundle", bundle, "--output", os.path.join(work, "model.onnx"),
              "--check-data", data],
             ("checked on",)),
        ]
        total = time.perf_counter() - start
        for label, args, summary in steps:
            status, seconds, last = _cli(args, deadline - time.perf_counter(), summary)
            total += seconds
            verdict = f"{seconds:.0f} s" if status == 0 else f"FAILED (exit {status})"
            rows.append(Row("search", label, f"{verdict}: {last}"))
            if status != 0:
                break
        else:
            rows.append(Row("search", "search -> ensemble -> export", f"{total:.0f} s in all"))
    return rows


# -- driver ------------------------------------------------------------------------------------
def run(quick: bool = False, use_ray: bool = True, extra: tuple[str, ...] = (),
        emit: Callable[[list[Row]], None] | None = None, budget_s: float | None = None,
        choices: str | None = None) -> list[Row]:
    """All sections in order, the performance targets first; `emit` sees each section's rows as
    soon as it is done (a run cut short by a time limit still leaves what it measured).
    `budget_s`: sections that would start later than that are skipped, each with a row.
    On a GPU the measured rates go to the `auto` table (`choices`, else its default)."""
    began = time.perf_counter()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if choices:
        # the trainers of this process and of the processes it starts read the same table
        os.environ[autotune.CHOICES_ENV] = choices

    def time_left() -> float:
        return (budget_s if budget_s is not None else float("inf")) - (
            time.perf_counter() - began)

    if cuda:
        data, val = synthetic_dataset(4096, seed=3), synthetic_dataset(256, seed=4)
        presets, batches, crops = ["seed", "seed-multi"], [64, 128], [2048, 4096]
        train_preset, batch, crop, steps, big = "seed", 128, 4096, 20, "seed-multi"
    else:
        data, val = synthetic_dataset(256, seed=3), synthetic_dataset(64, seed=4)
        presets, batches, crops = ["tiny"], [8], [1024]
        train_preset, batch, crop, steps, big = "tiny", 8, 1024, 3, "tiny"
    if quick:
        batches, crops = batches[-1:], crops[-1:]
    peak = matmul_peak_tflops(device)
    rates: dict[str, dict[str, float | None]] = {}

    def trained(preset: str) -> list[Row]:
        rows, rates[preset] = layout_rates(device, preset, batch, crop,
                                           steps if preset == train_preset else steps // 2,
                                           data, val, peak)
        return rows + layout_targets(device, preset, rates[preset])

    def chosen() -> list[Row]:
        rows = default_choice(device, train_preset, batch, crop, data, val,
                              rates.get(train_preset, {}))
        if cuda and rates.get(train_preset):
            path = autotune.write_choices(
                torch.cuda.get_device_name(device), rates[train_preset], "off",
                f"{train_preset} b{batch} crop{crop}, torch {torch.__version__}",
                Path(choices) if choices else None)
            rows.append(Row("targets", "auto's table (train.precision/layout=auto read it)",
                            f"written: {path}"))
        return rows

    def compile_rows() -> list[Row]:
        rows, mode = compiled(device, train_preset, batch, crop, steps, data, val,
                              rates.get(train_preset, {}), time_left)
        if cuda and rates.get(train_preset):
            autotune.write_choices(torch.cuda.get_device_name(device), rates[train_preset],
                                   mode, f"{train_preset} b{batch} crop{crop}, torch "
                                   f"{torch.__version__}", Path(choices) if choices else None)
        return rows

    sections: list[tuple[str, Callable[[], list[Row]]]] = [
        ("environment", lambda: environment() + (
            [Row("environment", "measured bf16 matmul 8192^3", f"{peak:.0f} TFLOP/s")]
            if peak else [])),
        ("throughput", lambda: loader_rate(device, batch, crop, data) + trained(train_preset)),
    ]
    if cuda:
        sections.append(("throughput", lambda: trained(big)))
    # The targets' measurements first (a lease can end the run), then the earlier checks.
    sections += [
        ("targets", chosen),
        ("sharing", lambda: sharing_and_oom(device, train_preset, big, batch, crop, steps)),
    ]
    if "profile" in extra:
        sections.append(("profile", lambda: profile(device, train_preset, batch, crop, data,
                                                    val)))
    if "compile" in extra:
        sections.append(("compile", compile_rows))
    sections += [
        ("memory", lambda: memory(device, presets, batches, crops, data, val)),
        ("restore", lambda: restore_and_reuse(device, train_preset, batch, crop, steps, data,
                                              val)),
        ("inference", lambda: inference(device, "seed", 512)),
    ]
    if use_ray:
        sections.append(("ray task", ray_section))
    if "search" in extra:
        # the rest of the budget: a lease ends the run, not the search's own limit
        sections.append(("search", lambda: search_section(
            device, timeout=max(60.0, min(time_left(), 1200.0)))))
    rows: list[Row] = []
    for name, section in sections:
        elapsed = time.perf_counter() - began
        if budget_s is not None and elapsed > budget_s:
            new = [Row(name, "skipped", f"past the {budget_s:.0f} s budget ({elapsed:.0f} s)")]
        else:
            try:
                new = section()
            except Exception as exc:  # one broken section costs its rows, not the table
                new = [Row(name, "error",
                           f"{type(exc).__name__}: {str(exc).splitlines()[0][:150]}")]
        rows += new
        if emit is not None:
            emit(new)
    return rows


def format_table(rows: list[Row]) -> str:
    w1 = max(len(r.section) for r in rows)
    w2 = max(len(r.setting) for r in rows)
    lines = [f"{'check':<{w1}}  {'setting':<{w2}}  result", "-" * (w1 + w2 + 60)]
    lines += [f"{r.section:<{w1}}  {r.setting:<{w2}}  {r.value}" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ecgtune.ensembles.cli.gpu_check",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray task probe")
    parser.add_argument("--quick", action="store_true",
                        help="one batch size and crop in the memory section")
    parser.add_argument("--profile", action="store_true",
                        help="also list the GPU kernels that take a training step's time")
    parser.add_argument("--compile", action="store_true",
                        help="also time regional torch.compile of the trunks, with and "
                             "without CUDA graphs (minutes of compiling)")
    parser.add_argument("--search", action="store_true",
                        help="also run a real search (demo space, --gpus-per-trial 0.5 on a "
                             "GPU), then ensemble and export, timed")
    parser.add_argument("--budget-s", type=float, default=None, metavar="S",
                        help="skip the sections that would start after S seconds")
    parser.add_argument("--choices", metavar="FILE", default=None,
                        help="where to write the measured rates that train.precision=auto "
                             "reads (default: $ECGTUNE_GPU_CHOICES, else "
                             "~/.cache/ecgtune/gpu-choices.json); GPU only")
    parser.add_argument("--ray-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ray_probe:
        print(json.dumps([r.__dict__ for r in _ray_rows()]), flush=True)
        return 0
    start = time.perf_counter()
    extra = tuple(name for name in ("profile", "compile", "search") if getattr(args, name))
    done: list[Row] = []

    def emit(rows: list[Row]) -> None:
        done.extend(rows)
        print("\n".join(f"  [{r.section}] {r.setting}: {r.value}" for r in rows), flush=True)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump([r.__dict__ for r in done], fh, indent=1)

    rows = run(quick=args.quick, use_ray=not args.no_ray, extra=extra, emit=emit,
               budget_s=args.budget_s, choices=args.choices)
    rows.append(Row("total", "wall time", f"{time.perf_counter() - start:.0f} s"))
    emit(rows[-1:])
    print(format_table(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
