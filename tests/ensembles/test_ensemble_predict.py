"""`ecgtune predict` and `predict_records`: prep's preprocessing, CSV contract, rejections."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ecgtune.data_prep import make_record, preprocess_record, read_record, write_record
from ecgtune.ensembles import load_bundle, predict_records
from ecgtune.ensembles.cli import main
from ecgtune.ensembles.ship.predict import PredictInputError

FLAT_RECORDS = ("JS20004", "JS20008")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecgtune.ensembles.cli", *args],
                          capture_output=True, text=True, timeout=300)


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


@pytest.fixture(scope="module")
def bundle(built_ensemble):
    return load_bundle(built_ensemble.result.bundle_dir)


def test_predict_cli_on_the_real_sample_folder(built_ensemble, sample_dir, tmp_path):
    out = tmp_path / "pred.csv"
    proc = _cli("predict", "--bundle", str(built_ensemble.result.bundle_dir), "--input",
                str(sample_dir), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    header, rows = _read_csv(out)
    labels = built_ensemble.result.label_names
    assert header == ["record", *labels, "predicted", "quality", "model_trained_on"]
    assert len(rows) == 20 and len({r[0] for r in rows}) == 20
    probs = np.array([[float(x) for x in r[1:-3]] for r in rows])
    assert probs.shape == (20, 20) and ((probs >= 0) & (probs <= 1)).all()
    for r in rows:
        assert all(name in labels for name in r[-3].split(";") if name)
    assert {r[0]: r[-2] for r in rows if r[-2]} == dict.fromkeys(FLAT_RECORDS,
                                                                 "flat_lead:V2,V4,V6")
    # The suite's model saw synthetic records only: every row and the console say so.
    assert {r[-1].split(":")[0] for r in rows} == {"synthetic"}
    assert "trained on synthetic records" in proc.stderr and "not diagnoses" in proc.stderr
    for name in FLAT_RECORDS:
        assert f"record {name}: warning: flat_lead" in proc.stderr
    assert "rejected" in proc.stderr and "record JS20000" not in proc.stderr


def test_truncated_record_is_rejected_and_the_others_written(built_ensemble, synthetic_records,
                                                           tmp_path):
    from ecgtune.data_prep import scan_records

    headers = scan_records(synthetic_records)[:3]
    folder = tmp_path / "records"
    folder.mkdir()
    for h in headers:
        for f in (h, h.with_suffix(".mat")):
            shutil.copy(f, folder / f.name)
    bad = folder / headers[1].with_suffix(".mat").name
    bad.write_bytes(bad.read_bytes()[: 24 + 12 * 2 * 1000])
    out = tmp_path / "pred.csv"
    proc = _cli("predict", "--bundle", str(built_ensemble.result.bundle_dir), "--input",
                str(folder), "--output", str(out), "--no-progress")
    assert proc.returncode == 3, proc.stderr
    assert f"record {headers[1].stem}: truncated_signal:" in proc.stderr
    _, rows = _read_csv(out)
    assert [r[0] for r in rows] == [headers[0].stem, headers[2].stem]


def test_other_sampling_rate_is_resampled_like_prep(bundle, tmp_path):
    spec, digital = make_record(5, 7, fs=250, seconds=12)
    header = write_record(tmp_path, "R250", digital, fs=250, dx_codes=spec.dx_codes)
    result = predict_records(bundle, [tmp_path / "R250"])  # path without extension
    assert result.records == ["R250"] and not result.rejected
    sig, info = preprocess_record(read_record(header))  # prep's defaults: 500 Hz, 10 s
    assert sig.shape == (12, 5000) and info.resampled == "2/1" and info.cropped > 0
    assert np.array_equal(result.probabilities, bundle.predict_signals(sig[None]))


def test_inputs_mix_files_and_folders_without_duplicates(bundle, synthetic_records):
    from ecgtune.data_prep import scan_records

    headers = scan_records(synthetic_records)[:2]
    result = predict_records(bundle, [headers[0], headers[0].with_suffix(".mat"),
                                      headers[1].parent])
    assert result.records[0] == headers[0].stem
    assert len(result.records) == len(set(result.records))
    assert result.probabilities.shape == (len(result.records), 20)
    with pytest.raises(PredictInputError):
        predict_records(bundle, [])


def test_cli_exit_codes_for_usage_errors_and_bad_bundles(built_ensemble, tmp_path, capsys):
    bundle_dir = str(built_ensemble.result.bundle_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", "--bundle", bundle_dir, "--input", str(empty), "--output",
                 str(tmp_path / "x.csv")]) == 2
    assert "no WFDB records" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--bundle", bundle_dir, "--output", str(tmp_path / "x.csv")])
    assert exit_info.value.code == 2
    capsys.readouterr()
    broken = tmp_path / "broken"
    shutil.copytree(bundle_dir, broken)
    (broken / "bundle.json").write_text("{}")
    assert main(["predict", "--bundle", str(broken), "--input", str(empty), "--output",
                 str(tmp_path / "x.csv")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ecgtune predict: error: bundle file bundle.json: sha256 does not match "
                   "manifest.json (modified or corrupted)"]
    missing = tmp_path / "nothing-here.hea"
    assert main(["predict", "--bundle", bundle_dir, "--input", str(missing), "--output",
                 str(tmp_path / "y.csv")]) == 2  # a mistyped path: usage error, nothing run
    assert f"input {missing} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "y.csv").exists()
    lone = tmp_path / "lone.mat"  # a signal file without its header: a refused record
    lone.write_bytes(b"")
    assert main(["predict", "--bundle", bundle_dir, "--input", str(lone), "--output",
                 str(tmp_path / "z.csv")]) == 3
    assert "record lone: unreadable: header lone.hea not found" in capsys.readouterr().err
    _, rows = _read_csv(tmp_path / "z.csv")
    assert rows == []
