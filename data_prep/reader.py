"""WFDB records: header parsing, signal reading, directory scan.

`wfdb.rdrecord` costs milliseconds per record, mostly in its header parser, so records in the
common layout (all leads interleaved in one format-16 file: ecg-arrhythmia's MATLAB v4 `.mat`
with a 24-byte prefix, PTB-XL's `.dat`) are read here with our own parser and `np.fromfile`.
That is the same byte interpretation WFDB applies, so the values are identical (tested against
wfdb). Anything else goes through `wfdb.rdrecord`.

A `.mat` file carries its own MAT v4 header (type, rows, columns, name), which WFDB ignores: it
reads the bytes after the header's byte offset as interleaved int16 frames, so a matrix stored
transposed (samples x signals), in another numeric type, or of another size than the header
declares comes out scrambled. We read the MAT header and honour it: a transposed matrix is read
transposed back, other numeric types are converted when every value is a 16-bit integer, and a
matrix that does not fit the WFDB header is refused with a reason (`_read_mat`).
"""

from __future__ import annotations

import functools
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import RecordError
from .record_contract import STANDARD_LEADS, lead_index, mv_per_unit, parse_dx, parse_fs

__all__ = [
    "STANDARD_LEADS",
    "Header",
    "RawRecord",
    "SignalSpec",
    "parse_header",
    "read_header",
    "read_record",
    "read_signal",
    "scan_records",
    "scan_relative",
]

_IDENTITY = list(range(12))

# Bits per sample of the WFDB storage formats (for rails / invalid-value sentinels) and bytes
# per sample (for the truncation check); FLAC formats (5xx) have no fixed size.
_FORMAT_BITS = {"8": 8, "16": 16, "24": 24, "32": 32, "61": 16, "80": 8, "160": 16,
                "212": 12, "310": 10, "311": 10, "508": 8, "516": 16, "524": 24}
_FORMAT_BYTES = {"8": 1.0, "16": 2.0, "24": 3.0, "32": 4.0, "61": 2.0, "80": 1.0, "160": 2.0,
                 "212": 1.5, "310": 4 / 3, "311": 4 / 3}
# A gain of 0 (or none) means "uncalibrated" in WFDB, which then assumes DEFGAIN = 200/mV. We
# keep the 0: the amplitude of such a record is unknown, and storing it at 200/mV could make it
# 5x too large, so data_prep.quality refuses it ('bad_gain') instead of guessing.
_UNCALIBRATED_GAIN = 0.0
_SIGNAL_FMT = re.compile(r"^(\d+)(?:x(\d+))?(?::(\d+))?(?:\+(\d+))?$")
_GAIN = re.compile(r"^([-+0-9.eEinfINFaN]+)(?:\((-?\d+)\))?(?:/(\S+))?$")


class SignalSpec(NamedTuple):
    """One signal line of a WFDB header (a NamedTuple: headers are parsed by the thousand)."""

    file_name: str
    fmt: str
    samples_per_frame: int
    skew: int
    byte_offset: int
    gain: float
    baseline: int
    units: str
    adc_res: int
    adc_zero: int
    init_value: int | None
    checksum: int | None
    description: str


@dataclass(frozen=True)
class Header:
    name: str
    n_sig: int
    fs: float
    n_samples: int | None
    signals: tuple[SignalSpec, ...]
    comments: tuple[str, ...]
    age: int | None
    sex: str | None
    dx_codes: tuple[str, ...]

    @property
    def sig_names(self) -> tuple[str, ...]:
        return tuple(s.description for s in self.signals)

    def lead_order(self) -> list[int]:
        """Indices of the 12 standard leads among the header's signals (case-insensitive).

        Extra non-standard signals are ignored; a missing or duplicated standard lead raises
        RecordError('wrong_lead_set').
        """
        return list(self._lead_order)

    @functools.cached_property
    def _lead_order(self) -> tuple[int, ...]:
        found: dict[int, int] = {}
        duplicates: list[str] = []
        for i, sig in enumerate(self.signals):
            k = lead_index(sig.description)
            if k is None:
                continue
            if k in found:
                duplicates.append(STANDARD_LEADS[k])
            found[k] = i
        missing = [STANDARD_LEADS[k] for k in range(12) if k not in found]
        if missing or duplicates:
            parts = []
            if missing:
                parts.append("missing " + ",".join(missing))
            if duplicates:
                parts.append("duplicate " + ",".join(duplicates))
            names = ",".join(self.sig_names) or "none"
            raise RecordError("wrong_lead_set", f"{'; '.join(parts)} (leads: {names})")
        return tuple(found[k] for k in range(12))

    @functools.cached_property
    def simple_layout(self) -> bool:
        """All signals interleaved in one format-16 file: the layout the fast reader handles."""
        sigs = self.signals
        return (
            len(sigs) > 0
            and all(s.fmt == "16" and s.samples_per_frame == 1 and s.skew == 0 for s in sigs)
            and len({s.file_name for s in sigs}) == 1
            and len({s.byte_offset for s in sigs}) == 1
        )


@dataclass(frozen=True, eq=False)
class RawRecord:
    """A record as stored: digital values in standard lead order, with gain and baseline."""

    name: str
    source: str
    fs: float
    digital: np.ndarray  # (12, n) integer, leads in STANDARD_LEADS order
    gains: np.ndarray  # (12,) float64, digital units per physical unit
    baselines: np.ndarray  # (12,) int64, digital value of 0 physical units
    units: tuple[str, ...]
    adc_bits: int  # storage bits: rails and the invalid-sample sentinel derive from it
    age: int | None
    sex: str | None
    dx_codes: tuple[str, ...]
    reader: str  # "fast" or "wfdb"

    @property
    def n_samples(self) -> int:
        return int(self.digital.shape[1])

    @property
    def lead_names(self) -> tuple[str, ...]:
        return STANDARD_LEADS


def _bad(detail: str) -> RecordError:
    return RecordError("unparsable_header", detail)


def _parse_int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _bad(f"{what} {text!r} is not an integer") from None


def _parse_age(value: str) -> int | None:
    try:
        age = float(value)
    except ValueError:
        return None  # "Unknown", "", "NaN." and the like
    if not math.isfinite(age) or not 0 <= age <= 150:
        return None
    return int(age)


def _parse_sex(value: str) -> str | None:
    v = value.strip().rstrip(".").lower()
    if v in ("male", "m"):
        return "Male"
    if v in ("female", "f"):
        return "Female"
    return None


@functools.lru_cache(maxsize=1024)
def _parse_static(
    fmt_text: str, gain_text: str | None, adc: tuple[str, ...], block: str | None,
    description: str,
) -> tuple[str, int, int, int, float, int, str, int, int, str]:
    """The fields that repeat from record to record ('16x1+24', '1000.0(0)/mV', ...): cached,
    so a header costs little more than splitting its lines."""
    m = _SIGNAL_FMT.match(fmt_text)
    if not m:
        raise _bad(f"bad format field {fmt_text!r}")
    fmt, spf, skew, offset = m.groups()
    gain, baseline, units = _UNCALIBRATED_GAIN, None, "mV"
    if gain_text is not None:
        g = _GAIN.match(gain_text)
        if not g:
            raise _bad(f"bad gain field {gain_text!r}")
        try:
            gain = float(g.group(1))
        except ValueError:
            raise _bad(f"bad gain {g.group(1)!r}") from None
        baseline = int(g.group(2)) if g.group(2) is not None else None
        units = g.group(3) or "mV"
    adc_res = _parse_int(adc[0], "ADC resolution") if len(adc) > 0 else 0
    adc_zero = _parse_int(adc[1], "ADC zero") if len(adc) > 1 else 0
    if block is not None:
        _parse_int(block, "block size")
    return (
        fmt, int(spf) if spf else 1, int(skew) if skew else 0, int(offset) if offset else 0,
        # Baseline defaults to ADC zero, as in WFDB; the gain stays as written (see above).
        gain, baseline if baseline is not None else adc_zero,
        units, adc_res, adc_zero, description,
    )


def _parse_signal_line(line: str, lineno: int) -> SignalSpec:
    fields = line.split(None, 8)
    n = len(fields)
    if n < 2:
        raise _bad(f"line {lineno}: signal line needs a file name and a format")
    try:
        static = _parse_static(
            fields[1], fields[2] if n > 2 else None, tuple(fields[3:5]),
            fields[7] if n > 7 else None, fields[8].strip() if n > 8 else "",
        )
    except RecordError as exc:
        raise _bad(f"line {lineno}: {exc.detail}") from None
    fmt, spf, skew, offset, gain, baseline, units, adc_res, adc_zero, description = static
    init_value = _parse_int(fields[5], "initial value") if n > 5 else None
    checksum = _parse_int(fields[6], "checksum") if n > 6 else None
    return SignalSpec(
        fields[0], fmt, spf, skew, offset, gain, baseline, units, adc_res, adc_zero,
        init_value, checksum, description,
    )


def parse_header(text: str, name: str | None = None) -> Header:
    """Parse WFDB header text; any malformation raises RecordError('unparsable_header').

    `name` (the header file's stem) overrides the record name written inside the header.
    """
    try:
        return _parse_header(text, name)
    except RecordError:
        raise
    except (ValueError, IndexError, OverflowError) as exc:  # a case the checks did not foresee
        raise _bad(f"{type(exc).__name__}: {exc}") from None


def _parse_header(text: str, name: str | None) -> Header:
    lines: list[tuple[int, str]] = []
    comments: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            comments.append(line.lstrip("#").strip())
        else:
            lines.append((lineno, line))
    if not lines:
        raise _bad("no record line")
    lineno, record_line = lines[0]
    fields = record_line.split()
    if len(fields) < 2:
        raise _bad(f"line {lineno}: record line needs a name and a signal count")
    if "/" in fields[0]:
        raise _bad("multi-segment records are not supported")
    n_sig = _parse_int(fields[1], "signal count")
    if n_sig < 0:
        raise _bad(f"negative signal count {n_sig}")
    fs = parse_fs(fields[2] if len(fields) > 2 else None, lineno)
    n_samples = _parse_int(fields[3], "sample count") if len(fields) > 3 else None
    if n_samples is not None and n_samples < 0:
        raise _bad(f"negative sample count {n_samples}")
    signal_lines = lines[1:]
    if len(signal_lines) != n_sig:
        raise _bad(f"header declares {n_sig} signals but has {len(signal_lines)} signal lines")
    signals = tuple(_parse_signal_line(line, no) for no, line in signal_lines)

    age, sex, dx_codes = parse_comments(comments)
    return Header(
        name=name or fields[0],
        n_sig=n_sig,
        fs=fs,
        n_samples=n_samples,
        signals=signals,
        comments=tuple(comments),
        age=age,
        sex=sex,
        dx_codes=dx_codes,
    )


def parse_comments(comments: list[str]) -> tuple[int | None, str | None, tuple[str, ...]]:
    """(age, sex, Dx codes) from header comment lines (without '#'). Age and sex are tolerant
    of spacing, case and unknown values; Dx follows the record contract (`parse_dx`), and a
    second Dx line is refused rather than merged."""
    age: int | None = None
    sex: str | None = None
    dx: tuple[str, ...] | None = None
    for comment in comments:
        key, sep, value = comment.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key == "age":
            age = _parse_age(value.strip())
        elif key == "sex":
            sex = _parse_sex(value)
        elif key == "dx":
            if dx is not None:
                raise RecordError("bad_dx", "two Dx lines")
            dx = parse_dx(value)
    return age, sex, dx or ()


def header_comments(text: str) -> list[str]:
    """The comment lines of header text, '#' and surrounding spaces removed."""
    return [line.strip().lstrip("#").strip() for line in text.splitlines()
            if line.lstrip().startswith("#")]


def read_header(path: str | os.PathLike[str]) -> Header:
    """Read and parse a `.hea` file (the record name is the file's stem)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RecordError("unreadable", f"cannot read header: {exc.strerror or exc}") from None
    if b"\x00" in data:
        raise _bad("binary data in header")
    return parse_header(data.decode("utf-8", errors="replace"), name=path.stem)


def _file_size(folder: str, file_name: str) -> int:
    try:
        return os.stat(os.path.join(folder, file_name)).st_size
    except FileNotFoundError:
        raise RecordError("missing_signal", f"signal file {file_name} not found") from None
    except OSError as exc:
        raise RecordError("unreadable", f"cannot stat {file_name}: {exc}") from None


def _available_samples(header: Header, folder: str) -> int | None:
    """Samples available in the shortest signal file (None when the format has no fixed size)."""
    available: int | None = None
    per_file: dict[str, list[SignalSpec]] = {}
    for s in header.signals:
        per_file.setdefault(s.file_name, []).append(s)
    for file_name, sigs in per_file.items():
        size = _file_size(folder, file_name)
        width = _FORMAT_BYTES.get(sigs[0].fmt)
        if width is None or len({s.fmt for s in sigs}) > 1:
            continue
        frame = width * sum(s.samples_per_frame for s in sigs)
        n = int(max(size - sigs[0].byte_offset, 0) // frame)
        available = n if available is None else min(available, n)
    return available


# MAT v4: five int32 (type MOPT, mrows, ncols, imagf, namlen) in the file's byte order, the
# NUL-terminated matrix name, then the values column-major. Type digits: M byte order (0
# little-, 1 big-endian; 2-4 VAX/Cray, unsupported), O always 0, P precision, T 0 for a full
# numeric matrix (1 text, 2 sparse).
_MAT_PRECISION = {0: "f8", 1: "f4", 2: "i4", 3: "i2", 4: "u2", 5: "u1"}
_MAT_MATRIX_KIND = {1: "a text matrix", 2: "a sparse matrix"}
_MAT_HEAD = struct.Struct("5i")
_MAT_MAX_NAME = 64  # MATLAB names are at most 63 characters, plus the NUL
_INT16 = np.dtype("<i2")


class _MatHeader(NamedTuple):
    dtype: np.dtype
    rows: int
    cols: int
    offset: int  # of the first value


def _bad_mat(file_name: str, detail: str) -> RecordError:
    return RecordError("bad_mat_header", f"{file_name}: {detail}")


def _parse_mat_header(data: bytes, file_name: str) -> _MatHeader:
    if len(data) < _MAT_HEAD.size:
        raise _bad_mat(file_name, f"{len(data)} bytes, shorter than a MAT v4 header")
    for order, m in (("<", 0), (">", 1)):
        mopt, rows, cols, imagf, namlen = struct.unpack_from(order + "5i", data)
        if 0 <= mopt < 5000 and mopt // 1000 == m:
            break
    else:
        if 2000 <= mopt < 5000:
            raise _bad_mat(file_name, f"MAT v4 type {mopt}: VAX/Cray number formats are not read")
        raise _bad_mat(file_name, "not a MAT v4 file (MAT v5/v7.3 or another format; the "
                                  "WFDB layout needs MATLAB's `save -v4`)")
    o, p, t = mopt // 100 % 10, mopt // 10 % 10, mopt % 10
    if o != 0 or p not in _MAT_PRECISION or t not in (0, *_MAT_MATRIX_KIND):
        raise _bad_mat(file_name, f"unknown MAT v4 type {mopt}")
    if t:
        raise _bad_mat(file_name, f"{_MAT_MATRIX_KIND[t]}, not a numeric matrix of samples")
    if imagf:
        raise _bad_mat(file_name, "a complex matrix, not real-valued samples")
    if rows < 0 or cols < 0:
        raise _bad_mat(file_name, f"negative matrix size {rows} x {cols}")
    offset = _MAT_HEAD.size + namlen
    if not 1 <= namlen <= _MAT_MAX_NAME or offset > len(data):
        raise _bad_mat(file_name, f"bad matrix name length {namlen}")
    return _MatHeader(np.dtype(order + _MAT_PRECISION[p]), rows, cols, offset)


def _lead_list(header: Header, rows: np.ndarray) -> str:
    return ",".join(header.signals[i].description or f"#{i + 1}" for i in np.flatnonzero(rows))


def _as_int16(values: np.ndarray, header: Header, file_name: str) -> np.ndarray:
    """(signals, n) values of another MAT type -> int16, when each is a 16-bit integer: format
    16 declares digital samples, so anything else (physical units in a double matrix, 32-bit
    values) would be misread, not converted."""
    what = f"{file_name}: {values.dtype.name} matrix"
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values)
        if bad.any():
            raise RecordError("non_finite", f"{what} holds {int(bad.sum())} NaN or infinite "
                                            f"values (leads {_lead_list(header, bad.any(axis=1))})")
        if (values != np.rint(values)).any():
            raise RecordError("dtype_mismatch", f"{what} holds non-integer values; the header "
                                                "declares 16-bit digital samples (format 16)")
    if values.size:
        lo, hi = values.min(), values.max()
        if lo < -32768 or hi > 32767:
            raise RecordError("dtype_mismatch", f"{what} holds values {lo:g} to {hi:g}, beyond "
                                                "the 16-bit samples the header declares")
    return values.astype(_INT16)


def _read_mat(header: Header, folder: str) -> np.ndarray:
    """Digital samples (signals, n) in header order from a single MAT v4 file, checked against
    the WFDB header (may be a read-only view of the file's bytes)."""
    file_name = header.signals[0].file_name
    try:
        with open(os.path.join(folder, file_name), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise RecordError("missing_signal", f"signal file {file_name} not found") from None
    except OSError as exc:
        raise RecordError("unreadable", f"cannot read {file_name}: {exc}") from None
    mat = _parse_mat_header(data, file_name)
    n_sig, declared, rows, cols = header.n_sig, header.n_samples, mat.rows, mat.cols
    matrix = f"a {rows} x {cols} matrix"
    # Orientation from the sizes: signals x samples is WFDB's layout, samples x signals the
    # transpose. A square matrix could be either, so it is refused rather than guessed (such a
    # record would be far too short anyway).
    if rows == n_sig and cols != n_sig:
        transposed, n = False, cols
    elif cols == n_sig and rows != n_sig:
        transposed, n = True, rows
    elif rows == cols == n_sig and declared not in (None, n_sig):
        raise RecordError("sample_count_mismatch",
                          f"header declares {declared} samples, {file_name} holds {matrix}")
    else:
        samples = f" x {declared} samples" if declared is not None else ""
        ambiguous = " (square: orientation ambiguous)" if rows == cols == n_sig else ""
        raise RecordError("shape_mismatch", f"{file_name} holds {matrix}{ambiguous}; the header "
                                            f"declares {n_sig} signals{samples}")
    if declared is not None and n != declared:
        raise RecordError(
            "sample_count_mismatch",
            f"header declares {declared} samples, {file_name} holds {matrix}"
            + (" (stored transposed)" if transposed else ""),
        )
    if n == 0:
        raise RecordError("no_samples", "record has no samples")
    available = (len(data) - mat.offset) // mat.dtype.itemsize
    if available < rows * cols:
        raise RecordError(
            "truncated_signal", f"header declares {n} samples, files hold {available // n_sig}"
        )
    values = np.frombuffer(data, mat.dtype, rows * cols, mat.offset)
    # Column-major storage: signals x samples is one frame after another (WFDB format 16);
    # the transpose is one signal after another.
    digital = values.reshape(n_sig, n) if transposed else values.reshape(n, n_sig).T
    if mat.dtype != _INT16:
        digital = _as_int16(digital, header, file_name)
    return digital


def read_signal(
    header: Header, header_path: str | os.PathLike[str], method: str = "auto"
) -> tuple[np.ndarray, int, str]:
    """Digital samples of the 12 standard leads: ((12, n) integer array, storage bits, reader).

    `method`: "fast" (format-16 single-file records only), "wfdb", or "auto" (fast when
    possible). "wfdb" reads as `wfdb.rdrecord` does, ignoring a `.mat` file's own header: a
    reference for comparisons, not for records of unknown provenance.
    """
    if method not in ("auto", "fast", "wfdb"):
        raise ValueError(f"unknown read method {method!r}")
    if method == "fast" and not header.simple_layout:
        raise ValueError("the fast reader handles single-file format-16 records only")
    order = header.lead_order()
    header_path = os.fspath(header_path)
    folder = os.path.dirname(header_path)
    identity = header.n_sig == 12 and order == _IDENTITY
    if (method != "wfdb" and header.simple_layout
            and header.signals[0].file_name.lower().endswith(".mat")):
        d = _read_mat(header, folder)
        # One copy gives contiguous, writable (12, n) rows in standard order.
        digital = np.ascontiguousarray(d if identity else d[order])
        return (digital if digital.flags.writeable else digital.copy()), 16, "fast"
    available = _available_samples(header, folder)
    expected = header.n_samples if header.n_samples is not None else available
    if expected == 0 or available == 0:
        raise RecordError("no_samples", "record has no samples")
    if available is not None and expected is not None and available < expected:
        raise RecordError(
            "truncated_signal", f"header declares {expected} samples, files hold {available}"
        )
    if method in ("fast", "auto") and header.simple_layout:
        assert expected is not None  # format 16 always has a known size
        spec = header.signals[0]
        n_sig = header.n_sig
        try:
            flat = np.fromfile(
                os.path.join(folder, spec.file_name), dtype="<i2", count=expected * n_sig,
                offset=spec.byte_offset,
            )
        except OSError as exc:
            raise RecordError("unreadable", f"cannot read {spec.file_name}: {exc}") from None
        frames = flat.reshape(expected, n_sig)
        # One copy gives contiguous (12, n) rows in standard order.
        digital = np.ascontiguousarray(frames.T if identity else frames.T[order])
        return digital, 16, "fast"
    import wfdb  # deferred: slow to import and only needed for uncommon formats

    try:
        rec = wfdb.rdrecord(os.path.splitext(header_path)[0], physical=False)
    except Exception as exc:  # wfdb raises many types for malformed files
        raise RecordError("unreadable", f"wfdb: {type(exc).__name__}: {exc}") from None
    d = rec.d_signal
    if d is None or d.size == 0:
        raise RecordError("no_samples", "record has no samples")
    bits = max(_FORMAT_BITS.get(s.fmt, 16) for s in header.signals)
    return np.ascontiguousarray(d.T[order]), bits, "wfdb"


def _header_path(path: str | os.PathLike[str]) -> str:
    p = os.fspath(path)
    stem, ext = os.path.splitext(p)
    return stem + ".hea" if ext.lower() in (".hea", ".mat", ".dat") else p + ".hea"


def read_record(
    path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None,
    method: str = "auto", header: Header | None = None, source: str | None = None,
) -> RawRecord:
    """Read one WFDB record given its `.hea`, signal file, or path without extension.

    Problems raise RecordError with a quarantine reason code. The record's `source` is
    `source` if given, else the header path relative to `root` (or as given without root);
    `header` skips re-parsing a header already read.
    """
    header_path = _header_path(path)
    if header is None:
        if not os.path.exists(header_path):
            raise RecordError("unreadable", f"header {os.path.basename(header_path)} not found")
        header = read_header(header_path)
    digital, bits, reader = read_signal(header, header_path, method)
    sigs = [header.signals[i] for i in header._lead_order]
    for s in sigs:
        mv_per_unit(s.units)  # units outside the contract are refused before any arithmetic
    if source is None:
        rel = os.path.relpath(header_path, root) if root is not None else header_path
        source = rel.replace(os.sep, "/")
    return RawRecord(
        name=os.path.basename(header_path)[:-4],
        source=source,
        fs=header.fs,
        digital=digital,
        gains=np.array([s.gain for s in sigs], dtype=np.float64),
        baselines=np.array([s.baseline for s in sigs], dtype=np.int64),
        units=tuple(s.units for s in sigs),
        adc_bits=bits,
        age=header.age,
        sex=header.sex,
        dx_codes=header.dx_codes,
        reader=reader,
    )


def scan_records(root: str | os.PathLike[str]) -> list[Path]:
    """All `*.hea` files under root, recursively, sorted by relative path (hidden dirs skipped)."""
    root = Path(root)
    return [root / rel for rel in scan_relative(root)]


def scan_relative(root: str | os.PathLike[str]) -> list[str]:
    """Like scan_records, as sorted POSIX paths relative to root.

    Symlinked folders are followed, each real folder once (a link back to a folder already
    visited, a loop included, is not entered again), so a database assembled from links is
    read whole and nothing is read twice."""
    found: list[str] = []
    seen: set[str] = {os.path.realpath(root)}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            real = os.path.realpath(os.path.join(dirpath, d))
            if real not in seen:
                seen.add(real)
                keep.append(d)
        dirnames[:] = keep
        rel = os.path.relpath(dirpath, root)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        found.extend(prefix + f for f in filenames if f.endswith(".hea") and not f.startswith("."))
    return sorted(found)
