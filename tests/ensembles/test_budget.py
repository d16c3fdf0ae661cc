"""Ensemble selection under a compute budget (`--max-gflops`, `--max-ms`)."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import numpy as np
import pytest

from ecgtune.ensembles.build.budget import (
    Budget,
    MemberCost,
    member_costs,
    select_within_budget,
    total_cost,
    write_candidates_csv,
)
from ecgtune.ensembles.errors import EnsembleError, EnsembleOptionError
from ecgtune.ensembles.options import EnsembleOptions, FitOptions
from ecgtune.search import metric_keys as K

NAMES = [f"m{i}" for i in range(6)]
COSTS = [MemberCost(g, 10 * g) for g in (3.0, 1.0, 2.5, 0.8, 4.0, 1.2)]


@pytest.mark.parametrize("budget", [Budget(max_gflops=g) for g in (0.8, 2.0, 3.5, 5.0, 100.0)]
                         + [Budget(max_ms=20.0), Budget(max_gflops=4.0, max_ms=25.0)])
def test_selected_ensemble_fits_the_budget(members, budget):
    probs, y = members(n_members=6, seed=3)
    pool, candidates = select_within_budget(probs, y, NAMES, COSTS, budget, FitOptions())
    chosen = [c for c in candidates if c.chosen]
    assert len(chosen) == 1
    used = [NAMES.index(n) for n in chosen[0].members]
    assert set(used) <= set(pool)
    total = total_cost(COSTS, used)
    assert budget.fits(total) and total == chosen[0].cost
    assert budget.max_gflops <= 0 or total.gflops <= budget.max_gflops
    assert budget.max_ms <= 0 or total.cpu_ms <= budget.max_ms
    # every member is a candidate row, and no fitting candidate tried beats the chosen one
    assert [c.members[0] for c in candidates[:6]] == NAMES
    ensembles = [c for c in candidates[6:] if c.fits]
    assert all(c.score <= chosen[0].score + 1e-12 for c in ensembles)


def test_an_unlimited_budget_changes_nothing(members):
    from ecgtune.ensembles.build.selection import EnsembleSelector

    probs, y = members(n_members=6, seed=3)
    pool, candidates = select_within_budget(probs, y, NAMES, COSTS, Budget(max_gflops=1e9),
                                            FitOptions())
    plain = EnsembleSelector(FitOptions()).fit(probs, y, names=NAMES)
    chosen = next(c for c in candidates if c.chosen)
    assert pool == list(range(6))
    assert chosen.members == tuple(NAMES[i] for i in plain.selected_)


def test_no_member_fits(members):
    probs, y = members(n_members=6, seed=3)
    with pytest.raises(EnsembleError, match=r"cheapest, m3, costs 0\.8 GFLOP"):
        select_within_budget(probs, y, NAMES, COSTS, Budget(max_gflops=0.5), FitOptions())


def test_candidates_table(members, tmp_path):
    probs, y = members(n_members=6, seed=3)
    budget = Budget(max_gflops=2.0)
    _, candidates = select_within_budget(probs, y, NAMES, COSTS, budget, FitOptions())
    rows = list(csv.DictReader(write_candidates_csv(candidates, budget, "macro_auprc",
                                                    tmp_path / "c.csv").open()))
    assert [r["kind"] for r in rows[:6]] == ["member"] * 6
    assert sum(r["chosen"] == "1" for r in rows) == 1
    assert rows[-1]["kind"] == "budget" and rows[-1]["gflops"] == "2"


def test_costs_come_from_the_trial_runs_or_the_config():
    from ecgtune.components import build_model, get_preset
    from ecgtune.ensembles.ship.inference import MemberSpec
    from ecgtune.search.cost import model_cost

    runs = {"a": {K.COST_GFLOPS: 1.5, K.COST_CPU_MS: 7.0}, "b": {}}
    client = SimpleNamespace(get_run=lambda rid: SimpleNamespace(
        data=SimpleNamespace(metrics=runs[rid])))
    config = get_preset("tiny")
    spec = MemberSpec("b", config, 20, (tuple(range(20)),), 1024, "dataset")
    old = SimpleNamespace(trial=SimpleNamespace(run_id="b"), spec=spec,
                          model=build_model(config, 20))
    new = SimpleNamespace(trial=SimpleNamespace(run_id="a"))
    costs = member_costs(client, [new, old], need_ms=True)
    assert costs[0] == MemberCost(1.5, 7.0)
    assert costs[1].gflops == pytest.approx(model_cost(config, 20, None, time_it=False).gflops)
    assert costs[1].cpu_ms > 0


def test_budget_options_on_the_command_line():
    import argparse

    from ecgtune.ensembles.options import add_arguments, from_namespace

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--data", "d", "--name", "n", "--output", "o",
                              "--max-gflops", "2.5", "--max-ms", "40"])
    opts = from_namespace(args)
    assert (opts.max_gflops, opts.max_ms) == (2.5, 40.0)
    assert EnsembleOptions.create(data="d", name="n", output="o").max_gflops == 0.0
    with pytest.raises(EnsembleOptionError, match=r"--max-gflops must be >= 0, got -1\.0"):
        from_namespace(parser.parse_args(["--data", "d", "--name", "n", "--output", "o",
                                          "--max-gflops", "-1"]))
    assert np.isfinite(opts.max_gflops)
