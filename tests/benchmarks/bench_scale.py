"""Real size: the ecg-arrhythmia database's 45,152 records (synthetic, same format and length)
through `prep` and a 2-trial, 1-epoch `tiny` search on one node.

Measured: prep records/s and shard bytes; the search driver's peak RSS (its kernel high-water
mark, VmHWM: every page it ever had resident, shared object-store pages included) against
the train + val signal bytes it serves; each trial's peak private (anonymous) memory against
the same bytes (a private copy of the data would be >= 1.0); the object store's peak use
(one copy per node: ~1.0). Target (asserted): driver peak RSS <= 1.2x the signal bytes.

Run: `.venv/bin/python -m pytest -m benchmark -s tests/benchmarks/bench_scale.py`. For a
smaller run set ECGTUNE_BENCH_SCALE_RECORDS (e.g. 8000): the driver's ~0.54 GiB does not grow
with the data, so below ~5,000 records it exceeds 1.2x of it and the assertion fails. The
full size needs ~9 GB of disk under the temporary directory (raw records are deleted once
the shards are written) and ~12 GB of free memory (the shard-loading task peaks at ~2x the
data while Ray stores its result).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.benchmark
RECORDS = int(os.environ.get("ECGTUNE_BENCH_SCALE_RECORDS", "45152"))
MAX_DRIVER_RATIO = 1.2  # DESIGN.md: the driver holds <= 1.2x the signal bytes it loads
GiB = 2**30

SPACE = """
base: tiny
fixed: {train.epochs: 1, train.crop_len: 1024, train.batch_size: 32, train.augment: false,
        train.steps_per_epoch: 20}
params:
  fusion: {choice: [concat]}
"""

# The search driver runs as `ecgtune search` would: a fresh process, so its high-water mark
# is the search's alone.
DRIVER = r"""
import json, sys
from pathlib import Path
from ecgtune.search.run import SearchOptions, run_search
from ecgtune.search.tracking import default_tracking_uri

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0

data, work, space = sys.argv[1:4]
rss_before = status("VmRSS")
opts = SearchOptions(data=Path(data), space=space, name="scale", num_samples=2,
                     max_concurrent=2, num_cpus=2, tracking_uri=default_tracking_uri(work),
                     storage=str(Path(work) / "ray"), verbose=0)
result = run_search(opts)
print(json.dumps({"hwm": status("VmHWM"), "rss_before": rss_before,
                  "trials": len(result.trials), "complete": result.complete}))
"""


def _plasma_bytes(pid: int) -> int:
    """Shared memory the raylet's object store has allocated: its /dev/shm file is sparse, so
    the blocks it holds are the bytes objects occupy (the file's size is the capacity)."""
    total = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if "plasma" in os.readlink(f"/proc/{pid}/fd/{fd}"):
                total += os.stat(f"/proc/{pid}/fd/{fd}").st_blocks * 512
        except OSError:
            continue
    return total


def _anonymous_bytes(pid: int) -> int:
    """A process's anonymous memory: its private heap, where a private copy would live."""
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Anonymous:"):
                return int(line.split()[1]) * 1024
    return 0


def _sample_workers(stop: threading.Event, peak: dict[str, dict[int, int]]) -> None:
    """Peak RSS and anonymous memory of this process's trial workers and of the worker that
    loads the shards into the object store; the object store's peak use."""
    import psutil

    me = psutil.Process()
    while not stop.is_set():
        for proc in me.children(recursive=True):
            try:
                name = proc.name()
                if name == "raylet":
                    peak["store"][proc.pid] = max(peak["store"].get(proc.pid, 0),
                                                  _plasma_bytes(proc.pid))
                    continue
                kind = ("trial" if "ImplicitFunc" in name
                        else "loader" if "_load_for_store" in name else None)
                if kind is None:
                    continue
                rss, anon = proc.memory_info().rss, _anonymous_bytes(proc.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
                continue
            for key, value in ((f"{kind}_rss", rss), (f"{kind}_anon", anon)):
                peak[key][proc.pid] = max(peak[key].get(proc.pid, 0), value)
        time.sleep(0.2)


def _prepare(tmp: Path) -> tuple[Path, dict[str, float]]:
    from ecgtune.data_prep import prepare, synthesize

    records = tmp / "records"
    synthesize(records, RECORDS, seed=1, workers=2)
    raw = sum(p.stat().st_size for p in records.rglob("*") if p.is_file())
    result = prepare(records, tmp / "prepared", workers=2, shard_size=1000, progress=False)
    shutil.rmtree(records)  # only one full-size copy on disk at a time
    shards = sum(p.stat().st_size for p in (tmp / "prepared" / "shards").glob("*.parquet"))
    return tmp / "prepared", {"raw": raw, "shards": shards, "prep_s": result.seconds,
                              "prep_rate": result.records_per_second,
                              "written": result.manifest["records_written"]}


def _signal_bytes(prepared: Path) -> int:
    """Bytes of the int16 train + val signals the search serves to its trials (prep writes
    one fold per shard, so the manifest's row counts are the folds' row counts)."""
    from ecgtune.data_prep import fold_roles, read_manifest

    manifest = read_manifest(prepared)
    roles = fold_roles(manifest)
    wanted = {*roles["train"], *roles["val"]}
    assert all(len(s["folds"]) == 1 for s in manifest["shards"])
    rows = sum(int(s["rows"]) for s in manifest["shards"] if s["folds"][0] in wanted)
    return rows * 12 * int(manifest["preprocessing"]["n_samples"]) * 2


def _search(prepared: Path, work: Path) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    space = work / "space.yaml"
    space.write_text(SPACE)
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(prepared), str(work), str(space)],
        capture_output=True, text=True, timeout=3600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_search_memory_at_real_size(tmp_path):
    prepared, prep = _prepare(tmp_path)
    data_bytes = _signal_bytes(prepared)
    stop, peak = threading.Event(), {k: {} for k in
                                     ("trial_rss", "trial_anon", "loader_rss", "loader_anon",
                                               "store")}
    sampler = threading.Thread(target=_sample_workers, args=(stop, peak), daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        driver = _search(prepared, tmp_path / "search")
    finally:
        stop.set()
        sampler.join()
    wall = time.perf_counter() - start
    trial_anon = max(peak["trial_anon"].values(), default=0)
    trial_rss = max(peak["trial_rss"].values(), default=0)
    loader_rss = max(peak["loader_rss"].values(), default=0)
    store = max(peak["store"].values(), default=0)
    ratios = {"driver": driver["hwm"] / data_bytes, "trial": trial_anon / data_bytes,
              "store": store / data_bytes}
    print(f"\nscale: {RECORDS:,} synthetic records ({prep['written']:,} written), "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"prep: {prep['prep_rate']:,.0f} records/s ({prep['prep_s']:.0f} s, 2 workers); "
          f"raw {prep['raw'] / GiB:.2f} GiB -> shards {prep['shards'] / GiB:.2f} GiB")
    print(f"search: 2 trials x 1 epoch, tiny, object store, {wall:.0f} s; train + val signals "
          f"{data_bytes / GiB:.2f} GiB")
    print(f"driver peak RSS {driver['hwm'] / GiB:.2f} GiB (after imports "
          f"{driver['rss_before'] / GiB:.2f}): {ratios['driver']:.2f}x the data")
    print(f"trial peak private {trial_anon / GiB:.2f} GiB ({ratios['trial']:.2f}x), peak RSS "
          f"{trial_rss / GiB:.2f} GiB, {len(peak['trial_anon'])} trial processes")
    print(f"loader task peak RSS {loader_rss / GiB:.2f} GiB (sampled, "
          f"{loader_rss / data_bytes:.2f}x; its worker exits after the load)")
    print(f"object store peak {store / GiB:.2f} GiB ({ratios['store']:.2f}x)")
    print(f"ratio driver peak RSS / data = {ratios['driver']:.2f} (target <= {MAX_DRIVER_RATIO})")
    assert driver["complete"] and driver["trials"] == 2
    assert ratios["driver"] <= MAX_DRIVER_RATIO, f"driver peak {ratios['driver']:.2f}x the data"
    # No trial holds a private copy (that would be >= 1.0), and the store holds one.
    assert peak["trial_anon"] and ratios["trial"] < 1.0, f"trial private {ratios['trial']:.2f}x"
    assert 0.9 <= ratios["store"] < 1.5, f"object store {ratios['store']:.2f}x the data"
