"""Folds by iterative multi-label stratification (Sechidis, Tsoumakas & Vlahavas, ECML PKDD 2011).

The algorithm: repeatedly take the label with the fewest remaining examples; give each of its
examples to the fold that most lacks that label (ties: the fold that most lacks examples
overall, then random); finally spread label-less examples over the folds that most lack
examples. Within one label the fold sequence depends only on the two "lacking" counters, never
on which example is placed, so each label is handled as one batch: a short scalar loop picks the
folds, then numpy assigns them and updates all other labels' counters at once. Counters are
kept as integers scaled by the number of folds so ties are exact. Records without any label
are stratified as one extra pseudo-label, which spreads them evenly too.

Own implementation rather than `iterative-stratification`: that package imports scikit-learn
(1.5 s per prep run here) and builds on its private API.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import PrepError

__all__ = ["EXTERNAL", "EXTERNAL_FOLD", "FOLD_ROLES", "N_FOLDS", "assign_folds", "fold_counts",
           "fold_roles", "folds_manifest"]

N_FOLDS = 10
EXTERNAL = "external"
# The held-out sources' records (`prep --holdout-source`): one fold after the stratified ones.
EXTERNAL_FOLD = N_FOLDS
FOLD_ROLES: dict[str, list[int]] = {
    "train": [0, 1, 2, 3, 4, 5, 6],
    "val": [7],  # early stopping, search objective, per-trial thresholds
    "ensemble": [8],  # ensemble selection, calibration, ensemble thresholds
    "test": [9],  # reported once, never fitted on
    # Sources held out whole: never trained, validated or calibrated on, reported beside the
    # test fold. Empty unless prep held a source out; no other role may name its fold.
    EXTERNAL: [],
}
_OPTIONAL_ROLES = frozenset({EXTERNAL})


def fold_roles(manifest: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Role (`train`, `val`, `ensemble`, `test`, `external`) -> folds, as the dataset's
    manifest records them (`folds.roles`); `FOLD_ROLES` only for a manifest that records none.
    `external` is () when no source was held out.

    The manifest is the authority: code that trains, selects or reports asks it which folds
    play which role instead of assuming the numbers; as each fold has one role, asking for
    train, val, ensemble or test folds can never give an external one."""
    recorded = (manifest.get("folds") or {}).get("roles")
    roles = FOLD_ROLES if recorded is None else recorded
    missing = sorted(set(FOLD_ROLES) - set(roles) - _OPTIONAL_ROLES)
    if missing:
        raise PrepError(f"manifest fold roles lack {', '.join(missing)}: got {sorted(roles)}")
    out = {role: tuple(int(f) for f in roles.get(role, ())) for role in FOLD_ROLES}
    n_folds = int((manifest.get("folds") or {}).get("n", N_FOLDS))
    seen: dict[int, str] = {}
    for role, folds in out.items():
        if not folds and role not in _OPTIONAL_ROLES:
            raise PrepError(f"manifest fold role {role!r} has no folds")
        for fold in folds:
            if not 0 <= fold < n_folds:
                raise PrepError(f"manifest fold role {role!r} names fold {fold}; the data has "
                                f"folds 0..{n_folds - 1}")
            if fold in seen:
                raise PrepError(f"manifest fold {fold} has two roles: {seen[fold]} and {role}")
            seen[fold] = role
    return out


def _fold_sequence(
    need_label: list[int], need_all: list[int], m: int, k: int, rng: np.random.Generator
) -> list[int]:
    """Folds for m consecutive examples; updates the (scaled) need counters in place."""
    seq = []
    for _ in range(m):
        best = max(need_label)
        cands = [j for j in range(len(need_label)) if need_label[j] == best]
        if len(cands) > 1:
            best_all = max(need_all[j] for j in cands)
            cands = [j for j in cands if need_all[j] == best_all]
        j = cands[0] if len(cands) == 1 else cands[int(rng.integers(len(cands)))]
        seq.append(j)
        need_label[j] -= k
        need_all[j] -= k
    return seq


def assign_folds(labels: np.ndarray, n_folds: int = N_FOLDS, seed: int = 0) -> np.ndarray:
    """Fold index (int8, 0..n_folds-1) for each row of a (N, C) 0/1 label matrix.

    Deterministic for (labels, n_folds, seed); rows are visited in a seeded random order.
    """
    y = np.asarray(labels).astype(bool)
    if y.ndim != 2:
        raise ValueError("labels must be a (N, C) matrix")
    # Label-less records become one more "label", so they too are spread evenly rather than
    # only filling whatever room the labelled records leave.
    y = np.concatenate([y, ~y.any(axis=1, keepdims=True)], axis=1)
    n = y.shape[0]
    k = n_folds
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    y = y[order]
    folds = np.full(n, -1, dtype=np.int64)
    # need * k: desired minus assigned, scaled by k so the desired N/k stays an integer.
    need_all = [n] * k
    need = np.tile(y.sum(axis=0, dtype=np.int64), (k, 1))  # (k, C)
    remaining = np.ones(n, dtype=bool)
    left = y.sum(axis=0, dtype=np.int64)
    while left.any():
        positive = np.flatnonzero(left)
        fewest = positive[left[positive] == left[positive].min()]
        lab = int(fewest[0] if fewest.size == 1 else fewest[rng.integers(fewest.size)])
        rows = np.flatnonzero(remaining & y[:, lab])
        need_label = need[:, lab].tolist()
        seq = np.array(_fold_sequence(need_label, need_all, rows.size, k, rng), dtype=np.int64)
        folds[rows] = seq
        onehot = np.zeros((rows.size, k), dtype=np.int64)
        onehot[np.arange(rows.size), seq] = 1
        need -= k * (onehot.T @ y[rows].astype(np.int64))
        remaining[rows] = False
        left -= y[rows].sum(axis=0, dtype=np.int64)
    out = np.empty(n, dtype=np.int8)
    out[order] = folds
    return out


def fold_counts(labels: np.ndarray, folds: np.ndarray, n_folds: int = N_FOLDS) -> np.ndarray:
    """(n_folds, C) positives per fold and label."""
    onehot = np.zeros((len(folds), n_folds), dtype=np.int64)
    onehot[np.arange(len(folds)), folds] = 1
    return onehot.T @ np.asarray(labels, dtype=np.int64)


def folds_manifest(
    labels: np.ndarray, folds: np.ndarray, names: tuple[str, ...], seed: int,
    n_folds: int = N_FOLDS, holdout_sources: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The manifest's `folds` block, counted over the records actually written. With
    `holdout_sources`, their records are fold `EXTERNAL_FOLD` (role `external`), one more
    than the stratified `n_folds`."""
    roles: dict[str, list[int]] = {r: f for r, f in FOLD_ROLES.items() if r != EXTERNAL}
    extra: dict[str, Any] = {}
    if holdout_sources:
        roles[EXTERNAL] = [n_folds]
        extra["holdout_sources"] = list(holdout_sources)
        n_folds += 1
    counts = fold_counts(labels, folds, n_folds)
    return {
        "n": n_folds,
        "seed": seed,
        "method": "iterative multi-label stratification (Sechidis et al. 2011)",
        "roles": roles,
        **extra,
        "records": np.bincount(folds, minlength=n_folds).tolist(),
        "counts": {name: counts[:, j].tolist() for j, name in enumerate(names)},
    }
