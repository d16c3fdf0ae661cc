"""Helpers shared by test folders whose conftests cannot import each other (pytest's
importlib mode); on sys.path through pyproject's `pythonpath`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any


def stop_group(process: subprocess.Popen, first: int = signal.SIGTERM,
               wait: float = 30) -> None:
    """Signal a process's whole session (started with start_new_session), wait for it to
    stop, then kill what is left: children (a raylet, a server's workers) may outlive their
    leader."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, first)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def run_fresh(script: str, timeout: float) -> str:
    """Runs a benchmark file as a script in a fresh interpreter (the test session pins torch
    to one thread, tests/conftest.py) and returns what it printed, echoed; fails on error."""
    proc = subprocess.run([sys.executable, script], capture_output=True, text=True,
                          timeout=timeout)
    print()
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def saved_pyfunc_model(bundle_dir: Path, path: Path, n_samples: int = 5000) -> Any:
    """A bundle saved (not logged) as the pyfunc model `ecgtune ensemble` logs, loaded back:
    the same code file, signature and input metadata; no tracking store, no requirement
    inference."""
    import mlflow

    from ecgtune.ensembles.ship.bundle import load_bundle
    from ecgtune.ensembles.ship.registry import PYFUNC_CODE, input_metadata, model_signature

    bundle = load_bundle(bundle_dir)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*input_example.*")
        mlflow.pyfunc.save_model(str(path), python_model=str(PYFUNC_CODE),
                                 artifacts={"bundle": str(bundle_dir)},
                                 signature=model_signature(bundle.label_names, n_samples),
                                 pip_requirements=[],
                                 metadata={"ecgtune_input": input_metadata(n_samples)})
    return mlflow.pyfunc.load_model(str(path))


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Headless, and kept from dialling out of a closed network in the background.
_CHROMIUM_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")


def headless_chromium(profile: Path, *args: str) -> Any:
    """A Selenium driver on Debian's Chromium with a fresh profile in `profile` (no stored
    choice from an earlier visit); skips the test when Chromium or its driver is missing."""
    import shutil

    import pytest

    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip("Debian's chromium + chromium-driver are not installed (make test installs "
                    "them when it runs as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (*_CHROMIUM_ARGS, *args, f"--user-data-dir={profile}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
