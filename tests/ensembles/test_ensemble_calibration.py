"""ensembles.build.calibration: contract tests over every calibrator plus calibration properties."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import expit, logit

from ecgtune.ensembles.build.calibration import (
    CALIBRATORS,
    Calibrator,
    IsotonicCalibrator,
    PerLabelCalibrator,
    PlattCalibrator,
    TemperatureCalibrator,
)
from ecgtune.ensembles.evaluate.metrics import ece
from ecgtune.ensembles.evaluate.scores import brier

SINGLE = sorted(k for k in CALIBRATORS if k != "per_label")
MONOTONE = ("temperature", "platt", "isotonic")


def _distorted(n: int, seed: int, kind: str = "sharp"):
    """Labels drawn from true probabilities p; the model reports a distorted p'."""
    rng = np.random.default_rng(seed)
    p = expit(rng.normal(-1.5, 1.2, n))
    y = rng.random(n) < p
    if kind == "sharp":  # overconfident: p' = sigmoid(3 logit p)
        reported = expit(3 * logit(p))
    elif kind == "shift":  # biased: p' = sigmoid(logit p + 1.5)
        reported = expit(logit(p) + 1.5)
    else:  # underconfident
        reported = expit(logit(p) / 3)
    return reported, y


def _build(name: str) -> Calibrator:
    return CALIBRATORS[name]()


def _fit(name: str | Calibrator, p: np.ndarray, y: np.ndarray) -> Calibrator:
    cal = _build(name) if isinstance(name, str) else name
    if isinstance(cal, PerLabelCalibrator):
        return cal.fit(p.reshape(-1, 1), y.reshape(-1, 1))
    return cal.fit(p, y)


def _predict(cal: Calibrator, p: np.ndarray) -> np.ndarray:
    if isinstance(cal, PerLabelCalibrator):
        return cal.predict(p.reshape(-1, 1))[:, 0]
    return cal.predict(p)


@pytest.mark.parametrize("name", sorted(CALIBRATORS))
def test_contract(name):
    p, y = _distorted(800, 0)
    cal = _build(name)
    with pytest.raises(RuntimeError, match="not fitted"):
        _predict(cal, p)
    fitted = _fit(cal, p, y)
    assert fitted is cal
    assert [k for k in vars(cal) if k.endswith("_")], "fitted attributes end in _"
    q = _predict(cal, p)
    assert q.shape == p.shape and np.isfinite(q).all()
    assert ((q >= 0) & (q <= 1)).all()
    # Export: JSON only, and the rebuilt calibrator gives identical outputs.
    text = json.dumps(cal.to_dict(), allow_nan=False)
    again = Calibrator.from_dict(json.loads(text))
    assert type(again) is type(cal)
    np.testing.assert_array_equal(_predict(again, p), q)
    grid = np.linspace(0, 1, 101)
    np.testing.assert_array_equal(_predict(again, grid), _predict(cal, grid))


@pytest.mark.parametrize("name", SINGLE)
def test_single_calibrators_keep_shape(name):
    p, y = _distorted(600, 1)
    cal = _build(name).fit(p.reshape(200, 3), y.reshape(200, 3))
    assert cal.predict(p.reshape(300, 2)).shape == (300, 2)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(2, 80),
    name=st.sampled_from([*SINGLE, "per_label"]),
    skew=st.floats(-3, 3),
)
def test_outputs_in_unit_interval_and_brier_never_worse(seed, n, name, skew):
    rng = np.random.default_rng(seed)
    p = expit(rng.normal(skew, 2.0, n))
    p[rng.random(n) < 0.1] = rng.choice([0.0, 1.0])  # saturated inputs
    y = rng.random(n) < rng.random()
    cal = _fit(name, p, y)
    q = _predict(cal, p)
    assert ((q >= 0) & (q <= 1)).all()
    assert brier(y, q) <= brier(y, p) + 1e-9
    q_new = _predict(cal, rng.random(50))
    assert ((q_new >= 0) & (q_new <= 1)).all()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(5, 200), name=st.sampled_from(MONOTONE))
def test_monotone_in_input(seed, n, name):
    rng = np.random.default_rng(seed)
    p = rng.random(n) ** rng.uniform(0.3, 3)
    y = rng.random(n) < (p if rng.random() < 0.7 else 1 - p)  # sometimes anti-correlated
    cal = _build(name).fit(p, y)
    grid = np.sort(np.r_[np.linspace(0, 1, 301), p])
    assert (np.diff(cal.predict(grid)) >= 0).all()


@pytest.mark.parametrize("kind", ["sharp", "shift", "flat"])
@pytest.mark.parametrize("name", [*MONOTONE, "per_label"])
def test_known_miscalibration_is_repaired_on_held_out_data(name, kind):
    p_fit, y_fit = _distorted(6000, 2, kind)
    p_test, y_test = _distorted(6000, 3, kind)
    cal = _fit(name, p_fit, y_fit)
    before = ece(y_test, p_test)
    after = ece(y_test, _predict(cal, p_test))
    assert before > 0.03
    if name == "temperature" and kind == "shift":
        assert after <= before  # a temperature cannot express a bias, only not make it worse
    else:
        assert after < 0.5 * before
    assert brier(y_fit, _predict(cal, p_fit)) <= brier(y_fit, p_fit) + 1e-9


def test_parametric_fits_recover_the_distortion():
    p, y = _distorted(20000, 4, "sharp")
    assert TemperatureCalibrator().fit(p, y).temperature_ == pytest.approx(3.0, rel=0.1)
    platt = PlattCalibrator().fit(p, y)
    assert platt.a_ == pytest.approx(1 / 3, rel=0.1)
    assert abs(platt.b_) < 0.15


def test_isotonic_is_stored_as_plain_arrays():
    p, y = _distorted(500, 5)
    iso = IsotonicCalibrator().fit(p, y)
    assert isinstance(iso.x_thresholds_, np.ndarray) and isinstance(iso.y_thresholds_, np.ndarray)
    assert not any("sklearn" in type(v).__module__ for v in vars(iso).values())
    state = iso.to_dict()["params"]
    assert set(state) == {"x", "y"} and all(isinstance(v, float) for v in state["x"])


def _multi_label(n: int = 3000, seed: int = 6):
    rng = np.random.default_rng(seed)
    cols, labels = [], []
    for kind in ("sharp", "shift", "flat", "sharp"):
        p, y = _distorted(n, int(rng.integers(1 << 30)), kind)
        cols.append(p)
        labels.append(y)
    p, y = np.stack(cols, 1), np.stack(labels, 1)
    y[:, 3] = False
    y[:3, 3] = True  # 3 positives: too few for 5-fold cross-fitting
    p = np.c_[p, rng.random(n)]
    y = np.c_[y, np.zeros(n, dtype=bool)]  # no positives at all
    return p, y


def test_per_label_selection_and_fallbacks():
    p, y = _multi_label()
    cal = PerLabelCalibrator(cv=5, seed=0).fit(p, y)
    assert len(cal.calibrators_) == cal.n_labels_ == 5
    assert all(m in ("temperature", "platt", "isotonic") for m in cal.methods_[:3])
    # Chosen = lowest cross-fitted log-loss.
    for c in range(3):
        assert cal.methods_[c] == cal.methods[int(np.argmin(cal.cv_log_loss_[c]))]
    assert cal.methods_[3] == "temperature" and np.isnan(cal.cv_log_loss_[3]).all()
    assert cal.methods_[4] == "identity" and np.isnan(cal.cv_log_loss_[4]).all()
    q = cal.predict(p)
    np.testing.assert_array_equal(q[:, 4], p[:, 4])
    assert (brier(y, q, axis=0) <= brier(y, p, axis=0) + 1e-9).all()
    # Deterministic for a seed.
    again = PerLabelCalibrator(cv=5, seed=0).fit(p, y)
    np.testing.assert_array_equal(again.cv_log_loss_, cal.cv_log_loss_)
    np.testing.assert_array_equal(again.predict(p), q)


def test_per_label_validation():
    p, y = _multi_label(n=300)
    with pytest.raises(ValueError, match="valid"):
        PerLabelCalibrator(methods=("temperature", "beta")).fit(p, y)
    with pytest.raises(ValueError, match="valid"):
        PerLabelCalibrator(methods=("per_label",)).fit(p, y)
    with pytest.raises(ValueError, match="shape"):
        PerLabelCalibrator().fit(p[:, 0], y[:, 0])
    single = PerLabelCalibrator(methods=("isotonic",)).fit(p, y)
    assert single.methods_[:4] == ["isotonic"] * 4
    with pytest.raises(ValueError):
        Calibrator.from_dict({"method": "nope", "params": {}})
    with pytest.raises(ValueError):
        TemperatureCalibrator.from_dict(PlattCalibrator().fit(p[:, 0], y[:, 0]).to_dict())
