"""`ecgtune demo` as a newcomer runs it, scaled down: everything lands in its workdir, the
summary points at the runs and says that a synthetic model's output is not a diagnosis."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_small_demo_keeps_to_its_workdir_and_labels_synthetic_output(tmp_path, sample_dir):
    cwd, work = tmp_path / "cwd", tmp_path / "work"
    cwd.mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "ecgtune.ensembles.cli", "demo", "--workdir", str(work),
         "--records", "600", "--trials", "2", "--num-cpus", "2", "--sample-dir", str(sample_dir)],
        cwd=cwd, capture_output=True, text=True, timeout=900,
    )
    console = out.stdout + out.stderr
    assert out.returncode == 0, console[-4000:]
    assert list(cwd.iterdir()) == [], "the demo wrote into the folder it ran in"
    assert {"mlflow.db", "mlartifacts", "ray_results", "bundle", "predictions"} <= {
        p.name for p in work.iterdir()}
    assert "600 records written" in console
    assert "trained on synthetic records only" in console and "not diagnoses" in console
    assert "runs?workflowType=machine_learning" in console
    assert "Configuration for experiment" not in console and "tensorboard" not in console
    assert "export --bundle" in console and "INFO onnx" not in console

