from __future__ import annotations

import numpy as np
import pytest

from ecgtune.data_prep.errors import PrepError
from ecgtune.data_prep.folds import (
    FOLD_ROLES,
    assign_folds,
    fold_counts,
    fold_roles,
    folds_manifest,
)

# Prevalences shaped like the real table: a few common labels, many rare ones.
PREVALENCE = np.array([0.2, 0.003, 0.18, 0.33, 0.21, 0.03, 0.03, 0.01, 0.025, 0.03,
                       0.035, 0.008, 0.025, 0.13, 0.02, 0.003, 0.026, 0.024, 0.4, 0.002])


def _labels(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, 20)) < PREVALENCE).astype(np.uint8)


def test_every_label_is_spread_evenly() -> None:
    y = _labels(20_000)
    folds = assign_folds(y, 10, seed=0)
    assert folds.dtype == np.int8 and set(np.unique(folds)) == set(range(10))
    sizes = np.bincount(folds, minlength=10)
    assert np.abs(sizes - len(y) / 10).max() <= 0.03 * len(y) / 10
    counts = fold_counts(y, folds)
    expected = y.sum(axis=0) / 10
    # iterative stratification keeps each label within one example of its share per fold
    assert np.abs(counts - expected).max() <= 1.0


def test_records_without_labels_are_spread_too() -> None:
    y = _labels(5_000)
    y[:1500] = 0
    folds = assign_folds(y, 10, seed=1)
    empty = folds[y.sum(axis=1) == 0]
    per_fold = np.bincount(empty, minlength=10)
    assert per_fold.max() - per_fold.min() <= 2
    sizes = np.bincount(folds, minlength=10)
    assert np.abs(sizes - 500).max() <= 40  # sizes give way a little to the even spread


def test_deterministic_for_a_seed_and_different_across_seeds() -> None:
    y = _labels(3_000)
    a, b, c = assign_folds(y, seed=5), assign_folds(y, seed=5), assign_folds(y, seed=6)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_as_good_as_the_reference_implementation() -> None:
    iterstrat = pytest.importorskip("iterstrat.ml_stratifiers")
    y = _labels(10_000, seed=3)
    ref = np.empty(len(y), int)
    splitter = iterstrat.MultilabelStratifiedKFold(n_splits=10, shuffle=True, random_state=0)
    for k, (_, test) in enumerate(splitter.split(np.zeros(len(y)), y)):
        ref[test] = k
    expected = y.sum(axis=0) / 10
    ours = np.abs(fold_counts(y, assign_folds(y, seed=0)) - expected).sum()
    theirs = np.abs(fold_counts(y, ref) - expected).sum()
    assert ours <= theirs * 1.1 + 1


def test_tiny_inputs() -> None:
    assert assign_folds(np.zeros((0, 20), np.uint8)).size == 0
    folds = assign_folds(np.eye(3, 20, dtype=np.uint8))
    assert len(set(folds.tolist())) == 3


def test_roles_cover_every_fold_once() -> None:
    assert sorted(f for fs in FOLD_ROLES.values() for f in fs) == list(range(10))
    assert FOLD_ROLES["train"] == list(range(7))
    assert (FOLD_ROLES["val"], FOLD_ROLES["ensemble"], FOLD_ROLES["test"]) == ([7], [8], [9])


def test_fold_roles_come_from_the_manifest():
    labels = np.eye(4, dtype=np.uint8)[np.arange(40) % 4]
    folds = assign_folds(labels, seed=0)
    manifest = {"folds": folds_manifest(labels, folds, ("a", "b", "c", "d"), seed=0)}
    assert fold_roles(manifest) == {role: tuple(fs) for role, fs in FOLD_ROLES.items()}
    # Another layout recorded in the manifest wins over the defaults.
    manifest["folds"]["roles"] = {"train": [0, 1, 2, 3, 4, 5], "val": [6, 7], "ensemble": [8],
                                  "test": [9]}
    assert fold_roles(manifest)["val"] == (6, 7) and fold_roles(manifest)["train"][-1] == 5
    # A manifest that records no roles gets FOLD_ROLES.
    assert fold_roles({"folds": {"n": 10}})["test"] == (9,)


@pytest.mark.parametrize(("roles", "message"), [
    ({"train": [0], "val": [1], "ensemble": [2]}, "lack test"),
    ({"train": [0], "val": [0], "ensemble": [2], "test": [3]}, "fold 0 has two roles"),
    ({"train": [], "val": [1], "ensemble": [2], "test": [3]}, "'train' has no folds"),
    ({"train": [0], "val": [1, 10], "ensemble": [2], "test": [3]}, r"fold 10; .* 0\.\.9"),
])
def test_fold_roles_refuse_a_broken_manifest(roles, message):
    with pytest.raises(PrepError, match=message):
        fold_roles({"folds": {"n": 10, "roles": roles}})
