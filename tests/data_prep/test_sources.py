"""Synthetic sources (`synth --sources N`) and what prep does with them: each site records
differently (measured here on the written records), its `#Source:` comment reaches the shards'
`source` column, and `--holdout-source` puts a whole site in the external fold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy.signal import butter, sosfiltfilt, welch

from ecgtune.data_prep import PrepError, fold_roles, load_shards, prepare, read_manifest
from ecgtune.data_prep.folds import EXTERNAL, EXTERNAL_FOLD, FOLD_ROLES
from ecgtune.data_prep.provenance import record_source
from ecgtune.data_prep.reader import read_header, read_record, scan_records
from ecgtune.data_prep.record_contract import parse_source
from ecgtune.data_prep.synth import SITES, draw_spec, synthesize

N_SOURCES = 4
PER_SOURCE = 24


@pytest.fixture(scope="module")
def sites_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sites")
    result = synthesize(out, N_SOURCES * PER_SOURCE, seed=0, sources=N_SOURCES)
    assert result.source_counts == {s.name: PER_SOURCE for s in SITES[:N_SOURCES]}
    return out


@pytest.fixture(scope="module")
def held_out(sites_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("held-out")
    prepare(sites_dir, out, workers=1, progress=False, shard_size=12,
            holdout_sources=["site-c"])
    return out


def _by_source(root: Path) -> dict[str, list]:
    out: dict[str, list] = {}
    for hea in scan_records(root):
        rec = read_record(hea)
        out.setdefault(record_source(rec.name, read_header(hea).comments), []).append(rec)
    return out


def _measures(rec) -> dict[str, float]:
    """Per record: high-frequency share, wander power, QRS amplitude, noise level."""
    fs = float(rec.fs)
    x = rec.digital.astype(np.float64) / 1000.0
    f, psd = welch(x, fs=fs, nperseg=int(4 * fs), axis=-1)
    psd = psd.mean(axis=0)
    df = f[1] - f[0]
    sos = butter(2, [1 / (fs / 2), 25 / (fs / 2)], "bandpass", output="sos")
    qrs = sosfiltfilt(sos, x, axis=-1)
    noise_band = (f > 60) & (f < 110)
    return {
        "above_45hz": float(psd[f > 45].sum() / psd.sum()),
        "wander": float(psd[f < 0.5].sum() * df),
        "amplitude": float(np.median(np.percentile(qrs, 99.5, axis=-1)
                                     - np.percentile(qrs, 0.5, axis=-1))),
        # white noise per sample: its density in a band above the QRS, times the bandwidth
        "noise": float(np.sqrt(np.median(psd[noise_band]) * fs / 2))
        if noise_band.any() else float("nan"),
    }


def test_synthetic_sources_differ_as_specified(sites_dir: Path) -> None:
    records = _by_source(sites_dir)
    assert sorted(records) == [s.name for s in SITES[:N_SOURCES]]
    site = {s.name: s for s in SITES}
    measured = {}
    for name, recs in records.items():
        assert len(recs) == PER_SOURCE
        assert {r.fs for r in recs} == {site[name].fs}  # each site's own rate
        rows = [_measures(r) for r in recs]
        measured[name] = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
    a, b, c, d = (measured[f"site-{x}"] for x in "abcd")
    # Filtering: b's 40 Hz low-pass leaves almost nothing above 45 Hz; a's 150 Hz does.
    assert b["above_45hz"] < 0.2 * a["above_45hz"]
    # Baseline wander: c's is 3x a's level; the high-pass of b (0.5 Hz) and d (0.67 Hz)
    # removes most of it.
    assert c["wander"] > 3 * a["wander"]
    assert b["wander"] < 0.2 * a["wander"] and d["wander"] < 0.2 * a["wander"]
    # Gain error: amplitudes follow 1 + gain_error (b +15%, c -15%) against site a.
    for name in ("site-b", "site-c"):
        ratio = measured[name]["amplitude"] / a["amplitude"]
        assert abs(ratio - (1 + site[name].gain_error)) < 0.1, (name, ratio)
    # Noise: c's is half a's, d's twice (b's passband ends below the measuring band).
    assert c["noise"] < 0.75 * a["noise"] < d["noise"] * 0.75


def test_sources_have_their_own_label_prevalence() -> None:
    n = 2000
    for k, profile in enumerate(SITES[:N_SOURCES]):
        specs = [draw_spec(5, N_SOURCES * i + k + 1, profile) for i in range(n)]
        weights = np.asarray(profile.rhythms) / sum(profile.rhythms)
        for j, label in enumerate(("AFIB", "CAVB", "GSVT", "SB", "SR")):
            rate = sum(label in s.labels for s in specs) / n
            se = np.sqrt(weights[j] * (1 - weights[j]) / n)
            assert abs(rate - weights[j]) < 4 * se + 1e-9, (profile.name, label, rate)
    afib = {p.name: p.rhythms[0] / sum(p.rhythms) for p in SITES[:N_SOURCES]}
    assert afib["site-b"] > 4 * afib["site-c"]  # a cardiology ward beside a clinic


def test_without_sources_the_records_are_unchanged(tmp_path: Path) -> None:
    synthesize(tmp_path / "plain", 3, seed=4)
    hea = (tmp_path / "plain/WFDBRecords/01/010/JS00001.hea").read_text()
    assert "#Source: site" not in hea and hea.splitlines()[0] == "JS00001 12 500 5000"


def test_source_names_and_free_text() -> None:
    assert parse_source(" site-b ") == "site-b"
    assert parse_source("ecgtune synthetic record, not a recording of a patient") is None
    assert parse_source("a/b") is None and parse_source("") is None
    assert record_source("JS00001", ["Dx: 164889003", "Source: Hospital_7"]) == "Hospital_7"
    # free text is a note, not a site: the database decides
    assert record_source("E00001", ["Source: scanned from paper"]) == "georgia"
    with pytest.raises(ValueError, match="at most 6"):
        synthesize("unused", 1, sources=7)


def test_the_source_comment_reaches_the_shards_source_column(sites_dir: Path,
                                                              held_out: Path) -> None:
    m = read_manifest(held_out)
    assert m["sources"] == {s.name: PER_SOURCE for s in SITES[:N_SOURCES]}
    assert m["databases"] == {"synthetic": N_SOURCES * PER_SOURCE}
    for shard in m["shards"]:
        table = pq.read_table(held_out / shard["file"],
                              columns=["record", "source", "path", "fold"])
        for row in table.to_pylist():
            header = read_header(sites_dir / row["path"])
            assert header.name == row["record"]
            assert row["source"] == record_source(header.name, header.comments)
    ds = load_shards(held_out)
    assert sorted(set(ds.sources.tolist())) == [s.name for s in SITES[:N_SOURCES]]
    # A record's source survives selection (the trials' validation fold has it).
    val = ds.select(fold_roles(m)["val"])
    assert len(val.sources) == len(val) and "site-c" not in set(val.sources.tolist())


def test_a_held_out_source_is_the_external_fold(held_out: Path) -> None:
    m = read_manifest(held_out)
    roles = fold_roles(m)
    assert roles[EXTERNAL] == (EXTERNAL_FOLD,) and m["folds"]["n"] == EXTERNAL_FOLD + 1
    assert m["folds"]["holdout_sources"] == ["site-c"]
    ds = load_shards(held_out)
    external = ds.folds == EXTERNAL_FOLD
    assert set(ds.sources[external].tolist()) == {"site-c"}
    assert external.sum() == PER_SOURCE
    fitted_on = [f for role in ("train", "val", "ensemble", "test") for f in roles[role]]
    assert EXTERNAL_FOLD not in fitted_on
    assert "site-c" not in set(ds.sources[np.isin(ds.folds, fitted_on)].tolist())
    # The external fold's shards hold nothing else.
    for shard in m["shards"]:
        sources = set(pq.read_table(held_out / shard["file"], columns=["source"])
                      .column("source").to_pylist())
        assert (sources == {"site-c"}) == (shard["folds"] == [EXTERNAL_FOLD])


def test_holdout_sources_are_checked(sites_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(PrepError, match=r"--holdout-source site-z: no record has that "
                                        r"source; sources found: site-a \(24\)"):
        prepare(sites_dir, tmp_path / "z", workers=1, progress=False,
                holdout_sources=["site-z"])
    with pytest.raises(PrepError, match="holds out every source"):
        prepare(sites_dir, tmp_path / "all", workers=1, progress=False,
                holdout_sources=[s.name for s in SITES[:N_SOURCES]])


def test_fold_roles_without_a_holdout_have_no_external_fold() -> None:
    assert FOLD_ROLES[EXTERNAL] == []
    roles = {"train": [0], "val": [1], "ensemble": [2], "test": [3]}
    assert fold_roles({"folds": {"n": 4, "roles": roles}})[EXTERNAL] == ()
    with pytest.raises(PrepError, match="fold 3 has two roles"):
        fold_roles({"folds": {"n": 4, "roles": {**roles, EXTERNAL: [3]}}})
