"""`ecgtune export --format onnx`: one ONNX graph equal to the bundle.

The fast tests build a two-member bundle without Ray (random `tiny` and `tiny-multi` members,
different crops, windows and normalisation modes; one label per calibrator kind) and export it
once through the command line; the slow test exports the tiny search's registered ensemble."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from ecgtune.ensembles.build.calibration import (
    Calibrator,
    IdentityCalibrator,
    IsotonicCalibrator,
    PerLabelCalibrator,
    PlattCalibrator,
    TemperatureCalibrator,
)
from ecgtune.ensembles.ship.onnx_export import (
    ExportOptions,
    OnnxExportError,
    UnsupportedCalibratorError,
    build_graph_module,
    export_onnx,
    onnx_metadata,
    open_session,
    read_metadata,
    run_session,
    sample_signals,
)

KINDS = ("identity", "temperature", "platt", "isotonic")


def _calibrator(n_labels: int, seed: int = 0) -> PerLabelCalibrator:
    """Label c gets KINDS[c % 4], each fitted on probabilities spanning [0, 1]."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.0, 1.0, 400)
    y = rng.random(400) < p ** 1.5
    classes = {"identity": IdentityCalibrator, "temperature": TemperatureCalibrator,
               "platt": PlattCalibrator, "isotonic": IsotonicCalibrator}
    cals = [classes[KINDS[c % 4]]().fit(p, y).to_dict() for c in range(n_labels)]
    return Calibrator.from_dict({"method": "per_label", "params": {
        "methods": list(KINDS), "cv": 5, "seed": seed, "calibrators": cals}})


def _predictor(calibrator: PerLabelCalibrator | None = None):
    from ecgtune.components import build_model, get_preset
    from ecgtune.data_prep import get_label_map
    from ecgtune.ensembles.ship.inference import EnsemblePredictor, InputSpec, MemberSpec

    label_map = get_label_map("seed20")
    groups = label_map.group_indices()
    n = len(label_map)
    members = []
    for i, (preset, crop, mode) in enumerate((("tiny", 1024, "dataset"),
                                              ("tiny-multi", 2048, "record"))):
        torch.manual_seed(i)
        config = get_preset(preset)
        model = build_model(config, n, groups).eval()
        members.append((MemberSpec(f"m{i}", config, n, tuple(tuple(g) for g in
                                                             model.label_groups), crop, mode),
                        model))
    inputs = InputSpec(fs=500, seconds=10.0, n_samples=5000, gain=1000.0,
                       norm_mean=tuple(np.linspace(-0.02, 0.02, 12)),
                       norm_std=tuple(np.linspace(0.1, 0.3, 12)))
    thresholds = np.random.default_rng(1).uniform(0.2, 0.8, n)
    return EnsemblePredictor(members, [0.7, 0.3], calibrator or _calibrator(n), thresholds,
                             label_map.names, inputs, 2, label_map=label_map.name,
                             label_groups=groups, group_names=label_map.group_names)


@dataclass(frozen=True)
class Exported:
    bundle: Path
    onnx: Path
    stdout: str


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Exported:
    """The fixture bundle exported once through `ecgtune export`."""
    from ecgtune.ensembles.cli import main
    from ecgtune.ensembles.ship.bundle import save_bundle

    root = tmp_path_factory.mktemp("onnx-export")
    fit = {"data_manifest_sha256": "ab" * 32, "thresholds": {"objective": "f1", "beta": 1.0}}
    bundle = save_bundle(root / "bundle", _predictor(), fit=fit)
    out = root / "model.onnx"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["export", "--bundle", str(bundle), "--format", "onnx",
                     "--output", str(out)]) == 0
    return Exported(bundle, out, buf.getvalue())


@pytest.fixture
def traced_once(exported: Exported, monkeypatch) -> None:
    """`export_onnx` reuses the fixture's graph, already rewritten, instead of tracing the
    bundle again (~15 s each): the tests using it are about the check, the writing and the
    logging after it."""
    import onnx

    from ecgtune.ensembles.ship import onnx_export

    monkeypatch.setattr(onnx_export, "_to_onnx", lambda *a, **k: onnx.load(exported.onnx))
    monkeypatch.setattr(onnx_export, "rewrite_graph", lambda model, heads: {})


def _real_signals(sample_dir: Path) -> np.ndarray:
    from ecgtune.data_prep import validate_record

    signals = [validate_record(h, 500, 10, 1000).signal for h in sorted(sample_dir.glob("*.hea"))]
    return np.stack(signals)


def _assert_equal_to_bundle(onnx_path: Path, bundle_dir: Path, signals: np.ndarray) -> None:
    from ecgtune.ensembles.ship.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    expected = bundle.predict_signals(signals)
    probs, decisions = run_session(open_session(onnx_path), signals, batch_size=7)
    assert probs.dtype == np.float64 and decisions.dtype == np.bool_
    assert np.abs(probs - expected).max() <= 1e-4
    clear = np.abs(expected - bundle.thresholds) > 1e-4  # away from a threshold: no ties
    assert np.array_equal(decisions[clear], (expected >= bundle.thresholds)[clear])
    assert np.array_equal(decisions, probs >= bundle.thresholds)


def test_export_prints_the_check_and_matches_the_bundle(exported: Exported) -> None:
    assert "checked on 8 records (synthetic): max |probability difference|" in exported.stdout
    assert "operators: ai.onnx 18, com.microsoft 1)" in exported.stdout
    diff = float(exported.stdout.split("difference| ")[1].split()[0])
    assert diff <= 1e-4
    # Records the command's own check did not see, batch sizes 1 to 7 (dynamic batch).
    signals = sample_signals(15, 5000, 500, 10.0, seed=3)
    _assert_equal_to_bundle(exported.onnx, exported.bundle, signals)
    _assert_equal_to_bundle(exported.onnx, exported.bundle, signals[:1])


def test_lengths_input_windows_real_signal_as_the_bundle_does(exported: Exported) -> None:
    from ecgtune.ensembles.ship.bundle import load_bundle
    from ecgtune.ensembles.ship.onnx_export import LENGTHS_NAME

    bundle = load_bundle(exported.bundle)
    signals = sample_signals(6, 5000, 500, 10.0, seed=5)
    crop = bundle.members[0][0].crop_len
    lengths = np.array([5000, 4000, 2500, crop, crop - 1, 300])
    for row, n in enumerate(lengths):
        signals[row, :, n:] = 0  # as prep pads a short record
    session = open_session(exported.onnx)
    assert LENGTHS_NAME in {i.name for i in session.get_overridable_initializers()}
    expected = bundle.predict_signals(signals, lengths=lengths)
    probs, decisions = run_session(session, signals, batch_size=4, lengths=lengths)
    assert np.abs(probs - expected).max() <= 1e-4
    assert np.array_equal(decisions, probs >= bundle.thresholds)
    # Omitted, every record is full length: the same as passing 5,000 for each.
    full, _ = run_session(session, signals, batch_size=6)
    at_full, _ = run_session(session, signals, batch_size=6, lengths=np.full(6, 5000))
    np.testing.assert_array_equal(full, at_full)
    assert np.abs(full - bundle.predict_signals(signals)).max() <= 1e-4
    assert np.abs(full - probs)[2:].max() > 1e-6  # the short records' windows moved


def test_graph_matches_the_bundle_on_the_real_sample_records(exported: Exported,
                                                             sample_dir: Path) -> None:
    _assert_equal_to_bundle(exported.onnx, exported.bundle, _real_signals(sample_dir))


def test_metadata_round_trip(exported: Exported) -> None:
    from ecgtune.ensembles.ship.bundle import load_bundle

    bundle = load_bundle(exported.bundle)
    meta = open_session(exported.onnx).get_modelmeta().custom_metadata_map
    # The tiny-multi member's branch attention runs fused, ONNX Runtime's contrib operator.
    assert meta["operators"] == "ai.onnx 18, com.microsoft 1"
    assert meta == read_metadata(exported.onnx) == {**onnx_metadata(bundle),
                                                    "operators": meta["operators"]}
    assert json.loads(meta["labels"]) == bundle.label_names
    assert json.loads(meta["thresholds"]) == bundle.thresholds.tolist()
    assert json.loads(meta["threshold_policy"]) == {"objective": "f1", "beta": 1.0}
    assert json.loads(meta["calibration"]) == [KINDS[c % 4] for c in range(20)]
    manifest = (exported.bundle / "manifest.json").read_bytes()
    assert meta["bundle_sha256"] == hashlib.sha256(manifest).hexdigest()
    assert meta["data_manifest_sha256"] == "ab" * 32
    contract = json.loads(meta["input"])
    assert (contract["dtype"], contract["shape"], contract["gain_units_per_mV"]) == (
        "int16", ["N", 12, 5000], 1000.0)
    assert meta["ecgtune.version"] not in ("", "unknown")
    session = open_session(exported.onnx)
    assert [(i.name, i.type) for i in session.get_inputs()] == [("signals", "tensor(int16)")]
    assert [o.name for o in session.get_outputs()] == ["probabilities", "decisions"]


_FRESH = """
import sys
import numpy as np
import onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
probs, decisions = session.run(None, {"signals": np.load(sys.argv[2])})
np.save(sys.argv[3], probs)
heavy = sorted(m for m in ("torch", "ecgtune", "onnx", "mlflow", "sklearn") if m in sys.modules)
print("heavy:", ",".join(heavy))
"""


def test_graph_runs_in_a_fresh_process_with_only_onnxruntime_and_numpy(
        exported: Exported, tmp_path: Path) -> None:
    from ecgtune.ensembles.ship.bundle import load_bundle

    signals = sample_signals(3, 5000, 500, 10.0, seed=5)
    np.save(tmp_path / "x.npy", signals)
    out = subprocess.run(
        [sys.executable, "-I", "-c", _FRESH, str(exported.onnx), str(tmp_path / "x.npy"),
         str(tmp_path / "p.npy")], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "heavy: \n" in out.stdout
    expected = load_bundle(exported.bundle).predict_signals(signals)
    assert np.abs(np.load(tmp_path / "p.npy") - expected).max() <= 1e-4


class _BetaCalibrator(IdentityCalibrator):
    """A calibrator the exporter does not know (Beta calibration would be one)."""

    name = "beta"


def test_unsupported_calibrator_is_refused_by_name() -> None:
    cal = _calibrator(20)
    cal.calibrators_[3] = _BetaCalibrator().fit([0.2, 0.8], [0, 1])
    with pytest.raises(UnsupportedCalibratorError, match=r"label SB: calibrator 'beta'"):
        build_graph_module(_predictor(cal))


def test_isotonic_with_repeated_knots_is_refused_and_nothing_written(tmp_path: Path) -> None:
    from ecgtune.ensembles.ship.bundle import save_bundle

    cal = _calibrator(20)
    iso = cal.calibrators_[3]
    assert isinstance(iso, IsotonicCalibrator)
    iso.x_thresholds_ = np.array([0.1, 0.4, 0.4, 0.9])
    iso.y_thresholds_ = np.array([0.0, 0.2, 0.6, 1.0])
    bundle = save_bundle(tmp_path / "bundle", _predictor(cal))
    with pytest.raises(UnsupportedCalibratorError, match=r"label SB: isotonic"):
        export_onnx(bundle, tmp_path / "m.onnx")
    assert not list(tmp_path.glob("m.onnx*"))


@pytest.mark.parametrize("knots", [1, 2, 7])
def test_isotonic_module_is_np_interp(knots: int) -> None:
    rng = np.random.default_rng(knots)
    x = np.sort(rng.choice(np.linspace(0.05, 0.95, 50), knots, replace=False))
    y = np.sort(rng.uniform(0, 1, knots))
    cal = IsotonicCalibrator()
    cal.x_thresholds_, cal.y_thresholds_ = x, y
    cal_dict = Calibrator.from_dict({"method": "per_label", "params": {
        "methods": ["isotonic"], "cv": 5, "seed": 0, "calibrators": [cal.to_dict()]}})
    module = build_graph_module(_one_label_predictor(cal_dict)).calibrators[0]
    p = np.concatenate([rng.uniform(0, 1, 500), x, [0.0, 1.0, x[0] - 1e-9, x[-1] + 1e-9]])
    got = module(torch.from_numpy(p)).numpy()
    assert np.array_equal(got, cal.predict(p))


def _one_label_predictor(cal: PerLabelCalibrator):
    from ecgtune.components import build_model, get_preset
    from ecgtune.ensembles.ship.inference import EnsemblePredictor, InputSpec, MemberSpec

    model = build_model(get_preset("tiny"), 1, [[0]]).eval()
    spec = MemberSpec("m0", get_preset("tiny"), 1, ((0,),), 1024, "dataset")
    inputs = InputSpec(fs=500, seconds=10.0, n_samples=5000, gain=1000.0,
                       norm_mean=(0.0,) * 12, norm_std=(0.25,) * 12)
    return EnsemblePredictor([(spec, model)], [1.0], cal, [0.5], ["X"], inputs, 1)


def test_failed_check_writes_nothing(exported: Exported, traced_once, tmp_path: Path) -> None:
    # The graph's float32 members differ from the bundle's by ~1e-9, so 1e-12 cannot pass.
    with pytest.raises(OnnxExportError, match=r"differs from the bundle by up to .* not written"):
        export_onnx(exported.bundle, tmp_path / "m.onnx",
                    ExportOptions(check_records=2, tolerance=1e-12))
    assert not list(tmp_path.glob("m.onnx*"))


def test_standard_ops_export_fuses_no_attention(exported: Exported, monkeypatch,
                                                tmp_path: Path) -> None:
    import onnx

    from ecgtune.ensembles.ship import onnx_export

    asked: list[object] = []
    monkeypatch.setattr(onnx_export, "_to_onnx", lambda *a, **k: onnx.load(exported.onnx))
    monkeypatch.setattr(onnx_export, "rewrite_graph",
                        lambda model, heads: asked.append(heads) or {})
    export_onnx(exported.bundle, tmp_path / "a.onnx", ExportOptions(check_records=2))
    export_onnx(exported.bundle, tmp_path / "b.onnx",
                ExportOptions(check_records=2, standard_ops=True))
    fused, standard = asked
    assert fused and all(n == 2 for n in fused.values())  # tiny-multi: 2 heads per branch
    assert standard is None


def test_check_records_of_another_length_are_a_clear_error(exported: Exported) -> None:
    from ecgtune.ensembles.ship.bundle import load_bundle
    from ecgtune.ensembles.ship.onnx_export import check_onnx

    with pytest.raises(OnnxExportError, match=r"do not fit the bundle.*\(N, 12, 5000\)"):
        check_onnx(exported.onnx, load_bundle(exported.bundle),
                   np.zeros((2, 12, 4000), np.int16))


def test_export_help_lists_the_options() -> None:
    proc = subprocess.run([sys.executable, "-m", "ecgtune.ensembles.cli", "export", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for option in ("--bundle", "models:/NAME@ALIAS", "--format", "--output", "--check-data",
                   "--check-records", "--tolerance", "--tracking-uri"):
        assert option in proc.stdout


def test_export_command_fails_cleanly_on_a_missing_bundle(tmp_path: Path, capsys) -> None:
    from ecgtune.ensembles.cli import main

    assert main(["export", "--bundle", str(tmp_path / "nope"), "--output",
                 str(tmp_path / "m.onnx")]) == 1
    assert "ecgtune export: error:" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


class _Client:
    """Records what `log_onnx_artifact` sends to MLflow (a copy of each logged file)."""

    def __init__(self, root: Path) -> None:
        self.root, self.calls = root, []

    def log_artifact(self, run_id: str, path: str, artifact_path: str) -> None:
        copy = self.root / Path(path).name
        copy.write_bytes(Path(path).read_bytes())
        self.calls.append(("artifact", run_id, artifact_path, copy))

    def log_metric(self, run_id: str, key: str, value: float) -> None:
        self.calls.append(("metric", run_id, key, value))

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.calls.append(("tag", run_id, key, value))


def test_ensemble_run_logs_the_checked_graph(exported: Exported, traced_once,
                                              tmp_path: Path) -> None:
    from ecgtune.ensembles.ship.onnx_export import log_onnx_artifact

    client = _Client(tmp_path)
    assert log_onnx_artifact(client, "run1", exported.bundle) == Path("onnx/model.onnx")
    (kind, run, where, copy), metric = client.calls
    assert (kind, run, where, copy.name) == ("artifact", "run1", "onnx", "model.onnx")
    assert read_metadata(copy) == read_metadata(exported.onnx)
    assert metric[:3] == ("metric", "run1", "onnx/max_abs_diff") and metric[3] <= 1e-4


def test_ensemble_run_tags_a_refused_export_instead_of_failing(tmp_path: Path) -> None:
    from ecgtune.ensembles.ship.bundle import save_bundle
    from ecgtune.ensembles.ship.onnx_export import log_onnx_artifact

    cal = _calibrator(20)
    cal.calibrators_[3].x_thresholds_ = np.array([0.1, 0.4, 0.4, 0.9])
    cal.calibrators_[3].y_thresholds_ = np.array([0.0, 0.2, 0.6, 1.0])
    bundle = save_bundle(tmp_path / "bundle", _predictor(cal))
    client = _Client(tmp_path)
    assert log_onnx_artifact(client, "run1", bundle) is None
    [(kind, run, key, value)] = client.calls
    assert (kind, run, key) == ("tag", "run1", "ecgtune.onnx_export_error")
    assert "label SB: isotonic" in value


@pytest.mark.slow
def test_tiny_search_ensemble_exports_from_the_registry(built_ensemble, capsys,
                                                        tmp_path: Path) -> None:
    """The registered tiny-search ensemble: its run logged the graph, and `ecgtune export`
    from models:/NAME@champion, checked on the prepared shards, equals the bundle."""
    from mlflow import MlflowClient

    from ecgtune.data_prep import load_shards
    from ecgtune.ensembles.cli import main

    client = MlflowClient(built_ensemble.tracking_uri)
    logged = [a.path for a in client.list_artifacts(built_ensemble.result.run_id, "onnx")]
    assert logged == ["onnx/model.onnx"]
    out = tmp_path / "registered.onnx"
    assert main(["export", "--bundle", f"models:/{built_ensemble.registered}@champion",
                 "--tracking-uri", built_ensemble.tracking_uri, "--output", str(out),
                 "--check-data", str(built_ensemble.data), "--check-records", "40"]) == 0
    printed = capsys.readouterr().out
    assert f"checked on 40 records ({built_ensemble.data})" in printed
    fold9 = load_shards(built_ensemble.data, folds=[9])
    _assert_equal_to_bundle(out, built_ensemble.result.bundle_dir, fold9.signals[:30])
    meta = read_metadata(out)
    assert json.loads(meta["labels"]) == built_ensemble.result.label_names
    assert meta["data_manifest_sha256"] == hashlib.sha256(
        (built_ensemble.data / "manifest.json").read_bytes()).hexdigest()
