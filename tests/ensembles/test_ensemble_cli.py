"""`ecgtune ensemble` / `ecgtune predict` through the console entry point (subprocesses)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

from ecgtune.ensembles import load_bundle
from ecgtune.ensembles.ship.registry import CHAMPION_ALIAS
from ecgtune.search import tracking

ENSEMBLE_OPTIONS = ("--data", "--name", "--top-k", "--output", "--register", "--tracking-uri",
                    "--storage", "--search-run-id", "--metric", "--bags", "--windows",
                    "--threshold-policy", "--threshold-policy-for", "--seed", "--n-boot")
PREDICT_OPTIONS = ("--bundle", "--input", "--output", "--batch-size", "exit status")


def _cli(*args: str) -> subprocess.CompletedProcess:
    # The same torch thread count as this process, so that floating-point reductions (and
    # with them the bundle's checksums) can be compared bit for bit.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.run([sys.executable, "-m", "ecgtune.ensembles.cli", *args],
                          capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.parametrize(("command", "options"), [("ensemble", ENSEMBLE_OPTIONS),
                                                  ("predict", PREDICT_OPTIONS)])
def test_help_lists_the_options(command, options):
    proc = _cli(command, "--help")
    assert proc.returncode == 0
    for option in options:
        assert option in proc.stdout


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_ensemble_cli_end_to_end_registers_and_reproduces(built_ensemble, tmp_path):
    b = built_ensemble
    out = tmp_path / "cli-bundle"
    # --no-onnx: the graph the build logs is the in-process build's to check
    # (test_onnx_export.py); tracing it again here would only repeat that.
    proc = _cli("ensemble", "--data", str(b.data), "--name", b.search_name, "--top-k", "4",
                "--output", str(out), "--register", "ecg-cli", "--tracking-uri", b.tracking_uri,
                "--n-boot", "200", "--seed", "0", "--no-progress", "--no-onnx")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Registered: ecg-cli version 1" in proc.stdout
    assert "Calibration (test fold): ECE" in proc.stdout
    assert "on the ensemble fold" in proc.stdout and "uniform average of all 4" in proc.stdout
    for row in ("ensemble", "best single trial", "uniform average", "seed-style baseline"):
        assert row in proc.stdout
    bundle = load_bundle(out)
    # Same search, data and seed as the in-process build: same members, weights and files.
    assert bundle.member_names == list(b.result.weights)
    assert bundle.weights.tolist() == pytest.approx(list(b.result.weights.values()), abs=0)
    ref = b.result.bundle_dir
    for rel in ["bundle.json", *(f"members/{n}.safetensors" for n in bundle.member_names)]:
        assert _sha256(out / rel) == _sha256(ref / rel), rel
    source = json.loads((out / "source.json").read_text())
    client = tracking.client(b.tracking_uri)
    version = client.get_model_version_by_alias("ecg-cli", CHAMPION_ALIAS)
    assert str(version.version) == "1" and version.run_id == source["ensemble_run_id"]
    assert client.get_run(source["ensemble_run_id"]).info.status == "FINISHED"
