from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import wfdb

from ecgtune.data_prep import draw_spec, get_label_map, make_record, read_record, synthesize
from ecgtune.data_prep.synth import record_relpath

NAMES = get_label_map("seed20").names


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_same_seed_same_bytes_regardless_of_workers(tmp_path: Path) -> None:
    a = synthesize(tmp_path / "a", 260, seed=2)
    b = synthesize(tmp_path / "b", 260, seed=2, workers=2)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert a.label_counts == b.label_counts
    synthesize(tmp_path / "c", 5, seed=3)
    first = "WFDBRecords/01/010/JS00001.mat"
    assert _files(tmp_path / "c")[first] != _files(tmp_path / "a")[first]


def test_layout_and_header_format(tmp_path: Path) -> None:
    synthesize(tmp_path, 3, seed=0)
    assert record_relpath(1) == "WFDBRecords/01/010/JS00001"
    assert record_relpath(101) == "WFDBRecords/01/011/JS00101"
    assert record_relpath(45152) == "WFDBRecords/46/461/JS45152"
    lines = (tmp_path / "WFDBRecords/01/010/JS00002.hea").read_text().splitlines()
    assert lines[0] == "JS00002 12 500 5000"
    pattern = r"JS00002\.mat 16x1\+24 1000\.0\(0\)/mV 16 0 -?\d+ -?\d+ 0 (I|II|III|aVR|aVL|aVF|V\d)"
    assert all(re.fullmatch(pattern, line) for line in lines[1:13])
    assert re.fullmatch(r"#Age: (\d+|NaN)", lines[13])
    assert re.fullmatch(r"#Sex: (Male|Female)", lines[14])
    assert re.fullmatch(r"#Dx: \d+(,\d+)*", lines[15])
    rec = wfdb.rdrecord(str(tmp_path / "WFDBRecords/01/010/JS00002"), physical=False)
    assert rec.d_signal.shape == (5000, 12) and rec.fs == 500
    # first value and checksum in the header are what WFDB expects
    assert rec.init_value == rec.d_signal[0].tolist()
    checks = [((int(c) + 32768) % 65536) - 32768 for c in rec.d_signal.sum(axis=0) % 65536]
    assert rec.checksum == checks
    phys = wfdb.rdrecord(str(tmp_path / "WFDBRecords/01/010/JS00002")).p_signal
    assert np.nanmax(np.abs(phys)) < 10  # mV


def test_limb_lead_identities_hold(tmp_path: Path) -> None:
    for i in range(1, 6):
        _, d = make_record(0, i)
        d = d.astype(np.int64)
        np.testing.assert_array_equal(d[2], d[1] - d[0])  # III = II - I
        assert np.abs(d[3] + (d[0] + d[1]) / 2).max() <= 0.5  # aVR = -(I + II) / 2
        assert np.abs(d[4] - (d[0] - d[1] / 2)).max() <= 0.5  # aVL = I - II / 2
        assert np.abs(d[5] - (d[1] - d[0] / 2)).max() <= 0.5  # aVF = II - I / 2


def test_label_prevalence_and_co_occurrence() -> None:
    specs = [draw_spec(0, i) for i in range(1, 3001)]
    counts = Counter(label for s in specs for label in s.labels)
    assert set(counts) == set(NAMES)
    assert min(counts.values()) >= 0.02 * len(specs)  # every label has enough positives
    assert counts["SB"] > counts["AFIB"] > counts["CAVB"]  # imbalance follows the real table
    rhythms = {"AFIB", "CAVB", "GSVT", "SB", "SR"}
    assert all(len(s.labels & rhythms) <= 1 for s in specs)
    lafb = [s for s in specs if "LAFB" in s.labels]
    assert sum("LAD" in s.labels for s in lafb) > 0.6 * len(lafb)
    assert not any({"LAD", "RAD"} <= s.labels for s in specs)
    assert not any("1AVB" in s.labels and "AFIB" in s.labels for s in specs)
    empty = sum(not s.labels for s in specs)
    assert 0.01 * len(specs) < empty < 0.1 * len(specs)
    codes = Counter(c for s in specs for c in s.dx_codes)
    assert codes["59118001"] > 0 and codes["698252002"] > 0  # unlabeled codes appear too
    lm = get_label_map("seed20")
    for s in specs[:300]:  # the codes express exactly the drawn labels
        assert {NAMES[j] for j in np.flatnonzero(lm.encode(s.dx_codes))} == set(s.labels)


def _beats(digital: np.ndarray) -> np.ndarray:
    """R-peak times (s) from the summed slope energy of all leads."""
    energy = np.abs(np.diff(digital.astype(np.float64), axis=1)).sum(axis=0)
    energy = np.convolve(energy, np.ones(20) / 20, mode="same")
    peaks, last = [], -1000
    threshold = 0.4 * np.percentile(energy, 99.5)
    for t in np.flatnonzero(energy > threshold):
        if t - last > 150:  # 300 ms refractory
            peaks.append(t)
        last = t if t - last > 150 else last
    return np.array(peaks) / 500


def _find(label: str, n: int, exclude: set[str]) -> list[int]:
    found, i = [], 1
    while len(found) < n:
        s = draw_spec(0, i)
        if label in s.labels and not (s.labels & exclude):
            found.append(i)
        i += 1
    return found


def test_heart_rate_follows_the_rhythm_label() -> None:
    ectopy = {"APB", "VPB", "PACE", "CAVB"}
    for i in _find("SB", 5, ectopy):
        assert np.median(np.diff(_beats(make_record(0, i)[1]))) > 1.0  # < 60 bpm
    for i in _find("GSVT", 5, ectopy):
        assert np.median(np.diff(_beats(make_record(0, i)[1]))) < 0.6  # > 100 bpm


def test_amplitude_and_pacing_features() -> None:
    def qrs_amplitude(i: int) -> float:
        d = make_record(0, i)[1]
        return float(np.median(np.percentile(d, 99, axis=1) - np.percentile(d, 1, axis=1)))

    low = [qrs_amplitude(i) for i in _find("LQV", 8, set())]
    high = [qrs_amplitude(i) for i in _find("LVH", 8, {"LQV"})]
    normal = [qrs_amplitude(i) for i in _find("SR", 8, {"LQV", "LVH", "RVH", "PACE"})]
    assert np.median(low) < 0.5 * np.median(normal) < 0.5 * np.median(high)
    spikes = [np.abs(np.diff(make_record(0, i)[1], axis=1)).max() for i in _find("PACE", 5, set())]
    assert min(spikes) > 1000  # > 1 mV within one sample


def test_variants_for_other_rates_and_lengths(tmp_path: Path) -> None:
    synthesize(tmp_path, 2, seed=1, fs=257, seconds=30)
    rec = read_record(tmp_path / "WFDBRecords/01/010/JS00001.hea")
    assert rec.fs == 257 and rec.digital.shape == (12, 257 * 30)
