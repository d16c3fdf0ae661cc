"""`ecgtune predict`: raw WFDB records -> CSV of calibrated probabilities and label sets.

Inputs are `.hea` files, record paths without extension (or with `.mat` / `.dat`), or folders
searched recursively for `*.hea` (`data_prep.scan_records`). An input that does not exist, or
a folder without records, is a usage error (`PredictInputError`) and nothing is predicted.
Each record goes through `ecgtune.data_prep.validate_record` with the bundle's fs, seconds and gain:
exactly the reading, quality gates and preprocessing of `prep` (resampled, centre-cropped or
zero-padded like the training data), then through the bundle's ensemble in batches.

Rejection policy: what `prep` would quarantine, `predict` refuses, for the same reason (one
module decides both: `data_prep.quality.QUALITY_RULES`): a missing or truncated signal file, an
unparsable header, the wrong lead set, a `.mat` matrix that does not match its header, a bad
gain, a record shorter than 5 s, NaN/inf or missing samples, all leads flat, a saturated lead,
an unreadable file, or a second record with the same name. It is named on stderr with its
reason (``record JS00001: truncated_signal: ...``, the reason codes of prep's quarantine.csv),
left out of the CSV, and the exit status is 3; the other records are still predicted and
written. Some flat leads are a warning, not a rejection (prep writes such records too): the
record is predicted, named on stderr (``record JS20004: warning: flat_lead: ...``) and its
`quality` cell says ``flat_lead:V2,V4,V6``. A record shorter than the bundle's window (e.g. 6 s
of 10 s) is zero-padded as prep pads it, and its windows cover the real signal only, as for a
short record in the shards: its `quality` cell says ``short:6.0s``.

CSV: ``record``, one probability column per label (label-map order), ``predicted`` (label
names at or above their thresholds, joined by ``;``; empty when none), ``quality`` (warnings
joined by ``;``; empty when clean). Written atomically.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecgtune.ensembles.errors import EXIT_REJECTED, EnsembleError

__all__ = [
    "PROBABILITY_FORMAT",
    "TRAINED_ON_COLUMN",
    "PredictInputError",
    "PredictionResult",
    "RecordIssue",
    "expand_inputs",
    "predict_records",
    "trained_on_text",
    "write_predictions_csv",
]

_SIGNAL_SUFFIXES = (".hea", ".mat", ".dat")


class PredictInputError(EnsembleError):
    """The inputs name no record at all (a usage error: exit status 2)."""


@dataclass(frozen=True)
class RecordIssue:
    record: str
    source: str
    reason: str  # "code: detail", codes as in data_prep.REASON_CODES

    def message(self, warning: bool = False) -> str:
        return f"record {self.record}: {'warning: ' if warning else ''}{self.reason}"


@dataclass
class PredictionResult:
    label_names: list[str]
    records: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    predicted: list[list[str]] = field(default_factory=list)
    quality: list[str] = field(default_factory=list)  # per record: warnings joined by ";"
    rejected: list[RecordIssue] = field(default_factory=list)
    warnings: list[RecordIssue] = field(default_factory=list)
    # The bundle's training data by source database (its data manifest); {} when unrecorded.
    trained_on: dict[str, int] = field(default_factory=dict)
    # Per record, refer it to a human (uncertain); None when the bundle does not refer.
    refer: list[bool] | None = None

    @property
    def synthetic_model(self) -> bool:
        """The model saw synthetic records: its outputs are not diagnoses."""
        from ecgtune.data_prep import is_synthetic

        return is_synthetic(self.trained_on)

    @property
    def trained_on_text(self) -> str:
        return trained_on_text(self.trained_on)

    @property
    def exit_status(self) -> int:
        return EXIT_REJECTED if self.rejected else 0


def expand_inputs(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Header paths of every input, folders scanned recursively, duplicates removed."""
    from ecgtune.data_prep import scan_records

    headers: list[Path] = []
    for item in paths:
        p = Path(item)
        if p.is_dir():
            found = scan_records(p)
            if not found:
                raise PredictInputError(f"no WFDB records (*.hea) under {p}")
            headers.extend(found)
            continue
        header = p.with_suffix(".hea") if p.suffix.lower() in _SIGNAL_SUFFIXES else (
            p.with_name(p.name + ".hea"))
        if not p.exists() and not header.exists():
            # A mistyped path is a usage error (exit 2), not a record to refuse (exit 3).
            raise PredictInputError(f"input {item} does not exist")
        headers.append(header)
    seen: set[Path] = set()
    unique = []
    for h in headers:
        key = h.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(h)
    if not unique:
        raise PredictInputError("no input records given")
    return unique


def _flat_reason(leads: Sequence[str]) -> str:
    from ecgtune.data_prep.quality import FLAT_P2P_MV

    return (f"flat_lead: lead{'s' if len(leads) > 1 else ''} {', '.join(leads)} flat "
            f"(peak-to-peak < {FLAT_P2P_MV * 1000:g} uV); predicted anyway")


def predict_records(
    bundle: Any,
    inputs: Iterable[str | os.PathLike[str]],
    batch_size: int = 32,
    progress: bool = False,
    device: str = "cpu",
    precision: str = "fp32",
) -> PredictionResult:
    """Predict raw WFDB records with a bundle (an `EnsemblePredictor` or a bundle path)."""
    from tqdm.auto import tqdm

    from ecgtune.data_prep import RecordError, validate_record
    from ecgtune.ensembles.ship.bundle import load_bundle

    if isinstance(bundle, (str, os.PathLike)):
        bundle = load_bundle(bundle, device=device, precision=precision)
    spec = bundle.inputs
    headers = expand_inputs(inputs)
    result = PredictionResult(list(bundle.label_names), trained_on=dict(
        (getattr(bundle, "metadata", {}).get("fit") or {}).get("trained_on") or {}))
    first_source: dict[str, str] = {}
    probs: list[np.ndarray] = []
    refers = getattr(bundle, "referral", None) is not None
    refer: list[np.ndarray] = []
    bar = tqdm(total=len(headers), desc="predict", unit="record", disable=not progress)
    for start in range(0, len(headers), batch_size):
        names, sources, signals, lengths, quality = [], [], [], [], []
        for header in headers[start : start + batch_size]:
            name, source = header.stem, str(header)
            try:
                # prep's own gate: what it would quarantine is refused here, same reason.
                checked = validate_record(header, spec.fs, spec.seconds, spec.gain)
            except RecordError as exc:
                result.rejected.append(RecordIssue(name, source, exc.reason))
                continue
            name = checked.name
            if name in first_source:
                result.rejected.append(RecordIssue(
                    name, source, f"duplicate_record: same name as {first_source[name]}"))
                continue
            first_source[name] = source
            if checked.info.flat_leads:
                result.warnings.append(
                    RecordIssue(name, source, _flat_reason(checked.info.flat_leads)))
            if checked.length < checked.signal.shape[1]:
                result.warnings.append(RecordIssue(name, source, (
                    f"short: {checked.length / spec.fs:.2f} s of signal, zero-padded to "
                    f"{spec.seconds:g} s; the windows cover the real signal only")))
            names.append(name)
            sources.append(source)
            signals.append(checked.signal)
            lengths.append(checked.length)
            quality.append(";".join(checked.warnings))
        if signals:
            if refers:
                p, r = bundle.predict_with_referral(np.stack(signals), batch_size=batch_size,
                                                    lengths=np.array(lengths))
                probs.append(p)
                refer.append(r)
            else:
                probs.append(bundle.predict_signals(np.stack(signals), batch_size=batch_size,
                                                    lengths=np.array(lengths)))
            result.records += names
            result.sources += sources
            result.quality += quality
        bar.update(min(batch_size, len(headers) - start))
    bar.close()
    n_labels = len(result.label_names)
    result.probabilities = np.concatenate(probs) if probs else np.zeros((0, n_labels))
    result.predicted = bundle.predicted_labels(result.probabilities)
    if refers:
        result.refer = [bool(x) for part in refer for x in part]
    return result


# Where a model's training records came from, on every answer it gives (the CSV's column, the
# pyfunc model's column for a model trained on synthetic records).
TRAINED_ON_COLUMN = "model_trained_on"
REFER_COLUMN = "refer"
# Probabilities in the CSV: six decimals. Enough to rank records and to recompute any metric
# (the calibrators' own resolution is coarser), no float noise such as 0.30000000000000004,
# and the calibration's 1e-7 floor reads 0.000000 instead of 1e-07. `predicted` is decided on
# the unrounded values.
PROBABILITY_FORMAT = "{:.6f}"


def trained_on_text(trained_on: dict[str, int]) -> str:
    """``synthetic:3000`` / ``ecg-arrhythmia:40000;georgia:200``; "unknown" when unrecorded."""
    return ";".join(f"{k}:{v}" for k, v in trained_on.items()) or "unknown"


def write_predictions_csv(result: PredictionResult, path: str | os.PathLike[str]) -> Path:
    """The CSV contract of `ecgtune predict`, written to a temporary name and renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        # `model_trained_on` on every row: a row copied elsewhere still says where its model
        # came from ("synthetic:3000" is a pipeline check, not a diagnosis).
        # `refer` only from a bundle that refers (`ensemble --refer-rate`): 1 sends the
        # record to a human, its labels then being the model's guess.
        refer = [] if result.refer is None else [REFER_COLUMN]
        writer.writerow(["record", *result.label_names, "predicted", "quality", *refer,
                         TRAINED_ON_COLUMN])
        quality = result.quality or [""] * len(result.records)
        flags = result.refer if result.refer is not None else [False] * len(result.records)
        for name, row, labels, warned, flag in zip(result.records, result.probabilities,
                                                   result.predicted, quality, flags,
                                                   strict=True):
            writer.writerow([name, *(PROBABILITY_FORMAT.format(float(p)) for p in row),
                             ";".join(labels), warned, *([int(flag)] if refer else []),
                             result.trained_on_text])
    os.replace(tmp, path)
    return path
