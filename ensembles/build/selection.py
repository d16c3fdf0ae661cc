"""Ensemble selection from a library of trained members (Caruana et al., ICML 2004).

Greedy forward selection with replacement: start from the best few members, then repeatedly
add the member (possibly one already in) whose addition most improves the metric of the
averaged probabilities; members picked several times get proportionally more weight.
Optionally bagged: the greedy search runs on random subsets of the members and the pick
counts are summed, which reduces overfitting of the selection to the fitting fold. Finally the
uniform average of all members competes with the selection, and the better one is kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from ecgtune.ensembles.build.selection_metrics import (
    SELECTION_METRICS,
    SelectionMetric,
    by_source,
)
from ecgtune.ensembles.options import FitOptions

__all__ = [
    "SELECTION_METRICS",
    "EnsembleSelector",
    "best_single_member",
    "uniform_average",
]

# Candidates scored per batch: bounds memory to about CHUNK x N x C floats.
_CHUNK = 16

def _get_metric(name: str) -> SelectionMetric:
    if name not in SELECTION_METRICS:
        raise ValueError(f"unknown selection metric {name!r}; valid: {sorted(SELECTION_METRICS)}")
    return SELECTION_METRICS[name]


def _check_inputs(member_probs: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(member_probs, dtype=np.float64)
    if probs.ndim != 3:
        raise ValueError(f"member_probs must be (M, N, C), got shape {probs.shape}")
    y = np.asarray(y)
    if y.shape != probs.shape[1:]:
        raise ValueError(f"labels shape {y.shape} does not match member_probs {probs.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be binary (0/1)")
    return probs, y.astype(bool)


def _score_batch(metric: SelectionMetric, y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Scores of a stack of averaged predictions (K, N, C), NaN mapped to -inf."""
    out = np.concatenate([metric(y, probs[i : i + _CHUNK]) for i in range(0, len(probs), _CHUNK)])
    return np.where(np.isnan(out), -np.inf, out)


def best_single_member(member_probs: Any, y: Any, metric: str = "macro_auprc") -> tuple[int, float]:
    """Index and score of the best member on (``member_probs``, ``y``); the first on ties."""
    probs, y = _check_inputs(member_probs, y)
    scores = _score_batch(_get_metric(metric), y, probs)
    best = int(np.argmax(scores))
    return best, float(scores[best])


def uniform_average(member_probs: Any) -> np.ndarray:
    """Plain mean of all members' probabilities (N, C): the no-selection baseline."""
    return np.asarray(member_probs, dtype=np.float64).mean(axis=0)


class EnsembleSelector:
    """Greedy forward ensemble selection with replacement, sklearn style.

    Parameters: the selection fields of `FitOptions` (pass one, or its fields as keywords).
    metric: name in ``SELECTION_METRICS`` (higher is better).
    init_size: the ensemble starts as the average of the best ``j <= init_size`` members
        (sorted by the metric), with ``j`` the prefix length that scores best, so the start is
        never worse than the best single member.
    max_rounds: at most this many members are added after the start.
    bags: when > 0, run the selection ``bags`` times on random subsets of
        ``round(bag_fraction * M)`` members (seeded by ``seed``) and sum the pick counts.
    tol: an addition must improve the metric by more than ``tol``; otherwise selection stops.
    uniform_candidate: the uniform average of all members competes with the greedy result;
        the uniform average replaces the selection when it scores strictly better.

    Fitted attributes: ``counts_`` (M,) picks per member, ``weights_`` (M,) = counts / sum,
    ``selected_`` indices with weight > 0, ``score_`` the metric of the final ensemble on the
    fitting data, ``history_`` the metric after the start and each addition (with bagging: after
    each bag is added to the running total), ``member_scores_`` (M,), ``best_member_``,
    ``names_``, ``bagging_fallback_`` (True when the bagged ensemble scored below the best single
    member and the unbagged selection was used instead), ``chosen_`` ("greedy" or "uniform"),
    ``selection_score_`` and ``uniform_score_`` (the two candidates' scores).

    Guarantee: ``score_ >= member_scores_[best_member_]`` on the fitting data, because the
    start contains the best member, only improving additions are taken, a bagged result that
    falls short is replaced by the unbagged one, and the uniform average only replaces a
    result it beats.
    """

    def __init__(self, options: FitOptions | None = None, **params: Any) -> None:
        # The parameters are `FitOptions` fields (declared, with their defaults and checks,
        # once there); keywords override ``options``: EnsembleSelector(metric="neg_brier").
        base = options if options is not None else FitOptions()
        self.options = dataclasses.replace(base, **params) if params else base

    @property
    def metric(self) -> str:
        return self.options.metric

    def _scorer(self) -> SelectionMetric:
        """The metric, per source of the fitting records when ``select_by`` asks for it."""
        metric = _get_metric(self.metric)
        sources = getattr(self, "_sources", None)
        if self.options.select_by == "all" or sources is None:
            return metric
        return by_source(metric, sources, self.options.select_by)

    def _greedy(
        self, probs: np.ndarray, y: np.ndarray, pool: np.ndarray, scores: np.ndarray
    ) -> tuple[np.ndarray, list[float]]:
        """Selection restricted to member indices ``pool``; returns counts (M,) and history."""
        metric = self._scorer()
        counts = np.zeros(len(probs), dtype=np.int64)
        ranked = pool[np.argsort(-scores[pool], kind="stable")]
        # Start: the best-scoring prefix of the ranking (prefix 1 is the best member).
        n_init = max(1, min(self.options.init_size, len(ranked)))
        prefix_sums = np.cumsum(probs[ranked[:n_init]], axis=0)
        sizes = np.arange(1, n_init + 1)[:, None, None]
        prefix_scores = _score_batch(metric, y, prefix_sums / sizes)
        j = int(np.argmax(prefix_scores)) + 1
        counts[ranked[:j]] += 1
        total = prefix_sums[j - 1].copy()  # running sum of the selected members' probabilities
        current = float(prefix_scores[j - 1])
        history = [current]
        candidates = probs[pool]
        for _ in range(self.options.max_rounds):
            k = int(counts.sum())
            cand_scores = np.concatenate(
                [
                    _score_batch(metric, y, (total + candidates[i : i + _CHUNK]) / (k + 1))
                    for i in range(0, len(pool), _CHUNK)
                ]
            )
            best = int(np.argmax(cand_scores))
            if not cand_scores[best] > current + self.options.tol:
                break
            counts[pool[best]] += 1
            total += candidates[best]
            current = float(cand_scores[best])
            history.append(current)
        return counts, history

    def fit(
        self, member_probs: Any, y: Any, names: Sequence[str] | None = None,
        sources: Any = None,
    ) -> EnsembleSelector:
        """Select on member probabilities (M, N, C) and labels (N, C); returns ``self``.
        ``sources`` (N,): each record's source, for ``select_by`` worst-source/mean-source
        (every score, the members' included, is then that rule over the sources)."""
        probs, y = _check_inputs(member_probs, y)
        n_members = len(probs)
        if n_members == 0:
            raise ValueError("need at least one member")
        if names is not None and len(names) != n_members:
            raise ValueError(f"got {len(names)} names for {n_members} members")
        if self.options.select_by != "all":
            if sources is None or len(sources) != probs.shape[1]:
                raise ValueError(f"select_by {self.options.select_by!r} needs one source per "
                                 "record")
            self._sources = np.asarray(sources).astype(str)
        metric = self._scorer()
        member_scores = _score_batch(metric, y, probs)
        if not np.isfinite(member_scores).any():
            raise ValueError(f"metric {self.metric!r} is undefined on the fitting data")
        best_member = int(np.argmax(member_scores))
        counts, history = self._select(probs, y, member_scores, best_member)
        self.selection_score_ = history[-1]
        self.uniform_score_ = float(_score_batch(metric, y, probs.mean(axis=0)[None])[0])
        # The uniform average of every member is a candidate too: greedy selection can
        # overfit the fitting fold, and then the plain average is the better bet. It has to
        # score strictly better: on a tie the selection stands, as before this candidate.
        self.chosen_ = "greedy"
        if self.options.uniform_candidate and self.uniform_score_ > self.selection_score_:
            self.chosen_ = "uniform"
            counts = np.ones(n_members, dtype=np.int64)
            history = [*history, self.uniform_score_]
        self.counts_ = counts
        self.weights_ = counts / counts.sum()
        self.selected_ = np.flatnonzero(counts)
        self.history_ = history
        self.score_ = history[-1]
        self.member_scores_ = member_scores
        self.best_member_ = best_member
        self.names_ = (list(names) if names is not None
                       else [f"member_{i}" for i in range(n_members)])
        assert self.score_ >= member_scores[best_member], "selection lost to its best member"
        return self

    def _select(
        self, probs: np.ndarray, y: np.ndarray, member_scores: np.ndarray, best_member: int
    ) -> tuple[np.ndarray, list[float]]:
        """Greedy selection, bagged when asked: pick counts (M,) and the score history."""
        n_members = len(probs)
        everyone = np.arange(n_members)
        self.bagging_fallback_ = False
        if self.options.bags == 0:
            return self._greedy(probs, y, everyone, member_scores)
        metric = self._scorer()
        rng = np.random.default_rng(self.options.seed)
        bag_size = max(1, round(self.options.bag_fraction * n_members))
        counts = np.zeros(n_members, dtype=np.int64)
        history = []
        for _ in range(self.options.bags):
            pool = np.sort(rng.choice(n_members, size=bag_size, replace=False))
            counts += self._greedy(probs, y, pool, member_scores)[0]
            avg = np.tensordot(counts / counts.sum(), probs, axes=1)
            history.append(float(_score_batch(metric, y, avg[None])[0]))
        if history[-1] < member_scores[best_member]:
            self.bagging_fallback_ = True
            return self._greedy(probs, y, everyone, member_scores)
        return counts, history

    def predict(self, member_probs: Any) -> np.ndarray:
        """Weighted average (N, C) of member probabilities (M, N, C), members in fit order."""
        if not hasattr(self, "weights_"):
            raise RuntimeError("EnsembleSelector is not fitted; call fit() first")
        probs = np.asarray(member_probs, dtype=np.float64)
        if probs.ndim != 3 or len(probs) != len(self.weights_):
            raise ValueError(
                f"expected ({len(self.weights_)}, N, C) member probabilities, got {probs.shape}"
            )
        # Only members with weight contribute; skipping the rest saves work at predict time.
        return np.tensordot(self.weights_[self.selected_], probs[self.selected_], axes=1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description of the fitted selection (names, counts, weights)."""
        if not hasattr(self, "weights_"):
            raise RuntimeError("EnsembleSelector is not fitted; call fit() first")
        o = self.options
        out = {
            "metric": self.metric,
            "names": list(self.names_),
            "counts": [int(c) for c in self.counts_],
            "weights": [float(w) for w in self.weights_],
            "score": float(self.score_),
            "history": [float(h) for h in self.history_],
            "params": {"init_size": o.init_size, "max_rounds": o.max_rounds, "bags": o.bags,
                       "bag_fraction": o.bag_fraction, "seed": o.seed, "tol": o.tol,
                       "uniform_candidate": o.uniform_candidate, "select_by": o.select_by},
        }
        if hasattr(self, "chosen_"):
            out |= {"chosen": self.chosen_, "selection_score": float(self.selection_score_),
                    "uniform_score": float(self.uniform_score_)}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnsembleSelector:
        """Rebuild a fitted selector (enough to ``predict``) from `to_dict` output."""
        sel = cls(metric=data["metric"], **data.get("params", {}))
        sel.counts_ = np.asarray(data["counts"], dtype=np.int64)
        sel.weights_ = sel.counts_ / sel.counts_.sum()
        sel.selected_ = np.flatnonzero(sel.counts_)
        sel.names_ = list(data["names"])
        sel.score_ = float(data["score"])
        sel.history_ = [float(h) for h in data.get("history", [sel.score_])]
        return sel
