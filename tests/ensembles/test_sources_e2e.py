"""End to end on synthetic sources with one held out: a `worst-source` search (each trial
logs its per-source values; ASHA, TPE and the kept checkpoints follow the worst source), an
ensemble selected and calibrated by source with a confidence-bounded operating point, and its
report of the internal test fold beside the external one, with referral. Slow: Ray and
MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ecgtune.search import metric_keys as K

pytestmark = pytest.mark.slow

HELD_OUT = "site-d"
SEEN = ("site-a", "site-b", "site-c")


@pytest.fixture(scope="module")
def source_search(tmp_path_factory: pytest.TempPathFactory):
    from ecgtune.data_prep import prepare, synthesize
    from ecgtune.search.run import SearchOptions, run_search
    from ecgtune.search.tracking import default_tracking_uri

    root = tmp_path_factory.mktemp("sources")
    synthesize(root / "records", 480, seed=0, sources=4, workers=2)
    data = root / "shards"
    prepare(root / "records", data, workers=2, progress=False, holdout_sources=[HELD_OUT])
    uri = default_tracking_uri(root)
    result = run_search(SearchOptions(
        data=data, space="tiny", name="sources", num_samples=3, tracking_uri=uri,
        storage=str(root / "ray_results"), num_cpus=2, max_concurrent=2, seed=0, verbose=0,
        objective="worst-source", overrides={"train.epochs": "2", "train.steps_per_epoch": "4"},
    ))
    return result, data, uri, root


def test_each_trial_logs_its_per_source_values(source_search) -> None:
    from ecgtune.search import tracking

    result, _, uri, _ = source_search
    assert result.complete and result.objective == ("worst-source",)
    client = tracking.client(uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.data.params["objective"] == "worst-source"
    assert "best/worst_source_auprc" in parent.data.metrics
    runs = tracking.trial_runs(client, result.experiment_id, result.parent_run_id)
    assert len(runs) == 3
    for run in runs:
        metrics = run.data.metrics
        per = {s: metrics[K.source_key(s)] for s in SEEN}  # every validated source, logged
        assert K.source_key(HELD_OUT) not in metrics  # never validated on
        assert metrics[K.WORST_SOURCE_AUPRC] == pytest.approx(min(per.values()))
        history = client.get_metric_history(run.info.run_id, K.WORST_SOURCE_AUPRC)
        assert metrics[K.BEST_OBJECTIVE] == pytest.approx(max(m.value for m in history))


def test_the_ensemble_reports_internal_beside_external(source_search, tmp_path: Path) -> None:
    from ecgtune.ensembles import build_ensemble
    from ecgtune.ensembles.build.ensemble import format_summary
    from ecgtune.search import tracking

    result, data, uri, _ = source_search
    built = build_ensemble(data=data, name=result.name, output=tmp_path / "bundle",
                           tracking_uri=uri, top_k=3, n_boot=100, seed=0, progress=False,
                           onnx=False, select_by="worst-source", refer_rate=0.1,
                           threshold_policy="sensitivity:0.8@0.8")
    ext = built.external
    assert ext is not None and ext["sources"] == [HELD_OUT] and ext["fold"] == 10
    assert ext["records"] == 120
    for pair in ext["rows"].values():
        assert pair["internal"]["n_samples"] == built.rows["ensemble"]["n_samples"]
    # Every stated-confidence target on the external fold is met or flagged.
    stated = [p for p in ext["operating_points"] if p.get("confidence") == 0.8]
    assert stated and all(p["status"] for p in stated)
    report = (built.report_dir / "report.html").read_text()
    assert "Internal vs external" in report and "on the external fold" in report
    assert json.loads((built.report_dir / "external.json").read_text())["sources"] == [HELD_OUT]
    bundle = json.loads((built.bundle_dir / "bundle.json").read_text())
    assert bundle["fit"]["selection"]["params"]["select_by"] == "worst-source"
    assert bundle["calibration"]["params"]["rule"] == "worst-source"
    assert set(bundle["fit"]["thresholds"]["confidence_bounds"]) == set(built.label_names)
    metrics = tracking.client(uri).get_run(built.run_id).data.metrics
    assert "external/macro_auprc" in metrics
    summary = format_summary(built)
    assert f"External fold (fold 10: {HELD_OUT}, 120 records, never fitted on)" in summary
    # Referral: chosen on the ensemble fold, reported with coverage on test and external.
    assert built.referral is not None and set(built.referral["folds"]) == {"test", "external"}
    assert "Referral (95% CI)" in report and "test/referral_coverage" in metrics
    assert "inference" in bundle and bundle["inference"]["referral"]["rate"] == 0.1
    assert "Referral: 0.1 of the ensemble fold referred" in summary
