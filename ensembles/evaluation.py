"""Evaluation of multi-label probabilities: calibration error, full metric sets, bootstrap
confidence intervals and the comparison report (JSON + Markdown + standalone HTML).

Metric names are the shared constants of `ecgtune.search.metric_keys`; `flatten_metrics` turns an
`evaluate` result into MLflow keys like ``test/macro_auprc`` and ``test/f1/AFIB``.
"""

from __future__ import annotations

import html
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from scipy import sparse

from ecgtune.search import metric_keys as K
from ecgtune.search import metrics as M

__all__ = [
    "CI_METRICS",
    "LABEL_METRICS",
    "ReliabilityCurve",
    "bootstrap_ci",
    "brier",
    "ece",
    "evaluate",
    "evaluate_with_ci",
    "flatten_metrics",
    "reliability_curve",
    "write_report",
]

# Per-label metrics in report order; macro values average them over labels.
LABEL_METRICS = (
    K.AUROC,
    K.AUPRC,
    K.F1,
    K.PRECISION,
    K.RECALL,
    K.SPECIFICITY,
    K.KAPPA,
    K.ECE,
    K.BRIER,
)
# Summary metrics with confidence intervals (macro averages plus the Hamming loss).
CI_METRICS = (*LABEL_METRICS, K.HAMMING)

_TITLES = {
    K.AUROC: "AUROC",
    K.AUPRC: "AUPRC",
    K.F1: "F1",
    K.PRECISION: "Precision",
    K.RECALL: "Recall",
    K.SPECIFICITY: "Specificity",
    K.KAPPA: "Kappa",
    K.ECE: "ECE",
    K.BRIER: "Brier",
    K.HAMMING: "Hamming loss",
}


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


def brier(y: Any, p: Any, average: str | None = "macro") -> Any:
    """Brier score (mean squared error of probabilities) per label or its macro mean."""
    y, p = _inputs(y, p)
    return _average(np.mean((p - y) ** 2, axis=0), average)


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
        out[K.BRIER] = brier(y, p, average=None)
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
    """Percentile bootstrap confidence intervals (level 1 - ``alpha``) for the macro metrics
    and the per-label metrics of `evaluate`, thresholds held fixed.

    Records are resampled with replacement ``n_boot`` times (seeded). A resample is expressed
    as multiplicity weights, so each label is sorted once and every metric of all resamples
    comes from weighted cumulative sums and matrix products. In a resample where a label has
    no positives (rare labels) its AUROC/AUPRC are undefined: that resample is left out of
    that label's interval and the label out of that resample's macro mean.

    Returns ``{"n_boot", "alpha", "seed", "macro": {metric: {"estimate", "low", "high"}},
    "per_label": {name: {metric: {...}}}}``; estimates are the full-data values.
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
    per_label: dict[str, list[np.ndarray]] = {k: [] for k in LABEL_METRICS}
    macro: dict[str, list[np.ndarray]] = {k: [] for k in CI_METRICS}
    for lo in range(0, n_boot, chunk):
        b = min(chunk, n_boot - lo)
        idx = rng.integers(0, n, size=(b, n))
        w = np.bincount((idx + n * np.arange(b)[:, None]).ravel(), minlength=b * n)
        values = _per_label_values(y, p, t, n_bins, w.reshape(b, n).astype(np.float64))
        for k in LABEL_METRICS:
            per_label[k].append(values[k])
        for k, v in _macro_values(values).items():
            macro[k].append(np.asarray(v))
    estimate = _per_label_values(y, p, t, n_bins, None)
    estimate_macro = _macro_values(estimate)
    q = [alpha / 2, 1 - alpha / 2]

    def interval(samples: np.ndarray, point: Any) -> dict[str, float | None]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            low, high = np.nanquantile(samples, q, axis=0)
        return {"estimate": _float(point), "low": _float(low), "high": _float(high)}

    label_samples = {k: np.concatenate(v) for k, v in per_label.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        label_bounds = {k: np.nanquantile(v, q, axis=0) for k, v in label_samples.items()}
    return {
        "n_boot": int(n_boot),
        "alpha": float(alpha),
        "seed": int(seed),
        "macro": {k: interval(np.concatenate(v), estimate_macro[k]) for k, v in macro.items()},
        "per_label": {
            name: {
                k: {
                    "estimate": _float(estimate[k][i]),
                    "low": _float(label_bounds[k][0, i]),
                    "high": _float(label_bounds[k][1, i]),
                }
                for k in LABEL_METRICS
            }
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


def flatten_metrics(result: Mapping[str, Any], split: str = "test") -> dict[str, float]:
    """Flat ``{key: value}`` of an `evaluate` result for MLflow, keys from `metric_key`;
    undefined values are omitted."""
    out = {K.metric_key(split, k): v for k, v in result["macro"].items() if v is not None}
    for label, row in result["per_label"].items():
        for k in LABEL_METRICS:
            if row.get(k) is not None:
                out[K.metric_key(split, k, label)] = row[k]
    return out


# ---------------------------------------------------------------------------------------------
# Report.


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(float(x)) else None
    return x


def _cell(row: Mapping[str, Any], metric: str, label: str | None = None) -> str:
    """'0.912 [0.901, 0.923]' (CI when the row has one), '–' when undefined."""
    if label is None:
        value = row["macro"].get(metric)
        ci = row.get("ci", {}).get("macro", {}).get(metric)
    else:
        value = row["per_label"][label].get(metric)
        ci = row.get("ci", {}).get("per_label", {}).get(label, {}).get(metric)
    if value is None:
        return "–"
    text = f"{value:.3f}"
    if ci and ci.get("low") is not None and ci.get("high") is not None:
        text += f" [{ci['low']:.3f}, {ci['high']:.3f}]"
    return text


def _tables(
    rows: Mapping[str, Mapping[str, Any]], label_names: Sequence[str]
) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, body) of every report table."""
    first = next(iter(rows.values()))
    level = 1 - first.get("ci", {}).get("alpha", 0.05)
    ci_note = f" ({level:.0%} CI)" if any("ci" in r for r in rows.values()) else ""
    tables = [
        (
            f"Summary{ci_note}",
            ["", *(_TITLES[m] for m in CI_METRICS)],
            [[name, *(_cell(r, m) for m in CI_METRICS)] for name, r in rows.items()],
        )
    ]
    for metric in (K.AUPRC, K.AUROC, K.F1, K.KAPPA):
        body = []
        for label in label_names:
            support = first["per_label"][label][K.SUPPORT]
            body.append([label, str(support), *(_cell(r, metric, label) for r in rows.values())])
        tables.append((f"Per-label {_TITLES[metric]}{ci_note}", ["label", "support", *rows], body))
    return tables


def _markdown(tables: list[tuple[str, list[str], list[list[str]]]], title: str) -> str:
    lines = [f"# {title}", ""]
    for heading, header, body in tables:
        lines += [f"## {heading}", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "|".join("---" for _ in header) + "|")
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        lines.append("")
    return "\n".join(lines)


def _html(tables: list[tuple[str, list[str], list[list[str]]]], title: str) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}"
        "table{border-collapse:collapse;margin-bottom:2em;font-size:0.9em}"
        "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th:first-child,td:first-child{text-align:left}"
        "tr:nth-child(even){background:#f6f6f6}</style>",
        f"</head><body><h1>{esc(title)}</h1>",
    ]
    for heading, header, body in tables:
        parts.append(f"<h2>{esc(heading)}</h2><table>")
        parts.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
        for cells in body:
            parts.append("<tr>" + "".join(f"<td>{esc(x)}</td>" for x in cells) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    rows: Mapping[str, Mapping[str, Any]],
    path_stem: str | Path,
    label_names: Sequence[str],
    title: str = "Ensemble evaluation",
) -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.html`` comparing report rows.

    ``rows`` maps a row name (e.g. "ensemble", "best single trial", "seed-style baseline
    (0.5 thresholds)") to an `evaluate` result, optionally with its `bootstrap_ci` under
    ``"ci"`` (`evaluate_with_ci`). Tables: macro metrics per row (± CI), then per-label AUPRC,
    AUROC, F1 and kappa with one column per row. JSON holds everything (NaN as null).
    """
    if not rows:
        raise ValueError("need at least one report row")
    label_names = [str(x) for x in label_names]
    for name, row in rows.items():
        missing = set(label_names) - set(row["per_label"])
        if missing:
            raise ValueError(f"row {name!r} lacks labels {sorted(missing)}")
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    tables = _tables(rows, label_names)
    paths = {
        "json": stem.with_name(stem.name + ".json"),
        "markdown": stem.with_name(stem.name + ".md"),
        "html": stem.with_name(stem.name + ".html"),
    }
    payload = {"title": title, "labels": label_names, "rows": _jsonable(dict(rows))}
    paths["json"].write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    paths["markdown"].write_text(_markdown(tables, title))
    paths["html"].write_text(_html(tables, title))
    return paths
