from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import wfdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecgtune.data_prep import STANDARD_LEADS, RecordError, parse_header, read_record, scan_records
from ecgtune.data_prep.synth import make_record, write_record

REAL_NAMES = [f"JS200{i:02d}" for i in range(20)]


def _assert_same_as_wfdb(hea: Path) -> None:
    """The fast reader and wfdb give the same digital values, gains, baselines, fs, leads."""
    fast = read_record(hea, method="fast")
    ref = wfdb.rdrecord(str(hea.with_suffix("")), physical=False)
    order = [[n.lower() for n in ref.sig_name].index(lead.lower()) for lead in STANDARD_LEADS]
    assert fast.reader == "fast"
    assert fast.fs == ref.fs
    assert [ref.sig_name[i].lower() for i in order] == [s.lower() for s in STANDARD_LEADS]
    np.testing.assert_array_equal(fast.digital, ref.d_signal.T[order])
    np.testing.assert_array_equal(fast.gains, np.asarray(ref.adc_gain)[order])
    np.testing.assert_array_equal(fast.baselines, np.asarray(ref.baseline)[order])
    slow = read_record(hea, method="wfdb")
    assert slow.reader == "wfdb"
    np.testing.assert_array_equal(slow.digital, fast.digital)


@pytest.mark.parametrize("name", REAL_NAMES)
def test_fast_reader_matches_wfdb_on_real_records(real_dir: Path, name: str) -> None:
    _assert_same_as_wfdb(real_dir / f"{name}.hea")


def test_real_headers_parse(real_dir: Path) -> None:
    rec = read_record(real_dir / "JS20000.mat")  # any of .hea/.mat/stem names the record
    assert rec.name == "JS20000"
    assert (rec.age, rec.sex) == (84, "Female")  # header writes "# Age: 84"
    assert rec.dx_codes == ("284470004", "427084000", "698252002", "55930002")
    assert rec.digital.shape == (12, 5000) and rec.digital.dtype == np.int16
    assert rec.lead_names == STANDARD_LEADS
    assert np.all(rec.gains == 1000) and not rec.baselines.any()
    assert read_record(real_dir / "JS20000").name == "JS20000"


@pytest.mark.parametrize(
    ("variant", "kwargs"),
    [
        ("plain", {}),
        ("gain200-baseline", {"gain": 200.0, "baseline": [7, -3, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}),
        ("shuffled-lowercase-leads", {"lead_names": None}),
        ("257Hz", {"fs": 257}),
        ("dat-format", {"fmt": "dat"}),
    ],
)
def test_fast_reader_matches_wfdb_on_synthetic_records(
    tmp_path: Path, variant: str, kwargs: dict
) -> None:
    kwargs = dict(kwargs)
    fs = kwargs.pop("fs", 500)
    _, digital = make_record(3, 5, fs=fs)
    leads = list(STANDARD_LEADS)
    if "lead_names" in kwargs:
        perm = np.random.default_rng(0).permutation(12)
        digital, leads = digital[perm], [STANDARD_LEADS[i].lower() for i in perm]
        kwargs["lead_names"] = leads
    hea = write_record(tmp_path, f"REC{variant}", digital, fs, dx_codes=["426783006"], **kwargs)
    if variant == "dat-format":
        # wfdb.wrsamp writes a format-16 .dat: read by the fast path too
        assert "dat" in hea.read_text()
    _assert_same_as_wfdb(hea)


def test_header_fields_we_write_match_wfdb(tmp_path: Path, real_dir: Path) -> None:
    """Our writer computes the WFDB first value and checksum exactly as the real files have them."""
    rec = read_record(real_dir / "JS20003.hea")
    hea = write_record(tmp_path, "JS20003", rec.digital, dx_codes=rec.dx_codes, age=rec.age,
                       sex=rec.sex, comment_prefix="# ")
    ours = hea.read_text().splitlines()
    real = (real_dir / "JS20003.hea").read_text().splitlines()
    assert ours[:13] == real[:13]
    assert ours[13:16] == real[13:16]  # "# Age: ...", "# Sex: ...", "# Dx: ..."
    assert (tmp_path / "JS20003.mat").read_bytes() == (real_dir / "JS20003.mat").read_bytes()


@pytest.mark.parametrize(
    ("lines", "age", "sex"),
    [
        (["#Age: 85", "#Sex: Male"], 85, "Male"),
        (["# Age: 84", "# Sex: Female"], 84, "Female"),
        (["#Age: NaN", "#Sex: Unknown"], None, None),
        (["#Age: Unknown"], None, None),
        (["#Age:", "#Sex: F"], None, "Female"),
        ([], None, None),
        (["#Age: 61.0", "#Sex: M"], 61, "Male"),
    ],
)
def test_demographics_are_tolerant(lines: list[str], age: int | None, sex: str | None) -> None:
    text = "\n".join(["R 12 500 5000", *_signal_lines("R"), *lines, "#Dx: 426783006, 59118001"])
    h = parse_header(text)
    assert (h.age, h.sex) == (age, sex)
    assert h.dx_codes == ("426783006", "59118001")


def _signal_lines(name: str, leads=STANDARD_LEADS) -> list[str]:
    return [f"{name}.mat 16x1+24 1000.0(0)/mV 16 0 0 0 0 {lead}" for lead in leads]


@pytest.mark.parametrize(
    ("leads", "detail"),
    [
        ([*list(STANDARD_LEADS[:11]), "V7"], "missing V6"),
        ([*list(STANDARD_LEADS[:11]), "v5"], "duplicate V5"),
        (list(STANDARD_LEADS[:6]), "missing V1"),
    ],
)
def test_wrong_lead_sets(leads: list[str], detail: str) -> None:
    h = parse_header("\n".join([f"R {len(leads)} 500 5000", *_signal_lines("R", leads)]))
    with pytest.raises(RecordError) as err:
        h.lead_order()
    assert err.value.code == "wrong_lead_set" and detail in err.value.detail


def test_extra_leads_are_dropped_and_order_normalised() -> None:
    leads = ["vx", *reversed(STANDARD_LEADS), "vy"]
    h = parse_header("\n".join([f"R {len(leads)} 500 5000", *_signal_lines("R", leads)]))
    assert [leads[i].lower() for i in h.lead_order()] == [s.lower() for s in STANDARD_LEADS]


# Header-shaped text: lines assembled from plausible and implausible tokens.
_token = st.sampled_from(
    ["R", "12", "500", "5000", "R.mat", "16x1+24", "16", "212", "1000.0(0)/mV", "200", "0",
     "-34", "V1", "aVR", "nan", "inf", "-1", "500/2", "x", "+", "(", "/mV", "99999999999999"]
)
_line = st.one_of(
    st.lists(_token, min_size=0, max_size=10).map(" ".join),
    st.text(max_size=40),
    st.sampled_from(["#Age: 85", "# Sex: Male", "#Dx: 426783006", "#", "#Age: ∞"]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=300), st.lists(_line, max_size=16).map("\n".join)))
def test_any_header_text_parses_or_is_unparsable(text: str) -> None:
    try:
        h = parse_header(text)
    except RecordError as exc:
        assert exc.code in ("unparsable_header", "missing_fs", "bad_dx")
    else:
        assert h.n_sig == len(h.signals) and h.fs > 0


@settings(max_examples=60, deadline=None)
@given(st.lists(_line, max_size=16).map("\n".join))
def test_any_header_file_reads_or_raises_a_record_error(tmp_path_factory, text: str) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "R.hea").write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        read_record(folder / "R.hea")
    except RecordError:
        pass


def test_scan_is_recursive_sorted_and_skips_hidden(tmp_path: Path) -> None:
    for rel in ["b/2/Z.hea", "a/A.hea", "b/1/B.hea", ".hidden/C.hea", "a/.D.hea", "a/E.mat"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    found = [p.relative_to(tmp_path).as_posix() for p in scan_records(tmp_path)]
    assert found == ["a/A.hea", "b/1/B.hea", "b/2/Z.hea"]
