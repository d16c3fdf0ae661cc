"""`make gpu-check`: what a trial (and ensemble inference) meets on this GPU, in one table.

    python -m ecgtune.ensembles.cli.gpu_check [--json FILE] [--no-ray] [--quick]

Rows: the environment inside a `num_gpus=0.5` Ray task (the device and precision a trial
picks there); training memory (max allocated / reserved against our estimate) of `seed` and
`seed-multi` at batch 64/128, crop 2048/4096, and two processes sharing one GPU; training
samples/s against loader-only samples/s and as a fraction of the GPU's bf16 peak at 21.9
GFLOP per training sample (bf16 and fp32, cudnn.benchmark on and off); step time right after
a restore; memory still held when a reused actor starts its second trial; the OOM path (one
clear error, no retry, the sibling process unharmed); ensemble-member inference on the device
in fp32 and bf16 against the CPU's probabilities.

Without a GPU it runs the same checks on the CPU with the `tiny` preset (the tests run it
that way so it cannot rot); GPU-only rows then say so.
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
from typing import Any

import numpy as np
import torch

from ecgtune.components import build_model, get_preset
from ecgtune.data_prep.dataset import ECGDataset
from ecgtune.data_prep.labels import get_label_map
from ecgtune.data_prep.loader import AugmentConfig, BatchLoader, DeviceBatchTransform
from ecgtune.ensembles.ship.inference import InputSpec
from ecgtune.search.config import DebugConfig, TrainConfig, TrialConfig
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
             cudnn_benchmark: bool = True, threads: int = 4) -> Trainer:
    cfg = TrainConfig(epochs=4, batch_size=batch, crop_len=crop, steps_per_epoch=steps,
                      precision=precision, augment=True)
    trial = TrialConfig(get_preset(preset), cfg, DebugConfig())
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
                precision = select_precision("auto", device)
                estimate = estimate_training_memory(
                    get_preset(preset), len(label_map.names), label_map.group_indices(), batch,
                    crop, precision)
                release_memory()
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                try:
                    trainer = _trainer(preset, data, val, device, batch=batch, crop=crop,
                                       steps=1)
                    trainer.run_epoch()  # one step + validation
                    trainer.close()
                    del trainer
                except torch.OutOfMemoryError as exc:
                    rows.append(Row("memory", setting, f"OOM: {str(exc).splitlines()[0]}"))
                    continue
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


def throughput(device: torch.device, preset: str, batch: int, crop: int, steps: int,
               data: ECGDataset, val: ECGDataset, peak_tflops: float | None) -> list[Row]:
    rows = []
    # Loader alone: int16 crops to the device and normalised/augmented there, no model.
    loader = BatchLoader(data, batch, crop, train=True, raw=True, threads=4, prefetch=8,
                         pin_memory=device.type == "cuda",
                         augment=AugmentConfig())
    transform = DeviceBatchTransform(loader, device)
    n, start = 0, time.perf_counter()
    for x, _ in loader:
        transform(x.to(device, non_blocking=True))
        n += x.shape[0]
    _sync(device)
    loader_rate = n / (time.perf_counter() - start)
    rows.append(Row("throughput", f"loader only b{batch} crop{crop}, 4 threads",
                    f"{loader_rate:,.0f} samples/s"))
    precisions = ["bf16", "fp32"] if device.type == "cuda" else ["fp32"]
    for precision in precisions:
        for bench in (True, False) if device.type == "cuda" else (False,):
            trainer = _trainer(preset, data, val, device, batch=batch, crop=crop,
                               precision=precision, steps=3, cudnn_benchmark=bench)
            trainer.train_epoch()  # warm-up: cudnn autotuning, allocator growth
            per_step = _timed_steps(trainer, steps)
            rate = batch / per_step
            trainer.close()
            del trainer
            release_memory()
            value = f"{rate:,.0f} samples/s ({per_step * 1e3:.1f} ms/step)"
            if peak_tflops and crop == 4096 and preset == "seed":
                value += (f", {rate * SEED_TRAIN_GFLOP / 1e3 / peak_tflops:.1%} of the "
                          f"{peak_tflops:.0f} TFLOP/s bf16 peak")
            rows.append(Row("throughput", f"train {preset} b{batch} crop{crop} {precision} "
                            f"cudnn.benchmark={'on' if bench else 'off'}", value))
    if device.type == "cuda":  # the old input path, for comparison: float32 built on the host
        trainer = _trainer(preset, data, val, device, batch=batch, crop=crop, steps=3)
        trainer.transform_on_device = False
        trainer.train_loader = trainer._loader(data, train=True)
        trainer._train_transform = None
        trainer.train_epoch()
        per_step = _timed_steps(trainer, steps)
        trainer.close()
        release_memory()
        rows.append(Row("throughput", f"train {preset} b{batch} crop{crop} bf16, host-side "
                        "normalisation (old path)",
                        f"{batch / per_step:,.0f} samples/s ({per_step * 1e3:.1f} ms/step)"))
    return rows


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
                           precision=precision, steps=3)
        trainer.train_epoch()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            _timed_steps(trainer, 3)
        trainer.close()
        release_memory()
        events = [e for e in prof.key_averages() if e.device_time_total > 0]
        total = sum(e.self_device_time_total for e in events) or 1.0
        events.sort(key=lambda e: -e.self_device_time_total)
        for e in events[:top]:
            rows.append(Row("profile", f"{precision} {e.key[:70]}",
                            f"{e.self_device_time_total / total:.1%} of GPU time, "
                            f"{e.count // 3} calls/step"))
    return rows


def compiled(device: torch.device, preset: str, batch: int, crop: int, steps: int,
             data: ECGDataset, val: ECGDataset) -> list[Row]:
    """torch.compile of the model: compile time and training samples/s."""
    if device.type != "cuda":
        return [Row("compile", preset, "GPU only: skipped on the CPU")]
    rows = []
    for precision in ("bf16",):
        trainer = _trainer(preset, data, val, device, batch=batch, crop=crop,
                           precision=precision, steps=2)
        trainer.model = torch.compile(trainer.model)  # type: ignore[assignment]
        start = time.perf_counter()
        try:
            trainer.train_epoch()
        except Exception as exc:
            rows.append(Row("compile", precision, f"failed: {str(exc).splitlines()[0][:150]}"))
            continue
        compile_s = time.perf_counter() - start
        per_step = _timed_steps(trainer, steps)
        trainer.close()
        release_memory()
        rows.append(Row("compile", f"train {preset} b{batch} crop{crop} {precision} "
                        "torch.compile", f"{batch / per_step:,.0f} samples/s "
                        f"({per_step * 1e3:.1f} ms/step); first epoch {compile_s:.0f} s"))
    return rows


def _oom_worker(preset: str, batch: int, crop: int, fraction: float, queue: Any) -> None:
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
                    queue: Any) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = synthetic_dataset(max((steps + 2) * batch, 64), seed=2)
    try:
        if device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(fraction, 0)
            torch.cuda.reset_peak_memory_stats(device)
        trainer = _trainer(preset, data, data, device, batch=batch, crop=crop, steps=2)
        trainer.train_epoch()
        per_step = _timed_steps(trainer, steps)
        peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else 0
        queue.put(("finished", f"{batch / per_step:,.0f} samples/s, peak {peak:.2f} GiB"))
    except Exception as exc:
        queue.put((type(exc).__name__, str(exc)[:160]))


def _inject_oom(trainer: Trainer) -> None:
    def forward(*args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("injected: CUDA out of memory (CPU fallback)")

    trainer.model.forward = forward  # type: ignore[method-assign]


def _processes(targets: list[tuple[Callable[..., None], tuple[Any, ...]]],
               timeout: float = 240) -> list[tuple[str, str]]:
    ctx = mp.get_context("spawn")
    queues = [ctx.Queue() for _ in targets]
    procs = [ctx.Process(target=fn, args=(*args, q)) for (fn, args), q in zip(targets, queues,
                                                                               strict=True)]
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


def sharing_and_oom(device: torch.device, preset: str, big: str, batch: int, crop: int,
                    steps: int) -> list[Row]:
    rows = []
    pair = _processes([(_sibling_worker, (preset, batch, crop, 0.5, steps))] * 2)
    for i, (status, text) in enumerate(pair):
        rows.append(Row("two trials, one GPU", f"process {i + 1} (fraction 0.5) {preset} "
                        f"b{batch}", f"{status}: {text}"))
    # The OOM process is capped at 10% of the GPU and asked for a big model and batch.
    oom, sibling = _processes([(_oom_worker, (big, 4 * batch, 4096, 0.1)),
                               (_sibling_worker, (preset, batch, crop, 0.5, steps))])
    rows.append(Row("OOM path", f"{big} b{4 * batch} crop4096 at fraction 0.1",
                    f"{oom[0]}: {oom[1]}"))
    rows.append(Row("OOM path", "sibling process", f"{sibling[0]}: {sibling[1]}"))
    return rows


# -- driver ------------------------------------------------------------------------------------
def run(quick: bool = False, use_ray: bool = True, extra: tuple[str, ...] = (),
        emit: Callable[[list[Row]], None] | None = None) -> list[Row]:
    """All sections in order; `emit` sees each section's rows as soon as it is done (a run
    cut short by a time limit still leaves what it measured)."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        data, val = synthetic_dataset(4096, seed=3), synthetic_dataset(256, seed=4)
        presets, batches, crops = ["seed", "seed-multi"], [64, 128], [2048, 4096]
        train_preset, batch, crop, steps, big = "seed", 128, 4096, 20, "seed-multi"
    else:
        data, val = synthetic_dataset(256, seed=3), synthetic_dataset(64, seed=4)
        presets, batches, crops = ["tiny"], [8], [1024]
        train_preset, batch, crop, steps, big = "tiny", 8, 1024, 3, "tiny"
    if quick:
        batches, crops = batches[:1], crops[:1]
    peak = matmul_peak_tflops(device)
    sections: list[tuple[str, Callable[[], list[Row]]]] = [
        ("environment", lambda: environment() + (
            [Row("environment", "measured bf16 matmul 8192^3", f"{peak:.0f} TFLOP/s")]
            if peak else [])),
        ("memory", lambda: memory(device, presets, batches, crops, data, val)),
        ("throughput", lambda: throughput(device, train_preset, batch, crop, steps, data, val,
                                          peak)),
        ("restore", lambda: restore_and_reuse(device, train_preset, batch, crop, steps, data,
                                              val)),
        ("sharing", lambda: sharing_and_oom(device, train_preset, big, batch, crop, steps)),
        ("inference", lambda: inference(device, "seed", 512)),
    ]
    if use_ray:
        sections.append(("ray task", ray_section))
    if "profile" in extra:
        sections.append(("profile", lambda: profile(device, train_preset, batch, crop, data,
                                                    val)))
    if "compile" in extra:
        sections.append(("compile", lambda: compiled(device, train_preset, batch, crop, steps,
                                                     data, val)))
    rows: list[Row] = []
    for name, section in sections:
        try:
            new = section()
        except Exception as exc:  # one broken section costs its rows, not the table
            new = [Row(name, "error", f"{type(exc).__name__}: {str(exc).splitlines()[0][:150]}")]
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
                        help="also time training with torch.compile (minutes of compiling)")
    parser.add_argument("--ray-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ray_probe:
        print(json.dumps([r.__dict__ for r in _ray_rows()]), flush=True)
        return 0
    start = time.perf_counter()
    extra = tuple(name for name in ("profile", "compile") if getattr(args, name))
    done: list[Row] = []

    def emit(rows: list[Row]) -> None:
        done.extend(rows)
        print("\n".join(f"  [{r.section}] {r.setting}: {r.value}" for r in rows), flush=True)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump([r.__dict__ for r in done], fh, indent=1)

    rows = run(quick=args.quick, use_ray=not args.no_ray, extra=extra, emit=emit)
    rows.append(Row("total", "wall time", f"{time.perf_counter() - start:.0f} s"))
    emit(rows[-1:])
    print(format_table(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
