"""How trials get the training data: one copy per node, never one per trial.

`object_store`: the driver loads the folds once and `tune.with_parameters` puts them in Ray's
object store; trials on a node map the same shared-memory buffers (numpy arrays come back
zero-copy and read-only).
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
from typing import Protocol

from filelock import FileLock

from ecgtune.data_prep import ECGDataset, load_shards

DATA_SHARING = ("object_store", "memmap")


class DataHandle(Protocol):
    def get(self) -> ECGDataset: ...


@dataclass(frozen=True)
class ObjectStoreData:
    dataset: ECGDataset

    def get(self) -> ECGDataset:
        return self.dataset


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
    strategy: str, dataset: ECGDataset, shard_dir: str | Path, folds: tuple[int, ...],
    manifest_sha256: str,
) -> DataHandle:
    if strategy == "object_store":
        return ObjectStoreData(dataset)
    if strategy == "memmap":
        return MemmapData(str(Path(shard_dir).resolve()), folds, manifest_sha256)
    raise ValueError(f"unknown data sharing {strategy!r}; valid: {', '.join(DATA_SHARING)}")
