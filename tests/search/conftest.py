"""Fixtures shared by the search tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real prepared data directory (60 records, every fold present), read-only: commands
    given it get past the data checks, so only what a test is about can stop them."""
    from ecgtune.data_prep import prepare, synthesize

    root = tmp_path_factory.mktemp("small-data")
    synthesize(root / "records", 60, seed=0, workers=1)
    prepare(root / "records", root / "data", workers=1, shard_size=500, progress=False)
    return root / "data"
