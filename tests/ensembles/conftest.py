"""Fixtures of the ensemble tests: synthetic member predictions (no models, no data files),
and an ensemble built end to end on the session's tiny search."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest


def make_members(
    n_members: int = 6, n: int = 600, c: int = 5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(member_probs (M, N, C), y (N, C)): imbalanced labels; each member sees the true signal
    with its own noise, sharpness and a per-label skill, so members complement each other."""
    rng = np.random.default_rng(seed)
    prevalence = np.geomspace(0.03, 0.4, c)
    y = rng.random((n, c)) < prevalence
    base = np.log(prevalence / (1 - prevalence))
    members = []
    for _ in range(n_members):
        skill = rng.uniform(0.5, 2.5, c)
        z = base + skill * (y - prevalence) * 2 + rng.normal(0, 1.0, (n, c))
        members.append(1 / (1 + np.exp(-rng.uniform(0.6, 2.0) * z)))
    return np.stack(members), y


@pytest.fixture
def members() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    return make_members


# ---------------------------------------------------------------------------------------------
# End-to-end fixtures on the session's tiny search (built once, shared with the search suite).

REGISTERED = "ecg-tiny-ensemble"
BUILD_OPTIONS = {"top_k": 4, "n_boot": 200, "seed": 0, "progress": False}


@dataclass(frozen=True)
class BuiltEnsemble:
    result: Any  # ensembles.build.EnsembleResult
    data: Path
    tracking_uri: str
    search_name: str
    storage: Path
    registered: str


@pytest.fixture(scope="session")
def built_ensemble(tiny_search, prepared_data, tmp_path_factory) -> BuiltEnsemble:
    """`build_ensemble` in process on the tiny search: top 4 trials, registered."""
    from ensembles import build_ensemble

    out = tmp_path_factory.mktemp("ensemble") / "bundle"
    result = build_ensemble(
        data=prepared_data, name=tiny_search.result.name, output=out, register=REGISTERED,
        tracking_uri=tiny_search.tracking_uri, **BUILD_OPTIONS,
    )
    return BuiltEnsemble(result, prepared_data, tiny_search.tracking_uri,
                         tiny_search.result.name, tiny_search.storage, REGISTERED)


@pytest.fixture(scope="session")
def fold9(prepared_data) -> Any:
    from data_prep import load_shards

    return load_shards(prepared_data, folds=[9])
