"""The per-trial validation figure logged to MLflow: per-label F1 at the tuned thresholds and
precision-recall curves, read at a glance in the run's artifact view."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def plot_trial_validation(predictions: str | Path, thresholds: Sequence[float] | np.ndarray,
                          path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ecgtune.search import metrics as M

    with np.load(predictions, allow_pickle=False) as data:
        probs, labels, names = data["probs"], data["labels"], [str(n) for n in data["label_names"]]
    cut = np.asarray(thresholds, dtype=float)
    f1 = M.f1_per_label(labels, probs, cut)
    fig, (ax_f1, ax_pr) = plt.subplots(1, 2, figsize=(14, 5), constrained_layout=True)
    ax_f1.bar(range(len(names)), f1, color="tab:blue")
    ax_f1.set_xticks(range(len(names)), names, rotation=60, ha="right")
    ax_f1.set_ylim(0, 1)
    ax_f1.set_ylabel("F1 at tuned threshold")
    ax_f1.set_title(f"Validation F1 per label (macro {np.nanmean(f1):.3f})")
    cmap = plt.get_cmap("tab20")
    for j, name in enumerate(names):
        precision, recall, _ = M.pr_curve(labels[:, j], probs[:, j])
        if len(precision):  # a label without positives has no curve
            ax_pr.plot(recall, precision, lw=1, color=cmap(j % 20), label=name)
    ax_pr.set_xlabel("recall")
    ax_pr.set_ylabel("precision")
    ax_pr.set_xlim(0, 1)
    ax_pr.set_ylim(0, 1.02)
    ax_pr.set_title("Validation precision-recall curves")
    ax_pr.legend(fontsize=7, ncol=2, loc="lower left")
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
