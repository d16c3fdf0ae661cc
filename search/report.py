"""The table printed at the end of `ecgtune search`."""

from __future__ import annotations

from ecgtune.search.run import SearchResult, TrialSummary
from ecgtune.search.tracking import browse_hint, trial_run_name

# Ray's trial states as the table words them; only TERMINATED trials are done (an interrupted
# search leaves RUNNING, PENDING and PAUSED ones, which `--resume` continues).
_STATUS_WORDS = {"RUNNING": "running", "PENDING": "pending", "PAUSED": "paused"}


def trial_status(trial: TrialSummary) -> str:
    if trial.status == "ERROR" or trial.error:
        return "error"
    if trial.status == "TERMINATED":
        return "early stop" if trial.early_stopped else "done"
    return _STATUS_WORDS.get(trial.status, trial.status.lower())


def print_search_summary(result: SearchResult) -> None:
    rows = sorted(result.trials, key=lambda t: -(t.best_score if t.best_score is not None else -1))
    print(f"\nSearch {result.name!r}: {len(rows)} trials, {result.trial_epochs} trial-epochs"
          f"{'' if result.complete else ' (interrupted: --resume continues it)'}")
    print(f"{'trial':<34} {'status':<12} {'epochs':>6} {'best val AUPRC':>15}")
    for t in rows:
        status = trial_status(t)
        score = f"{t.best_score:.4f}" if t.best_score is not None else "-"
        print(f"{trial_run_name(t.index, t.config):<34} {status:<12} {t.epochs:>6} {score:>15}")
    for t in rows:
        if t.error:
            print(f"  {t.trial_id}: {t.error}")
    if len(result.objective) > 1:
        from ecgtune.search.pareto import RESOLUTION_NOTE, front_rows

        costs = list(result.objective[1:])
        front = [r for r in front_rows(result.trials, costs) if r.on_front]
        points = ", ".join(f"t{r.trial:03d} ({r.quality:.4f}; "
                           + "; ".join(f"{r.costs[c]:.3g} {c}" for c in costs) + ")"
                           for r in front)
        print(f"Pareto front (best val AUPRC vs {', '.join(costs)}; {RESOLUTION_NOTE}): "
              f"{points or '-'}")
    print(f"\nRay results: {result.experiment_path}")
    print(f"Browse the runs: {browse_hint(result.tracking_uri, result.experiment_id)}")
