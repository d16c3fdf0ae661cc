"""Referral instead of a guess: a per-record flag that sends the ensemble's uncertain records
to a human, chosen on the calibration (ensemble) fold by the share to refer (`--refer-rate R`).

A record's uncertainty is, over its labels, the largest of

    spread_j - margin_j

where ``spread_j`` is the weighted standard deviation of the members' logits for label j (the
members disagree) and ``margin_j`` is the distance, in logits, between the calibrated
probability and the label's threshold (the decision sits near its cut). Both are logits, so a
record is uncertain when the members scatter more than its decisions clear their thresholds;
with one member the spread is 0 and the margin alone decides. A record is referred when its
uncertainty is >= the threshold that refers ``R`` of the calibration fold's records.

The same arithmetic runs in `EnsemblePredictor` (predict, the pyfunc model) and in the ONNX
graph (`ship.onnx_export`), on the same float64 values, so all three refer the same records.
Numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ecgtune.ensembles.build.calibration import EPS

__all__ = ["SCORE", "Referral", "fit_referral", "referral_scores", "referral_summary"]

SCORE = ("max over labels of (weighted std of the members' logits - |logit(calibrated "
         "probability) - logit(threshold)|); probabilities clipped to [1e-7, 1 - 1e-7]")


def logit(p: Any) -> np.ndarray:
    """Logit of probabilities clipped to [EPS, 1 - EPS], as the calibrators clip them."""
    p = np.clip(np.asarray(p, np.float64), EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def referral_scores(member_probs: Any, weights: Any, calibrated: Any, thresholds: Any
                    ) -> np.ndarray:
    """(N,) uncertainty of each record from the members' probabilities (M, N, C), their
    weights (M,), the calibrated ensemble probabilities (N, C) and the thresholds (C,)."""
    z = logit(member_probs)
    w = np.asarray(weights, np.float64)
    w = w / w.sum()
    mean = np.tensordot(w, z, axes=1)
    spread = np.sqrt(np.tensordot(w, (z - mean) ** 2, axes=1))
    margin = np.abs(logit(calibrated) - logit(thresholds)[None, :])
    out: np.ndarray = (spread - margin).max(axis=1)
    return out


@dataclass(frozen=True)
class Referral:
    """Refer a record when its `referral_scores` value is >= ``threshold``; ``rate`` is the
    share of the calibration fold that rule referred when it was chosen (asked for)."""

    rate: float
    threshold: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"refer rate must be in [0, 1), got {self.rate}")
        if not math.isfinite(self.threshold):
            raise ValueError(f"referral threshold must be finite, got {self.threshold}")

    def refer(self, scores: Any) -> np.ndarray:
        return np.asarray(scores, np.float64) >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {"rate": float(self.rate), "threshold": float(self.threshold), "score": SCORE}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Referral:
        return cls(float(data["rate"]), float(data["threshold"]))


def fit_referral(scores: Any, rate: float) -> Referral:
    """The threshold that refers the ``round(rate * N)`` most uncertain records of ``scores``
    (N,): halfway between the last referred score and the next one, so that records near it
    elsewhere fall on the same side; ties at the cut are all referred."""
    s = np.sort(np.asarray(scores, np.float64))[::-1]
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"refer rate must be in [0, 1), got {rate}")
    k = round(rate * len(s))
    if k == 0 or len(s) == 0:
        top = float(s[0]) if len(s) else 0.0
        return Referral(float(rate), float(np.nextafter(top, np.inf)))
    if k >= len(s) or s[k] == s[k - 1]:
        return Referral(float(rate), float(s[k - 1]))
    return Referral(float(rate), float(0.5 * (s[k - 1] + s[k])))


def _share(k: int, n: int) -> dict[str, Any]:
    """k of n with its exact (Clopper-Pearson) two-sided 95% interval."""
    from ecgtune.search.thresholds import clopper_pearson_lower, clopper_pearson_upper

    if n == 0:
        return {"value": None, "low": None, "high": None, "count": 0, "n": 0}
    return {"value": k / n, "low": float(clopper_pearson_lower(k, n, 0.975)),
            "high": float(clopper_pearson_upper(k, n, 0.975)), "count": int(k), "n": int(n)}


def _mean(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The mean of per-record values with a 95% percentile bootstrap interval over records."""
    n = len(values)
    if n == 0:
        return {"value": None, "low": None, "high": None, "n": 0}
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, n, (n_boot, n))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return {"value": float(values.mean()), "low": float(min(low, values.mean())),
            "high": float(max(high, values.mean())), "n": int(n)}


def referral_summary(y: Any, calibrated: Any, thresholds: Any, refer: Any) -> dict[str, Any]:
    """Coverage (records kept, exact 95% interval) and the decision error rate (labels decided
    wrong per record, the Hamming loss; 95% bootstrap interval over records) among the kept,
    the referred and all records; ``any_wrong_*``: the share of records with any label
    decided wrong (exact interval), which a high-sensitivity policy makes close to 1."""
    y = np.asarray(y).astype(bool)
    wrong = (np.asarray(calibrated) >= np.asarray(thresholds)[None, :]) != y
    per_record = wrong.mean(axis=1)
    anywrong = wrong.any(axis=1)
    refer = np.asarray(refer, bool)
    kept = ~refer
    return {
        "coverage": _share(int(kept.sum()), len(kept)),
        "error_kept": _mean(per_record[kept]),
        "error_referred": _mean(per_record[refer]),
        "error_all": _mean(per_record),
        "any_wrong_kept": _share(int(anywrong[kept].sum()), int(kept.sum())),
        "any_wrong_all": _share(int(anywrong.sum()), len(anywrong)),
    }
