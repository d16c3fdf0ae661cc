"""The exported bundle: layout, checksums, tampering, fresh-process and pyfunc equivalence."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ecgtune.ensembles import BundleChecksumError, BundleError, load_bundle, save_bundle
from ecgtune.ensembles.ship.bundle import verify_bundle

N_CHECK = 24  # fold-9 records compared across processes
TOL = 1e-5


def test_bundle_layout_is_pickle_free_and_fully_checksummed(built_ensemble):
    bundle_dir = built_ensemble.result.bundle_dir
    files = {p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file()}
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert set(manifest["files"]) == files - {"manifest.json"}
    assert not [f for f in files if f.endswith((".pt", ".pth", ".pkl", ".pickle"))]
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    assert [m["name"] for m in meta["members"]] == list(built_ensemble.result.weights)
    for m in meta["members"]:
        assert m["file"] in files and m["file"].endswith(".safetensors")
        assert m["crop_len"] == 1024 and m["normalization"] == "dataset"
    assert meta["labels"]["names"] == built_ensemble.result.label_names
    assert meta["input"]["preprocessing"]["n_samples"] == 5000
    assert len(meta["input"]["normalization"]["mean"]) == 12
    assert meta["inference"]["n_windows"] == 3
    assert "report/report.html" in files


def test_bundle_matches_the_in_process_ensemble(built_ensemble, held_out_fold):
    result = built_ensemble.result
    bundle = load_bundle(result.bundle_dir)
    assert np.array_equal(held_out_fold.records, result.test_records)
    probs = bundle.predict_signals(held_out_fold.signals)
    assert np.abs(probs - result.test_probabilities).max() <= TOL
    # The predictor the build produced (before export) is the same computation.
    assert np.abs(result.predictor.predict_signals(held_out_fold.signals[:8])
                  - result.test_probabilities[:8]).max() <= TOL
    labels = bundle.predicted_labels(probs)
    hits = probs >= np.asarray(result.thresholds)
    assert [len(x) for x in labels] == hits.sum(axis=1).tolist()


_FRESH = textwrap.dedent("""
    import sys
    import numpy as np
    import mlflow
    from ecgtune.data_prep import load_shards
    from ecgtune.ensembles import load_bundle

    bundle_dir, data, model_uri, out, n = sys.argv[1:6]
    x = load_shards(data, folds=[9]).signals[: int(n)]
    loaded = load_bundle(bundle_dir)
    bundle = loaded.predict_signals(x)
    model = mlflow.pyfunc.load_model(model_uri)
    frame = model.predict(x)
    columns = np.array(list(frame.columns), dtype=str)
    trained_on = sorted(set(frame["model_trained_on"]))  # trained on synthetic records
    pyfunc = frame[loaded.label_names]
    # Short records: the real lengths as a parameter, windows on real signal only.
    lengths = np.linspace(2000, 5000, len(x)).astype(np.int64)
    short_bundle = loaded.predict_signals(x, lengths=lengths)
    short_pyfunc = model.predict(x, params={"lengths": lengths.tolist()})[
        loaded.label_names].to_numpy()
    np.savez(out, bundle=bundle, pyfunc=pyfunc.to_numpy(), columns=columns,
             short_bundle=short_bundle, short_pyfunc=short_pyfunc,
             trained_on=np.array(trained_on, dtype=str))
""")


def test_fresh_process_bundle_and_pyfunc_champion_agree(built_ensemble, tmp_path):
    b = built_ensemble
    out = tmp_path / "fresh.npz"
    env = {**os.environ, "MLFLOW_TRACKING_URI": b.tracking_uri}
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH, str(b.result.bundle_dir), str(b.data),
         f"models:/{b.registered}@champion", str(out), str(N_CHECK)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(out)
    expected = b.result.test_probabilities[:N_CHECK]
    assert np.abs(got["bundle"] - expected).max() <= TOL
    assert np.abs(got["pyfunc"] - got["bundle"]).max() <= TOL
    assert got["columns"].tolist() == [*b.result.label_names, "model_trained_on"]
    (trained_on,) = got["trained_on"].tolist()
    assert trained_on.startswith("synthetic:")
    assert np.abs(got["short_pyfunc"] - got["short_bundle"]).max() <= TOL
    assert np.abs(got["short_bundle"] - got["bundle"]).max() > TOL  # the lengths were used


def _copy(bundle_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bundle_dir, copy)
    return copy


def test_tampered_member_file_is_named(built_ensemble, tmp_path):
    copy = _copy(built_ensemble.result.bundle_dir, tmp_path)
    member = sorted((copy / "members").iterdir())[0]
    data = bytearray(member.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit in the weights
    member.write_bytes(bytes(data))
    rel = f"members/{member.name}"
    with pytest.raises(BundleChecksumError, match=f"bundle file {rel}: sha256 does not match"):
        load_bundle(copy)


def test_edited_bundle_json_and_missing_files_are_named(built_ensemble, tmp_path):
    copy = _copy(built_ensemble.result.bundle_dir, tmp_path)
    meta = json.loads((copy / "bundle.json").read_text())
    meta["thresholds"][0] = 0.01
    (copy / "bundle.json").write_text(json.dumps(meta, indent=2) + "\n")
    with pytest.raises(BundleChecksumError) as err:
        load_bundle(copy)
    assert err.value.path == "bundle.json"
    shutil.rmtree(copy)
    copy = _copy(built_ensemble.result.bundle_dir, tmp_path)
    (copy / "report" / "pr_curves.png").unlink()
    with pytest.raises(BundleChecksumError, match=r"report/pr_curves\.png: missing"):
        verify_bundle(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="not an ecgtune bundle"):
        load_bundle(copy)


def test_save_replaces_a_bundle_but_never_other_folders(built_ensemble, tmp_path):
    predictor = built_ensemble.result.predictor
    target = tmp_path / "b"
    save_bundle(target, predictor)
    first = json.loads((target / "manifest.json").read_text())["files"]["bundle.json"]
    save_bundle(target, predictor)  # replacing a bundle is fine
    assert json.loads((target / "manifest.json").read_text())["files"]["bundle.json"] == first
    assert not (tmp_path / "b.tmp").exists() and not (tmp_path / "b.old").exists()
    assert load_bundle(target).member_names == predictor.member_names
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("keep me")
    with pytest.raises(BundleError, match="refusing to overwrite"):
        save_bundle(other, predictor)
    assert (other / "data.csv").read_text() == "keep me"
