from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import wfdb

from ecgtune.data_prep import (
    REASON_CODES,
    PrepError,
    ShardChecksumError,
    format_summary,
    load_shards,
    prepare,
    read_manifest,
    read_record,
    verify_shards,
)
from ecgtune.data_prep.reader import scan_records
from ecgtune.data_prep.synth import FAULT_KINDS

MANIFEST_KEYS = {
    "records_in", "records_written", "records_quarantined", "quarantine_reasons", "labels",
    "label_map", "preprocessing", "normalization", "folds", "shards", "created", "version",
}


def _quarantine(out: Path) -> dict[str, str]:
    with (out / "quarantine.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert all(set(r) == {"record", "reason"} for r in rows)
    return {r["record"]: r["reason"] for r in rows}


def _warnings(out: Path) -> dict[str, str]:
    with (out / "warnings.csv").open() as f:
        return {r["record"]: r["warning"] for r in csv.DictReader(f)}


def _without_created(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k != "created"}


def test_manifest_contract(prepared: Path) -> None:
    m = read_manifest(prepared)
    assert MANIFEST_KEYS <= set(m)
    assert m["records_in"] == m["records_written"] + m["records_quarantined"] == 200
    assert m["preprocessing"]["fs"] == 500 and m["preprocessing"]["n_samples"] == 5000
    assert m["preprocessing"]["gain"] == 1000
    assert m["folds"]["roles"] == {"train": list(range(7)), "val": [7], "ensemble": [8],
                                   "test": [9]}
    assert len(m["labels"]) == 20 and m["labels"][0] == {
        "name": "AFIB", "codes": ["164889003", "164890007"], "group": "Rhythm"}
    assert sum(s["rows"] for s in m["shards"]) == m["records_written"]
    for s in m["shards"]:
        assert set(s) >= {"file", "rows", "sha256", "folds"} and len(s["folds"]) == 1
        assert Path(s["file"]).name.startswith(f"fold{s['folds'][0]}-")
    assert sum(m["folds"]["records"]) == m["records_written"]
    assert all(len(c) == 10 for c in m["folds"]["counts"].values())
    assert len(m["normalization"]["mean"]) == len(m["normalization"]["std"]) == 12
    assert "AFIB" in format_summary(m)


def test_shard_columns_and_values_round_trip(prepared: Path, synth_dir: Path) -> None:
    m = read_manifest(prepared)
    table = pq.read_table(prepared / m["shards"][0]["file"])
    assert table.column_names == ["record", "signal", "labels", "fold", "age", "sex",
                                  "dx_codes", "source", "length", "path"]
    row = table.slice(0, 1).to_pylist()[0]
    assert row["length"] == 5000  # synthetic records are 10 s: no padding
    assert row["source"] == "synthetic"  # no #Source: site named: the database
    rec = read_record(synth_dir / row["path"])
    assert row["record"] == rec.name and row["dx_codes"] == list(rec.dx_codes)
    assert row["age"] == rec.age and row["sex"] == rec.sex
    signal_values = np.frombuffer(row["signal"], "<i2").reshape(12, 5000)
    np.testing.assert_array_equal(signal_values, rec.digital)
    # the loader gives the same values for every record
    ds = load_shards(prepared)
    by_name = {name: i for i, name in enumerate(ds.records)}
    for hea in scan_records(synth_dir)[::17]:
        rec = read_record(hea)
        np.testing.assert_array_equal(ds.signals[by_name[rec.name]], rec.digital)
        row = by_name[rec.name]
        np.testing.assert_array_equal(ds.labels[row], ds.label_map.encode(rec.dx_codes))


def test_normalization_is_train_fold_statistics(prepared: Path) -> None:
    ds = load_shards(prepared)
    train = ds.signals[ds.folds <= 6].astype(np.float64) / 1000
    norm = ds.manifest["normalization"]
    np.testing.assert_allclose(norm["mean"], train.mean(axis=(0, 2)), atol=1e-7)
    np.testing.assert_allclose(norm["std"], train.std(axis=(0, 2)), rtol=1e-6)


def test_real_records(real_dir: Path, tmp_path: Path) -> None:
    result = prepare(real_dir, tmp_path / "out", workers=1, progress=False)
    m = result.manifest
    assert m["records_in"] == 20
    assert _quarantine(tmp_path / "out") == {}
    # JS20004 and JS20008 store all-zero V2, V4 and V6: truly flat, not merely quiet. The other
    # leads are fine, so they are written (and predicted) with a warning, not dropped.
    assert _warnings(tmp_path / "out") == {"JS20004": "flat_lead:V2,V4,V6",
                                           "JS20008": "flat_lead:V2,V4,V6"}
    assert m["records_written"] == 20
    assert m["quality_warnings"] == {"flat_lead": 2, "short": 0, "no_scored_label": 0}
    assert "flat_lead 2" in format_summary(m)
    ds = load_shards(tmp_path / "out")
    for i, name in enumerate(ds.records):
        ref = wfdb.rdrecord(str(real_dir / name), physical=False)
        np.testing.assert_array_equal(ds.signals[i], ref.d_signal.T)
    i = list(ds.records).index("JS20000")
    assert [ds.label_map.names[j] for j in np.flatnonzero(ds.labels[i])] == ["GSVT", "APB", "STTA"]
    assert ds.age[i] == 84 and ds.sex[i] == "Female"


def test_every_quarantine_reason(synth_dir: Path, tmp_path: Path, copy_tree, make_faulty) -> None:
    root = copy_tree(synth_dir, tmp_path / "in")
    expected = {}
    for i, kind in enumerate(FAULT_KINDS):
        hea = make_faulty(root, kind, i)
        expected[hea.stem] = kind
    result = prepare(root, tmp_path / "out", workers=2, shard_size=40, progress=False)
    m = result.manifest
    got = _quarantine(tmp_path / "out")
    # Unlabelled records are kept unless `--unlabelled drop` (tested below).
    refused = {name: kind for name, kind in expected.items()
               if kind in REASON_CODES and kind != "dropped_unlabelled"}
    assert {name: reason.split(":")[0] for name, reason in got.items()} == refused
    assert all(": " in reason and reason.split(": ", 1)[1] for reason in got.values())
    by_kind = {kind: got.get(name, "") for name, kind in expected.items()}
    assert "aVR" in by_kind["saturated_lead"] and "lead II" in by_kind["bad_gain"]  # named
    assert "transposed" not in by_kind["sample_count_mismatch"]
    name_of = {kind: name for name, kind in expected.items()}
    warned = _warnings(tmp_path / "out")
    assert {k: warned.get(k) for k in (name_of["flat_lead"], name_of["short"],
                                        name_of["no_scored_label"],
                                        name_of["dropped_unlabelled"])} == {
        name_of["flat_lead"]: "flat_lead:V2",
        name_of["short"]: "short:6.0s",
        name_of["no_scored_label"]: "no_scored_label",
        name_of["dropped_unlabelled"]: "no_scored_label:unmapped=698252002,61721007",
    }
    assert "'164889003 59118001' is not a SNOMED CT code" in by_kind["bad_dx"]
    assert "'mmHg'" in by_kind["bad_units"]
    assert m["records_in"] == 200 + len(FAULT_KINDS) + 1  # the duplicate's twin counts too
    assert m["records_in"] == m["records_written"] + m["records_quarantined"]
    assert m["quarantine_reasons"] == {code: int(code != "dropped_unlabelled")
                                       for code in REASON_CODES}
    # Some synthetic records carry only unmapped codes (junctional rhythm and the like).
    unlabelled = [k for k, v in warned.items() if v.startswith("no_scored_label")]
    assert m["quality_warnings"] == {"flat_lead": 1, "short": 1,
                                     "no_scored_label": len(unlabelled)}
    # kept: the first copy of the duplicated name, the flat-lead, short and unlabelled records
    assert m["records_written"] == 205
    ds = load_shards(tmp_path / "out")
    rows = {name: i for i, name in enumerate(ds.records)}
    assert all(not ds.labels[rows[k]].any() for k in unlabelled)
    assert int((ds.labels.sum(axis=1) == 0).sum()) == len(unlabelled)
    lengths = dict(zip(ds.records, ds.lengths, strict=True))
    assert lengths[name_of["short"]] == 3000 and lengths[name_of["flat_lead"]] == 5000
    row = list(ds.records).index(name_of["no_scored_label"])
    assert not ds.labels[row].any()


def test_unlabelled_drop_quarantines_records_without_a_scored_label(
        synth_dir: Path, tmp_path: Path, copy_tree, make_faulty) -> None:
    root = copy_tree(synth_dir, tmp_path / "in")
    none = make_faulty(root, "no_scored_label", 0).stem
    unmapped = make_faulty(root, "dropped_unlabelled", 1).stem
    m = prepare(root, tmp_path / "out", workers=1, unlabelled="drop", progress=False).manifest
    got = _quarantine(tmp_path / "out")
    assert got[none] == "dropped_unlabelled: no Dx codes (--unlabelled drop)"
    assert got[unmapped] == ("dropped_unlabelled: unmapped=698252002,61721007 "
                             "(--unlabelled drop)")
    assert all(reason.startswith("dropped_unlabelled: ") for reason in got.values())
    assert m["records_in"] == m["records_written"] + len(got)
    assert m["quarantine_reasons"]["dropped_unlabelled"] == len(got)
    assert m["quality_warnings"]["no_scored_label"] == 0
    assert (load_shards(tmp_path / "out").labels.sum(axis=1) > 0).all()
    with pytest.raises(PrepError, match="--unlabelled"):
        prepare(root, tmp_path / "x", unlabelled="maybe", progress=False)


# `ecgtune prep` in a process that dies like a crash (os._exit: no cleanup, no manifest) after
# its third shard: a known point, not a race against a kill.
_CRASH_AFTER_3 = """
import os, sys
from ecgtune.data_prep import prep
from ecgtune.ensembles.cli import main

def crash(done):
    if done == 3:
        os._exit(86)

prep.after_shard = crash
sys.exit(main(sys.argv[1:]))
"""


def test_interrupted_prep_resumes_to_the_same_manifest(synth_dir: Path, tmp_path: Path) -> None:
    reference = prepare(synth_dir, tmp_path / "ref", workers=1, shard_size=5, progress=False)
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", _CRASH_AFTER_3, "prep", "--input", str(synth_dir),
           "--output", str(out), "--workers", "1", "--shard-size", "5", "--no-progress"]
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    assert proc.returncode == 86, proc.stderr.decode()
    assert not (out / "manifest.json").exists()
    assert len(list((out / "shards").glob("*.parquet"))) == 3
    resumed = prepare(synth_dir, out, workers=2, shard_size=5, progress=False)
    assert resumed.shards_kept == 3
    assert resumed.shards_kept + resumed.shards_written == len(resumed.manifest["shards"])
    assert _without_created(resumed.manifest) == _without_created(reference.manifest)
    assert (out / "quarantine.csv").read_bytes() == (tmp_path / "ref/quarantine.csv").read_bytes()
    again = prepare(synth_dir, out, workers=1, shard_size=5, progress=False)
    assert again.shards_written == 0  # everything verifies and is kept


def test_corrupt_shard_is_named(prepared: Path, tmp_path: Path, copy_tree) -> None:
    out = copy_tree(prepared, tmp_path / "copy")
    victim = read_manifest(out)["shards"][3]["file"]
    data = bytearray((out / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / victim).write_bytes(bytes(data))
    with pytest.raises(ShardChecksumError, match=victim):
        verify_shards(out)
    with pytest.raises(ShardChecksumError, match=victim):
        load_shards(out)
    fold = read_manifest(out)["shards"][3]["folds"][0]
    load_shards(out, folds=[f for f in range(10) if f != fold])  # other folds still load
    cli = subprocess.run(
        [sys.executable, "-m", "ecgtune.ensembles.cli", "prep", "--verify", "--output", str(out)],
        capture_output=True, text=True,
    )
    assert cli.returncode == 1
    assert victim in cli.stderr and cli.stderr.count("\n") == 1  # one clean line
    (out / read_manifest(out)["shards"][5]["file"]).unlink()
    with pytest.raises(ShardChecksumError, match="missing"):
        load_shards(out, verify=False)


def test_rerun_rewrites_a_corrupt_shard(synth_dir: Path, tmp_path: Path) -> None:
    first = prepare(synth_dir, tmp_path, workers=1, shard_size=50, progress=False)
    victim = tmp_path / first.manifest["shards"][0]["file"]
    victim.write_bytes(victim.read_bytes()[:-10])
    again = prepare(synth_dir, tmp_path, workers=1, shard_size=50, progress=False)
    assert again.shards_written == 1
    assert _without_created(again.manifest) == _without_created(first.manifest)
    verify_shards(tmp_path)


def test_changed_settings_replan_and_remove_stale_shards(synth_dir: Path, tmp_path: Path) -> None:
    prepare(synth_dir, tmp_path, workers=1, shard_size=7, progress=False)
    result = prepare(synth_dir, tmp_path, workers=1, shard_size=50, progress=False)
    assert result.shards_kept == 0
    files = sorted(p.name for p in (tmp_path / "shards").iterdir())
    assert files == sorted(Path(s["file"]).name for s in result.manifest["shards"])
    rbbb = prepare(synth_dir, tmp_path / "rbbb", labels="seed20-rbbb", workers=1, progress=False)
    assert rbbb.manifest["label_map"] == "seed20-rbbb"
    assert "59118001" in rbbb.manifest["labels"][8]["codes"]


def test_input_errors(tmp_path: Path) -> None:
    with pytest.raises(PrepError, match="does not exist"):
        prepare(tmp_path / "nope", tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrepError, match="no WFDB headers"):
        prepare(tmp_path / "empty", tmp_path / "out", progress=False)
    with pytest.raises(PrepError, match=r"manifest\.json"):
        load_shards(tmp_path / "out")


def test_other_rates_and_lengths_are_resampled_and_fitted(tmp_path: Path) -> None:
    from ecgtune.data_prep.synth import make_record, write_record

    for i, (fs, seconds) in enumerate([(257, 30), (1000, 6), (500, 12), (250, 10)]):
        spec, digital = make_record(5, i + 1, fs=fs, seconds=seconds)
        write_record(tmp_path / "in", f"REC{i}", digital, fs, dx_codes=spec.dx_codes)
    result = prepare(tmp_path / "in", tmp_path / "out", workers=1, progress=False)
    assert result.manifest["records_written"] == 4
    ds = load_shards(tmp_path / "out")
    assert ds.signals.shape == (4, 12, 5000)
    short = ds.signals[list(ds.records).index("REC1")]
    assert not short[:, 3000:].any() and short[:, :3000].any()  # 6 s padded with zeros
    np.testing.assert_array_equal(  # 12 s at 500 Hz: the centred 10 s, exactly
        ds.signals[list(ds.records).index("REC2")],
        make_record(5, 3, fs=500, seconds=12)[1][:, 500:5500],
    )
    summary = json.dumps(result.manifest["preprocessing"])
    assert "resample_poly" in summary


def test_rerun_on_unchanged_input_keeps_the_manifest_byte_for_byte(
    synth_dir: Path, tmp_path: Path
) -> None:
    # A search records the manifest's sha256; re-running prep must not invalidate it.
    out = tmp_path / "out"
    prepare(synth_dir, out, workers=1, shard_size=20, progress=False)
    before = (out / "manifest.json").read_bytes()
    again = prepare(synth_dir, out, workers=1, shard_size=20, progress=False)
    assert again.shards_written == 0
    assert (out / "manifest.json").read_bytes() == before
