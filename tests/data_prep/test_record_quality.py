"""Nothing silently wrong, records side: the MAT v4 header is honoured, header and
matrix must agree, uncalibrated / too short / flat / non-finite records are refused with a named
reason, and no random header or matrix makes the reader return a wrong shape or escape with an
exception other than RecordError."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ecgtune.data_prep import REASON_CODES, RecordError, make_record, read_record, write_record
from ecgtune.data_prep.quality import MIN_SECONDS
from ecgtune.data_prep.reader import STANDARD_LEADS
from ecgtune.data_prep.validation import validate_record

# MAT v4 precision digit P of the type code MOPT, by numpy dtype.
_MAT_P = {"f8": 0, "f4": 1, "i4": 2, "i2": 3, "u2": 4, "u1": 5}


def put_mat(path: Path, matrix: np.ndarray, *, type_code: int | None = None, imagf: int = 0,
            name: bytes = b"val\x00", big_endian: bool = False) -> None:
    """Write `matrix` (mrows x ncols) as a MAT v4 file: column-major, like MATLAB."""
    order = ">" if big_endian else "<"
    kind = matrix.dtype.str[1:]
    if type_code is None:
        type_code = (1000 if big_endian else 0) + _MAT_P[kind] * 10
    mrows, ncols = matrix.shape
    head = struct.pack(f"{order}5i", type_code, mrows, ncols, imagf, len(name)) + name
    path.write_bytes(head + np.asarray(matrix, dtype=order + kind).tobytes(order="F"))


def _record(tmp_path: Path, name: str = "R", n: int = 5000, **kw) -> tuple[Path, np.ndarray]:
    spec, digital = make_record(3, 4, seconds=n / 500)
    hea = write_record(tmp_path, name, digital, dx_codes=spec.dx_codes, **kw)
    return hea, digital


def _code(hea: Path) -> str:
    with pytest.raises(RecordError) as err:
        validate_record(hea)
    assert err.value.code in REASON_CODES and err.value.detail
    return err.value.code


def test_transposed_matrix_is_read_transposed_back(tmp_path: Path) -> None:
    hea, digital = _record(tmp_path)
    put_mat(hea.with_suffix(".mat"), digital.T)  # 5000 x 12 instead of 12 x 5000
    rec = read_record(hea)
    assert rec.reader == "fast"
    np.testing.assert_array_equal(rec.digital, digital)
    checked = validate_record(hea)
    np.testing.assert_array_equal(checked.signal, digital)


def test_standard_matrix_still_reads_bit_identical(tmp_path: Path) -> None:
    hea, digital = _record(tmp_path)
    np.testing.assert_array_equal(read_record(hea).digital, digital)


@pytest.mark.parametrize(("rows", "cols", "code"), [
    (12, 4000, "sample_count_mismatch"),  # complete matrix, header says 5000
    (4000, 12, "sample_count_mismatch"),  # the same, stored transposed
    (11, 5000, "shape_mismatch"),         # a lead short
    (5000, 11, "shape_mismatch"),
    (1, 60000, "shape_mismatch"),         # all samples in one row: right size, wrong shape
])
def test_matrix_must_match_the_header(tmp_path: Path, rows: int, cols: int, code: str) -> None:
    hea, _ = _record(tmp_path)
    matrix = np.arange(rows * cols, dtype=np.int16).reshape(rows, cols) % 500
    put_mat(hea.with_suffix(".mat"), matrix)
    assert _code(hea) == code


def test_header_sample_count_below_the_matrix_is_a_mismatch(tmp_path: Path) -> None:
    hea, _ = _record(tmp_path)
    hea.write_text(hea.read_text().replace("R 12 500 5000", "R 12 500 4000"))
    assert _code(hea) == "sample_count_mismatch"  # not the first 4000 samples, silently


def test_truncated_matrix_is_still_truncated(tmp_path: Path) -> None:
    hea, _ = _record(tmp_path)
    mat = hea.with_suffix(".mat")
    mat.write_bytes(mat.read_bytes()[: 24 + 12 * 2 * 2500])
    assert _code(hea) == "truncated_signal"


@pytest.mark.parametrize("dtype", ["f8", "f4", "i4", "u2", "i2"])
def test_matrix_type_is_honoured(tmp_path: Path, dtype: str) -> None:
    hea, digital = _record(tmp_path)
    if dtype == "u2":
        digital = digital - digital.min()  # unsigned: shift into range
        hea = write_record(tmp_path, "R", digital)
    put_mat(hea.with_suffix(".mat"), digital.astype(dtype))
    np.testing.assert_array_equal(read_record(hea).digital, digital)


def test_big_endian_matrix_is_read(tmp_path: Path) -> None:
    hea, digital = _record(tmp_path)
    put_mat(hea.with_suffix(".mat"), digital, big_endian=True)
    np.testing.assert_array_equal(read_record(hea).digital, digital)


def test_longer_matrix_name_moves_the_data(tmp_path: Path) -> None:
    hea, digital = _record(tmp_path)
    put_mat(hea.with_suffix(".mat"), digital, name=b"signals\x00")
    np.testing.assert_array_equal(read_record(hea).digital, digital)


def test_physical_values_in_a_double_matrix_are_refused(tmp_path: Path) -> None:
    hea, digital = _record(tmp_path)
    put_mat(hea.with_suffix(".mat"), digital / 1000.0)  # mV, not digital units
    assert _code(hea) == "dtype_mismatch"
    put_mat(hea.with_suffix(".mat"), digital.astype("i4") + 40000)  # beyond 16 bits
    assert _code(hea) == "dtype_mismatch"


def test_nan_in_a_double_matrix_is_non_finite(tmp_path: Path) -> None:
    hea, digital = _record(tmp_path)
    x = digital.astype("f8")
    x[4, 100] = np.nan
    put_mat(hea.with_suffix(".mat"), x)
    assert _code(hea) == "non_finite"


@pytest.mark.parametrize(("head", "what"), [
    (b"MATLAB 5.0 MAT-file, Platform: GLNXA64", "MAT v5"),
    ("complex", "complex"),
    ("text", "text matrix"),
    ("sparse", "sparse matrix"),
    ("vax", "VAX byte order"),
])
def test_unusable_mat_headers_are_refused(tmp_path: Path, head: bytes | str, what: str) -> None:
    hea, digital = _record(tmp_path)
    mat = hea.with_suffix(".mat")
    if isinstance(head, bytes):
        mat.write_bytes(head + mat.read_bytes()[len(head):])
    elif head == "complex":
        put_mat(mat, digital, imagf=1)
    else:
        put_mat(mat, digital, type_code={"text": 31, "sparse": 32, "vax": 2030}[head])
    assert _code(hea) == "bad_mat_header"


@pytest.mark.parametrize("gain", ["0", "-1000.0", "nan", "inf", "0.0"])
def test_bad_gain_is_refused_not_defaulted(tmp_path: Path, gain: str) -> None:
    hea, _ = _record(tmp_path)
    lines = hea.read_text().splitlines()
    lines[3] = lines[3].replace("1000.0(0)/mV", f"{gain}(0)/mV")  # lead II
    hea.write_text("\n".join(lines) + "\n")
    rec = read_record(hea)
    assert rec.gains[1] != 200  # no silent WFDB default: the stored signal would be 5x
    with pytest.raises(RecordError) as err:
        validate_record(hea)
    assert err.value.code == "bad_gain" and "lead II" in err.value.detail


@pytest.mark.parametrize(("n", "ok"), [(1, False), (1000, False), (2499, False), (2500, True),
                                       (3000, True)])
def test_minimum_duration(tmp_path: Path, n: int, ok: bool) -> None:
    assert MIN_SECONDS == 5.0
    hea, digital = _record(tmp_path, n=n)
    if ok:
        checked = validate_record(hea)
        assert checked.signal.shape == (12, 5000) and checked.info.padded == 5000 - n
        np.testing.assert_array_equal(checked.signal[:, :n], digital)
    else:
        assert _code(hea) == "too_short"


def test_minimum_duration_is_capped_by_a_shorter_output_window(tmp_path: Path) -> None:
    hea, _ = _record(tmp_path, n=1500)  # 3 s
    assert validate_record(hea, seconds=2.5).signal.shape == (12, 1250)
    assert _code(hea) == "too_short"


def test_all_flat_is_refused_and_some_flat_leads_warn(tmp_path: Path) -> None:
    hea, digital = _record(tmp_path)
    write_record(tmp_path, "R", np.full_like(digital, 7))
    assert _code(hea) == "all_flat"
    flat = digital.copy()
    flat[[7, 9, 11]] = 0
    write_record(tmp_path, "R", flat)
    checked = validate_record(hea)
    assert checked.warnings == ("flat_lead:V2,V4,V6",)
    write_record(tmp_path, "R", digital)
    assert validate_record(hea).warnings == ()


def test_real_flat_records_warn(real_dir: Path) -> None:
    for name in ("JS20004", "JS20008"):
        assert validate_record(real_dir / f"{name}.hea").warnings == ("flat_lead:V2,V4,V6",)
    assert validate_record(real_dir / "JS20000.hea").warnings == ()


# --- fuzz: random header fields and random MAT matrices ----------------------------------------

_GOOD_GAINS = ["1000.0(0)/mV", "200(5)/mV", "4.88(0)/uV", "1000"]
_BAD_GAINS = ["1000.0(0)/furlong", "0(0)/mV", "-1000(0)/mV", "nan(0)/mV", "inf(0)/mV",
              "1e-300(0)/mV", "1e300(0)/mV", "0.001(0)/V"]
_GOOD_FS = ["500", "250", "257", "1000"]
_BAD_FS = ["0.5", "0", "-500", "nan", "1e9"]


def _mostly(good: list[str], bad: list[str]) -> st.SearchStrategy[str]:
    """Valid values most of the time, so most examples get past the header."""
    return st.sampled_from(good * (3 * len(bad) // len(good) + 1) + bad)


@st.composite
def _case(draw: st.DrawFn) -> dict:
    return {
        "n": draw(st.sampled_from([0, 1, 12, 100, 2500, 4999, 5000, 5000, 5000])),
        "n_sig": draw(st.sampled_from([12] * 10 + [11, 13, 1])),
        "header_n": draw(st.sampled_from(["same"] * 5 + ["none", "minus", "plus"])),
        "shape": draw(st.sampled_from(["standard"] * 3 + ["transposed"] * 2 + ["flat", "other"])),
        "kind": draw(st.sampled_from(["i2"] * 4 + ["i4", "u2", "u1", "f8", "f4"])),
        "values": draw(st.sampled_from(["ecg"] * 5 + ["zeros", "extremes", "fraction", "nan"])),
        "fs": draw(_mostly(_GOOD_FS, _BAD_FS)),
        "gains": draw(st.lists(_mostly(_GOOD_GAINS, _BAD_GAINS), min_size=1, max_size=2)),
        "truncate": draw(st.sampled_from([0] * 5 + [1, 100])),
        "type_code": draw(st.sampled_from([None] * 12 + [31, 4030, 1, 2030])),
    }


def _clean(case: dict) -> bool:
    """A case that describes a usable record: it must be accepted, not just not crash."""
    return (case["n_sig"] == 12 and case["fs"] in _GOOD_FS
            and case["n"] / float(case["fs"]) >= MIN_SECONDS
            and all(g in _GOOD_GAINS for g in case["gains"])
            and case["header_n"] in ("same", "none") and case["shape"] in ("standard", "transposed")
            and case["values"] == "ecg" and not case["truncate"] and case["type_code"] is None)


def _matrix(case: dict, rng: np.random.Generator) -> np.ndarray:
    n_sig, n = case["n_sig"], case["n"]
    x = np.rint(rng.normal(0, 300, (n_sig, n)))
    if case["values"] == "zeros":
        x[:] = 0
    elif case["values"] == "extremes":
        x[:, ::2] = 32767
        x[:, 1::2] = -32768
    elif case["values"] == "fraction":
        x = x / 7
    elif case["values"] == "nan" and n:
        x[0, 0] = np.nan
    kind = case["kind"]
    if kind[0] in "iu":
        info = np.iinfo(kind)
        x = np.clip(np.nan_to_num(x), info.min, info.max).astype(kind)
    else:
        x = x.astype(kind)
    if case["shape"] == "transposed":
        return x.T
    if case["shape"] == "flat":
        return x.reshape(1, -1)
    if case["shape"] == "other":
        return x[:, : max(n - 7, 0)] if n_sig == 12 else x
    return x


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=_case())
def test_fuzz_read_correctly_or_refused_with_a_reason(tmp_path: Path, case: dict) -> None:
    rng = np.random.default_rng(0)
    matrix = _matrix(case, rng)
    n_sig, n = case["n_sig"], case["n"]
    leads = list(STANDARD_LEADS[:n_sig]) + [f"X{i}" for i in range(max(n_sig - 12, 0))]
    declared = {"same": str(n), "none": "", "minus": str(max(n - 1, 0)), "plus": str(n + 1)}
    head = f"R {n_sig} {case['fs']} {declared[case['header_n']]}".rstrip()
    gains = case["gains"]
    lines = [head] + [f"R.mat 16x1+24 {gains[i % len(gains)]} 16 0 0 0 0 {lead}"
                      for i, lead in enumerate(leads)]
    hea = tmp_path / "R.hea"
    hea.write_text("\n".join(lines) + "\n#Dx: 426783006\n")
    mat = hea.with_suffix(".mat")
    put_mat(mat, matrix, type_code=case["type_code"])
    if case["truncate"]:
        mat.write_bytes(mat.read_bytes()[: -case["truncate"]])
    try:
        raw = read_record(hea)
    except RecordError as exc:
        assert exc.code in REASON_CODES
        assert not _clean(case), f"a usable record was refused: {exc}"
        event(f"read: {exc.code}")
        return
    # Read: the matrix as written, in standard lead order, never scrambled.
    stored = matrix if matrix.shape[0] == n_sig else matrix.T
    n = stored.shape[1]  # without a sample count in the header, the matrix says
    assert raw.digital.shape == (12, n) and raw.digital.dtype == np.int16
    np.testing.assert_array_equal(raw.digital, stored[:12].astype(np.int64))
    try:
        checked = validate_record(hea)
    except RecordError as exc:
        assert exc.code in REASON_CODES
        assert not _clean(case), f"a usable record was refused: {exc}"
        event(f"validate: {exc.code}")
        return
    event("accepted")
    assert checked.signal.shape == (12, 5000) and checked.signal.dtype == np.int16
    assert n / float(case["fs"]) >= MIN_SECONDS
    assert np.isfinite(raw.gains).all() and (raw.gains > 0).all()
