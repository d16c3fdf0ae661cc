"""ensembles.evaluation: calibration metrics, evaluate, bootstrap CIs and the report files."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss

from ecgtune.ensembles.evaluation import (
    CI_METRICS,
    LABEL_METRICS,
    bootstrap_ci,
    brier,
    ece,
    evaluate,
    evaluate_with_ci,
    flatten_metrics,
    reliability_curve,
    write_report,
)
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
        assert brier(y, p, average=None)[c] == pytest.approx(brier_score_loss(y[:, c], p[:, c]))
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
    ci = bootstrap_ci(y, p, t, n_boot=1, seed=5, label_names=LABELS)
    idx = np.random.default_rng(5).integers(0, len(y), size=(1, len(y)))[0]
    ref = evaluate(y[idx], p[idx], t, LABELS)
    for k in CI_METRICS:
        assert ci["macro"][k]["low"] == pytest.approx(ref["macro"][k], abs=1e-10)
    for label in LABELS:
        for k in LABEL_METRICS:
            want = ref["per_label"][label][k]
            got = ci["per_label"][label][k]["low"]
            assert (want is None and got is None) or got == pytest.approx(want, abs=1e-10)


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
    paths = write_report(rows, tmp_path / "report" / "fold9", LABELS)
    assert {k: v.name for k, v in paths.items()} == {
        "json": "fold9.json",
        "markdown": "fold9.md",
        "html": "fold9.html",
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
