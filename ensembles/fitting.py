"""Everything fitted on fold 8: selection, per-label calibration, per-label thresholds.

`fit_ensemble` runs the three steps on the members' fold-8 probabilities; `fit_average`
calibrates and thresholds the uniform average of all members the same way (a comparator).
Thresholds are fitted on *calibrated* probabilities, so the few-positive fallback (0.5 by
default, `ecgtune.search.thresholds.fit_thresholds`) is the natural cut of a calibrated probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ecgtune.ensembles.calibration import PerLabelCalibrator
from ecgtune.ensembles.selection import EnsembleSelector, uniform_average
from ecgtune.search import thresholds as T

__all__ = ["FitOptions", "FittedAverage", "FittedEnsemble", "fit_average", "fit_ensemble"]


@dataclass(frozen=True)
class FitOptions:
    """Selection, calibration and threshold settings (defaults follow the design)."""

    metric: str = "macro_auprc"
    init_size: int = 3
    max_rounds: int = 50
    bags: int = 0
    bag_fraction: float = 0.5
    seed: int = 0
    calibration_methods: tuple[str, ...] = ("temperature", "platt", "isotonic")
    calibration_cv: int = 5
    threshold_objective: str = "f1"
    beta: float = 1.0
    min_positives: int = 5
    fallback: float = 0.5

    def threshold_params(self) -> dict[str, Any]:
        return {"objective": self.threshold_objective, "beta": self.beta,
                "min_positives": self.min_positives, "fallback": self.fallback}


@dataclass
class Calibrated:
    """A per-label calibrator and the thresholds fitted on its output."""

    calibrator: PerLabelCalibrator
    thresholds: np.ndarray
    fitted: np.ndarray  # (C,) bool: threshold fitted (else the few-positive fallback)

    def predict(self, probs: np.ndarray) -> np.ndarray:
        return self.calibrator.predict(probs)


def _calibrate(
    probs: np.ndarray, y: np.ndarray, opts: FitOptions, groups: Sequence[Any] | None
) -> Calibrated:
    calibrator = PerLabelCalibrator(
        methods=opts.calibration_methods, cv=opts.calibration_cv, seed=opts.seed
    ).fit(probs, y)
    calibrated = calibrator.predict(probs)
    extra = {"groups": list(groups)} if opts.threshold_objective == "challenge" and groups else {}
    beta = opts.beta if opts.threshold_objective != "f1" else 1.0
    thresholds = T.fit_thresholds(
        y, calibrated, objective=opts.threshold_objective, beta=beta,
        min_positives=opts.min_positives, fallback=opts.fallback, **extra,
    )
    fitted = np.count_nonzero(y, axis=0) >= max(opts.min_positives, 1)
    return Calibrated(calibrator, thresholds, fitted)


@dataclass
class FittedEnsemble:
    selector: EnsembleSelector
    calibration: Calibrated

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
    opts: FitOptions = FitOptions(),
    groups: Sequence[Any] | None = None,
) -> FittedEnsemble:
    """Select on (M, N, C) fold-8 probabilities, calibrate the selected average per label,
    fit thresholds on the calibrated probabilities. ``groups``: one group id per label (for
    the challenge objective's partial credit)."""
    selector = EnsembleSelector(
        metric=opts.metric, init_size=opts.init_size, max_rounds=opts.max_rounds,
        bags=opts.bags, bag_fraction=opts.bag_fraction, seed=opts.seed,
    ).fit(member_probs, y, names=list(names))
    return FittedEnsemble(selector, _calibrate(selector.predict(member_probs), y, opts, groups))


def fit_average(
    member_probs: np.ndarray,
    y: np.ndarray,
    opts: FitOptions = FitOptions(),
    groups: Sequence[Any] | None = None,
) -> FittedAverage:
    """The uniform average of all members, calibrated and thresholded like the ensemble."""
    return FittedAverage(_calibrate(uniform_average(member_probs), y, opts, groups))
