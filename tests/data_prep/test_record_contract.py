"""The record contract, walked by a generator (tests/support/record_strategies.py): for every
drawn record, either the stored values equal what the file holds (within 2 uV) with the
labels it declares, or it is refused or warned with the reason the contract names."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from record_strategies import RecordCase, expected_output, record_cases, write_case

from ecgtune.data_prep import (
    REASON_CODES,
    RecordError,
    get_label_map,
    load_shards,
    prepare,
    validate_record,
)
from ecgtune.data_prep.reader import parse_comments
from ecgtune.data_prep.record_contract import HEADER_RULES, parse_dx

_SEED20 = get_label_map("seed20")
_FAST = settings(max_examples=40, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow])
# The slow tier's profile: more examples, records up to an hour (at rates up to ~250 Hz; a
# million samples per lead at most keeps one example within seconds).
_LONG = settings(max_examples=60, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
UV = 2  # tolerance in stored units: 2 uV at 1000 units per mV


def _check_record(case: RecordCase, folder: Path) -> None:
    hea = write_case(case, folder)
    try:
        checked = validate_record(hea)
    except RecordError as exc:
        assert case.expected_reason is not None, f"a good record was refused: {exc.reason}"
        assert exc.code == case.expected_reason, exc.reason
        return
    assert case.expected_reason is None, (
        f"accepted a record the contract refuses ({case.expected_reason})")
    expected, length = expected_output(case)
    assert checked.length == length
    assert np.abs(checked.signal - expected).max() <= UV
    assert checked.dx_codes == case.dx_codes
    short = [w for w in checked.warnings if w.startswith("short:")]
    assert bool(short) == (length < checked.signal.shape[1])


@_FAST
@given(case=record_cases(max_samples=40_000, max_seconds=20.0))
def test_every_record_is_read_exactly_or_refused_by_name(tmp_path_factory, case) -> None:
    _check_record(case, tmp_path_factory.mktemp("rec"))


@pytest.mark.slow
@_LONG
@given(case=record_cases(max_samples=1_000_000, max_seconds=3600.0))
def test_long_profile_every_record_is_read_exactly_or_refused_by_name(tmp_path_factory,
                                                                       case) -> None:
    folder = tmp_path_factory.mktemp("rec")
    try:
        _check_record(case, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # hour-long records: keep the disk free


def _quarantine(out: Path) -> dict[str, str]:
    with open(out / "quarantine.csv", newline="") as fh:
        return {r["record"]: r["reason"] for r in csv.DictReader(fh)}


def _warnings(out: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    with open(out / "warnings.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            found.setdefault(r["record"], []).append(r["warning"])
    return found


_names = st.integers(0, 10**6).map(lambda i: f"G{i:07d}")


@settings(max_examples=6, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(cases=st.lists(record_cases(max_samples=20_000, max_seconds=12.0, names=_names),
                      min_size=3, max_size=8, unique_by=lambda c: c.name))
def test_prep_writes_or_quarantines_every_generated_record(tmp_path_factory, cases) -> None:
    root = tmp_path_factory.mktemp("db")
    for i, case in enumerate(cases):
        write_case(case, root / f"part{i % 2}")
    out = root.parent / (root.name + "-out")
    m = prepare(root, out, workers=1, progress=False).manifest
    quarantined, warned = _quarantine(out), _warnings(out)
    assert m["records_in"] == len(cases) == m["records_written"] + m["records_quarantined"]
    ds = load_shards(out)
    rows = {name: i for i, name in enumerate(ds.records)}
    for case in cases:
        if case.expected_reason is not None:
            assert quarantined[case.name].split(":")[0] == case.expected_reason
            continue
        assert case.name in rows, quarantined.get(case.name)
        row = rows[case.name]
        expected, length = expected_output(case)
        assert int(ds.lengths[row]) == length
        assert np.abs(ds.signals[row] - expected).max() <= UV
        labels = _SEED20.encode(case.dx_codes)
        np.testing.assert_array_equal(ds.labels[row], labels)
        unlabelled = any(w.startswith("no_scored_label") for w in warned.get(case.name, []))
        assert unlabelled == (not labels.any())
    assert set(m["quarantine_reasons"]) == set(REASON_CODES)


@pytest.mark.parametrize(("value", "codes"), [
    ("164889003,59118001", ("164889003", "59118001")),
    (" 164889003 , 59118001 ", ("164889003", "59118001")),
    ("164889003,164889003", ("164889003",)),
    ("", ()), ("Unknown", ()), ("NaN", ()), (" n/a ", ()),
])
def test_dx_grammar_accepts(value: str, codes: tuple[str, ...]) -> None:
    assert parse_dx(value) == codes


@pytest.mark.parametrize(("value", "token"), [
    ("164889003 59118001", "'164889003 59118001'"),
    ("164889003;59118001", "'164889003;59118001'"),
    ("164889003/59118001", "'164889003/59118001'"),
    ("164889003.0", "'164889003.0'"),
    ("164889003,,59118001", "an empty code"),
    ("164889003,", "an empty code"),
    ("AF", "'AF'"),
])
def test_dx_grammar_refuses_naming_the_token(value: str, token: str) -> None:
    with pytest.raises(RecordError, match="bad_dx") as info:
        parse_dx(value)
    assert token in str(info.value)


def test_a_second_dx_line_is_refused() -> None:
    with pytest.raises(RecordError, match="two Dx lines"):
        parse_comments(["Dx: 164889003", "Dx: 59118001"])


def test_readme_prints_the_header_contract() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text("utf-8")
    for rule in HEADER_RULES:
        assert f"| {rule.field} | {rule.accepted} | {rule.otherwise} |" in readme, rule.field


def test_symlinked_folders_are_read_once_and_loops_end(tmp_path: Path) -> None:
    from ecgtune.data_prep.synth import make_record, write_record

    real = tmp_path / "store"
    write_record(real / "a", "L0001", make_record(0, 1)[1], dx_codes=("164889003",))
    root = tmp_path / "in"
    root.mkdir()
    (root / "linked").symlink_to(real, target_is_directory=True)
    (root / "again").symlink_to(real, target_is_directory=True)  # the same real folder
    (real / "a" / "loop").symlink_to(real, target_is_directory=True)
    m = prepare(root, tmp_path / "out", workers=1, progress=False).manifest
    assert m["records_in"] == m["records_written"] == 1

    from ecgtune.ensembles.ship.predict import expand_inputs

    assert [p.name for p in expand_inputs([root])] == ["L0001.hea"]
