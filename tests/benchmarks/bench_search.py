"""Benchmarks of the search stage, on synthetic shards, side by side in one run each:

1. efficiency: ASHA + TPE vs a full-budget random search with the same number of trials:
   best validation AUPRC reached and trial-epochs spent (target: same best with <= 1/3);
2. memory: peak memory of the whole Ray session with 1 vs 2 concurrent trials on one node,
   for both data-sharing strategies (target: the data is held once, so a second trial adds
   far less than the data's size);
3. overhead: per-trial cost of Ray + MLflow around a trial vs the bare training loop.

Run: `make bench` or `.venv/bin/python -m pytest -m benchmark -s tests/benchmarks/bench_search.py`.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.benchmark

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
    from data_prep import prepare, synthesize

    synthesize(tmp / "records", n, seed=1, workers=2)
    prepare(tmp / "records", tmp / "prepared", workers=2, shard_size=1000, progress=False)
    return tmp / "prepared"


def _search(data: Path, tmp: Path, name: str, space: str, **kw):
    from search.run import SearchOptions, run_search
    from search.tracking import default_tracking_uri

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
                                  EFFICIENCY_SPACE, num_samples=12, max_concurrent=2, seed=0,
                                  **kw)
        rows.append((label, result.best.best_score, result.trial_epochs, seconds))
    print("\nsearch efficiency: 12 trials, up to 9 epochs each, tiny space, 1,500 records")
    print(f"{'searcher':<28} {'best val AUPRC':>15} {'trial-epochs':>13} {'wall s':>8}")
    for label, best, epochs, seconds in rows:
        print(f"{label:<28} {best:>15.4f} {epochs:>13d} {seconds:>8.1f}")
    (_, best_r, epochs_r, _), (_, best_t, epochs_t, _) = rows
    print(f"best: TPE+ASHA {best_t:.4f} vs random {best_r:.4f} ({best_t - best_r:+.4f})")
    print(f"ratio trial-epochs TPE+ASHA / random = {epochs_t / epochs_r:.2f} (target <= 0.33)")


def _session_pss(stop: threading.Event, peak: list[int]) -> None:
    """Peak proportional set size of this process and all its descendants (Ray's raylet,
    object store and trial workers): shared pages count once in total."""
    import psutil

    me = psutil.Process()
    while not stop.is_set():
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        peak[0] = max(peak[0], total)
        time.sleep(0.2)


def test_memory_one_vs_two_concurrent_trials(tmp_path):
    data = _data(tmp_path, 3000)
    from data_prep import load_shards

    data_mb = load_shards(data, folds=list(range(8))).signals.nbytes / 2**20
    rows = {}
    for strategy in ("object_store", "memmap"):
        for trials in (1, 2):
            stop, peak = threading.Event(), [0]
            sampler = threading.Thread(target=_session_pss, args=(stop, peak), daemon=True)
            sampler.start()
            _search(data, tmp_path, f"mem-{strategy}-{trials}", FIXED_SPACE, num_samples=trials,
                    max_concurrent=trials, data_sharing=strategy)
            stop.set()
            sampler.join()
            rows[strategy, trials] = peak[0] / 2**20
    print(f"\npeak memory of the Ray session (PSS, MiB); folds 0-7 = {data_mb:.0f} MiB int16")
    header = ("data sharing", "1 trial", "2 trials", "2nd trial adds", "/ data")
    print(f"{header[0]:<14} {header[1]:>9} {header[2]:>9} {header[3]:>15} {header[4]:>7}")
    for strategy in ("object_store", "memmap"):
        one, two = rows[strategy, 1], rows[strategy, 2]
        print(f"{strategy:<14} {one:>9.0f} {two:>9.0f} {two - one:>15.0f} "
              f"{(two - one) / data_mb:>7.2f}")
    print("ratio (2nd trial's extra memory / data size), object store: "
          f"{(rows['object_store', 2] - rows['object_store', 1]) / data_mb:.2f} (target << 1)")


def test_per_trial_overhead_of_ray_and_mlflow(tmp_path):
    import ray
    import torch

    from components import get_preset
    from data_prep import load_shards
    from search.config import TrialConfig
    from search.space import parse_space
    from search.training import Trainer

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
    print(f"per-trial overhead of Ray + MLflow: {per_trial:.1f} s "
          f"({per_trial / (bare / n_trials):.2f}x a bare trial)")
