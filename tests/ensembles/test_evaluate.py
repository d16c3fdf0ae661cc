"""`ecgtune evaluate`: a bundle on prepared data (no Ray, no server): the report, labels not
assessable, the per-source breakdown, label-map refusal and the linked MLflow run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ecgtune.ensembles import EnsembleOptionError, ModelInputError
from ecgtune.ensembles.evaluate.metrics import evaluate_with_ci
from ecgtune.ensembles.evaluate.report import NOT_ASSESSABLE
from ecgtune.ensembles.evaluate.run import (
    EvaluationError,
    evaluate_bundle,
    format_evaluation,
    record_sources,
)
from ecgtune.search import metric_keys as K

N_SYNTHETIC, N_GEORGIA = 60, 30
FAST = {"n_boot": 50, "progress": False, "device": "cpu"}


def _as_georgia(header: Path, number: int) -> None:
    """Rename a synthetic record to a Georgia-style name (E...) and drop its synthetic
    comment, so that prep counts it as another database."""
    old = header.stem
    new = f"E{number:05d}"
    text = header.read_text().replace(old, new)
    text = "\n".join(line for line in text.splitlines() if "synthetic" not in line) + "\n"
    (header.parent / f"{new}.hea").write_text(text)
    header.with_suffix(".mat").rename(header.parent / f"{new}.mat")
    header.unlink()


@pytest.fixture(scope="module")
def external_data(tmp_path_factory) -> Path:
    """Prepared data of 60 synthetic and 30 'georgia' records (renamed synthetic ones)."""
    from ecgtune.data_prep import prepare, synthesize

    root = tmp_path_factory.mktemp("external")
    synthesize(root / "raw", N_SYNTHETIC + N_GEORGIA, seed=3)
    headers = sorted((root / "raw").rglob("*.hea"))
    for i, header in enumerate(headers[:N_GEORGIA]):
        _as_georgia(header, i + 1)
    prepare(root / "raw", root / "prep", workers=1, progress=False)
    return root / "prep"


def test_record_sources_rules():
    assert list(record_sources(["JS1", "E1"], ["ptb-xl", "georgia"], {})) == ["ptb-xl",
                                                                             "georgia"]
    paths = ["WFDBRecords/01/010/JS1.hea", "x/E1.hea"]
    assert list(record_sources(["JS1", "E1"], paths, {"synthetic": 2})) == ["synthetic"] * 2
    # Synthetic records are named JS but counted apart from ecg-arrhythmia.
    assert list(record_sources(["JS1", "E1", "HR1"], [*paths, "HR1.hea"],
                               {"synthetic": 1, "georgia": 1, "ptb-xl": 1})) == [
        "synthetic", "georgia", "ptb-xl"]
    assert list(record_sources(["JS1", "rec7"], paths, None)) == ["ecg-arrhythmia", "unknown"]


def test_evaluate_all_by_source_writes_the_report(tiny_bundle, external_data, tmp_path):
    out = tmp_path / "report"
    result = evaluate_bundle(bundle=str(tiny_bundle), data=external_data, all_folds=True,
                             by="source", output=out, min_positives=3, **FAST)
    assert len(result.records) == N_SYNTHETIC + N_GEORGIA
    assert sorted(result.by_source) == ["georgia", "synthetic"]
    assert int(np.sum(result.sources == "georgia")) == N_GEORGIA
    y = _labels(external_data, result.records)
    support = y.sum(axis=0)
    few = [n for n, k in zip(result.label_names, support, strict=True) if k < 3]
    assert few and result.not_assessable == few  # seed20 has labels synthetic data rarely has
    # Assessable labels carry the same numbers as a plain evaluation of their columns.
    keep = support >= 3
    plain = evaluate_with_ci(y[:, keep], result.probabilities[:, keep], 0.5,
                             np.array(result.label_names)[keep].tolist(), n_boot=50)
    assert result.row["macro"] == plain["macro"]
    for name in few:
        entry = result.row["per_label"][name]
        assert entry["assessable"] is False and entry[K.F1] is None
    page = (out / "report.html").read_text()
    assert "By source database" in page and "Operating points" in page
    assert NOT_ASSESSABLE in (out / "report.md").read_text()
    by_source = json.loads((out / "by_source.json").read_text())
    assert set(by_source) == {"georgia", "synthetic"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sources"] == {"georgia": N_GEORGIA, "synthetic": N_SYNTHETIC}
    assert {p["policy"] for p in summary["operating_points"]} == {"f1"}  # a pre-policy bundle
    from ecgtune.search.metrics import challenge_score

    groups = [g for g, idx in enumerate(json.loads((tiny_bundle / "bundle.json").read_text())[
        "labels"]["groups"]) for _ in idx["labels"]]
    expected = challenge_score(y, result.probabilities >= 0.5, groups=groups,
                               normal_index=result.label_names.index("SR"))
    assert summary["challenge_score"] == result.challenge_score == pytest.approx(expected)
    assert "Challenge-style score" in (out / "report.md").read_text()
    assert (out / "reliability.png").is_file()
    text = format_evaluation(result)
    assert f"Evaluated {N_SYNTHETIC + N_GEORGIA} records" in text
    assert f"not assessable: {', '.join(few)}" in text
    assert any(line.split()[:2] == ["georgia", str(N_GEORGIA)] for line in text.splitlines())


def _labels(data: Path, records: np.ndarray) -> np.ndarray:
    from ecgtune.data_prep import load_shards

    ds = load_shards(data)
    order = {r: i for i, r in enumerate(ds.records.tolist())}
    return ds.labels.astype(bool)[[order[r] for r in records.tolist()]]


def _copy_with_manifest(data: Path, dest: Path, edit) -> Path:
    shutil.copytree(data, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    edit(manifest)
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def test_another_label_map_is_refused_with_one_line(tiny_bundle, external_data, tmp_path,
                                                    capsys):
    from ecgtune.ensembles.cli import main

    def rename(manifest):
        manifest["labels"][0]["name"] = "AFL"

    renamed = _copy_with_manifest(external_data, tmp_path / "renamed", rename)
    code = main(["evaluate", "--bundle", str(tiny_bundle), "--data", str(renamed), "--all",
                 "--output", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "differs from the bundle's" in err and "missing AFIB" in err and "extra AFL" in err

    def rbbb(manifest):
        manifest["label_map"] = "seed20-rbbb"

    other = _copy_with_manifest(external_data, tmp_path / "rbbb", rbbb)
    with pytest.raises(ModelInputError, match="label map seed20-rbbb differs"):
        evaluate_bundle(bundle=str(tiny_bundle), data=other, all_folds=True,
                        output=tmp_path / "r2", **FAST)
    assert not (tmp_path / "r").exists() and not (tmp_path / "r2").exists()


def test_bad_options_are_refused_before_any_work(tiny_bundle, external_data, tmp_path):
    with pytest.raises(EnsembleOptionError, match="exclude each other"):
        evaluate_bundle(bundle=str(tiny_bundle), data=external_data, folds=(9,),
                        all_folds=True, **FAST)
    with pytest.raises(EnsembleOptionError, match="--by: only 'source'"):
        evaluate_bundle(bundle=str(tiny_bundle), data=external_data, by="site", **FAST)
    with pytest.raises(EvaluationError, match="needs --model"):
        evaluate_bundle(bundle=str(tiny_bundle), data=external_data,
                        tracking_uri=f"sqlite:///{tmp_path}/m.db", **FAST)
    with pytest.raises(EvaluationError, match="no label has 90"):
        evaluate_bundle(bundle=str(tiny_bundle), data=external_data, all_folds=True,
                        min_positives=90, output=tmp_path / "none", **FAST)


@pytest.mark.slow  # no server, but SQLite's schema migrations alone take ~10 s
def test_evaluation_run_is_linked_to_the_model_version(tiny_bundle, external_data, tmp_path):
    from ecgtune.search import tracking

    uri = tracking.default_tracking_uri(tmp_path)
    client = tracking.client(uri)
    experiment = tracking.get_or_create_experiment(client, "tiny", uri)  # artifacts beside it
    model_run = client.create_run(experiment).info.run_id
    client.set_terminated(model_run)
    client.create_registered_model("tiny-ensemble")
    version = client.create_model_version("tiny-ensemble", str(tiny_bundle), run_id=model_run)
    client.set_registered_model_alias("tiny-ensemble", "champion", version.version)

    result = evaluate_bundle(bundle=str(tiny_bundle), data=external_data, all_folds=True,
                             output=tmp_path / "r", tracking_uri=uri,
                             model="tiny-ensemble@champion", min_positives=3, **FAST)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.info.experiment_id == experiment
    sha = result.data_manifest_sha256
    assert run.data.tags["ecgtune.model_name"] == "tiny-ensemble"
    assert run.data.tags["ecgtune.model_version"] == str(version.version)
    assert run.data.tags["ecgtune.data_manifest_sha256"] == sha and len(sha) == 64
    assert run.data.tags["ecgtune.role"] == "evaluation"
    assert run.data.metrics["evaluation/macro_auroc"] == result.row["macro"][K.AUROC]
    assert run.data.metrics["evaluation/challenge_score"] == result.challenge_score
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "report")}
    assert "report/report.html" in artifacts
    # Every evaluation of the version is one search away.
    found = client.search_runs([experiment],
                               "tags.`ecgtune.model_version` = '1' and "
                               "tags.`ecgtune.role` = 'evaluation'")
    assert [r.info.run_id for r in found] == [result.run_id]
    # The registered model itself as --bundle: fetched from the registry and linked alike.
    again = evaluate_bundle(bundle="models:/tiny-ensemble@champion", data=external_data,
                            all_folds=True, output=tmp_path / "r2", tracking_uri=uri,
                            min_positives=3, **FAST)
    assert again.model_version == str(version.version) and again.run_id != result.run_id
    np.testing.assert_array_equal(again.probabilities, result.probabilities)


def test_evaluate_the_real_sample_records(tiny_bundle, sample_dir, tmp_path):
    from ecgtune.data_prep import prepare

    prepare(sample_dir, tmp_path / "prep", workers=1, progress=False)
    result = evaluate_bundle(bundle=str(tiny_bundle), data=tmp_path / "prep", all_folds=True,
                             by="source", output=tmp_path / "report", min_positives=2, **FAST)
    assert len(result.records) == 20 and list(result.by_source) == ["ecg-arrhythmia"]
    # Every sample record has atrial premature beats: no negative, so APB is not assessable.
    assert "APB" in result.not_assessable
    assert (tmp_path / "report" / "report.html").is_file()


@pytest.mark.slow
def test_default_folds_reproduce_the_builds_test_fold_report(built_ensemble, tmp_path):
    from .conftest import BUILD_OPTIONS

    built = built_ensemble.result
    result = evaluate_bundle(bundle=str(built.bundle_dir), data=built_ensemble.data,
                             output=tmp_path, min_positives=1, n_boot=BUILD_OPTIONS["n_boot"],
                             seed=BUILD_OPTIONS["seed"], progress=False, device="cpu")
    assert result.folds == [built.folds["test"]]
    np.testing.assert_array_equal(result.records, built.test_records)
    np.testing.assert_allclose(result.probabilities, built.test_probabilities, atol=1e-5)
    build_row = built.rows["ensemble"]
    for label in result.label_names:
        if label in result.not_assessable:
            continue
        ours, theirs = result.row["per_label"][label], build_row["per_label"][label]
        for metric in (K.AUROC, K.AUPRC, K.F1, K.RECALL, K.SPECIFICITY):
            assert ours[metric] == pytest.approx(theirs[metric], abs=1e-9), (label, metric)


def test_refit_thresholds_writes_a_new_bundle(tiny_bundle, external_data, tmp_path):
    from ecgtune.data_prep import load_shards
    from ecgtune.ensembles import load_bundle

    before = (tiny_bundle / "manifest.json").read_bytes()
    on = list(range(8))
    new = tmp_path / "refit"
    result = evaluate_bundle(bundle=str(tiny_bundle), data=external_data, output=tmp_path / "r",
                             refit_thresholds="sensitivity:0.9",
                             threshold_policy_for=["SB=specificity:0.8"], on_folds=on,
                             refit_output=new, min_positives=3, **FAST)
    from ecgtune.data_prep import fold_roles, read_manifest

    # Default folds: the test role's (refitting on others).
    test_folds = list(fold_roles(read_manifest(external_data))["test"])
    assert result.refit_bundle == new and result.folds == test_folds
    assert len(result.records) == len(load_shards(external_data, folds=test_folds))
    assert (tiny_bundle / "manifest.json").read_bytes() == before  # never in place
    refitted = load_bundle(new)
    meta = refitted.metadata["fit"]
    assert meta["thresholds"]["policies"]["SB"] == "specificity:0.8"
    assert meta["thresholds"]["policies"]["AFIB"] == "sensitivity:0.9"
    assert meta["refit"]["folds"] == on and meta["refit"]["previous_thresholds"] == [0.5] * 20
    assert (new / "report" / "report.html").is_file()
    # On the refit folds every label with enough positives reaches its target.
    ds = load_shards(external_data, folds=on)
    y, probs = ds.labels.astype(bool), refitted.predict_signals(ds.signals)
    hits = probs >= refitted.thresholds
    names = refitted.label_names
    checked = 0
    for j, name in enumerate(names):
        if y[:, j].sum() < 3:
            assert refitted.thresholds[j] == 0.5  # kept from the bundle
            continue
        if name == "SB":
            assert np.sum(hits[:, j] & ~y[:, j]) <= 0.2 * np.sum(~y[:, j])
        else:
            assert np.sum(hits[:, j] & y[:, j]) >= 0.9 * y[:, j].sum()
        checked += 1
    assert checked >= 2
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert {p["policy"] for p in summary["operating_points"]} >= {"sensitivity:0.9"}


def test_refit_is_refused_in_place_or_on_evaluated_folds(tiny_bundle, external_data, tmp_path):
    common = {"bundle": str(tiny_bundle), "data": external_data, "output": tmp_path / "r",
              "refit_thresholds": "sensitivity:0.9", **FAST}
    with pytest.raises(EvaluationError, match="never in place"):
        evaluate_bundle(on_folds=(0,), refit_output=tiny_bundle, **common)
    with pytest.raises(EvaluationError, match=r"--on-folds \[9\] would also be evaluated"):
        evaluate_bundle(on_folds=(8, 9), refit_output=tmp_path / "n", **common)
    with pytest.raises(EnsembleOptionError, match="needs --on-folds"):
        evaluate_bundle(refit_output=tmp_path / "n", **common)
    with pytest.raises(EnsembleOptionError, match="--on-folds needs --refit-thresholds"):
        evaluate_bundle(bundle=str(tiny_bundle), data=external_data, on_folds=(1,), **FAST)
    with pytest.raises(EvaluationError, match="unknown label"):
        evaluate_bundle(on_folds=(0,), refit_output=tmp_path / "n",
                        threshold_policy_for=["AFL=f1"], **common)
    assert not (tmp_path / "n").exists()
