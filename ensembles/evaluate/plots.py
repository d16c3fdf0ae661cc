"""Report figures as PNG files: reliability diagrams before/after calibration, per-label
precision-recall curves, per-label F1 bars comparing report rows, and an ensemble budget's
quality-cost view.

Uses matplotlib's Agg backend (set here, before pyplot is imported) so that figures render on
headless workers; every function returns the path it wrote.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from ecgtune.ensembles.evaluate.metrics import ece, reliability_curve
from ecgtune.search import metric_keys as K
from ecgtune.search import metrics as M

__all__ = ["plot_f1_bars", "plot_pr_curves", "plot_quality_cost", "plot_reliability",
           "save_report_figures"]

_DPI = 110


def _grid(n_panels: int, panel: float = 2.6) -> tuple[Any, np.ndarray]:
    cols = min(5, n_panels)
    rows = math.ceil(n_panels / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(panel * cols, panel * rows + 0.6), squeeze=False, sharex=True
    )
    for ax in axes.ravel()[n_panels:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def _reliability_panel(
    ax: Any, y: np.ndarray, curves: Mapping[str, np.ndarray], n_bins: int, title: str
) -> None:
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="0.6")
    for (name, p), color in zip(curves.items(), ("tab:gray", "tab:blue"), strict=False):
        rc = reliability_curve(y.ravel(), p.ravel(), n_bins)
        ok = rc.counts > 0
        score = ece(y.ravel(), p.ravel(), n_bins)
        ax.plot(
            rc.mean_predicted[ok],
            rc.fraction_positive[ok],
            marker="o",
            ms=3,
            lw=1.2,
            color=color,
            label=f"{name} (ECE {score:.3f})",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, loc="upper left")
    ax.tick_params(labelsize=7)


def plot_reliability(
    y: Any,
    probs_before: Any,
    probs_after: Any,
    label_names: Sequence[str],
    path: str | Path,
    n_bins: int = 15,
) -> Path:
    """Reliability diagrams before and after calibration: one panel with all labels pooled
    ("all labels") followed by one small panel per label, ECE in each legend."""
    y = np.asarray(y, dtype=bool)
    before = np.asarray(probs_before, dtype=np.float64)
    after = np.asarray(probs_after, dtype=np.float64)
    fig, axes = _grid(len(label_names) + 1)
    _reliability_panel(
        axes[0], y, {"before": before, "after": after}, n_bins, "all labels (pooled)"
    )
    for c, name in enumerate(label_names):
        _reliability_panel(
            axes[c + 1],
            y[:, c],
            {"before": before[:, c], "after": after[:, c]},
            n_bins,
            f"{name} (n+={int(y[:, c].sum())})",
        )
    fig.supxlabel("mean predicted probability")
    fig.supylabel("fraction of positives")
    fig.suptitle("Reliability before / after calibration")
    return _save(fig, path)


def plot_pr_curves(
    y: Any,
    probs_by_row: Mapping[str, Any],
    label_names: Sequence[str],
    path: str | Path,
) -> Path:
    """Precision-recall curve per label, one line per report row, AUPRC in the legend; the
    dotted line is the label's prevalence (a random ranking's precision)."""
    y = np.asarray(y, dtype=bool)
    fig, axes = _grid(len(label_names))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for c, name in enumerate(label_names):
        ax = axes[c]
        prevalence = float(y[:, c].mean())
        ax.axhline(prevalence, ls=":", lw=0.8, color="0.5")
        for i, (row, probs) in enumerate(probs_by_row.items()):
            p = np.asarray(probs, dtype=np.float64)[:, c]
            precision, recall, _ = M.pr_curve(y[:, c], p)
            if len(precision) == 0:
                continue
            ap = M.auprc_per_label(y[:, c], p)[0]
            ax.step(
                np.r_[0.0, recall],
                np.r_[precision[0], precision],
                where="pre",
                lw=1.1,
                color=colors[i % len(colors)],
                label=f"{row} (AP {ap:.3f})",
            )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{name} (prev. {prevalence:.1%})", fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="lower left")
        else:
            ax.text(0.5, 0.5, "no positives", ha="center", va="center", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.supxlabel("recall")
    fig.supylabel("precision")
    fig.suptitle("Precision-recall curves")
    return _save(fig, path)


def _or_nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def plot_f1_bars(
    f1_by_row: Mapping[str, Any],
    label_names: Sequence[str],
    path: str | Path,
) -> Path:
    """Grouped bars of per-label F1, one colour per row. Values may be arrays (C,) or
    `evaluate` results (their per-label F1 is used)."""
    rows = {}
    for name, value in f1_by_row.items():
        if isinstance(value, Mapping):
            # A label without an F1 (not assessable) gets no bar rather than a zero.
            rows[name] = [_or_nan(value["per_label"][lab].get(K.F1)) for lab in label_names]
        else:
            rows[name] = list(np.asarray(value, dtype=np.float64))
    n = len(label_names)
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(float(np.clip(3 + 0.22 * n * len(rows), 8, 16)), 4.5))
    x = np.arange(n)
    for i, (name, values) in enumerate(rows.items()):
        mean = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, values, width, label=f"{name} ({mean:.3f})")
    ax.set_xticks(x)
    ax.set_xticklabels(label_names, rotation=45, ha="right", fontsize=8)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(0, 1.15)  # headroom for the legend above the bars
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("F1")
    ax.set_title("Per-label F1 (macro mean in legend)")
    ax.legend(fontsize=8, loc="upper center", ncol=max(1, len(rows)), frameon=False)
    ax.grid(axis="y", lw=0.4, alpha=0.6)
    return _save(fig, path)


def plot_quality_cost(points: Sequence[Mapping[str, Any]], limit: float | None,
                      cost_label: str, metric: str, path: str | Path) -> Path:
    """Ensemble-fold score against cost of every member and every ensemble a budget tried
    (``points``: ``cost``, ``score``, ``kind`` "member" or "ensemble", ``chosen``, ``label``),
    the budget as a vertical line, the chosen ensemble ringed."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, marker, color in (("member", "o", "tab:gray"), ("ensemble", "s", "tab:blue")):
        pts = [p for p in points if p["kind"] == kind and np.isfinite(p["score"])]
        ax.scatter([p["cost"] for p in pts], [p["score"] for p in pts], marker=marker,
                   color=color, label=f"{kind}s tried", zorder=3)
    for p in points:
        if np.isfinite(p["score"]):
            ax.annotate(str(p["label"]), (p["cost"], p["score"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
    chosen = [p for p in points if p.get("chosen")]
    if chosen:
        ax.scatter([chosen[0]["cost"]], [chosen[0]["score"]], s=180, facecolors="none",
                   edgecolors="tab:red", linewidths=1.5, label="chosen", zorder=4)
    if limit:
        ax.axvline(limit, ls="--", color="tab:red", lw=1, label=f"budget {limit:g}")
    ax.set_xlabel(cost_label)
    ax.set_ylabel(f"ensemble-fold {metric}")
    ax.set_title("Quality against cost under the budget")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(lw=0.4, alpha=0.6)
    return _save(fig, path)


def save_report_figures(
    out_dir: str | Path,
    y: Any,
    probs_before: Any,
    probs_by_row: Mapping[str, Any],
    results_by_row: Mapping[str, Mapping[str, Any]],
    label_names: Sequence[str],
    calibrated_row: str = "ensemble",
) -> list[Path]:
    """The standard report figures into ``out_dir``: reliability of the uncalibrated
    ensemble vs ``probs_by_row[calibrated_row]``, PR curves and F1 bars of every row."""
    out = Path(out_dir)
    return [
        plot_reliability(
            y, probs_before, probs_by_row[calibrated_row], label_names, out / "reliability.png"
        ),
        plot_pr_curves(y, probs_by_row, label_names, out / "pr_curves.png"),
        plot_f1_bars(results_by_row, label_names, out / "f1_per_label.png"),
    ]
