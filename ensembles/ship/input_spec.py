"""The model input contract: what an ensemble's members read, and the one place where data
meets it.

`InputSpec` is the manifest's preprocessing block (rate, length, gain, units, leads) plus the
train-fold normalisation statistics: the bundle stores it, `predict` preprocesses raw records
to it, and every path that hands stored signals to a model checks them against it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ecgtune.data_prep import STANDARD_LEADS, NormStats
from ecgtune.ensembles.errors import ModelInputError

__all__ = ["NUM_LEADS", "UNITS", "InputSpec", "ModelInputError"]

NUM_LEADS = 12
UNITS = "mV"  # what `gain` converts stored integers to
_INT16 = np.iinfo(np.int16)


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

    @property
    def units(self) -> str:
        return str(self.preprocessing.get("units", UNITS))

    @property
    def leads(self) -> tuple[str, ...]:
        return tuple(str(x) for x in self.preprocessing.get("leads", STANDARD_LEADS))

    def to_dict(self) -> dict[str, Any]:
        prep = {**self.preprocessing, "fs": self.fs, "seconds": self.seconds,
                "n_samples": self.n_samples, "gain": self.gain}
        # A spec built in code (tests, benchmarks) has no manifest block: the bundle still
        # states units and leads, so that its schema can require them.
        prep.setdefault("units", UNITS)
        prep.setdefault("leads", list(STANDARD_LEADS))
        return {
            "preprocessing": prep,
            "normalization": {"units": "mV", "mean": list(self.norm_mean),
                              "std": list(self.norm_std)},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        return cls.from_manifest(data)

    def check(self, signals: np.ndarray) -> None:
        """Refuse (`ModelInputError`, a ValueError) anything but int16 (N, 12, n_samples)."""
        if signals.ndim != 3 or signals.shape[1:] != (NUM_LEADS, self.n_samples):
            raise ModelInputError(
                f"expected signals of shape (N, {NUM_LEADS}, {self.n_samples}), "
                f"got {signals.shape}"
            )
        if signals.dtype != np.int16:
            raise ModelInputError(
                f"expected int16 signals at {self.gain:g} units/mV (as `prep` stores them), "
                f"got {signals.dtype}"
            )

    def describe(self) -> str:
        """The contract in words, for messages: ``500 Hz, 10 s, 1000 units/mV``."""
        return f"{self.fs:g} Hz, {self.seconds:g} s, {self.gain:g} units/{self.units}"

    def signals_from(self, values: Any) -> np.ndarray:
        """``values`` (an array or nested lists) as int16 (N, 12, n_samples) records, or one
        `ModelInputError` saying what is wrong, for the pyfunc model and its REST clients.

        One record may come as (12, n_samples). Integers of any dtype are taken within int16's
        range (JSON arrives as int64). Floats are refused, never rounded: stored records are
        integers at ``gain`` units/mV, so values in mV rounded to integers would be a record
        of near zeros."""
        expected = (f"int16 records (N, {NUM_LEADS}, {self.n_samples}) or one record "
                    f"({NUM_LEADS}, {self.n_samples}) at {self.describe()}, as `ecgtune prep` "
                    "stores them")
        try:
            signals = np.asarray(values)
        except (TypeError, ValueError) as exc:  # ragged nested lists
            raise ModelInputError(f"expected {expected}; got input numpy cannot read as an "
                                  f"array ({exc})") from None
        if signals.dtype == object:
            raise ModelInputError(f"expected {expected}; got records or leads of unequal "
                                  "lengths, or values that are not numbers")
        if signals.ndim == 2:
            signals = signals[None]
        if signals.ndim != 3 or signals.shape[1:] != (NUM_LEADS, self.n_samples):
            raise ModelInputError(f"expected {expected}; got shape {np.shape(values)}")
        if signals.dtype.kind not in "iu":
            hint = (" (samples are integers at the gain, not mV)"
                    if signals.dtype.kind == "f" else "")
            raise ModelInputError(f"expected {expected}; got {signals.dtype} values{hint}")
        if signals.size and (signals.min() < _INT16.min or signals.max() > _INT16.max):
            raise ModelInputError(f"expected {expected}; got values outside int16 "
                                  f"({signals.min()}..{signals.max()})")
        return signals.astype(np.int16, copy=False)

    def check_data(
        self,
        manifest: Mapping[str, Any],
        *,
        data: str,
        model: str,
        label_names: Sequence[str] | None = None,
        label_map: str | None = None,
    ) -> None:
        """Refuse, in one line (`ModelInputError`), prepared data (its manifest.json) that
        does not fit this input: another rate, length, sample count, gain, units or lead
        order, and with ``label_names``, another label map (names, order, or the same names
        from another map, e.g. seed20-rbbb maps another code to CRBBB). ``data`` and
        ``model`` name the two sides in the message."""
        prep = manifest.get("preprocessing")
        if not isinstance(prep, Mapping):
            raise ModelInputError(f"data {data}: manifest.json has no preprocessing block; "
                                  "prepare it with `ecgtune prep`")
        have, want = [], []
        rate = [("fs", "Hz", self.fs), ("seconds", "s", self.seconds)]
        if any(not _same(prep.get(k), v) for k, _, v in rate) or not _same(
                prep.get("n_samples"), self.n_samples):
            have += [f"{_show(prep.get(k))} {unit}" for k, unit, _ in rate]
            want += [f"{v:g} {unit}" for _, unit, v in rate]
            if all(_same(prep.get(k), v) for k, _, v in rate):  # only the count differs
                have.append(f"{_show(prep.get('n_samples'))} samples")
                want.append(f"{self.n_samples} samples")
        if not _same(prep.get("gain"), self.gain):
            have.append(f"{_show(prep.get('gain'))} units/mV")
            want.append(f"{self.gain:g} units/mV")
        if prep.get("units", UNITS) != self.units:
            have.append(f"units {_show(prep.get('units'))}")
            want.append(f"units {self.units}")
        leads = prep.get("leads", list(STANDARD_LEADS))
        if not isinstance(leads, Sequence) or [str(x) for x in leads] != list(self.leads):
            have.append(f"leads {_show(leads)}")
            want.append(f"leads {' '.join(self.leads)}")
        if have:
            raise ModelInputError(
                f"data {data} prepared at {', '.join(have)}; bundle {model} expects "
                f"{', '.join(want)}: re-run `ecgtune prep` with --fs {self.fs:g} --seconds "
                f"{self.seconds:g}")
        if label_names is not None:
            _check_labels(manifest, list(label_names), str(label_map or "manifest"), data)

    def check_lengths(self, lengths: Any, n_records: int) -> np.ndarray | None:
        """Per-record real lengths as int64 (N,), or None when absent or all full length.

        A length is the number of real samples at the start of a stored row (prep pads the
        rest with zeros): an integer in 1..n_samples, one per record."""
        if lengths is None:
            return None
        arr = np.asarray(lengths)
        if arr.shape != (n_records,) or arr.dtype.kind not in "iu":
            raise ValueError(f"expected {n_records} integer lengths, got shape {arr.shape} "
                             f"of {arr.dtype}")
        if arr.size and (arr.min() < 1 or arr.max() > self.n_samples):
            raise ValueError(f"lengths must be within 1..{self.n_samples} samples, got "
                             f"{arr.min()}..{arr.max()}")
        return None if bool((arr == self.n_samples).all()) else arr.astype(np.int64)


def _same(value: Any, expected: float) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and float(value) == float(expected))


def _show(value: Any) -> str:
    """A manifest value for the message: numbers plain, anything else as JSON ("500", null),
    lead lists space-separated."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return " ".join(str(x) for x in value)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _check_labels(manifest: Mapping[str, Any], names: list[str], label_map: str,
                  data: str) -> None:
    """The data must carry the bundle's labels, in its order, from the same label map."""
    items = manifest.get("labels")
    if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
        raise ModelInputError(f"data {data}: manifest.json has no label list; prepare it with "
                              "`ecgtune prep`")
    theirs = [str(i.get("name")) for i in items]
    their_map = str(manifest.get("label_map", "manifest"))
    if theirs == names and len({their_map, label_map} - {"manifest"}) > 1:
        raise ModelInputError(
            f"data {data}: its label map {their_map} differs from the bundle's ({label_map}): "
            f"same label names, other SNOMED codes; prepare the data with "
            f"`ecgtune prep --labels {label_map}`")
    if theirs != names:
        missing = [n for n in names if n not in theirs]
        extra = [n for n in theirs if n not in names]
        detail = "; ".join(
            ([f"missing {', '.join(missing)}"] if missing else [])
            + ([f"extra {', '.join(extra)}"] if extra else [])) or "same labels, another order"
        raise ModelInputError(
            f"data {data}: its label map ({their_map}, {len(theirs)} labels) differs from the "
            f"bundle's ({label_map}, {len(names)} labels): {detail}; prepare the data with the "
            f"bundle's label map (`ecgtune prep --labels {label_map}`)")
