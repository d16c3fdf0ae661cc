"""Hypothesis strategies over the record contract (`data_prep.record_contract`): WFDB records
written to disk as a user's database might hold them, each with what the contract says must
happen to it.

A `RecordCase` draws, independently: lead order, name case and spacing, an extra non-ECG
signal; the storage format (MATLAB v4 `.mat`, or WFDB 16/212/80/24/32/516/508/524 `.dat`);
per-lead gains and baselines; units (mV, uV, V); the sampling rate (100 Hz to 8 kHz) or none;
the length (4 s upwards); the Dx field's form (commas with any spacing, `Unknown`, empty, no
line, or a malformed one). At most one contract violation is drawn per record, so each case
knows the single outcome it must get: `expected_reason` (a quarantine/refusal code) or None,
with the warnings and labels that follow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from ecgtune.data_prep import STANDARD_LEADS, get_label_map
from ecgtune.data_prep.synth import draw_spec, render_mv

# (format, bits, gain per mV, baseline range): gains chosen so +-4 mV plus the baseline stays
# well inside the format's range (no rail, no WFDB missing-sample value).
FORMATS: dict[str, tuple[int, float, int]] = {
    "mat": (16, 1000.0, 500), "16": (16, 1000.0, 500), "212": (12, 200.0, 200),
    "80": (8, 20.0, 20), "24": (24, 20000.0, 10_000), "32": (32, 20000.0, 10_000),
    "516": (16, 1000.0, 500), "508": (8, 20.0, 20), "524": (24, 20000.0, 10_000),
}
UNITS = {"mV": 1.0, "uV": 1e-3, "V": 1e3, "microvolts": 1e-3, "MV": 1.0}
_SEED20 = get_label_map("seed20")
MAPPED = sorted({c for label in _SEED20.labels for c in label.codes})
UNMAPPED = ["698252002", "61721007", "365413008", "111975006", "6374002"]
MAX_MV = 4.0


@dataclass(frozen=True)
class RecordCase:
    name: str
    fmt: str
    fs: float
    seconds: float
    fs_in_header: bool
    header_leads: tuple[str, ...]  # as written, in file order (extra signals included)
    order: tuple[int, ...]  # standard lead index of each header signal (-1: not an ECG lead)
    gains_mv: tuple[float, ...]  # per header signal, units per mV
    baselines: tuple[int, ...]
    units: tuple[str, ...]
    dx_line: str | None  # the whole "#Dx: ..." line, or None for no line
    dx_codes: tuple[str, ...]  # what a correct reader gets from it (when it parses)
    seed: int
    expected_reason: str | None
    notes: tuple[str, ...] = field(default=())

    @property
    def n_samples(self) -> int:
        return max(1, round(self.fs * self.seconds))


def _case_variants(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from([name, name.upper(), name.lower(), f" {name}", f"{name}  "])


def _dx_field(draw: st.DrawFn, broken: bool) -> tuple[str | None, tuple[str, ...], str | None]:
    """(Dx line, parsed codes, the bad token's kind or None)."""
    codes = draw(st.lists(st.sampled_from(MAPPED + UNMAPPED), min_size=0, max_size=4))
    if broken:
        many = codes if len(codes) >= 2 else [*codes, "164889003", "59118001"][:2]
        form = draw(st.sampled_from(["spaces", "semicolons", "slashes", "decimal", "empty_code",
                                     "word"]))
        text = {
            "spaces": " ".join(many), "semicolons": ";".join(many), "slashes": "/".join(many),
            "decimal": ",".join([*codes, "164889003.0"]), "empty_code": ",".join([*many, ""]),
            "word": ",".join([*codes, "AF"]),
        }[form]
        return f"#Dx: {text}", (), form
    if not codes:
        value = draw(st.sampled_from([None, "", "Unknown", "NaN", "n/a"]))
        return (None if value is None else f"#Dx: {value}"), (), None
    pad = st.sampled_from(["", " ", "  "])
    text = ",".join(draw(pad) + c + draw(pad) for c in codes)
    return f"#Dx:{draw(pad)}{text}", tuple(dict.fromkeys(codes)), None


@st.composite
def record_cases(draw: st.DrawFn, max_samples: int = 60_000, max_seconds: float = 30.0,
                 names: st.SearchStrategy[str] | None = None) -> RecordCase:
    """One record: `max_samples` bounds samples per lead (fs x seconds), so a profile decides
    how long the longest record may be."""
    fault = draw(st.sampled_from([None] * 6 + ["missing_fs", "bad_dx", "bad_units",
                                               "wrong_lead_set", "too_short"]))
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    bits, gain, base_range = FORMATS[fmt]
    fs = float(draw(st.sampled_from([100, 128, 250, 257, 360, 400, 500, 500, 500, 1000, 2000,
                                     8000])))
    shortest = 4.0 if fault == "too_short" else 5.0
    longest = 4.9 if fault == "too_short" else min(max_seconds, max_samples / fs)
    seconds = round(draw(st.floats(shortest, max(shortest, longest))), 2)
    leads = list(range(12))
    if fault == "wrong_lead_set":
        if draw(st.booleans()):
            leads.remove(draw(st.integers(0, 11)))
        else:
            leads.append(draw(st.integers(0, 11)))
    order = draw(st.permutations(leads))
    header_leads = [draw(_case_variants(STANDARD_LEADS[i])) for i in order]
    order = list(order)
    if draw(st.integers(0, 4)) == 0:  # an extra signal that is not an ECG lead
        at = draw(st.integers(0, len(order)))
        order.insert(at, -1)
        header_leads.insert(at, "RESP")
    n_sig = len(order)
    unit_names = [draw(st.sampled_from(sorted(UNITS))) for _ in range(n_sig)]
    if fault == "bad_units":
        unit_names[draw(st.integers(0, n_sig - 1))] = draw(st.sampled_from(["mmHg", "furlong",
                                                                             "NU"]))
        if all(i < 0 for i, u in zip(order, unit_names, strict=True) if u not in UNITS):
            unit_names[order.index(0)] = "mmHg"  # the bad unit must sit on an ECG lead
    gains = [gain * draw(st.sampled_from([1.0, 0.5, 2.0 if bits > 8 else 1.0]))
             for _ in range(n_sig)]
    baselines = [draw(st.integers(-base_range, base_range)) for _ in range(n_sig)]
    dx_line, dx_codes, _ = _dx_field(draw, fault == "bad_dx")
    name = draw(names) if names is not None else "R"
    return RecordCase(
        name=name, fmt=fmt, fs=fs, seconds=seconds, fs_in_header=fault != "missing_fs",
        header_leads=tuple(header_leads), order=tuple(order), gains_mv=tuple(gains),
        baselines=tuple(baselines), units=tuple(unit_names), dx_line=dx_line,
        dx_codes=dx_codes, seed=draw(st.integers(0, 2**16)), expected_reason=fault,
    )


def truth_mv(case: RecordCase) -> np.ndarray:
    """The ECG in mV, (12, n) in standard lead order: 10 s of a synthetic record at the case's
    rate, repeated to the case's length."""
    ten = render_mv(draw_spec(case.seed, 1), case.seed, case.fs, min(10.0, case.seconds))
    reps = math.ceil(case.n_samples / ten.shape[1])
    return np.clip(np.tile(ten, reps)[:, : case.n_samples], -MAX_MV, MAX_MV)


def digital_values(case: RecordCase) -> np.ndarray:
    """(n_sig, n) int64 as written: round(mV x gain) + baseline per header signal (an extra
    signal holds a slow ramp)."""
    mv = truth_mv(case)
    rows = []
    for lead, gain, base in zip(case.order, case.gains_mv, case.baselines, strict=True):
        x = mv[lead] if lead >= 0 else np.linspace(-1, 1, case.n_samples)
        rows.append(np.rint(x * gain).astype(np.int64) + base)
    return np.stack(rows)


def written_mv(case: RecordCase) -> np.ndarray:
    """(12, n) float64: the physical values the file holds, in standard order (what a correct
    reader must return, exactly)."""
    digital = digital_values(case)
    out = np.empty((12, case.n_samples))
    for row, (lead, gain, base) in enumerate(zip(case.order, case.gains_mv, case.baselines,
                                                 strict=True)):
        if lead >= 0:
            out[lead] = (digital[row] - base) / gain
    return out


def _header_gain(case: RecordCase, i: int) -> str:
    unit = case.units[i]
    per_unit = case.gains_mv[i] * UNITS.get(unit, 1.0)
    return f"{per_unit!r}({case.baselines[i]})/{unit}"


def write_case(case: RecordCase, folder: Path) -> Path:
    """Write the record's header and signal file under `folder`; returns the header path."""
    import struct

    import wfdb

    folder.mkdir(parents=True, exist_ok=True)
    digital = digital_values(case)
    n_sig, n = digital.shape
    name = case.name
    bits = FORMATS[case.fmt][0]
    if case.fmt == "mat":
        mat = struct.pack("<5i", 30, n_sig, n, 0, 4) + b"val\x00"
        mat += np.ascontiguousarray(digital.T).astype("<i2").tobytes()
        (folder / f"{name}.mat").write_bytes(mat)
        # file, format, then ADC resolution, zero, initial value, checksum, block size
        layout = [(f"{name}.mat", "16x1+24", f"{bits} 0 {int(digital[i, 0])} 0 0")
                  for i in range(n_sig)]
    else:
        wfdb.wrsamp(name, fs=case.fs, units=["mV"] * n_sig,
                    sig_name=[f"s{i}" for i in range(n_sig)],
                    d_signal=np.ascontiguousarray(digital.T), fmt=[case.fmt] * n_sig,
                    adc_gain=[1.0] * n_sig, baseline=[0] * n_sig, write_dir=str(folder))
        # wfdb's own file layout (FLAC formats split more than 8 signals over several
        # files), with our gains, units and lead names put in below.
        written = (folder / f"{name}.hea").read_text().splitlines()[1 : 1 + n_sig]
        layout = [(f[0], f[1], " ".join(f[3:8])) for f in (line.split() for line in written)]
    record_line = f"{name} {n_sig}" + (f" {case.fs:g} {n}" if case.fs_in_header else "")
    lines = [record_line] + [
        f"{file_name} {fmt_field} {_header_gain(case, i)} {rest} {case.header_leads[i]}"
        for i, (file_name, fmt_field, rest) in enumerate(layout)
    ]
    lines += ["#Age: 60", "#Sex: Female"] + ([case.dx_line] if case.dx_line is not None else [])
    hea = folder / f"{name}.hea"
    hea.write_text("\n".join(lines) + "\n", "utf-8")
    return hea


def expected_output(case: RecordCase, fs: int = 500, seconds: float = 10.0,
                    gain: float = 1000.0) -> tuple[np.ndarray, int]:
    """(the stored values prep must produce, float (12, fs * seconds) at `gain` units per mV;
    the real length) from what the file holds.

    At the output rate this is computed independently: the written mV, centre-cropped or
    zero-padded. At another rate the resampling is prep's own (`preprocess_record` on the
    written values, as a correct reader would hand them over), so what is compared is the
    reading: lead order, format, gains, baselines and units."""
    from ecgtune.data_prep import RawRecord, preprocess_record

    n_out = round(fs * seconds)
    if case.fs == fs:
        x = written_mv(case) * gain
        length = x.shape[1]
        if length > n_out:
            start = (length - n_out) // 2
            return x[:, start : start + n_out], n_out
        out = np.zeros((12, n_out))
        out[:, :length] = x
        return out, length
    rows = [case.order.index(lead) for lead in range(12)]
    digital = digital_values(case)[rows]
    raw = RawRecord(
        name=case.name, source=case.name, fs=case.fs, digital=digital,
        gains=np.array([case.gains_mv[r] for r in rows]),
        baselines=np.array([case.baselines[r] for r in rows], np.int64), units=("mV",) * 12,
        adc_bits=FORMATS[case.fmt][0], age=None, sex=None, dx_codes=(), reader="reference")
    signal, info = preprocess_record(raw, fs, seconds, gain, check=False)
    return signal.astype(np.float64), n_out - info.padded
