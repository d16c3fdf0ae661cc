"""Benchmarks of the search stage, on synthetic shards, side by side in one run each:

1. efficiency: TPE + ASHA vs random search + ASHA vs full-budget random search, the same
   number of trials, 3 seeds each: best-so-far validation AUPRC against trial-epochs spent
   (target: TPE + ASHA reaches full-budget random's final best with <= 1/4 of its
   trial-epochs, median over seeds); the plot goes to $ECGTUNE_BENCH_OUT (`make bench`:
   bench-results/);
2. memory: two concurrent trials on one node, on a small and a three-times larger data set,
   for both data-sharing strategies: a trial's private memory must not grow with the data
   (target: the data is held once per node, not once per trial);
3. overhead: per-trial cost of Ray + MLflow around a trial vs the bare training loop.

Run: `make bench` or `.venv/bin/python -m pytest -m benchmark -s tests/benchmarks/bench_search.py`.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.benchmark
# With 24 trials neither TPE + ASHA variant we ran met the target over seeds 0-5 (median 0.41,
# the same as full-budget random's own reach point); with 48 the model and ASHA's rungs have
# enough trials to pay off (BENCHMARKS.md).
TRIALS = 48
SEEDS = (0, 1, 2)
# Targets (BENCHMARKS.md): TPE + ASHA reaches full-budget random search's final best with
# <= 1/4 of its trial-epochs (median over seeds);
# a trial's private heap grows by well under a copy of the data (1.0 = a copy per trial;
# measured ~0); Ray + MLflow cost a trial less than a bare trial's own time twice over.
BUDGET_RATIO = 1 / 4
MAX_HEAP_GROWTH = 0.2
MAX_OVERHEAD_RATIO = 2.0

EFFICIENCY_SPACE = """
base: tiny
fixed: {train.epochs: 9, train.crop_len: 1024, train.batch_size: 32, train.augment: false,
        train.warmup_epochs: 0.5, train.steps_per_epoch: 33}
params:
  branch.depths: {choice: ["3-2", "2-2", "3"]}
  fusion: {choice: [independent, concat, attention, late]}
  fusion.hidden: {choice: [16, 32], when: {fusion: [concat, attention]}}
  train.lr: {loguniform: [3.0e-4, 3.0e-2]}
  train.weight_decay: {loguniform: [1.0e-6, 1.0e-2]}
  train.loss: {choice: [bce, focal]}
scheduler: {grace_period: 2, reduction_factor: 3}
searcher: {n_startup_trials: 4}
"""
# ASHA's first rung at epoch 2: over the 72 full-budget trials of this test at 24 trials
# (3 seeds; computed once from their result.json files, not printed here) the rank correlation
# of a trial's val AUPRC with its final best is 0.35 after epoch 1 (none of the final top 8 in the
# epoch-1 top 8) and 0.79 after epoch 2; a rung at epoch 1 stops trials at random.

# 3,000 records with 33 steps of 32 per epoch: a trial trains about as much per epoch as on
# 1,500 records (1,050 in the train folds: 32 full steps), while the validation fold doubles
# to ~300 records. With ~150,
# 13 of the 20 labels had 3-8 positives there, so a search's best val AUPRC was partly the
# luckiest of its evaluations, and full-budget random makes the most of them (9 per trial).
EFFICIENCY_RECORDS = 3000

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


@dataclass(frozen=True)
class Method:
    label: str
    searcher: str
    scheduler: str
    seed_offset: int  # TPE's start-up points are its own, not the random searcher's


METHODS = (
    Method("full-budget random", "random", "fifo", 0),
    Method("random + ASHA", "random", "asha", 0),  # same points as full-budget random
    Method("TPE + ASHA", "tpe", "asha", 100),
)


def _reports(storage: Path) -> list[tuple[int, int, int, float]]:
    """Every epoch any trial reported, in the order they arrived: (arrival second, trial,
    epoch, val AUPRC), from the result.json Ray writes per trial."""
    from ecgtune.search import metric_keys as K

    rows = []
    for index, path in enumerate(sorted(storage.rglob("result.json"))):
        for line in path.read_text().splitlines():
            result = json.loads(line)
            rows.append((int(result["timestamp"]), index, int(result[K.EPOCH]),
                         float(result[K.OBJECTIVE])))
    return sorted(rows)


def _best_so_far(storage: Path) -> np.ndarray:
    """Best val AUPRC seen after each trial-epoch spent (index k: after k + 1 trial-epochs)."""
    return np.maximum.accumulate(np.array([r[3] for r in _reports(storage)]))


def _epochs_to_reach(curve: np.ndarray, target: float) -> float:
    reached = np.flatnonzero(curve >= target)
    return float(reached[0] + 1) if len(reached) else math.inf


def _plot_efficiency(curves: dict[str, list[np.ndarray]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
    for (label, runs), color in zip(curves.items(), ("tab:gray", "tab:blue", "tab:red"),
                                    strict=True):
        for run in runs:
            ax.plot(np.arange(1, len(run) + 1), run, color=color, alpha=0.25, lw=1)
        ax.plot(*_median_curve(runs), color=color, lw=2.5, label=f"{label} (median)")
    ax.set_xlabel("trial-epochs spent")
    ax.set_ylabel("best val macro AUPRC so far")
    ax.set_title(f"Search efficiency: {TRIALS} trials x up to 9 epochs, {len(SEEDS)} seeds")
    ax.legend(loc="lower right")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _median_curve(runs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Median over seeds of best-so-far, up to the longest run (a search that ended spends
    no more: its last value holds)."""
    length = max(len(r) for r in runs)
    padded = np.array([np.concatenate([r, np.full(length - len(r), r[-1])]) for r in runs])
    return np.arange(1, length + 1), np.median(padded, axis=0)


def test_search_efficiency_tpe_asha_vs_random_over_seeds(tmp_path):
    """Three searchers, the same trial budget, three seeds each: best-so-far val AUPRC against
    trial-epochs spent, and the trial-epochs each needs to reach the final best of the
    full-budget random search of the same seed."""
    data = _data(tmp_path, EFFICIENCY_RECORDS)
    curves: dict[str, list[np.ndarray]] = {m.label: [] for m in METHODS}
    for seed in SEEDS:
        for m in METHODS:
            name = f"{m.searcher}-{m.scheduler}-{seed}"
            _search(data, tmp_path, name, EFFICIENCY_SPACE, num_samples=TRIALS,
                    max_concurrent=2, seed=seed + m.seed_offset, searcher=m.searcher,
                    scheduler=m.scheduler)
            curves[m.label].append(_best_so_far(tmp_path / name / "ray"))
    targets = [run[-1] for run in curves[METHODS[0].label]]
    budget = [len(run) for run in curves[METHODS[0].label]]
    print(f"\nsearch efficiency: {TRIALS} trials each, up to 9 epochs, tiny space, "
          f"{EFFICIENCY_RECORDS:,} records, seeds {SEEDS} (TPE's +{METHODS[2].seed_offset}); "
          "'to reach' = trial-epochs until best-so-far >= that seed's full-budget random final "
          "best")
    header = ("searcher", "final best (per seed)", "trial-epochs", "to reach", "ratio")
    print(f"{header[0]:<20} {header[1]:>26} {header[2]:>14} {header[3]:>16} {header[4]:>6}")
    ratios: dict[str, float] = {}
    for m in METHODS:
        runs = curves[m.label]
        reach = [_epochs_to_reach(run, t) for run, t in zip(runs, targets, strict=True)]
        ratios[m.label] = float(np.median([r / b for r, b in zip(reach, budget, strict=True)]))
        finals = " ".join(f"{run[-1]:.4f}" for run in runs)
        spent = " ".join(str(len(run)) for run in runs)
        reached = " ".join("-" if math.isinf(r) else str(int(r)) for r in reach)
        print(f"{m.label:<20} {finals:>26} {spent:>14} {reached:>16} "
              f"{ratios[m.label]:>6.2f}")
    print("\nmedian best-so-far val AUPRC after k trial-epochs:")
    marks = sorted({25, 50, 100, 150, 200, 300, max(budget)})
    print(f"{'searcher':<20} " + " ".join(f"{k:>7}" for k in marks))
    for m in METHODS:
        steps, median = _median_curve(curves[m.label])
        row = [f"{median[min(k, len(steps)) - 1]:>7.4f}" for k in marks]
        print(f"{m.label:<20} " + " ".join(row))
    out = Path(os.environ.get("ECGTUNE_BENCH_OUT", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    _plot_efficiency(curves, out / "search_efficiency.png")
    print(f"plot: {out / 'search_efficiency.png'}")
    tpe = ratios[METHODS[2].label]
    print(f"TPE + ASHA needs {tpe:.2f} of full-budget random's trial-epochs to reach its final "
          f"best (median over seeds; target <= {BUDGET_RATIO:.2f})")
    assert tpe <= BUDGET_RATIO, f"TPE + ASHA needs {tpe:.2f} of random's trial-epochs"


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
