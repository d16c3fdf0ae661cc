"""`search --objective worst-source|mean-source`: per-source macro AUPRC on the validation
fold, its worst and mean reported by each trial, and the searcher, ASHA, the checkpoints kept
and the trial's best score all following the chosen quality term."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ecgtune.components import get_preset
from ecgtune.data_prep import fold_roles, load_shards, prepare, read_manifest
from ecgtune.data_prep.synth import synthesize
from ecgtune.search import metric_keys as K
from ecgtune.search import metrics as M
from ecgtune.search.config import TrainConfig, TrialConfig
from ecgtune.search.options import SearchOptions, objective_metric, parse_objective
from ecgtune.search.training import Trainer


def test_objective_names() -> None:
    assert parse_objective("worst-source") == ("worst-source",)
    assert parse_objective("mean-source,gflops") == ("mean-source", "gflops")
    assert objective_metric("worst-source,cpu_ms") == K.WORST_SOURCE_AUPRC
    assert objective_metric("mean-source") == K.MEAN_SOURCE_AUPRC
    assert objective_metric("auprc") == K.OBJECTIVE
    for bad in ("auprc,worst-source", "gflops,worst-source", "worst-source,worst-source"):
        with pytest.raises(ValueError, match=r"start with auprc .or another quality term"):
            parse_objective(bad)
    with pytest.raises(Exception, match="--objective: unknown objective worst"):
        SearchOptions(data=Path("d"), objective="worst")
    assert K.source_key("site-a") == "val/source_auprc/site-a"


def test_per_source_macro_auprc_is_macro_auprc_of_each_source() -> None:
    rng = np.random.default_rng(0)
    y = rng.random((300, 4)) < 0.3
    p = np.clip(0.4 * y + rng.normal(0.3, 0.2, y.shape), 0, 1)
    sources = np.array(["a", "b", "c"])[rng.integers(0, 3, 300)]
    y[sources == "c"] = False  # nothing to rank there: left out
    per = M.per_source_macro_auprc(y, p, sources)
    assert sorted(per) == ["a", "b"]
    for s, value in per.items():
        assert value == pytest.approx(M.macro_auprc(y[sources == s], p[sources == s]))


@pytest.fixture(scope="module")
def site_folds(tmp_path_factory: pytest.TempPathFactory):
    records = tmp_path_factory.mktemp("records")
    synthesize(records, 240, seed=1, sources=3)
    out = tmp_path_factory.mktemp("shards")
    prepare(records, out, workers=1, progress=False)
    roles = fold_roles(read_manifest(out))
    data = load_shards(out, folds=[*roles["train"], *roles["val"]])
    return data.select(roles["train"]), data.select(roles["val"])


def _trainer(site_folds, objective: str) -> Trainer:
    train, val = site_folds
    cfg = TrainConfig(epochs=2, crop_len=1024, batch_size=16, steps_per_epoch=3, augment=False)
    return Trainer(TrialConfig(get_preset("tiny"), cfg), train, val,
                   label_groups=train.label_map.group_indices(),
                   label_names=list(train.label_map.names), device="cpu", objective=objective)


def test_a_trial_reports_each_source_and_keeps_its_best_by_the_objective(site_folds) -> None:
    trainer = _trainer(site_folds, K.WORST_SOURCE_AUPRC)
    val = site_folds[1]
    assert sorted(set(val.sources.tolist())) == ["site-a", "site-b", "site-c"]
    bests = []
    for _ in range(2):
        metrics = trainer.run_epoch().metrics
        per = {k.rsplit("/", 1)[1]: v for k, v in metrics.items()
               if k.startswith(K.SOURCE_AUPRC + "/")}
        assert sorted(per) == ["site-a", "site-b", "site-c"]
        assert metrics[K.WORST_SOURCE_AUPRC] == min(per.values())
        assert metrics[K.MEAN_SOURCE_AUPRC] == pytest.approx(np.mean(list(per.values())))
        bests.append(metrics[K.WORST_SOURCE_AUPRC])
        # The trial's best is the objective's best, which is what ranks it for the ensemble.
        assert metrics[K.BEST_OBJECTIVE] == max(bests) == trainer.best_score
    assert trainer.objective == K.WORST_SOURCE_AUPRC


def test_the_searcher_asha_and_checkpoints_follow_the_quality_term(tmp_path: Path) -> None:
    from ecgtune.search.checkpoint import checkpoint_config
    from ecgtune.search.run import _scheduler
    from ecgtune.search.searcher import build_searcher
    from ecgtune.search.space import load_space

    space = load_space("tiny")
    opts = SearchOptions(data=tmp_path, objective="worst-source", space="tiny")
    assert _scheduler(opts, space).metric == K.WORST_SOURCE_AUPRC
    searcher = build_searcher(space, "tpe", 0, lambda config: None,
                              parse_objective(opts.objective))
    assert searcher.metric == K.WORST_SOURCE_AUPRC
    kept = checkpoint_config(objective_metric(opts.objective))
    assert kept.checkpoint_score_attribute == K.WORST_SOURCE_AUPRC
    plain = SearchOptions(data=tmp_path, space="tiny")
    assert _scheduler(plain, space).metric == K.OBJECTIVE


def test_one_source_gives_no_per_source_keys_unless_asked(site_folds) -> None:
    train, val = site_folds
    one = val.select(np.unique(val.folds).tolist())
    object.__setattr__(one, "sources", np.full(len(one), "site-a"))
    trainer = _trainer((train, one), K.OBJECTIVE)
    metrics = trainer.evaluate().metrics
    assert K.WORST_SOURCE_AUPRC not in metrics
    trainer.objective = K.WORST_SOURCE_AUPRC
    metrics = trainer.evaluate().metrics
    assert metrics[K.WORST_SOURCE_AUPRC] == metrics[K.OBJECTIVE]
