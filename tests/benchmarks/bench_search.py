"""Benchmarks of the search stage, on synthetic shards, side by side in one run each:

1. efficiency: ASHA + TPE vs a full-budget random search with the same number of trials:
   best validation AUPRC reached and trial-epochs spent (target: same best with <= 1/3);
2. memory: two concurrent trials on one node, on a small and a three-times larger data set,
   for both data-sharing strategies: a trial's private memory must not grow with the data
   (target: the data is held once per node, not once per trial);
3. overhead: per-trial cost of Ray + MLflow around a trial vs the bare training loop.

Run: `make bench` or `.venv/bin/python -m pytest -m benchmark -s tests/benchmarks/bench_search.py`.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.benchmark
TRIALS = 24  # ASHA saves more the more trials there are to compare
# Targets (BENCHMARKS.md): TPE + ASHA reaches the same best with <= 1/3 of the trial-epochs;
# a trial's private heap grows by well under a copy of the data (1.0 = a copy per trial;
# measured ~0); Ray + MLflow cost a trial less than a bare trial's own time twice over.
BUDGET_RATIO = 1 / 3
MAX_HEAP_GROWTH = 0.2
MAX_OVERHEAD_RATIO = 2.0

EFFICIENCY_SPACE = """
base: tiny
fixed: {train.epochs: 9, train.crop_len: 1024, train.batch_size: 32, train.augment: false,
        train.warmup_epochs: 0.5}
params:
  branch.depths: {choice: ["3-2", "2-2", "3"]}
  fusion: {choice: [independent, concat, attention, late]}
  fusion.hidden: {choice: [16, 32], when: {fusion: [concat, attention]}}
  train.lr: {loguniform: [3.0e-4, 3.0e-2]}
  train.weight_decay: {loguniform: [1.0e-6, 1.0e-2]}
  train.loss: {choice: [bce, focal]}
scheduler: {grace_period: 1, reduction_factor: 3}
searcher: {n_startup_trials: 4}
"""

FIXED_SPACE = """
base: tiny
fixed: {train.epochs: 3, train.crop_len: 1024, train.batch_size: 32, train.augment: false,
        train.steps_per_epoch: 15}
params:
  fusion: {choice: [concat]}
"""


def _data(tmp: Path, n: int) -> Path:
    from ecgtune.data_prep import prepare, synthesize

    synthesize(tmp / "records", n, seed=1, workers=2)
    prepare(tmp / "records", tmp / "prepared", workers=2, shard_size=1000, progress=False)
    return tmp / "prepared"


def _search(data: Path, tmp: Path, name: str, space: str, **kw):
    from ecgtune.search.run import SearchOptions, run_search
    from ecgtune.search.tracking import default_tracking_uri

    (tmp / name).mkdir(parents=True, exist_ok=True)
    space_file = tmp / name / "space.yaml"
    space_file.write_text(space)
    opts = SearchOptions(data=data, space=str(space_file), name=name, num_cpus=2,
                         tracking_uri=default_tracking_uri(tmp / name),
                         storage=str(tmp / name / "ray"), verbose=0, **kw)
    start = time.perf_counter()
    result = run_search(opts)
    return result, time.perf_counter() - start


def test_asha_tpe_vs_full_budget_random_search(tmp_path):
    data = _data(tmp_path, 1500)
    rows = []
    for label, kw in (
        ("random search, full budget", dict(searcher="random", scheduler="fifo")),
        ("TPE + ASHA", dict(searcher="tpe", scheduler="asha")),
    ):
        result, seconds = _search(data, tmp_path, label.split()[0].lower().replace(",", ""),
                                  EFFICIENCY_SPACE, num_samples=TRIALS, max_concurrent=2, seed=0,
                                  **kw)
        rows.append((label, result.best.best_score, result.trial_epochs, seconds))
    print(f"\nsearch efficiency: {TRIALS} trials, up to 9 epochs each, tiny space, 1,500 records")
    print(f"{'searcher':<28} {'best val AUPRC':>15} {'trial-epochs':>13} {'wall s':>8}")
    for label, best, epochs, seconds in rows:
        print(f"{label:<28} {best:>15.4f} {epochs:>13d} {seconds:>8.1f}")
    (_, best_r, epochs_r, _), (_, best_t, epochs_t, _) = rows
    print(f"best: TPE+ASHA {best_t:.4f} vs random {best_r:.4f} ({best_t - best_r:+.4f})")
    print(f"ratio trial-epochs TPE+ASHA / random = {epochs_t / epochs_r:.2f} (target <= 0.33)")
    assert best_t >= best_r, f"TPE + ASHA's best {best_t:.4f} is below random's {best_r:.4f}"
    assert epochs_t / epochs_r <= BUDGET_RATIO, f"budget ratio {epochs_t / epochs_r:.2f}"


def _anonymous_bytes(pid: int) -> int:
    """A process's anonymous memory (its heap: where a private copy of the data would live).
    Unlike USS this leaves out file pages that only this process happens to have touched yet,
    which memory-mapped data shows until every trial has read every page."""
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Anonymous:"):
                return int(line.split()[1]) * 1024
    return 0


def _sample_memory(stop: threading.Event, peak: dict[str, Any]) -> None:
    """Peak PSS of this process and all its descendants (Ray's raylet and object store, the
    trial workers: shared pages count once in the total), and each trial worker's peak
    anonymous (private heap) memory."""
    import psutil

    me = psutil.Process()
    while not stop.is_set():
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_full_info().pss
                if "ImplicitFunc" in proc.name():  # a Tune trial actor
                    heap = _anonymous_bytes(proc.pid)
                    peak["heap"][proc.pid] = max(peak["heap"].get(proc.pid, 0), heap)
            except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
                continue
        peak["pss"] = max(peak["pss"], total)
        time.sleep(0.2)


def test_memory_two_concurrent_trials_hold_the_data_once(tmp_path):
    """Two trials run side by side on a small and a three-times larger data set. A trial
    worker's private (anonymous) memory must not grow with the data: the data lives once per
    node (object store or page cache) and every trial maps it."""
    from ecgtune.data_prep import load_shards

    sizes = {}
    rows = []
    for n_records in (1500, 4500):
        data = _data(tmp_path / f"n{n_records}", n_records)
        sizes[n_records] = load_shards(data, folds=list(range(8))).signals.nbytes / 2**20
        for strategy in ("object_store", "memmap"):
            stop, peak = threading.Event(), {"pss": 0, "heap": {}}
            sampler = threading.Thread(target=_sample_memory, args=(stop, peak), daemon=True)
            sampler.start()
            _search(data, tmp_path, f"mem-{strategy}-{n_records}", FIXED_SPACE, num_samples=2,
                    max_concurrent=2, data_sharing=strategy)
            stop.set()
            sampler.join()
            heap = sorted(peak["heap"].values())[-2:]
            rows.append((strategy, n_records, peak["pss"] / 2**20,
                         sum(heap) / max(1, len(heap)) / 2**20))
    print("\nmemory with 2 concurrent trials on one node (MiB): the data (folds 0-7, int16) "
          f"grows from {sizes[1500]:.0f} to {sizes[4500]:.0f} MiB")
    header = ("data sharing", "records", "session PSS", "heap per trial")
    print(f"{header[0]:<14} {header[1]:>8} {header[2]:>12} {header[3]:>18}")
    for strategy, n, pss, heap in rows:
        print(f"{strategy:<14} {n:>8} {pss:>12.0f} {heap:>18.0f}")
    grow = sizes[4500] - sizes[1500]
    ratios = {}
    for strategy in ("object_store", "memmap"):
        small, large = (r[3] for r in rows if r[0] == strategy)
        ratios[strategy] = (large - small) / grow
        print(f"{strategy}: a trial's heap grew {large - small:+.0f} MiB while the data "
              f"grew {grow:.0f} MiB (ratio {ratios[strategy]:.2f}; 1.0 = a copy per trial)")
    assert all(r < MAX_HEAP_GROWTH for r in ratios.values()), f"data held per trial: {ratios}"


def test_per_trial_overhead_of_ray_and_mlflow(tmp_path):
    import ray
    import torch

    from ecgtune.components import get_preset
    from ecgtune.data_prep import load_shards
    from ecgtune.search.config import TrialConfig
    from ecgtune.search.space import parse_space
    from ecgtune.search.training import Trainer

    data = _data(tmp_path, 1500)
    n_trials = 3
    dataset = load_shards(data, folds=list(range(8)))
    space = parse_space(FIXED_SPACE)
    trial = TrialConfig.from_flat(space.trial_flat({"fusion": "concat"}))
    assert trial.model.fusion == "concat" and get_preset("tiny").fusion != "concat"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what a 1-CPU trial gets
    start = time.perf_counter()
    for _ in range(n_trials):
        trainer = Trainer(trial, dataset.select(folds=range(7)), dataset.select(folds=[7]),
                          label_groups=dataset.label_map.group_indices(), device="cpu")
        while trainer.epoch < trial.train.epochs:
            trainer.run_epoch()
    bare = time.perf_counter() - start
    torch.set_num_threads(threads)

    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    ray.shutdown()
    ray_start = time.perf_counter() - start
    _, searched = _search(data, tmp_path, "overhead", FIXED_SPACE, num_samples=n_trials,
                          max_concurrent=1, cpus_per_trial=1)
    per_trial = (searched - bare - ray_start) / n_trials
    print(f"\nper-trial overhead: {n_trials} identical trials x {trial.train.epochs} epochs, "
          "one at a time, 1 CPU each")
    print(f"{'bare training loop':<36} {bare:>8.1f} s")
    print(f"{'ecgtune search (Ray + MLflow)':<36} {searched:>8.1f} s")
    print(f"{'  of which Ray start + stop':<36} {ray_start:>8.1f} s")
    ratio = per_trial / (bare / n_trials)
    print(f"per-trial overhead of Ray + MLflow: {per_trial:.1f} s ({ratio:.2f}x a bare trial)")
    # Reported, with a sanity bound: 1.21x measured, 2.0x before trial actors were reused.
    assert ratio < MAX_OVERHEAD_RATIO, f"Ray + MLflow cost {ratio:.2f}x a bare trial"
