from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ecgtune.ensembles.cli import main


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecgtune.ensembles.cli", *args],
                          capture_output=True, text=True)


@pytest.mark.parametrize("command", ["synth", "prep"])
def test_help_explains_every_option(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    options = {
        "synth": ["--output", "--n", "--seed", "--fs", "--seconds", "--workers"],
        "prep": ["--input", "--output", "--labels", "--workers", "--shard-size", "--fs",
                 "--seconds", "--seed", "--verify", "--no-progress"],
    }[command]
    for option in options:
        assert option in text


def test_synth_then_prep_end_to_end(tmp_path: Path, capsys) -> None:
    assert main(["synth", "--output", str(tmp_path / "raw"), "--n", "40", "--seed", "1",
                 "--no-progress"]) == 0
    assert "wrote 40 records" in capsys.readouterr().out
    assert main(["prep", "--input", str(tmp_path / "raw"), "--output", str(tmp_path / "out"),
                 "--workers", "1", "--shard-size", "8", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "records in 40, written 40, quarantined 0" in out
    assert "train" in out and "STTA" in out
    assert main(["prep", "--verify", "--output", str(tmp_path / "out")]) == 0
    assert "shards verified" in capsys.readouterr().out


def test_user_errors_are_one_line(tmp_path: Path) -> None:
    bad_labels = _run("prep", "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                      "--labels", "seed99")
    assert bad_labels.returncode == 1
    assert bad_labels.stderr.count("\n") == 1 and "seed20-rbbb" in bad_labels.stderr
    no_input = _run("prep", "--output", str(tmp_path / "o"))
    assert no_input.returncode == 2 and "--input is required" in no_input.stderr
    not_prepared = _run("prep", "--verify", "--output", str(tmp_path))
    assert not_prepared.returncode == 1 and "manifest.json" in not_prepared.stderr


def test_import_stays_light() -> None:
    code = ("import sys, ecgtune.data_prep, ecgtune.ensembles.cli.prep; "
            "print(sorted(m for m in ('torch', 'pyarrow', 'scipy', 'wfdb') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
