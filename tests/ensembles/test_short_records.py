"""Records shorter than the stored window: their inference windows cover real signal only, and
`predict`, the prep-then-bundle path (`evaluate`) and the generator's records agree."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from record_strategies import record_cases, write_case

from ecgtune.data_prep import load_shards, prepare, record_window_starts
from ecgtune.data_prep.synth import make_record, write_record
from ecgtune.ensembles.ship.bundle import load_bundle
from ecgtune.ensembles.ship.inference import EnsemblePredictor, member_probabilities
from ecgtune.ensembles.ship.predict import predict_records


@pytest.fixture(scope="module")
def three_windows(tiny_bundle: Path) -> EnsemblePredictor:
    """The tiny bundle's member read through three windows (crop 1,024 of 5,000)."""
    b = load_bundle(tiny_bundle)
    return EnsemblePredictor(b.members, [1.0], b.calibrator, b.thresholds, b.label_names,
                             b.inputs, n_windows=3)


def _signals(n: int, seed: int = 0) -> np.ndarray:
    return np.stack([make_record(seed, i)[1] for i in range(n)]).astype(np.int16)


def test_padding_never_reaches_a_window(three_windows: EnsemblePredictor) -> None:
    x = _signals(3)
    lengths = np.array([3000, 1500, 5000])
    x[0, :, 3000:] = 0
    x[1, :, 1500:] = 0
    clean = three_windows.predict_signals(x, lengths=lengths)
    noisy = x.copy()
    rng = np.random.default_rng(1)
    noisy[0, :, 3000:] = rng.integers(-3000, 3000, (12, 2000))
    noisy[1, :, 1500:] = rng.integers(-3000, 3000, (12, 3500))
    np.testing.assert_array_equal(three_windows.predict_signals(noisy, lengths=lengths), clean)
    # Without lengths the same padded rows are read as full length: the padding counts.
    assert not np.allclose(three_windows.predict_signals(noisy), clean)


def test_windows_are_spread_over_the_real_signal(three_windows: EnsemblePredictor) -> None:
    spec, model = three_windows.members[0]
    x = _signals(2, seed=3)
    lengths = np.array([2600, 700])  # 3 windows over 2,600 samples; one window under 1,024
    starts = record_window_starts(lengths, 5000, spec.crop_len, 3)
    assert starts.tolist() == [[0, 788, 1576], [0, 0, 0]]
    got = member_probabilities(model, spec, x, three_windows.inputs, 3, lengths=lengths)
    for r in range(2):  # each window by hand: the record's own crop at each start
        by_hand = np.mean([
            member_probabilities(model, spec, _shifted(x[r], s), three_windows.inputs, 1)[0]
            for s in starts[r]], axis=0)
        np.testing.assert_allclose(got[r], by_hand, rtol=0, atol=1e-6)


def _shifted(signal: np.ndarray, start: int) -> np.ndarray:
    """A full-length row whose centred 1,024-sample window is `signal[:, start:start + 1024]`."""
    out = np.zeros((1, 12, 5000), np.int16)
    centre = (5000 - 1024) // 2
    out[0, :, centre : centre + 1024] = signal[:, start : start + 1024]
    return out


def test_lengths_are_checked(three_windows: EnsemblePredictor) -> None:
    x = _signals(2)
    for bad in ([5000], [0, 5000], [5000, 5001], [2.5, 5000]):
        with pytest.raises(ValueError, match="lengths"):
            three_windows.predict_signals(x, lengths=np.array(bad))


def test_predict_equals_prep_then_bundle_for_short_records(tiny_bundle: Path,
                                                           tmp_path: Path) -> None:
    root = tmp_path / "in"
    seconds = {"S6": 6.0, "S8": 8.0, "S10": 10.0, "S12": 12.0}
    for i, (name, s) in enumerate(seconds.items()):
        write_record(root, name, make_record(5, i, seconds=s)[1], dx_codes=("164889003",))
    prepare(root, tmp_path / "out", workers=1, progress=False)
    ds = load_shards(tmp_path / "out")
    assert dict(zip(ds.records, ds.lengths.tolist(), strict=True)) == {
        "S6": 3000, "S8": 4000, "S10": 5000, "S12": 5000}
    bundle = load_bundle(tiny_bundle)
    expected = dict(zip(ds.records, bundle.predict_signals(ds.signals, lengths=ds.lengths),
                        strict=True))
    got = predict_records(bundle, [root])
    assert got.records == sorted(seconds)
    for name, row, quality in zip(got.records, got.probabilities, got.quality, strict=True):
        np.testing.assert_array_equal(row, expected[name])
        assert quality == {"S6": "short:6.0s", "S8": "short:8.0s"}.get(name, "")
    assert sum("short:" in w.reason for w in got.warnings) == 2


_names = st.integers(0, 10**6).map(lambda i: f"P{i:07d}")


@settings(max_examples=4, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(cases=st.lists(record_cases(max_samples=20_000, max_seconds=12.0, names=_names),
                      min_size=2, max_size=5, unique_by=lambda c: c.name))
def test_generated_records_predict_as_prep_stores_them(tiny_bundle: Path, tmp_path_factory,
                                                       cases) -> None:
    root = tmp_path_factory.mktemp("db")
    for case in cases:
        write_case(case, root)
    out = root.parent / (root.name + "-out")
    prepare(root, out, workers=1, progress=False)
    with open(out / "quarantine.csv", newline="") as fh:
        quarantined = {r["record"]: r["reason"] for r in csv.DictReader(fh)}
    bundle = load_bundle(tiny_bundle)
    got = predict_records(bundle, [root])
    assert {i.record: i.reason for i in got.rejected} == quarantined
    ds = load_shards(out)
    assert sorted(got.records) == sorted(ds.records)
    if len(ds):
        expected = dict(zip(ds.records, bundle.predict_signals(ds.signals, lengths=ds.lengths),
                            strict=True))
        for name, row in zip(got.records, got.probabilities, strict=True):
            np.testing.assert_allclose(row, expected[name], rtol=0, atol=1e-6)  # batch-size noise
