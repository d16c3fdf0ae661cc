"""Source databases: synthetic records say so in their header, real ones by CinC name prefix."""

from __future__ import annotations

import pytest

from ecgtune.data_prep import is_synthetic, prepare, synthesize
from ecgtune.data_prep.provenance import SYNTHETIC_COMMENT, record_database
from ecgtune.data_prep.reader import header_comments


@pytest.mark.parametrize(("name", "database"), [
    ("JS00001", "ecg-arrhythmia"), ("HR00001", "ptb-xl"), ("E00001", "georgia"),
    ("A0001", "cpsc"), ("Q0001", "cpsc-extra"), ("I01", "incart"), ("S0001", "ptb"),
    ("JSX", "unknown"), ("patient7", "unknown"),
])
def test_real_records_by_name_prefix(name, database):
    assert record_database(name, ["Age: 50", "Dx: 426783006"]) == database


def test_synthetic_comment_wins_over_the_name():
    assert record_database("JS00001", ["Age: 50", SYNTHETIC_COMMENT]) == "synthetic"


def test_prep_manifest_counts_databases(tmp_path):
    synthesize(tmp_path / "in", 12, seed=3)
    hea = next((tmp_path / "in").rglob("*.hea")).read_text()
    assert SYNTHETIC_COMMENT in header_comments(hea)
    manifest = prepare(tmp_path / "in", tmp_path / "out", shard_size=50).manifest
    assert manifest["databases"] == {"synthetic": manifest["records_written"]}
    assert is_synthetic(manifest["databases"])
    assert not is_synthetic({"ecg-arrhythmia": 3}) and not is_synthetic({})
