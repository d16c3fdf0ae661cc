"""One record, read and checked: the single gate both `ecgtune prep` and `ecgtune predict` pass
records through, so what `prep` quarantines `predict` refuses, with the same reason.

`validate_record` = `read_record` (header and MAT matrix agree, `data_prep.reader`) +
`preprocess_record` with its quality gates (`data_prep.quality`). A refused record raises
RecordError with one of `REASON_CODES`; a used one comes back with its stored signal and its
warnings (`flat_lead:V2,V4,V6`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .errors import RecordError
from .preprocess import PreprocessInfo, preprocess_record
from .quality import flat_lead_warning, short_warning
from .reader import Header, read_record

__all__ = ["CheckedRecord", "validate_record"]


@dataclass(frozen=True, eq=False)
class CheckedRecord:
    """A record that passed every gate: the stored signal plus what prep's shard row needs."""

    name: str
    source: str
    signal: np.ndarray  # int16 (12, round(fs * seconds)) at `gain` units per mV
    length: int  # samples of real signal at the start of `signal`; the rest is zero padding
    info: PreprocessInfo
    age: int | None
    sex: str | None
    dx_codes: tuple[str, ...]
    warnings: tuple[str, ...]  # e.g. ("flat_lead:V2,V4,V6", "short:6.0s"); empty when clean


def validate_record(
    path: str | os.PathLike[str],
    fs: int = 500,
    seconds: float = 10,
    gain: float = 1000,
    *,
    header: Header | None = None,
    source: str | None = None,
    root: str | os.PathLike[str] | None = None,
) -> CheckedRecord:
    """Read, check and preprocess one record (its `.hea`, signal file or extensionless path).

    Raises RecordError naming the reason; any other failure of an odd file becomes
    RecordError('unreadable') with the exception named, so one bad record never stops a run.
    `header`, `source`, `root`: as `read_record`.
    """
    try:
        raw = read_record(path, root=root, header=header, source=source)
        signal, info = preprocess_record(raw, fs, seconds, gain)
    except RecordError:
        raise
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise RecordError("unreadable", detail) from None
    length = signal.shape[1] - info.padded
    warnings: tuple[str, ...] = (
        (flat_lead_warning(info.flat_leads),) if info.flat_leads else ())
    if info.padded:
        warnings += (short_warning(length, fs),)
    return CheckedRecord(raw.name, raw.source, signal, length, info, raw.age, raw.sex,
                         raw.dx_codes, warnings)
