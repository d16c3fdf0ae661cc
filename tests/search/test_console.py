"""What `ecgtune search` shows and leaves behind, as a user running it in a shell sees it."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

# Ray Tune's own console output, none of which belongs on ours at the default verbosity.
RAY_NOISE = ("Configuration for experiment", "SearchGenerator", "tensorboard",
             "View detailed results here", "Trial task failed", "Trials did not complete",
             "Traceback", "Trial Progress", "Trial Status")


def test_default_console_is_ours_and_the_current_folder_stays_clean(prepared_data, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "ecgtune.ensembles.cli", "search", "--data", str(prepared_data),
         "--space", "tiny", "--name", "console", "--num-samples", "2", "--num-cpus", "2",
         "--storage", str(tmp_path / "ray"), "--tracking-uri", uri,
         # Failing trials: Ray would print their tracebacks and an error table. A learning
         # rate this large makes a tiny trial's loss NaN within its first steps.
         "--set", "train.epochs=2", "--set", "train.lr=1e30"],
        cwd=cwd, capture_output=True, text=True, timeout=600,
    )
    console = out.stdout + out.stderr
    assert out.returncode == 0, console
    assert "FAILED: ecgtune.search.training.NonFiniteLossError" in console
    assert [noise for noise in RAY_NOISE if noise in console] == [], console
    browse = next(line for line in console.splitlines() if line.startswith("Browse the runs:"))
    assert f"--backend-store-uri {uri} --port 5000" in browse
    assert "runs?workflowType=machine_learning" in browse
    # Everything went where it was pointed: nothing in the folder the command ran in.
    assert list(cwd.iterdir()) == []
    assert (tmp_path / "store" / "mlartifacts").is_dir()
