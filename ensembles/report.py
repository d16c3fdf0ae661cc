"""The fold-9 report: one row per model (ensemble and comparators), calibration before/after,
written as JSON + Markdown + HTML with figures. Fold 9 is only ever evaluated here.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ecgtune.ensembles.evaluation import brier, ece, evaluate_with_ci, write_report
from ecgtune.ensembles.plots import save_report_figures

__all__ = [
    "CalibrationSummary",
    "ReportRow",
    "calibration_summary",
    "write_ensemble_report",
]

REPORT_STEM = "report"


@dataclass(frozen=True)
class ReportRow:
    """A model's fold-9 probabilities and the thresholds it is judged at."""

    name: str
    key: str  # short slug for MLflow metric prefixes
    probs: np.ndarray
    thresholds: np.ndarray
    note: str = ""


@dataclass(frozen=True)
class CalibrationSummary:
    """Macro ECE / Brier of the ensemble before and after calibration on one fold."""

    fold: int
    ece_before: float
    ece_after: float
    brier_before: float
    brier_after: float

    def to_dict(self) -> dict[str, float | int]:
        return {"fold": self.fold, "ece_before": self.ece_before, "ece_after": self.ece_after,
                "brier_before": self.brier_before, "brier_after": self.brier_after}


def calibration_summary(
    fold: int, y: np.ndarray, before: np.ndarray, after: np.ndarray
) -> CalibrationSummary:
    return CalibrationSummary(fold, float(ece(y, before)), float(ece(y, after)),
                              float(brier(y, before)), float(brier(y, after)))


def _calibration_markdown(summaries: Sequence[CalibrationSummary],
                          methods: Sequence[str], label_names: Sequence[str]) -> str:
    lines = ["## Ensemble calibration (macro over labels)", "",
             "| fold | ECE before | ECE after | Brier before | Brier after |",
             "|---|---|---|---|---|"]
    for s in summaries:
        role = "8 (fitted)" if s.fold == 8 else f"{s.fold} (held out)"
        lines.append(f"| {role} | {s.ece_before:.4f} | {s.ece_after:.4f} | "
                     f"{s.brier_before:.4f} | {s.brier_after:.4f} |")
    lines += ["", "Calibration method per label: " + ", ".join(
        f"{n}: {m}" for n, m in zip(label_names, methods, strict=True)), ""]
    return "\n".join(lines)


def _append_section(paths: Mapping[str, Path], markdown: str, notes: Sequence[str]) -> None:
    """Add the calibration table and notes to the Markdown and HTML reports."""
    extra_md = markdown + ("\n" + "\n".join(f"- {n}" for n in notes) + "\n" if notes else "")
    paths["markdown"].write_text(paths["markdown"].read_text() + "\n" + extra_md)
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line]
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
    table = "<h2>Ensemble calibration (macro over labels)</h2><table>"
    table += "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cells[0]) + "</tr>"
    for r in cells[1:]:
        table += "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
    table += "</table>"
    methods_line = next(line for line in markdown.splitlines() if line.startswith("Calibration"))
    table += f"<p>{html.escape(methods_line)}</p>"
    if notes:
        table += "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"
    page = paths["html"].read_text()
    paths["html"].write_text(page.replace("</body>", table + "</body>", 1))


def write_ensemble_report(
    out_dir: str | Path,
    y: np.ndarray,
    rows: Sequence[ReportRow],
    uncalibrated: np.ndarray,
    label_names: Sequence[str],
    calibration: Sequence[CalibrationSummary],
    calibration_methods: Sequence[str],
    title: str,
    notes: Sequence[str] = (),
    summary: Mapping[str, Any] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    calibrated_row: str = "ensemble",
) -> tuple[dict[str, dict[str, Any]], list[Path]]:
    """Evaluate every row on fold 9 (bootstrap CIs), write ``report.{json,md,html}``, the
    figures and ``summary.json`` into ``out_dir``; returns (results by row name, files).
    The reliability figure compares ``uncalibrated`` with the ``calibrated_row``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {
        row.name: evaluate_with_ci(y, row.probs, row.thresholds, label_names, n_boot=n_boot,
                                   seed=seed)
        for row in rows
    }
    paths = write_report(results, out / REPORT_STEM, label_names, title=title)
    _append_section(paths, _calibration_markdown(calibration, calibration_methods, label_names),
                    notes)
    figures = save_report_figures(
        out, y, uncalibrated, {row.name: row.probs for row in rows}, results, label_names,
        calibrated_row=calibrated_row,
    )
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps({
        **dict(summary or {}),
        "rows": {row.name: {"key": row.key, "note": row.note} for row in rows},
        "calibration": [s.to_dict() for s in calibration],
        "calibration_methods": dict(zip(label_names, calibration_methods, strict=True)),
        "notes": list(notes),
    }, indent=2, default=float) + "\n")
    return results, [*paths.values(), *figures, summary_path]
