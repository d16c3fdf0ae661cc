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
    result: Any  # ensembles.build.ensemble.EnsembleResult
    data: Path
    tracking_uri: str
    search_name: str
    storage: Path
    registered: str


@pytest.fixture(scope="session")
def built_ensemble(tiny_search, prepared_data, tmp_path_factory) -> BuiltEnsemble:
    """`build_ensemble` in process on the tiny search: top 4 trials, registered."""
    from ecgtune.ensembles import build_ensemble

    out = tmp_path_factory.mktemp("ensemble") / "bundle"
    result = build_ensemble(
        data=prepared_data, name=tiny_search.result.name, output=out, register=REGISTERED,
        tracking_uri=tiny_search.tracking_uri, **BUILD_OPTIONS,
    )
    return BuiltEnsemble(result, prepared_data, tiny_search.tracking_uri,
                         tiny_search.result.name, tiny_search.storage, REGISTERED)


@pytest.fixture(scope="session")
def held_out_fold(prepared_data) -> Any:
    """The test fold of the prepared data, found by its role in the manifest."""
    from ecgtune.data_prep import load_shards, read_manifest
    from ecgtune.ensembles.build.fold_roles import TEST, fold_of_role

    return load_shards(prepared_data, folds=[fold_of_role(read_manifest(prepared_data), TEST)])


# ---------------------------------------------------------------------------------------------
# A tiny bundle without a search (no Ray): for predict and bundle-loading tests in the fast tier.


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """An exported bundle of one random `tiny` member (crop 1,024, one window), identity-like
    calibration and 0.5 thresholds: what it predicts is meaningless, how it is used is not."""
    import torch

    from ecgtune.components import build_model, get_preset
    from ecgtune.data_prep import get_label_map
    from ecgtune.ensembles.build.calibration import PerLabelCalibrator
    from ecgtune.ensembles.ship.bundle import save_bundle
    from ecgtune.ensembles.ship.inference import EnsemblePredictor, InputSpec, MemberSpec

    label_map = get_label_map("seed20")
    groups = label_map.group_indices()
    n_labels = len(label_map)
    config = get_preset("tiny")
    torch.manual_seed(0)
    model = build_model(config, n_labels, groups).eval()
    spec = MemberSpec("m0", config, n_labels, tuple(tuple(g) for g in model.label_groups),
                      1024, "dataset")
    rng = np.random.default_rng(0)
    calibrator = PerLabelCalibrator(methods=("temperature",)).fit(
        rng.uniform(0.01, 0.99, (200, n_labels)), rng.random((200, n_labels)) < 0.3)
    inputs = InputSpec(fs=500, seconds=10.0, n_samples=5000, gain=1000.0,
                       norm_mean=(0.0,) * 12, norm_std=(0.25,) * 12)
    predictor = EnsemblePredictor([(spec, model)], [1.0], calibrator, np.full(n_labels, 0.5),
                                  label_map.names, inputs, 1, label_map=label_map.name,
                                  label_groups=groups, group_names=label_map.group_names)
    return save_bundle(tmp_path_factory.mktemp("tiny-bundle") / "bundle", predictor)
