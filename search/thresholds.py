"""Per-label decision thresholds fitted on predictions: F1 / F-beta per label, the
challenge-style score of all labels jointly, or a target sensitivity / specificity per label
(clinical operating points), optionally with a stated confidence: the exact binomial
(Clopper-Pearson) one-sided lower bound of the rate must reach the target
(`fit_thresholds`, `THRESHOLD_OBJECTIVES`, `clopper_pearson_lower`, `required_count`).

Trials fit them on the validation fold, the ensemble on its own fold after calibration. Like
`search.metrics`, numpy only (scipy's beta quantile for the confidence bound, imported there).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ecgtune.search.metrics import (
    ArrayLike,
    as_label_matrix,
    as_score_matrix,
    challenge_weight_matrix,
    threshold_vector,
)

__all__ = ["THRESHOLD_OBJECTIVES", "clopper_pearson_lower", "clopper_pearson_upper",
           "fit_thresholds", "required_count"]


def clopper_pearson_lower(k: ArrayLike, n: ArrayLike, confidence: float) -> np.ndarray:
    """One-sided lower confidence bound at ``confidence`` of a proportion with ``k``
    successes in ``n`` trials (Clopper-Pearson, exact binomial): the beta quantile
    B(1 - confidence; k, n - k + 1), 0 when k is 0. Elementwise; NaN where n is 0."""
    from scipy.special import betaincinv

    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        bound = betaincinv(np.maximum(k, 1.0), np.maximum(n - k + 1.0, 1.0), 1.0 - confidence)
    bound = np.where(k <= 0, 0.0, bound)
    return np.where(n <= 0, np.nan, bound)


def clopper_pearson_upper(k: ArrayLike, n: ArrayLike, confidence: float) -> np.ndarray:
    """One-sided upper confidence bound at ``confidence`` (1 when k == n); with
    `clopper_pearson_lower` at (1 + level) / 2 the two-sided exact interval at ``level``."""
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    return 1.0 - clopper_pearson_lower(n - k, n, confidence)


def required_count(n: int, target: float, confidence: float | None) -> int | None:
    """The fewest successes out of ``n`` whose rate reaches ``target``: the plain rate
    (k / n >= target, counted exactly) without a confidence, else the Clopper-Pearson lower
    bound at ``confidence`` (>= target). None when even n of n does not reach it (too few
    records for that confidence)."""
    n = int(n)
    if n <= 0:
        return None
    if confidence is None:
        return int(np.ceil(np.round(target * n, 9)))
    # The bound grows with k, so the first k that reaches the target is the answer.
    bounds = clopper_pearson_lower(np.arange(n + 1), n, confidence)
    ok = np.flatnonzero(bounds >= target)
    return int(ok[0]) if len(ok) else None


def _pick_cut(gain: np.ndarray, valid: np.ndarray) -> tuple[int, float]:
    """Index of the best valid cut (middle one among exact ties) and its value."""
    g = np.where(valid, gain, -np.inf)
    best = g.max()
    tied = np.flatnonzero(g >= best - 1e-12 * max(1.0, abs(best)))
    return int(tied[(len(tied) - 1) // 2]), float(best)


def _threshold_at(s_sorted: np.ndarray, k: int) -> float:
    """Threshold that predicts exactly the first k+1 sorted (descending) scores positive:
    halfway to the next lower score, so that nearby unseen scores fall on the same side."""
    if k + 1 >= len(s_sorted):
        return float(s_sorted[k])
    t = 0.5 * (s_sorted[k] + s_sorted[k + 1])
    return float(t) if s_sorted[k + 1] < t <= s_sorted[k] else float(s_sorted[k])


def _fallback(fallback: ArrayLike, n_labels: int) -> np.ndarray:
    return threshold_vector(fallback, n_labels).copy()


def _fit_fbeta(
    y: np.ndarray,
    p: np.ndarray,
    *,
    beta: float,
    min_positives: int,
    fallback: ArrayLike,
) -> np.ndarray:
    n, c = y.shape
    thresholds = _fallback(fallback, c)
    pos = np.count_nonzero(y, axis=0)
    fit = pos >= max(int(min_positives), 1)
    if not fit.any():
        return thresholds
    cols = np.flatnonzero(fit)
    order = np.argsort(-p[:, cols], axis=0)
    s = np.take_along_axis(p[:, cols], order, axis=0)
    tp = np.cumsum(np.take_along_axis(y[:, cols], order, axis=0), axis=0, dtype=np.float64)
    fp = np.arange(1, n + 1)[:, None] - tp
    fn = pos[cols][None, :] - tp
    b2 = beta * beta
    score = (1 + b2) * tp / ((1 + b2) * tp + b2 * fn + fp)
    # Only cuts between distinct scores are realisable by a threshold.
    is_end = np.r_[s[1:] != s[:-1], np.ones((1, len(cols)), dtype=bool)]
    for j, col in enumerate(cols):
        k, _ = _pick_cut(score[:, j], is_end[:, j])
        thresholds[col] = _threshold_at(s[:, j], k)
    return thresholds


def _fit_f1(
    y: np.ndarray, p: np.ndarray, *, beta: float, min_positives: int, fallback: ArrayLike
) -> np.ndarray:
    if beta != 1.0:
        raise ValueError("objective 'f1' uses beta=1; use objective='fbeta' for other betas")
    return _fit_fbeta(y, p, beta=1.0, min_positives=min_positives, fallback=fallback)


def _fit_challenge(
    y: np.ndarray,
    p: np.ndarray,
    *,
    beta: float,
    min_positives: int,
    fallback: ArrayLike,
    weights: ArrayLike | None = None,
    groups: Sequence[Any] | None = None,
    normal_index: int | None = None,
    max_sweeps: int = 10,
) -> np.ndarray:
    del normal_index  # the normalisation is affine: it does not move the maximiser
    c = y.shape[1]
    w = challenge_weight_matrix(c, weights, groups)
    thresholds = _fit_fbeta(y, p, beta=beta, min_positives=min_positives, fallback=fallback)
    fit = np.count_nonzero(y, axis=0) >= max(int(min_positives), 1)
    yf = y.astype(np.float64)
    yw = yf @ w  # yw[i, k]: reward record i earns for predicting label k
    pred = p >= thresholds
    orders = np.argsort(-p, axis=0)
    for _ in range(max_sweeps):
        improved = False
        for col in np.flatnonzero(fit):
            o = pred[:, col]
            reward_rest = np.sum(yw * pred, axis=1) - yw[:, col] * o
            union_rest = np.count_nonzero(y | pred, axis=1) - (y[:, col] | o)
            # Per-record contribution with this label off (0) or on (1); others fixed.
            r0 = reward_rest / np.maximum(union_rest + y[:, col], 1)
            r1 = (reward_rest + yw[:, col]) / np.maximum(union_rest + 1, 1)
            order = orders[:, col]
            s = p[order, col]
            gains = np.r_[0.0, np.cumsum((r1 - r0)[order])]  # gains[k]: top k predicted
            valid = np.r_[True, s[1:] != s[:-1], True]
            current = float(np.sum(np.where(o, r1, r0)) - r0.sum())
            k, best = _pick_cut(gains, valid)
            if best > current + 1e-12 * max(1.0, abs(current)):
                thresholds[col] = (
                    float(np.nextafter(s[0], np.inf)) if k == 0 else _threshold_at(s, k - 1)
                )
                pred[:, col] = p[:, col] >= thresholds[col]
                improved = True
        if not improved:
            break
    return thresholds


def _fit_rate(
    y: np.ndarray,
    p: np.ndarray,
    *,
    beta: float,
    min_positives: int,
    fallback: ArrayLike,
    rate: str,
    target: float | None = None,
    confidence: float | None = None,
) -> np.ndarray:
    """Per label, the cut that reaches ``target`` sensitivity with the fewest records
    predicted positive, or ``target`` specificity with the most (see `fit_thresholds`)."""
    del beta
    if target is None or not 0.0 < float(target) <= 1.0:
        raise ValueError(f"objective {rate!r} needs a target in (0, 1], got {target!r}")
    if confidence is not None and not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"objective {rate!r} needs a confidence in (0, 1), got {confidence!r}")
    n, c = y.shape
    thresholds = _fallback(fallback, c)
    pos = np.count_nonzero(y, axis=0)
    fit = pos >= max(int(min_positives), 1)
    if rate == "specificity":
        fit &= pos < n  # a specificity needs negatives
    for col in np.flatnonzero(fit):
        order = np.argsort(-p[:, col], kind="stable")
        s = p[order, col]
        tp = np.cumsum(y[order, col], dtype=np.int64)
        # Only cuts between distinct scores are realisable by a threshold.
        is_end = np.r_[s[1:] != s[:-1], True]
        if rate == "sensitivity":
            # Counts, not ratios: 0.9 * 10 positives needs 9 (rounded before ceil/floor). A
            # confidence the positives cannot reach falls back to the plain target.
            need = required_count(int(pos[col]), target, confidence)
            if need is None:
                need = required_count(int(pos[col]), target, None)
            ok = np.flatnonzero(is_end & (tp >= int(need or 0)))
            thresholds[col] = _threshold_at(s, int(ok[0]))
        else:
            fp = np.arange(1, n + 1) - tp
            negatives = int(n - pos[col])
            tn_needed = required_count(negatives, target, confidence)
            if tn_needed is None:
                tn_needed = required_count(negatives, target, None)
            allowed = negatives - int(tn_needed or 0)
            ok = np.flatnonzero(is_end & (fp <= allowed))
            # No cut keeps the specificity: predict nobody positive.
            thresholds[col] = (_threshold_at(s, int(ok[-1])) if len(ok)
                               else float(np.nextafter(s[0], np.inf)))
    return thresholds


def _fit_sensitivity(y: np.ndarray, p: np.ndarray, **kwargs: Any) -> np.ndarray:
    return _fit_rate(y, p, rate="sensitivity", **kwargs)


def _fit_specificity(y: np.ndarray, p: np.ndarray, **kwargs: Any) -> np.ndarray:
    return _fit_rate(y, p, rate="specificity", **kwargs)


THRESHOLD_OBJECTIVES: dict[str, Callable[..., np.ndarray]] = {
    "f1": _fit_f1,
    "fbeta": _fit_fbeta,
    "challenge": _fit_challenge,
    "sensitivity": _fit_sensitivity,
    "specificity": _fit_specificity,
}


def fit_thresholds(
    y: ArrayLike,
    p: ArrayLike,
    objective: str = "f1",
    beta: float = 1.0,
    min_positives: int = 5,
    fallback: float | ArrayLike = 0.5,
    **options: Any,
) -> np.ndarray:
    """One decision threshold per label (C,), used as ``p >= threshold``.

    Objectives (``THRESHOLD_OBJECTIVES``):

    - ``"f1"`` / ``"fbeta"``: per label, maximise F1 / F-beta over every cut between distinct
      scores (one sort and cumulative sums per label, so every candidate is exact). Among cuts
      with the same best score the middle one is taken, and the threshold lies halfway between
      the last score predicted positive and the next lower score, so that the cut generalises
      rather than sitting on a training score.
    - ``"challenge"``: maximise the challenge-style score (`challenge_score`) of all labels
      jointly by coordinate ascent over labels, starting from the F-beta thresholds; each step
      tries every cut of one label (including "never positive") with the others fixed and keeps
      it only if the score improves, so the score never decreases. Options: ``weights`` (C, C)
      reward matrix or ``groups`` (one group id per label, see `challenge_weights`),
      ``max_sweeps`` (default 10); ``normal_index`` is accepted for symmetry with
      `challenge_score` but does not change the fitted thresholds.
    - ``"sensitivity"`` / ``"specificity"`` with ``target=S`` in (0, 1]: per label, the
      highest cut whose sensitivity is >= S (fewest records predicted positive), or the
      lowest cut whose specificity is >= S (most predicted positive; when no cut reaches it,
      one above every score: nobody positive). Rates are compared as integer counts, so a
      target met exactly counts as met. The threshold lies halfway to the next lower score
      as for F1: on the fitted predictions it makes exactly the decisions of that cut. For
      specificity a label whose records are all positive keeps the fallback. With
      ``confidence=C`` in (0, 1), the one-sided Clopper-Pearson lower bound at C of the rate
      on these records must be >= S instead (`required_count`); a label with too few
      positives (negatives) for any cut to reach that bound gets the plain target's cut.

    Fallback: a label with fewer than ``min_positives`` positives (at least 1 is always
    required, so nothing is ever fitted on zero positives) is not fitted and gets ``fallback``
    (a float, or one value per label), 0.5 by default: the natural cut of a calibrated
    probability. Deterministic: no randomness is involved.
    """
    if objective not in THRESHOLD_OBJECTIVES:
        raise ValueError(
            f"unknown threshold objective {objective!r}; valid: {sorted(THRESHOLD_OBJECTIVES)}"
        )
    if beta <= 0:
        raise ValueError("beta must be positive")
    y = as_label_matrix(y)
    p = as_score_matrix(p, y)
    return THRESHOLD_OBJECTIVES[objective](
        y, p, beta=beta, min_positives=min_positives, fallback=fallback, **options
    )
