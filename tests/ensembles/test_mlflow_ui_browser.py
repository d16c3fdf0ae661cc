"""The MLflow UI in a real browser: a local `mlflow server` over the tiny search's store,
driven by Debian's headless Chromium through chromedriver. Screenshots are kept in
`test-artifacts/mlflow-ui/` for a human to look at."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from testkit import headless_chromium

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "mlflow-ui"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(built_ensemble, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("mlflow-server") / "server.log"
    mlflow = Path(sys.executable).with_name("mlflow")
    # Without MLflow's job runner (GenAI jobs, which ecgtune never submits): ten processes
    # fewer that each import MLflow while the server starts.
    env = {**os.environ, "PATH": f"{mlflow.parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "w") as out:
        server = subprocess.Popen(
            [str(mlflow), "server", "--backend-store-uri", built_ensemble.tracking_uri,
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail(f"mlflow server did not come up:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield port
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = headless_chromium(tmp_path_factory.mktemp("chromium-profile"),
                               "--window-size=1600,1000")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def _wait_for_text(driver, text: str, timeout: float = 45) -> str:
    from selenium.webdriver.common.by import By

    deadline = time.time() + timeout
    while time.time() < deadline:
        body = driver.find_element(By.TAG_NAME, "body").text
        if text in body:
            return body
        time.sleep(0.5)
    raise AssertionError(f"{text!r} never appeared; the page shows:\n{body[:2000]}")


def test_the_printed_address_opens_the_runs_table(mlflow_server, browser, built_ensemble):
    """The address `ecgtune search` prints (`browse_hint`), opened in a fresh profile, shows
    the runs table with the search run and its nested trials: not the GenAI traces overview
    that MLflow 3's UI opens by default, and no pop-up over it."""
    from selenium.webdriver.common.by import By

    from ecgtune.search import tracking

    client = tracking.client(built_ensemble.tracking_uri)
    experiment = client.get_experiment_by_name(built_ensemble.search_name)
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get(tracking.TAG_ROLE) == "search")
    children = [r for r in runs if r.data.tags.get(tracking.TAG_PARENT) == parent.info.run_id]
    assert len(children) == 4

    hint = tracking.browse_hint(built_ensemble.tracking_uri, experiment.experiment_id,
                                port=mlflow_server)
    address = hint.rsplit(" then open ", 1)[1]
    assert address == tracking.runs_view_url(built_ensemble.tracking_uri,
                                             experiment.experiment_id, port=mlflow_server)
    browser.get(address)
    body = _wait_for_text(browser, parent.info.run_name)
    # The key-metrics view: the metric columns are there without "Show more columns".
    for column in ("val/best_macro_auprc", "val/macro_auroc", "test/macro_auprc",
                   "test/macro_auroc", "cost/gflops"):
        body = _wait_for_text(browser, column)
    assert "ecgtune: key metrics" in body
    assert "share key" not in body  # the view the address names exists
    assert "Detect issues" not in body and "Training runs" not in body, body[:2000]
    assert not browser.find_elements(By.CSS_SELECTOR, "[role='dialog']")
    link = browser.find_element(By.PARTIAL_LINK_TEXT, parent.info.run_name)
    row = link.find_element(By.XPATH, "./ancestor::*[@role='row'][1]")
    # Nested runs are folded under their parent; the expander is the Run Name cell's button.
    row.find_element(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']").click()
    body = ""
    for child in children:
        body = _wait_for_text(browser, child.info.run_name)
    browser.save_screenshot(str(ARTIFACTS / "experiment-runs.png"))
    assert all(child.info.run_name in body for child in children)


def test_registered_model_shows_the_champion_alias(mlflow_server, browser, built_ensemble):
    from ecgtune.search import tracking

    champion = tracking.client(built_ensemble.tracking_uri).get_model_version_by_alias(
        built_ensemble.registered, "champion"
    )
    browser.get(f"http://127.0.0.1:{mlflow_server}/#/models/{built_ensemble.registered}")
    _wait_for_text(browser, built_ensemble.registered)
    body = _wait_for_text(browser, "champion")
    browser.save_screenshot(str(ARTIFACTS / "registered-model.png"))
    assert f"Version {champion.version}" in body
