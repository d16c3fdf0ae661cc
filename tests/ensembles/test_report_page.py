"""The report a person opens: one self-contained HTML page with its figures embedded, the
members with their weights, trials, configs, scores and costs, every threshold-dependent
column labelled with the operating point it was measured at, and no "-0.000"."""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path

import numpy as np
import pytest
from testkit import headless_chromium

from ecgtune.ensembles.build.calibration import PerLabelCalibrator
from ecgtune.ensembles.build.ensemble import operating_point_note
from ecgtune.ensembles.build.policies import PolicySet
from ecgtune.ensembles.evaluate.plots import plot_quality_cost
from ecgtune.ensembles.evaluate.report import (
    Figure,
    MemberRow,
    ReportRow,
    calibration_summary,
    config_summary,
    fixed,
    write_ensemble_report,
)

PNG = b"\x89PNG\r\n\x1a\n"
LABELS = ["AFIB", "SB", "CRBBB", "LQV"]
ENSEMBLE_POINT = "sensitivity:0.9, ensemble fold"
BEST_POINT = "f1, validation fold"
CONFIG = {"fusion": "concat", "n_branches": 2, "branch.depths": [4, 3], "branch.width": 32,
          "train.loss": "focal", "train.lr": 0.0031, "branches.rhythm.depths": [3, 2]}


def _members(n_members: int = 3, n: int = 400, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(member probabilities (M, N, C), labels (N, C)): members that see the labels through
    their own noise."""
    rng = np.random.default_rng(seed)
    y = rng.random((n, len(LABELS))) < np.geomspace(0.05, 0.4, len(LABELS))
    z = (y - 0.2) * 2.5 + rng.normal(0, 1.0, (n_members, n, len(LABELS)))
    return 1 / (1 + np.exp(-z)), y


def write_sample_report(out: Path) -> Path:
    """A report as `ecgtune ensemble` writes it, from synthetic member predictions (no model,
    no search), with a budget's quality-cost figure."""
    probs, y = _members()
    before = probs.mean(axis=0)
    after = PerLabelCalibrator().fit(before, y).predict(before)
    rows = [ReportRow("ensemble", "test", after, np.full(len(LABELS), 0.3), "3 members",
                      thresholds_by=ENSEMBLE_POINT),
            ReportRow("best single trial", "best_trial", probs[0], np.full(len(LABELS), 0.5),
                      "t001", thresholds_by=BEST_POINT)]
    member_rows = [
        MemberRow("t001-aaaa", "t001 concat d4-3 w32", 0.5, 2, 0.4123, 0.3987,
                  config_summary(CONFIG), 0.0516, 3.25),
        MemberRow("t004-bbbb", "t004 late d3-2 w16", 0.5, 2, 0.3999, 0.3811, "late fusion",
                  0.0212, 1.5),
        MemberRow("t002-cccc", "t002 independent d3-2 w16", 0.0, 0, 0.3512, 0.3402,
                  "independent fusion", None, None, seed_style=True),
    ]
    out.mkdir(parents=True, exist_ok=True)
    budget = plot_quality_cost(
        [{"cost": 0.05, "score": 0.40, "kind": "member", "chosen": False, "label": "t001"},
         {"cost": 0.07, "score": 0.42, "kind": "ensemble", "chosen": True, "label": "t001+t004"}],
        0.08, "summed forward GFLOP per 10 s record", "macro_auprc", out / "budget.png")
    write_ensemble_report(
        out, y, rows, before, LABELS, [calibration_summary("test", 9, y, before, after)],
        ["platt"] * len(LABELS), title="Ensemble of search 'demo': test fold",
        notes=[operating_point_note("sensitivity:0.9", BEST_POINT) or ""], n_boot=30,
        policies=PolicySet.parse("sensitivity:0.9").for_labels(LABELS), members=member_rows,
        extra_figures=[Figure.read(budget, "quality against cost")])
    return out / "report.html"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample_report(tmp_path_factory.mktemp("report-page") / "report")


def test_the_page_carries_its_figures_and_loads_nothing(report):
    page = report.read_text()
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 4  # reliability, PR curves, per-label F1, the budget's view
    for data in images:
        png = base64.b64decode(data)
        assert png.startswith(PNG) and len(png) > 5_000
    # Nothing fetched: no address, no script, no stylesheet or image by reference.
    assert "http" not in page and "<script" not in page and "<link" not in page
    assert re.findall(r'src="(?!data:image/png;base64,)', page) == []
    assert "Reliability of the ensemble before and after calibration" in page
    markdown = report.with_suffix(".md").read_text()
    for name in ("reliability.png", "pr_curves.png", "f1_per_label.png", "budget.png"):
        assert f"]({name})" in markdown and (report.parent / name).is_file()


def test_members_table_has_weight_trial_config_score_and_cost(report):
    page = report.read_text()
    section = page[page.index("<h2>Members</h2>"):]
    section = section[: section.index("</table>")]
    for header in ("member", "trial run", "weight", "val AUPRC", "ensemble-fold macro_auprc",
                   "GFLOP", "CPU ms", "config"):
        assert f"<th>{header}</th>" in section
    assert ("<tr><td>t001-aaaa</td><td>t001 concat d4-3 w32</td><td>0.500</td><td>2</td>"
            "<td>0.4123</td><td>0.3987</td><td>0.052</td><td>3.2</td>") in section
    assert ("concat fusion, 2 branches, depths 4-3, width 32, focal loss, lr 0.0031, own "
            "settings for rhythm") in section
    assert "<td>0.000</td>" in section and "independent fusion (seed-style)" in section
    assert "2 of 3 candidates carry weight" in section
    assert "costs 0.073 GFLOP and 4.8 CPU ms per 10 s record" in section


def test_every_threshold_dependent_column_names_its_operating_point(report):
    page = report.read_text()
    assert "<th>thresholds by</th>" in page
    assert f"<td>{ENSEMBLE_POINT}</td>" in page and f"<td>{BEST_POINT}</td>" in page
    assert f"<th>ensemble [{ENSEMBLE_POINT}]</th><th>best single trial [{BEST_POINT}]</th>" in page
    assert "<h2>Per-label AUROC" in page and "<th>ensemble</th><th>best single trial</th>" in page
    assert "at different operating points: the ensemble&#x27;s thresholds follow " \
           "sensitivity:0.9 on the ensemble fold, the best single trial&#x27;s f1, " \
           "validation fold" in page
    assert operating_point_note("f1", BEST_POINT) is None


@pytest.mark.parametrize(("value", "text"), [(-0.0004, "0.000"), (-0.0, "0.000"),
                                             (0.0004, "0.000"), (-0.0123, "-0.012"),
                                             (0.6504, "0.650")])
def test_negative_zero_is_never_printed(value, text):
    assert fixed(value) == text


def test_no_negative_zero_in_the_page(report):
    for path in (report, report.with_suffix(".md")):
        assert not re.search(r"-0\.0+(?!\d*[1-9])\b", path.read_text())


# ---------------------------------------------------------------------------------------------
# In a browser, from disk, with no network


@pytest.mark.slow
@pytest.mark.browser
def test_report_opened_from_disk_shows_its_figures(report, tmp_path):
    """Debian's headless Chromium opens report.html as a file (no server, network off) and
    every figure has loaded: an image that failed would have a natural width of 0."""
    # Any request leaving the machine fails: the page must not need one.
    driver = headless_chromium(tmp_path / "profile", "--window-size=1400,1000",
                               "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>")
    try:
        driver.get(report.resolve().as_uri())
        deadline = 30.0
        images: list = []
        while deadline > 0:  # decoding data: URIs is quick, but not synchronous
            images = driver.execute_script(
                "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, "
                "i.naturalHeight, i.getBoundingClientRect().width, i.alt]);")
            if images and all(done for done, *_ in images):
                break
            time.sleep(0.5)
            deadline -= 0.5
        assert len(images) == 4, images
        for done, width, height, shown, alt in images:
            assert done and width > 0 and height > 0, (alt, width, height)
            assert shown > 100, (alt, shown)  # laid out on the page, not a 0-wide box
        title = driver.execute_script("return document.title")
        assert title == "Ensemble of search 'demo': test fold"
        driver.save_screenshot(str(tmp_path / "report.png"))
        assert (tmp_path / "report.png").read_bytes().startswith(PNG)
    finally:
        driver.quit()
