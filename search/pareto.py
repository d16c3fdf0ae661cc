"""The quality-cost Pareto front of a multi-objective search (`--objective auprc,gflops`):
which trials no other trial beats on quality and cost at once, as a table and a plot that
the search's parent run logs.

Costs are compared at a stated resolution, `COST_RTOL` (1%): two costs within it of each
other count as equal, so quality decides between them. A GFLOP count is exact, but a
difference of a millionth of a GFLOP (a bias term) costs nothing anyone can measure, and a
measured CPU time varies by more than 1% from run to run; without the tolerance such a
difference would put the worse model on the front and call the better one dominated."""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecgtune.search import metric_keys as K

__all__ = ["COST_RTOL", "FRONT_CSV", "FRONT_PNG", "FrontRow", "front_rows",
           "log_pareto_front", "pareto_front", "plot_pareto_front", "write_front_csv"]

FRONT_CSV = "pareto_front.csv"
FRONT_PNG = "pareto_front.png"
# Cost names (searcher.OBJECTIVES) -> the reported metric
COST_METRICS = {"gflops": K.COST_GFLOPS, "cpu_ms": K.COST_CPU_MS, "params": K.COST_PARAMS}
# Two costs within this fraction of the larger one are the same cost (see the module docstring).
COST_RTOL = 0.01
RESOLUTION_NOTE = f"costs within {COST_RTOL:.0%} of each other count as equal"


def _cost_cmp(x: float, y: float, rtol: float) -> int:
    """-1 when cost ``x`` is lower than ``y`` beyond the tolerance, 1 when higher, 0 when
    they are equal within it."""
    if abs(x - y) <= rtol * max(abs(x), abs(y)):
        return 0
    return -1 if x < y else 1


def pareto_front(quality: Sequence[float], costs: Sequence[Sequence[float]],
                 rtol: float = COST_RTOL) -> list[bool]:
    """For each point, whether it is on the front: no other point has quality >= and every
    cost <= with at least one strict (higher quality is better, lower cost is better), costs
    compared within ``rtol``: between two points whose costs are equal within it, the higher
    quality dominates."""
    points = [(q, tuple(c)) for q, c in zip(quality, costs, strict=True)]

    def dominates(a: tuple[float, tuple[float, ...]], b: tuple[float, tuple[float, ...]]) -> bool:
        order = [_cost_cmp(x, y, rtol) for x, y in zip(a[1], b[1], strict=True)]
        no_worse = a[0] >= b[0] and all(o <= 0 for o in order)
        better = a[0] > b[0] or any(o < 0 for o in order)
        return no_worse and better

    return [not any(dominates(other, p) for other in points) for p in points]


@dataclass(frozen=True)
class FrontRow:
    trial: int
    trial_id: str
    quality: float  # the trial's best validation macro AUPRC
    costs: Mapping[str, float]  # cost name -> value
    on_front: bool


def front_rows(trials: Sequence[Any], cost_names: Sequence[str]) -> list[FrontRow]:
    """Rows for every trial with a score and all the costs (`TrialSummary`-like objects with
    `index`, `trial_id`, `best_score`, `cost`), best quality first."""
    scored = [t for t in trials if t.best_score is not None
              and all(COST_METRICS[n] in t.cost for n in cost_names)]
    costs = [[float(t.cost[COST_METRICS[n]]) for n in cost_names] for t in scored]
    front = pareto_front([float(t.best_score) for t in scored], costs)
    rows = [FrontRow(t.index, t.trial_id, float(t.best_score), dict(zip(cost_names, c,
                                                                         strict=True)), f)
            for t, c, f in zip(scored, costs, front, strict=True)]
    return sorted(rows, key=lambda r: (-r.quality, r.trial))


def write_front_csv(rows: Sequence[FrontRow], cost_names: Sequence[str], path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial", "trial_id", "val_macro_auprc", *cost_names, "pareto"])
        for r in rows:
            writer.writerow([r.trial, r.trial_id, f"{r.quality:.6f}",
                             *(f"{r.costs[n]:.6g}" for n in cost_names), int(r.on_front)])
    return path


def plot_pareto_front(rows: Sequence[FrontRow], cost_name: str, path: Path) -> Path:
    """Quality against the first cost; the front as a step line, every trial labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), constrained_layout=True)
    for on_front, colour, label in ((False, "tab:gray", "dominated"),
                                    (True, "tab:red", "Pareto front")):
        pts = [r for r in rows if r.on_front == on_front]
        ax.scatter([r.costs[cost_name] for r in pts], [r.quality for r in pts], c=colour,
                   label=label, zorder=3)
    front = sorted((r for r in rows if r.on_front), key=lambda r: r.costs[cost_name])
    ax.step([r.costs[cost_name] for r in front], [r.quality for r in front], where="post",
            c="tab:red", lw=1)
    for r in rows:
        ax.annotate(str(r.trial), (r.costs[cost_name], r.quality), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel({"gflops": "forward GFLOP per 10 s record", "cpu_ms": "CPU ms per record",
                   "params": "parameters"}.get(cost_name, cost_name))
    ax.set_ylabel("best validation macro AUPRC")
    ax.set_title(f"Quality against cost (numbers: trial index; {RESOLUTION_NOTE})", fontsize=10)
    ax.legend(loc="lower right")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def log_pareto_front(client: Any, run_id: str, trials: Sequence[Any],
                     cost_names: Sequence[str]) -> list[FrontRow]:
    """Log the table (CSV) and the plot under the run's `search/` artifacts; returns the rows."""
    rows = front_rows(trials, cost_names)
    if not rows:
        return rows
    with tempfile.TemporaryDirectory() as tmp:
        client.log_artifact(run_id, str(write_front_csv(rows, cost_names, Path(tmp) / FRONT_CSV)),
                            "search")
        client.log_artifact(run_id, str(plot_pareto_front(rows, cost_names[0],
                                                          Path(tmp) / FRONT_PNG)), "search")
    client.log_metric(run_id, "search/pareto_trials", sum(r.on_front for r in rows))
    return rows
