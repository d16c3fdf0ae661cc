"""Quality gates on signals; each failure raises RecordError with a quarantine reason code.

Thresholds are chosen so that real records are not rejected: a quiet lead in a real 12-lead
ECG still swings tens of µV (noise alone), so only a peak-to-peak below 10 µV over the stored
10 s counts as flat; clipping a few QRS peaks at the ADC rail is tolerated, a lead sitting at
the rail for a tenth of the record is not.
"""

from __future__ import annotations

import numpy as np

from .errors import RecordError
from .reader import STANDARD_LEADS, RawRecord

__all__ = ["FLAT_P2P_MV", "SATURATION_SHARE", "check_output", "check_raw"]

FLAT_P2P_MV = 0.01
SATURATION_SHARE = 0.10


def _leads(mask: np.ndarray) -> str:
    return ",".join(STANDARD_LEADS[i] for i in np.flatnonzero(mask))


def check_raw(raw: RawRecord) -> np.ndarray:
    """Gates on the stored digital values: no samples, bad calibration, rails, WFDB sentinels.

    Returns each lead's peak-to-peak in digital units (reused by check_output when the stored
    signal is the raw one)."""
    d = raw.digital
    if d.ndim != 2 or d.shape[1] == 0:
        raise RecordError("no_samples", "record has no samples")
    bad_gain = ~np.isfinite(raw.gains) | (raw.gains == 0)
    if bad_gain.any():
        raise RecordError("invalid_samples", f"non-finite or zero gain in lead {_leads(bad_gain)}")
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
    signal: np.ndarray, gain: float, p2p: np.ndarray | None = None, *, allow_flat: bool = False
) -> tuple[str, ...]:
    """Gates on the preprocessed int16 signal (12, n) at `gain` units per mV (`p2p`: its
    per-lead peak-to-peak when already known).

    Returns the names of flat leads. They raise RecordError('flat_lead') unless `allow_flat`:
    `prep` keeps flat records out of training, while `predict` only warns about them (a
    model can still read the other leads)."""
    if p2p is None:
        p2p = signal.max(axis=1).astype(np.int64) - signal.min(axis=1)
    flat = p2p < FLAT_P2P_MV * gain
    if flat.any() and not allow_flat:
        i = int(np.argmax(flat))
        raise RecordError(
            "flat_lead",
            f"lead {STANDARD_LEADS[i]}: peak-to-peak {p2p[i] / gain * 1000:.0f} uV "
            f"(flat leads: {_leads(flat)})",
        )
    return tuple(STANDARD_LEADS[i] for i in np.flatnonzero(flat))
