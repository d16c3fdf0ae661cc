"""ensembles.build.selection: Caruana-style greedy selection with replacement, bagging,
baselines."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecgtune.ensembles.build.selection import (
    SELECTION_METRICS,
    EnsembleSelector,
    best_single_member,
    uniform_average,
)


def _naive_greedy(probs, y, metric, init_size, max_rounds, tol=0.0):
    """Reference implementation: re-average from scratch for every candidate."""
    score = SELECTION_METRICS[metric]
    member_scores = np.array([score(y, p[None])[0] for p in probs])
    ranked = np.argsort(-member_scores, kind="stable")
    prefix = [score(y, probs[ranked[:j]].mean(axis=0)[None])[0] for j in range(1, init_size + 1)]
    bag = list(ranked[: int(np.argmax(prefix)) + 1])
    current = max(prefix)
    for _ in range(max_rounds):
        cands = [score(y, probs[[*bag, m]].mean(axis=0)[None])[0] for m in range(len(probs))]
        best = int(np.argmax(cands))
        if not cands[best] > current + tol:
            break
        bag.append(best)
        current = cands[best]
    return np.bincount(bag, minlength=len(probs)), current


@pytest.mark.parametrize("metric", sorted(SELECTION_METRICS))
def test_selection_equals_naive_reaveraging(members, metric):
    probs, y = members(n_members=5, n=300, c=4, seed=1)
    sel = EnsembleSelector(metric=metric, init_size=2, max_rounds=8,
                           uniform_candidate=False).fit(probs, y)
    counts, score = _naive_greedy(probs, y, metric, 2, 8)
    np.testing.assert_array_equal(sel.counts_, counts)
    assert sel.score_ == pytest.approx(score, abs=1e-9)


@pytest.mark.parametrize("metric", sorted(SELECTION_METRICS))
@pytest.mark.parametrize("init_size", [1, 3, 6])
@pytest.mark.parametrize("bags", [0, 4])
def test_never_worse_than_best_member(members, metric, init_size, bags):
    probs, y = members(seed=2)
    sel = EnsembleSelector(metric=metric, init_size=init_size, bags=bags).fit(probs, y)
    _, best = best_single_member(probs, y, metric)
    assert sel.score_ >= best
    # score_ is the metric of what predict returns.
    assert SELECTION_METRICS[metric](y, sel.predict(probs)[None])[0] == pytest.approx(sel.score_)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n_members=st.integers(1, 6),
    init_size=st.integers(1, 5),
    bags=st.integers(0, 3),
)
def test_never_worse_property(seed, n_members, init_size, bags):
    rng = np.random.default_rng(seed)
    y = rng.random((40, 3)) < 0.3
    y[0], y[1] = True, False  # every label has both classes
    probs = np.round(rng.random((n_members, 40, 3)), 1)
    sel = EnsembleSelector(init_size=init_size, bags=bags, seed=seed).fit(probs, y)
    assert sel.score_ >= sel.member_scores_.max() - 1e-12
    assert sel.weights_.sum() == pytest.approx(1.0)


def test_ensemble_beats_best_member_on_complementary_members(members):
    probs, y = members(n_members=8, seed=3)
    sel = EnsembleSelector().fit(probs, y)
    _, best = best_single_member(probs, y)
    assert sel.score_ > best + 0.01
    assert np.all(np.diff(sel.history_) > 0)  # only improving additions are taken
    assert sel.history_[-1] == sel.score_


def test_fitted_attributes(members):
    probs, y = members(seed=4)
    names = [f"trial_{i}" for i in range(len(probs))]
    sel = EnsembleSelector(max_rounds=5).fit(probs, y, names=names)
    assert sel.weights_.shape == (len(probs),)
    assert sel.weights_.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(sel.weights_, sel.counts_ / sel.counts_.sum())
    np.testing.assert_array_equal(sel.selected_, np.flatnonzero(sel.weights_ > 0))
    assert sel.names_ == names
    assert sel.counts_.sum() <= 3 + 5
    expected = np.einsum("m,mnc->nc", sel.weights_, probs)
    np.testing.assert_allclose(sel.predict(probs), expected)


def test_bagging_is_reproducible_and_uses_all_bags(members):
    probs, y = members(n_members=10, seed=5)
    a = EnsembleSelector(bags=6, bag_fraction=0.5, seed=11).fit(probs, y)
    b = EnsembleSelector(bags=6, bag_fraction=0.5, seed=11).fit(probs, y)
    np.testing.assert_array_equal(a.counts_, b.counts_)
    assert a.history_ == b.history_
    assert len(a.history_) == 6 or a.bagging_fallback_
    assert a.counts_.sum() >= 6  # every bag contributes at least its best member
    seeds = {tuple(EnsembleSelector(bags=6, seed=s).fit(probs, y).counts_) for s in range(4)}
    assert len(seeds) > 1


def test_baselines(members):
    probs, y = members(seed=6)
    idx, score = best_single_member(probs, y)
    assert score == pytest.approx(
        max(SELECTION_METRICS["macro_auprc"](y, p[None])[0] for p in probs)
    )
    assert SELECTION_METRICS["macro_auprc"](y, probs[idx][None])[0] == pytest.approx(score)
    np.testing.assert_allclose(uniform_average(probs), probs.mean(axis=0))


def test_round_trip_and_errors(members):
    probs, y = members(seed=7)
    sel = EnsembleSelector(bags=2).fit(probs, y)
    again = EnsembleSelector.from_dict(json.loads(json.dumps(sel.to_dict())))
    np.testing.assert_array_equal(again.predict(probs), sel.predict(probs))
    with pytest.raises(ValueError, match="valid"):
        EnsembleSelector(metric="accuracy").fit(probs, y)
    with pytest.raises(RuntimeError, match="not fitted"):
        EnsembleSelector().predict(probs)
    with pytest.raises(ValueError, match="member"):
        sel.predict(probs[:2])
    with pytest.raises(ValueError, match="undefined"):
        EnsembleSelector().fit(probs, np.zeros_like(y))


@pytest.mark.parametrize("metric", sorted(SELECTION_METRICS))
def test_uniform_average_is_a_candidate_and_the_better_one_is_kept(metric):
    # Six equally skilled members with independent noise: their average beats any one.
    rng = np.random.default_rng(8)
    y = rng.random((600, 4)) < 0.3
    probs = 1 / (1 + np.exp(-(2.0 * y - 1.0 + rng.normal(0, 1.5, (6, 600, 4)))))
    score = SELECTION_METRICS[metric]
    uniform = score(y, probs.mean(axis=0)[None])[0]
    # Greedy capped at the best single member: the average of complementary members wins.
    capped = EnsembleSelector(metric=metric, init_size=1, max_rounds=0).fit(probs, y)
    assert capped.selection_score_ == pytest.approx(capped.member_scores_.max())
    assert capped.uniform_score_ == pytest.approx(uniform)
    assert uniform > capped.selection_score_
    assert capped.chosen_ == "uniform" and capped.score_ == pytest.approx(uniform)
    np.testing.assert_allclose(capped.weights_, np.full(6, 1 / 6))
    np.testing.assert_allclose(capped.predict(probs), probs.mean(axis=0))
    # Without the candidate the capped selection keeps its best member.
    plain = EnsembleSelector(metric=metric, init_size=1, max_rounds=0,
                             uniform_candidate=False).fit(probs, y)
    assert plain.chosen_ == "greedy" and len(plain.selected_) == 1
    # Uncapped: whichever scores better on the fitting data is what predict returns.
    full = EnsembleSelector(metric=metric).fit(probs, y)
    assert full.score_ == pytest.approx(max(full.selection_score_, full.uniform_score_))
    assert full.chosen_ == ("uniform" if full.uniform_score_ > full.selection_score_
                            else "greedy")
    assert score(y, full.predict(probs)[None])[0] == pytest.approx(full.score_)
    saved = full.to_dict()
    assert saved["chosen"] == full.chosen_ and saved["uniform_score"] == full.uniform_score_


def test_greedy_kept_when_it_beats_the_uniform_average(members):
    probs, y = members(n_members=4, seed=9)
    rng = np.random.default_rng(0)
    noise = rng.random((4, *y.shape))  # four uninformative members drag the average down
    sel = EnsembleSelector().fit(np.concatenate([probs, noise]), y)
    assert sel.chosen_ == "greedy" and sel.selection_score_ > sel.uniform_score_
    assert not set(sel.selected_) & {4, 5, 6, 7}
