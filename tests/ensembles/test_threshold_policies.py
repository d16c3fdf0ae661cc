"""Threshold policies (clinical operating points): parsing, exact sensitivity / specificity
cuts, per-label overrides, the bundle record and the report's operating-point flags."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from ecgtune.ensembles import EnsembleOptionError
from ecgtune.ensembles.build.fitting import fit_ensemble
from ecgtune.ensembles.build.policies import (
    PolicySet,
    ThresholdPolicy,
    fit_policy_thresholds,
    policies_from_record,
    policy_record,
)
from ecgtune.ensembles.evaluate.metrics import evaluate_with_ci
from ecgtune.ensembles.evaluate.report import BELOW, MET, NOT_ASSESSABLE, operating_points
from ecgtune.ensembles.options import EnsembleOptions, FitOptions, add_arguments, from_namespace
from ecgtune.search import metric_keys as K
from ecgtune.search.thresholds import fit_thresholds

from .conftest import make_members

# ---------------------------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize(("text", "kind", "value"), [
    ("f1", "f1", None), ("fbeta:2", "fbeta", 2.0), ("challenge", "challenge", None),
    ("sensitivity:0.95", "sensitivity", 0.95), (" Specificity:1 ", "specificity", 1.0),
])
def test_policy_parsing(text, kind, value):
    policy = ThresholdPolicy.parse(text)
    assert (policy.kind, policy.value) == (kind, value)
    assert ThresholdPolicy.parse(str(policy)) == policy  # the text round-trips


@pytest.mark.parametrize(("text", "says"), [
    ("recall:0.9", "unknown threshold policy 'recall'"), ("sensitivity", "needs sensitivity:S"),
    ("sensitivity:1.5", "needs sensitivity:S"), ("specificity:0", "needs specificity:S"),
    ("fbeta:-1", "needs fbeta:B"), ("f1:2", "takes no value"), ("sensitivity:high", "not a number"),
])
def test_bad_policies_are_named(text, says):
    with pytest.raises(ValueError, match=says) as info:
        ThresholdPolicy.parse(text)
    assert repr(text) in str(info.value)


def test_target_metrics_are_the_report_keys():
    assert ThresholdPolicy.parse("sensitivity:0.9").target_metric == K.RECALL
    assert ThresholdPolicy.parse("specificity:0.9").target_metric == K.SPECIFICITY
    assert ThresholdPolicy.parse("fbeta:2").target_metric is None


def test_overrides_parse_check_labels_and_apply():
    policies = PolicySet.parse("sensitivity:0.95", ["AFIB=sensitivity:0.98", "SR=f1"])
    assert [str(p) for p in policies.for_labels(["AFIB", "SB", "SR"])] == [
        "sensitivity:0.98", "sensitivity:0.95", "f1"]
    with pytest.raises(ValueError, match=r"unknown label.*AFLT; labels: AFIB, SR"):
        PolicySet.parse("f1", ["AFLT=f1"]).check_labels(["AFIB", "SR"])
    with pytest.raises(ValueError, match="expected LABEL=POLICY"):
        PolicySet.parse("f1", ["sensitivity:0.9"])
    with pytest.raises(ValueError, match="names AFIB twice"):
        PolicySet.parse("f1", ["AFIB=f1", "AFIB=challenge"])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser, EnsembleOptions)
    return parser


def test_command_line_policies_reach_the_fit_options():
    args = _parser().parse_args(["--data", "d", "--name", "n", "--output", "o",
                                 "--threshold-policy", "sensitivity:0.95",
                                 "--threshold-policy-for", "AFIB=sensitivity:0.98",
                                 "--threshold-policy-for", "SR=specificity:0.9"])
    fit = from_namespace(args, EnsembleOptions).fit
    assert fit.threshold_policy == "sensitivity:0.95"
    assert fit.threshold_policy_for == ("AFIB=sensitivity:0.98", "SR=specificity:0.9")
    defaults = from_namespace(_parser().parse_args(["--data", "d", "--name", "n", "--output",
                                                    "o"]), EnsembleOptions).fit
    assert defaults.threshold_policy == "f1" and defaults.threshold_policy_for == ()


def test_bad_policy_options_fail_before_any_work(tmp_path):
    with pytest.raises(EnsembleOptionError, match=r"--threshold-policy: .*'sens:0\.9'"):
        FitOptions(threshold_policy="sens:0.9")
    with pytest.raises(EnsembleOptionError, match="--threshold-policy-for 'AFIB=f2'"):
        FitOptions(threshold_policy_for=("AFIB=f2",))
    # An unknown label is refused against the data's label map before tracking or Ray.
    from ecgtune.data_prep import get_label_map
    from ecgtune.ensembles import build_ensemble

    manifest = {"labels": get_label_map("seed20").to_manifest()}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EnsembleOptionError, match=r"unknown label.*AFLT"):
        build_ensemble(data=tmp_path, name="x", output=tmp_path / "b",
                       tracking_uri="http://127.0.0.1:9", threshold_policy_for=["AFLT=f1"])


# ---------------------------------------------------------------------------------------------
# Exact cuts


def _rates(y: np.ndarray, hits: np.ndarray) -> tuple[float, float]:
    tp, fp = np.sum(hits & y), np.sum(hits & ~y)
    return tp / y.sum(), 1 - fp / (~y).sum()


def _brute_force(y: np.ndarray, p: np.ndarray, rate: str, target: float) -> np.ndarray:
    """Decisions of the highest (sensitivity) / lowest (specificity) threshold among every
    distinct score (and 'above all') that meets the target."""
    candidates = np.r_[np.unique(p), np.nextafter(p.max(), np.inf)]
    ok = [t for t in candidates
          if (_rates(y, p >= t)[0 if rate == "sensitivity" else 1]) >= target - 1e-12]
    best = max(ok) if rate == "sensitivity" else min(ok)
    return p >= best


@pytest.mark.parametrize("rate", ["sensitivity", "specificity"])
@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 1.0])
def test_rate_thresholds_are_the_exact_cut(rate, target):
    rng = np.random.default_rng(int(target * 100))
    n, c = 300, 4
    y = rng.random((n, c)) < [0.05, 0.1, 0.3, 0.5]
    # Rounded scores: many ties, so only cuts between distinct scores are realisable.
    p = np.round(np.clip(0.3 * y + rng.normal(0.35, 0.2, (n, c)), 0, 1), 2)
    t = fit_thresholds(y, p, objective=rate, target=target, min_positives=1)
    for j in range(c):
        hits = p[:, j] >= t[j]
        np.testing.assert_array_equal(hits, _brute_force(y[:, j], p[:, j], rate, target))
        achieved = _rates(y[:, j], hits)[0 if rate == "sensitivity" else 1]
        assert achieved >= target - 1e-12


def test_a_target_met_exactly_counts_as_met():
    # 10 positives: sensitivity 0.9 needs exactly 9 of them, not 10 (0.9 * 10 in floats).
    y = np.array([1] * 10 + [0] * 10, bool)
    p = np.r_[np.linspace(0.9, 0.5, 10), np.linspace(0.45, 0.0, 10)]
    p[9] = 0.1  # the weakest positive scores below most negatives
    t = fit_thresholds(y[:, None], p[:, None], objective="sensitivity", target=0.9)
    assert np.sum((p >= t[0]) & y) == 9 and np.sum((p >= t[0]) & ~y) == 0
    t = fit_thresholds(y[:, None], p[:, None], objective="specificity", target=0.9)
    assert np.sum((p >= t[0]) & ~y) == 1  # 1 false positive of 10 negatives allowed


def test_rate_policies_need_a_target():
    with pytest.raises(ValueError, match="needs a target"):
        fit_thresholds(np.eye(4, dtype=bool), np.eye(4), objective="sensitivity")


def test_per_label_override_fits_each_label_by_its_own_policy():
    member_probs, y = make_members(n_members=1, n=800, c=4, seed=3)
    p = member_probs[0]
    names = ["A", "B", "C", "D"]
    policies = PolicySet.parse("f1", ["C=sensitivity:0.9", "D=specificity:0.95"]
                               ).for_labels(names)
    t = fit_policy_thresholds(y, p, policies, min_positives=5)
    f1 = fit_thresholds(y, p, objective="f1")
    np.testing.assert_array_equal(t[:2], f1[:2])
    assert t[2] == fit_thresholds(y, p, objective="sensitivity", target=0.9)[2]
    assert t[3] == fit_thresholds(y, p, objective="specificity", target=0.95)[3]
    assert _rates(y[:, 2], p[:, 2] >= t[2])[0] >= 0.9
    assert _rates(y[:, 3], p[:, 3] >= t[3])[1] >= 0.95


def test_ensemble_sensitivity_policy_reaches_its_target_on_its_fold():
    member_probs, y = make_members(n_members=5, n=800, c=5, seed=1)
    opts = FitOptions(threshold_policy="sensitivity:0.9", min_positives=5)
    fitted = fit_ensemble(member_probs, y, [f"m{i}" for i in range(5)], opts,
                          label_names=list("ABCDE"))
    probs = fitted.predict(member_probs)
    assert [str(q) for q in fitted.calibration.policies] == ["sensitivity:0.9"] * 5
    checked = 0
    for j in range(5):
        if fitted.calibration.fitted[j]:
            assert _rates(y[:, j], probs[:, j] >= fitted.thresholds[j])[0] >= 0.9
            checked += 1
    assert checked >= 4


# ---------------------------------------------------------------------------------------------
# The bundle record and the report


def test_policies_round_trip_through_the_bundle(tiny_bundle, tmp_path):
    from ecgtune.ensembles import load_bundle, save_bundle

    bundle = load_bundle(tiny_bundle)
    names = bundle.label_names
    policies = PolicySet.parse("sensitivity:0.95", ["AFIB=sensitivity:0.98", "SR=fbeta:2"]
                               ).for_labels(names)
    fit = {"thresholds": {"objective": "sensitivity", "beta": 1.0,
                          **policy_record(policies, names, policies[1])}}
    out = save_bundle(tmp_path / "b", bundle, fit=fit)
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["fit"]["thresholds"]["policies"]["AFIB"] == "sensitivity:0.98"
    assert meta["fit"]["thresholds"]["policy"] == "sensitivity:0.95"
    again = load_bundle(out)
    assert policies_from_record(again.metadata["fit"]["thresholds"], names) == policies
    np.testing.assert_array_equal(again.thresholds, bundle.thresholds)
    # A bundle from before policies: its objective and beta apply to every label.
    old = policies_from_record({"objective": "fbeta", "beta": 2.0}, names)
    assert old == [ThresholdPolicy("fbeta", 2.0)] * len(names)
    assert policies_from_record(None, names) == [ThresholdPolicy()] * len(names)


def test_report_flags_a_label_whose_ci_falls_below_its_target():
    rng = np.random.default_rng(0)
    n = 600
    y = rng.random((n, 3)) < 0.3
    p = np.clip(0.5 * y + rng.normal(0.25, 0.1, (n, 3)), 0, 1)
    # Label 0's threshold misses most positives (a shifted population), label 1's catches all.
    thresholds = np.array([0.7, 0.05, 0.5])
    y[:, 2] = False
    y[:3, 2] = True  # 3 positives: too few to assess
    row = evaluate_with_ci(y, p, thresholds, ["A", "B", "C"], n_boot=200)
    policies = [ThresholdPolicy.parse("sensitivity:0.9")] * 3
    points = {pt["label"]: pt for pt in operating_points(row, policies, ["A", "B", "C"],
                                                         min_positives=5)}
    assert points["A"]["status"] == BELOW and points["A"]["high"] < 0.9
    assert points["B"]["status"] == MET and points["B"]["low"] >= 0.9
    assert points["C"]["status"] == NOT_ASSESSABLE and points["C"]["estimate"] is None
    assert points["A"]["estimate"] == row["per_label"]["A"][K.RECALL]


def test_build_summary_names_policies_and_labels_below_target():
    from ecgtune.ensembles.build.ensemble import _policy_lines

    points = [{"label": "AFIB", "policy": "sensitivity:0.98", "status": BELOW},
              {"label": "SR", "policy": "f1", "status": ""},
              {"label": "SB", "policy": "f1", "status": MET}]
    assert _policy_lines(points) == [
        "Thresholds by policy: sensitivity:0.98 (1 labels), f1 (2 labels)",
        "  below target on the test fold (whole CI): AFIB"]
    assert _policy_lines([]) == []
