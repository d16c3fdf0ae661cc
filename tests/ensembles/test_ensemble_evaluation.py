"""ensembles.evaluate.metrics (calibration metrics, evaluate, BCa bootstrap CIs) and the report
files of ensembles.evaluate.report."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import brier_score_loss, log_loss

from ecgtune.ensembles.evaluate import metrics as evaluation
from ecgtune.ensembles.evaluate.metrics import (
    CI_METRICS,
    LABEL_METRICS,
    bca_interval,
    bootstrap_ci,
    ece,
    evaluate,
    evaluate_with_ci,
    flatten_metrics,
    reliability_curve,
)
from ecgtune.ensembles.evaluate.report import (
    Document,
    Section,
    render_html,
    render_markdown,
    write_report,
)
from ecgtune.ensembles.evaluate.scores import brier
from ecgtune.ensembles.evaluate.scores import log_loss as our_log_loss
from ecgtune.search import metric_keys as K
from ecgtune.search import metrics as M
from ecgtune.search import thresholds as T

LABELS = ["AFIB", "SB", "CRBBB", "LQV", "PACE"]


def _ece_loop(y, p, n_bins):
    total = 0.0
    edges = np.linspace(0, 1, n_bins + 1)
    for b in range(n_bins):
        last = b == n_bins - 1
        in_bin = (p >= edges[b]) & ((p <= edges[b + 1]) if last else (p < edges[b + 1]))
        if in_bin.any():
            total += in_bin.sum() / len(p) * abs(y[in_bin].mean() - p[in_bin].mean())
    return total


def _data(members, seed=0):
    probs, y = members(n_members=1, n=800, c=5, seed=seed)
    return y, probs[0]


def test_ece_brier_and_reliability(members):
    y, p = _data(members)
    per_label = ece(y, p, n_bins=10, average=None)
    for c in range(y.shape[1]):
        assert per_label[c] == pytest.approx(_ece_loop(y[:, c], p[:, c], 10))
        assert brier(y, p, axis=0)[c] == pytest.approx(brier_score_loss(y[:, c], p[:, c]))
        assert our_log_loss(y[:, c], p[:, c]) == pytest.approx(log_loss(y[:, c], p[:, c]))
    assert brier(y, p) == pytest.approx(brier(y, p, axis=0).mean())
    assert ece(y, p, n_bins=10) == pytest.approx(per_label.mean())
    rc = reliability_curve(y, p, n_bins=10)
    assert rc.counts.shape == (5, 10) and (rc.counts.sum(axis=1) == len(y)).all()
    gaps = np.nansum(rc.counts * np.abs(rc.fraction_positive - rc.mean_predicted), axis=1)
    np.testing.assert_allclose(gaps / len(y), per_label)
    one = reliability_curve(y[:, 0], p[:, 0], 10)
    assert one.counts.shape == (10,)
    # A calibrated sample has a small ECE.
    rng = np.random.default_rng(0)
    q = rng.random((20000, 1))
    assert ece(rng.random((20000, 1)) < q, q) < 0.02


def test_evaluate_matches_metric_functions(members):
    y, p = _data(members)
    y[:, 4] = False  # no positives
    t = T.fit_thresholds(y, p)
    result = evaluate(y, p, t, LABELS)
    json.dumps(result, allow_nan=False)
    assert result["n_samples"] == len(y) and result["labels"] == LABELS
    assert set(result["macro"]) == set(CI_METRICS)
    assert result["macro"][K.AUPRC] == pytest.approx(M.macro_auprc(y, p))
    assert result["macro"][K.AUROC] == pytest.approx(M.macro_auroc(y, p))
    assert result["macro"][K.F1] == pytest.approx(M.macro_f1(y, p, t))
    assert result["macro"][K.HAMMING] == pytest.approx(M.hamming_loss(y, p, t))
    assert result["macro"][K.ECE] == pytest.approx(ece(y, p))
    assert "PACE" not in result["labels_used"][K.AUPRC]
    pace = result["per_label"]["PACE"]
    assert pace[K.AUPRC] is None and pace[K.SUPPORT] == 0
    afib = result["per_label"]["AFIB"]
    assert afib[K.KAPPA] == pytest.approx(M.cohen_kappa_per_label(y, p, t)[0])
    assert afib[K.THRESHOLD] == pytest.approx(t[0])
    flat = flatten_metrics(result, "test")
    assert flat["test/macro_auprc"] == result["macro"][K.AUPRC]
    assert "test/auprc/PACE" not in flat and "test/f1/AFIB" in flat


def test_bootstrap_ci_contains_estimate_and_is_reproducible(members):
    y, p = _data(members, seed=1)
    t = T.fit_thresholds(y, p)
    ci = bootstrap_ci(y, p, t, n_boot=300, seed=3, label_names=LABELS)
    point = evaluate(y, p, t, LABELS)
    for k in CI_METRICS:
        row = ci["macro"][k]
        assert row["estimate"] == pytest.approx(point["macro"][k])
        assert row["low"] <= row["estimate"] <= row["high"]
        assert row["low"] < row["high"]
    for label in LABELS:
        for k in LABEL_METRICS:
            row = ci["per_label"][label][k]
            assert row["estimate"] == pytest.approx(point["per_label"][label][k])
            assert row["low"] <= row["high"]
    assert ci == bootstrap_ci(y, p, t, n_boot=300, seed=3, label_names=LABELS)
    assert ci != bootstrap_ci(y, p, t, n_boot=300, seed=4, label_names=LABELS)
    json.dumps(ci, allow_nan=False)


def test_bootstrap_weighting_equals_explicit_resampling(members):
    """One resample: the weighted fast path equals evaluating the resampled records."""
    y, p = _data(members, seed=2)
    t = T.fit_thresholds(y, p)
    weights = evaluation._resample_weights(np.random.default_rng(5), len(y), 1, 1)
    per_label, macro = evaluation._metric_samples(y.astype(bool), p, t, 15, weights)
    idx = np.random.default_rng(5).integers(0, len(y), size=(1, len(y)))[0]
    ref = evaluate(y[idx], p[idx], t, LABELS)
    for k in CI_METRICS:
        assert macro[k][0] == pytest.approx(ref["macro"][k], abs=1e-10)
    for i, label in enumerate(LABELS):
        for k in LABEL_METRICS:
            want = ref["per_label"][label][k]
            got = per_label[k][0, i]
            assert (want is None and np.isnan(got)) or got == pytest.approx(want, abs=1e-10)


def test_jackknife_weights_leave_out_each_record_or_group_once():
    small = np.concatenate(list(evaluation._jackknife_weights(7, 3)))
    np.testing.assert_array_equal(small, 1 - np.eye(7))
    large = np.concatenate(list(evaluation._jackknife_weights(1234, 250)))
    assert large.shape == (evaluation._MAX_JACKKNIFE, 1234)
    np.testing.assert_array_equal((1 - large).sum(axis=0), np.ones(1234))


def _calibrated_but_few(rng, n=300, c=3):
    """Well-calibrated probabilities on few records: the plug-in ECE is biased upward, so
    nearly every resample's ECE lies above the full-data estimate."""
    q = rng.random((n, c))
    return rng.random((n, c)) < q, q


@pytest.mark.parametrize("seed", range(4))
def test_every_reported_interval_contains_its_estimate(members, seed):
    rng = np.random.default_rng(seed)
    cases = [_data(members, seed=seed), _calibrated_but_few(rng)]
    for y, p in cases:
        t = T.fit_thresholds(y, p)
        ci = bootstrap_ci(y, p, t, n_boot=200, seed=seed)
        rows = [*ci["macro"].values(),
                *(v for label in ci["per_label"].values() for v in label.values())]
        for row in rows:
            if row["estimate"] is not None:
                assert row["low"] <= row["estimate"] <= row["high"], row
    # The ECE case really is the biased one the widening exists for.
    y, p = _calibrated_but_few(np.random.default_rng(0))
    w = evaluation._resample_weights(np.random.default_rng(0), len(y), 200, 200)
    _, macro = evaluation._metric_samples(y, p, np.full(3, 0.5), 15, w)
    assert np.mean(macro[K.ECE] > ece(y, p)) > 0.9


def test_bca_matches_scipy_on_a_mean():
    rng = np.random.default_rng(0)
    x = rng.exponential(size=200)  # skewed: bias correction and acceleration both matter
    boot = x[rng.integers(0, len(x), size=(4000, len(x)))].mean(axis=1)
    jack = (x.sum() - x) / (len(x) - 1)
    low, high = bca_interval(boot, jack, x.mean())
    ref = stats.bootstrap((x,), np.mean, n_resamples=4000, method="BCa",
                          random_state=np.random.default_rng(1)).confidence_interval
    assert low == pytest.approx(ref.low, abs=0.02) and high == pytest.approx(ref.high, abs=0.02)


def test_bca_coverage_is_near_nominal_on_simulated_data():
    """95% intervals for AUROC (binormal scores: true AUROC = Phi(d / sqrt 2)) and Brier
    (calibrated probabilities: true Brier = E[q (1 - q)] = 1/6) cover the truth in 90-99% of
    200 simulated test folds."""
    d = 1.0
    true_auroc = stats.norm.cdf(d / np.sqrt(2))
    hits = {K.AUROC: 0, K.BRIER: 0}
    rng = np.random.default_rng(2024)
    n_sims = 200
    for sim in range(n_sims):
        n = 150
        y = rng.random(n) < 0.4
        score = rng.normal(size=n) + d * y
        q = rng.random(n)
        y2 = rng.random(n) < q
        labels = np.stack([y, y2], axis=1)
        probs = np.stack([1 / (1 + np.exp(-score)), q], axis=1)
        ci = bootstrap_ci(labels, probs, 0.5, n_boot=200, seed=sim)["per_label"]
        auroc, brier_ci = ci["label_0"][K.AUROC], ci["label_1"][K.BRIER]
        hits[K.AUROC] += auroc["low"] <= true_auroc <= auroc["high"]
        hits[K.BRIER] += brier_ci["low"] <= 1 / 6 <= brier_ci["high"]
    for metric, count in hits.items():
        assert 0.90 <= count / n_sims <= 0.99, (metric, count)


def test_bootstrap_rare_label_does_not_poison_macro(members):
    y, p = _data(members, seed=3)
    y[:, 4] = False
    y[:2, 4] = True  # often absent from a resample
    ci = bootstrap_ci(y, p, 0.5, n_boot=200, seed=0, label_names=LABELS)
    assert ci["macro"][K.AUPRC]["low"] is not None
    assert ci["per_label"]["PACE"][K.AUPRC]["low"] is not None


def test_write_report(tmp_path, members):
    y, p = _data(members, seed=4)
    t = T.fit_thresholds(y, p)
    rows = {
        "ensemble": evaluate_with_ci(y, p, t, LABELS, n_boot=50),
        "best single trial": evaluate(y, np.clip(p * 0.9, 0, 1), t, LABELS),
        "seed-style baseline (0.5 thresholds)": evaluate_with_ci(y, p, 0.5, LABELS, n_boot=50),
    }
    paths = write_report(rows, tmp_path / "report" / "test_fold", LABELS)
    assert {k: v.name for k, v in paths.items()} == {
        "json": "test_fold.json",
        "markdown": "test_fold.md",
        "html": "test_fold.html",
    }
    data = json.loads(paths["json"].read_text())
    assert data["labels"] == LABELS and list(data["rows"]) == list(rows)
    assert data["rows"]["ensemble"]["ci"]["macro"][K.AUPRC]["low"] is not None
    md = paths["markdown"].read_text()
    for name in [*rows, *LABELS]:
        assert name in md
    assert re.search(r"\| ensemble \| \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", md)
    table_lines = [line for line in md.splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in table_lines[:5]}) == 1  # well-formed rows
    page = paths["html"].read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<table>") == 5
    assert "http" not in page and "src=" not in page  # standalone
    assert "seed-style baseline (0.5 thresholds)" in page
    with pytest.raises(ValueError):
        write_report({}, tmp_path / "x", LABELS)


def test_markdown_and_html_render_the_same_document():
    doc = Document("T <1>", (
        Section("Table", paragraphs=("before & after",), header=("a", "b"),
                body=(("1", "<2>"), ("3", "4"))),
        Section("Notes", bullets=("one", "two")),
    ))
    md = render_markdown(doc)
    assert md.splitlines()[:3] == ["# T <1>", "", "## Table"]
    assert "| a | b |\n|---|---|\n| 1 | <2> |\n| 3 | 4 |" in md and "- one\n- two" in md
    page = render_html(doc)
    assert "<title>T &lt;1&gt;</title>" in page and "<p>before &amp; after</p>" in page
    assert "<td>&lt;2&gt;</td>" in page and "<ul><li>one</li><li>two</li></ul>" in page
    assert page.count("<table>") == 1 and page.rstrip().endswith("</body></html>")
