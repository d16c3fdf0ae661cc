"""Exceptions of data_prep.

`PrepError` and its subclasses are user-facing: the CLI prints them as one line. `RecordError`
carries a quarantine reason code so `prep` (quarantine.csv) and `predict` (per-record rejection)
report the same words.
"""

from __future__ import annotations

# Quarantine reason codes, in the order the summary table lists them. `prep` quarantines a
# record for any of these and `predict` refuses it for the same code (data_prep.quality lists
# what each one means; data_prep.validation is the one place both commands check records).
REASON_CODES: tuple[str, ...] = (
    "missing_signal",
    "truncated_signal",
    "unparsable_header",
    "missing_fs",
    "bad_dx",
    "wrong_lead_set",
    "bad_units",
    "bad_mat_header",
    "shape_mismatch",
    "sample_count_mismatch",
    "dtype_mismatch",
    "bad_gain",
    "no_samples",
    "too_short",
    "non_finite",
    "invalid_samples",
    "all_flat",
    "saturated_lead",
    "duplicate_record",
    "dropped_unlabelled",
    "unreadable",
)

# Warnings: the record is used (written by `prep`, predicted by `predict`) and the warning is
# reported beside it (prep's warnings.csv, predict's `quality` column).
WARNING_CODES: tuple[str, ...] = ("flat_lead", "short", "no_scored_label")

class PrepError(Exception):
    """Base class of the expected failures of data_prep (bad input, corrupt output)."""


class LabelMapError(PrepError, KeyError):
    """An unknown or malformed label map."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ShardChecksumError(PrepError):
    """A shard file is missing or its sha256 does not match the manifest."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"shard {path}: {detail}")
        self.path = path
        self.detail = detail

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Raised in a Ray worker (the object-store load), it must unpickle on the driver.
        return type(self), (self.path, self.detail)


class RecordError(PrepError):
    """A record that cannot be used; `code` is one of REASON_CODES."""

    def __init__(self, code: str, detail: str) -> None:
        if code not in REASON_CODES:
            raise ValueError(f"unknown quarantine reason code {code!r}")
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.detail}"

    def __reduce__(self):  # keep (code, detail) through pickling across processes
        return (type(self), (self.code, self.detail))
