"""search.metrics, metric_keys and thresholds: equality with sklearn, undefined-label
handling, threshold fitting."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn import metrics as skm

from ecgtune.search import metric_keys as K
from ecgtune.search import metrics as M
from ecgtune.search import thresholds as T


def _data(n: int = 400, c: int = 6, seed: int = 0, ties: bool = True):
    rng = np.random.default_rng(seed)
    prevalence = np.linspace(0.02, 0.5, c)
    y = rng.random((n, c)) < prevalence
    p = np.clip(0.25 * rng.standard_normal((n, c)) + 0.2 + 0.35 * y, 0, 1)
    if ties:
        p = np.round(p, 1)  # many tied scores, mixed classes within ties
    return y, p


def test_metric_keys_are_shared_constants():
    assert K.OBJECTIVE == K.VAL_AUPRC == "val/macro_auprc"
    assert K.VAL_AUROC == "val/macro_auroc"
    assert (K.VAL_LOSS, K.TRAIN_LOSS, K.VAL_F1) == ("val/loss", "train/loss", "val/macro_f1")
    assert (K.THROUGHPUT, K.EPOCH) == ("train/samples_per_s", "epoch")
    assert K.metric_key("val", K.AUPRC) == K.OBJECTIVE
    assert K.metric_key("test", K.HAMMING) == "test/hamming_loss"
    assert K.metric_key("test", K.F1, "AFIB") == "test/f1/AFIB"


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("sign", [1.0, -1.0])  # negative scores take the argsort path
def test_ranking_metrics_equal_sklearn(ties, sign):
    y, p = _data(ties=ties)
    p = sign * p
    auroc, auprc = M.auroc_per_label(y, p), M.auprc_per_label(y, p)
    for c in range(y.shape[1]):
        assert auroc[c] == pytest.approx(skm.roc_auc_score(y[:, c], p[:, c]), abs=1e-12)
        assert auprc[c] == pytest.approx(skm.average_precision_score(y[:, c], p[:, c]), abs=1e-12)
    assert M.macro_auroc(y, p) == pytest.approx(np.mean(auroc))
    assert M.macro_auprc(y, p) == pytest.approx(np.mean(auprc))


def test_weighted_ranking_metrics_equal_sklearn():
    y, p = _data(seed=1)
    w = np.random.default_rng(2).integers(0, 4, len(y)).astype(float)
    auroc, auprc = M.ranking_metrics_per_label(y, p, sample_weight=w)
    for c in range(y.shape[1]):
        assert auroc[c] == pytest.approx(
            skm.roc_auc_score(y[:, c], p[:, c], sample_weight=w), abs=1e-12
        )
        assert auprc[c] == pytest.approx(
            skm.average_precision_score(y[:, c], p[:, c], sample_weight=w), abs=1e-12
        )
    # Several weightings at once equal one at a time; unit weights equal no weights.
    w2 = np.stack([w, np.ones(len(y)), w[::-1]])
    batch = M.auprc_per_label(y, p, sample_weight=w2)
    np.testing.assert_allclose(batch[0], auprc, atol=1e-12)
    np.testing.assert_allclose(batch[1], M.auprc_per_label(y, p), atol=1e-12)
    np.testing.assert_allclose(batch[2], M.auprc_per_label(y, p, w[::-1]), atol=1e-12)


def test_batched_scores_equal_one_at_a_time():
    y, p = _data(seed=3)
    stack = np.stack([p, np.round(p[::-1] * 0.9, 2), 1 - p])
    np.testing.assert_allclose(
        M.auprc_per_label(y, stack), [M.auprc_per_label(y, s) for s in stack], atol=1e-12
    )
    np.testing.assert_allclose(
        M.macro_auroc(y, stack), [M.macro_auroc(y, s) for s in stack], atol=1e-12
    )


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 30),
    seed=st.integers(0, 10_000),
    levels=st.integers(1, 6),
)
def test_ranking_metrics_property_against_sklearn(n, seed, levels):
    rng = np.random.default_rng(seed)
    y = rng.random((n, 2)) < 0.4
    p = rng.integers(0, levels, (n, 2)) / max(levels - 1, 1)  # heavy ties
    auroc, auprc = M.ranking_metrics_per_label(y, p)
    for c in range(2):
        if 0 < y[:, c].sum() < n:
            assert auroc[c] == pytest.approx(skm.roc_auc_score(y[:, c], p[:, c]), abs=1e-12)
            assert auprc[c] == pytest.approx(
                skm.average_precision_score(y[:, c], p[:, c]), abs=1e-12
            )
        else:
            assert np.isnan(auroc[c]) and np.isnan(auprc[c])


def test_labels_without_both_classes_are_excluded_not_nan_poisoning():
    y, p = _data(c=4)
    y[:, 1] = False  # no positives
    y[:, 2] = True  # no negatives
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from empty means
        auprc = M.auprc_per_label(y, p)
        value, used = M.macro_auprc(y, p, return_labels=True)
    assert np.isnan(auprc[[1, 2]]).all()
    assert used.tolist() == [0, 3]
    assert value == pytest.approx(np.mean(auprc[[0, 3]]))
    assert M.usable_labels(y).tolist() == [True, False, False, True]
    assert M.macro_auroc(y, p, return_labels=True)[1].tolist() == [0, 3]
    # Only when no label is usable is the macro average NaN.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(M.macro_auprc(np.zeros_like(y), p))


def test_thresholded_metrics_equal_sklearn():
    y, p = _data(seed=4)
    y[:, 0] = False  # F1/precision/kappa edge cases
    t = np.array([0.99, 0.3, 0.5, 0.4, 0.2, 0.6])
    pred = p >= t
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on the ill-defined label
        np.testing.assert_allclose(
            M.f1_per_label(y, p, t), skm.f1_score(y, pred, average=None), atol=1e-12
        )
        assert M.macro_f1(y, p, t) == pytest.approx(skm.f1_score(y, pred, average="macro"))
        np.testing.assert_allclose(
            M.precision_per_label(y, p, t),
            skm.precision_score(y, pred, average=None, zero_division=0),
        )
        np.testing.assert_allclose(
            M.recall_per_label(y, p, t), skm.recall_score(y, pred, average=None, zero_division=0)
        )
        spec = [skm.recall_score(~y[:, c], ~pred[:, c]) for c in range(y.shape[1])]
        np.testing.assert_allclose(M.specificity_per_label(y, p, t), spec)
        # NPV: the precision of the negative calls.
        npv = [skm.precision_score(~y[:, c], ~pred[:, c], zero_division=0)
               for c in range(y.shape[1])]
        counts = M.metrics_from_counts(M.confusion_counts(y, p, t))
        np.testing.assert_allclose(counts["npv"], npv)
        kappa = M.cohen_kappa_per_label(y, p, t)
        for c in range(y.shape[1]):
            ref = skm.cohen_kappa_score(y[:, c], pred[:, c])
            assert (np.isnan(ref) and np.isnan(kappa[c])) or kappa[c] == pytest.approx(ref)
    assert M.hamming_loss(y, p, t) == pytest.approx(skm.hamming_loss(y, pred))
    cc = M.confusion_counts(y, p, t)
    assert (cc.tp + cc.fp + cc.fn + cc.tn == len(y)).all()


def test_kappa_is_nan_only_when_undefined():
    y = np.zeros((10, 1), dtype=bool)
    assert np.isnan(M.cohen_kappa_per_label(y, np.zeros((10, 1)), [0.5])[0])
    y[:5] = True
    p = y.astype(float)
    assert M.cohen_kappa_per_label(y, p, [0.5])[0] == pytest.approx(1.0)


def test_weighted_confusion_counts_equal_replicated_data():
    y, p = _data(n=50, seed=5)
    t = np.full(y.shape[1], 0.4)
    w = np.random.default_rng(0).integers(0, 3, len(y))
    rep = np.repeat(np.arange(len(y)), w)
    counts = M.confusion_counts(y, p, t, sample_weight=np.stack([w, w]).astype(float))
    ref = M.confusion_counts(y[rep], p[rep], t)
    for got, want in zip(counts, ref, strict=True):
        np.testing.assert_allclose(got[1], want)


def test_pr_curve_matches_sklearn_and_average_precision():
    y, p = _data(seed=6)
    precision, recall, thresholds = M.pr_curve(y[:, 3], p[:, 3])
    sk_p, sk_r, sk_t = skm.precision_recall_curve(y[:, 3], p[:, 3])
    # sklearn lists thresholds ascending, stops once recall is 1 and appends (1, 0).
    k = len(sk_t)
    np.testing.assert_allclose(precision[:k], sk_p[:-1][::-1])
    np.testing.assert_allclose(recall[:k], sk_r[:-1][::-1])
    np.testing.assert_allclose(thresholds[:k], sk_t[::-1])
    ap = np.sum(np.diff(np.r_[0.0, recall]) * precision)
    assert ap == pytest.approx(M.auprc_per_label(y[:, 3], p[:, 3])[0])


def test_per_label_report_is_json_ready():
    y, p = _data(c=3)
    y[:, 0] = False
    report = M.per_label_report(y, p, [0.5] * 3, ["A", "B", "C"])
    assert report["A"][K.AUPRC] is None and report["A"][K.SUPPORT] == 0
    assert report["B"][K.F1] == pytest.approx(M.f1_per_label(y, p, [0.5] * 3)[1])
    json.dumps(report, allow_nan=False)


# --- thresholds --------------------------------------------------------------------------


def _miscalibrated(n: int = 4000, c: int = 5, seed: int = 0):
    """Imbalanced labels scored by an underconfident model: 0.5 is far from the best cut."""
    rng = np.random.default_rng(seed)
    prevalence = np.array([0.01, 0.03, 0.05, 0.1, 0.2])[:c]
    y = rng.random((n, c)) < prevalence
    z = rng.standard_normal((n, c)) + 2.0 * y + np.log(prevalence / (1 - prevalence))
    return y, 1 / (1 + np.exp(-0.5 * z))


def _brute_force_best_f1(y: np.ndarray, p: np.ndarray, beta: float = 1.0) -> float:
    best = 0.0
    for t in np.unique(p):
        pred = p >= t
        best = max(best, skm.fbeta_score(y, pred, beta=beta, zero_division=0))
    return best


def test_f1_thresholds_beat_half_and_generalise():
    y, p = _miscalibrated(seed=0)
    t = T.fit_thresholds(y, p)
    fitted, half = M.f1_per_label(y, p, t), M.f1_per_label(y, p, 0.5)
    assert (fitted >= half).all()
    assert (fitted[:3] > half[:3] + 0.1).all()  # the rare labels gain most
    y2, p2 = _miscalibrated(seed=1)  # held-out data from the same model
    assert M.macro_f1(y2, p2, t) > M.macro_f1(y2, p2, 0.5) + 0.1


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
def test_fitted_thresholds_reach_the_best_cut(beta):
    y, p = _data(n=300, c=4, seed=7)
    objective = "f1" if beta == 1.0 else "fbeta"
    t = T.fit_thresholds(y, p, objective=objective, beta=beta, min_positives=1)
    got = M.fbeta_per_label(y, p, t, beta=beta)
    for c in range(y.shape[1]):
        assert got[c] == pytest.approx(_brute_force_best_f1(y[:, c], p[:, c], beta))


def test_threshold_lies_halfway_between_scores():
    y = np.array([1, 1, 0, 1, 0, 0, 0, 0], dtype=bool)[:, None]
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.2, 0.1, 0.05])[:, None]
    # Best F1 cut: top 4 (tp 3, fp 1) -> threshold between 0.6 and 0.3.
    assert T.fit_thresholds(y, p, min_positives=1)[0] == pytest.approx(0.45)


def test_few_and_zero_positive_labels_get_fallback():
    y, p = _miscalibrated(n=1000)
    y[:, 0] = False
    y[:, 1] = False
    y[:3, 1] = True  # 3 positives < min_positives=5
    t = T.fit_thresholds(y, p, min_positives=5, fallback=0.5)
    assert t[0] == 0.5 and t[1] == 0.5 and t[2] != 0.5
    per_label = T.fit_thresholds(y, p, fallback=np.linspace(0.1, 0.5, 5))
    assert per_label[0] == pytest.approx(0.1) and per_label[1] == pytest.approx(0.2)
    # min_positives=0 still never fits a label without positives.
    assert T.fit_thresholds(y, p, min_positives=0, fallback=0.7)[0] == 0.7


def test_thresholds_are_deterministic_and_validated():
    y, p = _miscalibrated()
    np.testing.assert_array_equal(T.fit_thresholds(y, p), T.fit_thresholds(y, p))
    with pytest.raises(ValueError, match="valid"):
        T.fit_thresholds(y, p, objective="accuracy")
    with pytest.raises(ValueError, match="fbeta"):
        T.fit_thresholds(y, p, objective="f1", beta=2.0)
    assert set(T.THRESHOLD_OBJECTIVES) >= {"f1", "fbeta", "challenge"}


# --- challenge-style score ----------------------------------------------------------------


def _challenge_loop(y, pred, w, normal_index=None):
    """Reference: the challenge's record-by-record formulation."""

    def raw(out):
        a = np.zeros_like(w)
        for i in range(len(y)):
            norm = max(np.sum(y[i] | out[i]), 1)
            for j in np.flatnonzero(y[i]):
                for k in np.flatnonzero(out[i]):
                    a[j, k] += 1.0 / norm
        return np.sum(w * a)

    inactive = np.zeros_like(y)
    if normal_index is not None:
        inactive[:, normal_index] = True
    obs, best, worst = raw(pred), raw(y), raw(inactive)
    return (obs - worst) / (best - worst)


def test_challenge_score_matches_reference_and_bounds():
    rng = np.random.default_rng(0)
    y = rng.random((60, 5)) < 0.3
    pred = rng.random((60, 5)) < 0.3
    groups = ["a", "a", "b", "b", "b"]
    w = M.challenge_weights(5, groups)
    assert w[0, 1] == 0.5 and w[0, 2] == 0.0 and w[3, 3] == 1.0
    for normal in (None, 4):
        got = M.challenge_score(y, pred, groups=groups, normal_index=normal)
        assert got == pytest.approx(_challenge_loop(y, pred, w, normal))
        assert M.challenge_score(y, y, groups=groups, normal_index=normal) == pytest.approx(1.0)
    inactive = np.zeros_like(y)
    inactive[:, 4] = True
    assert M.challenge_score(y, inactive, normal_index=4) == pytest.approx(0.0)


def test_challenge_thresholds_improve_on_f1_start():
    y, p = _miscalibrated(n=2000)
    groups = [0, 0, 1, 1, 1]
    t_f1 = T.fit_thresholds(y, p)
    t_ch = T.fit_thresholds(y, p, objective="challenge", groups=groups)
    before = M.challenge_score(y, p >= t_f1, groups=groups)
    after = M.challenge_score(y, p >= t_ch, groups=groups)
    assert after >= before
    assert np.array_equal(t_ch, T.fit_thresholds(y, p, objective="challenge", groups=groups))


def test_metrics_module_stays_light():
    code = (
        "import sys, ecgtune.search.metrics; "
        "heavy = {'torch', 'matplotlib', 'mlflow', 'ray'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(np.float64, (25, 3), elements=st.floats(0, 1)),
    hnp.arrays(np.bool_, (25, 3)),
)
def test_thresholds_never_below_half_on_fitting_f1(p, y):
    t = T.fit_thresholds(y, p, min_positives=1, fallback=0.5)
    fitted = y.sum(axis=0) >= 1
    got = M.f1_per_label(y, p, t)
    ref = M.f1_per_label(y, p, 0.5)
    assert (got[fitted] >= ref[fitted] - 1e-12).all()
