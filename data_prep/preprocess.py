"""Raw record -> stored signal: mV, 500 Hz, 10 s, int16 at a fixed gain.

`preprocess_record` is the single definition of this transform; `prep` stores its output and
`ecgtune predict` applies it to new records, so both see identical inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

import numpy as np

from .errors import RecordError
from .quality import MIN_SECONDS, check_output, check_raw
from .reader import STANDARD_LEADS, RawRecord
from .record_contract import mv_per_unit

__all__ = ["PreprocessInfo", "preprocess_record", "preprocessing_spec", "resample_ratio"]

RESAMPLE_METHOD = "scipy.signal.resample_poly (polyphase FIR, Kaiser window 5.0), rational up/down"
INT16_MAX = 32767  # -32768 is WFDB's missing-sample marker, never stored



@dataclass(frozen=True)
class PreprocessInfo:
    fs_in: float
    n_in: int
    resampled: str | None  # "up/down" when resampled
    cropped: int  # output-rate samples dropped (half at each end)
    padded: int  # zero samples appended
    exact: bool  # digital values copied as integers (no floating point involved)
    flat_leads: tuple[str, ...] = ()  # leads below the flat gate: a warning, not a refusal


def preprocessing_spec(fs: int = 500, seconds: float = 10, gain: float = 1000) -> dict[str, Any]:
    """The manifest's `preprocessing` block for these settings."""
    return {
        "fs": fs,
        "seconds": seconds,
        "n_samples": round(fs * seconds),
        "gain": gain,
        "units": "mV",
        "dtype": "int16",
        "leads": list(STANDARD_LEADS),
        "crop": "center",
        "pad": "zeros at end",
        "resample": RESAMPLE_METHOD,
        "baseline": 0,
    }


def resample_ratio(fs_in: float, fs_out: float) -> tuple[int, int]:
    """(up, down) with up/down ~= fs_out/fs_in; denominators kept small so filters stay short."""
    ratio = (Fraction(fs_out) / Fraction(fs_in).limit_denominator(10_000)).limit_denominator(1000)
    return ratio.numerator, ratio.denominator


def _center(x: np.ndarray, n: int) -> tuple[np.ndarray, int, int]:
    """Centre-crop or end-pad the last axis to n; returns (array, cropped, padded)."""
    length = x.shape[-1]
    if length > n:
        start = (length - n) // 2
        return x[..., start : start + n], length - n, 0
    if length < n:
        out = np.zeros((*x.shape[:-1], n), dtype=x.dtype)
        out[..., :length] = x
        return out, 0, n - length
    return x, 0, 0


def preprocess_record(
    raw: RawRecord,
    fs: int = 500,
    seconds: float = 10,
    gain: float = 1000,
    check: bool = True,
) -> tuple[np.ndarray, PreprocessInfo]:
    """Convert a raw record to the stored form: contiguous int16 (12, fs*seconds) at `gain`/mV.

    Steps: physical mV from each lead's gain/baseline/units; polyphase resampling to `fs` when
    the source rate differs; centred crop or zero padding at the end to `seconds`. A source
    already at `fs` and `gain` with baseline 0 is copied as integers (bit-identical). With
    `check`, the quality gates of `data_prep.quality` run and failures raise RecordError
    (records shorter than min(MIN_SECONDS, seconds) included); values that would not fit int16
    raise RecordError('saturated_lead') instead of being clipped. Flat leads are listed in
    `info.flat_leads` (a warning); all leads flat raise RecordError('all_flat').
    """
    raw_p2p = check_raw(raw, min(MIN_SECONDS, seconds)) if check else None
    n_out = round(fs * seconds)
    d = raw.digital
    n_in = d.shape[1]
    gains_mv = raw.gains / np.array([mv_per_unit(u) for u in raw.units])
    if raw.fs == fs and np.all(gains_mv == gain):
        # Integer path: no rounding anywhere, so unchanged records stay bit-identical.
        ints = d if not raw.baselines.any() else d.astype(np.int32) - raw.baselines[:, None]
        out, cropped, padded = _center(ints, n_out)
        if out.dtype != np.int16:  # int16 input fits by construction (-32768 is gated above)
            _check_range(out, gain)
        sig = np.ascontiguousarray(out, dtype=np.int16)
        info = PreprocessInfo(raw.fs, n_in, None, cropped, padded, exact=True)
    else:
        with np.errstate(over="ignore", invalid="ignore"):  # reported just below
            x = (d - raw.baselines[:, None]) / gains_mv[:, None]  # float64 mV
        if not np.isfinite(x).all():
            raise RecordError("non_finite", "non-finite values after calibration")
        resampled = None
        if raw.fs != fs:
            x, resampled = _resample(x, raw.fs, fs, n_out)
        x, cropped, padded = _center(x, n_out)
        with np.errstate(over="ignore"):  # an overflow is out of range: reported just below
            scaled = np.rint(x * gain)
        _check_range(scaled, gain)
        sig = np.ascontiguousarray(scaled, dtype=np.int16)
        info = PreprocessInfo(raw.fs, n_in, resampled, cropped, padded, exact=False)
    if check:
        unchanged = info.exact and not raw.baselines.any() and info.cropped == info.padded == 0
        # Flatness of the real signal: the zero padding would make a constant lead look alive.
        real = sig[:, : n_out - info.padded]
        flat = check_output(real, gain, raw_p2p if unchanged else None)
        if flat:
            info = replace(info, flat_leads=flat)
    return sig, info


def _resample(x: np.ndarray, fs_in: float, fs_out: float, n_out: int) -> tuple[np.ndarray, str]:
    from scipy.signal import resample_poly  # deferred: scipy.signal is slow to import

    up, down = resample_ratio(fs_in, fs_out)
    # Long records (e.g. 30 min Holter-style) are cut around the centre before filtering; the
    # margin covers the filter's half length (10 * max(up, down) output-rate taps).
    need = math.ceil(n_out * down / up) + 2 * (10 * max(up, down) // up + 2)
    if x.shape[1] > need:
        start = (x.shape[1] - need) // 2
        x = x[:, start : start + need]
    return resample_poly(x, up, down, axis=1), f"{up}/{down}"


def _check_range(values: np.ndarray, gain: float) -> None:
    peak = np.abs(values).max(axis=1)
    over = peak > INT16_MAX
    if over.any():
        i = int(np.argmax(over))
        raise RecordError(
            "saturated_lead",
            f"lead {STANDARD_LEADS[i]}: {peak[i] / gain:.1f} mV exceeds the int16 range at "
            f"{gain:g} units/mV",
        )
