"""Benchmarks of what a model reads and what its trunk is (`input.fs`, `input.leads`,
`branch.kind`), side by side in one run each:

1. input rate: one epoch of the `seed` architecture reading 100 Hz vs 500 Hz (the same
   stored 500 Hz crops; the 100 Hz model resamples them in its front end): CPU time per epoch
   and forward GFLOP per 10 s record (target: both <= 1/4 of the 500 Hz trial's);
2. Pareto front: a `--objective auprc,gflops` search of the `demo` space's budget over
   `input.fs` x `branch.kind` on synthetic records: does the front hold a point within 0.01
   val AUPRC of the best 500 Hz ResU-Dense trial at <= 1/4 of its GFLOPs? (Printed; on these
   records it does not, see AUPRC_SANITY for what they show and what is asserted.)
3. trunk family: `ssm-small` vs `seed`: parameters, GFLOP and CPU ms per record.

Run: `make bench` or `.venv/bin/python -m pytest -m benchmark -s tests/benchmarks/bench_input.py`.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.benchmark

QUARTER = 1 / 4  # the input-rate targets: CPU time per epoch and GFLOP, 100 Hz vs 500 Hz
AUPRC_SLACK = 0.01  # the Pareto target: within this of the best 500 Hz ResU-Dense trial
# What the synthetic records do show (BENCHMARKS.md "input"): at the demo's budget the cheap
# end of the front stays 0.05-0.11 val AUPRC below 500 Hz, the loss in the QRS-morphology
# labels (RVH, QWA, CLBBB, 1AVB, axis) that the synthetic generator draws as waves of a few
# milliseconds; the rhythm labels keep their AUPRC. Asserted: the front holds such a point,
# and it stays within this sanity bound (a broken front end loses far more).
AUPRC_SANITY = 0.15
ROUNDS = 3  # alternating timed epochs per model, after one warm-up epoch each


def _data(tmp: Path, n: int, seed: int = 1) -> Path:
    from ecgtune.data_prep import prepare, synthesize

    synthesize(tmp / "records", n, seed=seed, workers=2)
    prepare(tmp / "records", tmp / "prepared", workers=2, shard_size=1000, progress=False)
    return tmp / "prepared"


def test_100_hz_seed_trial_costs_a_quarter_of_500_hz(tmp_path):
    """The `seed` network trained for one epoch (4 steps of 8 x 4,096 stored samples, then
    the validation fold) at 500 Hz and at 100 Hz, one thread, epochs alternating; CPU time
    of the process (time.process_time: what the trial itself spends, less sensitive than wall
    time to other work on the machine) and the forward GFLOP the search logs."""
    import torch

    from ecgtune.components import get_preset
    from ecgtune.data_prep import load_shards
    from ecgtune.search.config import TrialConfig
    from ecgtune.search.cost import model_cost
    from ecgtune.search.training import Trainer

    data = load_shards(_data(tmp_path, 500), folds=list(range(8)))
    train, val = data.select(folds=range(7)), data.select(folds=[7])
    groups = data.label_map.group_indices()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rates = {"500 Hz": {}, "100 Hz": {"input.fs": 100}, "100 Hz limb6": {
        "input.fs": 100, "input.leads": "limb6"}}
    trainers, costs, times = {}, {}, {}
    try:
        for label, flat in rates.items():
            trial = TrialConfig.from_flat({
                **get_preset("seed").to_flat(), **flat, "train.epochs": 1 + ROUNDS,
                "train.batch_size": 8, "train.steps_per_epoch": 4, "train.crop_len": 4096,
                "train.augment": False})
            trainers[label] = Trainer(trial, train, val, label_groups=groups, device="cpu")
            costs[label] = model_cost(trial.model, 20, groups, time_it=False)
            trainers[label].run_epoch()  # warm-up: first-call allocations and kernels
            times[label] = []
        for _ in range(ROUNDS):
            for label, trainer in trainers.items():
                start = time.process_time()
                trainer.run_epoch()
                times[label].append(time.process_time() - start)
    finally:
        torch.set_num_threads(threads)
    load = os.getloadavg()[0]
    print(f"\ninput rate: `seed` architecture, one epoch = 4 steps of 8 x 4,096 stored samples "
          f"+ {len(val)} validation records, 1 thread, {ROUNDS} alternating rounds "
          f"(load average {load:.1f})")
    print(f"{'input':<14} {'params':>10} {'GFLOP/record':>13} {'CPU s/epoch (min)':>18} "
          f"{'(median)':>9}")
    for label in rates:
        print(f"{label:<14} {costs[label].params:>10,} {costs[label].gflops:>13.3f} "
              f"{min(times[label]):>18.2f} {float(np.median(times[label])):>9.2f}")
    cpu = min(times["100 Hz"]) / min(times["500 Hz"])
    gflops = costs["100 Hz"].gflops / costs["500 Hz"].gflops
    print(f"100 Hz / 500 Hz: CPU time per epoch {cpu:.3f} (median "
          f"{np.median(times['100 Hz']) / np.median(times['500 Hz']):.3f}), GFLOP "
          f"{gflops:.3f} (targets <= {QUARTER:.2f})")
    assert gflops <= QUARTER, f"a 100 Hz seed costs {gflops:.3f} of the 500 Hz GFLOP"
    assert cpu <= QUARTER, f"a 100 Hz seed epoch costs {cpu:.3f} of the 500 Hz CPU time"


PARETO_SPACE_SET = ("--set", "input.leads=all12")  # the demo space, leads pinned: fs x kind


def _pareto_rows(uri: str, name: str, tmp: Path) -> list[dict[str, str]]:
    from ecgtune.search import tracking

    client = tracking.client(uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get(tracking.TAG_ROLE) == "search")
    local = client.download_artifacts(parent.info.run_id, "search/pareto_front.csv", str(tmp))
    rows = list(csv.DictReader(Path(local).open()))
    trials = {r.data.tags.get(tracking.TAG_TRIAL_ID): r for r in runs
              if r.data.tags.get(tracking.TAG_ROLE) == "trial"}
    for row in rows:
        run = trials[row["trial_id"]]
        row["input.fs"] = run.data.params.get("input.fs", "?")
        row["branch.kind"] = run.data.params.get("branch.kind", "?")
        row["name"] = run.info.run_name or row["trial"]
    return rows


def test_pareto_front_over_input_rate_and_trunk_family(tmp_path):
    """The demo's search (3,000 synthetic records, 8 trials of up to 5 epochs, TPE + ASHA)
    with `--objective auprc,gflops`, its lead set pinned so that it searches `input.fs` x
    `branch.kind` with the demo's other keys."""
    from ecgtune.ensembles.cli import main
    from ecgtune.search import tracking

    data = _data(tmp_path, 3000, seed=0)
    uri = tracking.default_tracking_uri(tmp_path)
    start = time.perf_counter()
    code = main(["search", "--data", str(data), "--space", "demo", "--name", "pareto",
                 "--num-samples", "8", "--objective", "auprc,gflops", "--storage",
                 str(tmp_path / "ray"), "--tracking-uri", uri, "--verbose", "0",
                 *PARETO_SPACE_SET])
    elapsed = time.perf_counter() - start
    assert code == 0
    rows = _pareto_rows(uri, "pareto", tmp_path)
    print(f"\nPareto front: demo space over input.fs x branch.kind, 8 trials, "
          f"--objective auprc,gflops, {elapsed:.0f} s (load average {os.getloadavg()[0]:.1f})")
    print(f"{'trial':<40} {'fs':>4} {'kind':>5} {'val AUPRC':>10} {'GFLOP':>8} {'front':>6}")
    for row in sorted(rows, key=lambda r: float(r["gflops"])):
        print(f"{row['name'][:40]:<40} {row['input.fs']:>4} "
              f"{row['branch.kind']:>5} {float(row['val_macro_auprc']):>10.4f} "
              f"{float(row['gflops']):>8.3f} {row['pareto']:>6}")
    reference = [r for r in rows if r["input.fs"] == "500" and r["branch.kind"] == "resu"]
    assert reference, "no 500 Hz ResU-Dense trial to compare with"
    best = max(reference, key=lambda r: float(r["val_macro_auprc"]))
    cheap = [r for r in rows if r["pareto"] == "1"
             and float(r["gflops"]) <= QUARTER * float(best["gflops"])]
    closest = max(cheap, key=lambda r: float(r["val_macro_auprc"]), default=None)
    gap = (float(best["val_macro_auprc"]) - float(closest["val_macro_auprc"])
           if closest is not None else float("inf"))
    print(f"best 500 Hz ResU-Dense: val AUPRC {float(best['val_macro_auprc']):.4f} at "
          f"{float(best['gflops']):.3f} GFLOP; best front point at <= 1/4 of that: "
          + (f"{float(closest['val_macro_auprc']):.4f} at {float(closest['gflops']):.3f} GFLOP "
             f"({closest['input.fs']} Hz {closest['branch.kind']}), {gap:+.4f} below"
             if closest is not None else "none"))
    met = "met" if gap <= AUPRC_SLACK else "not met on these synthetic records"
    print(f"target: a front point within {AUPRC_SLACK} val AUPRC at <= 1/4 of the GFLOP: {met} "
          f"(sanity bound asserted: a front point at <= 1/4, at most {AUPRC_SANITY} below)")
    assert closest is not None, "the front holds no point at <= 1/4 of the 500 Hz GFLOP"
    assert gap <= AUPRC_SANITY, f"the cheapest quarter of the front is {gap:.4f} AUPRC below"


def test_ssm_small_vs_seed():
    """Parameters, forward GFLOP and CPU ms per 10 s record (batch 2, median of 3, 1 thread)
    of the compact state-space preset against the reference network, each at 500 Hz and at
    100 Hz."""
    import dataclasses

    from ecgtune.components import get_preset
    from ecgtune.search.cost import model_cost

    rows = []
    for name in ("seed", "ssm-small"):
        config = get_preset(name)
        for fs in (500, 100):
            at = dataclasses.replace(config, input=dataclasses.replace(config.input, fs=fs))
            rows.append((name, fs, model_cost(at, 20, None, threads=1)))
    print("\ntrunk family: `ssm-small` vs `seed`, 20 labels, one 10 s record")
    print(f"{'preset':<10} {'fs':>4} {'params':>11} {'GFLOP':>8} {'CPU ms':>8}")
    for name, fs, cost in rows:
        print(f"{name:<10} {fs:>4} {cost.params:>11,} {cost.gflops:>8.3f} {cost.cpu_ms:>8.1f}")
    seed, ssm = rows[0][2], rows[2][2]
    print(f"ssm-small / seed at 500 Hz: params {ssm.params / seed.params:.3f}, GFLOP "
          f"{ssm.gflops / seed.gflops:.3f}, CPU ms {ssm.cpu_ms / seed.cpu_ms:.3f}")
    # Reported; sanity bounds: a compact model, smaller than the seed on both counts.
    assert ssm.params < seed.params / 4 and ssm.gflops < seed.gflops / 2
