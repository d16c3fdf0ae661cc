"""Proper scoring rules for probabilities, defined once for the whole ensembles package.

Selection (as a negated objective), calibration (choosing and shrinking calibrators) and the
report all score with these two functions. ``axis`` picks what is averaged: ``None`` for one
number over everything, ``0`` for one value per label of an (N, C) array, ``(-2, -1)`` for one
value per candidate of a (K, N, C) stack.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["EPS", "brier", "log_loss"]

# Probabilities are clipped to [EPS, 1 - EPS] before a logarithm: a calibrator or member
# that outputs exactly 0 or 1 must not make the loss infinite.
EPS = 1e-7

Axis = int | tuple[int, ...] | None


def brier(y: Any, p: Any, axis: Axis = None) -> Any:
    """Brier score: mean squared difference between probabilities ``p`` and 0/1 labels ``y``."""
    p = np.asarray(p, dtype=np.float64)
    return np.mean((p - np.asarray(y, dtype=np.float64)) ** 2, axis=axis)


def log_loss(y: Any, p: Any, axis: Axis = None) -> Any:
    """Mean binary cross-entropy of probabilities ``p`` (clipped to [EPS, 1 - EPS])."""
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    y = np.asarray(y, dtype=bool)
    return -np.mean(np.where(y, np.log(q), np.log1p(-q)), axis=axis)
