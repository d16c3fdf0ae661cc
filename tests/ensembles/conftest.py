"""Synthetic member predictions for the ensemble tests (no models, no data files)."""

from __future__ import annotations

from collections.abc import Callable

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
