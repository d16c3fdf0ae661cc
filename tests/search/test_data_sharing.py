"""Both ways trials share one copy of the data per node."""

from __future__ import annotations

import numpy as np
import pytest

from ecgtune.data_prep import load_shards
from ecgtune.search.data import MemmapData, ObjectStoreData, make_data_handle


def test_memmap_handle_materialises_once_and_maps_read_only(prepared_data, tmp_path):
    folds = tuple(range(8))
    handle = MemmapData(str(prepared_data), folds, "sha-for-test", cache_root=str(tmp_path))
    first = handle.get()
    stamp = (handle.cache_dir / "signals.npy").stat().st_mtime_ns
    second = handle.get()  # a second trial on the node: maps the same file, writes nothing
    assert (handle.cache_dir / "signals.npy").stat().st_mtime_ns == stamp
    reference = load_shards(prepared_data, folds=list(folds))
    for data in (first, second):
        assert isinstance(data.signals, np.memmap) and not data.signals.flags.writeable
        np.testing.assert_array_equal(data.signals, reference.signals)
        np.testing.assert_array_equal(data.labels, reference.labels)
    # Selecting the training folds stays a view of the mapped file.
    assert np.shares_memory(first.select(folds=range(7)).signals, first.signals)


@pytest.mark.slow  # starts Ray
def test_object_store_handle_comes_back_zero_copy(prepared_data):
    import ray

    data = load_shards(prepared_data, folds=list(range(8)))
    handle = make_data_handle("object_store", data, prepared_data, tuple(range(8)), "sha")
    assert isinstance(handle, ObjectStoreData)
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        ref = ray.put(handle)

        @ray.remote
        def probe(h: ObjectStoreData) -> tuple[bool, bool, int]:
            signals = h.get().signals
            return signals.flags.owndata, signals.flags.writeable, int(signals.sum(dtype=np.int64))

        owndata, writeable, total = ray.get(probe.remote(ref))
    finally:
        ray.shutdown()
    # Read-only and not owning its buffer: a view of the node's shared object store.
    assert not owndata and not writeable
    assert total == int(data.signals.sum(dtype=np.int64))
