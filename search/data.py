"""How trials get the training data: one copy per node, never one per trial.

`object_store`: a task on the driver's node loads the folds once and returns them, so they
land in that node's object store while the driver holds only the reference (a driver-side
`ray.put` would map the object-store copy beside its own: twice the data); trials on a node
map the same shared-memory buffers (numpy arrays come back zero-copy and read-only).
`memmap`: the first trial on a node materialises the folds into a node-local `.npy` cache
(under a file lock); every trial memory-maps it, so the page cache holds the one copy. Useful
when the object store is too small for the data or the driver is far from the workers.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from filelock import FileLock

from ecgtune.data_prep import ECGDataset, load_shards
from ecgtune.search.options import DATA_SHARING


class DataHandle(Protocol):
    def get(self) -> ECGDataset: ...


@dataclass(frozen=True)
class ObjectStoreData:
    dataset: ECGDataset

    def get(self) -> ECGDataset:
        return self.dataset


@dataclass(frozen=True)
class ObjectStoreRef:
    """The folds as one object in the object store, loaded there by `put_shards`."""

    ref: Any  # ray.ObjectRef to an ECGDataset
    rows: int

    def get(self) -> ECGDataset:
        import ray

        return ray.get(self.ref)


def put_shards(shard_dir: str | Path, folds: tuple[int, ...]) -> ObjectStoreRef:
    """Load `folds` into the object store of this (the driver's) node without the driver
    holding them: the shards are on the driver's disk, so the task is pinned here, takes no
    CPU (a cluster's head may have none), and its worker exits afterwards, returning its
    transient heap copy to the OS. Needs Ray initialised; waits until the data is stored."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    # num_returns=2: two refs, not one (what the type stubs expect).
    load: Any = ray.remote(num_cpus=0, num_returns=2, max_calls=1)(_load_for_store)
    load = load.options(scheduling_strategy=here)
    rows_ref, data_ref = load.remote(str(Path(shard_dir).resolve()), folds)
    return ObjectStoreRef(data_ref, int(ray.get(rows_ref)))  # raises the task's error


def _load_for_store(shard_dir: str, folds: tuple[int, ...]) -> tuple[int, ECGDataset]:
    dataset = load_shards(shard_dir, folds=list(folds), verify=True)
    return len(dataset), dataset


@dataclass(frozen=True)
class MemmapData:
    shard_dir: str
    folds: tuple[int, ...]
    manifest_sha256: str
    cache_root: str | None = None

    @property
    def cache_dir(self) -> Path:
        root = Path(self.cache_root or Path(tempfile.gettempdir()) / "ecgtune-cache")
        key = hashlib.sha256(
            f"{self.manifest_sha256}:{','.join(map(str, self.folds))}".encode()
        ).hexdigest()[:16]
        return root / key

    def get(self) -> ECGDataset:
        cache = self.cache_dir
        done = cache / "COMPLETE"
        cache.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(cache) + ".lock"):
            if not done.exists():
                # In a short-lived process: the shards are read into one array before being
                # written out, and that transient copy must not stay in a trial's heap.
                ctx = multiprocessing.get_context("spawn")
                proc = ctx.Process(target=_materialise, args=(self.shard_dir, self.folds, cache))
                proc.start()
                proc.join()
                if proc.exitcode != 0 or not done.exists():
                    raise RuntimeError(
                        f"could not write the memory-mapped data cache {cache} from "
                        f"{self.shard_dir} (exit code {proc.exitcode})"
                    )
        return ECGDataset.open_memmap(cache)


def _materialise(shard_dir: str, folds: tuple[int, ...], cache: Path) -> None:
    load_shards(shard_dir, folds=list(folds), verify=True).save_memmap(cache)
    (cache / "COMPLETE").touch()


def make_data_handle(
    strategy: str, dataset: ECGDataset | None, shard_dir: str | Path, folds: tuple[int, ...],
    manifest_sha256: str,
) -> DataHandle:
    """A handle the trials `get()` the folds from. `object_store` with a `dataset` ships that
    dataset inside the handle; without one the shards go straight into the object store
    (`put_shards`, Ray must be running). `memmap` never needs the dataset."""
    if strategy == "object_store":
        return ObjectStoreData(dataset) if dataset is not None else put_shards(shard_dir, folds)
    if strategy == "memmap":
        return MemmapData(str(Path(shard_dir).resolve()), folds, manifest_sha256)
    raise ValueError(f"unknown data sharing {strategy!r}; valid: {', '.join(DATA_SHARING)}")
