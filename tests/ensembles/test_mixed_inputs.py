"""An ensemble whose members read different inputs (rate, leads) and trunk families.

Built without Ray: a 100 Hz limb-lead ResU-Dense member, a 500 Hz 12-lead one and a 250 Hz
state-space one. Each member makes its own input from the stored 500 Hz 12-lead record inside
its model, so the bundle, the pyfunc model and the ONNX graph all take that record."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from testkit import saved_pyfunc_model

from ecgtune.components import ModelConfig, build_model, get_preset
from ecgtune.data_prep import get_label_map
from ecgtune.ensembles.build.calibration import Calibrator
from ecgtune.ensembles.ship.inference import (
    EnsemblePredictor,
    InputSpec,
    MemberSpec,
    member_probabilities,
)

# (preset, model input, crop in stored samples, normalisation)
MEMBERS = (
    ("tiny", {"input.fs": 100, "input.leads": "limb6"}, 2048, "dataset"),
    ("tiny", {}, 1024, "dataset"),
    ("ssm-tiny", {"input.fs": 250}, 1536, "record"),
)
INPUTS = InputSpec(fs=500, seconds=10.0, n_samples=5000, gain=1000.0,
                   norm_mean=tuple(np.linspace(-0.02, 0.02, 12)),
                   norm_std=tuple(np.linspace(0.1, 0.3, 12)))


def _identity(n: int) -> Calibrator:
    return Calibrator.from_dict({"method": "per_label", "params": {
        "methods": ["identity"], "cv": 5, "seed": 0,
        "calibrators": [{"method": "identity", "params": {}}] * n}})


def _members() -> list[tuple[MemberSpec, torch.nn.Module]]:
    label_map = get_label_map("seed20")
    groups, n = label_map.group_indices(), len(label_map)
    members = []
    for i, (preset, flat, crop, mode) in enumerate(MEMBERS):
        config = ModelConfig.from_flat(flat, base=get_preset(preset))
        torch.manual_seed(i)
        model = build_model(config, n, groups).eval()
        spec = MemberSpec(f"m{i}", config, n, tuple(tuple(g) for g in model.label_groups),
                          crop, mode)
        members.append((spec, model))
    return members


def _predictor() -> EnsemblePredictor:
    label_map = get_label_map("seed20")
    n = len(label_map)
    thresholds = np.random.default_rng(1).uniform(0.2, 0.8, n)
    return EnsemblePredictor(_members(), [0.5, 0.3, 0.2], _identity(n), thresholds,
                             label_map.names, INPUTS, 2, label_map=label_map.name,
                             label_groups=label_map.group_indices(),
                             group_names=label_map.group_names)


def _signals(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-900, 900, (n, 12, 5000)).astype(np.int16)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    from ecgtune.ensembles.ship.bundle import save_bundle

    fit = {"data_manifest_sha256": "cd" * 32, "thresholds": {"objective": "f1", "beta": 1.0}}
    return save_bundle(tmp_path_factory.mktemp("mixed") / "bundle", _predictor(), fit=fit)


def test_each_member_reads_its_own_leads():
    spec, model = _members()[0]  # 100 Hz, limb leads
    x = _signals(2)
    y = x.copy()
    y[:, 6:] = _signals(2, seed=1)[:, 6:]  # other precordial leads
    a = member_probabilities(model, spec, x, INPUTS, n_windows=2)
    b = member_probabilities(model, spec, y, INPUTS, n_windows=2)
    assert np.array_equal(a, b)
    y[:, 1] += 50
    assert not np.array_equal(a, member_probabilities(model, spec, y, INPUTS, n_windows=2))


def test_bundle_keeps_every_member_input(bundle_dir):
    from ecgtune.ensembles.ship.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    got = [(spec.config.input.fs, spec.config.input.leads, spec.config.branch.kind)
           for spec, _ in bundle.members]
    assert got == [(100, "limb6", "resu"), (500, "all12", "resu"), (250, "all12", "ssm")]
    x = _signals(3)
    np.testing.assert_array_equal(bundle.predict_signals(x), _predictor().predict_signals(x))


def test_short_records_stay_within_their_real_signal_at_every_rate(bundle_dir):
    from ecgtune.ensembles.ship.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    x = _signals(2)
    lengths = np.array([3000, 5000])
    noisy = x.copy()
    noisy[0, :, 3000:] = _signals(1, seed=3)[0, :, 3000:]  # beyond record 0's real signal
    expected = bundle.predict_signals(x, lengths=lengths)
    np.testing.assert_array_equal(bundle.predict_signals(noisy, lengths=lengths), expected)
    assert not np.array_equal(bundle.predict_signals(noisy), bundle.predict_signals(x))


def test_pyfunc_model_takes_the_stored_record(bundle_dir, tmp_path):
    from ecgtune.ensembles.ship.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    model = saved_pyfunc_model(bundle_dir, tmp_path / "model")
    x = _signals(2)
    frame = model.predict(x, params={"lengths": [4000, 5000]})
    expected = bundle.predict_signals(x, lengths=np.array([4000, 5000]))
    assert np.abs(frame[bundle.label_names].to_numpy() - expected).max() <= 1e-12


@pytest.mark.slow
def test_onnx_graph_resamples_inside_and_matches_the_bundle(bundle_dir, tmp_path):
    """One graph on the 500 Hz 12-lead int16 input, every member's front end inside it,
    checked at export within 1e-4 (with and without `lengths`) and here again."""
    from ecgtune.ensembles.ship.bundle import load_bundle
    from ecgtune.ensembles.ship.onnx_export import export_onnx, open_session, run_session

    out = tmp_path / "mixed.onnx"
    result = export_onnx(bundle_dir, out)
    assert result.max_abs_diff <= 1e-4
    bundle = load_bundle(bundle_dir)
    x = _signals(4, seed=5)
    lengths = np.array([5000, 2600, 4100, 1100])
    probs, _ = run_session(open_session(out), x, lengths=lengths)
    assert np.abs(probs - bundle.predict_signals(x, lengths=lengths)).max() <= 1e-4
