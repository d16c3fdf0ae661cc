"""Session-wide fixtures: one synthetic database, its shards, and one tiny search, shared by
the search and ensembles suites so that each is built once per test run."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# Two cores, shared with Ray's trial workers during the search tests: one intra-op thread per
# test process avoids OpenMP spin-waits fighting over them (2 threads ran ~10x slower here).
torch.set_num_threads(1)

# Subprocesses (the CLI, Ray workers) import the installed `ecgtune.*` packages, never the repo's
# folders by their bare names from the working directory (`python -m` would put it first).
os.environ["PYTHONSAFEPATH"] = "1"

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = (REPO.parent / "shared" / "data" / "ecg-arrhythmia-sample").resolve()
N_RECORDS = 1500


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The 20 real records; tests that need them skip cleanly when the folder is absent."""
    if not SAMPLE_DIR.is_dir():
        pytest.skip(f"real sample records not found at {SAMPLE_DIR}")
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def synthetic_records(tmp_path_factory) -> Path:
    from ecgtune.data_prep import synthesize

    out = tmp_path_factory.mktemp("synthetic-records")
    synthesize(out, N_RECORDS, seed=0, workers=2)
    return out


@pytest.fixture(scope="session")
def prepared_data(synthetic_records, tmp_path_factory) -> Path:
    from ecgtune.data_prep import prepare

    out = tmp_path_factory.mktemp("prepared")
    prepare(synthetic_records, out, workers=2, shard_size=500, progress=False)
    return out


@dataclass(frozen=True)
class TinySearch:
    result: object  # search.run.SearchResult
    storage: Path
    tracking_uri: str


@pytest.fixture(scope="session")
def tiny_search(prepared_data, tmp_path_factory) -> TinySearch:
    """A finished 4-trial search with the `tiny` space (local Ray, SQLite MLflow)."""
    from ecgtune.search.run import SearchOptions, run_search
    from ecgtune.search.tracking import default_tracking_uri

    root = tmp_path_factory.mktemp("tiny-search")
    uri = default_tracking_uri(root)
    result = run_search(SearchOptions(
        data=prepared_data, space="tiny", name="tiny", num_samples=4, tracking_uri=uri,
        storage=str(root / "ray_results"), num_cpus=2, max_concurrent=2, seed=0, verbose=0,
    ))
    return TinySearch(result, root / "ray_results", uri)
