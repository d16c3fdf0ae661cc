"""End to end (slow: local Ray, SQLite MLflow): searches over the input reach every
downstream command. A search pinned to 100 Hz limb leads, and one whose two trials read
different inputs (100 Hz 6 leads, 500 Hz 12 leads), each train, ensemble, predict raw
records, evaluate and export an ONNX graph on the 500 Hz 12-lead int16 input (checked within
1e-4 of the bundle by the export itself)."""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
from pathlib import Path

import pytest

from ecgtune.search import tracking

MIXED_SPACE = """\
base: tiny
fixed: {train.epochs: 2, train.crop_len: 1024, train.batch_size: 32, train.augment: false,
        train.lr: 0.005, train.steps_per_epoch: 12}
params:
  input.fs: {choice: [100, 500]}
  input.leads: {choice: [limb6, all12]}
points_to_evaluate:
  - {input.fs: 100, input.leads: limb6}
  - {input.fs: 500, input.leads: all12}
"""


def _run(*args: str) -> tuple[int, str]:
    from ecgtune.ensembles.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


def _ensemble(name: str, data: Path, uri: str, tmp_path: Path) -> Path:
    bundle = tmp_path / f"{name}-bundle"
    code, out = _run("ensemble", "--data", str(data), "--name", name, "--top-k", "2",
                     "--output", str(bundle), "--tracking-uri", uri, "--storage",
                     str(tmp_path / "ray"), "--n-boot", "20", "--no-onnx", "--no-progress")
    assert code == 0, out[-2000:]
    return bundle


def _ship(name: str, bundle: Path, data: Path, records: Path, tmp_path: Path) -> None:
    """predict -> evaluate -> export of a bundle."""
    few = tmp_path / f"{name}-records"
    for header in sorted(records.rglob("*.hea"))[:6]:
        target = few / header.relative_to(records).parent
        target.mkdir(parents=True, exist_ok=True)
        for part in header.parent.glob(f"{header.stem}.*"):
            shutil.copy(part, target / part.name)
    predictions = tmp_path / f"{name}.csv"
    code, out = _run("predict", "--bundle", str(bundle), "--input", str(few),
                     "--output", str(predictions), "--no-progress")
    assert code == 0, out[-2000:]
    rows = list(csv.DictReader(predictions.open()))
    assert len(rows) == 6 and all(0.0 <= float(rows[0][label]) <= 1.0 for label in ("AFIB", "SR"))

    code, out = _run("evaluate", "--bundle", str(bundle), "--data", str(data), "--output",
                     str(tmp_path / f"{name}-eval"), "--n-boot", "20", "--no-progress")
    assert code == 0, out[-2000:]
    code, out = _run("export", "--bundle", str(bundle), "--format", "onnx", "--output",
                     str(tmp_path / f"{name}.onnx"), "--check-data", str(data))
    assert code == 0, out[-2000:]
    assert (tmp_path / f"{name}.onnx").is_file()


def _inputs(bundle: Path) -> list[tuple[int, str]]:
    from ecgtune.ensembles.ship.bundle import load_bundle

    return [(s.config.input.fs, s.config.input.leads) for s, _ in load_bundle(bundle).members]


def _search(*args: str, data: Path, uri: str, tmp_path: Path, name: str) -> None:
    code, out = _run("search", "--data", str(data), "--name", name, "--num-samples", "2",
                     "--storage", str(tmp_path / "ray"), "--tracking-uri", uri,
                     "--num-cpus", "2", "--max-concurrent", "2", "--verbose", "0", *args)
    assert code == 0, out[-2000:]


@pytest.mark.slow
def test_a_100_hz_limb_lead_search_ships(prepared_data, synthetic_records, tmp_path):
    uri = tracking.default_tracking_uri(tmp_path)
    _search("--space", "tiny", "--epochs", "2", "--set", "input.fs=100", "--set",
            "input.leads=limb6", "--set", "train.steps_per_epoch=12",
            data=prepared_data, uri=uri, tmp_path=tmp_path, name="low")
    trials = [r for r in tracking.client(uri).search_runs(
        [tracking.client(uri).get_experiment_by_name("low").experiment_id])
        if r.data.tags.get(tracking.TAG_ROLE) == "trial"]
    assert len(trials) == 2
    assert {(r.data.params["input.fs"], r.data.params["input.leads"]) for r in trials} == {
        ("100", "limb6")}
    bundle = _ensemble("low", prepared_data, uri, tmp_path)
    assert set(_inputs(bundle)) == {(100, "limb6")}
    _ship("low", bundle, prepared_data, synthetic_records, tmp_path)


@pytest.mark.slow
def test_an_ensemble_of_two_inputs_ships(prepared_data, synthetic_records, tmp_path):
    uri = tracking.default_tracking_uri(tmp_path)
    space = tmp_path / "mixed.yaml"
    space.write_text(MIXED_SPACE)
    _search("--space", str(space), data=prepared_data, uri=uri, tmp_path=tmp_path,
            name="mixed")
    built = _ensemble("mixed", prepared_data, uri, tmp_path)
    # The selection keeps a member only where it helps on the ensemble fold; the shipped
    # commands must take both inputs whatever it kept: both trials' checkpoints, as the build
    # loads them, go into one bundle with the build's calibration and thresholds.
    from ecgtune.ensembles.build.members import find_search, load_member, rank_trials
    from ecgtune.ensembles.ship.bundle import load_bundle, save_bundle
    from ecgtune.ensembles.ship.inference import EnsemblePredictor

    reference = load_bundle(built)
    client = tracking.client(uri)
    trials = rank_trials(client, find_search(client, "mixed"), 2)
    members = [load_member(t, "mixed", str(tmp_path / "ray"), reference.label_names)
               for t in trials]
    mixed = EnsemblePredictor(
        [(m.spec, m.model) for m in members], [1.0, 1.0], reference.calibrator,
        reference.thresholds, reference.label_names, reference.inputs, reference.n_windows,
        label_map=reference.label_map, label_groups=reference.label_groups,
        group_names=reference.group_names)
    bundle = save_bundle(tmp_path / "mixed-both", mixed, fit=reference.metadata["fit"])
    assert sorted(_inputs(bundle)) == [(100, "limb6"), (500, "all12")]
    _ship("mixed", bundle, prepared_data, synthetic_records, tmp_path)
