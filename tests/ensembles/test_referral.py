"""Referral (`ensemble --refer-rate R`): the uncertainty score, the cut chosen on the fold it is
fitted on, the coverage / error summary, and the refer flag through the bundle, `predict`,
the pyfunc model and the ONNX graph, with equal decisions everywhere."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from ecgtune.ensembles.build.fitting import fit_ensemble
from ecgtune.ensembles.build.referral import (
    Referral,
    fit_referral,
    logit,
    referral_scores,
    referral_summary,
)
from ecgtune.ensembles.options import FitOptions

from .conftest import make_members


def test_the_score_is_member_spread_minus_threshold_margin():
    rng = np.random.default_rng(0)
    members = rng.uniform(0.01, 0.99, (3, 50, 4))
    weights = np.array([0.5, 0.3, 0.2])
    calibrated = rng.uniform(0.01, 0.99, (50, 4))
    thresholds = np.array([0.3, 0.5, 0.7, 0.4])
    scores = referral_scores(members, weights, calibrated, thresholds)
    for i in range(50):
        z = np.log(members[:, i] / (1 - members[:, i]))
        spread = np.sqrt(np.sum(weights[:, None] * (z - weights @ z) ** 2, axis=0))
        margin = np.abs(logit(calibrated[i]) - logit(thresholds))
        assert scores[i] == pytest.approx(np.max(spread - margin))
    # One member: no spread, the closest decision alone.
    one = referral_scores(members[:1], [1.0], calibrated, thresholds)
    np.testing.assert_allclose(one, -np.abs(logit(calibrated) - logit(thresholds)).min(axis=1))


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.25, 0.5])
def test_the_cut_refers_the_asked_share_of_its_fold(rate):
    scores = np.random.default_rng(1).normal(size=400)
    referral = fit_referral(scores, rate)
    assert referral.refer(scores).sum() == round(rate * 400)
    # The referred are the most uncertain.
    assert scores[referral.refer(scores)].min() > scores[~referral.refer(scores)].max()
    assert fit_referral(scores, 0.0).refer(scores).sum() == 0
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        fit_referral(scores, 1.0)
    assert Referral.from_dict(referral.to_dict()) == referral


def test_referring_the_uncertain_lowers_the_error_of_the_kept():
    member_probs, y = make_members(n_members=5, n=1500, c=5, seed=4)
    opts = FitOptions(refer_rate=0.2)
    fitted = fit_ensemble(member_probs, y, [f"m{i}" for i in range(5)], opts,
                          label_names=list("ABCDE"))
    assert fitted.referral is not None and fitted.referral.rate == 0.2
    refer = fitted.refer(member_probs)
    assert refer is not None and refer.sum() == 300
    summary = referral_summary(y, fitted.predict(member_probs), fitted.thresholds, refer)
    assert summary["coverage"]["value"] == pytest.approx(0.8)
    kept, everyone = summary["error_kept"], summary["error_all"]
    assert kept["value"] < everyone["value"] < summary["error_referred"]["value"]
    wrong = (fitted.predict(member_probs) >= fitted.thresholds) != y
    assert kept["value"] == pytest.approx(wrong[~refer].mean())  # labels wrong per record
    assert summary["any_wrong_kept"]["count"] == wrong[~refer].any(axis=1).sum()
    for s in summary.values():
        assert s["low"] <= s["value"] <= s["high"]
    assert fit_ensemble(member_probs, y, [f"m{i}" for i in range(5)], FitOptions(),
                        label_names=list("ABCDE")).refer(member_probs) is None


# ---------------------------------------------------------------------------------------------
# The flag through every way of running a bundle.


@pytest.fixture(scope="module")
def referring_bundle(tmp_path_factory) -> Path:
    """Two random `tiny` members (different seeds disagree) referring a third of records."""
    import torch

    from ecgtune.components import build_model, get_preset
    from ecgtune.data_prep import get_label_map
    from ecgtune.ensembles.build.calibration import PerLabelCalibrator
    from ecgtune.ensembles.ship.bundle import save_bundle
    from ecgtune.ensembles.ship.inference import EnsemblePredictor, InputSpec, MemberSpec
    from ecgtune.ensembles.ship.onnx_export import sample_signals

    label_map = get_label_map("seed20")
    groups = label_map.group_indices()
    n = len(label_map)
    members = []
    for i in range(2):
        torch.manual_seed(10 + i)
        model = build_model(get_preset("tiny"), n, groups).eval()
        members.append((MemberSpec(f"m{i}", get_preset("tiny"), n,
                                   tuple(tuple(g) for g in model.label_groups), 1024,
                                   "dataset"), model))
    rng = np.random.default_rng(0)
    calibrator = PerLabelCalibrator(methods=("temperature",)).fit(
        rng.uniform(0.01, 0.99, (200, n)), rng.random((200, n)) < 0.3)
    inputs = InputSpec(fs=500, seconds=10.0, n_samples=5000, gain=1000.0,
                       norm_mean=(0.0,) * 12, norm_std=(0.25,) * 12)
    predictor = EnsemblePredictor(members, [0.6, 0.4], calibrator, rng.uniform(0.3, 0.7, n),
                                  label_map.names, inputs, 1, label_map=label_map.name,
                                  label_groups=groups, group_names=label_map.group_names)
    signals = sample_signals(24, 5000, 500, 10.0, seed=3)
    members_p = predictor.member_probabilities(signals)
    scores = referral_scores(members_p, predictor.weights, predictor.predict_signals(signals),
                             predictor.thresholds)
    predictor.referral = fit_referral(scores, 1 / 3)
    return save_bundle(tmp_path_factory.mktemp("referring") / "bundle", predictor)


def _records(root: Path, n: int = 12) -> tuple[Path, np.ndarray]:
    """Synthetic WFDB records other than the ones the cut was fitted on, and their stored
    signals (as `predict` reads them)."""
    from ecgtune.data_prep import validate_record
    from ecgtune.data_prep.synth import make_record, write_record

    signals = []
    for i in range(n):
        spec, digital = make_record(8, i + 1)
        hea = write_record(root, f"R{i:03d}", digital, dx_codes=spec.dx_codes)
        signals.append(validate_record(hea).signal)
    return root, np.stack(signals)


def test_the_refer_flag_is_equal_in_bundle_predict_and_pyfunc(referring_bundle, tmp_path):
    from ecgtune.ensembles.ship import pyfunc_model
    from ecgtune.ensembles.ship.bundle import load_bundle
    from ecgtune.ensembles.ship.predict import predict_records, write_predictions_csv

    bundle = load_bundle(referring_bundle)
    assert bundle.referral is not None and bundle.metadata["inference"]["referral"]["rate"] > 0
    folder, signals = _records(tmp_path / "in")
    probs, refer = bundle.predict_with_referral(signals)
    np.testing.assert_array_equal(probs, bundle.predict_signals(signals))
    assert 0 < refer.sum() < len(refer)  # some referred, some not: the test can tell
    result = predict_records(bundle, [folder])
    assert result.refer == refer.tolist()
    rows = list(csv.DictReader(write_predictions_csv(result, tmp_path / "p.csv").open()))
    assert [int(r["refer"]) for r in rows] == refer.astype(int).tolist()
    model = pyfunc_model.EnsembleBundleModel()
    model.bundle = bundle
    frame = model.predict(None, signals)
    assert frame["refer"].tolist() == refer.tolist()
    np.testing.assert_array_equal(frame[bundle.label_names].to_numpy(), probs)


def test_a_bundle_without_referral_adds_no_column(tiny_bundle, tmp_path):
    from ecgtune.ensembles.ship.bundle import load_bundle
    from ecgtune.ensembles.ship.predict import predict_records, write_predictions_csv
    from ecgtune.ensembles.ship.registry import model_signature

    bundle = load_bundle(tiny_bundle)
    folder, _ = _records(tmp_path / "in", 2)
    result = predict_records(bundle, [folder])
    assert result.refer is None
    header = (write_predictions_csv(result, tmp_path / "p.csv").read_text().splitlines()[0]
              .split(","))
    assert "refer" not in header
    names = [c.name for c in model_signature(["A"], 5000, refer=True).outputs]
    assert names == ["A", "refer"]


@pytest.mark.slow
def test_the_onnx_graph_refers_the_same_records(referring_bundle, tmp_path):
    from ecgtune.ensembles.ship.bundle import load_bundle
    from ecgtune.ensembles.ship.onnx_export import (
        REFER_NAME,
        export_onnx,
        open_session,
        read_metadata,
        run_session_refer,
    )

    _, signals = _records(tmp_path / "in")
    result = export_onnx(referring_bundle, tmp_path / "model.onnx", check_signals=signals)
    assert result.decisions_agree == 1.0
    bundle = load_bundle(referring_bundle)
    probs, refer = bundle.predict_with_referral(signals)
    got_probs, decisions, got_refer = run_session_refer(open_session(result.path), signals)
    assert np.abs(got_probs - probs).max() <= 1e-4
    assert np.array_equal(decisions, got_probs >= bundle.thresholds)
    assert got_refer.dtype == np.bool_ and got_refer.tolist() == refer.tolist()
    assert 0 < refer.sum() < len(refer)
    assert REFER_NAME in read_metadata(result.path)["outputs"]
