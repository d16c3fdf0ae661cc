"""The model input contract: what an ensemble's members read, and the one place where data
meets it.

`InputSpec` is the manifest's preprocessing block (rate, length, gain, units, leads) plus the
train-fold normalisation statistics: the bundle stores it, `predict` preprocesses raw records
to it, and every path that hands stored signals to a model checks them against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ecgtune.data_prep import NormStats

__all__ = ["NUM_LEADS", "InputSpec"]

NUM_LEADS = 12


@dataclass(frozen=True)
class InputSpec:
    """What the ensemble expects: int16 (N, 12, n_samples) at ``gain`` units per mV and ``fs``
    Hz, as `prep` stores it (``preprocessing`` is the manifest block, kept verbatim), plus the
    per-lead train-fold statistics used by "dataset" normalisation."""

    fs: int
    seconds: float
    n_samples: int
    gain: float
    norm_mean: tuple[float, ...]
    norm_std: tuple[float, ...]
    preprocessing: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> InputSpec:
        prep = dict(manifest["preprocessing"])
        stats = NormStats.from_manifest(manifest)
        return cls(
            fs=int(prep["fs"]),
            seconds=float(prep["seconds"]),
            n_samples=int(prep["n_samples"]),
            gain=float(prep["gain"]),
            norm_mean=tuple(float(x) for x in stats.mean),
            norm_std=tuple(float(x) for x in stats.std),
            preprocessing=prep,
        )

    @property
    def norm_stats(self) -> NormStats:
        return NormStats(
            np.asarray(self.norm_mean, np.float32), np.asarray(self.norm_std, np.float32)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "preprocessing": {
                **self.preprocessing,
                "fs": self.fs,
                "seconds": self.seconds,
                "n_samples": self.n_samples,
                "gain": self.gain,
            },
            "normalization": {"units": "mV", "mean": list(self.norm_mean),
                              "std": list(self.norm_std)},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        return cls.from_manifest(data)

    def check(self, signals: np.ndarray) -> None:
        if signals.ndim != 3 or signals.shape[1:] != (NUM_LEADS, self.n_samples):
            raise ValueError(
                f"expected signals of shape (N, {NUM_LEADS}, {self.n_samples}), "
                f"got {signals.shape}"
            )
        if signals.dtype != np.int16:
            raise ValueError(
                f"expected int16 signals at {self.gain:g} units/mV (as `prep` stores them), "
                f"got {signals.dtype}"
            )
