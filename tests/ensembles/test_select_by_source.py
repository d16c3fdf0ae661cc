"""`ensemble --select-by worst-source|mean-source`: selection and each label's calibration
method judged per source of the ensemble fold, the worst (or mean) source deciding."""

from __future__ import annotations

import numpy as np
import pytest

from ecgtune.ensembles.build.calibration import PerLabelCalibrator
from ecgtune.ensembles.build.fitting import fit_ensemble
from ecgtune.ensembles.build.selection import EnsembleSelector
from ecgtune.ensembles.build.selection_metrics import SELECTION_METRICS, by_source
from ecgtune.ensembles.options import FitOptions
from ecgtune.search import metrics as M


def _two_sites(seed: int = 0):
    """Member 0 ranks site a's records well and site b's at random; member 1 is fair on both.
    Site a has four times site b's records, so pooled scores favour member 0."""
    rng = np.random.default_rng(seed)
    n, c = 1000, 3
    sources = np.where(np.arange(n) < 800, "a", "b")
    y = rng.random((n, c)) < 0.3
    good = np.clip(0.6 * y + rng.normal(0.2, 0.12, (n, c)), 0, 1)
    noise = np.clip(rng.normal(0.32, 0.12, (n, c)), 0, 1)  # no signal, same range
    fair = np.clip(0.3 * y + rng.normal(0.35, 0.15, (n, c)), 0, 1)
    member0 = np.where((sources == "a")[:, None], good, noise)
    return np.stack([member0, fair]), y, sources


def test_by_source_scores_the_worst_and_mean_source():
    probs, y, sources = _two_sites()
    metric = SELECTION_METRICS["macro_auprc"]
    worst = by_source(metric, sources, "worst-source")(y, probs)
    mean = by_source(metric, sources, "mean-source")(y, probs)
    for k in range(2):
        per = M.per_source_macro_auprc(y, probs[k], sources)
        assert worst[k] == pytest.approx(min(per.values()))
        assert mean[k] == pytest.approx(np.mean(list(per.values())))
    with pytest.raises(ValueError, match="unknown source rule"):
        by_source(metric, sources, "best-source")


def test_worst_source_selection_prefers_the_member_that_travels():
    probs, y, sources = _two_sites()
    plain = EnsembleSelector(FitOptions(init_size=1, max_rounds=0)).fit(probs, y)
    assert plain.best_member_ == 0  # site a dominates the pooled score
    travel = EnsembleSelector(FitOptions(init_size=1, max_rounds=0, select_by="worst-source")
                              ).fit(probs, y, sources=sources)
    assert travel.best_member_ == 1 and travel.to_dict()["params"]["select_by"] == "worst-source"
    per = [min(M.per_source_macro_auprc(y, p, sources).values()) for p in probs]
    assert travel.member_scores_ == pytest.approx(per)
    with pytest.raises(ValueError, match="needs one source per record"):
        EnsembleSelector(FitOptions(select_by="worst-source")).fit(probs, y)


def test_calibration_choice_by_source_uses_the_worst_source_loss():
    probs, y, sources = _two_sites(1)
    p = probs.mean(axis=0)
    pooled = PerLabelCalibrator(seed=0).fit(p, y)
    worst = PerLabelCalibrator(seed=0, rule="worst-source").fit(p, y, sources=sources)
    mean = PerLabelCalibrator(seed=0, rule="mean-source").fit(p, y, sources=sources)
    # The pooled log-loss is a record-weighted mean of the sources' losses: never above the
    # worst source's, and the per-source rules differ from it.
    assert np.all(worst.cv_log_loss_ >= pooled.cv_log_loss_ - 1e-12)
    assert not np.allclose(mean.cv_log_loss_, pooled.cv_log_loss_)
    again = PerLabelCalibrator.from_dict(worst.to_dict())
    assert again.rule == "worst-source"
    np.testing.assert_allclose(again.predict(p), worst.predict(p))


def test_fit_ensemble_selects_and_calibrates_by_source():
    probs, y, sources = _two_sites(2)
    opts = FitOptions(init_size=1, select_by="worst-source")
    fitted = fit_ensemble(probs, y, ["m0", "m1"], opts, label_names=list("ABC"),
                          sources=sources)
    assert fitted.selector.best_member_ == 1
    assert fitted.calibrator.rule == "worst-source"
    with pytest.raises(ValueError, match="needs each record's source"):
        fit_ensemble(probs, y, ["m0", "m1"], opts, label_names=list("ABC"))
