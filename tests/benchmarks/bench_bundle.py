"""Benchmark: exported bundle inference (records/s) at batch 1 and batch 64 on the CPU, against
an eager per-member loop on the same records.

Members: 4 `small`-preset models (random weights: speed does not depend on what they learned),
3 windows of 4,096 samples per record, per-label calibration and thresholds, as the ensemble
build exports them. The bundle is written with `save_bundle` and timed after `load_bundle`.

Eager loop: load each member checkpoint (`components.load_checkpoint`), then for every
record (batch 1) or batch of 64 records, for every member and every window separately: crop,
normalise, forward, sigmoid; average windows, weight members, calibrate. This is the direct
way to write it; the bundle differs by cropping and normalising all windows of a batch in
one vectorised step and sending them through each member as one forward pass. Both sides
produce the same probabilities (checked). The ratio is printed last.

Run: ``.venv/bin/python -m pytest -m benchmark -s tests/benchmarks/bench_bundle.py`` (the
measurement runs in a subprocess with torch's default thread count), or directly:
``python tests/benchmarks/bench_bundle.py``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest

N_MEMBERS, CROP, WINDOWS, N_LABELS = 4, 4096, 3, 20
N_BATCH1, N_BATCH64 = 24, 128  # records timed at batch 1 / batch 64


def _setup(root: Path):
    import numpy as np
    import torch

    from ecgtune.components import build_model, get_preset, save_checkpoint
    from ecgtune.data_prep import get_label_map, make_record
    from ecgtune.ensembles.build.calibration import PerLabelCalibrator
    from ecgtune.ensembles.ship.bundle import save_bundle
    from ecgtune.ensembles.ship.inference import EnsemblePredictor, InputSpec, MemberSpec

    label_map = get_label_map("seed20")
    groups = label_map.group_indices()
    config = get_preset("small")
    members, checkpoints = [], []
    for i in range(N_MEMBERS):
        torch.manual_seed(i)
        model = build_model(config, N_LABELS, groups).eval()
        spec = MemberSpec(f"m{i}", config, N_LABELS, tuple(tuple(g) for g in model.label_groups),
                          CROP, "dataset")
        path = root / f"m{i}.pt"
        save_checkpoint(path, model, config, num_labels=N_LABELS, label_groups=groups)
        members.append((spec, model))
        checkpoints.append(path)
    rng = np.random.default_rng(0)
    calibrator = PerLabelCalibrator(methods=("temperature", "platt")).fit(
        rng.uniform(0.01, 0.99, (400, N_LABELS)), rng.random((400, N_LABELS)) < 0.2)
    inputs = InputSpec(fs=500, seconds=10.0, n_samples=5000, gain=1000.0,
                       norm_mean=(0.0,) * 12, norm_std=(0.25,) * 12)
    weights = [0.4, 0.3, 0.2, 0.1]
    predictor = EnsemblePredictor(members, weights, calibrator, np.full(N_LABELS, 0.5),
                                  label_map.names, inputs, WINDOWS, label_map=label_map.name,
                                  label_groups=groups, group_names=label_map.group_names)
    save_bundle(root / "bundle", predictor)
    signals = np.stack([make_record(3, i)[1] for i in range(N_BATCH64)])
    return checkpoints, weights, calibrator, inputs, signals


def _load_eager(checkpoints):
    from ecgtune.components import load_checkpoint

    return [load_checkpoint(p)[0] for p in checkpoints]


def _eager(models, weights, calibrator, inputs, signals, batch):
    """The straightforward per-member loop; returns (probabilities, seconds)."""
    import numpy as np
    import torch

    from ecgtune.data_prep import normalize, window_starts

    start = time.perf_counter()
    starts = window_starts(inputs.n_samples, CROP, WINDOWS)
    stats = inputs.norm_stats
    out = []
    with torch.no_grad():
        for lo in range(0, len(signals), batch):
            x = signals[lo : lo + batch]
            total = 0.0
            for weight, model in zip(weights, models, strict=True):
                probs = []
                for s in starts:
                    window = normalize(np.ascontiguousarray(x[..., s : s + CROP]), stats,
                                       inputs.gain, "dataset")
                    probs.append(torch.sigmoid(model(torch.from_numpy(window))).numpy())
                total = total + weight * np.mean(probs, axis=0, dtype=np.float64)
            out.append(calibrator.predict(total))
    return np.concatenate(out), time.perf_counter() - start


def _bundle(bundle, signals, batch):
    import numpy as np

    start = time.perf_counter()
    out = [bundle.predict_signals(signals[lo : lo + batch], batch_size=batch)
           for lo in range(0, len(signals), batch)]
    return np.concatenate(out), time.perf_counter() - start


def run() -> str:
    import numpy as np
    import torch

    from ecgtune.ensembles.ship.bundle import load_bundle

    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoints, weights, calibrator, inputs, signals = _setup(root)
        t0 = time.perf_counter()
        models = _load_eager(checkpoints)
        t1 = time.perf_counter()
        bundle = load_bundle(root / "bundle")  # sha256 of every file, strict safetensors
        t2 = time.perf_counter()
        # Warm up both paths (allocator, first-call overheads) on a few records.
        _eager(models, weights, calibrator, inputs, signals[:2], 1)
        _bundle(bundle, signals[:2], 1)
        rates = {}
        for batch, n in ((1, N_BATCH1), (64, N_BATCH64)):
            x = signals[:n]
            p_eager, t_eager = _eager(models, weights, calibrator, inputs, x, batch)
            p_bundle, t_bundle = _bundle(bundle, x, batch)
            diff = float(np.abs(p_eager - p_bundle).max())
            assert diff <= 1e-5, f"bundle and eager loop disagree by {diff}"
            rates[batch] = (n / t_eager, n / t_bundle)
    lines.append(f"bundle inference: {N_MEMBERS} x `small` members, {WINDOWS} windows of {CROP}"
                 f" samples per record, CPU, torch threads = {torch.get_num_threads()}")
    lines.append(f"load: checkpoints {t1 - t0:.2f} s, verified bundle {t2 - t1:.2f} s "
                 f"(not in the rates); max |bundle - eager| = {diff:.1e}")
    lines.append(f"{'':<28}{'batch 1':>14}{'batch 64':>14}")
    lines.append(f"{'eager per-member loop':<28}{rates[1][0]:>10.1f} r/s{rates[64][0]:>10.1f} r/s")
    lines.append(f"{'exported bundle':<28}{rates[1][1]:>10.1f} r/s{rates[64][1]:>10.1f} r/s")
    ratios = {batch: bundle_rate / eager_rate for batch, (eager_rate, bundle_rate) in rates.items()}
    lines.append(f"ratio bundle / eager: batch 1 = {ratios[1]:.2f}x, "
                 f"batch 64 = {ratios[64]:.2f}x")
    # Reported, with a sanity bound: the bundle is no slower than the eager loop it replaces
    # (measured 1.25x and 1.05x; compute bound at batch 64, so 10% for run-to-run spread).
    assert min(ratios.values()) >= 0.9, "\n".join(lines)
    return "\n".join(lines)


@pytest.mark.benchmark
def test_bundle_inference_throughput():
    from testkit import run_fresh  # not at the top: this file also runs as a script

    # Inference is measured with torch's default threads on this machine.
    run_fresh(__file__, timeout=1200)


if __name__ == "__main__":
    print(run())
