"""Nothing silently wrong, prediction side: `predict` refuses exactly what `prep`
quarantines, says what it only warns about in a `quality` column, and fails cleanly on bad
invocations and bad bundles. Uses a tiny bundle built without a search (no Ray)."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from ecgtune.data_prep import REASON_CODES, load_shards, make_record, prepare, write_record
from ecgtune.data_prep.synth import FAULT_KINDS, write_faulty_record
from ecgtune.ensembles import load_bundle, predict_records
from ecgtune.ensembles.cli import main

# wfdb 4.3 calls pandas APIs that pandas 3 deprecates (read through wfdb: the .dat record).
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword")


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]


def _good(folder: Path, name: str, index: int) -> Path:
    spec, digital = make_record(5, index)
    return write_record(folder, name, digital, dx_codes=spec.dx_codes)


def test_one_sample_record_is_refused_not_diagnosed(tiny_bundle, tmp_path, capsys):
    folder = tmp_path / "in"
    _good(folder, "GOOD", 1)
    _, digital = make_record(5, 2)
    write_record(folder, "ONE", digital[:, :1])
    out = tmp_path / "pred.csv"
    status = main(["predict", "--bundle", str(tiny_bundle), "--input", str(folder),
                   "--output", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert status == 3, err
    assert "record ONE: too_short:" in err
    _, rows = _read_csv(out)
    assert [r["record"] for r in rows] == ["GOOD"]


@pytest.mark.parametrize("missing", ["/nonexistent", "no-such-record", "nothing-here.hea"])
def test_nonexistent_input_is_a_usage_error(tiny_bundle, tmp_path, capsys, missing):
    _good(tmp_path / "in", "GOOD", 1)
    path = missing if missing.startswith("/") else str(tmp_path / missing)
    out = tmp_path / "pred.csv"
    status = main(["predict", "--bundle", str(tiny_bundle), "--input", str(tmp_path / "in"),
                   path, "--output", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert err == [f"ecgtune predict: error: input {path} does not exist"]
    assert not out.exists()  # nothing predicted on a mistyped command line


def test_quality_column_names_flat_leads(tiny_bundle, tmp_path, capsys):
    folder = tmp_path / "in"
    _good(folder, "GOOD", 1)
    spec, digital = make_record(5, 3)
    digital[[7, 9, 11]] = 0  # V2, V4, V6 all zero, as in some real Ningbo records
    write_record(folder, "FLAT3", digital, dx_codes=spec.dx_codes)
    out = tmp_path / "pred.csv"
    status = main(["predict", "--bundle", str(tiny_bundle), "--input", str(folder),
                   "--output", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert status == 0, err
    header, rows = _read_csv(out)
    assert header[-3:] == ["predicted", "quality", "model_trained_on"]
    assert {r["record"]: r["quality"] for r in rows} == {"GOOD": "", "FLAT3": "flat_lead:V2,V4,V6"}
    # Probabilities with six decimals: no float noise, no "1e-07" for the calibration's floor.
    for row in rows:
        assert all(re.fullmatch(r"[01]\.\d{6}", row[label]) for label in header[1:-3]), row
    assert "record FLAT3: warning: flat_lead" in err


# --- bad bundles: one line naming the file, exit 1 --------------------------------------------


def _restamp(bundle: Path, rel: str) -> None:
    """Update manifest.json for an edited file, so the checksum passes and the content is what
    the loader meets."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    data = (bundle / rel).read_bytes()
    manifest["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _break(bundle: Path, how: str) -> str:
    """Damage a bundle copy; returns the file the error must name."""
    member = "members/m0.safetensors"
    if how == "missing_file":
        (bundle / member).unlink()
        return member
    if how == "checksum_mismatch":
        data = bytearray((bundle / member).read_bytes())
        data[-3] ^= 1
        (bundle / member).write_bytes(bytes(data))
        return member
    if how == "bad_json":
        (bundle / "bundle.json").write_text("{ not json")
        _restamp(bundle, "bundle.json")
        return "bundle.json"
    if how == "bad_bundle_structure":
        meta = json.loads((bundle / "bundle.json").read_text())
        meta["members"][0]["config"] = {"stem": 3}
        (bundle / "bundle.json").write_text(json.dumps(meta))
        _restamp(bundle, "bundle.json")
        return "bundle.json"
    if how == "bad_safetensors":
        (bundle / member).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json at all")
        _restamp(bundle, member)
        return member
    if how == "wrong_shapes":
        from safetensors.torch import load, save

        state = load((bundle / member).read_bytes())
        key = next(k for k, v in state.items() if v.ndim >= 2)
        state[key] = state[key][:1].clone()
        (bundle / member).write_bytes(save(state))
        _restamp(bundle, member)
        return member
    if how == "bad_source_json":
        (bundle / "source.json").write_text("[")
        _restamp(bundle, "source.json")
        return "source.json"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["missing_file", "checksum_mismatch", "bad_json",
                                 "bad_bundle_structure", "bad_safetensors", "wrong_shapes",
                                 "bad_source_json"])
def test_bad_bundle_content_is_one_line_naming_the_file(tiny_bundle, tmp_path, capsys, how):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    rel = _break(bundle, how)
    _good(tmp_path / "in", "GOOD", 1)
    status = main(["predict", "--bundle", str(bundle), "--input", str(tmp_path / "in"),
                   "--output", str(tmp_path / "pred.csv"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert len(err) == 1 and err[0].startswith("ecgtune predict: error: "), err
    assert f"bundle file {rel}:" in err[0]


# --- prep and predict agree --------------------------------------------------------------------


def test_prep_and_predict_agree_on_a_mixed_folder(tiny_bundle, tmp_path):
    root = tmp_path / "in"
    for i in range(4):
        _good(root / "good", f"GOOD{i}", i)
    # A matrix stored transposed (n x 12) is still a good record: read transposed back.
    write_faulty_record(root, "transposed", 90)
    expected: dict[str, str] = {}
    for i, kind in enumerate(FAULT_KINDS):
        hea = write_faulty_record(root, kind, i)
        # Dropping unlabelled records is prep's label policy (off by default), not a quality
        # gate: predict reads no labels.
        if kind in REASON_CODES and kind != "dropped_unlabelled":
            expected[hea.stem] = kind
    # every refusal reason is exercised
    assert set(expected.values()) == set(REASON_CODES) - {"dropped_unlabelled"}

    result = prepare(root, tmp_path / "out", workers=1, shard_size=4, progress=False)
    m = result.manifest
    with open(tmp_path / "out" / "quarantine.csv", newline="") as fh:
        quarantined = {r["record"]: r["reason"] for r in csv.DictReader(fh)}
    written = set(load_shards(tmp_path / "out").records)
    assert m["records_in"] == m["records_written"] + m["records_quarantined"]
    assert m["records_in"] == len(written) + len(quarantined) == 4 + 1 + len(FAULT_KINDS) + 1
    assert {k: v.split(":")[0] for k, v in quarantined.items()} == expected
    assert {"GOOD0", "GOOD1", "GOOD2", "GOOD3", "BAD090"} <= written

    predicted = predict_records(load_bundle(tiny_bundle), [root])
    assert set(predicted.records) == written
    assert {i.record: i.reason.split(":")[0] for i in predicted.rejected} == expected
    assert predicted.exit_status == 3
    # Signal warnings agree too: the flat-lead and short records are written by prep and
    # flagged by both, with the same words.
    flagged = {n: q for n, q in zip(predicted.records, predicted.quality, strict=True) if q}
    with open(tmp_path / "out" / "warnings.csv", newline="") as fh:
        warned = {r["record"]: r["warning"] for r in csv.DictReader(fh)
                  if not r["warning"].startswith("no_scored_label")}
    assert flagged == warned and sorted(flagged.values()) == ["flat_lead:V2", "short:6.0s"]
    assert m["quality_warnings"]["flat_lead"] == m["quality_warnings"]["short"] == 1
    # The transposed record was stored exactly as the original matrix.
    ds = load_shards(tmp_path / "out")
    i = list(ds.records).index("BAD090")
    np.testing.assert_array_equal(ds.signals[i], make_record(11, 90)[1])
