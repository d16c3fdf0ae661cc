"""Fast multi-label metrics: ranking (AUROC, AUPRC), confusion counts and what follows from
them (F-beta, precision, recall, specificity, kappa, Hamming loss), the challenge-style score.

Keys live in `search.metric_keys`, threshold fitting in `search.thresholds`.

Conventions used by every function here:

- ``y`` is a binary label matrix (N, C) and ``p`` a score matrix of the same shape (1-D inputs
  are treated as one label). Scores are usually probabilities but only their order matters
  for the ranking metrics.
- A sample is predicted positive for label ``c`` when ``p[:, c] >= thresholds[c]``.
- AUROC and AUPRC are undefined for a label whose ``y`` column has no positives or no
  negatives; such a label gets NaN in the per-label arrays and is left out of the macro
  average (``return_labels=True`` says which labels were averaged). A macro average is NaN
  only when no label is usable.
- Ranking and confusion-count metrics accept ``sample_weight`` of shape (N,) or (B, N); the
  2-D form evaluates B weightings at once (bootstrap resamples as multiplicity counts) and
  adds a leading axis of size B to the results.

This module is imported by the Ray trainable: it depends on numpy only (no torch, matplotlib,
scipy or sklearn at import time) so that importing it stays cheap.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ecgtune.search.metric_keys import (
    AUPRC,
    AUROC,
    F1,
    KAPPA,
    NPV,
    PRECISION,
    RECALL,
    SPECIFICITY,
    SUPPORT,
    THRESHOLD,
)

__all__ = [
    "ArrayLike",
    "ConfusionCounts",
    "as_label_matrix",
    "as_score_matrix",
    "auprc_per_label",
    "auroc_per_label",
    "challenge_score",
    "challenge_weight_matrix",
    "challenge_weights",
    "cohen_kappa_per_label",
    "confusion_counts",
    "f1_per_label",
    "fbeta_per_label",
    "hamming_loss",
    "macro_auprc",
    "macro_auroc",
    "macro_f1",
    "metrics_from_counts",
    "per_label_report",
    "per_source_macro_auprc",
    "pr_curve",
    "precision_per_label",
    "ranking_metrics_per_label",
    "recall_per_label",
    "specificity_per_label",
    "threshold_vector",
    "usable_labels",
]

# ---------------------------------------------------------------------------------------------
# Input handling.

ArrayLike = Any


def as_label_matrix(y: ArrayLike) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2:
        raise ValueError(f"labels must be 1-D or 2-D (N, C), got shape {y.shape}")
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise ValueError("labels must be binary (0/1)")
        y = y.astype(bool)
    return y


def as_score_matrix(p: ArrayLike, y: np.ndarray, *, batched: bool = False) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.ndim == 1:
        p = p[:, None]
    if batched and p.ndim == 3:
        shape_ok = p.shape[1:] == y.shape
    else:
        shape_ok = p.shape == y.shape
    if not shape_ok:
        raise ValueError(f"scores shape {p.shape} does not match labels shape {y.shape}")
    if np.isnan(p).any():
        raise ValueError("scores contain NaN")
    return p


def _weights(sample_weight: ArrayLike | None, n: int) -> np.ndarray | None:
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.ndim not in (1, 2) or w.shape[-1] != n:
        raise ValueError(f"sample_weight must have shape (N,) or (B, N) with N={n}, got {w.shape}")
    if (w < 0).any():
        raise ValueError("sample_weight must be non-negative")
    return w


def threshold_vector(thresholds: ArrayLike, n_labels: int) -> np.ndarray:
    """One float threshold per label (a scalar is broadcast); a wrong length is an error."""
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim == 0:
        t = np.full(n_labels, float(t))
    if t.shape != (n_labels,):
        raise ValueError(f"need one threshold per label ({n_labels}), got shape {t.shape}")
    return t


def _nanmean_last(x: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN (without a warning) where all are NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=-1)


def usable_labels(y: ArrayLike) -> np.ndarray:
    """Boolean mask (C,) of labels with at least one positive and one negative: the labels on
    which AUROC and AUPRC are defined."""
    y = as_label_matrix(y)
    pos = y.sum(axis=0)
    return (pos > 0) & (pos < y.shape[0])


# ---------------------------------------------------------------------------------------------
# Ranking metrics: one sort per (row, label), then cumulative sums. Tied scores form one group,
# which is exactly how sklearn's curves treat ties.


def _sorted_groups(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row of scores (R, N) ascending, carrying the labels along. Returns, over the
    flattened sorted rows, the mask of tie-group starts and the positions of positives."""
    r, n = s.shape
    is_start = np.empty(r * n, dtype=bool)
    if np.isfinite(s).all() and s.min() >= 0:
        # Non-negative floats order like their bit patterns, and their sign bit is free: pack
        # the label into the lowest bit and sort plain integers (about 2x faster than argsort
        # plus two gathers). Adding 0.0 copies and turns -0.0 into 0.0.
        keys = np.add(s, 0.0).view(np.uint64)
        keys <<= np.uint64(1)
        keys |= y
        keys.sort(axis=-1)
        flat = keys.ravel()
        # Neighbours that differ only in the label bit have tied scores.
        np.greater(flat[1:] ^ flat[:-1], np.uint64(1), out=is_start[1:])
        pos = np.flatnonzero(flat & np.uint64(1))
    else:
        order = np.argsort(s, axis=-1)
        vals = np.take_along_axis(s, order, axis=-1).ravel()
        np.not_equal(vals[1:], vals[:-1], out=is_start[1:])
        pos = np.flatnonzero(np.take_along_axis(y, order, axis=-1))
    is_start[::n] = True  # every row starts a new tie group
    return is_start, pos


def _auc_ap_terms(
    w: Any,
    pos_before: np.ndarray,
    pos_through: np.ndarray,
    all_before: np.ndarray,
    all_through: np.ndarray,
    n_pos: Any,
    n_all: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-positive terms of AUROC and AP (ascending order). A positive of weight ``w`` whose
    tie group spans sorted positions [a, g] beats the negatives before a and half of the tied
    ones; its AP term is the precision of the cut at its score (everything from a upward)."""
    neg_before = all_before - pos_before
    neg_tied = (all_through - all_before) - (pos_through - pos_before)
    auc = w * (neg_before + 0.5 * neg_tied)
    n_above = n_all - all_before
    precision = np.divide(
        n_pos - pos_before, n_above, out=np.zeros(np.shape(n_above)), where=n_above > 0
    )
    return auc, w * precision


def _ranking_rows(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(AUROC, AP) of each row of scores ``s`` (R, N) against boolean labels ``y`` (R, N).
    One sort per row; the rest works on the positives only (few, for imbalanced labels)."""
    r, n = s.shape
    is_start, pos = _sorted_groups(s, y)
    row = pos // n
    base = row * n
    n_pos_int = np.bincount(row, minlength=r)
    row_pos_base = (np.cumsum(n_pos_int) - n_pos_int)[row]  # positives in earlier rows
    if is_start.all():
        # No ties (the usual case for continuous scores): every group is a single sample.
        a = g = pos
        pos_before = np.arange(len(pos)) - row_pos_base
        pos_through = pos_before + 1
    else:
        starts = np.flatnonzero(is_start)
        k = np.searchsorted(starts, pos, side="right") - 1
        a = starts[k]
        nxt = np.minimum(k + 1, len(starts) - 1)
        g = np.where(k + 1 < len(starts), starts[nxt], r * n) - 1
        pos_before = np.searchsorted(pos, a, side="left") - row_pos_base
        pos_through = np.searchsorted(pos, g, side="right") - row_pos_base
    n_pos = n_pos_int.astype(np.float64)
    n_neg = n - n_pos
    auc, ap = _auc_ap_terms(
        1.0,
        pos_before.astype(np.float64),
        pos_through.astype(np.float64),
        (a - base).astype(np.float64),
        (g - base + 1).astype(np.float64),
        n_pos[row],
        float(n),
    )
    usable = (n_pos > 0) & (n_neg > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = np.bincount(row, auc, minlength=r) / (n_pos * n_neg)
        avg_precision = np.bincount(row, ap, minlength=r) / n_pos
    return np.where(usable, auroc, np.nan), np.where(usable, avg_precision, np.nan)


def _ranking_reweighted(
    y: np.ndarray, p: np.ndarray, w: np.ndarray, chunk: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """(AUROC, AP) per label under each row of weights ``w`` (B, N) -> (B, C). Each label is
    sorted once; a weighting then costs one gather and one cumulative sum."""
    b, c = w.shape[0], y.shape[1]
    auroc = np.full((b, c), np.nan)
    ap = np.full((b, c), np.nan)
    for j in range(c):
        order = np.argsort(p[:, j])
        s = p[order, j]
        pos = np.flatnonzero(y[order, j])
        if len(pos) == 0:
            continue
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        k = np.searchsorted(starts, pos, side="right") - 1
        a = starts[k]
        g = np.append(starts, len(s))[k + 1] - 1
        pos_a = np.searchsorted(pos, a, side="left")
        pos_g = np.searchsorted(pos, g, side="right")
        for lo in range(0, b, chunk):
            wo = w[lo : lo + chunk][:, order]
            cum_all = np.cumsum(wo, axis=1)
            cum_all0 = np.concatenate([np.zeros((len(wo), 1)), cum_all], axis=1)
            w_pos = wo[:, pos]
            cum_pos0 = np.concatenate([np.zeros((len(wo), 1)), np.cumsum(w_pos, axis=1)], axis=1)
            n_pos = cum_pos0[:, -1:]
            n_all = cum_all[:, -1:]
            auc_t, ap_t = _auc_ap_terms(
                w_pos,
                cum_pos0[:, pos_a],
                cum_pos0[:, pos_g],
                cum_all0[:, a],
                cum_all0[:, g + 1],
                n_pos,
                n_all,
            )
            n_neg = n_all - n_pos
            usable = ((n_pos > 0) & (n_neg > 0))[:, 0]
            with np.errstate(invalid="ignore", divide="ignore"):
                auc_j = auc_t.sum(axis=1) / (n_pos * n_neg)[:, 0]
                ap_j = ap_t.sum(axis=1) / n_pos[:, 0]
            auroc[lo : lo + chunk, j] = np.where(usable, auc_j, np.nan)
            ap[lo : lo + chunk, j] = np.where(usable, ap_j, np.nan)
    return auroc, ap


def _ranking_metrics(
    y: ArrayLike, p: ArrayLike, sample_weight: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(AUROC, AP) per label. ``p`` may carry a leading batch axis (K, N, C) -> (K, C);
    a 2-D ``sample_weight`` (B, N) gives (B, C)."""
    y = as_label_matrix(y)
    p = as_score_matrix(p, y, batched=True)
    n, c = y.shape
    w = _weights(sample_weight, n)
    if w is not None:
        if p.ndim == 3:
            raise ValueError("batched scores cannot be combined with sample_weight")
        auroc, ap = _ranking_reweighted(y, p, np.atleast_2d(w))
        return (auroc, ap) if w.ndim == 2 else (auroc[0], ap[0])
    batch = p.shape[:-2]
    # Rows are (batch..., label) pairs.
    rows = np.moveaxis(p, -1, -2).reshape(-1, n)
    y_rows = np.broadcast_to(y.T, (*batch, c, n)).reshape(-1, n)
    auroc, ap = _ranking_rows(rows, y_rows)
    return auroc.reshape(*batch, c), ap.reshape(*batch, c)


def ranking_metrics_per_label(
    y: ArrayLike, p: ArrayLike, sample_weight: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(AUROC, AUPRC) per label from one sort: cheaper than calling both functions."""
    return _ranking_metrics(y, p, sample_weight)


def auroc_per_label(
    y: ArrayLike, p: ArrayLike, sample_weight: ArrayLike | None = None
) -> np.ndarray:
    """Area under the ROC curve per label (C,), equal to sklearn's ``roc_auc_score`` (ties
    count one half). NaN for labels without both classes. ``p`` may be batched (K, N, C)."""
    return _ranking_metrics(y, p, sample_weight)[0]


def auprc_per_label(
    y: ArrayLike, p: ArrayLike, sample_weight: ArrayLike | None = None
) -> np.ndarray:
    """Average precision per label (C,), equal to sklearn's ``average_precision_score`` (step
    interpolation, tied scores form one threshold). NaN for labels without both classes."""
    return _ranking_metrics(y, p, sample_weight)[1]


def _macro(per_label: np.ndarray, return_labels: bool) -> Any:
    mean = _nanmean_last(per_label)
    macro: Any = float(mean) if np.ndim(mean) == 0 else mean
    if not return_labels:
        return macro
    used = ~np.isnan(per_label)
    return macro, (np.flatnonzero(used) if per_label.ndim == 1 else used)


def macro_auroc(
    y: ArrayLike,
    p: ArrayLike,
    sample_weight: ArrayLike | None = None,
    *,
    return_labels: bool = False,
) -> Any:
    """Mean AUROC over usable labels (float; an array for batched input). With
    ``return_labels=True`` also the indices of the labels averaged (a mask for batched input)."""
    return _macro(auroc_per_label(y, p, sample_weight), return_labels)


def macro_auprc(
    y: ArrayLike,
    p: ArrayLike,
    sample_weight: ArrayLike | None = None,
    *,
    return_labels: bool = False,
) -> Any:
    """Mean average precision over usable labels; the search objective (``OBJECTIVE``)."""
    return _macro(auprc_per_label(y, p, sample_weight), return_labels)


def per_source_macro_auprc(y: ArrayLike, p: ArrayLike, sources: ArrayLike) -> dict[str, float]:
    """Macro AUPRC of each source's records (over the labels with a positive and a negative
    among them), by source name in sorted order; a source with no such label is left out
    (nothing there can be ranked). The worst and mean of these are the `worst-source` and
    `mean-source` search objectives."""
    y = as_label_matrix(y)
    p = as_score_matrix(p, y)
    sources = np.asarray(sources).astype(str)
    if sources.shape != (y.shape[0],):
        raise ValueError(f"sources must be one per record ({y.shape[0]}), got {sources.shape}")
    out: dict[str, float] = {}
    for source in np.unique(sources):
        mask = sources == source
        value = macro_auprc(y[mask], p[mask])
        if not np.isnan(value):
            out[str(source)] = float(value)
    return out


def pr_curve(y: ArrayLike, p: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall curve of one label: (precision, recall, thresholds) at every distinct
    score, thresholds descending, starting from the highest threshold. Empty arrays when the
    label has no positives."""
    y = as_label_matrix(y)[:, 0]
    p = as_score_matrix(p, y[:, None])[:, 0]
    order = np.argsort(-p)
    s = p[order]
    tp = np.cumsum(y[order])
    fp = np.arange(1, len(s) + 1) - tp
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    if tp[-1] == 0:
        empty = np.empty(0)
        return empty, empty, empty
    return tp[last] / (tp[last] + fp[last]), tp[last] / tp[-1], s[last]


# ---------------------------------------------------------------------------------------------
# Thresholded metrics.


class ConfusionCounts(NamedTuple):
    """Per-label confusion counts (C,) or, for 2-D sample weights, (B, C); weighted counts are
    floats."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray


def confusion_counts(
    y: ArrayLike,
    p: ArrayLike,
    thresholds: ArrayLike,
    sample_weight: ArrayLike | None = None,
) -> ConfusionCounts:
    """True/false positives/negatives per label with ``p >= thresholds`` as positive."""
    y = as_label_matrix(y)
    p = as_score_matrix(p, y)
    t = threshold_vector(thresholds, y.shape[1])
    w = _weights(sample_weight, y.shape[0])
    pred = p >= t
    if w is None:
        tp = np.count_nonzero(pred & y, axis=0)
        pos = np.count_nonzero(y, axis=0)
        pred_pos = np.count_nonzero(pred, axis=0)
        n = y.shape[0]
    else:
        # Weighted counts as matrix products: B weightings cost one GEMM each.
        tp = w @ (pred & y).astype(np.float64)
        pos = w @ y.astype(np.float64)
        pred_pos = w @ pred.astype(np.float64)
        n = w.sum(axis=-1, keepdims=True) if w.ndim == 2 else w.sum()
    fp = pred_pos - tp
    fn = pos - tp
    return ConfusionCounts(tp, fp, fn, n - tp - fp - fn)


def _ratio(num: np.ndarray, den: np.ndarray, zero_division: float) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(
        num,
        den,
        out=np.full(np.broadcast_shapes(num.shape, den.shape), float(zero_division)),
        where=den > 0,
    )


def _fbeta_from_counts(cc: ConfusionCounts, beta: float, zero_division: float) -> np.ndarray:
    b2 = beta * beta
    return _ratio((1 + b2) * cc.tp, (1 + b2) * cc.tp + b2 * cc.fn + cc.fp, zero_division)


def _kappa_from_counts(cc: ConfusionCounts) -> np.ndarray:
    tp, fp, fn, tn = (np.asarray(x, dtype=np.float64) for x in cc)
    # Binary Cohen's kappa in closed form; undefined (NaN) when both raters use one class only.
    return _ratio(2.0 * (tp * tn - fn * fp), (tp + fp) * (fp + tn) + (tp + fn) * (fn + tn), np.nan)


def metrics_from_counts(cc: ConfusionCounts, zero_division: float = 0.0) -> dict[str, np.ndarray]:
    """F1, precision (PPV), recall, specificity, NPV (``zero_division`` where undefined) and
    kappa (NaN where undefined) from confusion counts, keyed by the shared metric names."""
    return {
        F1: _fbeta_from_counts(cc, 1.0, zero_division),
        PRECISION: _ratio(cc.tp, cc.tp + cc.fp, zero_division),
        RECALL: _ratio(cc.tp, cc.tp + cc.fn, zero_division),
        SPECIFICITY: _ratio(cc.tn, cc.tn + cc.fp, zero_division),
        NPV: _ratio(cc.tn, cc.tn + cc.fn, zero_division),
        KAPPA: _kappa_from_counts(cc),
    }


def fbeta_per_label(
    y: ArrayLike,
    p: ArrayLike,
    thresholds: ArrayLike,
    beta: float = 1.0,
    sample_weight: ArrayLike | None = None,
    zero_division: float = 0.0,
) -> np.ndarray:
    """F-beta per label. A label with no positives and no predicted positives has no defined
    F score and gets ``zero_division`` (0.0 like sklearn's default)."""
    cc = confusion_counts(y, p, thresholds, sample_weight)
    return _fbeta_from_counts(cc, beta, zero_division)


def f1_per_label(
    y: ArrayLike,
    p: ArrayLike,
    thresholds: ArrayLike,
    sample_weight: ArrayLike | None = None,
    zero_division: float = 0.0,
) -> np.ndarray:
    """F1 per label (C,), equal to sklearn's ``f1_score(average=None)``."""
    return fbeta_per_label(y, p, thresholds, 1.0, sample_weight, zero_division)


def macro_f1(
    y: ArrayLike,
    p: ArrayLike,
    thresholds: ArrayLike,
    sample_weight: ArrayLike | None = None,
    zero_division: float = 0.0,
) -> Any:
    """Mean F1 over all labels (sklearn's ``average="macro"``): a label that is absent and never
    predicted counts as ``zero_division``, so labels are never silently dropped."""
    return _macro(f1_per_label(y, p, thresholds, sample_weight, zero_division), False)


def precision_per_label(
    y: ArrayLike,
    p: ArrayLike,
    thresholds: ArrayLike,
    sample_weight: ArrayLike | None = None,
    zero_division: float = 0.0,
) -> np.ndarray:
    """tp / (tp + fp) per label; ``zero_division`` when nothing is predicted positive."""
    cc = confusion_counts(y, p, thresholds, sample_weight)
    return _ratio(cc.tp, cc.tp + cc.fp, zero_division)


def recall_per_label(
    y: ArrayLike,
    p: ArrayLike,
    thresholds: ArrayLike,
    sample_weight: ArrayLike | None = None,
    zero_division: float = 0.0,
) -> np.ndarray:
    """tp / (tp + fn) per label (sensitivity); ``zero_division`` when there are no positives."""
    cc = confusion_counts(y, p, thresholds, sample_weight)
    return _ratio(cc.tp, cc.tp + cc.fn, zero_division)


def specificity_per_label(
    y: ArrayLike,
    p: ArrayLike,
    thresholds: ArrayLike,
    sample_weight: ArrayLike | None = None,
    zero_division: float = 0.0,
) -> np.ndarray:
    """tn / (tn + fp) per label; ``zero_division`` when there are no negatives."""
    cc = confusion_counts(y, p, thresholds, sample_weight)
    return _ratio(cc.tn, cc.tn + cc.fp, zero_division)


def cohen_kappa_per_label(
    y: ArrayLike,
    p: ArrayLike,
    thresholds: ArrayLike,
    sample_weight: ArrayLike | None = None,
) -> np.ndarray:
    """Cohen's kappa between labels and thresholded predictions per label, equal to sklearn's
    ``cohen_kappa_score``; NaN where undefined (labels and predictions both one class)."""
    return _kappa_from_counts(confusion_counts(y, p, thresholds, sample_weight))


def hamming_loss(
    y: ArrayLike,
    p: ArrayLike,
    thresholds: ArrayLike,
    sample_weight: ArrayLike | None = None,
) -> Any:
    """Fraction of wrong (sample, label) decisions, equal to sklearn's ``hamming_loss``."""
    cc = confusion_counts(y, p, thresholds, sample_weight)
    wrong = np.sum(cc.fp + cc.fn, axis=-1)
    total = np.sum(cc.tp + cc.fp + cc.fn + cc.tn, axis=-1)
    out = _ratio(wrong, total, np.nan)
    return float(out) if out.ndim == 0 else out


def per_label_report(
    y: ArrayLike,
    p: ArrayLike,
    thresholds: ArrayLike,
    label_names: Sequence[str] | None = None,
) -> dict[str, dict[str, float | int | None]]:
    """JSON-ready per-label metrics: ``{name: {auroc, auprc, f1, precision, recall,
    specificity, kappa, support, threshold}}``; undefined values are None (not NaN)."""
    y = as_label_matrix(y)
    p = as_score_matrix(p, y)
    t = threshold_vector(thresholds, y.shape[1])
    names = (
        [f"label_{i}" for i in range(y.shape[1])]
        if label_names is None
        else [str(x) for x in label_names]
    )
    if len(names) != y.shape[1]:
        raise ValueError(f"got {len(names)} label names for {y.shape[1]} labels")
    auroc, auprc = _ranking_metrics(y, p)
    values = {AUROC: auroc, AUPRC: auprc, **metrics_from_counts(confusion_counts(y, p, t))}
    support = np.count_nonzero(y, axis=0)
    return {
        name: {
            **{k: (None if np.isnan(v[i]) else float(v[i])) for k, v in values.items()},
            SUPPORT: int(support[i]),
            THRESHOLD: float(t[i]),
        }
        for i, name in enumerate(names)
    }


# ---------------------------------------------------------------------------------------------
# Challenge-style score (PhysioNet/CinC 2021): a reward matrix gives partial credit for
# confusions between similar classes; each record's contribution is normalised by the size of
# the union of its true and predicted label sets.


def challenge_weights(
    n_labels: int, groups: Sequence[Any] | None = None, same_group: float = 0.5
) -> np.ndarray:
    """Reward matrix (C, C): 1 on the diagonal, ``same_group`` between different labels of the
    same group (when ``groups``, one group id per label, is given), 0 elsewhere."""
    w = np.eye(n_labels)
    if groups is not None:
        g = np.asarray(list(groups), dtype=object)
        if g.shape != (n_labels,):
            raise ValueError(f"need one group per label ({n_labels}), got {len(g)}")
        same = g[:, None] == g[None, :]
        w = np.where(same & ~np.eye(n_labels, dtype=bool), same_group, w)
    return w


def _challenge_raw(y: np.ndarray, pred: np.ndarray, w: np.ndarray) -> float:
    union = np.count_nonzero(y | pred, axis=1)
    yn = y / np.maximum(union, 1)[:, None]
    return float(np.sum((yn.T @ pred.astype(np.float64)) * w))


def challenge_weight_matrix(
    n_labels: int, weights: ArrayLike | None, groups: Sequence[Any] | None
) -> np.ndarray:
    if weights is None:
        return challenge_weights(n_labels, groups)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n_labels, n_labels):
        raise ValueError(f"weights must be ({n_labels}, {n_labels}), got {w.shape}")
    return w


def _challenge_bounds(
    y: np.ndarray, w: np.ndarray, normal_index: int | None
) -> tuple[float, float]:
    inactive = np.zeros_like(y)
    if normal_index is not None:
        inactive[:, normal_index] = True
    return _challenge_raw(y, y, w), _challenge_raw(y, inactive, w)


def challenge_score(
    y: ArrayLike,
    pred: ArrayLike,
    weights: ArrayLike | None = None,
    groups: Sequence[Any] | None = None,
    normal_index: int | None = None,
) -> float:
    """Normalised challenge-style score of binary predictions (N, C).

    ``sum(weights * A)`` where ``A[j, k]`` accumulates, over records, 1/|true ∪ predicted| for
    each true label j and predicted label k. Normalised so that the perfect classifier scores
    1 and the inactive classifier (predicting only the normal class ``normal_index``, or
    nothing when it is None) scores 0; 0.0 when those two coincide. As in the challenge,
    records with no true label contribute nothing.
    """
    y = as_label_matrix(y)
    pred = as_label_matrix(pred)
    if pred.shape != y.shape:
        raise ValueError(f"predictions shape {pred.shape} does not match labels {y.shape}")
    w = challenge_weight_matrix(y.shape[1], weights, groups)
    correct, inactive = _challenge_bounds(y, w, normal_index)
    if correct == inactive:
        return 0.0
    return (_challenge_raw(y, pred, w) - inactive) / (correct - inactive)


