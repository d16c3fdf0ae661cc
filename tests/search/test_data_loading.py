"""The search driver checks the data without loading a signal, and the object-store handle
is filled by a task on the driver's node, not by the driver."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ecgtune.data_prep import ShardChecksumError, load_shards
from ecgtune.data_prep.dataset import fold_counts
from ecgtune.search.data import ObjectStoreRef, make_data_handle
from ecgtune.search.run import check_search_data, load_search_data


def _corrupt_first_shard(data_dir):
    shard = sorted((data_dir / "shards").glob("*.parquet"))[0]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    return shard


def test_fold_counts_match_the_loaded_rows(prepared_data):
    folds = [0, 3, 7, 9]
    loaded = load_shards(prepared_data, folds=folds)
    counts = fold_counts(prepared_data, folds)
    assert counts == {f: int((loaded.folds == f).sum()) for f in folds}
    assert all(n > 0 for n in counts.values())


def test_fold_counts_name_a_corrupt_shard(prepared_data, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(prepared_data, copy)
    shard = _corrupt_first_shard(copy)
    with pytest.raises(ShardChecksumError, match=shard.name):
        fold_counts(copy, range(10))
    assert sum(fold_counts(copy, range(10), verify=False).values()) > 0


def test_check_search_data_describes_what_load_search_data_loads(prepared_data):
    checked = check_search_data(prepared_data)
    loaded, dataset = load_search_data(prepared_data)
    assert checked == loaded
    assert checked.label_names == tuple(dataset.label_map.names)


@pytest.mark.slow  # starts Ray
def test_shards_go_straight_into_the_object_store(prepared_data, tmp_path):
    import ray

    folds = tuple(range(8))
    reference = load_shards(prepared_data, folds=list(folds))
    copy = tmp_path / "data"
    shutil.copytree(prepared_data, copy)
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        handle = make_data_handle("object_store", None, prepared_data, folds, "sha")
        assert isinstance(handle, ObjectStoreRef) and handle.rows == len(reference)

        @ray.remote
        def probe(h: ObjectStoreRef) -> tuple[bool, bool, int, int]:
            signals = h.get().signals
            return (signals.flags.owndata, signals.flags.writeable,
                    int(signals.sum(dtype=np.int64)), len(signals))

        owndata, writeable, total, rows = ray.get(probe.remote(handle))
        # A shard that changed after the driver's check fails the load, naming the file.
        shard = _corrupt_first_shard(copy)
        with pytest.raises(ShardChecksumError, match=shard.name):
            make_data_handle("object_store", None, copy, folds, "sha")
    finally:
        ray.shutdown()
    assert not owndata and not writeable  # a view of the node's shared object store
    assert (total, rows) == (int(reference.signals.sum(dtype=np.int64)), len(reference))
