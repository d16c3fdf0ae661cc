"""Ensembles held to a compute budget (`ecgtune ensemble --max-gflops G --max-ms T`).

A member's cost is what its trial logged (search.cost: forward GFLOP and measured CPU ms per
10 s record); an ensemble costs the sum over the members it actually uses (weight > 0; a
member picked twice runs once). Selection under a budget: members that alone exceed it are
left out, the usual selection runs on the rest, and while its ensemble is over budget one
member at a time is eliminated, the one whose removal keeps the best ensemble-fold score
(backward elimination: a single member always fits, so it ends). Every ensemble tried is a
candidate in the report's quality-vs-cost table.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ecgtune.ensembles.errors import EnsembleError
from ecgtune.search import metric_keys as K

__all__ = ["CANDIDATES_CSV", "Budget", "Candidate", "MemberCost", "member_costs",
           "select_within_budget", "write_candidates_csv"]

CANDIDATES_CSV = "budget_candidates.csv"


@dataclass(frozen=True)
class MemberCost:
    gflops: float  # forward, per 10 s record
    cpu_ms: float  # measured CPU inference per record (in its trial)


@dataclass(frozen=True)
class Budget:
    max_gflops: float = 0.0  # 0: no limit
    max_ms: float = 0.0

    @property
    def active(self) -> bool:
        return self.max_gflops > 0 or self.max_ms > 0

    def fits(self, cost: MemberCost) -> bool:
        return ((self.max_gflops <= 0 or cost.gflops <= self.max_gflops)
                and (self.max_ms <= 0 or cost.cpu_ms <= self.max_ms))

    def describe(self) -> str:
        parts = [f"{self.max_gflops:g} GFLOP" if self.max_gflops > 0 else "",
                 f"{self.max_ms:g} CPU ms" if self.max_ms > 0 else ""]
        return " and ".join(p for p in parts if p) + " per record"


@dataclass(frozen=True)
class Candidate:
    members: tuple[str, ...]  # the members used (weight > 0)
    score: float  # the selection metric on the ensemble fold
    cost: MemberCost  # summed over `members`
    fits: bool
    chosen: bool = False


def total_cost(costs: Sequence[MemberCost], used: Sequence[int]) -> MemberCost:
    return MemberCost(float(sum(costs[i].gflops for i in used)),
                      float(sum(costs[i].cpu_ms for i in used)))


def member_costs(client: Any, members: Sequence[Any], need_ms: bool) -> list[MemberCost]:
    """Each member's cost from its trial run's metrics; a trial from before cost logging
    gets its GFLOP counted from its config (exact) and, when `need_ms`, its CPU ms measured
    here."""
    from ecgtune.search.cost import measure_cpu_ms, model_cost

    costs = []
    for member in members:
        metrics = client.get_run(member.trial.run_id).data.metrics
        gflops, ms = metrics.get(K.COST_GFLOPS), metrics.get(K.COST_CPU_MS)
        if gflops is None:
            spec = member.spec
            gflops = model_cost(spec.config, spec.num_labels, spec.label_groups,
                                spec.group_names, time_it=False).gflops
        if ms is None:
            ms = measure_cpu_ms(member.model.cpu()) if need_ms else 0.0
        costs.append(MemberCost(float(gflops), float(ms)))
    return costs


def _fit(probs: np.ndarray, y: np.ndarray, names: Sequence[str], pool: Sequence[int],
         fit_options: Any, sources: Any = None) -> Any:
    from ecgtune.ensembles.build.selection import EnsembleSelector

    return EnsembleSelector(fit_options).fit(probs[list(pool)], y,
                                             names=[names[i] for i in pool], sources=sources)


def select_within_budget(probs: np.ndarray, y: np.ndarray, names: Sequence[str],
                         costs: Sequence[MemberCost], budget: Budget,
                         fit_options: Any, sources: Any = None,
                         ) -> tuple[list[int], list[Candidate]]:
    """The member pool whose selected ensemble fits `budget` (indices into `names`) and every
    candidate tried (single members first, then ensembles; the chosen one marked).
    ``sources``: the records' sources, for a selection by source."""
    singles = [Candidate((n,), float("nan"), c, budget.fits(c)) for n, c in zip(names, costs,
                                                                                strict=True)]
    pool = [i for i, c in enumerate(costs) if budget.fits(c)]
    if not pool:
        cheapest = min(range(len(costs)), key=lambda i: (costs[i].gflops, costs[i].cpu_ms))
        c = costs[cheapest]
        raise EnsembleError(
            f"no member fits the budget of {budget.describe()}: the cheapest, "
            f"{names[cheapest]}, costs {c.gflops:.3g} GFLOP and {c.cpu_ms:.3g} CPU ms per record")
    tried: list[Candidate] = []

    def attempt(candidate_pool: list[int]) -> tuple[Candidate, Any]:
        selector = _fit(probs, y, names, candidate_pool, fit_options, sources)
        used = [candidate_pool[int(j)] for j in selector.selected_]
        cost = total_cost(costs, used)
        cand = Candidate(tuple(names[i] for i in used), float(selector.score_), cost,
                         budget.fits(cost))
        tried.append(cand)
        return cand, selector

    current, selector = attempt(pool)
    while not current.fits:
        used = [pool[int(j)] for j in selector.selected_]
        options = [(attempt([i for i in pool if i != drop]), drop) for drop in used]
        fitting = [o for o in options if o[0][0].fits]
        (current, selector), drop = max(fitting or options, key=lambda o: o[0][0].score)
        pool = [i for i in pool if i != drop]
    single_scores = dict(zip(names, _fit(probs, y, names, range(len(names)), fit_options,
                                         sources).member_scores_, strict=True))
    singles = [Candidate(s.members, float(single_scores[s.members[0]]), s.cost, s.fits)
               for s in singles]
    final = Candidate(current.members, current.score, current.cost, True, chosen=True)
    ensembles = [c for c in tried if c != current] + [final]
    return pool, [*singles, *ensembles]


def write_candidates_csv(candidates: Sequence[Candidate], budget: Budget, metric: str,
                         path: Path) -> Path:
    """The report's quality-vs-cost table: every member and every ensemble tried."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["kind", "members", f"ensemble_fold_{metric}", "gflops", "cpu_ms",
                         "within_budget", "chosen"])
        for c in candidates:
            writer.writerow(["member" if len(c.members) == 1 and not c.chosen else "ensemble",
                             ";".join(c.members), f"{c.score:.6f}", f"{c.cost.gflops:.6g}",
                             f"{c.cost.cpu_ms:.6g}", int(c.fits), int(c.chosen)])
        writer.writerow(["budget", "", "", f"{budget.max_gflops:g}", f"{budget.max_ms:g}", "",
                         ""])
    return path
