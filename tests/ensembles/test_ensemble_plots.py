"""ecgtune.ensembles.evaluate.plots: every figure is written as a non-empty PNG."""

from __future__ import annotations

import numpy as np

from ecgtune.ensembles.build.calibration import PerLabelCalibrator
from ecgtune.ensembles.evaluate.metrics import evaluate
from ecgtune.ensembles.evaluate.plots import (
    plot_f1_bars,
    plot_pr_curves,
    plot_reliability,
    save_report_figures,
)
from ecgtune.search import metrics as M

PNG = b"\x89PNG\r\n\x1a\n"
LABELS = ["AFIB", "SB", "CRBBB", "LQV"]


def _is_png(path) -> bool:
    data = path.read_bytes()
    return data.startswith(PNG) and len(data) > 5_000


def test_figures_are_written(tmp_path, members):
    probs, y = members(n_members=2, n=500, c=4, seed=0)
    before = probs[0]
    after = PerLabelCalibrator().fit(before, y).predict(before)
    y[:, 3] = False  # a label without positives must not break the figures
    paths = [
        plot_reliability(y, before, after, LABELS, tmp_path / "rel.png"),
        plot_pr_curves(
            y, {"ensemble": after, "best single": probs[1]}, LABELS, tmp_path / "sub" / "pr.png"
        ),
        plot_f1_bars(
            {"ensemble": M.f1_per_label(y, after, 0.3), "baseline": np.full(4, 0.2)},
            LABELS,
            tmp_path / "f1.png",
        ),
    ]
    for path in paths:
        assert path.exists() and _is_png(path)


def test_save_report_figures(tmp_path, members):
    probs, y = members(n_members=2, n=400, c=4, seed=1)
    rows = {"ensemble": probs[0], "best single trial": probs[1]}
    results = {k: evaluate(y, v, 0.5, LABELS) for k, v in rows.items()}
    paths = save_report_figures(tmp_path, y, probs[1], rows, results, LABELS)
    assert [p.name for p in paths] == ["reliability.png", "pr_curves.png", "f1_per_label.png"]
    assert all(_is_png(p) for p in paths)
