"""Model cost (parameters, GFLOP, CPU ms), the objective option and the Pareto front."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest
import torch

from ecgtune.components import build_model, get_preset
from ecgtune.search import metric_keys as K
from ecgtune.search.cost import RECORD_SAMPLES, count_gflops, measure_cpu_ms, model_cost
from ecgtune.search.options import OBJECTIVES, parse_objective
from ecgtune.search.pareto import (
    COST_RTOL,
    front_rows,
    pareto_front,
    plot_pareto_front,
    write_front_csv,
)

GROUPS = [list(range(0, 5)), list(range(5, 10)), list(range(10, 16)), list(range(16, 20))]
NAMES = ["rhythm", "duration", "amplitude", "morphology"]


def test_seed_cost_matches_the_design_figure():
    # DESIGN: 7.36 GFLOP forward per 12 x 4,096 input; the cost unit is a 10 s record.
    cost = model_cost(get_preset("seed"), 20, None, time_it=False)
    assert cost.params == 7_205_204
    assert cost.gflops == pytest.approx(7.36 * RECORD_SAMPLES / 4096, rel=0.01)
    assert cost.cpu_ms == 0.0


def test_meta_and_cpu_counts_agree_and_per_branch_settings_count():
    # Without attention (its fused eval fast path on the CPU is invisible to the counter,
    # which is why model_cost counts on the meta device) both passes count the same.
    plain = get_preset("tiny")
    assert model_cost(plain, 20, None, time_it=False).gflops == pytest.approx(
        count_gflops(build_model(plain, 20)), rel=1e-9)
    from ecgtune.components import ModelConfig

    config = get_preset("tiny-multi")

    deeper = ModelConfig.from_flat({"branches.rhythm.depths": "3-2-2",
                                    "branches.rhythm.width": 32}, base=config)
    assert (model_cost(deeper, 20, GROUPS, NAMES, time_it=False).gflops
            > model_cost(config, 20, GROUPS, NAMES, time_it=False).gflops)


def test_an_ssm_trunk_counts_its_fft_convolution():
    # The counter has no formula for rfft/irfft; without ours the state-space kernel is free.
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(get_preset("ssm-tiny"), 20)
    x = torch.zeros(1, 12, RECORD_SAMPLES)
    with torch.no_grad(), FlopCounterMode(display=False) as bare:
        model.eval()(x)
    assert count_gflops(model) > bare.get_total_flops() / 1e9 * 1.01


def test_cpu_ms_is_measured_and_metrics_use_the_shared_keys():
    model = build_model(get_preset("tiny"), 20)
    assert measure_cpu_ms(model, batch=1, repeats=1) > 0
    cost = model_cost(get_preset("tiny"), 20, None, threads=1)
    assert cost.cpu_ms > 0
    assert set(cost.metrics()) == {K.COST_PARAMS, K.COST_GFLOPS, K.COST_CPU_MS}
    assert torch.get_num_threads() >= 1


def test_objective_option():
    assert parse_objective("auprc") == ("auprc",)
    assert parse_objective("auprc, gflops") == ("auprc", "gflops")
    assert OBJECTIVES["gflops"] == (K.COST_GFLOPS, "min")
    for bad, message in (("gflops", "start with auprc"), ("auprc,flops", "unknown objective"),
                         ("auprc,gflops,gflops", "each cost once"), ("", "unknown")):
        with pytest.raises(ValueError, match=message):
            parse_objective(bad)


def test_multi_objective_searcher_gets_both_metrics():
    from ecgtune.search.searcher import build_searcher
    from ecgtune.search.space import load_space

    searcher = build_searcher(load_space("tiny"), "tpe", 0, lambda c: None,
                              ("auprc", "gflops"))
    assert searcher.searcher.metric == [K.OBJECTIVE, K.COST_GFLOPS]
    assert searcher.searcher.mode == ["max", "min"]
    single = build_searcher(load_space("tiny"), "tpe", 0, lambda c: None)
    assert single.searcher.metric == K.OBJECTIVE


def test_pareto_front():
    quality = [0.5, 0.6, 0.6, 0.4, 0.7]
    cost = [[1.0], [2.0], [3.0], [0.5], [5.0]]
    assert pareto_front(quality, cost) == [True, True, False, True, True]
    # two costs: better on one keeps a point on the front
    assert pareto_front([0.5, 0.5], [[1.0, 2.0], [2.0, 1.0]]) == [True, True]
    assert pareto_front([0.5, 0.5], [[1.0, 1.0], [1.0, 1.0]]) == [True, True]


def test_pareto_costs_are_compared_at_one_percent_ties_broken_by_quality():
    # Two trials whose GFLOPs print alike (0.0516) and differ by a millionth: the better one
    # is on the front, the other dominated, whichever of them is the cheaper by that much.
    trials = [SimpleNamespace(index=3, trial_id="t003", best_score=0.285,
                              cost={K.COST_GFLOPS: 0.0516027}),
              SimpleNamespace(index=4, trial_id="t004", best_score=0.255,
                              cost={K.COST_GFLOPS: 0.0516017})]
    rows = {r.trial: r.on_front for r in front_rows(trials, ["gflops"])}
    assert rows == {3: True, 4: False}
    # Beyond the 1% resolution the cheaper one stays on the front.
    assert pareto_front([0.285, 0.255], [[0.0516], [0.0510]]) == [True, True]
    assert pareto_front([0.285, 0.255], [[0.0516], [0.0512]]) == [True, False]
    assert COST_RTOL == 0.01
    # Equal quality and equal cost within the tolerance: neither beats the other.
    assert pareto_front([0.3, 0.3], [[1.0], [1.005]]) == [True, True]


def test_front_table_and_plot(tmp_path):
    trials = [SimpleNamespace(index=i, trial_id=f"t{i}", best_score=q,
                              cost={K.COST_GFLOPS: g} if g is not None else {})
              for i, (q, g) in enumerate([(0.5, 1.0), (0.6, 2.0), (0.55, 3.0), (None, 1.0),
                                          (0.7, None)])]
    rows = front_rows(trials, ["gflops"])
    assert [r.trial for r in rows] == [1, 2, 0]  # scored and costed only, best first
    assert [r.on_front for r in rows] == [True, False, True]
    path = write_front_csv(rows, ["gflops"], tmp_path / "front.csv")
    table = list(csv.DictReader(path.open()))
    assert table[0] == {"trial": "1", "trial_id": "t1", "val_macro_auprc": "0.600000",
                        "gflops": "2", "pareto": "1"}
    png = plot_pareto_front(rows, "gflops", tmp_path / "front.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_search_summary_names_the_pareto_front(capsys):
    from ecgtune.search.report import print_search_summary
    from ecgtune.search.run import SearchResult, TrialSummary

    trials = [TrialSummary(i, f"id{i}", "TERMINATED", 2, q, False, {"fusion": "concat"},
                           cost={K.COST_GFLOPS: g})
              for i, (q, g) in enumerate([(0.5, 1.0), (0.6, 2.0), (0.55, 3.0)])]
    result = SearchResult("s", "/tmp/x", "sqlite:///m.db", "1", "p", trials, True,
                          ("auprc", "gflops"))
    print_search_summary(result)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("Pareto"))
    assert "t001 (0.6000; 2 gflops)" in line and "t000" in line and "t002" not in line
    print_search_summary(SearchResult("s", "/tmp/x", "sqlite:///m.db", "1", "p", trials, True))
    assert "Pareto" not in capsys.readouterr().out
