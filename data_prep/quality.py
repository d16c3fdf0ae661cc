"""Record quality rules: what makes a record unusable (a refusal with a reason code) and what
is only worth a warning. `prep` quarantines a refused record and `predict` refuses it, both
through `data_prep.validation.validate_record`, so the two cannot disagree.

Thresholds are chosen so that real records are not rejected: a quiet lead in a real 12-lead
ECG still swings tens of µV (noise alone), so only a peak-to-peak below 10 µV over the stored
10 s counts as flat; clipping a few QRS peaks at the ADC rail is tolerated, a lead sitting at
the rail for a tenth of the record is not.

Minimum duration, `MIN_SECONDS` = 5 s of real signal (or the whole output window when that is
shorter). Shorter records are zero-padded to the stored 10 s, and the models read crops of
4,096 samples (8.2 s at 500 Hz): at 5 s at least ~60% of every crop is real signal, and even
at 40 bpm a 5-s strip holds 3 beats, the fewest from which rate and rhythm (SB, AFIB, SR, ...)
mean anything (a 1-sample "record" padded with zeros would otherwise get rhythm labels). Every
database the product targets is longer (CPSC, the shortest, starts at 6 s), so the rule costs
no real record.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .errors import REASON_CODES, WARNING_CODES, RecordError
from .reader import STANDARD_LEADS, RawRecord

__all__ = [
    "FLAT_P2P_MV",
    "MIN_SECONDS",
    "QUALITY_RULES",
    "SATURATION_SHARE",
    "QualityRule",
    "check_output",
    "check_raw",
    "flat_lead_warning",
    "no_scored_label_warning",
    "short_warning",
]

FLAT_P2P_MV = 0.01
SATURATION_SHARE = 0.10
MIN_SECONDS = 5.0


class QualityRule(NamedTuple):
    code: str
    action: str  # "refuse": prep quarantines, predict refuses; "warn": both keep it and say so
    meaning: str


# Every reason code with what triggers it (the README's table says the same for users).
QUALITY_RULES: tuple[QualityRule, ...] = (
    QualityRule("missing_signal", "refuse", "the header's signal file does not exist"),
    QualityRule("truncated_signal", "refuse", "the signal file holds fewer samples than declared"),
    QualityRule("unparsable_header", "refuse", "the .hea file is not a valid WFDB header"),
    QualityRule("missing_fs", "refuse",
                "the record line gives no sampling frequency (never assumed to be 250 Hz)"),
    QualityRule("bad_dx", "refuse",
                "the Dx line is not comma-separated SNOMED CT codes (the token is named)"),
    QualityRule("wrong_lead_set", "refuse", "a standard lead is missing or duplicated"),
    QualityRule("bad_units", "refuse", "a lead's units are not mV, uV or V"),
    QualityRule("bad_mat_header", "refuse",
                "the .mat is not a real numeric MAT v4 matrix (MAT v5, text, sparse, complex)"),
    QualityRule("shape_mismatch", "refuse",
                "the .mat matrix is neither signals x samples nor its transpose (or is square)"),
    QualityRule("sample_count_mismatch", "refuse",
                "the header's sample count differs from the .mat matrix"),
    QualityRule("dtype_mismatch", "refuse",
                "the .mat values are not 16-bit integers (e.g. mV stored as double)"),
    QualityRule("bad_gain", "refuse",
                "a lead's gain is 0 (WFDB: uncalibrated), negative, or not finite"),
    QualityRule("no_samples", "refuse", "the record has no samples"),
    QualityRule("too_short", "refuse",
                f"shorter than {MIN_SECONDS:g} s (or than the output window, if shorter)"),
    QualityRule("non_finite", "refuse", "NaN or infinite values"),
    QualityRule("invalid_samples", "refuse", "samples marked missing (WFDB's invalid value)"),
    QualityRule("all_flat", "refuse",
                f"every lead flat (peak-to-peak < {FLAT_P2P_MV * 1000:g} µV)"),
    QualityRule("saturated_lead", "refuse",
                f"a lead at the ADC rail for >= {SATURATION_SHARE:.0%} of samples, or beyond "
                "the int16 range at the stored gain"),
    QualityRule("duplicate_record", "refuse", "a second record with the same name"),
    QualityRule("dropped_unlabelled", "refuse",
                "no Dx code in the label map, with `prep --unlabelled drop` (kept by default)"),
    QualityRule("unreadable", "refuse", "any other read failure (named in the reason)"),
    QualityRule("flat_lead", "warn",
                f"some leads flat (peak-to-peak < {FLAT_P2P_MV * 1000:g} µV), e.g. "
                "disconnected electrodes: the other leads are still read"),
    QualityRule("short", "warn",
                "shorter than the stored window (e.g. 6 s of 10 s): zero-padded, and the "
                "model's windows cover the real signal only"),
    QualityRule("no_scored_label", "warn",
                "no Dx code in the label map (none given, or only unmapped codes): an "
                "all-negative label row"),
)
assert [r.code for r in QUALITY_RULES if r.action == "refuse"] == list(REASON_CODES)
assert [r.code for r in QUALITY_RULES if r.action == "warn"] == list(WARNING_CODES)


def _leads(mask: np.ndarray) -> str:
    return ",".join(STANDARD_LEADS[i] for i in np.flatnonzero(mask))


def flat_lead_warning(leads: tuple[str, ...]) -> str:
    """The warning for these flat leads, as `predict`'s quality column and prep's warnings.csv
    write it: ``flat_lead:V2,V4,V6``."""
    return f"flat_lead:{','.join(leads)}"


def no_scored_label_warning(dx_codes: tuple[str, ...]) -> str:
    """The warning for a record none of whose Dx codes is a target label: ``no_scored_label``
    (no codes given) or ``no_scored_label:unmapped=251146004,164917005``."""
    return "no_scored_label" + (f":unmapped={','.join(dx_codes)}" if dx_codes else "")


def short_warning(real_samples: int, fs: float) -> str:
    """The warning for a record with only `real_samples` of signal before its padding:
    ``short:6.0s`` (seconds rounded down, so it never reads as the full window)."""
    return f"short:{math.floor(real_samples / fs * 10) / 10:.1f}s"


def check_raw(raw: RawRecord, min_seconds: float = MIN_SECONDS) -> np.ndarray:
    """Gates on the stored digital values: no samples, calibration, duration, WFDB sentinels,
    rails. `min_seconds`: the shortest acceptable record (see the module docstring).

    Returns each lead's peak-to-peak in digital units (reused by check_output when the stored
    signal is the raw one)."""
    d = raw.digital
    if d.ndim != 2 or d.shape[1] == 0:
        raise RecordError("no_samples", "record has no samples")
    bad_gain = ~np.isfinite(raw.gains) | (raw.gains <= 0)
    if bad_gain.any():
        i = int(np.argmax(bad_gain))
        raise RecordError(
            "bad_gain",
            f"lead{'s' if bad_gain.sum() > 1 else ''} {_leads(bad_gain)}: gain {raw.gains[i]:g}"
            + (" (WFDB: uncalibrated; amplitude unknown)" if raw.gains[i] == 0 else ""),
        )
    seconds = d.shape[1] / raw.fs
    if not seconds >= min_seconds:
        raise RecordError(
            "too_short",
            f"{d.shape[1]} samples at {raw.fs:g} Hz = {seconds:.3g} s; at least "
            f"{min_seconds:g} s needed",
        )
    # WFDB marks missing samples with the most negative value of the storage format.
    sentinel = -(1 << (raw.adc_bits - 1))
    rail_lo, rail_hi = sentinel + 1, (1 << (raw.adc_bits - 1)) - 1
    lo, hi = d.min(axis=1), d.max(axis=1)
    at_rail = (lo <= rail_lo) | (hi >= rail_hi)
    if at_rail.any():
        rows = d[at_rail]
        share = ((rows <= rail_lo) | (rows >= rail_hi)).mean(axis=1)
        worst = int(np.argmax(share))
        if share[worst] >= SATURATION_SHARE:
            lead = STANDARD_LEADS[int(np.flatnonzero(at_rail)[worst])]
            raise RecordError(
                "saturated_lead", f"lead {lead}: {share[worst]:.0%} of samples at the ADC rail"
            )
    missing = lo == sentinel
    if missing.any():
        i = int(np.argmax(missing))
        n = int((d[i] == sentinel).sum())
        raise RecordError(
            "invalid_samples", f"lead {STANDARD_LEADS[i]}: {n} missing samples (WFDB NaN value)"
        )
    return hi.astype(np.int64) - lo


def check_output(
    signal: np.ndarray, gain: float, p2p: np.ndarray | None = None
) -> tuple[str, ...]:
    """Gates on the preprocessed int16 signal (12, n) at `gain` units per mV (`p2p`: its
    per-lead peak-to-peak when already known).

    Returns the names of flat leads (a warning: the model still reads the others); a record
    whose leads are all flat raises RecordError('all_flat')."""
    if p2p is None:
        p2p = signal.max(axis=1).astype(np.int64) - signal.min(axis=1)
    flat = p2p < FLAT_P2P_MV * gain
    if flat.all():
        raise RecordError(
            "all_flat",
            f"every lead flat (largest peak-to-peak {p2p.max() / gain * 1000:.0f} uV)",
        )
    return tuple(STANDARD_LEADS[i] for i in np.flatnonzero(flat))
