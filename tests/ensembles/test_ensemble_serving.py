"""`mlflow models serve` of the registered champion answers REST predictions like the bundle."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from ecgtune.ensembles import load_bundle

STARTUP_TIMEOUT_S = 90


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status


@pytest.mark.slow
def test_served_champion_answers_rest_requests(built_ensemble, held_out_fold, tmp_path):
    b = built_ensemble
    port = _free_port()
    bin_dir = str(Path(sys.executable).parent)  # mlflow starts `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": b.tracking_uri,
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    log = open(tmp_path / "serve.log", "w")  # closed in finally
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m",
         f"models:/{b.registered}@champion", "--env-manager", "local", "--host", "127.0.0.1",
         "-p", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                if _get(f"{base}/ping") == 200:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail("server did not come up:\n" + (tmp_path / "serve.log").read_text())
            time.sleep(1.0)
        x = held_out_fold.signals[:1]
        request = urllib.request.Request(
            f"{base}/invocations", data=json.dumps({"inputs": x.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = json.loads(response.read())
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # mlflow and its uvicorn child
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()
    bundle = load_bundle(b.result.bundle_dir)
    (row,) = payload["predictions"]
    # One probability per label, and the model's training data: it saw synthetic records.
    assert list(row) == [*bundle.label_names, "model_trained_on"]
    assert row["model_trained_on"].startswith("synthetic:")
    got = np.array([row[name] for name in bundle.label_names])
    assert np.abs(got - bundle.predict_signals(x)[0]).max() <= 1e-5
