"""A model trained on synthetic records says so wherever its outputs travel without ecgtune:
in every pyfunc answer (Python and REST) and in its ONNX graph's metadata."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def synthetic_bundle(tiny_bundle, tmp_path_factory) -> Path:
    """The tiny bundle, recorded as trained on 3,000 synthetic records (as the demo's is)."""
    bundle = tmp_path_factory.mktemp("synthetic") / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    meta = json.loads((bundle / "bundle.json").read_text())
    meta.setdefault("fit", {})["trained_on"] = {"synthetic": 3000}
    data = json.dumps(meta).encode()
    (bundle / "bundle.json").write_bytes(data)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["bundle.json"] = {"sha256": hashlib.sha256(data).hexdigest(),
                                        "bytes": len(data)}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def _pyfunc(bundle_dir: Path):
    from ecgtune.ensembles.ship import pyfunc_model
    from ecgtune.ensembles.ship.bundle import load_bundle

    model = pyfunc_model.EnsembleBundleModel()
    model.bundle = load_bundle(bundle_dir, device="cpu")
    return model


def test_pyfunc_answers_of_a_synthetic_model_carry_the_note(synthetic_bundle, tiny_bundle):
    x = np.random.default_rng(0).integers(-500, 500, (2, 12, 5000)).astype(np.int16)
    frame = _pyfunc(synthetic_bundle).predict(None, x)
    assert list(frame["model_trained_on"]) == ["synthetic:3000", "synthetic:3000"]
    labels = [c for c in frame.columns if c != "model_trained_on"]
    assert len(labels) == 20 and frame[labels].to_numpy().dtype == np.float64
    # Over REST the same frame becomes {"predictions": [{..., "model_trained_on": ...}]}.
    (record,) = json.loads(frame.iloc[:1].to_json(orient="records"))
    assert record["model_trained_on"] == "synthetic:3000"
    # A model whose training data is not synthetic answers probabilities only.
    assert "model_trained_on" not in _pyfunc(tiny_bundle).predict(None, x).columns


def test_the_signature_declares_the_note_column():
    from ecgtune.ensembles.ship.registry import model_signature

    names = [c.name for c in model_signature(["AFIB", "SB"], 5000, synthetic=True).outputs]
    assert names == ["AFIB", "SB", "model_trained_on"]
    assert [c.name for c in model_signature(["AFIB", "SB"], 5000).outputs] == ["AFIB", "SB"]


def test_onnx_metadata_of_a_synthetic_model_carries_the_note(synthetic_bundle, tiny_bundle):
    from ecgtune.ensembles.ship.bundle import load_bundle
    from ecgtune.ensembles.ship.onnx_export import SYNTHETIC_NOTE, onnx_metadata

    meta = onnx_metadata(load_bundle(synthetic_bundle, device="cpu"))
    assert json.loads(meta["trained_on"]) == {"synthetic": 3000}
    assert meta["note"] == SYNTHETIC_NOTE and "not diagnoses" in SYNTHETIC_NOTE
    plain = onnx_metadata(load_bundle(tiny_bundle, device="cpu"))
    assert json.loads(plain["trained_on"]) == {} and "note" not in plain
