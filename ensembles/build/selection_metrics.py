"""What ensemble selection can optimise: one score per candidate ensemble, higher is better.

Its own module so that the options can list the names without importing the selector (which
takes its defaults from the options).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from ecgtune.ensembles.evaluate import scores
from ecgtune.search import metrics

__all__ = ["SELECTION_METRICS", "SelectionMetric", "by_source"]

SelectionMetric = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _macro_auprc(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    return np.asarray(metrics.macro_auprc(y, probs), dtype=np.float64)


def _macro_auroc(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    return np.asarray(metrics.macro_auroc(y, probs), dtype=np.float64)


def _neg_log_loss(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    return -scores.log_loss(y, probs, axis=(-2, -1))


def _neg_brier(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    return -scores.brier(y, probs, axis=(-2, -1))


# name -> metric(y (N, C) bool, probs (K, N, C)) -> (K,), higher is better. Ranking metrics
# may return NaN when no label has both classes; the selector treats NaN as unusable.
SELECTION_METRICS: dict[str, SelectionMetric] = {
    "macro_auprc": _macro_auprc,
    "macro_auroc": _macro_auroc,
    "neg_log_loss": _neg_log_loss,
    "neg_brier": _neg_brier,
}


def by_source(metric: SelectionMetric, sources: np.ndarray, rule: str) -> SelectionMetric:
    """``metric`` per source of the records (``sources``: (N,) names), then the worst (rule
    ``worst-source``) or mean (``mean-source``) over the sources where it is defined; NaN
    where it is defined for none."""
    masks = [sources == s for s in np.unique(sources)]
    if rule not in ("worst-source", "mean-source"):
        raise ValueError(f"unknown source rule {rule!r}; valid: worst-source, mean-source")

    def scored(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
        per = np.stack([np.asarray(metric(y[m], probs[:, m]), np.float64) for m in masks])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
            return np.nanmin(per, axis=0) if rule == "worst-source" else np.nanmean(per, axis=0)

    return scored
