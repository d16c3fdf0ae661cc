"""`build_ensemble` end to end on the tiny search: members, selection, calibration, thresholds,
report, MLflow run and registry."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from ecgtune.components import ModelConfig, get_preset
from ecgtune.ensembles import EnsembleError, MemberError, SearchNotFoundError
from ecgtune.ensembles.build import members as members_module
from ecgtune.ensembles.build.ensemble import ROW_BEST, ROW_ENSEMBLE, ROW_UNIFORM, format_summary
from ecgtune.ensembles.build.fitting import FitOptions, fit_ensemble
from ecgtune.ensembles.build.members import (
    TrialRef,
    find_search,
    load_member,
    rank_trials,
    resolve_checkpoint,
)
from ecgtune.ensembles.build.selection import SELECTION_METRICS
from ecgtune.ensembles.evaluate.scores import brier
from ecgtune.ensembles.ship.inference import InputSpec, MemberSpec, member_probabilities
from ecgtune.ensembles.ship.registry import CHAMPION_ALIAS, TAG_SEARCH_RUN_ID
from ecgtune.search import tracking


@pytest.fixture(scope="module")
def members_and_ensemble_fold(built_ensemble):
    """All four candidates reloaded independently of the build, with their probabilities on
    the ensemble fold (found by role in the manifest)."""
    from ecgtune.data_prep import load_shards

    b = built_ensemble
    client = tracking.client(b.tracking_uri)
    search = find_search(client, b.search_name)
    trials = rank_trials(client, search, 4)
    data = load_shards(b.data, folds=[b.result.folds["ensemble"]])
    names = list(data.label_map.names)
    members = [load_member(t, b.search_name, label_names=names) for t in trials]
    inputs = InputSpec.from_manifest(data.manifest)
    probs = np.stack([member_probabilities(m.model, m.spec, data.signals, inputs)
                      for m in members])
    return members, probs, data.labels.astype(bool)


def test_members_are_the_top_trials_by_the_objective(built_ensemble):
    b = built_ensemble
    result = b.result
    scores = [m.val_score for m in result.members]
    assert len(result.members) == 4 and scores == sorted(scores, reverse=True)
    runs = {r.info.run_id: r for r in tracking.client(b.tracking_uri).search_runs(
        [tracking.client(b.tracking_uri).get_experiment_by_name(b.search_name).experiment_id])}
    for m in result.members:
        assert runs[m.run_id].data.tags[tracking.TAG_ROLE] == "trial"
        assert runs[m.run_id].data.metrics["val/best_macro_auprc"] == pytest.approx(m.val_score)
    assert abs(sum(result.weights.values()) - 1.0) < 1e-12
    assert set(result.weights) == {m.name for m in result.members if m.count > 0}


def test_selection_never_worse_than_the_best_member_or_the_average(built_ensemble,
                                                                   members_and_ensemble_fold):
    result = built_ensemble.result
    members, probs, y_ens = members_and_ensemble_fold
    metric = SELECTION_METRICS[result.metric]
    member_scores = metric(y_ens, probs)
    weights = np.array([result.weights.get(m.name, 0.0) for m in members])
    ensemble_score = float(metric(y_ens, np.tensordot(weights, probs, axes=1)[None])[0])
    uniform_score = float(metric(y_ens, probs.mean(axis=0)[None])[0])
    assert ensemble_score >= member_scores.max() - 1e-12
    assert ensemble_score >= uniform_score - 1e-12
    assert ensemble_score == pytest.approx(result.ensemble_fold_score, abs=1e-9)
    assert result.best_member_ensemble_fold_score == pytest.approx(member_scores.max(),
                                                                   abs=1e-9)
    assert result.selection["uniform_score"] == pytest.approx(uniform_score, abs=1e-9)
    assert result.selection["chosen"] in ("greedy", "uniform")


def test_calibration_keeps_probabilities_in_range_and_brier_no_worse(built_ensemble):
    result = built_ensemble.result
    p = result.test_probabilities
    assert p.shape == (len(result.test_records), 20)
    assert np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
    fitted_on = next(c for c in result.calibration if c.role == "ensemble")
    assert fitted_on.fold == result.folds["ensemble"] == 8  # the roles prep writes
    assert fitted_on.brier_after <= fitted_on.brier_before + 1e-9
    assert fitted_on.ece_after <= fitted_on.ece_before
    assert set(result.calibration_methods) <= {"temperature", "platt", "isotonic", "identity"}


def test_thresholds_with_few_or_zero_positives(built_ensemble, members_and_ensemble_fold):
    result = built_ensemble.result
    fit = json.loads((result.bundle_dir / "bundle.json").read_text())["fit"]["thresholds"]
    assert fit["min_positives"] == 5 and len(fit["fitted"]) == 20
    t = np.asarray(result.thresholds)
    for ok, threshold in zip(fit["fitted"], t, strict=True):
        if not ok:
            assert threshold == 0.5  # the documented fallback
    assert np.isfinite(t).all() and ((t >= 0) & (t <= 1)).all()
    # A label without a single positive on the ensemble fold: identity calibration, fallback
    # threshold.
    members, probs, y_ens = members_and_ensemble_fold
    y = y_ens.copy()
    y[:, 3] = False
    fitted = fit_ensemble(probs, y, [m.name for m in members], FitOptions())
    assert fitted.calibrator.methods_[3] == "identity"
    assert fitted.thresholds[3] == 0.5 and not fitted.calibration.fitted[3]
    q = fitted.predict(probs)
    assert np.isfinite(q).all() and (q >= 0).all() and (q <= 1).all()
    assert brier(y, q) <= brier(y, fitted.predict_uncalibrated(probs)) + 1e-9


def test_report_rows_files_and_figures(built_ensemble):
    result = built_ensemble.result
    assert {ROW_ENSEMBLE, ROW_BEST, ROW_UNIFORM} <= set(result.rows)
    names = {p.name for p in result.report_files}
    assert {"report.json", "report.md", "report.html", "summary.json", "reliability.png",
            "pr_curves.png", "f1_per_label.png"} <= names
    report = json.loads((result.report_dir / "report.json").read_text())
    row = report["rows"][ROW_ENSEMBLE]
    assert row["n_samples"] == len(result.test_records)  # the test fold only
    for metric in ("auroc", "auprc", "f1", "precision", "recall", "specificity", "kappa",
                   "hamming_loss", "ece", "brier"):
        assert metric in row["macro"] and metric in row["ci"]["macro"]
    for ci in (*row["ci"]["macro"].values(),
               *(v for label in row["ci"]["per_label"].values() for v in label.values())):
        if ci["estimate"] is not None:
            assert ci["low"] <= ci["estimate"] <= ci["high"]
    assert set(row["per_label"]) == set(result.label_names)
    md = (result.report_dir / "report.md").read_text()
    assert "Ensemble calibration" in md and "test fold (9, held out)" in md
    assert "ensemble fold (8, fitted)" in md
    assert "on the ensemble fold" in md and "uniform average of all 4 members" in md
    page = (result.report_dir / "report.html").read_text()
    # Summary, members, 4 per-label tables, operating points, calibration.
    assert page.count("<table>") == 8 and "uniform average of all 4 members" in page
    assert "Operating points of the ensemble" in page
    # The figures are in the page itself; the members table names every candidate.
    assert page.count('<img src="data:image/png;base64,') == 3 and "http" not in page
    members = page[page.index("<h2>Members</h2>"):]
    members = members[: members.index("</table>")]
    assert all(f"<td>{m.name}</td><td>{m.run_name}</td>" in members for m in result.members)
    assert "fusion" in members and "<th>GFLOP</th>" in members
    assert "<th>thresholds by</th>" in page and "<td>f1, ensemble fold</td>" in page
    summary = json.loads((result.report_dir / "summary.json").read_text())
    assert summary["weights"] == pytest.approx(result.weights)
    points = summary["operating_points"]
    assert [p["label"] for p in points] == result.label_names
    assert {p["policy"] for p in points} == {"f1"} and points == result.operating_points
    fit = json.loads((result.bundle_dir / "bundle.json").read_text())["fit"]["thresholds"]
    assert fit["policy"] == "f1" and set(fit["policies"].values()) == {"f1"}


def test_mlflow_ensemble_run_and_registered_champion(built_ensemble):
    b = built_ensemble
    result = b.result
    client = tracking.client(b.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[tracking.TAG_ROLE] == "ensemble"
    assert run.data.tags[TAG_SEARCH_RUN_ID] == result.search_run_id
    # Named for what tells it apart: its number among the search's ensembles, what it kept,
    # its thresholds' policy and the version it registered.
    assert re.fullmatch(rf"tiny ensemble #\d+: {len(result.weights)} of top-4, f1 thresholds, "
                        rf"{b.registered} v{result.model_version}", run.info.run_name)
    assert run.data.metrics["cost/gflops"] > 0  # the key-metrics view's cost column
    assert int(run.data.params["top_k"]) == 4 and run.data.params["metric"] == "macro_auprc"
    assert json.loads(run.data.params["weights"]) == pytest.approx(result.weights)
    assert run.data.metrics["test/macro_auprc"] == pytest.approx(
        result.rows[ROW_ENSEMBLE]["macro"]["auprc"])
    assert "test/auprc/SB" in run.data.metrics
    assert "calibration/test_ece_after" in run.data.metrics
    assert "calibration/ensemble_ece_after" in run.data.metrics
    assert run.data.metrics["selection/ensemble_macro_auprc"] == pytest.approx(
        result.ensemble_fold_score)
    assert run.data.params["selection_chosen"] == result.selection["chosen"]
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "report")}
    assert {"report/report.html", "report/reliability.png"} <= artifacts
    version = client.get_model_version_by_alias(b.registered, CHAMPION_ALIAS)
    assert str(version.version) == result.model_version
    assert version.tags["ecgtune.ensemble_run_id"] == result.run_id
    # Provenance: which data, from which databases (the suite trains on synthetic records).
    assert version.tags["ecgtune.trained_on"] == "synthetic"
    assert version.tags["ecgtune.source_databases"].startswith("synthetic ")
    assert len(version.tags["ecgtune.data_manifest_sha256"]) == 64
    bundle_fit = json.loads((result.bundle_dir / "bundle.json").read_text())["fit"]
    assert list(bundle_fit["trained_on"]) == ["synthetic"]
    summary = format_summary(result)
    assert "synthetic records, so its outputs are not diagnoses" in summary
    assert f"#/experiments/{result.experiment_id}/runs?workflowType=machine_learning" in summary


def test_failed_build_ends_its_run_failed(built_ensemble, tmp_path, monkeypatch):

    b = built_ensemble

    def broken(trial, *args, **kwargs):
        raise MemberError(f"{trial.label}: checkpoint not found (test)")

    monkeypatch.setattr(members_module, "load_member", broken)
    from ecgtune.ensembles import build_ensemble

    with pytest.raises(MemberError, match="checkpoint not found"):
        build_ensemble(data=b.data, name=b.search_name, output=tmp_path / "bundle",
                       tracking_uri=b.tracking_uri, top_k=2, progress=False)
    client = tracking.client(b.tracking_uri)
    experiment = client.get_experiment_by_name(b.search_name)
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.`{tracking.TAG_ROLE}` = 'ensemble'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    assert runs[0].info.status == "FAILED"
    assert "checkpoint not found" in runs[0].data.tags[tracking.TAG_ERROR]
    assert not (tmp_path / "bundle").exists()


def test_user_errors_before_any_work(built_ensemble, tmp_path):
    from ecgtune.ensembles import build_ensemble

    b = built_ensemble
    common = {"tracking_uri": b.tracking_uri, "progress": False}
    with pytest.raises(SearchNotFoundError, match="no MLflow experiment named 'nope'"):
        build_ensemble(data=b.data, name="nope", output=tmp_path / "x", **common)
    with pytest.raises(EnsembleError, match="not a prepared data directory"):
        build_ensemble(data=tmp_path, name=b.search_name, output=tmp_path / "x", **common)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(EnsembleError, match="refusing to overwrite"):
        build_ensemble(data=b.data, name=b.search_name, output=occupied, **common)
    assert (occupied / "notes.txt").read_text() == "mine"
    with pytest.raises(EnsembleError, match="unknown metric"):
        build_ensemble(data=b.data, name=b.search_name, output=tmp_path / "x",
                       metric="accuracy", **common)


def test_moved_checkpoints_are_found_under_storage(built_ensemble, tmp_path):
    b = built_ensemble
    client = tracking.client(b.tracking_uri)
    trial = rank_trials(client, find_search(client, b.search_name), 1)[0]
    original = tmp_path.parent  # any folder that does not hold the checkpoint
    parts = trial.checkpoint.rstrip("/").split("/")
    moved = TrialRef(trial.rank, trial.run_id, trial.run_name, trial.trial_id, trial.score,
                     f"{original}/gone/{parts[-2]}/{parts[-1]}")
    with pytest.raises(MemberError, match=f"run {trial.run_id}.*pass --storage"):
        with resolve_checkpoint(moved, b.search_name):
            pass
    storage = tmp_path / "storage"
    shutil.copytree(f"{b.storage}/{b.search_name}/{parts[-2]}/{parts[-1]}",
                    storage / b.search_name / parts[-2] / parts[-1])
    with resolve_checkpoint(moved, b.search_name, str(storage)) as directory:
        assert (directory / "model.pt").is_file()
    member = load_member(moved, b.search_name, str(storage))
    assert member.spec.crop_len == 1024 and member.spec.normalization == "dataset"


def test_seed_style_detection():
    groups = ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9), (10, 11, 12, 13, 14, 15), (16, 17, 18, 19))
    seed_multi = get_preset("seed-multi")
    tiny_multi = get_preset("tiny-multi")
    assert MemberSpec("a", seed_multi, 20, groups, 4096, "dataset").is_seed_style
    independent = ModelConfig.from_flat({"fusion": "independent"}, base=tiny_multi)
    assert MemberSpec("b", independent, 20, groups, 1024, "dataset").is_seed_style
    assert not MemberSpec("c", tiny_multi, 20, groups, 1024, "dataset").is_seed_style
    assert not MemberSpec("d", get_preset("tiny"), 20, (tuple(range(20)),), 1024,
                          "dataset").is_seed_style
