"""Everything fitted on the ensemble fold: selection, per-label calibration, thresholds.

`fit_ensemble` runs the three steps on the members' ensemble-fold probabilities (its options,
`FitOptions`, are declared in `ensembles.options`); `fit_average`
calibrates and thresholds the uniform average of all members the same way (a comparator).
Thresholds are fitted on *calibrated* probabilities, each label by its policy
(`ensembles.build.policies`), so the few-positive fallback (0.5 by
default, `ecgtune.search.thresholds.fit_thresholds`) is the natural cut of a calibrated probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ecgtune.ensembles.build.calibration import PerLabelCalibrator
from ecgtune.ensembles.build.policies import (
    ThresholdPolicy,
    confidence_bounds,
    fit_policy_thresholds,
)
from ecgtune.ensembles.build.referral import Referral, fit_referral, referral_scores
from ecgtune.ensembles.build.selection import EnsembleSelector, uniform_average
from ecgtune.ensembles.options import FitOptions

__all__ = ["FitOptions", "FittedAverage", "FittedEnsemble", "fit_average", "fit_ensemble"]


@dataclass
class Calibrated:
    """A per-label calibrator and the thresholds fitted on its output."""

    calibrator: PerLabelCalibrator
    thresholds: np.ndarray
    fitted: np.ndarray  # (C,) bool: threshold fitted (else the few-positive fallback)
    policies: list[ThresholdPolicy]  # one per label
    # Labels whose policy states a confidence: the bound each reached on the fitting fold
    # (`policies.confidence_bounds`), with ``fitted`` as above.
    bounds: dict[str, dict[str, Any]] = field(default_factory=dict)

    def predict(self, probs: np.ndarray) -> np.ndarray:
        return self.calibrator.predict(probs)


def _calibrate(
    probs: np.ndarray, y: np.ndarray, opts: FitOptions, groups: Sequence[Any] | None,
    label_names: Sequence[str] | None = None, sources: np.ndarray | None = None,
) -> Calibrated:
    calibrator = PerLabelCalibrator(
        methods=opts.calibration_methods, cv=opts.calibration_cv, seed=opts.seed,
        rule=opts.select_by if sources is not None else "all",
    ).fit(probs, y, sources=sources)
    calibrated = calibrator.predict(probs)
    names = list(label_names) if label_names is not None else [str(j) for j in
                                                               range(y.shape[1])]
    policies = opts.policies().for_labels(names)
    thresholds = fit_policy_thresholds(y, calibrated, policies, min_positives=opts.min_positives,
                                       fallback=opts.fallback, groups=groups)
    fitted = np.count_nonzero(y, axis=0) >= max(opts.min_positives, 1)
    bounds = confidence_bounds(y, calibrated, thresholds, policies, names)
    for j, name in enumerate(names):
        if name in bounds:
            bounds[name]["fitted"] = bool(fitted[j])
    return Calibrated(calibrator, thresholds, fitted, policies, bounds)


@dataclass
class FittedEnsemble:
    selector: EnsembleSelector
    calibration: Calibrated
    referral: Referral | None = None  # --refer-rate: chosen on the same fold

    @property
    def thresholds(self) -> np.ndarray:
        return self.calibration.thresholds

    @property
    def calibrator(self) -> PerLabelCalibrator:
        return self.calibration.calibrator

    def predict_uncalibrated(self, member_probs: np.ndarray) -> np.ndarray:
        return self.selector.predict(member_probs)

    def predict(self, member_probs: np.ndarray) -> np.ndarray:
        return self.calibration.predict(self.selector.predict(member_probs))

    def referral_scores(self, member_probs: np.ndarray) -> np.ndarray:
        """(N,) uncertainty of each record (`referral.referral_scores`) over the selected
        members, as the exported predictor computes it."""
        chosen = self.selector.selected_
        return referral_scores(np.asarray(member_probs)[chosen],
                               self.selector.weights_[chosen], self.predict(member_probs),
                               self.thresholds)

    def refer(self, member_probs: np.ndarray) -> np.ndarray | None:
        """(N,) refer flags, or None without a referral."""
        if self.referral is None:
            return None
        return self.referral.refer(self.referral_scores(member_probs))


@dataclass
class FittedAverage:
    calibration: Calibrated

    @property
    def thresholds(self) -> np.ndarray:
        return self.calibration.thresholds

    def predict(self, member_probs: np.ndarray) -> np.ndarray:
        return self.calibration.predict(uniform_average(member_probs))


def fit_ensemble(
    member_probs: np.ndarray,
    y: np.ndarray,
    names: Sequence[str],
    opts: FitOptions | None = None,
    groups: Sequence[Any] | None = None,
    label_names: Sequence[str] | None = None,
    sources: Any = None,
) -> FittedEnsemble:
    """Select on (M, N, C) ensemble-fold probabilities, calibrate the selected average per label,
    fit thresholds on the calibrated probabilities, each label by its policy. ``groups``: one
    group id per label (the challenge policy's partial credit); ``label_names`` are needed
    when the options name per-label policies; ``sources`` (N,), each record's source, when
    ``opts.select_by`` is worst-source or mean-source."""
    opts = opts or FitOptions()
    by = _sources(opts, sources)
    selector = EnsembleSelector(opts).fit(member_probs, y, names=list(names), sources=by)
    calibration = _calibrate(selector.predict(member_probs), y, opts, groups, label_names, by)
    fitted = FittedEnsemble(selector, calibration)
    if opts.refer_rate > 0:
        fitted.referral = fit_referral(fitted.referral_scores(member_probs), opts.refer_rate)
    return fitted


def _sources(opts: FitOptions, sources: Any) -> np.ndarray | None:
    """The records' sources when the options select by source, else None."""
    if opts.select_by == "all":
        return None
    if sources is None:
        raise ValueError(f"select_by {opts.select_by!r} needs each record's source")
    return np.asarray(sources).astype(str)


def fit_average(
    member_probs: np.ndarray,
    y: np.ndarray,
    opts: FitOptions | None = None,
    groups: Sequence[Any] | None = None,
    label_names: Sequence[str] | None = None,
    sources: Any = None,
) -> FittedAverage:
    """The uniform average of all members, calibrated and thresholded like the ensemble."""
    opts = opts or FitOptions()
    return FittedAverage(_calibrate(uniform_average(member_probs), y, opts, groups,
                                    label_names, _sources(opts, sources)))
