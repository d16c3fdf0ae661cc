"""Evaluation of multi-label probabilities: calibration error, the full metric set of a report
row and its bootstrap confidence intervals. Rendering lives in `ensembles.evaluate.report`.

Metric names are the shared constants of `ecgtune.search.metric_keys`; `flatten_metrics` turns an
`evaluate` result into MLflow keys like ``test/macro_auprc`` and ``test/f1/AFIB``.

Confidence intervals: one routine, `bootstrap_ci`, gives every reported metric its interval:
records are resampled with replacement and each interval is BCa (bias-corrected and
accelerated, Efron 1987, as in ``scipy.stats.bootstrap(method="BCa")``), with the acceleration
from a jackknife over the records. BCa is computed here rather than by scipy because all
metrics of all resamples come from one weighted pass (see `bootstrap_ci`); a test checks it
against scipy on a plain mean.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy import sparse
from scipy.special import ndtr, ndtri

from ecgtune.ensembles.evaluate.scores import brier
from ecgtune.search import metric_keys as K
from ecgtune.search import metrics as M

__all__ = [
    "ASSESSABLE",
    "CI_METRICS",
    "LABEL_METRICS",
    "ReliabilityCurve",
    "bca_interval",
    "bootstrap_ci",
    "ece",
    "evaluate",
    "evaluate_assessable",
    "evaluate_with_ci",
    "flatten_metrics",
    "reliability_curve",
]

# Per-label metrics in report order; macro values average them over labels.
LABEL_METRICS = (
    K.AUROC,
    K.AUPRC,
    K.F1,
    K.PRECISION,
    K.RECALL,
    K.SPECIFICITY,
    K.NPV,
    K.KAPPA,
    K.ECE,
    K.BRIER,
)
# Summary metrics with confidence intervals (macro averages plus the Hamming loss).
CI_METRICS = (*LABEL_METRICS, K.HAMMING)
# Per-label key of `evaluate_assessable`: False for a label with too few positives to assess.
ASSESSABLE = "assessable"
# Above this many records the acceleration comes from a grouped (delete-a-group) jackknife:
# its estimate is as good for an interval and costs this many evaluations instead of N.
_MAX_JACKKNIFE = 500


def _inputs(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    if y.ndim == 1:
        y, p = y[:, None], p.reshape(-1, 1)
    if y.shape != p.shape or y.ndim != 2:
        raise ValueError(f"labels {y.shape} and probabilities {p.shape} must both be (N, C)")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be binary (0/1)")
    return y.astype(bool), p


def _bins(p: np.ndarray, n_bins: int) -> np.ndarray:
    # Equal-width bins on [0, 1]; p == 1 belongs to the last bin.
    return np.clip((p * n_bins).astype(np.int64), 0, n_bins - 1)


def _nanmean(x: np.ndarray, axis: int = -1) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def ece(y: Any, p: Any, n_bins: int = 15, average: str | None = "macro") -> Any:
    """Expected calibration error with ``n_bins`` equal-width bins: sum over bins of
    (bin size / N) * |fraction of positives - mean probability|, per label (``average=None``,
    shape (C,)) or its mean over labels (``average="macro"``, a float)."""
    y, p = _inputs(y, p)
    n, c = y.shape
    idx = (_bins(p, n_bins) + n_bins * np.arange(c)).ravel()
    size = c * n_bins
    gap = np.abs(
        np.bincount(idx, y.ravel().astype(np.float64), size) - np.bincount(idx, p.ravel(), size)
    )
    per_label = gap.reshape(c, n_bins).sum(axis=1) / n
    return _average(per_label, average)


def _average(per_label: np.ndarray, average: str | None) -> Any:
    if average is None:
        return per_label
    if average != "macro":
        raise ValueError(f"average must be 'macro' or None, got {average!r}")
    return float(per_label.mean())


class ReliabilityCurve(NamedTuple):
    """Per bin: mean predicted probability, fraction of positives and count; NaN in empty
    bins. Shapes (C, n_bins), or (n_bins,) for 1-D input."""

    mean_predicted: np.ndarray
    fraction_positive: np.ndarray
    counts: np.ndarray
    bin_edges: np.ndarray


def reliability_curve(y: Any, p: Any, n_bins: int = 15) -> ReliabilityCurve:
    """Reliability diagram data with the same equal-width bins as `ece`."""
    one_d = np.ndim(y) == 1
    y, p = _inputs(y, p)
    c = y.shape[1]
    idx = (_bins(p, n_bins) + n_bins * np.arange(c)).ravel()
    size = c * n_bins
    counts = np.bincount(idx, minlength=size).reshape(c, n_bins)
    sum_p = np.bincount(idx, p.ravel(), size).reshape(c, n_bins)
    sum_y = np.bincount(idx, y.ravel().astype(np.float64), size).reshape(c, n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(counts > 0, sum_p / counts, np.nan)
        frac = np.where(counts > 0, sum_y / counts, np.nan)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    if one_d:
        return ReliabilityCurve(mean_p[0], frac[0], counts[0], edges)
    return ReliabilityCurve(mean_p, frac, counts, edges)


def _label_names(label_names: Sequence[str] | None, n_labels: int) -> list[str]:
    if label_names is None:
        return [f"label_{i}" for i in range(n_labels)]
    names = [str(x) for x in label_names]
    if len(names) != n_labels:
        raise ValueError(f"got {len(names)} label names for {n_labels} labels")
    return names


def _per_label_values(
    y: np.ndarray, p: np.ndarray, thresholds: np.ndarray, n_bins: int, w: np.ndarray | None
) -> dict[str, np.ndarray]:
    """Every per-label metric, (C,) without weights or (B, C) for weights (B, N)."""
    auroc, auprc = M.ranking_metrics_per_label(y, p, w)
    cc = M.confusion_counts(y, p, thresholds, w)
    out = {K.AUROC: auroc, K.AUPRC: auprc, **M.metrics_from_counts(cc)}
    if w is None:
        out[K.ECE] = ece(y, p, n_bins, average=None)
        out[K.BRIER] = brier(y, p, axis=0)
        out[K.HAMMING] = np.asarray(M.hamming_loss(y, p, thresholds))
    else:
        out[K.ECE], out[K.BRIER] = _weighted_calibration(y, p, w, n_bins)
        wrong = np.sum(cc.fp + cc.fn, axis=-1)
        out[K.HAMMING] = wrong / (w.sum(axis=1) * y.shape[1])
    return out


def _weighted_calibration(
    y: np.ndarray, p: np.ndarray, w: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """ECE and Brier per label under each weighting (B, N): per-bin sums as one sparse
    product, so B resamples cost B x N x C, not a sort or a Python loop each."""
    n, c = y.shape
    rows = np.repeat(np.arange(n), c)
    cols = (_bins(p, n_bins) + n_bins * np.arange(c)).ravel()
    # One block of columns per statistic: [sum of p | sum of y] per (label, bin).
    data = np.concatenate([p.ravel(), y.ravel().astype(np.float64)])
    mat = sparse.csc_matrix(
        (data, (np.r_[rows, rows], np.r_[cols, cols + c * n_bins])), shape=(n, 2 * c * n_bins)
    )
    sums = np.asarray((mat.T @ w.T).T)
    sum_p, sum_y = sums[:, : c * n_bins], sums[:, c * n_bins :]
    total = w.sum(axis=1)[:, None]
    ece_w = np.abs(sum_y - sum_p).reshape(len(w), c, n_bins).sum(axis=2) / total
    # The weighted form of scores.brier: each record's squared errors times its multiplicity.
    brier_w = (w @ (p - y) ** 2) / total
    return ece_w, brier_w


def _macro_values(values: dict[str, np.ndarray]) -> dict[str, Any]:
    out = {name: _nanmean(values[name]) for name in LABEL_METRICS}
    out[K.HAMMING] = values[K.HAMMING]
    return out


def _float(x: Any) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def evaluate(
    y: Any,
    probs: Any,
    thresholds: Any,
    label_names: Sequence[str] | None = None,
    n_bins: int = 15,
) -> dict[str, Any]:
    """All report metrics of probabilities (N, C) at ``thresholds`` (``p >= t`` positive).

    Returns a JSON-ready dict:
    ``{"n_samples", "n_labels", "labels", "macro": {metric: value}, "labels_used": {metric:
    [names]}, "per_label": {name: {metric: value, "support": int, "threshold": float}}}``.
    ``macro`` holds the mean over labels of each per-label metric plus the (sample-and-label
    averaged) Hamming loss. AUROC, AUPRC and kappa are undefined (None) for some labels: those
    are left out of their macro means, and ``labels_used`` lists the labels that were averaged.
    F1, precision, recall and specificity count an undefined ratio as 0 (sklearn's convention).
    """
    y, p = _inputs(y, probs)
    n, c = y.shape
    names = _label_names(label_names, c)
    t = M.threshold_vector(thresholds, c)
    values = _per_label_values(y, p, t, n_bins, None)
    macro = _macro_values(values)
    support = y.sum(axis=0)
    return {
        "n_samples": int(n),
        "n_labels": int(c),
        "labels": names,
        "macro": {k: _float(v) for k, v in macro.items()},
        "labels_used": {
            k: [names[i] for i in np.flatnonzero(~np.isnan(values[k]))]
            for k in (K.AUROC, K.AUPRC, K.KAPPA)
        },
        "per_label": {
            name: {
                **{k: _float(values[k][i]) for k in LABEL_METRICS},
                K.SUPPORT: int(support[i]),
                K.THRESHOLD: float(t[i]),
            }
            for i, name in enumerate(names)
        },
    }


def _resample_weights(
    rng: np.random.Generator, n: int, n_boot: int, chunk: int
) -> Iterator[np.ndarray]:
    """Bootstrap resamples of n records as multiplicity weights, ``chunk`` rows at a time."""
    for lo in range(0, n_boot, chunk):
        b = min(chunk, n_boot - lo)
        idx = rng.integers(0, n, size=(b, n))
        w = np.bincount((idx + n * np.arange(b)[:, None]).ravel(), minlength=b * n)
        yield w.reshape(b, n).astype(np.float64)


def _jackknife_weights(n: int, chunk: int) -> Iterator[np.ndarray]:
    """Leave-one-group-out weights: N groups of one record, or `_MAX_JACKKNIFE` contiguous
    groups of records (record order within a fold carries no outcome information)."""
    groups = np.arange(n) * min(n, _MAX_JACKKNIFE) // n
    n_groups = int(groups[-1]) + 1
    for lo in range(0, n_groups, chunk):
        left_out = np.arange(lo, min(lo + chunk, n_groups))
        yield (groups[None, :] != left_out[:, None]).astype(np.float64)


def _metric_samples(
    y: np.ndarray, p: np.ndarray, t: np.ndarray, n_bins: int, weights: Iterator[np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-label (B, C) and macro (B,) values of every metric under each weighting."""
    per_label: dict[str, list[np.ndarray]] = {k: [] for k in LABEL_METRICS}
    macro: dict[str, list[np.ndarray]] = {k: [] for k in CI_METRICS}
    for w in weights:
        values = _per_label_values(y, p, t, n_bins, w)
        for k in LABEL_METRICS:
            per_label[k].append(values[k])
        for k, v in _macro_values(values).items():
            macro[k].append(np.asarray(v))
    return ({k: np.concatenate(v) for k, v in per_label.items()},
            {k: np.concatenate(v) for k, v in macro.items()})


def _column_quantiles(samples: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Linear-interpolation quantile of each column of (B, K) ``samples`` at its own level
    (K,), NaN samples ignored; NaN where a column has none."""
    ordered = np.sort(samples, axis=0)  # NaN sorts last
    valid = np.count_nonzero(~np.isnan(samples), axis=0)
    # An undefined level (a column without samples) reads position 0; masked below anyway.
    levels = np.where(np.isfinite(levels), np.clip(levels, 0.0, 1.0), 0.0)
    pos = levels * np.maximum(valid - 1, 0)
    below = np.floor(pos).astype(np.int64)
    above = np.minimum(below + 1, np.maximum(valid - 1, 0))
    lo = np.take_along_axis(ordered, below[None], axis=0)[0]
    hi = np.take_along_axis(ordered, above[None], axis=0)[0]
    out = lo + (pos - below) * (hi - lo)
    return np.where(valid > 0, out, np.nan)


def bca_interval(
    samples: Any, jackknife: Any, estimate: Any, alpha: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """BCa bounds (low, high) at level 1 - ``alpha`` from bootstrap ``samples`` (B, ...),
    jackknife values (J, ...) and the full-data ``estimate`` (...); NaN entries are ignored.

    Bias correction z0 = Phi^-1(share of samples below the estimate, ties counted half);
    acceleration a = skewness of the jackknife values / 6. The interval always contains the
    estimate: z0 is limited to +-z_(1-alpha/2), and the bounds are widened to the estimate
    where they would miss it. That only acts when (almost) all resamples fall on one side of
    the estimate, as they can for a plug-in ECE, whose resamples are biased upward: there BCa
    has no quantile level left to give, and the estimate itself becomes that end.
    """
    theta = np.asarray(samples, dtype=np.float64)
    shape = theta.shape[1:]
    theta = theta.reshape(len(theta), -1)
    jack = np.asarray(jackknife, dtype=np.float64).reshape(-1, theta.shape[1])
    est = np.asarray(estimate, dtype=np.float64).reshape(-1)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        valid = np.count_nonzero(~np.isnan(theta), axis=0)
        share = (np.sum(theta < est, axis=0) + 0.5 * np.sum(theta == est, axis=0)) / valid
        z = ndtri(1 - alpha / 2)
        z0 = np.clip(ndtri(share), -z, z)
        d = np.nanmean(jack, axis=0) - jack
        spread = np.nansum(d**2, axis=0) ** 1.5
        a = np.where(spread > 0, np.nansum(d**3, axis=0) / (6 * spread), 0.0)
        bounds = []
        for z_level in (-z, z):
            shifted = z0 + z_level
            denominator = 1 - a * shifted
            level = np.where(denominator > 0, ndtr(z0 + shifted / denominator),
                             ndtr(z_level))
            bounds.append(_column_quantiles(theta, level))
    low = np.where(np.isnan(est), np.nan, np.fmin(bounds[0], est))
    high = np.where(np.isnan(est), np.nan, np.fmax(bounds[1], est))
    return low.reshape(shape), high.reshape(shape)


def bootstrap_ci(
    y: Any,
    probs: Any,
    thresholds: Any,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    label_names: Sequence[str] | None = None,
    n_bins: int = 15,
    chunk: int = 250,
) -> dict[str, Any]:
    """BCa bootstrap confidence intervals (level 1 - ``alpha``, `bca_interval`) for the macro
    metrics and the per-label metrics of `evaluate`, thresholds held fixed.

    Records are resampled with replacement ``n_boot`` times (seeded). A resample is expressed
    as multiplicity weights, so each label is sorted once and every metric of all resamples
    (and of the jackknife) comes from weighted cumulative sums and matrix products. In a
    resample where a label has no positives (rare labels) its AUROC/AUPRC are undefined: that
    resample is left out of that label's interval and the label out of that resample's macro
    mean.

    Returns ``{"n_boot", "alpha", "seed", "method", "macro": {metric: {"estimate", "low",
    "high"}}, "per_label": {name: {metric: {...}}}}``; estimates are the full-data values and
    every interval contains its estimate.
    """
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must be in (0, 1)")
    y, p = _inputs(y, probs)
    n, c = y.shape
    names = _label_names(label_names, c)
    t = M.threshold_vector(thresholds, c)
    rng = np.random.default_rng(seed)
    boot_label, boot_macro = _metric_samples(y, p, t, n_bins,
                                             _resample_weights(rng, n, n_boot, chunk))
    jack_label, jack_macro = _metric_samples(y, p, t, n_bins, _jackknife_weights(n, chunk))
    estimate = _per_label_values(y, p, t, n_bins, None)
    estimate_macro = _macro_values(estimate)

    def interval(point: Any, low: Any, high: Any) -> dict[str, float | None]:
        return {"estimate": _float(point), "low": _float(low), "high": _float(high)}

    label_bounds = {k: bca_interval(boot_label[k], jack_label[k], estimate[k], alpha)
                    for k in LABEL_METRICS}
    return {
        "n_boot": int(n_boot),
        "alpha": float(alpha),
        "seed": int(seed),
        "method": "BCa",
        "macro": {
            k: interval(estimate_macro[k],
                        *bca_interval(boot_macro[k], jack_macro[k], estimate_macro[k], alpha))
            for k in CI_METRICS
        },
        "per_label": {
            name: {k: interval(estimate[k][i], label_bounds[k][0][i], label_bounds[k][1][i])
                   for k in LABEL_METRICS}
            for i, name in enumerate(names)
        },
    }


def evaluate_with_ci(
    y: Any,
    probs: Any,
    thresholds: Any,
    label_names: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """`evaluate` plus its `bootstrap_ci` under the key ``"ci"``: one report row."""
    row = evaluate(y, probs, thresholds, label_names)
    row["ci"] = bootstrap_ci(y, probs, thresholds, n_boot, seed, alpha, label_names)
    return row


def evaluate_assessable(
    y: Any,
    probs: Any,
    thresholds: Any,
    label_names: Sequence[str],
    min_positives: int = 1,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any] | None:
    """`evaluate_with_ci` of the labels with at least ``min_positives`` positives (and one
    negative); the others are *not assessable*: their per-label entry holds only support,
    threshold and ``"assessable": False`` (every metric None), and they are left out of the
    macro means, the Hamming loss and the CIs rather than counted as 0. ``not_assessable``
    lists them. None when no label is assessable."""
    y, p = _inputs(y, probs)
    n, c = y.shape
    names = _label_names(label_names, c)
    t = M.threshold_vector(thresholds, c)
    support = y.sum(axis=0)
    ok = (support >= max(int(min_positives), 1)) & (support < n)
    if not ok.any():
        return None
    keep = [names[i] for i in np.flatnonzero(ok)]
    row = evaluate_with_ci(y[:, ok], p[:, ok], t[ok], keep, n_boot=n_boot, seed=seed,
                           alpha=alpha)
    per_label = {}
    for i, name in enumerate(names):
        per_label[name] = (row["per_label"][name] if ok[i] else
                           {**dict.fromkeys(LABEL_METRICS), K.SUPPORT: int(support[i]),
                            K.THRESHOLD: float(t[i]), ASSESSABLE: False})
    not_assessable = [names[i] for i in np.flatnonzero(~ok)]
    return {**row, "n_labels": int(c), "labels": names, "per_label": per_label,
            "not_assessable": not_assessable, "min_positives": int(min_positives)}


def flatten_metrics(result: Mapping[str, Any], split: str = "test") -> dict[str, float]:
    """Flat ``{key: value}`` of an `evaluate` result for MLflow, keys from `metric_key`;
    undefined values are omitted."""
    out = {K.metric_key(split, k): v for k, v in result["macro"].items() if v is not None}
    for label, row in result["per_label"].items():
        for k in LABEL_METRICS:
            if row.get(k) is not None:
                out[K.metric_key(split, k, label)] = row[k]
    return out
