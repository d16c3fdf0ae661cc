from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ecgtune.data_prep import (
    AugmentConfig,
    BatchLoader,
    ECGDataset,
    NormStats,
    fixed_windows,
    load_shards,
    normalize,
    window_starts,
)


def _ramps(n: int, length: int = 5000) -> np.ndarray:
    """Record i, lead l, sample t holds t (+ l * 7 + i): a crop's first value is its start."""
    t = np.arange(length, dtype=np.int16)
    return (t[None, None, :] + (np.arange(12)[None, :, None] * 7 + np.arange(n)[:, None, None]))


def test_batches_shapes_dtypes_and_length(prepared: Path) -> None:
    ds = load_shards(prepared)
    train = BatchLoader(ds, 32, 4096, train=True)
    assert len(train) == len(ds) // 32
    batches = list(train)
    assert len(batches) == len(train)
    x, y = batches[0]
    assert x.shape == (32, 12, 4096) and x.dtype == torch.float32
    assert y.shape == (32, 20) and y.dtype == torch.float32
    assert set(torch.unique(y).tolist()) <= {0.0, 1.0}
    evaluation = BatchLoader(ds, 64, 2048, train=False)
    assert len(evaluation) == -(-len(ds) // 64)
    assert sum(len(x) for x, _ in evaluation) == len(ds)


def test_train_crops_are_random_windows_of_one_record(make_dataset) -> None:
    ds = make_dataset(_ramps(40))
    loader = BatchLoader(ds, 8, crop_len=1000, train=True, seed=3, normalization="dataset")
    firsts = []
    for epoch in range(3):
        for x, _ in loader:
            raw = np.rint(x.numpy() * 1000).astype(np.int64)  # mean 0, std 1 mV: back to units
            # every crop is a contiguous window, all leads from the same record and start
            np.testing.assert_array_equal(raw[:, :, 1:] - raw[:, :, :-1], 1)
            np.testing.assert_array_equal(raw[:, 5] - raw[:, 0], 35)
            firsts.append(raw[:, 0, 0])
        assert loader.epoch == epoch + 1
    firsts = np.concatenate(firsts)
    assert firsts.min() >= 0 and firsts.max() <= 4000 + 39  # start <= 5000 - 1000, + record id
    assert len(np.unique(firsts)) > len(firsts) // 2  # crops vary


def test_train_crop_starts_cover_the_valid_range(make_dataset) -> None:
    ds = make_dataset(np.repeat(_ramps(1), 64, axis=0))  # identical records: value == start
    loader = BatchLoader(ds, 64, crop_len=4096, train=True, seed=0)
    starts = np.concatenate(
        [np.rint(x[:, 0, 0].numpy() * 1000) for _ in range(20) for x, _ in loader]
    )
    assert starts.min() >= 0 and starts.max() <= 5000 - 4096
    assert starts.max() - starts.min() > 800  # spread over the 905 possible starts


def test_shuffle_and_epochs_are_seeded(make_dataset) -> None:
    ds = make_dataset(_ramps(50))
    a, b = BatchLoader(ds, 10, 256, seed=1), BatchLoader(ds, 10, 256, seed=1)
    first_a, first_b = [x for x, _ in a], [x for x, _ in b]
    assert all(torch.equal(p, q) for p, q in zip(first_a, first_b, strict=True))
    second_a = [x for x, _ in a]
    assert not all(torch.equal(p, q) for p, q in zip(first_a, second_a, strict=True))
    a.set_epoch(0)
    assert all(torch.equal(p, q) for p, q in zip(first_a, [x for x, _ in a], strict=True))


def test_eval_crops_are_centred_and_deterministic(make_dataset) -> None:
    ds = make_dataset(_ramps(10))
    loader = BatchLoader(ds, 4, crop_len=4096, train=False)
    runs = [[x.clone() for x, _ in loader] for _ in range(2)]
    assert all(torch.equal(p, q) for p, q in zip(*runs, strict=True))
    x = torch.cat(runs[0]).numpy()
    expected = normalize(fixed_windows(ds.signals, 4096)[:, 0], ds.norm_stats, 1000)
    np.testing.assert_array_equal(x, expected)
    assert np.rint(x[0, 0, 0] * 1000) == (5000 - 4096) // 2 + int(ds.signals[0, 0, 0])


def test_labels_follow_their_records(make_dataset) -> None:
    n = 30
    labels = np.zeros((n, 20), np.uint8)
    labels[np.arange(n), np.arange(n) % 20] = 1
    signals = np.zeros((n, 12, 5000), np.int16)
    signals[:, :, :] = (np.arange(n) % 20)[:, None, None]  # value encodes the label index
    ds = make_dataset(signals, labels)
    for x, y in BatchLoader(ds, 7, 512, train=True, seed=0):
        np.testing.assert_array_equal(np.rint(x[:, 0, 0].numpy() * 1000), y.argmax(1).numpy())


def test_dataset_normalization_matches_formula(prepared: Path) -> None:
    ds = load_shards(prepared)
    stats = ds.norm_stats
    x = normalize(ds.signals[:3], stats, ds.gain)
    expected = (ds.signals[:3] / 1000.0 - stats.mean[:, None]) / stats.std[:, None]
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)
    # over the train folds the standardised leads have mean ~0 and std ~1
    train = normalize(ds.select(range(7)).signals, stats, ds.gain)
    np.testing.assert_allclose(train.mean(axis=(0, 2)), 0, atol=1e-3)
    np.testing.assert_allclose(train.std(axis=(0, 2)), 1, atol=1e-3)


def test_record_normalization(make_dataset) -> None:
    rng = np.random.default_rng(0)
    signals = (rng.normal(0, 300, (8, 12, 5000)) + rng.normal(0, 500, (8, 12, 1))).astype(np.int16)
    signals[0, 3] = 5  # a flat window stays finite
    x, _ = next(iter(BatchLoader(make_dataset(signals), 8, 1024, train=False,
                                 normalization="record")))
    x = x.numpy()
    assert np.isfinite(x).all()
    np.testing.assert_allclose(np.delete(x.reshape(96, -1), 3, 0).mean(1), 0, atol=1e-4)
    np.testing.assert_allclose(np.delete(x.reshape(96, -1), 3, 0).std(1), 1, atol=1e-3)


def test_augmentation_changes_train_batches_only(make_dataset) -> None:
    ds = make_dataset(np.repeat(_ramps(1), 16, axis=0))
    aug = AugmentConfig(scale=(0.5, 0.5), noise_std=0.0)
    x, _ = next(iter(BatchLoader(ds, 16, 100, train=True, augment=aug)))
    plain, _ = next(iter(BatchLoader(ds, 16, 100, train=True)))
    np.testing.assert_allclose(x.numpy(), plain.numpy() * 0.5, rtol=1e-6)
    noisy, _ = next(iter(BatchLoader(ds, 16, 100, train=True, augment=AugmentConfig(scale=None))))
    residual = (noisy - plain).numpy()
    assert 0.005 < residual.std() < 0.02
    ev, _ = next(iter(BatchLoader(ds, 16, 100, train=False, augment=aug)))
    ev2, _ = next(iter(BatchLoader(ds, 16, 100, train=False)))
    assert torch.equal(ev, ev2)


@pytest.mark.parametrize(("threads", "prefetch"), [(1, 3), (2, 0), (3, 5)])
def test_threads_and_prefetch_give_the_same_batches(make_dataset, threads, prefetch) -> None:
    ds = make_dataset(_ramps(64))
    aug = AugmentConfig()
    plain = [(x, y) for x, y in BatchLoader(ds, 8, 512, seed=4, augment=aug)]
    ahead = BatchLoader(ds, 8, 512, seed=4, augment=aug, threads=threads, prefetch=prefetch)
    fetched = list(ahead)
    assert len(fetched) == len(plain) == len(ahead)
    for (x1, y1), (x2, y2) in zip(plain, fetched, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    it = iter(BatchLoader(ds, 8, 512, prefetch=2, threads=threads))
    next(it)
    it.close()  # stopping early shuts the pool down


def test_fold_selection_is_a_view_when_contiguous(prepared: Path) -> None:
    ds = load_shards(prepared)
    assert np.all(np.diff(ds.folds) >= 0)
    train = ds.select(folds=range(7))
    assert np.shares_memory(train.signals, ds.signals) and train.signals.base is not None
    assert set(np.unique(train.folds)) == set(range(7))
    val = ds.select([7])
    assert np.shares_memory(val.signals, ds.signals) and set(val.folds) == {7}
    mixed = ds.select([2, 9])
    assert not np.shares_memory(mixed.signals, ds.signals)
    assert set(np.unique(mixed.folds)) == {2, 9}
    assert len(train) + len(val) + len(ds.select([8, 9])) == len(ds)
    part = load_shards(prepared, folds=[8, 9])
    np.testing.assert_array_equal(part.signals, ds.select([8, 9]).signals)
    np.testing.assert_array_equal(part.records, ds.select([8, 9]).records)


def test_pickle_and_read_only_arrays(prepared: Path) -> None:
    ds = load_shards(prepared, folds=[0, 1])
    again = pickle.loads(pickle.dumps(ds, protocol=5))
    np.testing.assert_array_equal(again.signals, ds.signals)
    assert again.label_map == ds.label_map and again.manifest == ds.manifest
    for name in ("signals", "labels", "records", "folds", "age", "sex"):
        getattr(again, name).setflags(write=False)  # as the Ray object store hands them out
    x, _ = next(iter(BatchLoader(again, 4, 4096)))
    assert x.shape == (4, 12, 4096)
    assert again.select([1]).signals.flags.writeable is False


def test_memmap_round_trip_and_pickling_by_reference(prepared: Path, tmp_path: Path) -> None:
    ds = load_shards(prepared)
    ds.save_memmap(tmp_path / "mm")
    mm = ECGDataset.open_memmap(tmp_path / "mm")
    assert isinstance(mm.signals, np.memmap) and not mm.signals.flags.writeable
    for name in ("signals", "labels", "records", "folds", "sex"):
        np.testing.assert_array_equal(getattr(mm, name), getattr(ds, name))
    np.testing.assert_array_equal(np.isnan(mm.age), np.isnan(ds.age))
    train = mm.select(range(7))
    blob = pickle.dumps(train)
    assert len(blob) < 100_000  # a reference to the files, not the data
    again = pickle.loads(blob)
    assert isinstance(again.signals, np.memmap)
    np.testing.assert_array_equal(again.signals, ds.select(range(7)).signals)
    x, _ = next(iter(BatchLoader(again, 8, 4096, train=False)))
    np.testing.assert_array_equal(x.numpy(), next(iter(BatchLoader(ds.select(range(7)), 8, 4096,
                                                                   train=False)))[0].numpy())


def test_public_transforms() -> None:
    sig = np.arange(12 * 5000, dtype=np.int16).reshape(12, 5000) % 1000
    assert window_starts(5000, 4096).tolist() == [452]
    assert window_starts(5000, 1000, 5).tolist() == [0, 1000, 2000, 3000, 4000]
    w = fixed_windows(sig, 1000, 3)
    assert w.shape == (3, 12, 1000)
    np.testing.assert_array_equal(w[1], sig[:, 2000:3000])
    batch = fixed_windows(np.stack([sig, sig]), 4096)
    assert batch.shape == (2, 1, 12, 4096)
    stats = NormStats(np.full(12, 0.5, np.float32), np.full(12, 2.0, np.float32))
    np.testing.assert_allclose(normalize(sig, stats, 1000), (sig / 1000 - 0.5) / 2, atol=1e-6)
    with pytest.raises(ValueError):
        fixed_windows(sig, 6000)
    with pytest.raises(ValueError):
        normalize(sig, None, 1000, mode="dataset")
