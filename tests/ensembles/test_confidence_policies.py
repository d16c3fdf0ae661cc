"""Operating points with a stated confidence (`sensitivity:S@C`, `specificity:S@C`): the
Clopper-Pearson bound itself, thresholds exact against brute force, the bound held on the fold
the policy was fitted on, the fallback named, and the report's columns."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta, binom

from ecgtune.ensembles.build.fitting import fit_ensemble
from ecgtune.ensembles.build.policies import (
    PolicySet,
    ThresholdPolicy,
    confidence_bounds,
    fit_policy_thresholds,
)
from ecgtune.ensembles.evaluate.metrics import evaluate_with_ci
from ecgtune.ensembles.evaluate.report import (
    FALLBACK,
    MET,
    operating_point_section,
    operating_points,
)
from ecgtune.ensembles.options import FitOptions
from ecgtune.search.thresholds import clopper_pearson_lower, fit_thresholds, required_count

from .conftest import make_members


@pytest.mark.parametrize("confidence", [0.8, 0.9, 0.95, 0.99])
def test_clopper_pearson_lower_bound_is_the_exact_binomial_one(confidence):
    alpha = 1 - confidence
    for n in (1, 7, 40, 333):
        for k in range(n + 1):
            low = float(clopper_pearson_lower(k, n, confidence))
            if k == 0:
                assert low == 0.0
                continue
            # Definition: the p at which seeing k or more successes has probability alpha.
            assert binom.sf(k - 1, n, low) == pytest.approx(alpha, rel=1e-7, abs=1e-12)
            assert low == pytest.approx(beta.ppf(alpha, k, n - k + 1), rel=1e-9, abs=1e-15)


def test_required_count_is_the_first_count_whose_bound_reaches_the_target():
    for n in (5, 30, 45, 46, 200):
        for target in (0.5, 0.9, 0.95):
            for confidence in (0.9, 0.95):
                need = required_count(n, target, confidence)
                bounds = [float(clopper_pearson_lower(k, n, confidence)) for k in range(n + 1)]
                reaching = [k for k, b in enumerate(bounds) if b >= target]
                assert need == (reaching[0] if reaching else None)
    # 45 of 45 shows 0.95 at 90% (0.1 ** (1 / 45) > 0.95); 44 of 44 does not.
    assert required_count(45, 0.95, 0.9) == 45 and required_count(44, 0.95, 0.9) is None


def _bound(y: np.ndarray, hits: np.ndarray, rate: str, confidence: float) -> float:
    if rate == "sensitivity":
        k, n = np.sum(hits & y), np.sum(y)
    else:
        k, n = np.sum(~hits & ~y), np.sum(~y)
    return float(beta.ppf(1 - confidence, k, n - k + 1)) if k else 0.0


def _brute_force(y: np.ndarray, p: np.ndarray, rate: str, target: float,
                 confidence: float) -> np.ndarray | None:
    """Decisions of the highest (sensitivity) / lowest (specificity) threshold among every
    distinct score (and 'above all') whose bound reaches the target; None when none does."""
    candidates = np.r_[np.unique(p), np.nextafter(p.max(), np.inf)]
    ok = [t for t in candidates if _bound(y, p >= t, rate, confidence) >= target]
    if not ok:
        return None
    return p >= (max(ok) if rate == "sensitivity" else min(ok))


@pytest.mark.parametrize("rate", ["sensitivity", "specificity"])
@pytest.mark.parametrize(("target", "confidence"), [(0.8, 0.9), (0.9, 0.95), (0.7, 0.99),
                                                    (0.95, 0.9)])
def test_confidence_thresholds_are_exact_against_brute_force(rate, target, confidence):
    rng = np.random.default_rng(int(target * 1000 + confidence * 100))
    n, c = 400, 5
    y = rng.random((n, c)) < [0.04, 0.1, 0.2, 0.5, 0.9]
    p = np.round(np.clip(0.35 * y + rng.normal(0.35, 0.2, (n, c)), 0, 1), 2)  # many ties
    t = fit_thresholds(y, p, objective=rate, target=target, confidence=confidence,
                       min_positives=1)
    plain = fit_thresholds(y, p, objective=rate, target=target, min_positives=1)
    reached = 0
    for j in range(c):
        hits = p[:, j] >= t[j]
        expected = _brute_force(y[:, j], p[:, j], rate, target, confidence)
        if expected is None:  # too few records for the bound: the plain target's cut
            assert t[j] == plain[j]
            continue
        np.testing.assert_array_equal(hits, expected)
        assert _bound(y[:, j], hits, rate, confidence) >= target
        reached += 1
    assert reached >= 2


def test_a_confident_policy_holds_its_bound_on_its_fitting_fold():
    member_probs, y = make_members(n_members=4, n=1500, c=5, seed=2)
    names = list("ABCDE")
    opts = FitOptions(threshold_policy="sensitivity:0.9@0.95",
                      threshold_policy_for=("E=specificity:0.9@0.9",), min_positives=5)
    fitted = fit_ensemble(member_probs, y, [f"m{i}" for i in range(4)], opts, label_names=names)
    probs = fitted.predict(member_probs)
    bounds = fitted.calibration.bounds
    assert sorted(bounds) == names
    held = 0
    for j, name in enumerate(names):
        b = bounds[name]
        hits = probs[:, j] >= fitted.thresholds[j]
        rate = "specificity" if name == "E" else "sensitivity"
        assert b["bound"] == pytest.approx(_bound(y[:, j].astype(bool), hits, rate,
                                                  b["confidence"]))
        if not b["fallback"]:
            assert b["bound"] >= b["target"]  # the stated confidence holds where fitted
            held += 1
    assert held >= 4


def test_too_few_positives_fall_back_to_the_plain_target_and_say_so():
    rng = np.random.default_rng(4)
    n = 500
    y = np.zeros((n, 2), bool)
    y[rng.choice(n, 20, replace=False), 0] = True  # 20 positives: 0.95@0.9 needs 45
    y[rng.choice(n, 150, replace=False), 1] = True
    p = np.clip(0.5 * y + rng.normal(0.3, 0.15, (n, 2)), 0, 1)
    policies = [ThresholdPolicy.parse("sensitivity:0.95@0.9")] * 2
    t = fit_policy_thresholds(y, p, policies, min_positives=5)
    plain = fit_thresholds(y, p, objective="sensitivity", target=0.95)
    assert t[0] == plain[0]
    bounds = confidence_bounds(y, p, t, policies, ["A", "B"])
    assert bounds["A"]["fallback"] and bounds["A"]["needed"] is None
    assert not bounds["B"]["fallback"] and bounds["B"]["bound"] >= 0.95
    row = evaluate_with_ci(y, p, t, ["A", "B"], n_boot=100)
    points = operating_points(row, policies, ["A", "B"], min_positives=5, bounds=bounds)
    assert points[0]["status"].startswith(f"{FALLBACK} to sensitivity:0.95: 20 positives "
                                          "cannot show 0.95 at 0.9 confidence")
    assert points[0]["fallback"] and not points[1]["fallback"]
    assert points[1]["confidence"] == 0.9 and points[1]["fitted_bound"] >= 0.95
    assert points[1]["status"] in (MET, "CI includes target", "BELOW TARGET")
    section = operating_point_section(points, "ensemble")
    assert "confidence" in section.header and "bound at fit (rate of n)" in section.header
    assert any("A" in b and "plain target" in b for b in section.bullets)


def test_confidence_policies_parse_and_print():
    policy = ThresholdPolicy.parse("Sensitivity:0.95@0.9")
    assert (policy.kind, policy.value, policy.confidence) == ("sensitivity", 0.95, 0.9)
    assert str(policy) == "sensitivity:0.95@0.9" and str(policy.plain) == "sensitivity:0.95"
    assert ThresholdPolicy.parse(str(policy)) == policy
    assert PolicySet.parse("f1", ["AFIB=specificity:0.9@0.95"]).for_labels(
        ["AFIB"])[0].confidence == 0.95
    for text, says in [("f1@0.9", "unknown threshold policy"),
                       ("fbeta:2@0.9", "takes no confidence"),
                       ("sensitivity:0.9@1", r"confidence C in \(0, 1\)"),
                       ("sensitivity:0.9@high", "'high' is not a number")]:
        with pytest.raises(ValueError, match=says):
            ThresholdPolicy.parse(text)
